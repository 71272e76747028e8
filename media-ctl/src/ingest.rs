//! Recording-callback ingestion: parse the callbacks of seven providers
//! into typed results, drop their retries, and keep an ordered timeline
//! per stream with its gaps and overlaps.
//!
//! Providers retry a callback until it is acknowledged (Tencent Cloud up to
//! 12 times), and deliver them in any order. A segment is identified by its
//! stream and file id; the same segment again is a duplicate and changes
//! nothing, so any order and any number of deliveries give the same
//! timelines.
//!
//! # Shapes
//!
//! [`parse_callback`] recognises a body by its fields and returns a
//! [`Callback`]: recorded files ([`Callback::Segments`]), a stream going
//! up or down, or a well-formed callback that says nothing about
//! recordings or streams ([`Callback::Ignored`], to acknowledge and drop).
//!
//! | provider | recognised by | segments | up / down |
//! | --- | --- | --- | --- |
//! | Roomkit | `file_name` | the callback (times in ms) | - |
//! | Tencent Cloud CSS | `event_type` | 100 (seconds plus `start_time_usec`/`end_time_usec`) | 1 / 0 |
//! | Tencent TRTC | `EventGroupId`, `EventType`, `EventInfo` | 310 (`FileMessage`), 311 (`TencentVod`) | 201, 203, 205 / 202, 204, 206 |
//! | Agora Cloud Recording | `noticeId`, `productId`, `payload` | 31 uploaded, 32 backuped (`fileList`) | 43, 44 (`state` 0 / 1) |
//! | LiveKit | `event` with `egressInfo`, `room`, `participant` or `track` | `egress_ended` (`fileResults`, `segmentResults`) | `track_published` / `track_unpublished`, `participant_left` |
//! | SRS | `action` | `on_dvr`, `on_hls` | `on_publish` / `on_unpublish` |
//! | nginx-rtmp | form body with `call` | `record_done` | `publish` / `publish_done` |
//!
//! Each provider's module cites the document its fields follow.
//!
//! # Stream ids
//!
//! Tencent CSS: `stream_id`. SRS and nginx-rtmp: `app/stream`. TRTC:
//! `RoomId/UserId`, with `/aux` for the auxiliary (screen-sharing) stream
//! and `RoomId/mix` for a mixed recording. Agora: `cname/uid`, or
//! `cname/mix` for a composite recording. LiveKit: `room/identity`, with
//! `/screen` for screen sharing, `room/track id` for track egress and
//! `room/mix` for room composites. A recording of sound alone goes to the
//! stream id with `/audio` appended: its timeline is not the picture's.
//!
//! # Times
//!
//! Every time is checked: within `0..=`[`MAX_TIME_MS`], a segment no
//! longer than [`MAX_SEGMENT_MS`], no arithmetic that can wrap. When the
//! provider reports no time, the callback's arrival stands in and the
//! segment's [`Timing`] says so.

mod agora;
mod livekit;
mod nginx;
mod roomkit;
mod srs;
mod tencent;
mod trtc;
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::input::{self, InputError, Purpose};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The longest segment accepted (a day).
pub const MAX_SEGMENT_MS: Millis = 24 * 3600 * 1000;

/// The latest instant accepted: 9999-12-31T23:59:59.999Z. Times run from
/// 0 (1970) to this; anything else is an [`IngestError::TimeOutOfRange`].
pub const MAX_TIME_MS: Millis = 253_402_300_799_999;

/// The largest callback body parsed (1 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The most files one callback may list (TRTC, Agora and LiveKit list
/// several).
pub const MAX_FILES_PER_CALLBACK: usize = 1_000;

/// A recording file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FileFormat {
    /// FLV.
    Flv,
    /// MP4.
    Mp4,
    /// An HLS segment or playlist.
    Hls,
    /// Anything else the provider named.
    Other,
}

impl FileFormat {
    fn parse(s: &str) -> FileFormat {
        match s.to_ascii_lowercase().as_str() {
            "flv" => FileFormat::Flv,
            "mp4" => FileFormat::Mp4,
            "hls" | "m3u8" | "ts" => FileFormat::Hls,
            _ => FileFormat::Other,
        }
    }

    /// The format a file name's extension says.
    fn of_name(name: &str) -> FileFormat {
        let base = name.rsplit('/').next().unwrap_or(name);
        match base.rsplit_once('.') {
            Some((_, ext)) => FileFormat::parse(ext),
            None => FileFormat::Other,
        }
    }
}

/// Where a segment's times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Timing {
    /// Both are the provider's: callback fields, or a file name's time
    /// plus a reported duration.
    Reported,
    /// The start is the provider's (a field, or the time in the file
    /// name); the end is not reported: it is the callback's own time or
    /// its arrival (an upper bound), or the next file's start. A retry
    /// with another end is still the same segment.
    StartOnly,
    /// Neither is reported: the segment ends at the callback's arrival and
    /// starts a reported duration before (SRS on_hls), or at the arrival
    /// too. A retry with other times is still the same segment.
    OnArrival,
}

/// One recorded file of one stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// The stream (or terminal) it records.
    pub stream: String,
    /// The provider's id of the file (the file name when there is no id).
    pub file_id: String,
    /// The user whose stream it is, when the provider says.
    pub user: Option<String>,
    /// First instant recorded.
    pub start: Millis,
    /// Last instant recorded.
    pub end: Millis,
    /// Where to download it (a URL, or a path or object name the host
    /// resolves; see [`crate::input`]).
    pub url: String,
    /// Its format.
    pub format: FileFormat,
    /// Where its times come from.
    pub timing: Timing,
}

impl Segment {
    /// Its length (saturating: a hand-built segment cannot make it wrap).
    pub fn duration(&self) -> Millis {
        self.end.saturating_sub(self.start)
    }

    /// Whether the times came, in part or wholly, from the callback's
    /// arrival rather than the provider.
    pub fn timed_on_arrival(&self) -> bool {
        self.timing != Timing::Reported
    }

    /// Whether `other` (same stream and file id) is a delivery of the
    /// same recording: equal, or equal in what the provider reported.
    fn same_recording(&self, other: &Segment) -> bool {
        let common =
            (&self.url, self.format, &self.user, self.timing) == (&other.url, other.format, &other.user, other.timing);
        match self.timing {
            Timing::Reported => self == other,
            Timing::StartOnly => common && self.start == other.start,
            Timing::OnArrival => common,
        }
    }
}

/// Who sent a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// Roomkit's own fields.
    Roomkit,
    /// Tencent Cloud Streaming Services (live recording and push events).
    TencentCss,
    /// Tencent Real-Time Communication (room, media and cloud recording).
    Trtc,
    /// Agora Cloud Recording, through Agora's notification service.
    Agora,
    /// LiveKit webhooks (rooms, participants, tracks, egress).
    LiveKit,
    /// SRS HTTP callbacks.
    Srs,
    /// nginx-rtmp-module notifications.
    NginxRtmp,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Roomkit => "Roomkit",
            Provider::TencentCss => "Tencent CSS",
            Provider::Trtc => "TRTC",
            Provider::Agora => "Agora",
            Provider::LiveKit => "LiveKit",
            Provider::Srs => "SRS",
            Provider::NginxRtmp => "nginx-rtmp",
        })
    }
}

/// Which part of a stream an up/down event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Track {
    /// The whole stream (a publish, an unpublish, a participant leaving).
    All,
    /// Its sound.
    Audio,
    /// Its picture.
    Video,
}

/// A stream that came up or went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// Who said so.
    pub provider: Provider,
    /// The stream (see the module's stream ids).
    pub stream: String,
    /// The user, when the provider says.
    pub user: Option<String>,
    /// Which part of it.
    pub track: Track,
    /// When (the provider's time, or the arrival: see `timed_on_arrival`).
    pub at: Millis,
    /// Whether `at` is the callback's arrival (the provider gave no time).
    pub timed_on_arrival: bool,
    /// Why it went down or what else the provider said (an error message,
    /// a sequence number), cleaned of control characters, at most 256 bytes.
    pub detail: Option<String>,
}

/// What a callback says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Callback {
    /// Recorded files (one or more: TRTC, Agora and LiveKit list several).
    Segments(Vec<Segment>),
    /// A stream (or one of its tracks) is up.
    StreamUp(StreamEvent),
    /// A stream (or one of its tracks) is down.
    StreamDown(StreamEvent),
    /// A well-formed callback of a known provider that says nothing about
    /// recordings or streams (a room opening, an upload progress, a failed
    /// egress): acknowledge it, and nothing changes.
    Ignored {
        /// Who sent it.
        provider: Provider,
        /// What it was, and why nothing is done with it.
        why: String,
    },
}

impl Callback {
    /// The segments it carries (none for the other kinds).
    pub fn into_segments(self) -> Vec<Segment> {
        match self {
            Callback::Segments(s) => s,
            _ => Vec::new(),
        }
    }
}

/// Why a callback is refused. Nothing is ingested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Not JSON (and not a form body).
    #[error("callback is not JSON: {0}")]
    Json(String),
    /// A form body (nginx-rtmp) that does not decode.
    #[error("callback is not a valid form body: {0}")]
    Form(String),
    /// A body over [`MAX_BODY_BYTES`].
    #[error("callback body of {len} bytes is over {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Of no shape this parser knows.
    #[error(
        "callback has an unknown shape ({seen}); recognised: Roomkit (file_name), Tencent CSS (event_type), \
         TRTC (EventGroupId/EventType/EventInfo), Agora (noticeId/productId/payload), LiveKit (event with \
         room/participant/track/egressInfo), SRS (action), nginx-rtmp (form body with call)"
    )]
    UnknownShape {
        /// What the body looked like (its top-level fields, or its type).
        seen: String,
    },
    /// A required field is absent or of the wrong type.
    #[error("{provider} callback field {field:?} is missing or has the wrong type")]
    Field {
        /// Whose shape it is.
        provider: Provider,
        /// Which field.
        field: &'static str,
    },
    /// A time outside `0..=`[`MAX_TIME_MS`], or one whose conversion to
    /// milliseconds would overflow.
    #[error("time {field} = {value} is outside 1970..=9999 (0..={MAX_TIME_MS} ms)")]
    TimeOutOfRange {
        /// Which time.
        field: &'static str,
        /// Its value, in the unit the provider used.
        value: i64,
    },
    /// An end before the start.
    #[error("segment ends ({end}) before it starts ({start})")]
    EndBeforeStart {
        /// Start.
        start: Millis,
        /// End.
        end: Millis,
    },
    /// Longer than [`MAX_SEGMENT_MS`].
    #[error("segment of {duration_ms} ms is not plausible")]
    AbsurdDuration {
        /// The duration.
        duration_ms: Millis,
    },
    /// An id or a URL that breaks a rule of [`crate::input`].
    #[error("{field}: {error}")]
    Input {
        /// Which value.
        field: &'static str,
        /// The rule it breaks.
        error: InputError,
    },
    /// More files in one callback than [`MAX_FILES_PER_CALLBACK`].
    #[error("callback lists {count} files, more than {max}")]
    TooManyFiles {
        /// How many.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A new stream beyond [`IngestLimits::max_streams`].
    #[error("at most {max} streams")]
    TooManyStreams {
        /// The bound.
        max: usize,
    },
    /// A segment beyond [`IngestLimits::max_segments_per_stream`].
    #[error("stream {stream:?} already holds {max} segments")]
    TooManySegments {
        /// The stream.
        stream: String,
        /// The bound.
        max: usize,
    },
    /// The same file id again with different contents (the first is kept).
    #[error("file {file_id:?} of stream {stream:?} arrived again with different contents")]
    Conflict {
        /// Stream.
        stream: String,
        /// File.
        file_id: String,
    },
}

/// Checks a time in milliseconds.
pub(crate) fn check_time(field: &'static str, ms: Millis) -> Result<Millis, IngestError> {
    if (0..=MAX_TIME_MS).contains(&ms) { Ok(ms) } else { Err(IngestError::TimeOutOfRange { field, value: ms }) }
}

/// Checks a segment: times in range and in order, a plausible length,
/// valid ids and a URL the download allow-list admits.
pub(crate) fn checked(seg: Segment) -> Result<Segment, IngestError> {
    check_time("start", seg.start)?;
    check_time("end", seg.end)?;
    if seg.end < seg.start {
        return Err(IngestError::EndBeforeStart { start: seg.start, end: seg.end });
    }
    // Both in 0..=MAX_TIME_MS: the difference cannot wrap.
    let duration_ms = seg.end - seg.start;
    if duration_ms > MAX_SEGMENT_MS {
        return Err(IngestError::AbsurdDuration { duration_ms });
    }
    let field = |field: &'static str| move |error| IngestError::Input { field, error };
    input::check_id("stream id", &seg.stream).map_err(field("stream id"))?;
    input::check_file_id("file id", &seg.file_id).map_err(field("file id"))?;
    if let Some(user) = &seg.user {
        input::check_id("user id", user).map_err(field("user id"))?;
    }
    input::check_url(&seg.url, Purpose::Download).map_err(field("url"))?;
    Ok(seg)
}

/// Parses one callback body. `received_at` (ms) dates what the provider
/// does not: SRS and nginx-rtmp files end when their callback is sent,
/// and events without a time happen when they arrive.
///
/// A body that starts with `{` or `[` is JSON; one with `=` is a form
/// (nginx-rtmp). What the shape is, and what each provider's fields mean,
/// is in the module documentation.
pub fn parse_callback(body: &[u8], received_at: Millis) -> Result<Callback, IngestError> {
    check_time("received_at", received_at)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(IngestError::TooLarge { len: body.len(), max: MAX_BODY_BYTES });
    }
    let trimmed = body.trim_ascii_start();
    let looks_json = matches!(trimmed.first(), Some(b'{' | b'['));
    if !looks_json && body.contains(&b'=') {
        return nginx::parse(body, received_at);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    let Value::Object(map) = &v else {
        let kind = match v {
            Value::Array(_) => "a JSON array",
            Value::String(_) => "a JSON string",
            Value::Number(_) => "a JSON number",
            Value::Bool(_) => "a JSON boolean",
            _ => "JSON null",
        };
        return Err(IngestError::UnknownShape { seen: kind.to_owned() });
    };
    let has = |k: &str| map.contains_key(k);
    if has("event_type") {
        return tencent::parse(map, received_at);
    }
    if trtc::recognise(map).is_some() {
        return trtc::parse(map, received_at);
    }
    if has("noticeId") || (has("productId") && has("payload")) {
        return agora::parse(map, received_at);
    }
    if has("action") {
        return srs::parse(map, received_at);
    }
    if livekit::recognise(map) {
        return livekit::parse(map, received_at);
    }
    if has("file_name") {
        return roomkit::parse(map);
    }
    Err(IngestError::UnknownShape { seen: util::seen_keys(map.keys().map(String::as_str)) })
}

/// A stretch of a stream's time with no recording, or recorded twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// From.
    pub from: Millis,
    /// To (exclusive).
    pub to: Millis,
}

/// One stream's segments, ordered by start time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    segments: BTreeSet<(Millis, String)>,
    by_file: BTreeMap<String, Segment>,
}

impl Timeline {
    /// The segments, earliest first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter_map(|(_, f)| self.by_file.get(f))
    }

    /// How many segments it holds.
    pub fn len(&self) -> usize {
        self.by_file.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }

    /// The first recorded instant and the last.
    pub fn span(&self) -> Option<Span> {
        let first = self.segments().next()?.start;
        let last = self.segments().map(|s| s.end).max()?;
        Some(Span { from: first, to: last })
    }

    /// Stretches with no recording between the first and the last segment.
    pub fn gaps(&self) -> Vec<Span> {
        let mut out = Vec::new();
        let mut covered: Option<Millis> = None;
        for s in self.segments() {
            if let Some(c) = covered
                && s.start > c
            {
                out.push(Span { from: c, to: s.start });
            }
            covered = Some(covered.map_or(s.end, |c| c.max(s.end)));
        }
        out
    }

    /// Stretches recorded by more than one segment.
    pub fn overlaps(&self) -> Vec<Span> {
        let mut out = Vec::new();
        let mut covered: Option<Millis> = None;
        for s in self.segments() {
            if let Some(c) = covered
                && s.start < c
            {
                out.push(Span { from: s.start, to: c.min(s.end) });
            }
            covered = Some(covered.map_or(s.end, |c| c.max(s.end)));
        }
        out
    }
}

/// Outcome of ingesting one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ingested {
    /// Every segment it carried is new.
    New,
    /// Every segment it carried was already held: nothing changed.
    Duplicate,
    /// Some segments were new, the others already held.
    Partly {
        /// Segments added.
        new: usize,
        /// Segments already held.
        duplicate: usize,
    },
    /// Not a recording: a stream came up (for the host to act on).
    StreamUp(StreamEvent),
    /// Not a recording: a stream went down (for the host to act on).
    StreamDown(StreamEvent),
    /// A callback that says nothing about recordings or streams.
    Ignored {
        /// Who sent it.
        provider: Provider,
        /// What it was.
        why: String,
    },
}

/// How much an [`Ingestor`] holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Streams (timelines) per ingestor, that is per class session.
    pub max_streams: usize,
    /// Segments per stream.
    pub max_segments_per_stream: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits { max_streams: 64, max_segments_per_stream: 10_000 }
    }
}

/// Timelines of every stream, fed by callbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingestor {
    streams: BTreeMap<String, Timeline>,
    limits: IngestLimits,
}

impl Ingestor {
    /// Nothing ingested yet; the default [`IngestLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing ingested yet; these limits.
    pub fn with_limits(limits: IngestLimits) -> Self {
        Ingestor { streams: BTreeMap::new(), limits }
    }

    /// Parses and ingests one callback body (see [`parse_callback`]).
    pub fn ingest(&mut self, body: &[u8], received_at: Millis) -> Result<Ingested, IngestError> {
        match parse_callback(body, received_at)? {
            Callback::Segments(segments) => self.add_all(segments),
            Callback::StreamUp(e) => Ok(Ingested::StreamUp(e)),
            Callback::StreamDown(e) => Ok(Ingested::StreamDown(e)),
            Callback::Ignored { provider, why } => Ok(Ingested::Ignored { provider, why }),
        }
    }

    /// Ingests a segment, checked as a parsed one is.
    pub fn add(&mut self, seg: Segment) -> Result<Ingested, IngestError> {
        self.add_all(vec![seg])
    }

    /// Ingests segments all or none: if any is refused (invalid, a
    /// conflict, over a limit), nothing changes.
    pub fn add_all(&mut self, segments: Vec<Segment>) -> Result<Ingested, IngestError> {
        if segments.len() > MAX_FILES_PER_CALLBACK {
            return Err(IngestError::TooManyFiles { count: segments.len(), max: MAX_FILES_PER_CALLBACK });
        }
        // Check everything first, then change.
        let mut fresh: BTreeMap<(String, String), Segment> = BTreeMap::new();
        let mut duplicate = 0usize;
        for seg in segments {
            let seg = checked(seg)?;
            let held = self.streams.get(&seg.stream).and_then(|t| t.by_file.get(&seg.file_id));
            let earlier = fresh.get(&(seg.stream.clone(), seg.file_id.clone()));
            match held.or(earlier) {
                Some(prev) if prev.same_recording(&seg) => duplicate += 1,
                Some(_) => return Err(IngestError::Conflict { stream: seg.stream, file_id: seg.file_id }),
                None => {
                    fresh.insert((seg.stream.clone(), seg.file_id.clone()), seg);
                }
            }
        }
        let mut new_streams = BTreeSet::new();
        let mut per_stream: BTreeMap<&str, usize> = BTreeMap::new();
        for (stream, _) in fresh.keys() {
            if !self.streams.contains_key(stream) {
                new_streams.insert(stream.as_str());
            }
            *per_stream.entry(stream.as_str()).or_default() += 1;
        }
        if self.streams.len().saturating_add(new_streams.len()) > self.limits.max_streams {
            return Err(IngestError::TooManyStreams { max: self.limits.max_streams });
        }
        for (stream, n) in &per_stream {
            let held = self.streams.get(*stream).map_or(0, Timeline::len);
            if held.saturating_add(*n) > self.limits.max_segments_per_stream {
                return Err(IngestError::TooManySegments {
                    stream: (*stream).to_owned(),
                    max: self.limits.max_segments_per_stream,
                });
            }
        }
        let new = fresh.len();
        for ((stream, file_id), seg) in fresh {
            let t = self.streams.entry(stream).or_default();
            t.segments.insert((seg.start, file_id.clone()));
            t.by_file.insert(file_id, seg);
        }
        Ok(match (new, duplicate) {
            (0, _) => Ingested::Duplicate,
            (_, 0) => Ingested::New,
            (new, duplicate) => Ingested::Partly { new, duplicate },
        })
    }

    /// A stream's timeline.
    pub fn timeline(&self, stream: &str) -> Option<&Timeline> {
        self.streams.get(stream)
    }

    /// Every stream's timeline, by stream id.
    pub fn timelines(&self) -> &BTreeMap<String, Timeline> {
        &self.streams
    }

    /// The limits in force.
    pub fn limits(&self) -> IngestLimits {
        self.limits
    }
}
