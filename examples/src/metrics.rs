//! Prometheus metrics for the example servers: the process's `metrics`
//! recorder (from `metrics-exporter-prometheus`, without a listener of its
//! own) and what the edge serves at `GET /metrics` in the Prometheus text
//! format. docs/METRICS.md lists every metric.
//!
//! What is in a scrape:
//!
//! * the room service's metrics (roomkit's feature `metrics`, see
//!   [`roomkit::service::telemetry`]): its counters, sampled every second
//!   and again at each scrape, and the driver's latency histograms;
//! * the engines' counters (room-redis's and room-nats's feature
//!   `metrics`, [`ENGINE_METRICS`]), and on a cluster node the engines'
//!   health ([`ClusterNode::record_metrics`](crate::cluster::ClusterNode::record_metrics)).
//!
//! The endpoint has no authentication: keep it on a private network
//! (scraped by the operator's Prometheus, not reachable by clients).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use roomkit::service::RoomService;

/// The `Content-Type` of a scrape: the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The upper bounds of the latency histograms' buckets, in seconds: 10 µs
/// (a turn of a quiet node) to 5 s (a shared cache that stopped answering).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0,
];

/// How often histograms are drained into their buckets when nobody scrapes
/// (each scrape drains them too), which keeps the recorder's memory bounded.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The engines' counters (room-redis and room-nats count them with their
/// `metrics` feature), with their help texts.
pub const ENGINE_METRICS: &[(&str, &str)] = &[
    ("roomkit_redis_limiter_checks_total", "Global limiter checks Redis answered."),
    (
        "roomkit_redis_limiter_fallbacks_total",
        "Global limiter checks answered by the node's local share (Redis down or slow).",
    ),
    ("roomkit_redis_cache_appends_total", "Batches of reliable messages appended to the shared cache on Redis."),
    (
        "roomkit_redis_cache_fallbacks_total",
        "Batches held in the local fallback because Redis did not answer (written back later).",
    ),
    (
        "roomkit_redis_cache_state_fallbacks_total",
        "Room states kept in the local fallback because Redis did not answer.",
    ),
    ("roomkit_nats_reconnects_total", "Times the NATS client reconnected."),
    ("roomkit_nats_slow_consumer_total", "Times NATS dropped messages for a slow subscription."),
    ("roomkit_nats_bus_garbage_total", "Bus messages that were not an envelope of their subject's room (dropped)."),
    ("roomkit_nats_registry_errors_total", "Errors of the node registry on JetStream KV."),
];

/// The engines' health gauges a cluster node sets, with their help texts.
pub const ENGINE_GAUGES: &[(&str, &str)] = &[
    (
        "roomkit_redis_up",
        "Whether Redis answers (1) or the engine runs on its local fallback (0), by engine (cache, limiter).",
    ),
    ("roomkit_nats_up", "Whether the NATS connection is up (1) or reconnecting (0)."),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed as the global `metrics`
/// recorder on the first call (later calls return the same handle). Call
/// it before starting a service so that nothing it counts is lost. If
/// another recorder was installed first, the handle renders only the help
/// texts (a warning is logged).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed: /metrics will be empty");
        }
        describe();
        handle
    })
}

/// Gives the recorder every metric's help text.
fn describe() {
    roomkit::service::telemetry::describe();
    for (name, help) in ENGINE_METRICS {
        metrics::describe_counter!(*name, *help);
    }
    for (name, help) in ENGINE_GAUGES {
        metrics::describe_gauge!(*name, *help);
    }
}

/// A scrape: samples `service`'s counters now, then renders everything the
/// process recorded in the Prometheus text format.
pub fn render(service: &RoomService) -> String {
    let handle = install();
    service.record_metrics();
    handle.render()
}

/// Drains the histograms every [`UPKEEP_EVERY`], for as long as the
/// runtime runs (each server starts one; more are harmless).
pub fn spawn_upkeep() {
    let handle = install().clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
}
