//! Snapshots: exact round trips, typed errors for damaged files, fallback to
//! the previous good snapshot, and a dump cut short by a crash.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use room_core::{BusinessId, CustomRole, Role, RoomId, RoomKey, Terminal, Timestamp, Uin};
use room_memberlist::snapshot::{self, FORMAT_VERSION, previous_path};
use room_memberlist::{LocalStore, MemberStore, Replica, ReplicaConfig, SnapshotError, StoreConfig, WriteOp};

fn fill(store: &LocalStore, rooms: u64, per_room: u64, seed: u64) {
    for r in 0..rooms {
        let room = RoomKey::new(BusinessId(1 + (r % 3) as u32), RoomId(r));
        for u in 0..per_room {
            let x = (u * 31 + r * 7 + seed) % 97;
            let role = match x % 5 {
                0 => Role::Teacher,
                1 => Role::Custom(CustomRole::new((x % 60) as u8).unwrap()),
                2 => Role::Observer,
                _ => Role::Student,
            };
            let attrs = x.is_multiple_of(3).then(|| bytes::Bytes::from(format!("nick-{u}-{x}")));
            let now = Timestamp::from_millis(1_000 + u * 13 + x);
            store.enter(now, room.member(Uin(u + 1)), role, Terminal::ALL[(x % 7) as usize], attrs).unwrap();
            if x.is_multiple_of(4) {
                store.enter(now, room.member(Uin(u + 1)), role, Terminal::ALL[((x + 3) % 7) as usize], None).unwrap();
            }
        }
    }
}

fn everything(store: &LocalStore) -> Vec<(RoomKey, Vec<room_memberlist::MemberRow>, Option<u32>)> {
    let mut keys = store.room_keys();
    keys.sort();
    keys.into_iter().map(|k| (k, store.members(k), store.seat_limit(k))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn round_trip_is_exact(rooms in 1u64..20, per_room in 1u64..80, seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.snap");
        let store = LocalStore::new(StoreConfig::default());
        fill(&store, rooms, per_room, seed % 1_000);
        store.set_seat_limit(RoomKey::new(BusinessId(1), RoomId(0)), Some(500)).unwrap();
        let report = snapshot::dump(&store, &path, Timestamp::from_millis(9)).unwrap();
        prop_assert_eq!(report.rooms, store.room_count());
        let restored = LocalStore::new(StoreConfig::default());
        let loaded = snapshot::restore(&restored, &path).unwrap();
        prop_assert!(loaded.fell_back.is_none());
        prop_assert_eq!(loaded.written_at, Timestamp::from_millis(9));
        prop_assert_eq!(everything(&restored), everything(&store));
    }
}

#[test]
fn replicated_records_and_tombstones_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.snap");
    let replica = Replica::new(ReplicaConfig::new(room_core::NodeId(1)));
    replica.set_nodes([(room_core::NodeId(1), 100)]).unwrap();
    let room = RoomKey::new(BusinessId(1), RoomId(5));
    let now = Timestamp::from_millis(100);
    for u in 1..=50 {
        replica.enter(now, room.member(Uin(u)), Role::Student, Terminal::Web, None).unwrap();
    }
    for u in 1..=10 {
        replica.apply(now, room, &[WriteOp::Remove { uin: Uin(u) }]).unwrap();
    }
    assert_eq!(replica.store().tombstones(room), 10);
    snapshot::dump(replica.store(), &path, now).unwrap();
    let fresh = Replica::new(ReplicaConfig::new(room_core::NodeId(1)));
    snapshot::restore(fresh.store(), &path).unwrap();
    let sorted = |mut v: Vec<room_memberlist::Record>| {
        v.sort_by_key(|r| r.uin);
        v
    };
    assert_eq!(sorted(fresh.store().records(room)), sorted(replica.store().records(room)));
    assert_eq!(fresh.store().tombstones(room), 10);
}

fn dumped_twice(dir: &Path) -> (std::path::PathBuf, LocalStore, LocalStore) {
    let path = dir.join("members.snap");
    let first = LocalStore::new(StoreConfig::default());
    fill(&first, 4, 30, 1);
    snapshot::dump(&first, &path, Timestamp::from_millis(1)).unwrap();
    let second = LocalStore::new(StoreConfig::default());
    fill(&second, 6, 20, 2);
    snapshot::dump(&second, &path, Timestamp::from_millis(2)).unwrap();
    assert!(previous_path(&path).exists());
    (path, first, second)
}

#[test]
fn damaged_snapshots_get_typed_errors_and_the_previous_one_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (path, first, second) = dumped_twice(dir.path());
    let good = fs::read(&path).unwrap();

    // Each kind of damage: the typed error, then the fallback to .prev.
    let truncated = good[..good.len() - 7].to_vec();
    let mut flipped = good.clone();
    flipped[40] ^= 0x10;
    let mut newer = good.clone();
    newer[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let mut no_magic = good.clone();
    no_magic[0] = b'X';
    let mut trailing = good.clone();
    trailing.push(0);
    type Case = (&'static str, Vec<u8>, fn(&SnapshotError) -> bool);
    let cases: [Case; 5] = [
        ("truncated", truncated, |e| matches!(e, SnapshotError::Truncated { .. })),
        ("bit flip", flipped, |e| matches!(e, SnapshotError::Corrupted { .. })),
        (
            "newer version",
            newer,
            |e| matches!(e, SnapshotError::NewerVersion { found, .. } if *found == FORMAT_VERSION + 1),
        ),
        ("not a snapshot", no_magic, |e| matches!(e, SnapshotError::BadMagic)),
        ("bytes after the end", trailing, |e| matches!(e, SnapshotError::Malformed { .. })),
    ];
    for (what, bytes, expected) in cases {
        fs::write(&path, &bytes).unwrap();
        let store = LocalStore::new(StoreConfig::default());
        let report = snapshot::restore(&store, &path).unwrap();
        let why = report.fell_back.as_ref().unwrap_or_else(|| panic!("{what}: no fallback"));
        assert!(expected(why), "{what}: got {why}");
        assert_eq!(report.path, previous_path(&path), "{what}");
        assert_eq!(everything(&store), everything(&first), "{what}: the previous snapshot is loaded whole");
    }

    // Both damaged: a typed error, and nothing loaded.
    fs::write(previous_path(&path), b"RKMLSNAP").unwrap();
    fs::write(&path, &good[..30]).unwrap();
    let store = LocalStore::new(StoreConfig::default());
    assert!(matches!(snapshot::restore(&store, &path), Err(SnapshotError::NoneUsable { .. })));
    assert_eq!(store.room_count(), 0);
    let _ = second;
}

/// The process is killed (`kill -9`) in the middle of a dump: what is on
/// disk is a partial temporary file and the last good snapshot. Restore
/// loads the last good snapshot whole: no member of it is lost.
#[test]
fn a_dump_cut_short_leaves_the_last_good_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("members.snap");
    let store = LocalStore::new(StoreConfig::default());
    fill(&store, 10, 50, 3);
    snapshot::dump(&store, &path, Timestamp::from_millis(1)).unwrap();
    let last_good = everything(&store);
    // More members arrive; the next dump dies half-way: simulate exactly
    // what it leaves, a temporary file cut at every possible length class.
    fill(&store, 12, 60, 4);
    let full = {
        let other = dir.path().join("full.snap");
        snapshot::dump(&store, &other, Timestamp::from_millis(2)).unwrap();
        fs::read(&other).unwrap()
    };
    for cut in [0, 5, 20, full.len() / 3, full.len() - 1] {
        let tmp = dir.path().join(format!("members.snap.tmp-{}", 4_000_000 + cut));
        fs::write(&tmp, &full[..cut]).unwrap();
        let restored = LocalStore::new(StoreConfig::default());
        let report = snapshot::restore(&restored, &path).unwrap();
        assert!(report.fell_back.is_none());
        assert_eq!(everything(&restored), last_good);
    }
}

#[test]
fn dump_reports_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(StoreConfig::default());
    fill(&store, 3, 2_000, 5);
    let report = snapshot::dump(&store, &dir.path().join("s"), Timestamp::from_millis(1)).unwrap();
    assert_eq!(report.records, 6_000);
    assert!(report.bytes > 6_000 * 19);
    assert_eq!(report.rooms, 3);
}
