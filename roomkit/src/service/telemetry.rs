//! The room service's metrics (feature `metrics`), through the [`metrics`]
//! facade: whichever recorder the host installs gets them (the example
//! servers install a Prometheus one and serve it at `GET /metrics`).
//!
//! * Every [`SAMPLE_EVERY`], and whenever the host calls
//!   [`RoomService::record_metrics`](super::RoomService::record_metrics),
//!   the service copies [`NodeStats`] and [`RoomSizes`] into gauges and
//!   counters: the sans-IO core only keeps plain counters, and no metrics
//!   call runs on its paths.
//! * The driver records what only it sees: how long each input holds the
//!   node (a turn) and how long handing frames to the writers takes, the
//!   shared cache's and the limiter's latencies and errors, and what the
//!   bus and peer links refused.
//!
//! Every series the service records carries a `node` label (the node's
//! id), so several services in one process keep apart; other labels
//! (`class`, `size`, `op`, `by`) take a few fixed values. [`METRICS`] lists
//! them all; [`describe`] gives the recorder their help texts.
//!
//! Install the recorder before starting the service: the service describes
//! its metrics and registers the histograms of its turns when it starts
//! (a turn then costs two clock reads and two histogram records).

use std::time::Duration;

use metrics::{Histogram, SharedString, Unit, counter, gauge, histogram};
use room_service::{CacheAnswer, CacheOp, NodeStats, RoomSizes};

/// How often a running service samples its counters into metrics.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (restarts from 0 with the process).
    Counter,
    /// A value now.
    Gauge,
    /// A distribution, in seconds.
    Histogram,
}

/// One metric the service records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: MetricKind,
    /// Its labels (besides `node`, which every one has).
    pub labels: &'static [&'static str],
    /// What it means.
    pub help: &'static str,
}

const fn m(name: &'static str, kind: MetricKind, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind, labels, help }
}

use MetricKind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric the room service records, with its help text
/// (the repository's docs/METRICS.md explains each for operators).
pub const METRICS: &[Metric] = &[
    // What the node holds now.
    m("roomkit_connections", G, &[], "Client connections held by this node."),
    m("roomkit_sessions", G, &[], "Heartbeat sessions owned by this node."),
    m("roomkit_rooms", G, &[], "Rooms owned by this node."),
    m("roomkit_push_rooms", G, &[], "Rooms with at least one connection on this node."),
    m("roomkit_queued_frames", G, &[], "Frames waiting in this node's push lanes."),
    m(
        "roomkit_rooms_by_size",
        G,
        &["size"],
        "Rooms owned by this node, by member count (size: 0, 1-10, 11-100, 101-1000, 1001-10000, >10000).",
    ),
    m(
        "roomkit_room_members",
        G,
        &["size"],
        "Members of the rooms owned by this node, by the room's member count (size as roomkit_rooms_by_size).",
    ),
    // Messages.
    m(
        "roomkit_messages_in_total",
        C,
        &["class"],
        "Messages (envelopes) this node's push side took from the bus, by class (signal, teacher, chat, reaction).",
    ),
    m(
        "roomkit_messages_out_total",
        C,
        &["class"],
        "Frames handed to client connections, by class (merged chat and reaction frames count once; resync markers as signal).",
    ),
    m("roomkit_bus_published_total", C, &["class"], "Messages this node published on the bus, by class."),
    m("roomkit_chat_shed_total", C, &[], "Chat frames shed from full chat lanes."),
    m("roomkit_chat_sampled_out_total", C, &[], "Chat lines sampled out of full batches under load."),
    m("roomkit_reactions_dropped_total", C, &[], "Reactions of a kind beyond the room's limit of kinds (dropped)."),
    m("roomkit_resyncs_total", C, &[], "Resync markers queued (a connection's reliable lane overflowed)."),
    m("roomkit_resets_total", C, &[], "Checks answered with a reset (the client starts over from the room's state)."),
    m("roomkit_checks_answered_total", C, &[], "Checks answered with the missing messages."),
    m("roomkit_push_disconnects_total", C, &[], "Connections dropped by the push side (closed, failed or too slow)."),
    m("roomkit_bus_duplicates_total", C, &[], "Reliable envelopes that came twice (ignored)."),
    m("roomkit_bus_gaps_total", C, &[], "Reliable envelopes that arrived after a gap in their room's sequence."),
    m("roomkit_bus_stale_total", C, &[], "Reliable envelopes of an older epoch than their room's (ignored)."),
    // Presence, entries, refusals.
    m("roomkit_entries_total", C, &[], "Connections this node let in (the room's owner may still refuse them)."),
    m(
        "roomkit_entries_refused_total",
        C,
        &["by"],
        "Entries refused: by=ticket, the ticket did not verify; by=node, this node or the room's owner refused.",
    ),
    m("roomkit_heartbeat_timeouts_total", C, &[], "Sessions ended here because their client stopped beating."),
    m("roomkit_sessions_adopted_total", C, &[], "Sessions adopted after a failover, without a second entry."),
    m("roomkit_refused_frames_total", C, &[], "Client frames refused with an error frame, whoever refused them."),
    m(
        "roomkit_refused_by_owner_total",
        C,
        &[],
        "Client frames the room's owner refused (its gate: mutes, roles, room limits; its classroom).",
    ),
    m(
        "roomkit_rate_limited_total",
        C,
        &[],
        "Client frames refused as over a limit (rate_limited replies with retry_after_ms).",
    ),
    m("roomkit_replies_dropped_total", C, &[], "Direct replies dropped because the client's writer was full."),
    // The cluster: forwarding, the shared cache, the bus.
    m("roomkit_forward_retries_total", C, &[], "Requests sent again to a room's owner."),
    m("roomkit_forward_failures_total", C, &[], "Requests given up: no owner answered."),
    m("roomkit_refilled_total", C, &[], "Reliable envelopes the bus lost, refilled from the shared cache."),
    m("roomkit_recovered_from_shared_total", C, &[], "Reliable messages a client's check got from the shared cache."),
    m("roomkit_rooms_restored_total", C, &[], "Rooms restored by this node as their new owner."),
    m("roomkit_state_saves_total", C, &[], "Room states saved to the shared cache."),
    m(
        "roomkit_states_unsaved_total",
        C,
        &[],
        "Room states too large for the shared cache (answered without being saved).",
    ),
    m(
        "roomkit_fenced_total",
        C,
        &[],
        "Times another owner saved or numbered a room first (this node let the room go).",
    ),
    m("roomkit_deduplicated_total", C, &[], "Retried requests recognised and not done twice."),
    m("roomkit_peer_garbage_total", C, &[], "Peer messages that could not be decoded (dropped)."),
    m(
        "roomkit_cache_errors_total",
        C,
        &["op"],
        "Shared-cache operations that failed, by operation (append, head, range, load_state, save_state).",
    ),
    m(
        "roomkit_cache_late_total",
        C,
        &["op"],
        "Shared-cache answers later than the node's cache_timeout (the node had given up on them).",
    ),
    m(
        "roomkit_limiter_errors_total",
        C,
        &[],
        "Global limiter checks that failed (the request was refused as limited).",
    ),
    m("roomkit_bus_publish_errors_total", C, &[], "Envelopes the bus refused to publish."),
    m("roomkit_bus_interest_retries_total", C, &[], "Bus subscriptions to a room that failed and were retried."),
    m("roomkit_peer_send_errors_total", C, &[], "Messages to other nodes the peer link refused."),
    // Latencies.
    m(
        "roomkit_turn_seconds",
        H,
        &[],
        "Time one input (a client frame, an envelope, a peer message, a timer, an answer) held the node, handing out its outputs and frames included.",
    ),
    m("roomkit_flush_seconds", H, &[], "Time handing queued frames to the connections' writers took, per turn."),
    m(
        "roomkit_fanout_seconds",
        H,
        &["class"],
        "Time from taking one envelope off the bus to its frame in the queue of the last local recipient (waiting for the node included), by class; merged chat reaches queues when its window closes.",
    ),
    m("roomkit_cache_op_seconds", H, &["op"], "Shared-cache operation latency as the driver saw it, by operation."),
    m("roomkit_limiter_check_seconds", H, &[], "Global limiter check latency as the driver saw it."),
];

/// Gives the installed recorder the help text (and unit) of every metric
/// in [`METRICS`]. Idempotent; the service calls it when it starts.
pub fn describe() {
    for metric in METRICS {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, Unit::Seconds, metric.help),
        }
    }
}

/// The `class` label of each class, by [`Class::code`](room_push::Class::code).
const CLASSES: [&str; 4] = ["signal", "teacher", "chat", "reaction"];

/// The `class` label of `class`.
pub(super) fn class_label(class: room_push::Class) -> &'static str {
    CLASSES.get(usize::from(class.code())).copied().unwrap_or("other")
}

/// Copies a node's counters into metrics: gauges for what it holds now,
/// counters (set to the node's running totals) for the rest.
pub(super) fn record(node: &SharedString, stats: &NodeStats, sizes: &RoomSizes) {
    let set = |name: &'static str, value: usize| gauge!(name, "node" => node.clone()).set(value as f64);
    set("roomkit_connections", stats.connections);
    set("roomkit_sessions", stats.sessions);
    set("roomkit_rooms", stats.rooms);
    set("roomkit_push_rooms", stats.push.rooms);
    gauge!("roomkit_queued_frames", "node" => node.clone()).set(stats.push.queued_frames as f64);
    for (i, size) in RoomSizes::BUCKETS.iter().enumerate() {
        gauge!("roomkit_rooms_by_size", "node" => node.clone(), "size" => *size).set(sizes.rooms[i] as f64);
        gauge!("roomkit_room_members", "node" => node.clone(), "size" => *size).set(sizes.members[i] as f64);
    }
    for (i, class) in CLASSES.iter().enumerate() {
        counter!("roomkit_messages_in_total", "node" => node.clone(), "class" => *class)
            .absolute(stats.push.envelopes_by_class[i]);
        counter!("roomkit_messages_out_total", "node" => node.clone(), "class" => *class)
            .absolute(stats.push.frames_by_class[i]);
    }
    let total = |name: &'static str, value: u64| counter!(name, "node" => node.clone()).absolute(value);
    total("roomkit_chat_shed_total", stats.push.chat_shed);
    total("roomkit_chat_sampled_out_total", stats.push.chat_sampled_out);
    total("roomkit_reactions_dropped_total", stats.push.reactions_dropped);
    total("roomkit_resyncs_total", stats.push.resyncs);
    total("roomkit_resets_total", stats.push.resets);
    total("roomkit_checks_answered_total", stats.push.checks_answered);
    total("roomkit_push_disconnects_total", stats.push.disconnects);
    total("roomkit_bus_duplicates_total", stats.push.duplicates);
    total("roomkit_bus_gaps_total", stats.push.sequence_gaps);
    total("roomkit_bus_stale_total", stats.push.stale_epoch);
    counter!("roomkit_entries_refused_total", "node" => node.clone(), "by" => "node").absolute(stats.refused_entries);
    total("roomkit_heartbeat_timeouts_total", stats.timed_out);
    total("roomkit_sessions_adopted_total", stats.adopted);
    total("roomkit_refused_frames_total", stats.refused_frames);
    total("roomkit_refused_by_owner_total", stats.refused_by_owner);
    total("roomkit_rate_limited_total", stats.rate_limited);
    total("roomkit_replies_dropped_total", stats.replies_dropped);
    total("roomkit_forward_retries_total", stats.forward_retries);
    total("roomkit_forward_failures_total", stats.forward_failures);
    total("roomkit_refilled_total", stats.refilled);
    total("roomkit_recovered_from_shared_total", stats.recovered_from_shared);
    total("roomkit_rooms_restored_total", stats.restored);
    total("roomkit_state_saves_total", stats.saves);
    total("roomkit_states_unsaved_total", stats.unsaved);
    total("roomkit_fenced_total", stats.fenced);
    total("roomkit_deduplicated_total", stats.deduplicated);
    total("roomkit_peer_garbage_total", stats.garbage);
}

/// Counts one event of the driver's.
pub(super) fn count(node: &SharedString, name: &'static str) {
    counter!(name, "node" => node.clone()).increment(1);
}

/// The histograms of the node's turns, registered with the recorder once
/// (when the service starts) rather than looked up on every input.
pub(super) struct Turns {
    turn: Histogram,
    flush: Histogram,
    /// By class, in [`CLASSES`]' order.
    fanout: [Histogram; CLASSES.len()],
}

impl Turns {
    pub(super) fn new(node: &SharedString) -> Turns {
        Turns {
            turn: histogram!("roomkit_turn_seconds", "node" => node.clone()),
            flush: histogram!("roomkit_flush_seconds", "node" => node.clone()),
            fanout: CLASSES.map(|class| histogram!("roomkit_fanout_seconds", "node" => node.clone(), "class" => class)),
        }
    }

    /// One input's time holding the node, its flush included.
    pub(super) fn turn(&self, took: Duration) {
        self.turn.record(took.as_secs_f64());
    }

    /// One bus envelope's fan-out to this node's queues.
    pub(super) fn fanout(&self, class: room_push::Class, took: Duration) {
        if let Some(h) = self.fanout.get(usize::from(class.code())) {
            h.record(took.as_secs_f64());
        }
    }

    /// The time handing frames to the writers took.
    pub(super) fn flush(&self, took: Duration) {
        self.flush.record(took.as_secs_f64());
    }
}

/// The `op` label of a cache operation.
pub(super) fn cache_op(op: &CacheOp) -> &'static str {
    match op {
        CacheOp::Append(_) => "append",
        CacheOp::Head(_) => "head",
        CacheOp::Range { .. } => "range",
        CacheOp::LoadState(_) => "load_state",
        CacheOp::SaveState { .. } => "save_state",
        _ => "other",
    }
}

/// A shared-cache operation done: its latency, and whether it failed or
/// came too late for the node.
pub(super) fn cache_done(node: &SharedString, op: &'static str, took: Duration, answer: &CacheAnswer, late: bool) {
    histogram!("roomkit_cache_op_seconds", "node" => node.clone(), "op" => op).record(took.as_secs_f64());
    let failed = match answer {
        CacheAnswer::Appended(r) => r.is_err(),
        CacheAnswer::Head(r) => r.is_err(),
        CacheAnswer::Range(r) => r.is_err(),
        CacheAnswer::State(r) => r.is_err(),
        CacheAnswer::Saved(r) => r.is_err(),
        _ => false,
    };
    if failed {
        counter!("roomkit_cache_errors_total", "node" => node.clone(), "op" => op).increment(1);
    }
    if late {
        counter!("roomkit_cache_late_total", "node" => node.clone(), "op" => op).increment(1);
    }
}

/// A global limiter check done.
pub(super) fn limit_done(node: &SharedString, took: Duration, failed: bool) {
    histogram!("roomkit_limiter_check_seconds", "node" => node.clone()).record(took.as_secs_f64());
    if failed {
        count(node, "roomkit_limiter_errors_total");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_with_the_prefix_and_help() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a name is listed twice");
        for metric in METRICS {
            assert!(metric.name.starts_with("roomkit_"), "{}", metric.name);
            assert!(!metric.help.is_empty(), "{}", metric.name);
            assert_eq!(metric.kind == MetricKind::Counter, metric.name.ends_with("_total"), "{}", metric.name);
            assert_eq!(metric.kind == MetricKind::Histogram, metric.name.ends_with("_seconds"), "{}", metric.name);
        }
    }

    #[test]
    fn room_sizes_fall_in_their_buckets() {
        let sizes: Vec<&str> = [0, 1, 10, 11, 100, 101, 1_000, 1_001, 10_000, 10_001, 60_000]
            .into_iter()
            .map(|n| RoomSizes::BUCKETS[RoomSizes::bucket(n)])
            .collect();
        assert_eq!(
            sizes,
            [
                "0",
                "1-10",
                "1-10",
                "11-100",
                "11-100",
                "101-1000",
                "101-1000",
                "1001-10000",
                "1001-10000",
                ">10000",
                ">10000"
            ]
        );
    }
}
