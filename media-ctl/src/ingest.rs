//! Recording-callback ingestion: parse the callbacks of three providers,
//! drop their retries, and keep an ordered timeline per stream with its
//! gaps and overlaps.
//!
//! Providers retry a callback until it is acknowledged (Tencent Cloud up to
//! 12 times), and deliver them in any order. A segment is identified by its
//! stream and file id; the same segment again is a duplicate and changes
//! nothing, so any order and any number of deliveries give the same
//! timelines.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The longest segment accepted (a day).
pub const MAX_SEGMENT_MS: Millis = 24 * 3600 * 1000;

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
    /// Where to download it.
    pub url: String,
    /// Its format.
    pub format: FileFormat,
    /// Whether the times came from the callback's arrival (SRS sends none):
    /// a retry of such a segment arrives with other times and is still the
    /// same segment.
    pub timed_on_arrival: bool,
}

impl Segment {
    /// Its length.
    pub fn duration(&self) -> Millis {
        self.end - self.start
    }
}

/// Why a callback is not a segment. Nothing is ingested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Not JSON.
    #[error("callback is not JSON: {0}")]
    Json(String),
    /// Not an object, or of no shape this parser knows.
    #[error("callback has an unknown shape (expected Roomkit, Tencent event_type 100, or SRS on_dvr/on_hls)")]
    UnknownShape,
    /// A Tencent callback of another event type (not a recording).
    #[error("Tencent event_type {0} is not a recording callback")]
    NotRecording(i64),
    /// A required field is absent or of the wrong type.
    #[error("callback field {0:?} is missing or has the wrong type")]
    Field(&'static str),
    /// An end before the start.
    #[error("segment ends ({end}) before it starts ({start})")]
    EndBeforeStart {
        /// Start.
        start: Millis,
        /// End.
        end: Millis,
    },
    /// Longer than [`MAX_SEGMENT_MS`], or with a negative time.
    #[error("segment of {duration_ms} ms is not plausible")]
    AbsurdDuration {
        /// The duration.
        duration_ms: Millis,
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

fn str_field<'a>(v: &'a Value, names: &[&'static str]) -> Result<&'a str, IngestError> {
    names.iter().find_map(|n| v.get(*n).and_then(Value::as_str)).ok_or(IngestError::Field(names[0]))
}

fn int_field(v: &Value, name: &'static str) -> Result<i64, IngestError> {
    match v.get(name) {
        Some(Value::Number(n)) => n.as_i64().ok_or(IngestError::Field(name)),
        Some(Value::String(s)) => s.parse().map_err(|_| IngestError::Field(name)),
        _ => Err(IngestError::Field(name)),
    }
}

fn checked(seg: Segment) -> Result<Segment, IngestError> {
    if seg.end < seg.start {
        return Err(IngestError::EndBeforeStart { start: seg.start, end: seg.end });
    }
    if seg.start < 0 || seg.duration() > MAX_SEGMENT_MS {
        return Err(IngestError::AbsurdDuration { duration_ms: seg.duration() });
    }
    if seg.stream.is_empty() || seg.stream.len() > 256 {
        return Err(IngestError::Field("stream_id"));
    }
    if seg.file_id.is_empty() || seg.file_id.len() > 512 {
        return Err(IngestError::Field("file_id"));
    }
    Ok(seg)
}

/// Parses one callback body. `received_at` dates SRS callbacks, which carry
/// no times of their own (their segment ends when the callback is sent).
pub fn parse_callback(body: &[u8], received_at: Millis) -> Result<Segment, IngestError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    if !v.is_object() {
        return Err(IngestError::UnknownShape);
    }
    if v.get("event_type").is_some() {
        // Tencent Cloud live recording: times in Unix seconds.
        let event = int_field(&v, "event_type")?;
        if event != 100 {
            return Err(IngestError::NotRecording(event));
        }
        let start = int_field(&v, "start_time")?.saturating_mul(1000);
        let end = int_field(&v, "end_time")?.saturating_mul(1000);
        let file_id = str_field(&v, &["file_id", "record_file_id"])?.to_owned();
        return checked(Segment {
            stream: str_field(&v, &["stream_id"])?.to_owned(),
            file_id,
            user: v.get("user_id").and_then(Value::as_str).map(str::to_owned),
            start,
            end,
            url: str_field(&v, &["video_url"])?.to_owned(),
            format: FileFormat::parse(v.get("file_format").and_then(Value::as_str).unwrap_or("flv")),
            timed_on_arrival: false,
        });
    }
    if let Some(action) = v.get("action").and_then(Value::as_str) {
        // SRS: on_dvr (a whole file) or on_hls (one segment with its duration).
        let format = match action {
            "on_dvr" => FileFormat::parse(str_field(&v, &["file"])?.rsplit('.').next().unwrap_or("")),
            "on_hls" => FileFormat::Hls,
            _ => return Err(IngestError::UnknownShape),
        };
        let file = str_field(&v, &["file"])?.to_owned();
        let duration_ms = match v.get("duration").and_then(Value::as_f64) {
            Some(d) if d.is_finite() && d >= 0.0 => (d * 1000.0).round() as i64,
            Some(_) => return Err(IngestError::Field("duration")),
            None if action == "on_hls" => return Err(IngestError::Field("duration")),
            None => 0,
        };
        let app = v.get("app").and_then(Value::as_str).unwrap_or("");
        let stream = str_field(&v, &["stream"])?;
        return checked(Segment {
            stream: if app.is_empty() { stream.to_owned() } else { format!("{app}/{stream}") },
            url: v.get("url").and_then(Value::as_str).unwrap_or(&file).to_owned(),
            file_id: file,
            user: None,
            start: received_at - duration_ms,
            end: received_at,
            format,
            timed_on_arrival: true,
        });
    }
    // Roomkit's own fields: times in milliseconds.
    let file_name = str_field(&v, &["file_name"])?.to_owned();
    checked(Segment {
        stream: str_field(&v, &["stream_id", "terminal_id"])?.to_owned(),
        format: FileFormat::parse(file_name.rsplit('.').next().unwrap_or("")),
        file_id: file_name,
        user: v.get("user_id").and_then(Value::as_str).map(str::to_owned),
        start: int_field(&v, "start")?,
        end: int_field(&v, "end")?,
        url: str_field(&v, &["download_url"])?.to_owned(),
        timed_on_arrival: false,
    })
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
        self.segments.iter().map(|(_, f)| &self.by_file[f])
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ingested {
    /// A new segment.
    New,
    /// A retry of a segment already held: nothing changed.
    Duplicate,
}

/// Timelines of every stream, fed by callbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingestor {
    streams: BTreeMap<String, Timeline>,
}

impl Ingestor {
    /// Nothing ingested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and ingests one callback body.
    pub fn ingest(&mut self, body: &[u8], received_at: Millis) -> Result<Ingested, IngestError> {
        let seg = parse_callback(body, received_at)?;
        self.add(seg)
    }

    /// Ingests a parsed segment.
    pub fn add(&mut self, seg: Segment) -> Result<Ingested, IngestError> {
        let t = self.streams.entry(seg.stream.clone()).or_default();
        if let Some(held) = t.by_file.get(&seg.file_id) {
            let same = if held.timed_on_arrival && seg.timed_on_arrival {
                (&held.url, held.format, &held.user) == (&seg.url, seg.format, &seg.user)
            } else {
                *held == seg
            };
            return if same {
                Ok(Ingested::Duplicate)
            } else {
                Err(IngestError::Conflict { stream: seg.stream, file_id: seg.file_id })
            };
        }
        t.segments.insert((seg.start, seg.file_id.clone()));
        t.by_file.insert(seg.file_id.clone(), seg);
        Ok(Ingested::New)
    }

    /// A stream's timeline.
    pub fn timeline(&self, stream: &str) -> Option<&Timeline> {
        self.streams.get(stream)
    }

    /// Every stream's timeline, by stream id.
    pub fn timelines(&self) -> &BTreeMap<String, Timeline> {
        &self.streams
    }
}
