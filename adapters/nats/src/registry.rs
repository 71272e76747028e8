//! The node registry on JetStream KV.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use room_core::{ClusterView, NodeChange, NodeId, NodeState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Connection;

/// What a node says of itself in the registry (JSON, so operators can read
/// it with `nats kv get`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// The node.
    pub node: NodeId,
    /// Its relative capacity (`1..=room_core::router::MAX_WEIGHT`).
    pub weight: u32,
    /// Where clients reach it (host:port), for proxies and load balancers.
    pub addr: String,
    /// Changes each time the node process starts, so a restart is seen as
    /// one even if it comes back within the time-to-live.
    pub incarnation: u64,
}

/// Registry settings. Every node of a cluster must use the same bucket
/// and time-to-live.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The KV bucket (stream `KV_<bucket>`).
    pub bucket: String,
    /// How often a node re-puts its record.
    pub interval: Duration,
    /// A node whose record has not arrived for this long is out of the
    /// view (at least two intervals; default three).
    pub ttl: Duration,
}

impl RegistryConfig {
    /// Defaults: bucket `roomkit_nodes`, re-put every second, out after 3 s.
    pub fn new() -> Self {
        RegistryConfig { bucket: "roomkit_nodes".into(), interval: Duration::from_secs(1), ttl: Duration::from_secs(3) }
    }

    /// Re-put every `interval`, out after three of them.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self.ttl = interval * 3;
        self
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What went wrong in the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Settings that cannot work.
    #[error("invalid registry settings: {0}")]
    Config(&'static str),
    /// The bucket could not be created or opened.
    #[error("registry bucket unavailable: {0}")]
    Bucket(String),
    /// A record could not be written.
    #[error("could not write the node record: {0}")]
    Put(String),
    /// The bucket could not be watched.
    #[error("could not watch the registry: {0}")]
    Watch(String),
    /// An entry that is not a valid node record (ignored).
    #[error("bad registry entry {key:?}: {reason}")]
    BadRecord {
        /// The entry's key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// Creates the bucket's stream if it does not exist, and opens it.
///
/// async-nats's `create_key_value` cannot read a 2.9 server's reply, so the
/// `KV_<bucket>` stream is created here as a KV bucket is: subjects
/// `$KV.<bucket>.>`, one message per subject, rollups allowed, deletes
/// denied, direct gets; records older than `ttl` expire on the server.
pub async fn ensure_bucket(js: &jetstream::Context, bucket: &str, ttl: Duration) -> Result<kv::Store, RegistryError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        max_age: ttl,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| RegistryError::Bucket(e.to_string()))?;
    js.get_key_value(bucket).await.map_err(|e| RegistryError::Bucket(e.to_string()))
}

/// Parses and checks an entry.
pub(crate) fn parse_record(key: &str, value: &Bytes) -> Result<NodeRecord, RegistryError> {
    let bad = |reason: String| RegistryError::BadRecord { key: key.to_string(), reason };
    let record: NodeRecord = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    if key != record.node.0.to_string() {
        return Err(bad(format!("the record is for node {}", record.node)));
    }
    if record.weight == 0 || record.weight > room_core::router::MAX_WEIGHT {
        return Err(bad(format!("weight {} is outside 1..={}", record.weight, room_core::router::MAX_WEIGHT)));
    }
    Ok(record)
}

#[derive(Debug)]
struct Known {
    record: NodeRecord,
    seen: Instant,
}

/// The live nodes and the view built from them.
#[derive(Debug)]
struct Table {
    known: BTreeMap<NodeId, Known>,
    view: ClusterView,
}

impl Table {
    fn upsert(&mut self, record: NodeRecord) -> bool {
        let node = record.node;
        let weight = record.weight;
        let old = self.known.insert(node, Known { record, seen: Instant::now() });
        match old {
            None => {
                let _ = self.view.apply(NodeChange::Joined { node, weight });
                let _ = self.view.apply(NodeChange::StateChanged { node, state: NodeState::Up });
                true
            }
            Some(o) if o.record.weight != weight => {
                let _ = self.view.apply(NodeChange::Reweighted { node, weight });
                true
            }
            Some(_) => false,
        }
    }

    fn remove(&mut self, node: NodeId) -> bool {
        if self.known.remove(&node).is_none() {
            return false;
        }
        let _ = self.view.apply(NodeChange::Removed { node });
        true
    }

    /// Drops the nodes not heard from within `ttl`. While this node is
    /// cut off from NATS (`connected` false) silence is no evidence, so
    /// every node counts as heard from now: once NATS is back, each has a
    /// whole ttl to re-put before it is judged.
    fn expire(&mut self, ttl: Duration, connected: bool) -> bool {
        if !connected {
            let now = Instant::now();
            for k in self.known.values_mut() {
                k.seen = now;
            }
            return false;
        }
        let stale: Vec<NodeId> = self.known.iter().filter(|(_, k)| k.seen.elapsed() > ttl).map(|(n, _)| *n).collect();
        let mut changed = false;
        for node in stale {
            tracing::warn!(%node, "node record expired: out of the view");
            changed |= self.remove(node);
        }
        changed
    }
}

/// A node's place in the registry: its re-put loop (if it registered) and
/// its watcher. Dropping it stops both (the record then expires); use
/// [`Registry::leave`] to leave at once.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    config: RegistryConfig,
    me: Option<NodeId>,
    table: Arc<Mutex<Table>>,
    view: watch::Receiver<ClusterView>,
    errors: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<RegistryError>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn record_error(errors: &AtomicU64, last: &Mutex<Option<RegistryError>>, e: RegistryError) {
    tracing::warn!(error = %e, "registry");
    errors.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!("roomkit_nats_registry_errors_total").increment(1);
    *last.lock() = Some(e);
}

impl Registry {
    /// Registers `me` (re-put every interval) and watches the registry.
    /// Returns at once: if NATS or the bucket is not there yet, both loops
    /// keep trying (each error is counted in [`Registry::errors`]).
    pub fn join(conn: Connection, config: RegistryConfig, me: NodeRecord) -> Result<Registry, RegistryError> {
        parse_record(&me.node.0.to_string(), &Bytes::from(serde_json::to_vec(&me).unwrap_or_default()))?;
        let mut r = Self::start(conn, config, Some(me.node))?;
        let task = tokio::spawn(r.reput_loop(me));
        r.tasks.push(task);
        Ok(r)
    }

    /// Watches the registry without registering (a proxy, a load generator).
    pub fn watch(conn: Connection, config: RegistryConfig) -> Result<Registry, RegistryError> {
        Self::start(conn, config, None)
    }

    fn start(conn: Connection, config: RegistryConfig, me: Option<NodeId>) -> Result<Registry, RegistryError> {
        if config.interval.is_zero() || config.ttl < config.interval * 2 {
            return Err(RegistryError::Config("ttl must be at least two intervals, and the interval above zero"));
        }
        if !crate::valid_token(&config.bucket) {
            return Err(RegistryError::Config("the bucket name must be letters, digits, '-' or '_'"));
        }
        let table = Arc::new(Mutex::new(Table { known: BTreeMap::new(), view: ClusterView::new() }));
        let (tx, view) = watch::channel(ClusterView::new());
        let mut r = Registry {
            conn,
            config,
            me,
            table,
            view,
            errors: Arc::default(),
            last_error: Arc::default(),
            tasks: Vec::new(),
        };
        let task = tokio::spawn(r.watch_loop(tx));
        r.tasks.push(task);
        Ok(r)
    }

    /// The view now: the nodes whose records arrived within the ttl, all
    /// [`NodeState::Up`].
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// Every view change, for rebuilding a router.
    pub fn changes(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }

    /// The live nodes' records.
    pub fn records(&self) -> BTreeMap<NodeId, NodeRecord> {
        self.table.lock().known.iter().map(|(n, k)| (*n, k.record.clone())).collect()
    }

    /// Errors so far (unreachable NATS, bad entries...).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The most recent error.
    pub fn last_error(&self) -> Option<RegistryError> {
        self.last_error.lock().clone()
    }

    /// Stops re-putting and deletes this node's record, so the others drop
    /// it now rather than after the ttl.
    pub async fn leave(mut self) -> Result<(), RegistryError> {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let Some(me) = self.me else { return Ok(()) };
        let js = jetstream::new(self.conn.client().clone());
        let store = ensure_bucket(&js, &self.config.bucket, self.config.ttl).await?;
        store.delete(me.0.to_string()).await.map_err(|e| RegistryError::Put(e.to_string()))
    }

    fn reput_loop(&self, me: NodeRecord) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (conn, config) = (self.conn.clone(), self.config.clone());
        let (errors, last) = (self.errors.clone(), self.last_error.clone());
        async move {
            let js = jetstream::new(conn.client().clone());
            let key = me.node.0.to_string();
            let value = Bytes::from(serde_json::to_vec(&me).unwrap_or_default());
            let mut store = None;
            let mut ticks = tokio::time::interval(config.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // One attempt waits at most an interval. A request sent into a
            // partition would otherwise wait for JetStream's own timeout
            // (seconds) after the partition healed, and the others would
            // see this node come back that much later; the next tick tries
            // again, well within the ttl.
            let within = config.interval;
            let late = |what: &str| format!("no answer to the {what} within {within:?}");
            loop {
                ticks.tick().await;
                if store.is_none() {
                    match tokio::time::timeout(within, ensure_bucket(&js, &config.bucket, config.ttl)).await {
                        Ok(Ok(s)) => store = Some(s),
                        Ok(Err(e)) => {
                            record_error(&errors, &last, e);
                            continue;
                        }
                        Err(_) => {
                            record_error(&errors, &last, RegistryError::Bucket(late("bucket's lookup")));
                            continue;
                        }
                    }
                }
                let Some(s) = &store else { continue };
                match tokio::time::timeout(within, s.put(&key, value.clone())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        // The stream may be gone (a NATS restart without its
                        // store): open (or create) it again next time.
                        record_error(&errors, &last, RegistryError::Put(e.to_string()));
                        store = None;
                    }
                    Err(_) => record_error(&errors, &last, RegistryError::Put(late("write"))),
                }
            }
        }
    }

    fn watch_loop(&self, tx: watch::Sender<ClusterView>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (conn, config, table) = (self.conn.clone(), self.config.clone(), self.table.clone());
        let (errors, last) = (self.errors.clone(), self.last_error.clone());
        async move {
            let js = jetstream::new(conn.client().clone());
            let publish = |t: &Table| {
                tx.send_replace(t.view.clone());
            };
            loop {
                let watcher = match ensure_bucket(&js, &config.bucket, config.ttl).await {
                    Ok(store) => store.watch_all().await.map_err(|e| RegistryError::Watch(e.to_string())),
                    Err(e) => Err(e),
                };
                let mut watcher = match watcher {
                    Ok(w) => w,
                    Err(e) => {
                        record_error(&errors, &last, e);
                        // Expire while NATS is away too: a node that cannot
                        // be heard from is out.
                        {
                            let mut t = table.lock();
                            if t.expire(config.ttl, conn.health() == crate::Health::Up) {
                                publish(&t);
                            }
                        }
                        tokio::time::sleep(config.interval).await;
                        continue;
                    }
                };
                let mut sweep = tokio::time::interval(config.interval / 2);
                loop {
                    tokio::select! {
                        entry = watcher.next() => {
                            let entry = match entry {
                                Some(Ok(entry)) => entry,
                                Some(Err(e)) => {
                                    record_error(&errors, &last, RegistryError::Watch(e.to_string()));
                                    break;
                                }
                                None => break,
                            };
                            let mut t = table.lock();
                            let changed = match entry.operation {
                                kv::Operation::Put => match parse_record(&entry.key, &entry.value) {
                                    Ok(record)
                                        if t.known.len() >= room_core::router::MAX_NODES
                                            && !t.known.contains_key(&record.node) =>
                                    {
                                        // A flood of records cannot grow the table.
                                        record_error(&errors, &last, RegistryError::BadRecord {
                                            key: entry.key.clone(),
                                            reason: format!("the view already holds {} nodes", room_core::router::MAX_NODES),
                                        });
                                        false
                                    }
                                    Ok(record) => t.upsert(record),
                                    Err(e) => {
                                        record_error(&errors, &last, e);
                                        false
                                    }
                                },
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    entry.key.parse::<u64>().is_ok_and(|n| t.remove(NodeId(n)))
                                }
                            };
                            if changed {
                                publish(&t);
                            }
                        }
                        _ = sweep.tick() => {
                            let mut t = table.lock();
                            if t.expire(config.ttl, conn.health() == crate::Health::Up) {
                                publish(&t);
                            }
                        }
                    }
                }
                tokio::time::sleep(config.interval / 2).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of puts, re-puts, reweights and deletes, the
        /// view routes exactly the nodes the model holds, with their
        /// latest weights, and its epoch only grows.
        #[test]
        fn the_view_matches_a_model(ops in proptest::collection::vec((0u64..6, 0u32..4), 1..60)) {
            let mut t = Table { known: BTreeMap::new(), view: ClusterView::new() };
            let mut model: BTreeMap<u64, u32> = BTreeMap::new();
            let mut epoch = t.view.epoch();
            for (node, w) in ops {
                if w == 0 {
                    t.remove(NodeId(node));
                    model.remove(&node);
                } else {
                    let weight = w * 10;
                    t.upsert(NodeRecord { node: NodeId(node), weight, addr: String::new(), incarnation: 0 });
                    model.insert(node, weight);
                }
                prop_assert!(t.view.epoch() >= epoch);
                epoch = t.view.epoch();
                let routed: Vec<(u64, u32)> = t.view.routable().map(|(n, w)| (n.0, w)).collect();
                prop_assert_eq!(routed, model.iter().map(|(n, w)| (*n, *w)).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn records_are_checked() {
        let ok = NodeRecord { node: NodeId(7), weight: 100, addr: "127.0.0.1:1".into(), incarnation: 1 };
        let bytes = Bytes::from(serde_json::to_vec(&ok).expect("json"));
        assert_eq!(parse_record("7", &bytes), Ok(ok.clone()));
        assert!(matches!(parse_record("8", &bytes), Err(RegistryError::BadRecord { .. })));
        assert!(matches!(parse_record("7", &Bytes::from_static(b"{\"node\":")), Err(RegistryError::BadRecord { .. })));
        let heavy = NodeRecord { weight: room_core::router::MAX_WEIGHT + 1, ..ok };
        let bytes = Bytes::from(serde_json::to_vec(&heavy).expect("json"));
        assert!(matches!(parse_record("7", &bytes), Err(RegistryError::BadRecord { .. })));
    }

    #[test]
    fn the_view_follows_the_table() {
        let mut t = Table { known: BTreeMap::new(), view: ClusterView::new() };
        let rec = |n, w| NodeRecord { node: NodeId(n), weight: w, addr: String::new(), incarnation: 0 };
        assert!(t.upsert(rec(1, 10)));
        assert!(!t.upsert(rec(1, 10)), "a re-put changes nothing");
        assert!(t.upsert(rec(1, 20)));
        assert!(t.upsert(rec(2, 10)));
        assert_eq!(t.view.routable().collect::<Vec<_>>(), [(NodeId(1), 20), (NodeId(2), 10)]);
        assert!(t.remove(NodeId(1)));
        assert!(!t.remove(NodeId(1)));
        assert_eq!(t.view.routable().collect::<Vec<_>>(), [(NodeId(2), 10)]);
        assert!(!t.expire(Duration::from_secs(60), true));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!t.expire(Duration::from_millis(1), false), "no judgement while cut off");
        assert!(!t.expire(Duration::from_millis(1), true), "a fresh grace after reconnecting");
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.expire(Duration::from_millis(1), true));
        assert_eq!(t.view.routable().count(), 0);
        assert!(t.upsert(rec(1, 5)), "a node may come back");
    }
}
