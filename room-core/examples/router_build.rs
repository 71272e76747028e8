//! Times building a [`Router`] the way a crate that depends on Roomkit sees it
//! in its own debug profile: room-core unoptimised.
//!
//! The workspace optimises room-core even in its dev profile, so inside the
//! workspace run this with that override turned off:
//!
//! ```text
//! cargo run -p room-core --example router_build \
//!     --config 'profile.dev.package.room-core.opt-level=0' -- [RUNS] [--full]
//! ```
//!
//! (`cargo build -v` with the same `--config` shows no `-C opt-level` flag on
//! room-core's compiler lines, which is opt-level 0.) Without the override,
//! or with `--release`, it times an optimised room-core instead.
//!
//! For 5 and 64 nodes of equal weight and the default 2^21 slots it prints the
//! median over RUNS (default 7) of: building the router, routing 1,000
//! member keys, adding a node, removing one; with `--full` also
//! `Router::fill_table` (computing every slot's owner, as `slot_counts`,
//! `diff` and bounded-load mode do) and a clone of the filled router.

use std::time::{Duration, Instant};

use room_core::{BusinessId, MemberKey, NodeId, RoomId, Router, RouterConfig, Uin};

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--full");
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(7).max(1);
    println!("debug assertions: {}, runs: {runs}, slots: {}", cfg!(debug_assertions), RouterConfig::new().slot_count());
    for n in [5u64, 64] {
        let nodes: Vec<(NodeId, u32)> = (1..=n).map(|i| (NodeId(i), 100)).collect();
        let mut times: [Vec<Duration>; 6] = Default::default();
        for _ in 0..runs {
            let (mut router, t) = timed(|| Router::with_nodes(RouterConfig::new(), nodes.iter().copied()).unwrap());
            times[0].push(t);
            let (sum, t) = timed(|| {
                let mut sum = 0u64;
                for uin in 0..1000u64 {
                    let key = MemberKey::new(BusinessId(1), RoomId(uin % 37), Uin(uin));
                    sum = sum.wrapping_add(router.route(&key).unwrap().0);
                }
                sum
            });
            times[1].push(t);
            times[2].push(timed(|| router.add_node(NodeId(1000), 100).unwrap()).1);
            times[3].push(timed(|| router.remove_node(NodeId(1)).unwrap()).1);
            if full {
                times[4].push(timed(|| router.fill_table()).1);
                times[5].push(timed(|| router.clone()).1);
            }
            std::hint::black_box((sum, &router));
        }
        let [build, route, add, remove, fill, clone] = times.map(|t| if t.is_empty() { None } else { Some(median(t)) });
        print!(
            "{n:>2} nodes: build {:>9.1?} | 1000 routes {:>9.1?} | add a node {:>9.1?} | remove a node {:>9.1?}",
            build.unwrap_or_default(),
            route.unwrap_or_default(),
            add.unwrap_or_default(),
            remove.unwrap_or_default()
        );
        if let (Some(fill), Some(clone)) = (fill, clone) {
            print!(" | fill_table {fill:>9.1?} | clone {clone:>9.1?}");
        }
        println!();
    }
}
