//! Seeded simulations of a heartbeat cluster: 5 heartbeat servers, 2 access
//! nodes (each also a proxy), 100,000 sessions in 50 rooms beating every
//! 20 s, 5% loss on every link and random 2 s server pauses throughout.
//!
//! (a) kill a server: zero false exits, the dead server detected within 3 s,
//!     every one of its sessions owned again within one interval after that;
//! (b) partition a server away and heal it: zero false exits, zero duplicate
//!     entered events;
//! (c) kill an access node: each of its users exits exactly once, timed
//!     out, after the reverse check gave up on the connection; nobody else.
//!
//! Access nodes forward joins and beats at least once: servers ack them and
//! an unacked one is re-sent (re-routed) after 1 s, up to 5 times, as a host
//! forwarding over an unreliable network must. Trackers are idempotent, so
//! duplicates are harmless.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use room_core::{
    BusinessId, ExitReason, MemberChange, MemberEvent, MemberKey, NodeId, NodeState, RoomId, Router, RouterConfig,
    Terminal, Timestamp, Uin,
};
use room_heartbeat::{
    ConnId, DetectorConfig, HeartbeatServer, ProbeAnswer, ProbeId, Proxy, ServerConfig, ServerOutput, SessionHint,
};
use room_testkit::{Addr, LinkConfig, Outbox, Sim, SimNode};

const SERVERS: u32 = 5;
const ACCESS_NODES: u32 = 2;
const SESSIONS: u64 = 100_000;
const ROOMS: u64 = 50;
const INTERVAL_MS: u64 = 20_000;
const SLOT_BITS: u8 = 14;

#[derive(Debug, Clone)]
enum Msg {
    Liveness,
    Join { member: MemberKey, conn: ConnId },
    Beat { member: MemberKey, conn: ConnId },
    Ack { member: MemberKey },
    Probe { id: ProbeId },
    Answer { id: ProbeId, alive: bool },
}

const RESEND_AFTER: Duration = Duration::from_secs(1);
const MAX_TRIES: u32 = 5;

fn node(addr: Addr) -> NodeId {
    NodeId(u64::from(addr.0))
}

fn addr(node: NodeId) -> Addr {
    Addr(node.0 as u32)
}

fn server_list() -> Vec<(NodeId, u32)> {
    (0..SERVERS).map(|i| (NodeId(u64::from(i)), 100)).collect()
}

fn router_config() -> RouterConfig {
    RouterConfig::new().with_slot_bits(SLOT_BITS).unwrap()
}

fn member(i: u64) -> MemberKey {
    MemberKey::new(BusinessId(1), RoomId(i % ROOMS), Uin(i))
}

/// Sessions are spread over access nodes by index; a connection id names
/// its access node in the high half.
fn conn_of(i: u64) -> ConnId {
    ConnId(((i % u64::from(ACCESS_NODES)) << 32) | i)
}

fn access_of(conn: ConnId) -> Addr {
    Addr(SERVERS + (conn.0 >> 32) as u32)
}

/// Where servers publish events: outside the nodes, so a crash does not
/// erase what a server already published.
type EventSink = Rc<RefCell<Vec<MemberEvent>>>;

/// Session index -> when its latest join or beat was acked.
type AckLog = Rc<RefCell<BTreeMap<u64, Timestamp>>>;

struct ServerNode {
    server: HeartbeatServer,
    events: EventSink,
}

impl ServerNode {
    fn flush(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        while let Some(output) = self.server.poll_output(now) {
            match output {
                ServerOutput::Heartbeat { to } => out.send(addr(to), Msg::Liveness),
                ServerOutput::Probe(p) => out.send(access_of(p.suspect.conn), Msg::Probe { id: p.id }),
                ServerOutput::Event(e) => self.events.borrow_mut().push(e),
                _ => {}
            }
        }
    }
}

impl SimNode<Msg> for ServerNode {
    fn handle_message(&mut self, now: Timestamp, from: Addr, msg: Msg, out: &mut Outbox<Msg>) {
        match msg {
            Msg::Liveness => self.server.handle_peer_heartbeat(now, node(from)),
            Msg::Join { member, conn } => {
                self.server.handle_join(now, member, Terminal::Web, conn).unwrap();
                out.send(from, Msg::Ack { member });
            }
            Msg::Beat { member, conn } => {
                self.server.handle_beat(now, member, Terminal::Web, conn, SessionHint::NONE).unwrap();
                out.send(from, Msg::Ack { member });
            }
            Msg::Answer { id, alive } => {
                let answer = if alive { ProbeAnswer::Alive } else { ProbeAnswer::Gone };
                // A late answer to a probe already retried is refused; fine.
                let _ = self.server.handle_probe_answer(now, id, answer);
            }
            Msg::Probe { .. } | Msg::Ack { .. } => {}
        }
        self.flush(now, out);
    }

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        self.server.handle_timeout(now);
        self.flush(now, out);
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        self.server.poll_timeout()
    }
}

/// An access node: its clients' connections, beating every 20 s in 10 ms
/// batches, routed by its own proxy.
struct AccessNode {
    proxy: Proxy,
    /// (phase in ms within the interval, session index), sorted.
    clients: Vec<(u64, u64)>,
    cursor: usize,
    round: u64,
    /// When this proxy first saw each server down.
    saw_down: BTreeMap<NodeId, Timestamp>,
    /// When each session's latest beat was acked (shared, so it survives a
    /// crash of this node).
    acked: AckLog,
    /// Unacked forwards: session index -> (resend at, tries, is a join).
    unacked: BTreeMap<u64, (Timestamp, u32, bool)>,
    resends: BTreeSet<(Timestamp, u64)>,
}

impl AccessNode {
    fn forward(&mut self, now: Timestamp, i: u64, join: bool, tries: u32, out: &mut Outbox<Msg>) {
        let (member, conn) = (member(i), conn_of(i));
        let to = addr(self.proxy.route(&member).unwrap());
        out.send(to, if join { Msg::Join { member, conn } } else { Msg::Beat { member, conn } });
        if let Some((at, _, _)) = self.unacked.remove(&i) {
            self.resends.remove(&(at, i));
        }
        if tries < MAX_TRIES {
            let at = now + RESEND_AFTER;
            self.unacked.insert(i, (at, tries + 1, join));
            self.resends.insert((at, i));
        }
    }

    fn next_batch_at(&self) -> Option<Timestamp> {
        let &(phase, _) = self.clients.get(self.cursor)?;
        Some(Timestamp::from_millis(self.round * INTERVAL_MS + phase))
    }
}

impl SimNode<Msg> for AccessNode {
    fn handle_message(&mut self, now: Timestamp, from: Addr, msg: Msg, out: &mut Outbox<Msg>) {
        match msg {
            Msg::Liveness => self.proxy.handle_server_heartbeat(now, node(from)),
            // Every connection of a running access node is open.
            Msg::Probe { id } => out.send(from, Msg::Answer { id, alive: true }),
            Msg::Ack { member } => {
                self.acked.borrow_mut().insert(member.uin.0, now);
                if let Some((at, _, _)) = self.unacked.remove(&member.uin.0) {
                    self.resends.remove(&(at, member.uin.0));
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        self.proxy.handle_timeout(now);
        for (id, info) in self.proxy.view().nodes() {
            if info.state == NodeState::Down {
                self.saw_down.entry(id).or_insert(now);
            }
        }
        while let Some(at) = self.next_batch_at() {
            if at > now {
                break;
            }
            let (_, i) = self.clients[self.cursor];
            let join = self.round == 0;
            self.forward(now, i, join, 0, out);
            self.cursor += 1;
            if self.cursor == self.clients.len() {
                self.cursor = 0;
                self.round += 1;
            }
        }
        while let Some(&(at, i)) = self.resends.first() {
            if at > now {
                break;
            }
            self.resends.pop_first();
            if let Some((_, tries, join)) = self.unacked.remove(&i) {
                self.forward(now, i, join, tries, out);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        let resend = self.resends.first().map(|&(at, _)| at);
        [self.proxy.poll_timeout(), self.next_batch_at(), resend].into_iter().flatten().min()
    }
}

struct World {
    sim: Sim<Msg>,
    servers: Vec<Addr>,
    access: Vec<Addr>,
    events: EventSink,
    acked: AckLog,
}

fn world(seed: u64) -> World {
    let mut sim = Sim::new(seed);
    sim.set_default_link(LinkConfig::LAN.with_loss(0.05));
    let proxies: Vec<NodeId> = (SERVERS..SERVERS + ACCESS_NODES).map(|a| NodeId(u64::from(a))).collect();
    let mut config = ServerConfig::default();
    config.router = router_config();
    let events = EventSink::default();
    let acked = AckLog::default();
    let servers: Vec<Addr> = (0..SERVERS)
        .map(|i| {
            let server =
                HeartbeatServer::new(Timestamp::ZERO, NodeId(u64::from(i)), &server_list(), &proxies, config.clone())
                    .unwrap();
            sim.add_node(format!("hb-{i}"), ServerNode { server, events: events.clone() })
        })
        .collect();
    let access: Vec<Addr> = (0..ACCESS_NODES)
        .map(|a| {
            let mut clients: Vec<(u64, u64)> = (0..SESSIONS)
                .filter(|i| i % u64::from(ACCESS_NODES) == u64::from(a))
                .map(|i| ((sim.rng().below(INTERVAL_MS / 10)) * 10, i))
                .collect();
            clients.sort();
            let proxy =
                Proxy::new(Timestamp::ZERO, &server_list(), router_config(), DetectorConfig::default()).unwrap();
            let node = AccessNode {
                proxy,
                clients,
                cursor: 0,
                round: 0,
                saw_down: BTreeMap::new(),
                acked: acked.clone(),
                unacked: BTreeMap::new(),
                resends: BTreeSet::new(),
            };
            sim.add_node(format!("access-{a}"), node)
        })
        .collect();
    // Random 2 s pauses of the heartbeat servers, about one every 10 s.
    let mut t = 5_000;
    while t < 400_000 {
        let victim = servers[sim.rng().below(u64::from(SERVERS)) as usize];
        sim.schedule(Timestamp::from_millis(t), move |sim| sim.pause_for(victim, Duration::from_secs(2)));
        t += 5_000 + sim.rng().below(10_000);
    }
    World { sim, servers, access, events, acked }
}

fn events(world: &World) -> Vec<MemberEvent> {
    world.events.borrow().clone()
}

fn entered_once_each(events: &[MemberEvent]) {
    let mut entered: BTreeMap<MemberKey, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.change == MemberChange::Entered) {
        *entered.entry(e.member).or_default() += 1;
    }
    assert_eq!(entered.len() as u64, SESSIONS, "every member entered");
    let duplicated = entered.values().filter(|&&n| n > 1).count();
    assert_eq!(duplicated, 0, "members with a duplicate entered event");
}

/// Which live server tracks each session.
fn holders(world: &World) -> BTreeMap<u64, Vec<NodeId>> {
    let mut held: BTreeMap<u64, Vec<NodeId>> = BTreeMap::new();
    for &a in &world.servers {
        let Some(n) = world.sim.node::<ServerNode>(a) else { continue };
        for i in 0..SESSIONS {
            if n.server.tracker().connection(&member(i), Terminal::Web).is_some() {
                held.entry(i).or_default().push(node(a));
            }
        }
    }
    held
}

#[test]
fn killing_a_server_moves_its_sessions_without_a_false_exit() {
    let mut w = world(1);
    let dead = w.servers[4];
    let full = Router::with_nodes(router_config(), server_list()).unwrap();
    let orphans: Vec<u64> = (0..SESSIONS).filter(|&i| full.route(&member(i)) == Ok(node(dead))).collect();
    w.sim.run_until(Timestamp::from_millis(60_000)).unwrap();
    let killed_at = w.sim.now();
    w.sim.crash(dead);
    w.sim.run_until(Timestamp::from_millis(70_000)).unwrap();
    let detected = w
        .access
        .iter()
        .map(|&a| w.sim.node::<AccessNode>(a).unwrap().saw_down.get(&node(dead)).copied().expect("proxy saw the death"))
        .max()
        .unwrap();
    let detection = detected.saturating_duration_since(killed_at);
    assert!(detection <= Duration::from_secs(3), "detected after {detection:?}");
    // One beat interval after detection (plus the 10 ms beat batching).
    w.sim.run_until(detected + Duration::from_millis(INTERVAL_MS + 10)).unwrap();
    let held = holders(&w);
    let unowned = orphans.iter().filter(|i| held.get(i).is_none_or(|h| h.is_empty())).count();
    assert_eq!(unowned, 0, "sessions of the dead server not re-owned one interval after detection");
    w.sim.run_until(Timestamp::from_millis(200_000)).unwrap();
    let all = events(&w);
    let exits: Vec<_> = all.iter().filter(|e| matches!(e.change, MemberChange::Exited(_))).collect();
    assert!(exits.is_empty(), "false exits: {}", exits.len());
    entered_once_each(&all);
    println!(
        "(a) {} sessions re-owned; detection {detection:?}; 0 false exits; {} messages lost",
        orphans.len(),
        w.sim.stats().dropped(room_testkit::DropReason::Loss)
    );
}

#[test]
fn a_partitioned_server_comes_back_without_false_exits_or_duplicate_entries() {
    let mut w = world(2);
    let cut = w.servers[2];
    w.sim.run_until(Timestamp::from_millis(60_000)).unwrap();
    w.sim.isolate(cut);
    // Long enough for the cut-off server's sessions to time out there.
    w.sim.run_until(Timestamp::from_millis(150_000)).unwrap();
    w.sim.heal();
    w.sim.run_until(Timestamp::from_millis(260_000)).unwrap();
    let all = events(&w);
    let exits: Vec<_> = all.iter().filter(|e| matches!(e.change, MemberChange::Exited(_))).collect();
    assert!(exits.is_empty(), "false exits: {} (first {:?})", exits.len(), exits.first());
    entered_once_each(&all);
    // After healing, every session is held by exactly one server: its owner.
    let full = Router::with_nodes(router_config(), server_list()).unwrap();
    let held = holders(&w);
    let misplaced = (0..SESSIONS)
        .filter(|i| held.get(i).map(Vec::as_slice) != Some(&[full.route(&member(*i)).unwrap()][..]))
        .count();
    assert_eq!(misplaced, 0, "sessions not held by exactly their owner");
    let stats = w.sim.node::<ServerNode>(cut).unwrap().server.stats();
    assert!(stats.quorum_regained >= 1);
    println!("(b) partition healed: 0 false exits, 0 duplicate entered; cut-off server stats {stats:?}");
}

#[test]
fn killing_an_access_node_exits_its_users_exactly_once() {
    let mut w = world(3);
    w.sim.run_until(Timestamp::from_millis(60_000)).unwrap();
    let killed_at = w.sim.now();
    w.sim.crash(w.access[1]);
    w.sim.run_until(Timestamp::from_millis(200_000)).unwrap();
    let all = events(&w);
    let mut exits: BTreeMap<MemberKey, Vec<&MemberEvent>> = BTreeMap::new();
    for e in all.iter().filter(|e| matches!(e.change, MemberChange::Exited(_))) {
        exits.entry(e.member).or_default().push(e);
    }
    let lost: BTreeSet<MemberKey> =
        (0..SESSIONS).filter(|&i| access_of(conn_of(i)) == w.access[1]).map(member).collect();
    let exited: BTreeSet<MemberKey> = exits.keys().copied().collect();
    assert_eq!(exited.len(), lost.len(), "as many exits as users of the dead access node");
    assert_eq!(exited.difference(&lost).count(), 0, "users of the live access node exited");
    for (m, es) in &exits {
        assert_eq!(es.len(), 1, "{m} exited {} times", es.len());
        assert_eq!(es[0].change, MemberChange::Exited(ExitReason::TimedOut));
        // Not before its last beat (stamped just before the ack) plus the
        // 60 s timeout plus three unanswered probes (2 s each, with 0.5 s
        // and 1 s of backoff between them).
        let last_beat = w.acked.borrow()[&m.uin.0].saturating_sub(Duration::from_millis(1));
        let earliest = last_beat + Duration::from_millis(60_000 + 7_500);
        assert!(es[0].at >= earliest, "{m} exited at {}, last beat {last_beat}", es[0].at);
    }
    entered_once_each(&all);
    let last_exit = exits.values().map(|e| e[0].at).max().unwrap();
    println!(
        "(c) {} users exited exactly once; last exit {:?} after the crash",
        lost.len(),
        last_exit.saturating_duration_since(killed_at)
    );
}
