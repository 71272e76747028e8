//! Restoring state from bytes another process wrote:
//! * `room_memberlist::snapshot::restore` (member-list snapshot files);
//! * the room state a new owner reads from the shared cache (Redis):
//!   postcard `ClassroomSnapshot` and `Classroom::restore`, alone and inside
//!   a mirror of the owner's private `RoomSnapshot` (same postcard layout).
//!
//! The first byte picks; for snapshot files, bit 1 makes the target fix the
//! frame checksums so that the fuzzer reaches the records.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use room_core::{Role, Timestamp, Uin};
use room_memberlist::snapshot::{dump, previous_path, restore};
use room_memberlist::{LocalStore, StoreConfig};
use room_service::classroom::{Classroom, ClassroomConfig, ClassroomSnapshot};
use room_service::host::Revocation;

static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("roomkit-fuzz-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
});

/// The room state the owner saves (service/src/node/owner.rs), field for field.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[allow(dead_code)]
struct RoomSnapshot {
    classroom: ClassroomSnapshot,
    members: Vec<(Uin, Role, Option<u16>)>,
    mute_all: bool,
    muted: Vec<Uin>,
    banned: Vec<(Uin, u64)>,
    event_seq: u64,
    revoked: Vec<(Revocation, u64, u64)>,
}

/// Recomputes the checksums of a snapshot file's frames in place.
fn fix_checksums(b: &mut [u8]) {
    let mut at = 20;
    let mut crcs = crc32fast::Hasher::new();
    let mut rooms = 0u32;
    while at < b.len() {
        match b[at] {
            b'R' if at + 9 <= b.len() => {
                let len = u32::from_le_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
                let end = at + 9 + len;
                if end > b.len() {
                    return;
                }
                let crc = crc32fast::hash(&b[at + 9..end]);
                b[at + 5..at + 9].copy_from_slice(&crc.to_le_bytes());
                crcs.update(&crc.to_le_bytes());
                rooms += 1;
                at = end;
            }
            b'E' if at + 17 <= b.len() => {
                b[at + 1..at + 5].copy_from_slice(&rooms.to_le_bytes());
                b[at + 13..at + 17].copy_from_slice(&crcs.finalize().to_le_bytes());
                return;
            }
            _ => return,
        }
    }
}

fn classroom(snapshot: ClassroomSnapshot) {
    let config = ClassroomConfig::default();
    let Ok(room) = Classroom::restore(config.clone(), snapshot) else { return };
    // What was restored saves and restores to itself.
    let saved = room.snapshot();
    let bytes = postcard::to_allocvec(&saved).expect("a snapshot encodes");
    let decoded: ClassroomSnapshot = postcard::from_bytes(&bytes).expect("an encoded snapshot decodes");
    assert_eq!(decoded, saved);
    let again = Classroom::restore(config, decoded).expect("a saved classroom restores");
    assert_eq!(again.snapshot(), saved);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 4 {
        0 | 1 => {
            let mut bytes = rest.to_vec();
            if which & 2 != 0 {
                fix_checksums(&mut bytes);
            }
            let path = DIR.join("members.snap");
            let _ = std::fs::remove_file(previous_path(&path));
            std::fs::write(&path, &bytes).expect("write");
            let store = LocalStore::new(StoreConfig::default());
            if let Ok(report) = restore(&store, &path) {
                assert!(report.fell_back.is_none());
                // Dump -> restore gives the same rooms and records.
                let out = DIR.join("again.snap");
                let _ = std::fs::remove_file(previous_path(&out));
                let _ = std::fs::remove_file(&out);
                let dumped = dump(&store, &out, Timestamp::from_micros(1)).expect("dump");
                assert_eq!(dumped.rooms, store.room_count());
                let store2 = LocalStore::new(StoreConfig::default());
                let back = restore(&store2, &out).expect("a dumped snapshot restores");
                assert_eq!((back.rooms, back.records), (dumped.rooms, dumped.records));
                assert_eq!(store2.room_count(), store.room_count());
            }
        }
        2 => {
            if let Ok(s) = postcard::from_bytes::<ClassroomSnapshot>(rest) {
                classroom(s);
            }
        }
        _ => {
            if let Ok(s) = postcard::from_bytes::<RoomSnapshot>(rest) {
                classroom(s.classroom);
            }
        }
    }
});
