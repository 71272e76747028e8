//! The local store against a plain reference model (a map of members),
//! under random writes: lookups, counts (always equal to a recount),
//! filtered listings with offset and cursor paging, the change feed, and
//! batched writes (a batch is the same as its writes one by one, and
//! idempotent).

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use room_core::{CustomRole, Flag, MemberKey, Role, RoleSet, RoomKey, Terminal, TerminalSet, Timestamp, Uin};
use room_memberlist::{
    BatcherConfig, ChangeSet, Cursor, FeedPosition, LocalStore, MemberRow, MemberStore, PageQuery, PageStart,
    StoreConfig, StoreError, WriteBatcher, WriteOp, WriteOutcome,
};

const ROOM: RoomKey = RoomKey::new(room_core::BusinessId(7), room_core::RoomId(100));

fn roles() -> [Role; 6] {
    [
        Role::Teacher,
        Role::Assistant,
        Role::Student,
        Role::Observer,
        Role::Custom(CustomRole::new(0).unwrap()),
        Role::Custom(CustomRole::new(9).unwrap()),
    ]
}

fn op() -> impl Strategy<Value = WriteOp> {
    let uin = (1u64..60).prop_map(Uin);
    let role = (0usize..6).prop_map(|i| roles()[i]);
    let terminal = (0usize..7).prop_map(|i| Terminal::ALL[i]);
    let attrs = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from));
    prop_oneof![
        4 => (uin.clone(), role.clone(), terminal.clone(), attrs.clone())
            .prop_map(|(uin, role, terminal, attrs)| WriteOp::Enter { uin, role, terminal, attrs }),
        3 => (uin.clone(), terminal).prop_map(|(uin, terminal)| WriteOp::Exit { uin, terminal }),
        1 => uin.clone().prop_map(|uin| WriteOp::Remove { uin }),
        1 => (uin, proptest::option::of(role), attrs).prop_map(|(uin, role, attrs)| WriteOp::Update { uin, role, attrs }),
    ]
}

/// The reference: members by uin, and what each write should do.
#[derive(Default, Clone)]
struct Model {
    members: BTreeMap<u64, MemberRow>,
}

impl Model {
    fn apply(&mut self, now: Timestamp, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
        let too_big = |a: &Option<Bytes>| a.as_ref().is_some_and(|a| a.len() > 256);
        match op {
            WriteOp::Enter { uin, role, terminal, attrs } => {
                if too_big(attrs) {
                    return Err(StoreError::AttrsTooLarge { len: attrs.as_ref().unwrap().len(), max: 256 });
                }
                match self.members.get_mut(&uin.0) {
                    Some(m) => {
                        let before = m.clone();
                        m.role = *role;
                        m.terminals.insert(*terminal);
                        if let Some(a) = attrs {
                            m.attrs = a.clone();
                        }
                        Ok(if *m == before { WriteOutcome::Unchanged } else { WriteOutcome::Updated })
                    }
                    None => {
                        self.members.insert(
                            uin.0,
                            MemberRow {
                                uin: *uin,
                                role: *role,
                                terminals: TerminalSet::only(*terminal),
                                joined: now,
                                attrs: attrs.clone().unwrap_or_default(),
                            },
                        );
                        Ok(WriteOutcome::Entered)
                    }
                }
            }
            WriteOp::Exit { uin, terminal } => {
                let m = self.members.get_mut(&uin.0).ok_or(StoreError::NotPresent(*uin))?;
                if !m.terminals.remove(*terminal) {
                    return Ok(WriteOutcome::Unchanged);
                }
                if m.terminals.is_empty() {
                    self.members.remove(&uin.0);
                    return Ok(WriteOutcome::Exited);
                }
                Ok(WriteOutcome::Updated)
            }
            WriteOp::Remove { uin } => {
                self.members.remove(&uin.0).ok_or(StoreError::NotPresent(*uin))?;
                Ok(WriteOutcome::Exited)
            }
            WriteOp::Update { uin, role, attrs } => {
                if !self.members.contains_key(&uin.0) {
                    return Err(StoreError::NotPresent(*uin));
                }
                if too_big(attrs) {
                    return Err(StoreError::AttrsTooLarge { len: attrs.as_ref().unwrap().len(), max: 256 });
                }
                let m = self.members.get_mut(&uin.0).unwrap();
                let before = m.clone();
                if let Some(r) = role {
                    m.role = *r;
                }
                if let Some(a) = attrs {
                    m.attrs = a.clone();
                }
                Ok(if *m == before { WriteOutcome::Unchanged } else { WriteOutcome::Updated })
            }
            other => unreachable!("the model does not generate {other:?}"),
        }
    }

    /// Members in listing order, filtered.
    fn listing(&self, roles: RoleSet, terminals: TerminalSet) -> Vec<MemberRow> {
        let mut v: Vec<MemberRow> = self
            .members
            .values()
            .filter(|m| roles.contains(m.role) && m.terminals.intersects(terminals))
            .cloned()
            .collect();
        v.sort_by_key(|m| (m.role.rank(), m.joined, m.uin));
        v
    }
}

fn recount(rows: &[MemberRow]) -> (u32, Vec<u32>, Vec<u32>) {
    let by_role = roles().iter().map(|&r| rows.iter().filter(|m| m.role == r).count() as u32).collect();
    let by_terminal =
        Terminal::ALL.iter().map(|&t| rows.iter().filter(|m| m.terminals.contains(t)).count() as u32).collect();
    (rows.len() as u32, by_role, by_terminal)
}

fn filter() -> impl Strategy<Value = (RoleSet, TerminalSet)> {
    let roles = prop_oneof![
        Just(RoleSet::all()),
        Just(RoleSet::staff()),
        proptest::collection::vec(0usize..6, 1..4).prop_map(|v| v.into_iter().map(|i| roles()[i]).collect()),
    ];
    let terminals = prop_oneof![
        Just(TerminalSet::all()),
        proptest::collection::vec(0usize..7, 1..3).prop_map(|v| v.into_iter().map(|i| Terminal::ALL[i]).collect()),
    ];
    (roles, terminals)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn store_matches_model(
        steps in proptest::collection::vec((op(), 0u64..3), 1..300),
        filters in proptest::collection::vec(filter(), 3),
        page in 1usize..9,
    ) {
        let store = LocalStore::new(StoreConfig::default());
        let mut model = Model::default();
        let mut now = Timestamp::from_millis(1_000);
        // A client that follows the change feed from the start.
        let mut client: BTreeMap<u64, MemberRow> = BTreeMap::new();
        let mut position: Option<FeedPosition> = None;
        for (i, (op, dt)) in steps.iter().enumerate() {
            now = now + std::time::Duration::from_micros(*dt);
            let got = store.apply(now, ROOM, std::slice::from_ref(op)).map(|mut v| v.remove(0));
            let want = model.apply(now, op);
            prop_assert_eq!(got.and_then(|r| r), want, "write {} {:?}", i, op);
            // Counts always equal a recount of the model.
            let rows: Vec<MemberRow> = model.members.values().cloned().collect();
            let (total, by_role, by_terminal) = recount(&rows);
            match store.counts(ROOM) {
                Some(c) => {
                    prop_assert_eq!(c.total(), total);
                    prop_assert_eq!(roles().iter().map(|&r| c.role(r)).collect::<Vec<_>>(), by_role);
                    prop_assert_eq!(Terminal::ALL.iter().map(|&t| c.terminal(t)).collect::<Vec<_>>(), by_terminal);
                }
                None => prop_assert_eq!(total, 0),
            }
            // The change feed brings the client to the same state.
            if i % 7 == 0 {
                follow(&store, &mut client, &mut position)?;
                prop_assert_eq!(&client, &model.members);
            }
        }
        for m in model.members.values() {
            let got = store.get(ROOM.member(m.uin));
            prop_assert_eq!(got.as_ref(), Some(m));
        }
        for uin in 1..60 {
            prop_assert_eq!(store.contains(ROOM.member(Uin(uin))), model.members.contains_key(&uin));
        }
        for (roles, terminals) in filters {
            let want = model.listing(roles, terminals);
            let query = PageQuery::first(page).roles(roles).terminals(terminals);
            // Offset paging.
            let mut got = Vec::new();
            let mut rows = Vec::new();
            loop {
                let q = query.start(PageStart::Offset(got.len()));
                match store.page(ROOM, &q, &mut rows) {
                    Ok(_) => {}
                    Err(StoreError::UnknownRoom(_)) => break,
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
                got.extend(rows.iter().cloned());
                if rows.len() < page { break; }
            }
            prop_assert_eq!(&got, &want);
            // Cursor paging.
            let mut got = Vec::new();
            let mut start = PageStart::First;
            loop {
                match store.page(ROOM, &query.start(start), &mut rows) {
                    Ok(info) => {
                        got.extend(rows.iter().cloned());
                        match info.next {
                            Some(c) => start = PageStart::After(Cursor::from_bits(c.to_bits())),
                            None => break,
                        }
                    }
                    Err(StoreError::UnknownRoom(_)) => break,
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    /// A batch does what its writes do one by one, and applying it again
    /// (a retry) changes nothing.
    #[test]
    fn batch_equals_sequence_and_is_idempotent(ops in proptest::collection::vec(op(), 1..120)) {
        let now = Timestamp::from_millis(5);
        let batched = LocalStore::new(StoreConfig::default());
        let single = LocalStore::new(StoreConfig::default());
        let mut batcher = WriteBatcher::new(BatcherConfig::default());
        for op in &ops {
            batcher.push(now, ROOM, op.clone()).unwrap();
        }
        let batch = batcher.drain_all().pop().unwrap();
        prop_assert!(batch.ops.len() <= ops.len());
        // The batcher drops only exact repeats of a member's previous write.
        let results = batched.apply_batch(now, &batch).unwrap();
        let ops = batch.ops.clone();
        for (op, got) in ops.iter().zip(&results) {
            let want = single.apply(now, ROOM, std::slice::from_ref(op)).unwrap().remove(0);
            prop_assert_eq!(got, &want);
        }
        let before = batched.members(ROOM);
        prop_assert_eq!(&before, &single.members(ROOM));
        let again = batched.apply_batch(now, &batch).unwrap();
        // Either recognised as a replay, or (a room that never existed)
        // refused again for the same reasons.
        prop_assert!(again.iter().zip(&results).all(|(a, first)| a == &Ok(WriteOutcome::Unchanged) || a == first));
        prop_assert_eq!(batched.members(ROOM), before);
    }
}

/// Brings `client` up to date through the change feed (or a reload on
/// resync).
fn follow(
    store: &LocalStore,
    client: &mut BTreeMap<u64, MemberRow>,
    position: &mut Option<FeedPosition>,
) -> Result<(), TestCaseError> {
    let reload = |client: &mut BTreeMap<u64, MemberRow>, position: &mut Option<FeedPosition>| {
        client.clear();
        let mut rows = Vec::new();
        let mut start = PageStart::First;
        loop {
            match store.page(ROOM, &PageQuery::first(100).start(start), &mut rows) {
                Ok(info) => {
                    client.extend(rows.iter().map(|r| (r.uin.0, r.clone())));
                    *position = Some(info.version);
                    match info.next {
                        Some(c) => start = PageStart::After(c),
                        None => break,
                    }
                }
                Err(_) => {
                    *position = None;
                    break;
                }
            }
        }
    };
    let Some(since) = *position else {
        reload(client, position);
        return Ok(());
    };
    match store.changes_since(ROOM, since) {
        Ok(ChangeSet::Delta { now, upserts, removed }) => {
            for r in removed {
                client.remove(&r.0);
            }
            for u in upserts {
                client.insert(u.uin.0, u);
            }
            *position = Some(now);
        }
        Ok(ChangeSet::Resync { .. }) | Err(_) => reload(client, position),
        Ok(_) => return Err(TestCaseError::fail("unknown change set")),
    }
    Ok(())
}

/// Cursor paging while members come and go: a member present for the whole
/// walk is returned exactly once, whatever churn happens between pages.
#[test]
fn cursor_paging_under_churn_never_skips_or_repeats_stable_members() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let churn = proptest::collection::vec((any::<bool>(), 1000u64..1400, 0usize..6, 0usize..7), 0..400);
    runner
        .run(&(churn, 1usize..20, 0u64..1_000), |(churn, page, seed)| {
            let store = LocalStore::new(StoreConfig::default());
            let mut now = Timestamp::from_millis(1);
            // Stable members: present before the walk and throughout.
            for uin in 1..=300u64 {
                now = now + std::time::Duration::from_micros((uin * seed) % 3);
                let role = roles()[(uin % 6) as usize];
                store.enter(now, ROOM.member(Uin(uin)), role, Terminal::ALL[(uin % 7) as usize], None).unwrap();
            }
            let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
            let mut rows = Vec::new();
            let mut start = PageStart::First;
            let mut churn = churn.into_iter();
            loop {
                let info = store.page(ROOM, &PageQuery::first(page).start(start), &mut rows).unwrap();
                for r in &rows {
                    *seen.entry(r.uin.0).or_default() += 1;
                }
                // Churn between pages: others enter (at any rank, joined
                // now) and leave.
                for (enter, uin, role, t) in churn.by_ref().take(7) {
                    now = now + std::time::Duration::from_micros(1);
                    let member = ROOM.member(Uin(uin));
                    if enter {
                        store.enter(now, member, roles()[role], Terminal::ALL[t], None).unwrap();
                    } else {
                        let _ = store.apply(now, ROOM, &[WriteOp::Remove { uin: Uin(uin) }]);
                    }
                }
                match info.next {
                    Some(c) => start = PageStart::After(c),
                    None => break,
                }
            }
            for uin in 1..=300u64 {
                prop_assert_eq!(seen.get(&uin).copied(), Some(1), "stable member {}", uin);
            }
            // Churned members may legitimately show up twice: one that left
            // and came back joined again (later in the order), one whose
            // role changed moved to another rank.
            Ok(())
        })
        .unwrap();
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let mut config = StoreConfig::default();
    config.businesses = Some([room_core::BusinessId(7)].into());
    let store = LocalStore::new(config);
    let now = Timestamp::from_millis(1);
    let member = ROOM.member(Uin(1));
    let big = Bytes::from(vec![0u8; 257]);
    assert_eq!(
        store.enter(now, member, Role::Student, Terminal::Web, Some(big)),
        Err(StoreError::AttrsTooLarge { len: 257, max: 256 })
    );
    assert!(!store.contains(member));
    let other: MemberKey = "8/1/1".parse().unwrap();
    assert_eq!(
        store.enter(now, other, Role::Student, Terminal::Web, None),
        Err(StoreError::UnknownBusiness(room_core::BusinessId(8)))
    );
    assert_eq!(store.exit(now, member, Terminal::Web), Err(StoreError::NotPresent(Uin(1))));
    store.enter(now, member, Role::Student, Terminal::Web, None).unwrap();
    let mut rows = Vec::new();
    assert_eq!(store.page(ROOM, &PageQuery::first(0), &mut rows), Err(StoreError::BadLimit(0)));
    assert_eq!(store.page(ROOM, &PageQuery::first(1001), &mut rows), Err(StoreError::BadLimit(1001)));
    let unknown: RoomKey = "7/999".parse().unwrap();
    assert_eq!(store.page(unknown, &PageQuery::first(1), &mut rows), Err(StoreError::UnknownRoom(unknown)));
    // Feed positions from the future or another room instance: resync.
    let now_pos = match store.changes_since(ROOM, FeedPosition::default()).unwrap() {
        ChangeSet::Resync { now } => now,
        other => panic!("expected resync, got {other:?}"),
    };
    let future = FeedPosition { version: now_pos.version + 5, ..now_pos };
    assert!(matches!(store.changes_since(ROOM, future), Ok(ChangeSet::Resync { .. })));
    // Any cursor bytes are a valid cursor.
    let odd = Cursor::from_bits([0xff; 17]);
    assert_eq!(
        store.page(ROOM, &PageQuery::first(5).start(PageStart::After(odd)), &mut rows).map(|_| rows.len()),
        Ok(0)
    );
    assert_eq!(store.counts(ROOM).unwrap().total(), 1);
}

#[test]
fn role_bits_fit_the_record() {
    for bit in 0..64u32 {
        let role = Role::from_bit(bit).unwrap();
        let store = LocalStore::new(StoreConfig::default());
        let member = ROOM.member(Uin(u64::from(bit) + 1));
        store.enter(Timestamp::from_millis(1), member, role, Terminal::Mac, None).unwrap();
        assert_eq!(store.get(member).unwrap().role, role);
    }
}
