//! The write batcher against a plain model: every write comes out once, in
//! its room's batch, in arrival order (exact repeats of a member's previous
//! write dropped); no batch is handed over before its window closes unless
//! it is full; memory is bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Timestamp, Uin};
use room_memberlist::{BatcherConfig, BatcherFull, WriteBatcher, WriteOp};

fn op(uin: u64, exit: bool) -> WriteOp {
    if exit {
        WriteOp::Exit { uin: Uin(uin), terminal: Terminal::Web }
    } else {
        WriteOp::Enter { uin: Uin(uin), role: Role::Student, terminal: Terminal::Web, attrs: None }
    }
}

fn config(window_ms: u64, max_batch: usize, max_pending: usize) -> BatcherConfig {
    let mut c = BatcherConfig::default();
    c.window = Duration::from_millis(window_ms);
    c.max_batch = max_batch;
    c.max_pending = max_pending;
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_write_comes_out_once_in_order_and_on_time(
        pushes in proptest::collection::vec((0u64..5, 0u64..8, any::<bool>(), 0u64..4), 1..300),
        max_batch in 1usize..20,
    ) {
        let window = Duration::from_millis(5);
        let mut batcher = WriteBatcher::new(config(5, max_batch, 1_000_000));
        let mut now = Timestamp::from_millis(0);
        // Model: per room, the writes in order, without exact repeats of
        // the same member's previous write in the same open batch.
        let mut expected: BTreeMap<RoomKey, Vec<WriteOp>> = BTreeMap::new();
        let mut got: BTreeMap<RoomKey, Vec<WriteOp>> = BTreeMap::new();
        let mut open: BTreeMap<RoomKey, (Timestamp, BTreeMap<Uin, WriteOp>, usize)> = BTreeMap::new();
        let take = |batcher: &mut WriteBatcher, now: Timestamp, open: &mut BTreeMap<RoomKey, (Timestamp, BTreeMap<Uin, WriteOp>, usize)>, got: &mut BTreeMap<RoomKey, Vec<WriteOp>>| -> Result<(), TestCaseError> {
            while let Some(batch) = batcher.poll_batch(now) {
                let (opened, _, n) = open.remove(&batch.room).expect("a batch for an open room");
                prop_assert_eq!(n, batch.ops.len());
                // Due: the window closed, or the batch is full.
                prop_assert!(opened + window <= now || batch.ops.len() >= max_batch);
                prop_assert!(batch.ops.len() <= max_batch);
                got.entry(batch.room).or_default().extend(batch.ops);
            }
            Ok(())
        };
        for (room, uin, exit, dt) in pushes {
            now = now + Duration::from_millis(dt);
            take(&mut batcher, now, &mut open, &mut got)?;
            let room = RoomKey::new(BusinessId(1), RoomId(room));
            let w = op(uin, exit);
            let entry = open.entry(room).or_insert_with(|| (now, BTreeMap::new(), 0));
            if entry.1.get(&Uin(uin)) != Some(&w) {
                entry.1.insert(Uin(uin), w.clone());
                entry.2 += 1;
                expected.entry(room).or_default().push(w.clone());
            }
            batcher.push(now, room, w).unwrap();
            if let Some(due) = batcher.poll_timeout() {
                prop_assert!(due <= now + window);
            }
        }
        prop_assert_eq!(batcher.pending(), open.values().map(|o| o.2).sum::<usize>());
        for batch in batcher.drain_all() {
            got.entry(batch.room).or_default().extend(batch.ops);
        }
        prop_assert_eq!(batcher.pending(), 0);
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_storm_is_refused_beyond_the_pending_cap() {
    let mut batcher = WriteBatcher::new(config(5, 1_000_000, 1_000));
    let room = RoomKey::new(BusinessId(1), RoomId(1));
    let now = Timestamp::from_millis(0);
    for uin in 0..1_000 {
        batcher.push(now, room, op(uin, false)).unwrap();
    }
    assert_eq!(batcher.push(now, room, op(5_000, false)), Err(BatcherFull { max: 1_000 }));
    assert_eq!(batcher.pending(), 1_000);
    let batch = batcher.poll_batch(now + Duration::from_millis(5)).unwrap();
    assert_eq!(batch.ops.len(), 1_000);
    batcher.push(now, room, op(5_000, false)).unwrap();
}

#[test]
fn batches_get_distinct_ids() {
    let mut batcher = WriteBatcher::new(BatcherConfig::default());
    let room = RoomKey::new(BusinessId(1), RoomId(1));
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..100 {
        batcher.push(Timestamp::from_millis(i), room, op(i, false)).unwrap();
        for b in batcher.drain_all() {
            assert!(ids.insert(b.id));
        }
    }
    assert_eq!(ids.len(), 100);
}
