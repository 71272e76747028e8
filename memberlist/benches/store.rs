//! Member-list benchmark: one room of 60,000 members plus 2,000 rooms of
//! 30, roles and terminals mixed, in three designs measured in one run:
//!
//! * roomkit: `LocalStore` (every index maintained on every write);
//! * Redis: a real `redis-server` started by the bench on a free port, a
//!   ZSET per (room, role) scored by join time plus a HASH per room of
//!   member details, commands pipelined 16 deep;
//! * the old design (SEED.md section 3): one serialized member list per
//!   room in a KV map, read-modify-CAS on every write, deserialise to read.
//!
//! Figures: join+leave cost, a role-filtered page of 100 (students, from
//! cursors spread over the list), a terminal-filtered page of 100 (app
//! terminals), bytes per member (counting allocator; Redis `MEMORY USAGE`),
//! and a snapshot of 1M members written and restored.
//!
//! Run: `cargo bench -p room-memberlist --bench store` (needs
//! `redis-server` on the PATH for the Redis rows; they are skipped
//! otherwise). `MEMBERLIST_BENCH_QUICK=1` shortens the run.

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write as _;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use room_core::{BusinessId, Flag, Role, RoleSet, RoomId, RoomKey, Terminal, TerminalSet, Timestamp, Uin};
use room_memberlist::{LocalStore, MemberStore, PageQuery, PageStart, StoreConfig, snapshot};
use room_testkit::redis::RedisServer;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const BIG: u64 = 60_000;
const SMALL_ROOMS: u64 = 2_000;
const SMALL: u64 = 30;
const OPS: u64 = 1_000;

fn big_room() -> RoomKey {
    RoomKey::new(BusinessId(1), RoomId(1))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Member `i` of a room: 1 teacher, 1 in 100 assistants, 1 in 20
/// observers, the rest students; terminals mixed.
fn member(i: u64) -> (Uin, Role, Terminal) {
    let role = match i {
        0 => Role::Teacher,
        _ if i % 100 == 1 => Role::Assistant,
        _ if i % 20 == 2 => Role::Observer,
        _ => Role::Student,
    };
    (Uin(1_000_000 + mix(i) % 1_000_000_000), role, Terminal::ALL[(mix(i ^ 7) % 7) as usize])
}

fn fill(store: &LocalStore) {
    let mut t = 1_000_000u64;
    for i in 0..BIG {
        let (uin, role, terminal) = member(i);
        t += 17;
        store.enter(Timestamp::from_micros(t), big_room().member(uin), role, terminal, None).unwrap();
    }
    for r in 0..SMALL_ROOMS {
        let room = RoomKey::new(BusinessId(2), RoomId(r));
        for i in 0..SMALL {
            let (uin, role, terminal) = member(i + r * SMALL);
            t += 3;
            store.enter(Timestamp::from_micros(t), room.member(uin), role, terminal, None).unwrap();
        }
    }
}

fn quick() -> bool {
    std::env::var_os("MEMBERLIST_BENCH_QUICK").is_some()
}

// ---------- the old design: a serialized list per room, read-modify-CAS ----------

/// 40 bytes a member, as SEED.md sizes it: uin, role, terminals, joined,
/// and 22 bytes of padding for a nickname id and flags.
fn encode(list: &[(u64, u8, u8, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len() * 40);
    for &(uin, role, terms, joined) in list {
        out.extend_from_slice(&uin.to_le_bytes());
        out.push(role);
        out.push(terms);
        out.extend_from_slice(&joined.to_le_bytes());
        out.extend_from_slice(&[0u8; 22]);
    }
    out
}

fn decode(bytes: &[u8]) -> Vec<(u64, u8, u8, u64)> {
    bytes
        .chunks_exact(40)
        .map(|c| {
            let w = |r: std::ops::Range<usize>| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&c[r]);
                u64::from_le_bytes(a)
            };
            (w(0..8), c[8], c[9], w(10..18))
        })
        .collect()
}

#[derive(Default)]
struct OldKv {
    values: HashMap<RoomKey, (u64, Vec<u8>)>,
}

impl OldKv {
    fn cas(&mut self, room: RoomKey, f: impl Fn(&mut Vec<(u64, u8, u8, u64)>)) {
        loop {
            let (version, bytes) = self.values.get(&room).cloned().unwrap_or_default();
            let mut list = decode(&bytes);
            f(&mut list);
            let new = encode(&list);
            let slot = self.values.entry(room).or_default();
            if slot.0 == version {
                *slot = (version + 1, new);
                return;
            }
        }
    }
}

// ---------- Redis ----------

fn start_redis() -> Option<RedisServer> {
    RedisServer::start(None).ok()
}

fn zkey(room: RoomKey, role: Role) -> String {
    format!("ml:{}:{}:r{}", room.bid.0, room.room.0, role.bit())
}

fn hkey(room: RoomKey) -> String {
    format!("ml:{}:{}:h", room.bid.0, room.room.0)
}

/// A join in the Redis design: the member in its role's ZSET (scored by
/// join time) and its details in the room's HASH.
fn redis_join(pipe: &mut redis::Pipeline, room: RoomKey, uin: Uin, role: Role, terminal: Terminal, joined: u64) {
    pipe.cmd("ZADD").arg(zkey(room, role)).arg(joined).arg(uin.0).ignore();
    pipe.cmd("HSET").arg(hkey(room)).arg(uin.0).arg(format!("{}|{}|{}", role.bit(), terminal.bit(), joined)).ignore();
}

/// The start of every page of `query` in the big room, in order.
fn page_starts(store: &LocalStore, query: PageQuery) -> Vec<PageStart> {
    let (mut starts, mut rows, mut start) = (Vec::new(), Vec::new(), PageStart::First);
    loop {
        let info = store.page(big_room(), &query.start(start), &mut rows).unwrap();
        starts.push(start);
        match info.next {
            Some(c) => start = PageStart::After(c),
            None => return starts,
        }
    }
}

fn bench_store(c: &mut Criterion) {
    let mut report = String::new();
    let mut group = c.benchmark_group("memberlist");
    group.sample_size(if quick() { 10 } else { 20 });
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(if quick() { 1 } else { 3 }));

    // ---- roomkit ----
    // The 60k room alone, counted by the allocator.
    let alone = LocalStore::new(StoreConfig::default());
    let region = Region::new(GLOBAL);
    for i in 0..BIG {
        let (uin, role, terminal) = member(i);
        alone.enter(Timestamp::from_micros(1_000 + i * 17), big_room().member(uin), role, terminal, None).unwrap();
    }
    let change = region.change();
    let alone_bytes = (change.bytes_allocated as f64 - change.bytes_deallocated as f64) / BIG as f64;
    drop(alone);
    report.push_str(&format!("| roomkit | {alone_bytes:.1} B/member: the 60k room alone (counting allocator) | |\n"));
    let region = Region::new(GLOBAL);
    let store = LocalStore::new(StoreConfig::default());
    fill(&store);
    let total = region.change();
    let all_bytes = total.bytes_allocated as f64 - total.bytes_deallocated as f64;
    let members = (BIG + SMALL_ROOMS * SMALL) as f64;
    let big_bytes = store.room_heap_bytes(big_room()) as f64 / BIG as f64;
    report.push_str(&format!(
        "| roomkit | {:.1} B/member over all rooms (counting allocator, every structure) | {:.1} B/member in the 60k room (its own structures) |\n",
        all_bytes / members,
        big_bytes
    ));

    // Join + leave of members not present, on the 60k room: the room stays
    // at 60k. One element = one join and one leave.
    let churn: Vec<(Uin, Role, Terminal)> = (BIG..BIG + OPS).map(member).collect();
    group.throughput(Throughput::Elements(2 * OPS));
    let mut clock = 10_000_000_000u64;
    group.bench_function("roomkit join+leave (60k room)", |b| {
        b.iter(|| {
            for &(uin, role, terminal) in &churn {
                clock += 1;
                let m = big_room().member(uin);
                black_box(store.enter(Timestamp::from_micros(clock), m, role, terminal, None).ok());
            }
            for &(uin, _, terminal) in &churn {
                black_box(store.exit(Timestamp::from_micros(clock), big_room().member(uin), terminal).ok());
            }
        })
    });

    // Cursors spread over the students of the big room.
    let students = RoleSet::only(Role::Student);
    let cursors = page_starts(&store, PageQuery::first(100).roles(students));
    let mut rows = Vec::new();
    let pages = cursors.len();
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("roomkit role-filtered page of 100", |b| {
        b.iter(|| {
            i = (i + 7) % pages;
            let q = PageQuery::first(100).roles(students).start(cursors[i]);
            black_box(store.page(big_room(), &q, &mut rows).ok());
        })
    });
    let apps = TerminalSet::apps();
    let app_cursors = page_starts(&store, PageQuery::first(100).terminals(apps));
    let mut j = 0usize;
    group.bench_function("roomkit terminal-filtered page of 100", |b| {
        b.iter(|| {
            j = (j + 7) % app_cursors.len();
            let q = PageQuery::first(100).terminals(apps).start(app_cursors[j]);
            black_box(store.page(big_room(), &q, &mut rows).ok());
        })
    });
    let mut k = 0usize;
    group.bench_function("roomkit offset page of 100 (rank paging, students)", |b| {
        b.iter(|| {
            k = (k + 7) % pages;
            let q = PageQuery::first(100).roles(students).start(PageStart::Offset(k * 100));
            black_box(store.page(big_room(), &q, &mut rows).ok());
        })
    });

    // ---- the old design ----
    let mut kv = OldKv::default();
    for i in 0..BIG {
        let (uin, role, terminal) = member(i);
        let list = kv.values.entry(big_room()).or_default();
        let mut v = decode(&list.1);
        v.push((uin.0, role.bit() as u8, 1 << terminal.bit(), i));
        *list = (list.0 + 1, encode(&v));
        if i % 10_000 == 9_999 {
            print!(".");
            let _ = std::io::stdout().flush();
        }
    }
    println!();
    let few = &churn[..20];
    group.throughput(Throughput::Elements(2 * few.len() as u64));
    group.bench_function("old design join+leave (60k room, read-modify-CAS)", |b| {
        b.iter(|| {
            for &(uin, role, terminal) in few {
                kv.cas(big_room(), |l| l.push((uin.0, role.bit() as u8, 1 << terminal.bit(), 0)));
            }
            for &(uin, _, _) in few {
                kv.cas(big_room(), |l| l.retain(|m| m.0 != uin.0));
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    let student_bit = Role::Student.bit() as u8;
    group.bench_function("old design role-filtered page of 100", |b| {
        b.iter(|| {
            let list = decode(&kv.values[&big_room()].1);
            let mut page: Vec<_> = list.into_iter().filter(|m| m.1 == student_bit).collect();
            page.sort_by_key(|m| (m.3, m.0));
            black_box(page.into_iter().skip(3_000).take(100).count());
        })
    });
    drop(kv);

    // ---- Redis ----
    match start_redis() {
        None => println!("redis-server not found or did not start: Redis rows skipped"),
        Some(server) => {
            let client = redis::Client::open(server.url()).unwrap();
            let mut con = client.get_connection().unwrap();
            let room = big_room();
            for chunk in (0..BIG).collect::<Vec<_>>().chunks(1_000) {
                let mut pipe = redis::pipe();
                for &i in chunk {
                    let (uin, role, terminal) = member(i);
                    redis_join(&mut pipe, room, uin, role, terminal, i);
                }
                pipe.query::<()>(&mut con).unwrap();
            }
            let mut usage = 0u64;
            for role in [Role::Teacher, Role::Assistant, Role::Student, Role::Observer] {
                usage += redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(zkey(room, role))
                    .query::<Option<u64>>(&mut con)
                    .unwrap()
                    .unwrap_or(0);
            }
            usage +=
                redis::cmd("MEMORY").arg("USAGE").arg(hkey(room)).query::<Option<u64>>(&mut con).unwrap().unwrap_or(0);
            report.push_str(&format!(
                "| Redis | {:.1} B/member in the 60k room (MEMORY USAGE of its ZSETs and HASH) | |\n",
                usage as f64 / BIG as f64
            ));

            // Join + leave, 16 deep: each join is ZADD + HSET, each leave
            // ZREM + HDEL (one pipeline of 16 members at a time).
            group.throughput(Throughput::Elements(2 * OPS));
            let mut score = 1_000_000_000u64;
            group.bench_function("Redis join+leave (60k room, pipelined 16)", |b| {
                b.iter(|| {
                    for chunk in churn.chunks(16) {
                        let mut pipe = redis::pipe();
                        for &(uin, role, terminal) in chunk {
                            score += 1;
                            redis_join(&mut pipe, room, uin, role, terminal, score);
                        }
                        pipe.query::<()>(&mut con).unwrap();
                    }
                    for chunk in churn.chunks(16) {
                        let mut pipe = redis::pipe();
                        for &(uin, role, _) in chunk {
                            pipe.cmd("ZREM").arg(zkey(room, role)).arg(uin.0).ignore();
                            pipe.cmd("HDEL").arg(hkey(room)).arg(uin.0).ignore();
                        }
                        pipe.query::<()>(&mut con).unwrap();
                    }
                })
            });
            // A page: ZRANGE of 100 students by rank, then HMGET of their
            // details; 16 pages pipelined per round trip.
            let students_n: u64 = redis::cmd("ZCARD").arg(zkey(room, Role::Student)).query(&mut con).unwrap();
            group.throughput(Throughput::Elements(16));
            let mut p = 0u64;
            group.bench_function("Redis role-filtered page of 100 (pipelined 16)", |b| {
                b.iter(|| {
                    let mut pipe = redis::pipe();
                    let starts: Vec<u64> = (0..16)
                        .map(|_| {
                            p = (p + 7_919) % (students_n - 100);
                            p
                        })
                        .collect();
                    for &s in &starts {
                        pipe.cmd("ZRANGE").arg(zkey(room, Role::Student)).arg(s).arg(s + 99);
                    }
                    let ids: Vec<Vec<u64>> = pipe.query(&mut con).unwrap();
                    let mut pipe = redis::pipe();
                    for page in &ids {
                        pipe.cmd("HMGET").arg(hkey(room)).arg(page);
                    }
                    let details: Vec<Vec<Option<String>>> = pipe.query(&mut con).unwrap();
                    black_box(details.len());
                })
            });
            drop(server);
        }
    }
    group.finish();
    // The longest a dump holds one room's lock: the 60k room's copy.
    let scratch = tempfile::tempdir().unwrap();
    let mut longest = Duration::ZERO;
    for _ in 0..5 {
        let dumped = snapshot::dump(&store, &scratch.path().join("s"), Timestamp::from_millis(1)).unwrap();
        longest = longest.max(dumped.longest_room_lock);
    }
    report.push_str(&format!(
        "\nDump of this store (the 60k room and 2,000 rooms of 30), 5 runs: longest room lock {:.3} ms\n",
        longest.as_secs_f64() * 1e3
    ));
    drop(store);

    // ---- snapshot of 1M members ----
    let big = LocalStore::new(StoreConfig::default());
    let mut t = 1u64;
    for r in 0..20_000u64 {
        let room = RoomKey::new(BusinessId(3), RoomId(r));
        for i in 0..50 {
            let (uin, role, terminal) = member(r * 50 + i);
            t += 1;
            big.enter(Timestamp::from_micros(t), room.member(uin), role, terminal, None).unwrap();
        }
    }
    let dir = std::path::Path::new(snapshot::DEFAULT_DIR);
    let dir = if dir.is_dir() { dir.to_path_buf() } else { std::env::temp_dir() };
    let path = dir.join(format!("roomkit-bench-{}.snap", std::process::id()));
    let mut writes = Vec::new();
    let mut restores = Vec::new();
    let mut locks = Duration::ZERO;
    for _ in 0..if quick() { 3 } else { 7 } {
        let started = Instant::now();
        let dumped = snapshot::dump(&big, &path, Timestamp::from_millis(1)).unwrap();
        writes.push(started.elapsed());
        locks = locks.max(dumped.longest_room_lock);
        let fresh = LocalStore::new(StoreConfig::default());
        let started = Instant::now();
        let loaded = snapshot::restore(&fresh, &path).unwrap();
        restores.push(started.elapsed());
        assert_eq!(loaded.records, 1_000_000);
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(snapshot::previous_path(&path));
    writes.sort();
    restores.sort();
    report.push_str(&format!(
        "\nSnapshot of 1,000,000 members in 20,000 rooms under {}: write median {:.1} ms, restore median {:.1} ms, longest room lock {:.3} ms\n",
        dir.display(),
        writes[writes.len() / 2].as_secs_f64() * 1e3,
        restores[restores.len() / 2].as_secs_f64() * 1e3,
        locks.as_secs_f64() * 1e3
    ));
    println!("\n{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion/memberlist-report.md");
    let _ = std::fs::write(out, report);
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
