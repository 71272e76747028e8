//! Seeded simulation of room ownership moving between nodes while
//! messages are numbered: overlapping owners (a view still settling),
//! owners that learn late that they lost a room, a bus that loses,
//! duplicates and reorders envelopes, and a push node that refills gaps
//! from the shared cache. The shared cache's append is the fence.

use std::collections::{BTreeMap, BTreeSet};

use futures::executor::block_on;
use room_core::{BusinessId, Role, RoomId, RoomKey, Timestamp, Uin};
use room_push::shared_cache::missing_before;
use room_push::{
    Class, Envelope, FencedGate, GateConfig, InMemorySharedCache, Kind, Message, Numbered, Quota, Sender, SharedCache,
};
use room_testkit::SimRng;

const ROOM: RoomKey = RoomKey::new(BusinessId(1), RoomId(7));
const NODES: usize = 3;

fn generous() -> GateConfig {
    let mut config = GateConfig::default();
    let q = Quota::per_second(1_000_000).and_then(|q| q.with_burst(1_000_000)).expect("valid");
    config.room_reliable_quota = q;
    config.user_quota = q;
    config
}

struct Outcome {
    published: BTreeMap<(u64, u64), String>,
    fenced: usize,
    requests: usize,
    delivered: BTreeMap<(u64, u64), String>,
    renumbered: u64,
}

fn run(seed: u64) -> Outcome {
    let mut rng = SimRng::new(seed);
    let cache = InMemorySharedCache::new(100_000, 4);
    let mut gates: Vec<FencedGate> = (0..NODES).map(|_| FencedGate::new(generous())).collect();
    // Who owns the room, and who still believes it does.
    let mut owner = 0usize;
    let mut stale: Option<usize> = None;
    let mut bus: Vec<Envelope> = Vec::new();
    let mut published = BTreeMap::new();
    let (mut fenced, mut requests) = (0, 0);
    // The consumer: a push node's view of the room's sequence.
    let mut head: Option<(u64, u64)> = None;
    let mut delivered: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let teacher = Sender { uin: Uin(1), role: Role::Teacher };
    for step in 0..400u64 {
        let now = Timestamp::from_millis(1_000 + step);
        match rng.below(10) {
            // Ownership moves; the old owner keeps numbering until it learns.
            0 => {
                let next = (owner + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
                stale = Some(owner);
                owner = next;
            }
            // The stale owner learns it lost the room.
            1 => {
                if let Some(old) = stale.take() {
                    gates[old].release(ROOM);
                }
            }
            // A message, sent to whichever node the asker believes owns it.
            2..=6 => {
                requests += 1;
                let text = format!("r{step}");
                let at = match stale {
                    Some(old) if rng.chance(0.5) => old,
                    _ => owner,
                };
                let msg = Message::new(ROOM, Class::Teacher, Kind(2), text.clone()).from_sender(teacher);
                match block_on(gates[at].number(&cache, now, msg, 0)) {
                    Numbered::Publish(env) => {
                        let previous = published.insert((env.epoch, env.seq), text);
                        assert!(previous.is_none(), "seed {seed}: number {:?} published twice", (env.epoch, env.seq));
                        bus.push(env.clone());
                        if rng.chance(0.2) {
                            bus.push(env);
                        }
                    }
                    Numbered::Fenced => fenced += 1,
                    other => panic!("seed {seed}: unexpected {other:?}"),
                }
            }
            // The bus delivers something, in any order, or loses it.
            _ => {
                if bus.is_empty() {
                    continue;
                }
                let env = bus.swap_remove(rng.below(bus.len() as u64) as usize);
                if rng.chance(0.1) {
                    continue;
                }
                deliver(&cache, &mut head, &mut delivered, &env);
            }
        }
    }
    // Drain the bus, then catch up from the cache as a client's check would.
    while let Some(env) = bus.pop() {
        deliver(&cache, &mut head, &mut delivered, &env);
    }
    if let Ok(Some((epoch, newest))) = block_on(cache.head(ROOM)) {
        let after = head.filter(|(e, _)| *e == epoch).map_or(0, |(_, h)| h);
        if newest > after {
            for e in block_on(cache.range(ROOM, epoch, after, newest)).expect("range") {
                apply(&mut head, &mut delivered, &e);
            }
        }
    }
    let renumbered = gates.iter().map(FencedGate::renumbered).sum();
    Outcome { published, fenced, requests, delivered, renumbered }
}

/// The consumer follows the room from its first message: it takes the
/// next number only, and checks a repeated number carries the same message.
fn apply(head: &mut Option<(u64, u64)>, delivered: &mut BTreeMap<(u64, u64), String>, env: &Envelope) {
    let text = String::from_utf8_lossy(&env.message.payload).into_owned();
    let next = match *head {
        None => 1,
        Some((epoch, h)) if epoch == env.epoch => {
            if env.seq <= h {
                assert_eq!(delivered.get(&(env.epoch, env.seq)), Some(&text), "a number carried two messages");
                return;
            }
            h + 1
        }
        Some((epoch, _)) if env.epoch < epoch => return,
        Some(_) => 1,
    };
    // Past a hole the cache could not fill: left for the catch-up.
    if env.seq == next {
        delivered.insert((env.epoch, env.seq), text);
        *head = Some((env.epoch, env.seq));
    }
}

/// A push node: refills a gap from the cache, then takes the envelope.
fn deliver(
    cache: &InMemorySharedCache,
    head: &mut Option<(u64, u64)>,
    delivered: &mut BTreeMap<(u64, u64), String>,
    env: &Envelope,
) {
    let missing = match *head {
        None if env.seq > 1 => Some((0, env.seq - 1)),
        h => missing_before(h, env),
    };
    if let Some((after, upto)) = missing {
        for m in block_on(cache.range(ROOM, env.epoch, after, upto)).expect("range") {
            apply(head, delivered, &m);
        }
    }
    apply(head, delivered, env);
}

#[test]
fn ownership_moves_without_a_number_published_twice_or_lost() {
    let (mut renumbered, mut fenced, mut requests, mut published) = (0, 0, 0, 0);
    for seed in 0..300 {
        let o = run(seed);
        // Every published message reached the push node, under its number.
        assert_eq!(o.delivered, o.published, "seed {seed}: the push node did not get exactly what was published");
        // One epoch: owners resume the sequence; numbers are contiguous.
        let epochs: BTreeSet<u64> = o.published.keys().map(|k| k.0).collect();
        assert!(epochs.len() <= 1, "seed {seed}: the sequence restarted: {epochs:?}");
        let seqs: Vec<u64> = o.published.keys().map(|k| k.1).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seed {seed}: numbers with holes");
        assert_eq!(o.published.len() + o.fenced, o.requests, "seed {seed}: a request unaccounted for");
        renumbered += o.renumbered;
        fenced += o.fenced;
        requests += o.requests;
        published += o.published.len();
    }
    // The fence was exercised.
    assert!(renumbered > 0, "no seed made two owners collide");
    println!(
        "{requests} requests: {published} published, {renumbered} renumbered after the fence refused, {fenced} fenced out"
    );
}
