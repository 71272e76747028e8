//! Reliable delivery under loss: with up to 20% of frames, acks and check
//! answers lost, every signal and teacher message aimed at a client is
//! delivered or reported as reset: never silently lost, never duplicated.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{Timestamp, Uin};
use room_push::{
    CheckAnswer, Class, ConnId, ConnSpec, Connector, Frame, FrameHeader, Gate, GateConfig, Kind, Message, NodeConfig,
    PushNode, Received, Recovery, ReliableReceiver, SendError, Target,
};
use room_testkit::SimRng;
use support::*;

/// A connector that loses frames at random.
struct Lossy<'a> {
    rng: &'a mut SimRng,
    loss: f64,
    inbox: BTreeMap<ConnId, Vec<FrameHeader>>,
}

impl Connector for Lossy<'_> {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        if !self.rng.chance(self.loss) {
            self.inbox.entry(frame.conn).or_default().push(frame.header);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Client {
    delivered: Vec<u64>,
    reset: Vec<(u64, u64)>,
    want_check: bool,
}

struct World {
    gate: Gate,
    node: PushNode,
    rng: SimRng,
    loss: f64,
    now: Timestamp,
    clients: BTreeMap<ConnId, (ReliableReceiver, Client)>,
}

impl World {
    fn round(&mut self, ack: bool) {
        let mut lossy = Lossy { rng: &mut self.rng, loss: self.loss, inbox: BTreeMap::new() };
        let _ = self.node.flush(self.now, &mut lossy);
        let inbox = lossy.inbox;
        for (id, (recv, client)) in self.clients.iter_mut() {
            for h in inbox.get(id).into_iter().flatten() {
                match recv.on_frame(h) {
                    Received::Deliver => client.delivered.push(h.seq),
                    Received::Check { .. } => client.want_check = true,
                    _ => {}
                }
            }
            if ack {
                let (epoch, seq) = recv.ack();
                let reply = self.node.handle_ack(*id, epoch, seq).expect("an honest ack is accepted");
                if !self.rng.chance(self.loss) && recv.on_ack_reply(&reply).is_some() {
                    client.want_check = true;
                }
            }
            if client.want_check {
                let (epoch, after) = recv.ack();
                let answer = self.node.handle_check(self.now, *id, epoch, after).expect("an honest check is accepted");
                if self.rng.chance(self.loss) {
                    continue;
                }
                client.want_check = false;
                match recv.on_answer(&answer) {
                    Recovery::Delivered(seqs) => client.delivered.extend(seqs),
                    Recovery::Reset { from, .. } => {
                        let CheckAnswer::Reset { head, .. } = answer else { unreachable!() };
                        client.reset.push((from, head));
                    }
                    _ => {}
                }
            }
        }
        self.now = self.now.saturating_add(Duration::from_millis(50));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn reliable_messages_are_delivered_or_reported(
        seed in any::<u64>(),
        loss_pct in 0u32..=20,
        lane in 2usize..12,
        cache_len in 4usize..64,
        answer_cap in 1usize..6,
        members in proptest::collection::vec((0u64..6, 0u8..5, 0u8..7), 1..8),
        msgs in proptest::collection::vec((any::<bool>(), 0u8..4, 0u64..6), 1..80),
    ) {
        let mut config = NodeConfig::default();
        config.reliable_lane = lane;
        config.cache_len = cache_len;
        config.max_check_answer = answer_cap;
        let mut gate_config = GateConfig::default();
        gate_config.room_reliable_quota = generous();
        let now = Timestamp::from_millis(10_000);
        let mut gate = Gate::new(gate_config);
        gate.open_room(now, ROOM).expect("opens");
        let mut node = PushNode::new(config);
        let mut clients = BTreeMap::new();
        let mut attrs = BTreeMap::new();
        for (u, r, t) in &members {
            let spec = ConnSpec::new(ROOM, uin(*u), role_of(*r), terminal_of(*t));
            let c = node.connect(spec).expect("connects");
            clients.insert(c.conn, (ReliableReceiver::new(&c), Client::default()));
            attrs.insert(c.conn, spec);
        }
        let mut world = World { gate, node, rng: SimRng::new(seed), loss: f64::from(loss_pct) / 100.0, now, clients };
        let mut aimed: BTreeMap<ConnId, Vec<u64>> = BTreeMap::new();
        for (i, (teacher, shape, who)) in msgs.iter().enumerate() {
            let target = match shape {
                0 | 1 => Target::room(),
                2 => Target::user(Uin(*who)),
                _ => Target::room().role(role_of(*who as u8)),
            };
            let class = if *teacher { Class::Teacher } else { Class::Signal };
            let msg = Message::new(ROOM, class, Kind(3), vec![0; 8]).to(target.clone());
            let env = world.gate.publish(world.now, msg).expect("accepted");
            world.node.handle_envelope(world.now, &env).expect("handled");
            for (id, s) in &attrs {
                if target.matches(s.uin, s.role, s.terminal, None) {
                    aimed.entry(*id).or_default().push(env.seq);
                }
            }
            // Flush and ack only now and then, so lanes overflow.
            if i % 5 == 4 {
                let ack = i % 10 == 9;
                world.round(ack);
            }
        }
        // Quiet time: clients keep acking and checking until they are done.
        for _ in 0..400 {
            world.round(true);
        }
        for (id, (recv, client)) in &world.clients {
            let want = aimed.remove(id).unwrap_or_default();
            // Delivered in order, each once, and only what was aimed at it.
            prop_assert!(client.delivered.windows(2).all(|w| w[0] < w[1]), "out of order or twice: {:?}", client.delivered);
            for s in &client.delivered {
                prop_assert!(want.contains(s), "seq {} delivered but not aimed at {:?}", s, id);
            }
            for s in &want {
                let got = client.delivered.contains(s);
                let reported = client.reset.iter().any(|(from, to)| from <= s && s <= to);
                prop_assert!(got || reported, "seq {} silently lost for {:?} (delivered {:?}, resets {:?})", s, id, client.delivered, client.reset);
            }
            if !want.is_empty() {
                prop_assert_eq!(recv.epoch(), world.gate.sequence(ROOM).expect("open").0);
            }
        }
    }
}
