//! A seeded network simulation: one gate publishing over a lossy,
//! duplicating bus to three push nodes, each serving clients over lossy,
//! duplicating, reordering links, with acks, checks and a client cut off
//! for a while. Every reliable message aimed at a client is delivered once,
//! in order, or reported by a reset; never silently lost.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use room_core::{Role, Terminal, Timestamp, Uin};
use room_push::{
    AckReply, CheckAnswer, Class, ConnId, ConnSpec, Connector, Envelope, Frame, FrameHeader, Kind, Message, NodeConfig,
    PushNode, Received, Recovery, ReliableReceiver, SendError, Target,
};
use room_testkit::{Addr, LinkConfig, Outbox, Sim, SimNode};
use support::*;

#[derive(Debug, Clone)]
enum Msg {
    Bus(Bytes),
    Frame(FrameHeader),
    Ack { conn: ConnId, epoch: u64, seq: u64 },
    AckReply(AckReply),
    Check { conn: ConnId, epoch: u64, after: u64 },
    Answer(CheckAnswer),
}

const MESSAGES: u64 = 300;

struct GateNode {
    gate: room_push::Gate,
    nodes: Vec<Addr>,
    next: Timestamp,
    sent: Vec<(u64, Target)>,
}

impl SimNode<Msg> for GateNode {
    fn handle_message(&mut self, _: Timestamp, _: Addr, _: Msg, _: &mut Outbox<Msg>) {}

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        let i = self.sent.len() as u64;
        let target = match i % 4 {
            0 | 1 => Target::room(),
            2 => Target::user(Uin(100 + i % 30)),
            _ => Target::room().role(Role::Teacher),
        };
        let class = if i.is_multiple_of(2) { Class::Teacher } else { Class::Signal };
        let msg = Message::new(ROOM, class, Kind(1), vec![0u8; 32]).to(target.clone());
        let env = self.gate.publish(now, msg).expect("accepted");
        self.sent.push((env.seq, target));
        let bytes = env.encode();
        for n in &self.nodes {
            out.send(*n, Msg::Bus(bytes.clone()));
        }
        self.next = now.saturating_add(Duration::from_millis(20));
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        (self.sent.len() < MESSAGES as usize).then_some(self.next)
    }
}

struct Collect(Vec<(ConnId, FrameHeader)>);

impl Connector for Collect {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        self.0.push((frame.conn, frame.header));
        Ok(())
    }
}

struct PushSimNode {
    node: PushNode,
    clients: BTreeMap<ConnId, Addr>,
}

impl PushSimNode {
    fn flush(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        let mut frames = Collect(Vec::new());
        let _ = self.node.flush(now, &mut frames);
        for (conn, header) in frames.0 {
            out.send(self.clients[&conn], Msg::Frame(header));
        }
    }
}

impl SimNode<Msg> for PushSimNode {
    fn handle_message(&mut self, now: Timestamp, from: Addr, msg: Msg, out: &mut Outbox<Msg>) {
        match msg {
            Msg::Bus(bytes) => {
                let env = Envelope::decode(&bytes).expect("the gate sends envelopes");
                self.node.handle_envelope(now, &env).expect("the room has connections");
                self.flush(now, out);
            }
            Msg::Ack { conn, epoch, seq } => {
                let reply = self.node.handle_ack(conn, epoch, seq).expect("honest ack");
                out.send(from, Msg::AckReply(reply));
            }
            Msg::Check { conn, epoch, after } => {
                let answer = self.node.handle_check(now, conn, epoch, after).expect("honest check");
                out.send(from, Msg::Answer(answer));
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        self.node.handle_timeout(now);
        self.flush(now, out);
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        self.node.poll_timeout()
    }
}

struct ClientNode {
    node: Addr,
    conn: ConnId,
    spec: ConnSpec,
    recv: ReliableReceiver,
    delivered: Vec<u64>,
    resets: Vec<(u64, u64)>,
    next_ack: Timestamp,
    check_sent_at: Option<Timestamp>,
}

impl ClientNode {
    fn check(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        // One outstanding check; a lost one is sent again after 300 ms.
        if self.check_sent_at.is_some_and(|at| now.saturating_duration_since(at) < Duration::from_millis(300)) {
            return;
        }
        let (epoch, after) = self.recv.ack();
        out.send(self.node, Msg::Check { conn: self.conn, epoch, after });
        self.check_sent_at = Some(now);
    }
}

impl SimNode<Msg> for ClientNode {
    fn handle_message(&mut self, now: Timestamp, _: Addr, msg: Msg, out: &mut Outbox<Msg>) {
        match msg {
            Msg::Frame(h) => match self.recv.on_frame(&h) {
                Received::Deliver => self.delivered.push(h.seq),
                Received::Check { .. } => self.check(now, out),
                _ => {}
            },
            Msg::AckReply(reply) if self.recv.on_ack_reply(&reply).is_some() => self.check(now, out),
            Msg::Answer(answer) => {
                self.check_sent_at = None;
                match self.recv.on_answer(&answer) {
                    Recovery::Delivered(seqs) => self.delivered.extend(seqs),
                    Recovery::Reset { from, .. } => {
                        if let CheckAnswer::Reset { head, .. } = answer {
                            self.resets.push((from, head));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<Msg>) {
        let (epoch, seq) = self.recv.ack();
        out.send(self.node, Msg::Ack { conn: self.conn, epoch, seq });
        self.next_ack = now.saturating_add(Duration::from_millis(500));
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        Some(self.next_ack)
    }
}

/// What one client ended with: sequence numbers delivered, ranges reset.
type ClientRecord = (Vec<u64>, Vec<(u64, u64)>);

struct Outcome {
    per_client: Vec<ClientRecord>,
    resets: usize,
}

fn run(seed: u64) -> Outcome {
    let mut sim = Sim::new(seed);
    let start = sim.now();
    let mut gate = unlimited_gate(start);
    gate.open_room(start, ROOM).expect("open");
    let gate_addr = sim.add_node("gate", GateNode { gate, nodes: Vec::new(), next: start, sent: Vec::new() });
    let mut node_addrs = Vec::new();
    let mut clients = Vec::new();
    for n in 0..3u64 {
        let mut config = NodeConfig::default();
        config.reliable_lane = 16;
        config.cache_len = 128;
        let mut node = PushNode::new(config);
        let mut specs = Vec::new();
        for c in 0..10u64 {
            let uin = Uin(100 + n * 10 + c);
            let role = if c == 0 { Role::Teacher } else { Role::Student };
            let spec = ConnSpec::new(ROOM, uin, role, Terminal::ALL[(c % 7) as usize]);
            specs.push((spec, node.connect(spec).expect("connects")));
        }
        let addr = sim.add_node(format!("push-{n}"), PushSimNode { node, clients: BTreeMap::new() });
        node_addrs.push(addr);
        for (spec, connected) in specs {
            let client = ClientNode {
                node: addr,
                conn: connected.conn,
                spec,
                recv: ReliableReceiver::new(&connected),
                delivered: Vec::new(),
                resets: Vec::new(),
                next_ack: start.saturating_add(Duration::from_millis(500)),
                check_sent_at: None,
            };
            let caddr = sim.add_node(format!("client-{}", spec.uin.0), client);
            sim.node_mut::<PushSimNode>(addr).expect("push node").clients.insert(connected.conn, caddr);
            clients.push(caddr);
        }
    }
    sim.node_mut::<GateNode>(gate_addr).expect("gate").nodes = node_addrs.clone();
    let bus = LinkConfig::LAN.with_loss(0.01).with_duplicate(0.02);
    for n in &node_addrs {
        sim.set_link(gate_addr, *n, bus);
    }
    let edge = LinkConfig::perfect(Duration::from_millis(20))
        .with_jitter(Duration::from_millis(10))
        .with_loss(0.1)
        .with_duplicate(0.05)
        .with_reorder(0.05, Duration::from_millis(40));
    for (i, c) in clients.iter().enumerate() {
        let n = node_addrs[i / 10];
        sim.set_link(*c, n, edge);
        sim.set_link(n, *c, edge);
    }
    // One client is cut off for two seconds mid-class.
    sim.run_for(Duration::from_secs(2)).expect("runs");
    sim.partition(&[clients[5]], &[node_addrs[0]]);
    sim.run_for(Duration::from_secs(2)).expect("runs");
    sim.heal();
    sim.run_for(Duration::from_secs(20)).expect("runs");

    let sent = sim.node::<GateNode>(gate_addr).expect("gate").sent.clone();
    assert_eq!(sent.len() as u64, MESSAGES);
    let mut per_client = Vec::new();
    let mut resets = 0;
    for c in &clients {
        let client = sim.node::<ClientNode>(*c).expect("client");
        let s = client.spec;
        let aimed: Vec<u64> =
            sent.iter().filter(|(_, t)| t.matches(s.uin, s.role, s.terminal, None)).map(|(seq, _)| *seq).collect();
        assert!(client.delivered.windows(2).all(|w| w[0] < w[1]), "{:?}: out of order or twice", s.uin);
        for seq in &client.delivered {
            assert!(aimed.contains(seq), "{:?} got {seq}, not aimed at it", s.uin);
        }
        for seq in &aimed {
            let reported = client.resets.iter().any(|(from, to)| from <= seq && seq <= to);
            assert!(client.delivered.contains(seq) || reported, "{:?}: seq {seq} silently lost", s.uin);
        }
        resets += client.resets.len();
        per_client.push((client.delivered.clone(), client.resets.clone()));
    }
    Outcome { per_client, resets }
}

#[test]
fn reliable_messages_survive_a_lossy_bus_and_lossy_clients() {
    let outcome = run(7);
    let delivered: usize = outcome.per_client.iter().map(|(d, _)| d.len()).sum();
    println!("3 push nodes, 30 clients: {delivered} deliveries, {} resets reported", outcome.resets);
    assert!(delivered > 30 * 100, "most messages arrive: {delivered}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(11);
    let b = run(11);
    assert_eq!(a.per_client, b.per_client);
}
