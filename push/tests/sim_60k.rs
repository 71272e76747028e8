//! A 60,000-member room for ten virtual seconds: 5% of the clients read at
//! a tenth of the others' speed, chat arrives at 1,000 lines a second and
//! the teacher speaks ten times a second. Signal and teacher messages must
//! all arrive, everywhere; chat is shed, by policy, only on slow clients;
//! lanes stay bounded. Seeded: the same seed gives the same run.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use room_core::{Role, Terminal, Timestamp, Uin};
use room_push::{
    ConnId, ConnSpec, Connector, Frame, FrameKind, Gate, GateConfig, Kind, Message, NodeConfig, PushNode, Quota,
    Received, Recovery, ReliableReceiver, SendError, Sender,
};
use room_testkit::SimRng;
use support::*;

const MEMBERS: u64 = 60_000;
const TICK: Duration = Duration::from_millis(10);
const FAST_BYTES_PER_TICK: i64 = 320; // 32 KB/s
const SLOW_BYTES_PER_TICK: i64 = 32; // 3.2 KB/s: a tenth
const HEADER: i64 = 24;

#[derive(Default)]
struct Client {
    slow: bool,
    subclass: Option<room_push::SubclassId>,
    credit: i64,
    reliable: Vec<u64>,
    chat_lines: u64,
    want_check: bool,
    resets: u64,
}

struct Net<'a> {
    clients: &'a mut [Client],
    recv: &'a mut [ReliableReceiver],
    index: &'a HashMap<ConnId, usize>,
}

impl Connector for Net<'_> {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        let i = self.index[&frame.conn];
        let c = &mut self.clients[i];
        let size = frame.body.len() as i64 + HEADER;
        if c.credit < size {
            return Err(SendError::WouldBlock);
        }
        c.credit -= size;
        match self.recv[i].on_frame(&frame.header) {
            Received::Deliver => c.reliable.push(frame.header.seq),
            Received::Check { .. } => c.want_check = true,
            Received::Unsequenced if frame.header.kind == FrameKind::ChatBatch => {
                c.chat_lines += u64::from(u32::from_le_bytes(frame.body[..4].try_into().expect("count")));
            }
            _ => {}
        }
        Ok(())
    }
}

struct Run {
    slow: Vec<bool>,
    reliable_sent: Vec<u64>,
    clients: Vec<Client>,
    chat_expected: Vec<u64>,
    max_queued: u64,
    stats: room_push::NodeStats,
    chat_refused: u64,
}

fn run(seed: u64) -> Run {
    let mut rng = SimRng::new(seed);
    let mut now = Timestamp::from_millis(1_000_000);
    let mut gate_config = GateConfig::default();
    gate_config.room_chat_quota = Quota::per_second(2_000).and_then(|q| q.with_burst(400)).expect("valid");
    let mut gate = Gate::new(gate_config);
    gate.open_room(now, ROOM).expect("opens");
    let mut node = PushNode::new(NodeConfig::default());
    let mut clients: Vec<Client> = Vec::with_capacity(MEMBERS as usize + 1);
    let mut recv = Vec::with_capacity(MEMBERS as usize + 1);
    let mut conn_ids = Vec::with_capacity(MEMBERS as usize + 1);
    let mut index = HashMap::new();
    let teacher = Sender { uin: Uin(1), role: Role::Teacher };
    for n in 0..=MEMBERS {
        let (uin, role) = if n == 0 { (Uin(1), Role::Teacher) } else { (Uin(1_000 + n), Role::Student) };
        let joined = gate.join(now, ROOM, uin, role).expect("joins");
        assert!(joined.moves.is_empty() || n > 500, "moves only once the first sub-class is full");
        for m in &joined.moves {
            let _ = node.handle_envelope(now, m);
            let p = &m.message.payload;
            let moved = u64::from_le_bytes(p[..8].try_into().expect("uin")) - 1_000;
            let to = u16::from_le_bytes([p[8], p[9]]);
            clients[moved as usize].subclass = Some(room_push::SubclassId(to));
        }
        let spec = ConnSpec::new(ROOM, uin, role, Terminal::ALL[n as usize % 7]).in_subclass(joined.subclass);
        let connected = node.connect(spec).expect("connects");
        index.insert(connected.conn, n as usize);
        conn_ids.push(connected.conn);
        recv.push(ReliableReceiver::new(&connected));
        clients.push(Client { slow: n > 0 && rng.chance(0.05), subclass: joined.subclass, ..Client::default() });
    }
    // Joining moved members between sub-classes; those signals count as
    // reliable messages too (to one user each).
    let mut reliable_sent = Vec::new();
    let payload = vec![7u8; 256];
    let mut max_queued = 0;
    let mut chat_refused = 0;
    let mut lines_to: HashMap<Option<room_push::SubclassId>, u64> = HashMap::new();
    let ticks = 1_000;
    // Long enough for a slow client to drain a full chat lane of merged
    // batches (32 frames of a few lines each at 3.2 KB/s).
    let quiet = 1_500;
    for tick in 0..ticks + quiet {
        if tick < ticks {
            for _ in 0..10 {
                let who = 1_000 + 1 + rng.below(MEMBERS);
                let sender = Sender { uin: Uin(who), role: Role::Student };
                match gate.publish(
                    now,
                    Message::new(ROOM, room_push::Class::Chat, Kind(1), payload.clone()).from_sender(sender),
                ) {
                    Ok(env) => {
                        *lines_to.entry(env.message.target.subclass).or_insert(0) += 1;
                        node.handle_envelope(now, &env).expect("handled");
                    }
                    Err(_) => chat_refused += 1,
                }
            }
            if tick % 10 == 0 {
                let msg = Message::new(ROOM, room_push::Class::Teacher, Kind(2), payload.clone()).from_sender(teacher);
                let env = gate.publish(now, msg).expect("teacher speaks");
                reliable_sent.push(env.seq);
                node.handle_envelope(now, &env).expect("handled");
            }
            if tick % 200 == 0 {
                let msg = Message::new(ROOM, room_push::Class::Signal, Kind(3), vec![1u8; 16]);
                let env = gate.publish(now, msg).expect("page turn");
                reliable_sent.push(env.seq);
                node.handle_envelope(now, &env).expect("handled");
            }
        }
        node.handle_timeout(now);
        for (i, c) in clients.iter_mut().enumerate() {
            // The teacher's console sees every sub-class's chat: 1 MB/s.
            let rate = if i == 0 {
                10_000
            } else if c.slow {
                SLOW_BYTES_PER_TICK
            } else {
                FAST_BYTES_PER_TICK
            };
            // A client's socket buffer holds about a second of its rate.
            c.credit = (c.credit + rate).min(rate * 100);
            let _ = node.set_writable(conn_ids[i]);
        }
        let _ = node.flush(now, &mut Net { clients: &mut clients, recv: &mut recv, index: &index });
        max_queued = max_queued.max(node.stats().queued_frames);
        // Acks every two seconds, spread over the ticks; checks when asked.
        for i in (tick as usize % 200..clients.len()).step_by(200) {
            let (epoch, seq) = recv[i].ack();
            let reply = node.handle_ack(conn_ids[i], epoch, seq).expect("honest ack");
            if recv[i].on_ack_reply(&reply).is_some() {
                clients[i].want_check = true;
            }
        }
        for i in 0..clients.len() {
            if clients[i].want_check {
                clients[i].want_check = false;
                let (epoch, after) = recv[i].ack();
                let answer = node.handle_check(now, conn_ids[i], epoch, after).expect("honest check");
                match recv[i].on_answer(&answer) {
                    Recovery::Delivered(seqs) => clients[i].reliable.extend(seqs),
                    Recovery::Reset { .. } => clients[i].resets += 1,
                    _ => {}
                }
            }
        }
        now = now.saturating_add(TICK);
    }
    let total_lines: u64 = lines_to.values().sum();
    let chat_expected = clients
        .iter()
        .map(|c| match c.subclass {
            None => total_lines,
            Some(s) => lines_to.get(&Some(s)).copied().unwrap_or(0) + lines_to.get(&None).copied().unwrap_or(0),
        })
        .collect();
    Run {
        slow: clients.iter().map(|c| c.slow).collect(),
        reliable_sent,
        clients,
        chat_expected,
        max_queued,
        stats: node.stats(),
        chat_refused,
    }
}

#[test]
fn sixty_thousand_members_with_slow_readers() {
    let r = run(2026);
    let slow = r.slow.iter().filter(|s| **s).count();
    assert!((2_500..3_500).contains(&slow), "about 5% slow: {slow}");
    // Zero loss of signal and teacher messages, on fast and slow clients.
    for (i, c) in r.clients.iter().enumerate() {
        assert_eq!(c.resets, 0, "client {i} needed a reset");
        let broadcast: Vec<u64> = c.reliable.iter().copied().filter(|s| r.reliable_sent.contains(s)).collect();
        assert_eq!(broadcast, r.reliable_sent, "client {i} (slow: {}) missed reliable messages", c.slow);
    }
    // Chat: fast clients got every line of their sub-class (the teacher,
    // in none, got every line); slow clients lost chat, by policy.
    let (mut slow_got, mut slow_expected) = (0, 0);
    for (i, c) in r.clients.iter().enumerate() {
        if c.slow {
            assert!(c.chat_lines <= r.chat_expected[i]);
            slow_got += c.chat_lines;
            slow_expected += r.chat_expected[i];
        } else {
            assert_eq!(c.chat_lines, r.chat_expected[i], "fast client {i} lost chat");
        }
    }
    assert!(slow_got < slow_expected, "slow clients shed chat: {slow_got} of {slow_expected} lines");
    assert!(r.stats.chat_shed > 0);
    assert_eq!(r.stats.resyncs, 0, "reliable lanes never overflowed");
    // Bounded: nothing left queued, and the peak within the lanes' bounds.
    assert_eq!(r.stats.queued_frames, 0);
    let per_conn_bound = (NodeConfig::default().reliable_lane + NodeConfig::default().chat_lane + 2) as u64;
    assert!(r.max_queued <= slow as u64 * per_conn_bound + (MEMBERS + 1 - slow as u64) * 4, "peak {}", r.max_queued);
    println!(
        "60k room: {} reliable messages delivered to all; slow clients got {slow_got} of {slow_expected} chat lines; chat shed {} frames; peak queue {} frames; chat refused at the gate {}",
        r.reliable_sent.len(),
        r.stats.chat_shed,
        r.max_queued,
        r.chat_refused
    );
}
