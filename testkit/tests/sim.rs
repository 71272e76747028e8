//! The simulator tested on its own.

use std::time::Duration;

use proptest::prelude::*;
use room_core::Timestamp;
use room_testkit::{Addr, DropReason, LinkConfig, Outbox, Sim, SimError, SimNode, TraceKind};

#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Ping(u32),
    Pong(u32),
    Data(u32),
}

/// Records what arrives; answers pings; optionally ticks on a period.
#[derive(Default)]
struct Probe {
    received: Vec<(Timestamp, Addr, Msg)>,
    ticks: Vec<Timestamp>,
    period: Option<Duration>,
    next_tick: Option<Timestamp>,
}

impl Probe {
    fn ticking(period: Duration) -> Probe {
        Probe { period: Some(period), next_tick: Some(Timestamp::ZERO + period), ..Probe::default() }
    }
}

impl SimNode<Msg> for Probe {
    fn handle_message(&mut self, now: Timestamp, from: Addr, msg: Msg, out: &mut Outbox<Msg>) {
        if let Msg::Ping(n) = msg {
            out.send(from, Msg::Pong(n));
        }
        self.received.push((now, from, msg));
    }
    fn handle_timeout(&mut self, now: Timestamp, _out: &mut Outbox<Msg>) {
        self.ticks.push(now);
        self.next_tick = self.period.map(|p| now + p);
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        self.next_tick
    }
}

fn ms(n: u64) -> Timestamp {
    Timestamp::from_millis(n)
}

fn two(seed: u64, link: LinkConfig) -> (Sim<Msg>, Addr, Addr) {
    let mut sim = Sim::new(seed);
    sim.set_default_link(link);
    let a = sim.add_node("a", Probe::default());
    let b = sim.add_node("b", Probe::default());
    (sim, a, b)
}

#[test]
fn perfect_links_take_exactly_their_delay() {
    let (mut sim, a, b) = two(1, LinkConfig::perfect(Duration::from_millis(10)));
    sim.send(a, b, Msg::Ping(1));
    sim.run_for(Duration::from_millis(100)).unwrap();
    let at_b = &sim.node::<Probe>(b).unwrap().received;
    assert_eq!(at_b, &vec![(ms(10), a, Msg::Ping(1))]);
    let at_a = &sim.node::<Probe>(a).unwrap().received;
    assert_eq!(at_a, &vec![(ms(20), b, Msg::Pong(1))]);
    assert_eq!(sim.now(), ms(100));
    assert_eq!(sim.addr("b"), Some(b));
    assert_eq!(sim.name(a), Some("a"));
}

#[test]
fn loss_drops_about_the_configured_fraction() {
    let (mut sim, a, b) = two(2, LinkConfig::LAN.with_loss(0.3));
    for i in 0..10_000 {
        sim.send(a, b, Msg::Data(i));
    }
    sim.run_for(Duration::from_secs(1)).unwrap();
    let lost = sim.stats().dropped(DropReason::Loss);
    assert!((2_700..3_300).contains(&lost), "lost {lost}");
    assert_eq!(sim.node::<Probe>(b).unwrap().received.len() as u64, 10_000 - lost);
}

#[test]
fn duplication_and_reordering_happen() {
    let link =
        LinkConfig::perfect(Duration::from_millis(1)).with_duplicate(0.2).with_reorder(0.2, Duration::from_millis(5));
    let (mut sim, a, b) = two(3, link);
    for i in 0..1_000 {
        sim.schedule(Timestamp::from_micros(u64::from(i) * 100), move |sim| sim.send(a, b, Msg::Data(i)));
    }
    sim.run_for(Duration::from_secs(1)).unwrap();
    let got: Vec<u32> = sim
        .node::<Probe>(b)
        .unwrap()
        .received
        .iter()
        .map(|(_, _, m)| match m {
            Msg::Data(i) => *i,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let dups = sim.stats().duplicated;
    assert!((150..250).contains(&dups), "{dups} duplicates");
    assert_eq!(got.len() as u64, 1_000 + dups);
    assert!(got.windows(2).any(|w| w[0] > w[1]), "nothing was reordered");
}

#[test]
fn partitions_drop_at_send_and_in_flight_then_heal() {
    let (mut sim, a, b) = two(4, LinkConfig::perfect(Duration::from_millis(10)));
    sim.send(a, b, Msg::Data(1)); // in flight when the partition starts
    sim.run_for(Duration::from_millis(5)).unwrap();
    sim.partition(&[a], &[b]);
    sim.send(a, b, Msg::Data(2));
    sim.send(b, a, Msg::Data(3));
    sim.run_for(Duration::from_millis(50)).unwrap();
    assert_eq!(sim.stats().dropped(DropReason::Partition), 3);
    sim.heal();
    sim.send(a, b, Msg::Data(4));
    sim.run_for(Duration::from_millis(50)).unwrap();
    let got: Vec<Msg> = sim.node::<Probe>(b).unwrap().received.iter().map(|r| r.2.clone()).collect();
    assert_eq!(got, vec![Msg::Data(4)]);
}

#[test]
fn paused_nodes_hold_messages_and_timers_until_resumed() {
    let mut sim: Sim<Msg> = Sim::new(5);
    sim.set_default_link(LinkConfig::perfect(Duration::from_millis(1)));
    let a = sim.add_node("a", Probe::default());
    let b = sim.add_node("b", Probe::ticking(Duration::from_millis(100)));
    sim.pause_for(b, Duration::from_millis(2_000));
    sim.send(a, b, Msg::Data(1));
    sim.send(a, b, Msg::Data(2));
    sim.run_until(ms(1_999)).unwrap();
    assert!(sim.node::<Probe>(b).unwrap().received.is_empty());
    assert!(sim.node::<Probe>(b).unwrap().ticks.is_empty());
    sim.run_until(ms(2_000)).unwrap();
    let node = sim.node::<Probe>(b).unwrap();
    let got: Vec<(Timestamp, Msg)> = node.received.iter().map(|r| (r.0, r.2.clone())).collect();
    assert_eq!(got, vec![(ms(2_000), Msg::Data(1)), (ms(2_000), Msg::Data(2))]);
    // The overdue tick fires once at resume, then the period resumes.
    assert_eq!(node.ticks, vec![ms(2_000)]);
    sim.run_until(ms(2_250)).unwrap();
    assert_eq!(sim.node::<Probe>(b).unwrap().ticks, vec![ms(2_000), ms(2_100), ms(2_200)]);
}

#[test]
fn crashes_lose_state_and_in_flight_messages() {
    let (mut sim, a, b) = two(6, LinkConfig::perfect(Duration::from_millis(10)));
    sim.send(a, b, Msg::Data(1));
    sim.run_for(Duration::from_millis(20)).unwrap();
    sim.send(a, b, Msg::Data(2)); // in flight across the crash and restart
    sim.crash(b);
    assert!(!sim.is_up(b));
    assert!(sim.node::<Probe>(b).is_none());
    sim.send(a, b, Msg::Data(3)); // sent while down
    sim.restart(b, Probe::default());
    sim.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(sim.stats().dropped(DropReason::Crashed), 2);
    assert!(sim.node::<Probe>(b).unwrap().received.is_empty(), "the new incarnation starts empty");
    sim.send(a, b, Msg::Data(4));
    sim.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(sim.node::<Probe>(b).unwrap().received.len(), 1);
}

/// Always wants to wake now: a livelock.
struct Spinner;
impl SimNode<Msg> for Spinner {
    fn handle_message(&mut self, _: Timestamp, _: Addr, _: Msg, _: &mut Outbox<Msg>) {}
    fn poll_timeout(&self) -> Option<Timestamp> {
        Some(Timestamp::ZERO)
    }
}

#[test]
fn livelock_is_caught_by_the_step_bound() {
    let mut sim: Sim<Msg> = Sim::new(7);
    sim.add_node("spinner", Spinner);
    sim.set_step_limits(1_000, u64::MAX);
    assert_eq!(sim.run_for(Duration::from_secs(1)), Err(SimError::Livelock { at: Timestamp::ZERO, steps: 1_001 }));
    sim.set_step_limits(u64::MAX, 500);
    assert!(matches!(sim.run_for(Duration::from_secs(1)), Err(SimError::StepBudget { budget: 500, .. })));
}

fn traced_run(seed: u64) -> Vec<room_testkit::TraceEvent> {
    let link = LinkConfig::LAN.with_loss(0.1).with_duplicate(0.1).with_reorder(0.1, Duration::from_millis(3));
    let mut sim: Sim<Msg> = Sim::new(seed);
    sim.set_default_link(link);
    sim.enable_trace();
    let nodes: Vec<Addr> =
        (0..4).map(|i| sim.add_node(format!("n{i}"), Probe::ticking(Duration::from_millis(7)))).collect();
    for i in 0..200u32 {
        let (from, to) = (nodes[i as usize % 4], nodes[(i as usize * 7 + 1) % 4]);
        sim.schedule(Timestamp::from_micros(u64::from(i) * 300), move |sim| sim.send(from, to, Msg::Ping(i)));
    }
    let victim = nodes[2];
    sim.schedule(ms(20), move |sim| sim.crash(victim));
    sim.schedule(ms(40), move |sim| sim.restart(victim, Probe::default()));
    sim.run_for(Duration::from_millis(100)).unwrap();
    sim.trace().to_vec()
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let first = traced_run(11);
    assert!(first.len() > 300);
    assert!(first.iter().any(|e| matches!(e.kind, TraceKind::Dropped { reason: DropReason::Loss, .. })));
    assert_eq!(first, traced_run(11));
    assert_ne!(first, traced_run(12));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Without faults every message arrives exactly once, and a jitter-free
    /// link keeps each sender's order.
    #[test]
    fn perfect_links_deliver_everything_once_in_order(seed in any::<u64>(), sends in prop::collection::vec((0usize..3, 0usize..3, 0u64..50), 1..200)) {
        let mut sim: Sim<Msg> = Sim::new(seed);
        sim.set_default_link(LinkConfig::perfect(Duration::from_millis(2)));
        let nodes: Vec<Addr> = (0..3).map(|i| sim.add_node(format!("n{i}"), Probe::default())).collect();
        for (i, &(from, to, at)) in sends.iter().enumerate() {
            let (from, to) = (nodes[from], nodes[to]);
            let i = i as u32;
            sim.schedule(ms(at), move |sim| sim.send(from, to, Msg::Data(i)));
        }
        sim.run_for(Duration::from_secs(1)).unwrap();
        let mut total = 0;
        for &to in &nodes {
            let received = &sim.node::<Probe>(to).unwrap().received;
            total += received.len();
            for &from in &nodes {
                let got: Vec<u32> = received.iter().filter(|r| r.1 == from).map(|r| match r.2 { Msg::Data(i) => i, _ => u32::MAX }).collect();
                let mut expected: Vec<(u64, u32)> = sends.iter().enumerate()
                    .filter(|(_, s)| nodes[s.0] == from && nodes[s.1] == to)
                    .map(|(i, s)| (s.2, i as u32)).collect();
                expected.sort();
                prop_assert_eq!(got, expected.into_iter().map(|e| e.1).collect::<Vec<_>>());
            }
        }
        prop_assert_eq!(total, sends.len());
        prop_assert_eq!(sim.stats().delivered, sends.len() as u64);
    }
}
