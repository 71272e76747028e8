//! The failure detector in a seeded simulation: five heartbeat servers on a
//! LAN with 5% loss. Measures how fast a killed server is reported and how
//! often 2 s pauses cause a false report.

use std::time::Duration;

use room_core::{NodeId, Timestamp};
use room_heartbeat::{DetectorConfig, FailureDetector, PeerEvent};
use room_testkit::{Addr, LinkConfig, Outbox, Sim, SimNode};

#[derive(Debug, Clone)]
struct Heartbeat;

struct Server {
    detector: FailureDetector,
    addrs: Vec<Addr>,
    reports: Vec<(Timestamp, PeerEvent)>,
}

fn node(addr: Addr) -> NodeId {
    NodeId(u64::from(addr.0))
}

impl Server {
    fn new(me: Addr, all: &[Addr], now: Timestamp) -> Server {
        let mut detector = FailureDetector::new(DetectorConfig::default()).unwrap();
        for &peer in all.iter().filter(|&&a| a != me) {
            detector.add_peer(now, node(peer));
        }
        Server { detector, addrs: all.to_vec(), reports: Vec::new() }
    }
}

impl SimNode<Heartbeat> for Server {
    fn handle_message(&mut self, now: Timestamp, from: Addr, _: Heartbeat, _: &mut Outbox<Heartbeat>) {
        self.detector.handle_heartbeat(now, node(from));
        while let Some(e) = self.detector.poll_event() {
            self.reports.push((now, e));
        }
    }

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<Heartbeat>) {
        self.detector.handle_timeout(now);
        while let Some(e) = self.detector.poll_event() {
            self.reports.push((now, e));
        }
        if let Some(peers) = self.detector.poll_send(now) {
            for peer in peers {
                if let Some(&addr) = self.addrs.iter().find(|a| node(**a) == peer) {
                    out.send(addr, Heartbeat);
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        self.detector.poll_timeout()
    }
}

fn cluster(seed: u64) -> (Sim<Heartbeat>, Vec<Addr>) {
    let mut sim = Sim::new(seed);
    sim.set_default_link(LinkConfig::LAN.with_loss(0.05));
    let addrs: Vec<Addr> = (0..5).map(Addr).collect();
    for &a in &addrs {
        let added = sim.add_node(format!("hb-{}", a.0), Server::new(a, &addrs, Timestamp::ZERO));
        assert_eq!(added, a);
    }
    (sim, addrs)
}

#[test]
fn a_killed_server_is_reported_by_every_survivor_within_three_seconds() {
    let mut worst = Duration::ZERO;
    for seed in 1..=10 {
        let (mut sim, addrs) = cluster(seed);
        sim.run_until(Timestamp::from_millis(30_000)).unwrap();
        let killed_at = sim.now();
        sim.crash(addrs[4]);
        sim.run_for(Duration::from_secs(10)).unwrap();
        for &a in &addrs[..4] {
            let server = sim.node::<Server>(a).unwrap();
            let downs: Vec<&(Timestamp, PeerEvent)> =
                server.reports.iter().filter(|(_, e)| matches!(e, PeerEvent::Down(_))).collect();
            assert_eq!(downs.len(), 1, "seed {seed}: {} reported {:?}", a, server.reports);
            assert_eq!(downs[0].1, PeerEvent::Down(node(addrs[4])));
            let took = downs[0].0.saturating_duration_since(killed_at);
            assert!(took <= Duration::from_secs(3), "seed {seed}: detected after {took:?}");
            worst = worst.max(took);
        }
    }
    println!("worst detection time over 10 seeds x 4 observers: {worst:?}");
}

#[test]
fn two_second_pauses_on_a_lossy_lan_cause_no_false_reports() {
    let mut pauses = 0;
    for seed in 1..=5 {
        let (mut sim, addrs) = cluster(seed);
        // Ten virtual minutes; each server pauses for 2 s about every 20 s.
        let mut t = 5_000u64;
        while t < 600_000 {
            let victim = addrs[sim.rng().below(5) as usize];
            sim.schedule(Timestamp::from_millis(t), move |sim| sim.pause_for(victim, Duration::from_secs(2)));
            pauses += 1;
            t += 2_500 + sim.rng().below(5_000);
        }
        sim.run_until(Timestamp::from_millis(600_000)).unwrap();
        for &a in &addrs {
            let server = sim.node::<Server>(a).unwrap();
            let false_reports: Vec<_> =
                server.reports.iter().filter(|(_, e)| matches!(e, PeerEvent::Down(_))).collect();
            assert!(false_reports.is_empty(), "seed {seed}: {a} falsely reported {false_reports:?}");
        }
    }
    println!("{pauses} pauses of 2 s over 5 x 10 virtual minutes: 0 false reports");
}
