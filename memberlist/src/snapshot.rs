//! Snapshots: every room dumped to one file, restored at start.
//!
//! # Format (version 1, little-endian)
//!
//! ```text
//! header   "RKMLSNAP" | version u16 | reserved u16 | written_at u64 (µs)
//! room*    'R' | len u32 | crc32 u32 | payload (len bytes)
//!          payload: bid u32 | room u64 | seat_limit u32 (u32::MAX: none) | records u32 | record*
//!          record:  uin u64 | hlc u64 | origin u16 | live u8
//!                   [live: role u8 | terminals u8 | joined u64 | attrs_len u16 | attrs]
//! trailer  'E' | rooms u32 | records u64 | crc32 over the rooms' crcs u32
//! ```
//!
//! Each room is framed and checksummed on its own; the trailer proves the
//! file is complete. [`dump`] writes to a temporary file beside the target,
//! syncs it, moves the previous snapshot to `<path>.prev` and renames the
//! new one into place, so a crash at any moment leaves a complete snapshot
//! at `<path>` or at `<path>.prev`. [`restore`] checks a whole file before
//! loading anything from it and falls back to `<path>.prev` when `<path>`
//! is missing, truncated, corrupted or from a newer format version.
//!
//! A dump holds each room's read lock only to copy its records (a memory
//! copy: under a millisecond for the largest rooms); encoding and writing
//! happen outside the lock. The default location is under `/dev/shm`
//! ([`DEFAULT_DIR`]), memory that survives the process but not the machine;
//! any path works.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use room_core::{BusinessId, RoomId, RoomKey, Timestamp};

use crate::room::Record;
use crate::store::LocalStore;

/// Where snapshots go by default.
pub const DEFAULT_DIR: &str = "/dev/shm";
/// The format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"RKMLSNAP";
const HEADER_LEN: usize = 20;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file system refused.
    #[error("snapshot i/o on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a snapshot file.
    #[error("not a roomkit member-list snapshot (bad magic)")]
    BadMagic,
    /// Written by a newer version of this crate.
    #[error("snapshot format version {found} is newer than the supported {supported}")]
    NewerVersion {
        /// The file's version.
        found: u16,
        /// The newest this build reads.
        supported: u16,
    },
    /// The file ends early (a dump was cut short).
    #[error("snapshot is truncated at byte {at}")]
    Truncated {
        /// Where the data ran out.
        at: usize,
    },
    /// A frame's checksum does not match its bytes.
    #[error("room frame at byte {at} is corrupted (checksum mismatch)")]
    Corrupted {
        /// The frame's offset.
        at: usize,
    },
    /// A frame's content is malformed (a bad tag, role, terminal set or
    /// length).
    #[error("malformed snapshot at byte {at}: {what}")]
    Malformed {
        /// Where.
        at: usize,
        /// What.
        what: &'static str,
    },
    /// Neither the snapshot nor the previous one could be read.
    #[error("no usable snapshot: {latest}; previous: {previous}")]
    NoneUsable {
        /// Why the latest was refused.
        latest: Box<SnapshotError>,
        /// Why the previous was refused.
        previous: Box<SnapshotError>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// What a dump wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DumpReport {
    /// Rooms written.
    pub rooms: usize,
    /// Records written (members and tombstones).
    pub records: u64,
    /// File size.
    pub bytes: u64,
    /// The longest time one room's lock was held for the copy.
    pub longest_room_lock: Duration,
}

/// What a restore loaded.
#[derive(Debug)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The file loaded.
    pub path: PathBuf,
    /// Rooms loaded.
    pub rooms: usize,
    /// Records loaded.
    pub records: u64,
    /// When it was written.
    pub written_at: Timestamp,
    /// Why the latest snapshot was refused, when the previous one was used.
    pub fell_back: Option<SnapshotError>,
}

/// The default snapshot file of a store named `name` (say, the node's
/// name): `/dev/shm/roomkit-memberlist-<name>.snap`.
pub fn default_path(name: &str) -> PathBuf {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    Path::new(DEFAULT_DIR).join(format!("roomkit-memberlist-{safe}.snap"))
}

/// When to dump: every `interval`, sans-IO. The host asks
/// [`Periodic::poll_timeout`], and at that time calls [`dump`] and
/// [`Periodic::done`].
///
/// ```
/// use std::time::Duration;
/// use room_core::Timestamp;
/// use room_memberlist::snapshot::Periodic;
///
/// let mut every_minute = Periodic::new(Duration::from_secs(60), Timestamp::from_millis(0));
/// let due = every_minute.poll_timeout();
/// assert_eq!(due, Timestamp::from_millis(60_000));
/// every_minute.done(due); // after dumping
/// assert_eq!(every_minute.poll_timeout(), Timestamp::from_millis(120_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periodic {
    interval: Duration,
    next: Timestamp,
}

impl Periodic {
    /// The first dump one `interval` after `now`.
    pub fn new(interval: Duration, now: Timestamp) -> Periodic {
        Periodic { interval, next: now + interval }
    }

    /// When the next dump is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Timestamp {
        self.next
    }

    /// A dump finished at `now`: the next is one interval later (a slow
    /// dump pushes the schedule back rather than queueing dumps up).
    pub fn done(&mut self, now: Timestamp) {
        self.next = now + self.interval;
    }
}

/// The previous snapshot's path: `<path>.prev`.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".prev");
    PathBuf::from(p)
}

/// Dumps every room of `store` to `path` (see the module docs).
pub fn dump(store: &LocalStore, path: &Path, now: Timestamp) -> Result<DumpReport, SnapshotError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&now.as_micros().to_le_bytes());
    out.write_all(&header).map_err(io(&tmp))?;
    let (mut rooms, mut records, mut crcs) = (0usize, 0u64, crc32fast::Hasher::new());
    let mut longest = Duration::ZERO;
    let mut payload = Vec::new();
    let mut frozen = crate::room::FrozenRoom::default();
    let mut keys = store.room_keys();
    keys.sort_unstable();
    for key in keys {
        let Some(handle) = store.room(key) else { continue };
        let slots = handle.read().slots();
        frozen.reserve(slots);
        let started = Instant::now();
        handle.read().freeze_into(&mut frozen);
        longest = longest.max(started.elapsed());
        payload.clear();
        payload.extend_from_slice(&key.bid.0.to_le_bytes());
        payload.extend_from_slice(&key.room.0.to_le_bytes());
        payload.extend_from_slice(&frozen.seat_limit().unwrap_or(u32::MAX).to_le_bytes());
        let count_at = payload.len();
        payload.extend_from_slice(&0u32.to_le_bytes());
        let n = frozen.encode_records(&mut payload);
        payload[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
        let crc = crc32fast::hash(&payload);
        crcs.update(&crc.to_le_bytes());
        let len = u32::try_from(payload.len())
            .map_err(|_| SnapshotError::Malformed { at: 0, what: "room frame over 4 GiB" })?;
        out.write_all(b"R").map_err(io(&tmp))?;
        out.write_all(&len.to_le_bytes()).map_err(io(&tmp))?;
        out.write_all(&crc.to_le_bytes()).map_err(io(&tmp))?;
        out.write_all(&payload).map_err(io(&tmp))?;
        rooms += 1;
        records += u64::from(n);
    }
    out.write_all(b"E").map_err(io(&tmp))?;
    out.write_all(&(rooms as u32).to_le_bytes()).map_err(io(&tmp))?;
    out.write_all(&records.to_le_bytes()).map_err(io(&tmp))?;
    out.write_all(&crcs.finalize().to_le_bytes()).map_err(io(&tmp))?;
    let file = out.into_inner().map_err(|e| SnapshotError::Io { path: tmp.clone(), source: e.into_error() })?;
    file.sync_all().map_err(io(&tmp))?;
    let bytes = file.metadata().map_err(io(&tmp))?.len();
    drop(file);
    if path.exists() {
        fs::rename(path, previous_path(path)).map_err(io(path))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(DumpReport { rooms, records, bytes, longest_room_lock: longest })
}

/// A room read back from a snapshot.
#[derive(Debug)]
struct RoomFrame {
    key: RoomKey,
    seat_limit: Option<u32>,
    records: Vec<Record>,
}

/// A parsed, fully checked snapshot.
#[derive(Debug)]
struct Parsed {
    written_at: Timestamp,
    rooms: Vec<RoomFrame>,
    records: u64,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(SnapshotError::Truncated { at: self.bytes.len() })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(w))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }
}

fn parse(bytes: &[u8]) -> Result<Parsed, SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8).map_err(|_| SnapshotError::BadMagic)? != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = r.u16()?;
    if version > FORMAT_VERSION {
        return Err(SnapshotError::NewerVersion { found: version, supported: FORMAT_VERSION });
    }
    let _reserved = r.u16()?;
    let written_at = Timestamp::from_micros(r.u64()?);
    let mut rooms = Vec::new();
    let mut crcs = crc32fast::Hasher::new();
    let mut total = 0u64;
    loop {
        let frame_at = r.at;
        match r.u8()? {
            b'R' => {
                let len = r.u32()? as usize;
                let crc = r.u32()?;
                let payload = r.take(len)?;
                if crc32fast::hash(payload) != crc {
                    return Err(SnapshotError::Corrupted { at: frame_at });
                }
                crcs.update(&crc.to_le_bytes());
                let frame = parse_room(payload, frame_at)?;
                total += frame.records.len() as u64;
                rooms.push(frame);
            }
            b'E' => {
                let count = r.u32()? as usize;
                let records = r.u64()?;
                let crc = r.u32()?;
                if count != rooms.len() || records != total || crc != crcs.finalize() {
                    return Err(SnapshotError::Corrupted { at: frame_at });
                }
                if r.at != bytes.len() {
                    return Err(SnapshotError::Malformed { at: r.at, what: "bytes after the trailer" });
                }
                return Ok(Parsed { written_at, rooms, records: total });
            }
            _ => return Err(SnapshotError::Malformed { at: frame_at, what: "unknown frame tag" }),
        }
    }
}

fn parse_room(payload: &[u8], at: usize) -> Result<RoomFrame, SnapshotError> {
    let mut r = Reader { bytes: payload, at: 0 };
    let bad = |what| SnapshotError::Malformed { at, what };
    let key = RoomKey::new(BusinessId(r.u32()?), RoomId(r.u64()?));
    let seat_limit = match r.u32()? {
        u32::MAX => None,
        n => Some(n),
    };
    let n = r.u32()? as usize;
    // Each record takes at least 19 bytes: refuse counts the frame cannot hold.
    if n > payload.len() / 19 + 1 {
        return Err(bad("record count larger than the frame"));
    }
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        let uin = room_core::Uin(r.u64()?);
        let stamp = crate::Stamp { hlc: r.u64()?, origin: r.u16()? };
        let state = match r.u8()? {
            0 => None,
            1 => {
                let role = <room_core::Role as room_core::Flag>::from_bit(u32::from(r.u8()?))
                    .ok_or_else(|| bad("unknown role"))?;
                let terminals =
                    room_core::TerminalSet::from_bits(u64::from(r.u8()?)).ok_or_else(|| bad("unknown terminal"))?;
                if terminals.is_empty() {
                    return Err(bad("present member with no terminal"));
                }
                let joined = Timestamp::from_micros(r.u64()?);
                let len = r.u16()? as usize;
                let attrs = bytes::Bytes::copy_from_slice(r.take(len)?);
                Some(crate::MemberState { role, terminals, joined, attrs })
            }
            _ => return Err(bad("bad record tag")),
        };
        records.push(Record { uin, stamp, state });
    }
    if r.at != payload.len() {
        return Err(bad("bytes after the last record"));
    }
    Ok(RoomFrame { key, seat_limit, records })
}

fn read_checked(path: &Path) -> Result<Parsed, SnapshotError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io(path))?;
    parse(&bytes)
}

/// Loads the snapshot at `path` (or, if it is unusable, `<path>.prev`)
/// into `store`. Nothing is loaded from a file that fails any check.
pub fn restore(store: &LocalStore, path: &Path) -> Result<RestoreReport, SnapshotError> {
    let (parsed, used, fell_back) = match read_checked(path) {
        Ok(p) => (p, path.to_path_buf(), None),
        Err(latest) => {
            let prev = previous_path(path);
            match read_checked(&prev) {
                Ok(p) => (p, prev, Some(latest)),
                Err(previous) => {
                    return Err(SnapshotError::NoneUsable { latest: Box::new(latest), previous: Box::new(previous) });
                }
            }
        }
    };
    let rooms = parsed.rooms.len();
    for frame in &parsed.rooms {
        store
            .restore_room(frame.key, frame.seat_limit, &frame.records)
            .map_err(|_| SnapshotError::Malformed { at: 0, what: "room refused by the store's limits" })?;
    }
    Ok(RestoreReport { path: used, rooms, records: parsed.records, written_at: parsed.written_at, fell_back })
}
