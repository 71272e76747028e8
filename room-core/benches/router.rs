//! Router benchmark: this crate's rendezvous slot table against `hashring`
//! (160 virtual nodes), `anchorhash`, `maglev`, jump consistent hash and a
//! rendezvous max-scan, at 16, 64 and 256 nodes, on 1M keys shaped
//! (bid, room, uin).
//!
//! Every algorithm gets the same key hash (the crate's stable XXH3 of the
//! member key, included in the timed lookup) and the same fixed integer
//! mixer wherever it needs a `BuildHasher`, so the comparison is between
//! placement structures, not hash functions.
//!
//! Besides criterion's lookup timings it prints, per algorithm and node
//! count: peak/mean load over the 1M keys, keys moved by removing one node
//! divided by the ideal K/N (mean over 8 removals spread over the nodes;
//! jump hash can only remove its last bucket), and keys moved between
//! surviving nodes (zero for a minimal-disruption scheme). The quality table
//! is also written to target/criterion/router-quality.md.
//!
//! The `router_build` group times this crate's router alone: construction
//! with the default 2^21 slots at 5 and 64 equal nodes (`new`), the same
//! followed by `slot_counts`, which needs every slot's owner (`full`), and
//! adding then removing a node on a router whose table is complete
//! (`add_remove`).
//!
//! Run: `cargo bench -p room-core --bench router`

use std::hash::{BuildHasher, Hash, Hasher};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use room_core::{BusinessId, MemberKey, NodeId, RoomId, RouteKey, Router, RouterConfig, Uin};

const KEYS: usize = 1_000_000;
const NODE_COUNTS: [usize; 3] = [16, 64, 256];
const VNODES: usize = 160;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One mix per written word: a fixed, cheap hasher for the peers.
#[derive(Clone, Copy, Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = mix64(self.0 ^ i);
    }
}

#[derive(Clone, Copy, Default)]
struct MixBuild;

impl BuildHasher for MixBuild {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0x1234_5678_9abc_def0)
    }
}

/// 1M member keys: 8 businesses, rooms of mixed sizes (one of 60k, many
/// small), sparse uins.
fn keys() -> Vec<MemberKey> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = mix64(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
        state
    };
    (0..KEYS)
        .map(|i| {
            let r = next();
            let room = if i < 60_000 { 1 } else { 2 + (r % 30_000) };
            MemberKey::new(BusinessId((r >> 60) as u32 % 8 + 1), RoomId(room), Uin(next() % 100_000_000))
        })
        .collect()
}

trait Placement {
    fn name(&self) -> &'static str;
    fn lookup(&self, key: &MemberKey) -> u64;
    /// Without node `index` (0-based in the original node list); `None` if
    /// the algorithm cannot remove that node.
    fn without(&self, index: usize) -> Option<Box<dyn Placement>>;
}

fn node_ids(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| 1000 + i).collect()
}

// ---- this crate ----
struct Ours(Router, Vec<u64>);
impl Ours {
    fn new(ids: Vec<u64>) -> Self {
        let router = Router::with_nodes(RouterConfig::new(), ids.iter().map(|&i| (NodeId(i), 100))).unwrap();
        // The table fills on demand; complete it, as a host that wants
        // even lookup times does, so lookups are timed on a full table.
        router.fill_table();
        Ours(router, ids)
    }
}
impl Placement for Ours {
    fn name(&self) -> &'static str {
        "roomkit Router"
    }
    #[inline]
    fn lookup(&self, key: &MemberKey) -> u64 {
        self.0.route(key).map_or(0, |n| n.0)
    }
    fn without(&self, index: usize) -> Option<Box<dyn Placement>> {
        let mut router = self.0.clone();
        router.remove_node(NodeId(self.1[index])).ok()?;
        Some(Box::new(Ours(router, self.1.clone())))
    }
}

// ---- hashring, 160 virtual nodes ----
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct VNode {
    id: u64,
    replica: u32,
}
struct Ring(hashring::HashRing<VNode, MixBuild>, Vec<u64>);
impl Ring {
    fn new(ids: Vec<u64>) -> Self {
        let mut ring = hashring::HashRing::with_hasher(MixBuild);
        for &id in &ids {
            for replica in 0..VNODES as u32 {
                ring.add(VNode { id, replica });
            }
        }
        Ring(ring, ids)
    }
}
impl Placement for Ring {
    fn name(&self) -> &'static str {
        "hashring (160 vnodes)"
    }
    #[inline]
    fn lookup(&self, key: &MemberKey) -> u64 {
        self.0.get(&key.route_hash()).map_or(0, |v| v.id)
    }
    fn without(&self, index: usize) -> Option<Box<dyn Placement>> {
        let ids: Vec<u64> = self.1.iter().copied().filter(|&i| i != self.1[index]).collect();
        let mut ring = Ring::new(ids);
        ring.1 = self.1.clone();
        Some(Box::new(ring))
    }
}

// ---- anchorhash ----
struct Anchor(anchorhash::AnchorHash<u64, u64, MixBuild>, Vec<u64>);
impl Anchor {
    fn new(ids: Vec<u64>) -> Self {
        let anchor = anchorhash::Builder::with_hasher(MixBuild).with_resources(ids.clone()).build(ids.len() as u16);
        Anchor(anchor, ids)
    }
}
impl Placement for Anchor {
    fn name(&self) -> &'static str {
        "anchorhash"
    }
    #[inline]
    fn lookup(&self, key: &MemberKey) -> u64 {
        self.0.get_resource(key.route_hash()).copied().unwrap_or(0)
    }
    fn without(&self, index: usize) -> Option<Box<dyn Placement>> {
        let mut anchor = self.0.clone();
        anchor.remove_resource(&self.1[index]).ok()?;
        Some(Box::new(Anchor(anchor, self.1.clone())))
    }
}

// ---- maglev: a table of the first prime >= 100 x the initial node count,
// kept at that size across removals as the Maglev paper does (the crate's
// default would resize it with the node count and move nearly every key) ----
struct Mag(maglev::Maglev<u64, MixBuild>, Vec<u64>);
impl Mag {
    fn new(all: Vec<u64>, present: Vec<u64>) -> Self {
        let capacity = 100 * all.len();
        Mag(maglev::Maglev::with_capacity_and_hasher(present, capacity, MixBuild), all)
    }
}
impl Placement for Mag {
    fn name(&self) -> &'static str {
        "maglev"
    }
    #[inline]
    fn lookup(&self, key: &MemberKey) -> u64 {
        use maglev::ConsistentHasher;
        self.0.get(&key.route_hash()).copied().unwrap_or(0)
    }
    fn without(&self, index: usize) -> Option<Box<dyn Placement>> {
        let ids: Vec<u64> = self.1.iter().copied().filter(|&i| i != self.1[index]).collect();
        Some(Box::new(Mag::new(self.1.clone(), ids)))
    }
}

// ---- jump consistent hash (Lamping & Veach) ----
fn jump(mut key: u64, buckets: i64) -> i64 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b.wrapping_add(1)) as f64 * ((1i64 << 31) as f64 / ((key >> 33).wrapping_add(1)) as f64)) as i64;
    }
    b
}
struct Jump(Vec<u64>);
impl Placement for Jump {
    fn name(&self) -> &'static str {
        "jump hash"
    }
    #[inline]
    fn lookup(&self, key: &MemberKey) -> u64 {
        self.0[jump(key.route_hash(), self.0.len() as i64) as usize]
    }
    fn without(&self, index: usize) -> Option<Box<dyn Placement>> {
        // Jump hash can only remove its last bucket.
        (index == self.0.len() - 1).then(|| Box::new(Jump(self.0[..index].to_vec())) as Box<dyn Placement>)
    }
}

// ---- rendezvous max-scan ----
struct Hrw(Vec<(u64, u64)>);
impl Hrw {
    fn new(ids: &[u64]) -> Self {
        Hrw(ids.iter().map(|&i| (i, mix64(i ^ 0x5eed))).collect())
    }
}
impl Placement for Hrw {
    fn name(&self) -> &'static str {
        "rendezvous max-scan"
    }
    #[inline]
    fn lookup(&self, key: &MemberKey) -> u64 {
        let h = key.route_hash();
        let mut best = (0u64, 0u64);
        for &(id, seed) in &self.0 {
            let score = mix64(h ^ seed);
            if score > best.0 {
                best = (score, id);
            }
        }
        best.1
    }
    fn without(&self, index: usize) -> Option<Box<dyn Placement>> {
        let mut nodes = self.0.clone();
        nodes.remove(index);
        Some(Box::new(Hrw(nodes)))
    }
}

fn build_all(n: usize) -> Vec<Box<dyn Placement>> {
    let ids = node_ids(n);
    vec![
        Box::new(Ours::new(ids.clone())),
        Box::new(Ring::new(ids.clone())),
        Box::new(Anchor::new(ids.clone())),
        Box::new(Mag::new(ids.clone(), ids.clone())),
        Box::new(Jump(ids.clone())),
        Box::new(Hrw::new(&ids)),
    ]
}

struct Quality {
    peak_over_mean: f64,
    moved_over_ideal: f64,
    moved_between_survivors: usize,
    removals: usize,
}

fn quality(p: &dyn Placement, n: usize, keys: &[MemberKey], owners: &[u64]) -> Quality {
    let ids = node_ids(n);
    let mut load = std::collections::HashMap::<u64, usize>::new();
    for &o in owners {
        *load.entry(o).or_default() += 1;
    }
    let peak = *load.values().max().unwrap_or(&0) as f64;
    let mean = keys.len() as f64 / n as f64;
    let (mut moved_total, mut excess, mut removals) = (0usize, 0usize, 0usize);
    // Eight removals spread over the nodes; an algorithm that cannot remove
    // those (jump hash) is measured on removing its last node instead.
    let spread: Vec<usize> = (0..8).map(|i| i * n / 8 + n / 16).collect();
    let candidates = if p.without(spread[0]).is_some() { spread } else { vec![n - 1] };
    for index in candidates {
        let Some(after) = p.without(index) else { continue };
        removals += 1;
        for (key, &before) in keys.iter().zip(owners) {
            if after.lookup(key) != before {
                moved_total += 1;
                if before != ids[index] {
                    excess += 1;
                }
            }
        }
    }
    Quality {
        peak_over_mean: peak / mean,
        moved_over_ideal: moved_total as f64 / removals.max(1) as f64 / mean,
        moved_between_survivors: excess / removals.max(1),
        removals,
    }
}

fn bench_router(c: &mut Criterion) {
    let keys = keys();
    let mut table = String::from(
        "| nodes | algorithm | peak/mean load | moved on one removal / ideal | keys moved between survivors | removals measured |\n|---|---|---|---|---|---|\n",
    );
    let mut group = c.benchmark_group("router_lookup_1M");
    group.sample_size(10);
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in NODE_COUNTS {
        for p in build_all(n) {
            let owners: Vec<u64> = keys.iter().map(|k| p.lookup(k)).collect();
            let q = quality(p.as_ref(), n, &keys, &owners);
            table.push_str(&format!(
                "| {n} | {} | {:.4} | {:.4} | {} | {} |\n",
                p.name(),
                q.peak_over_mean,
                q.moved_over_ideal,
                q.moved_between_survivors,
                q.removals
            ));
            group.bench_with_input(BenchmarkId::new(p.name(), n), &keys, |b, keys| {
                b.iter(|| {
                    let mut acc = 0u64;
                    for k in keys {
                        acc = acc.wrapping_add(p.lookup(black_box(k)));
                    }
                    acc
                })
            });
        }
    }
    group.finish();
    println!("\n{table}");
    let _ = std::fs::create_dir_all("target/criterion");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion/router-quality.md");
    let _ = std::fs::write(path, &table);
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_build");
    group.sample_size(10);
    for n in [5u64, 64] {
        let nodes: Vec<(NodeId, u32)> = (0..n).map(|i| (NodeId(1000 + i), 100)).collect();
        group.bench_with_input(BenchmarkId::new("new", n), &nodes, |b, nodes| {
            b.iter(|| Router::with_nodes(RouterConfig::new(), black_box(nodes).iter().copied()).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("full", n), &nodes, |b, nodes| {
            b.iter(|| {
                let router = Router::with_nodes(RouterConfig::new(), black_box(nodes).iter().copied()).unwrap();
                router.slot_counts().len()
            })
        });
        let mut router = Router::with_nodes(RouterConfig::new(), nodes.iter().copied()).unwrap();
        let _ = router.slot_counts();
        group.bench_function(BenchmarkId::new("add_remove", n), |b| {
            b.iter(|| {
                router.add_node(NodeId(1), 100).unwrap();
                router.remove_node(NodeId(1)).unwrap();
                let _ = router.slot_counts();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_router, bench_build);
criterion_main!(benches);
