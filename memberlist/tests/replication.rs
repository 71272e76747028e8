//! Multi-master replication, property-tested: any interleaving,
//! duplication and reordering of replicated writes converges to the same
//! state on every replica; with messages lost, one anti-entropy round
//! makes the replicas equal; checked joins never exceed a seat limit.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{BusinessId, NodeId, Role, RoomId, RoomKey, RouterConfig, Terminal, Timestamp, Uin};
use room_memberlist::{MemberStore, Record, ReplMsg, Replica, ReplicaConfig, ReplicaEvent, StoreError, WriteOp};

const NODES: u64 = 3;

fn rooms() -> [RoomKey; 3] {
    [1, 2, 3].map(|r| RoomKey::new(BusinessId(7), RoomId(r)))
}

fn cluster(n: u64, replicas_per_room: usize) -> Vec<Replica> {
    (0..n)
        .map(|i| {
            let mut config = ReplicaConfig::new(NodeId(i));
            config.replicas = replicas_per_room;
            config.router = RouterConfig::new().with_slot_bits(10).unwrap();
            config.anti_entropy_interval = Duration::from_millis(500);
            config.digest_buckets = 8;
            let r = Replica::new(config);
            r.set_nodes((0..n).map(|j| (NodeId(j), 100))).unwrap();
            r
        })
        .collect()
}

fn op() -> impl Strategy<Value = WriteOp> {
    let uin = (1u64..25).prop_map(Uin);
    let role = prop_oneof![Just(Role::Teacher), Just(Role::Student), Just(Role::Observer)];
    let terminal = (0usize..3).prop_map(|i| Terminal::ALL[i]);
    prop_oneof![
        4 => (uin.clone(), role.clone(), terminal.clone()).prop_map(|(uin, role, terminal)| WriteOp::Enter { uin, role, terminal, attrs: None }),
        3 => (uin.clone(), terminal).prop_map(|(uin, terminal)| WriteOp::Exit { uin, terminal }),
        1 => uin.clone().prop_map(|uin| WriteOp::Remove { uin }),
        1 => (uin, role).prop_map(|(uin, role)| WriteOp::Update { uin, role: Some(role), attrs: Some(bytes::Bytes::from_static(b"x")) }),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    /// A write at replica `node` of room `room`.
    Write { node: usize, room: usize, op: WriteOp, dt: u64 },
    /// Deliver message `index` (modulo the pool); keep a copy with `dup`.
    Deliver { index: usize, dup: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..NODES as usize, 0usize..3, op(), 0u64..5).prop_map(|(node, room, op, dt)| Step::Write {
            node,
            room,
            op,
            dt
        }),
        (any::<usize>(), proptest::bool::weighted(0.3)).prop_map(|(index, dup)| Step::Deliver { index, dup }),
    ]
}

type Pool = Vec<(NodeId, NodeId, ReplMsg)>;

fn collect(replicas: &[Replica], pool: &mut Pool) {
    for r in replicas {
        while let Some((to, msg)) = r.poll_transmit() {
            pool.push((r.node(), to, msg));
        }
    }
}

/// Delivers everything, including what deliveries cause, until quiet.
fn pump(replicas: &[Replica], now: Timestamp, pool: &mut Pool) -> usize {
    let mut delivered = 0;
    collect(replicas, pool);
    while !pool.is_empty() {
        for (from, to, msg) in std::mem::take(pool) {
            replicas[to.0 as usize].handle_message(now, from, msg);
            delivered += 1;
        }
        collect(replicas, pool);
    }
    delivered
}

/// A room's records; with `tombstones` false, only present members'.
/// One anti-entropy round started at every replica, run until quiet.
fn round(replicas: &[Replica], now: Timestamp, pool: &mut Pool) {
    for r in replicas {
        r.handle_timeout(now);
    }
    pump(replicas, now, pool);
}

fn state(r: &Replica, room: RoomKey, tombstones: bool) -> Vec<Record> {
    let mut v: Vec<Record> =
        r.store().records(room).into_iter().filter(|rec| tombstones || rec.state.is_some()).collect();
    v.sort_by_key(|rec| rec.uin);
    v
}

/// Every replica holds the same records. Anti-entropy compares present
/// members only (a tombstone for a member a replica never saw changes
/// nothing it shows), so after repair only those are compared.
fn assert_equal(replicas: &[Replica], tombstones: bool) -> Result<(), TestCaseError> {
    for room in rooms() {
        let first = state(&replicas[0], room, tombstones);
        for r in &replicas[1..] {
            prop_assert_eq!(&state(r, room, tombstones), &first, "room {} on node {:?}", room, r.node());
            prop_assert_eq!(r.store().members(room), replicas[0].store().members(room));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Writes at every replica, messages delivered in any order, some
    /// twice: once everything is delivered, every replica holds the same
    /// records (members and tombstones) and lists the same members.
    #[test]
    fn any_delivery_order_with_duplicates_converges(steps in proptest::collection::vec(step(), 1..200), tail_order in any::<u64>()) {
        let replicas = cluster(NODES, 3);
        let mut now = Timestamp::from_millis(10_000);
        let mut pool: Pool = Vec::new();
        for s in steps {
            collect(&replicas, &mut pool);
            match s {
                Step::Write { node, room, op, dt } => {
                    now = now + Duration::from_millis(dt);
                    let _ = replicas[node].apply(now, rooms()[room], &[op]);
                }
                Step::Deliver { index, dup } => {
                    if pool.is_empty() { continue; }
                    let i = index % pool.len();
                    let (from, to, msg) = if dup { pool[i].clone() } else { pool.swap_remove(i) };
                    replicas[to.0 as usize].handle_message(now, from, msg);
                }
            }
        }
        // The rest, in a scrambled order.
        collect(&replicas, &mut pool);
        let mut seed = tail_order | 1;
        while !pool.is_empty() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = (seed >> 33) as usize % pool.len();
            let (from, to, msg) = pool.swap_remove(i);
            replicas[to.0 as usize].handle_message(now, from, msg);
            collect(&replicas, &mut pool);
        }
        assert_equal(&replicas, true)?;
    }

    /// Writes whose messages are lost: one anti-entropy round (digests,
    /// bucket digests, repair both ways) makes every replica equal.
    #[test]
    fn one_anti_entropy_round_repairs_lost_writes(writes in proptest::collection::vec((0usize..NODES as usize, 0usize..3, op()), 1..150), keep in proptest::collection::vec(any::<bool>(), 200)) {
        let replicas = cluster(NODES, 3);
        let now = Timestamp::from_millis(50_000);
        let mut pool: Pool = Vec::new();
        // Start-up round, so that the timer is set and later rounds are
        // regular ones.
        round(&replicas, now, &mut pool);
        let mut k = keep.iter().cycle();
        for (i, (node, room, op)) in writes.into_iter().enumerate() {
            let t = now + Duration::from_millis(i as u64);
            let _ = replicas[node].apply(t, rooms()[room], &[op]);
            collect(&replicas, &mut pool);
            // Lose about half of the replication messages.
            for (from, to, msg) in std::mem::take(&mut pool) {
                if *k.next().unwrap() {
                    replicas[to.0 as usize].handle_message(t, from, msg);
                }
            }
        }
        // One round, started by one replica, with every message delivered.
        let later = now + Duration::from_secs(1);
        replicas[0].handle_timeout(later);
        pump(&replicas, later, &mut pool);
        // Replica 0 is now equal to each peer; one round from each other
        // replica settles what 1 and 2 exchanged only through 0.
        prop_assert!(replicas[0].stats().rounds_completed >= 2);
        for r in &replicas[1..] { r.handle_timeout(later); }
        pump(&replicas, later, &mut pool);
        assert_equal(&replicas, false)?;
    }

    /// Checked joins at random replicas into a room with a seat limit,
    /// with exits between them: the room never holds more than its limit,
    /// on any replica, at any time.
    #[test]
    fn checked_joins_never_exceed_the_seat_limit(joins in proptest::collection::vec((0usize..NODES as usize, 1u64..40, any::<bool>()), 1..120), limit in 1u32..10) {
        let replicas = cluster(NODES, 3);
        let room = rooms()[0];
        let mut now = Timestamp::from_millis(1_000);
        let mut pool: Pool = Vec::new();
        round(&replicas, now, &mut pool);
        prop_assert!(replicas.iter().all(Replica::is_ready));
        let primary = replicas[0].owners(room)[0];
        replicas[primary.0 as usize].set_seat_limit(room, Some(limit)).unwrap();
        pump(&replicas, now, &mut pool);
        let mut admitted = 0;
        let asked = joins.iter().filter(|j| !j.2).count();
        for (node, uin, leave_first) in joins {
            now = now + Duration::from_millis(3);
            let member = room.member(Uin(uin));
            if leave_first {
                // Whoever is present may leave, at any owner.
                let _ = replicas[node].apply(now, room, &[WriteOp::Remove { uin: Uin(uin) }]);
            } else {
                let _ = replicas[node].join_checked(now, member, Role::Student, Terminal::Web, None);
            }
            // Deliver in small steps, checking the count on every replica.
            collect(&replicas, &mut pool);
            while !pool.is_empty() {
                let (from, to, msg) = pool.remove(0);
                replicas[to.0 as usize].handle_message(now, from, msg);
                for r in &replicas {
                    let total = r.counts(room).map_or(0, |c| c.total());
                    prop_assert!(total <= limit, "{} members with a limit of {}", total, limit);
                }
                collect(&replicas, &mut pool);
            }
            for r in &replicas {
                while let Some(e) = r.poll_event() {
                    if let ReplicaEvent::Joined { result: Ok(_), .. } = e { admitted += 1; }
                    if let ReplicaEvent::Joined { result: Err(e), .. } = e {
                        prop_assert!(matches!(e, StoreError::RoomFull { .. }), "unexpected {:?}", e);
                    }
                }
            }
        }
        // The first join finds seats free.
        prop_assert!(asked == 0 || admitted > 0);
        // A plain enter of a new member into a limited room is refused.
        let newcomer = room.member(Uin(1_000));
        let refused = replicas[1].enter(now, newcomer, Role::Student, Terminal::Web, None);
        prop_assert_eq!(refused, Err(StoreError::NeedsCheckedJoin));
    }
}

#[test]
fn garbage_from_a_replica_is_dropped_and_counted() {
    let replicas = cluster(NODES, 3);
    let now = Timestamp::from_millis(1_000);
    let room = rooms()[0];
    let bad = |state| ReplMsg::Writes {
        room,
        records: vec![Record { uin: Uin(5), stamp: room_memberlist::Stamp { hlc: 1_000 << 16, origin: 9 }, state }],
        ack: None,
    };
    // A present member with no terminal.
    replicas[0].handle_message(
        now,
        NodeId(1),
        bad(Some(room_memberlist::MemberState {
            role: Role::Student,
            terminals: room_core::TerminalSet::EMPTY,
            joined: now,
            attrs: bytes::Bytes::new(),
        })),
    );
    // Oversized attributes.
    replicas[0].handle_message(
        now,
        NodeId(1),
        bad(Some(room_memberlist::MemberState {
            role: Role::Student,
            terminals: room_core::TerminalSet::only(Terminal::Web),
            joined: now,
            attrs: bytes::Bytes::from(vec![0; 10_000]),
        })),
    );
    // A stamp an hour in the future.
    let future = ReplMsg::Writes {
        room,
        records: vec![Record {
            uin: Uin(6),
            stamp: room_memberlist::Stamp { hlc: (1_000 + 3_600_000) << 16, origin: 9 },
            state: None,
        }],
        ack: None,
    };
    replicas[0].handle_message(now, NodeId(1), future);
    assert_eq!(replicas[0].stats().records_rejected, 3);
    assert!(replicas[0].store().records(room).is_empty());
    // Replies to rounds or acks that do not exist are ignored.
    replicas[0].handle_message(now, NodeId(1), ReplMsg::Ack { id: 424_242 });
    replicas[0].handle_message(now, NodeId(1), ReplMsg::DigestReply { round: 99, differing: vec![(room, vec![1, 2])] });
    replicas[0].handle_message(
        now,
        NodeId(1),
        ReplMsg::JoinReply { ticket: 77, result: Ok(room_memberlist::WriteOutcome::Entered) },
    );
    assert!(replicas[0].poll_event().is_none());
    // Writes for a room this node does not own (two owners out of three).
    let lone = cluster(NODES, 2);
    let foreign = (1..200u64)
        .map(|r| RoomKey::new(BusinessId(7), RoomId(r)))
        .find(|&r| !lone[0].owners(r).contains(&NodeId(0)))
        .unwrap();
    lone[0].handle_message(now, NodeId(1), ReplMsg::Writes { room: foreign, records: vec![], ack: None });
    assert_eq!(lone[0].stats().foreign_messages, 1);
    assert_eq!(lone[0].apply(now, foreign, &[]), Err(StoreError::NotOwner { room: foreign }));
}

#[test]
fn a_room_moves_to_a_new_owner_through_anti_entropy() {
    // Two nodes, one owner per room; a third node joins and takes rooms.
    let all = cluster(3, 1);
    let now = Timestamp::from_millis(1_000);
    for r in &all[..2] {
        r.set_nodes((0..2).map(|j| (NodeId(j), 100))).unwrap();
    }
    let mut pool: Pool = Vec::new();
    let keys: Vec<RoomKey> = (1..60u64).map(|r| RoomKey::new(BusinessId(7), RoomId(r))).collect();
    let mut expected = BTreeMap::new();
    for &room in &keys {
        let owner = all[0].owners(room)[0];
        for uin in 1..=3 {
            all[owner.0 as usize].enter(now, room.member(Uin(uin)), Role::Student, Terminal::Ios, None).unwrap();
        }
        expected.insert(room, all[owner.0 as usize].store().members(room));
    }
    pump(&all, now, &mut pool);
    let later = now + Duration::from_secs(1);
    for r in &all {
        r.set_nodes((0..3).map(|j| (NodeId(j), 100))).unwrap();
    }
    for r in &all {
        r.handle_timeout(later);
    }
    pump(&all, later, &mut pool);
    let moved = keys.iter().filter(|&&room| all[0].owners(room)[0] == NodeId(2)).count();
    assert!(moved > 0, "some rooms move to the new node");
    for &room in &keys {
        let owner = all[0].owners(room)[0];
        assert_eq!(all[owner.0 as usize].store().members(room), expected[&room], "room {room}");
        for r in all.iter().filter(|r| r.node() != owner) {
            assert!(r.store().members(room).is_empty(), "a former owner dropped {room}");
        }
    }
}

#[test]
fn tombstones_are_dropped_after_their_time_and_kept_before() {
    let mut config = ReplicaConfig::new(NodeId(0));
    config.tombstone_ttl = Duration::from_secs(60);
    let replica = Replica::new(config);
    replica.set_nodes([(NodeId(0), 100)]).unwrap();
    let room = rooms()[0];
    let t0 = Timestamp::from_millis(1_000_000);
    for uin in 1..=10 {
        replica.enter(t0, room.member(Uin(uin)), Role::Student, Terminal::Web, None).unwrap();
    }
    for uin in 1..=5 {
        replica.apply(t0, room, &[WriteOp::Remove { uin: Uin(uin) }]).unwrap();
    }
    let later = t0 + Duration::from_secs(30);
    for uin in 6..=8 {
        replica.apply(later, room, &[WriteOp::Remove { uin: Uin(uin) }]).unwrap();
    }
    assert_eq!(replica.store().tombstones(room), 8);
    // 61 s after t0: the first five are past their time, the other three not.
    replica.handle_timeout(t0 + Duration::from_secs(61));
    assert_eq!(replica.store().tombstones(room), 3);
    assert_eq!(replica.stats().tombstones_dropped, 5);
    assert_eq!(replica.counts(room).unwrap().total(), 2);
    replica.handle_timeout(later + Duration::from_secs(61));
    assert_eq!(replica.store().tombstones(room), 0);
}

#[test]
fn a_checked_join_without_a_majority_times_out_and_is_rolled_back() {
    let replicas = cluster(NODES, 3);
    let room = rooms()[0];
    let now = Timestamp::from_millis(1_000);
    let mut pool: Pool = Vec::new();
    round(&replicas, now, &mut pool);
    let primary = &replicas[replicas[0].owners(room)[0].0 as usize];
    primary.set_seat_limit(room, Some(5)).unwrap();
    pump(&replicas, now, &mut pool);
    assert_eq!(primary.poll_event(), Some(ReplicaEvent::Ready));
    let member = room.member(Uin(9));
    let ticket = primary.join_checked(now, member, Role::Student, Terminal::Web, None);
    // The peers never answer: every message is lost.
    collect(&replicas, &mut pool);
    pool.clear();
    assert!(primary.poll_event().is_none(), "not confirmed without a majority");
    // The default join time-out is 2 s; the replica asks to be woken by then.
    let deadline = now + Duration::from_secs(2);
    assert!(primary.poll_timeout().unwrap() <= deadline);
    primary.handle_timeout(deadline);
    assert_eq!(primary.poll_event(), Some(ReplicaEvent::Joined { ticket, member, result: Err(StoreError::Timeout) }));
    assert!(!primary.contains(member), "rolled back");
    // The roll-back is replicated too.
    collect(&replicas, &mut pool);
    assert!(pool.iter().any(|(_, _, m)| matches!(m, ReplMsg::Writes { records, .. } if records.iter().any(|r| r.uin == Uin(9) && r.state.is_none()))));
}

#[test]
fn a_forwarded_checked_join_is_decided_by_the_primary() {
    let replicas = cluster(NODES, 3);
    let room = rooms()[1];
    let now = Timestamp::from_millis(1_000);
    let mut pool: Pool = Vec::new();
    // Before any anti-entropy round nobody is ready: refused, typed.
    let owners = replicas[0].owners(room);
    let primary = owners[0].0 as usize;
    let other = &replicas[owners[1].0 as usize];
    let early = replicas[primary].join_checked(now, room.member(Uin(1)), Role::Student, Terminal::Web, None);
    assert_eq!(
        replicas[primary].poll_event(),
        Some(ReplicaEvent::Joined { ticket: early, member: room.member(Uin(1)), result: Err(StoreError::NotReady) })
    );
    round(&replicas, now, &mut pool);
    let member = room.member(Uin(2));
    let ticket = other.join_checked(now, member, Role::Student, Terminal::Ios, None);
    pump(&replicas, now, &mut pool);
    let mut events = Vec::new();
    while let Some(e) = other.poll_event() {
        events.push(e);
    }
    assert!(events.contains(&ReplicaEvent::Joined {
        ticket,
        member,
        result: Ok(room_memberlist::WriteOutcome::Entered)
    }));
    for r in &replicas {
        assert!(r.contains(member));
    }
}

/// The primary of a seat-limited room dies; its admissions had reached a
/// majority. The new primary refuses checked joins until it has completed
/// an anti-entropy round with the surviving owners, then counts every
/// admission the old primary confirmed: the limit holds across the failover.
#[test]
fn a_new_primary_waits_for_a_round_and_keeps_the_seat_limit() {
    let replicas = cluster(NODES, 3);
    let room = rooms()[2];
    let mut now = Timestamp::from_millis(1_000);
    let mut pool: Pool = Vec::new();
    round(&replicas, now, &mut pool);
    for r in &replicas {
        while r.poll_event().is_some() {}
    }
    let owners = replicas[0].owners(room);
    let (old, new_primary) = (owners[0], owners[1]);
    let old_r = &replicas[old.0 as usize];
    old_r.set_seat_limit(room, Some(3)).unwrap();
    pump(&replicas, now, &mut pool);
    // Three admissions at the old primary; its messages reach only the
    // third owner (so the next primary learns them only by repair).
    let third = owners[2];
    for uin in 1..=3 {
        let _ = old_r.join_checked(now, room.member(Uin(uin)), Role::Student, Terminal::Web, None);
        collect(&replicas, &mut pool);
        for (from, to, msg) in std::mem::take(&mut pool) {
            if to == third || from == third {
                replicas[to.0 as usize].handle_message(now, from, msg);
            }
        }
        collect(&replicas, &mut pool);
        for (from, to, msg) in std::mem::take(&mut pool) {
            if to == old {
                replicas[to.0 as usize].handle_message(now, from, msg);
            }
        }
    }
    let confirmed = std::iter::from_fn(|| old_r.poll_event())
        .filter(|e| matches!(e, ReplicaEvent::Joined { result: Ok(_), .. }))
        .count();
    assert_eq!(confirmed, 3, "each admission reached a majority (old primary + third owner)");
    // The old primary dies; the survivors learn the new node set.
    let survivors: Vec<&Replica> = replicas.iter().filter(|r| r.node() != old).collect();
    for r in &survivors {
        r.set_nodes(survivors.iter().map(|s| (s.node(), 100))).unwrap();
    }
    let np = &replicas[new_primary.0 as usize];
    assert_eq!(np.owners(room)[0], new_primary);
    assert!(!np.is_ready());
    now = now + Duration::from_millis(10);
    let early = np.join_checked(now, room.member(Uin(10)), Role::Student, Terminal::Web, None);
    assert_eq!(
        np.poll_event(),
        Some(ReplicaEvent::Joined { ticket: early, member: room.member(Uin(10)), result: Err(StoreError::NotReady) })
    );
    // One anti-entropy round among the survivors (the dead node's queue
    // is dropped).
    let alive = |pool: &mut Pool| pool.retain(|(from, to, _)| *from != old && *to != old);
    for r in &survivors {
        r.handle_timeout(now);
    }
    loop {
        collect(&replicas, &mut pool);
        alive(&mut pool);
        if pool.is_empty() {
            break;
        }
        for (from, to, msg) in std::mem::take(&mut pool) {
            replicas[to.0 as usize].handle_message(now, from, msg);
        }
    }
    assert!(np.is_ready());
    assert_eq!(np.counts(room).map(|c| c.total()), Some(3), "the new primary sees every confirmed admission");
    while np.poll_event().is_some() {}
    let late = np.join_checked(now, room.member(Uin(11)), Role::Student, Terminal::Web, None);
    assert_eq!(
        np.poll_event(),
        Some(ReplicaEvent::Joined {
            ticket: late,
            member: room.member(Uin(11)),
            result: Err(StoreError::RoomFull { limit: 3 })
        })
    );
}

#[test]
fn the_primary_removes_members_whose_lease_ran_out() {
    let mut config = ReplicaConfig::new(NodeId(0));
    config.lease = Some(Duration::from_secs(60));
    let replica = Replica::new(config);
    replica.set_nodes([(NodeId(0), 100)]).unwrap();
    let room = rooms()[0];
    let t0 = Timestamp::from_millis(100_000);
    for uin in 1..=4 {
        replica.enter(t0, room.member(Uin(uin)), Role::Student, Terminal::Web, None).unwrap();
    }
    // Members 1 and 2 are re-asserted every 20 s; 3 and 4 are not (their
    // exits were lost).
    for k in 1..=4u64 {
        let t = t0 + Duration::from_secs(20 * k);
        for uin in 1..=2 {
            let op = WriteOp::Assert { uin: Uin(uin), role: Role::Student, terminal: Terminal::Web };
            assert_eq!(replica.apply(t, room, &[op]).unwrap(), vec![Ok(room_memberlist::WriteOutcome::Unchanged)]);
        }
        replica.handle_timeout(t);
    }
    // At 80 s, 3 and 4 were last seen 80 s ago: gone; 1 and 2 stay.
    let present: Vec<u64> = replica.store().members(room).iter().map(|m| m.uin.0).collect();
    assert_eq!(present, vec![1, 2]);
    assert_eq!(replica.stats().members_expired, 2);
}

#[test]
fn a_lost_seat_limit_reaches_the_other_owners_with_the_next_round() {
    let replicas = cluster(NODES, 3);
    let room = rooms()[0];
    let now = Timestamp::from_millis(1_000);
    let primary = &replicas[replicas[0].owners(room)[0].0 as usize];
    primary.set_seat_limit(room, Some(7)).unwrap();
    // Lost.
    while primary.poll_transmit().is_some() {}
    assert!(replicas.iter().filter(|r| r.store().seat_limit(room).is_some()).count() == 1);
    let mut pool: Pool = Vec::new();
    round(&replicas, now, &mut pool);
    for r in &replicas {
        assert_eq!(r.store().seat_limit(room), Some(7));
    }
}
