//! Routes member keys over a five-node ring and prints the placement table,
//! then shows what moves when one node fails.
//!
//! Run: `cargo run -p examples --example ring`
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Instant;

use room_core::{
    BusinessId, ClusterView, MemberKey, NodeChange, NodeId, NodeState, RoomId, RouteKey, Router, RouterConfig, Uin,
};

const NODES: [(&str, u32); 5] = [("hb-1", 100), ("hb-2", 100), ("hb-3", 100), ("hb-4", 100), ("hb-5", 200)];
const ROOMS: u64 = 50;
const MEMBERS_PER_ROOM: u64 = 2_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    // The cluster view: five heartbeat servers, hb-5 twice as heavy.
    let mut view = ClusterView::new();
    let names: BTreeMap<NodeId, &str> = NODES.iter().map(|&(name, _)| (NodeId::from_name(name), name)).collect();
    for (name, weight) in NODES {
        let node = NodeId::from_name(name);
        view.apply(NodeChange::Joined { node, weight })?;
        view.apply(NodeChange::StateChanged { node, state: NodeState::Up })?;
    }
    let started = Instant::now();
    let router = Router::from_view(RouterConfig::new(), &view)?;
    tracing::info!(nodes = router.len(), slots = router.slot_count(), epoch = %view.epoch(), elapsed = ?started.elapsed(), "router built");

    // 100,000 members in 50 rooms, routed by (bid, room, uin).
    let members: Vec<MemberKey> = (0..ROOMS)
        .flat_map(|room| {
            (0..MEMBERS_PER_ROOM)
                .map(move |i| MemberKey::new(BusinessId(1), RoomId(1_000 + room), Uin(room * 1_000_003 + i * 7_919)))
        })
        .collect();
    let placement = place(&router, &members)?;

    println!("\nPlacement of {} members over {} nodes ({} slots):\n", members.len(), router.len(), router.slot_count());
    println!("{:<6} {:>6} {:>8} {:>9} {:>9}", "node", "weight", "members", "share", "expected");
    let total_weight: u32 = NODES.iter().map(|n| n.1).sum();
    for (name, weight) in NODES {
        let count = placement.values().filter(|&&n| n == NodeId::from_name(name)).count();
        println!(
            "{name:<6} {weight:>6} {count:>8} {:>8.2}% {:>8.2}%",
            100.0 * count as f64 / members.len() as f64,
            100.0 * f64::from(weight) / f64::from(total_weight)
        );
    }

    let sample = members[0];
    println!("\nmember {sample} (hash {:#018x}) -> {}", sample.route_hash(), names[&router.route(&sample)?]);
    let replicas: Vec<&str> = router.successors(&sample.room_key(), 3)?.iter().map(|n| names[n]).collect();
    println!("room {} member-list replicas, in failover order: {}", sample.room_key(), replicas.join(", "));

    // hb-3 fails: the view marks it down and the router follows.
    let failed = NodeId::from_name("hb-3");
    view.apply(NodeChange::StateChanged { node: failed, state: NodeState::Down })?;
    let mut after = router.clone();
    let started = Instant::now();
    after.sync(&view)?;
    tracing::info!(epoch = %view.epoch(), elapsed = ?started.elapsed(), "router synced after hb-3 went down");
    let moved_slots: usize = router.diff(&after)?.iter().map(|m| m.slots.len()).sum();
    let new_placement = place(&after, &members)?;
    let moved: Vec<&MemberKey> = members.iter().filter(|m| placement[*m] != new_placement[*m]).collect();
    let from_failed = moved.iter().filter(|m| placement[**m] == failed).count();
    println!(
        "\nhb-3 down: {} of {} slots and {} members moved; {} of those were on hb-3, {} moved between survivors.",
        moved_slots,
        router.slot_count(),
        moved.len(),
        from_failed,
        moved.len() - from_failed
    );
    Ok(())
}

fn place(router: &Router, members: &[MemberKey]) -> Result<BTreeMap<MemberKey, NodeId>, room_core::RouterError> {
    members.iter().map(|m| Ok((*m, router.route(m)?))).collect()
}
