//! Playback composition: from the timelines of a class's streams, a render
//! plan on one time axis: where each recording sits, what fills its gaps,
//! which layout is in force when, the watermark, and the outputs.
//!
//! Every time computation is checked or saturating: timelines hold times
//! in `0..=`[`MAX_TIME_MS`](crate::ingest::MAX_TIME_MS), the axis is at
//! most [`MAX_AXIS_MS`] long, and a layout switch at any `i64` is clamped
//! onto the axis.

use std::collections::BTreeMap;

use crate::ingest::{Millis, Span, Timeline};
use crate::layout::{Canvas, Input, InputKind, Layout, LayoutError, Limits, Rgb, Template, Watermark, layout};

/// The longest axis a plan covers (a week).
pub const MAX_AXIS_MS: Millis = 7 * 24 * 3600 * 1000;

/// The most inputs a plan takes (streams per session).
pub const MAX_PLAN_INPUTS: usize = 64;

/// The most layout switches a plan takes.
pub const MAX_SWITCHES: usize = 10_000;

/// What fills a stream's gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GapFill {
    /// The last frame before the gap stays on screen (and the sound is silent).
    #[default]
    RepeatLastFrame,
    /// A plain slate of this colour (and silence).
    Slate(Rgb),
}

/// AES-128 for HLS output: the key, the IV, where players fetch the key,
/// and how often a new key starts (in segments; keys for later periods are
/// derived by the host and listed in `rotations`).
#[derive(Clone, PartialEq, Eq)]
pub struct HlsKey {
    /// The key.
    pub key: [u8; 16],
    /// The IV.
    pub iv: [u8; 16],
    /// The URI written into the playlist.
    pub uri: String,
}

impl std::fmt::Debug for HlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HlsKey").field("uri", &self.uri).finish_non_exhaustive()
    }
}

/// An output to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// An MP4 file.
    Mp4,
    /// An FLV file.
    Flv,
    /// HLS: segments of `segment_seconds`, optionally encrypted; with more
    /// than one key, the key changes every `rotate_every` segments.
    Hls {
        /// Segment length.
        segment_seconds: u32,
        /// Keys, in order of use (empty: not encrypted).
        keys: Vec<HlsKey>,
        /// Segments per key (ignored with fewer than two keys).
        rotate_every: u32,
    },
}

/// A layout from an instant on (absolute time).
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutSwitch {
    /// From when.
    pub at: Millis,
    /// Which.
    pub template: Template,
}

/// What to compose.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// The picture.
    pub canvas: Canvas,
    /// Frames per second (1 to 60).
    pub fps: u32,
    /// The streams, with what they carry and their picture size.
    pub inputs: Vec<Input>,
    /// Layouts over time; the first applies from the start whatever its time.
    pub switches: Vec<LayoutSwitch>,
    /// Gap filling.
    pub fill: GapFill,
    /// A watermark.
    pub watermark: Option<Watermark>,
    /// Outputs.
    pub outputs: Vec<Output>,
    /// Layout limits.
    pub limits: Limits,
}

/// One file's place on the axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Where to read it.
    pub url: String,
    /// Where on the axis it starts (ms from the axis start).
    pub at: Millis,
    /// Skip this much of the file first (an overlap with the previous file).
    pub skip: Millis,
    /// How much of it to use.
    pub duration: Millis,
}

/// One stream on the axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedInput {
    /// The stream.
    pub input: Input,
    /// Its files in order, without overlaps.
    pub pieces: Vec<Piece>,
    /// Gaps between its first and last piece (axis ms).
    pub gaps: Vec<Span>,
    /// When it first has a picture (axis ms): before that it is not shown.
    pub first: Millis,
    /// When its last piece ends (axis ms): after that it is not shown.
    pub last: Millis,
}

/// A layout in force over a span of the axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLayout {
    /// When (axis ms).
    pub span: Span,
    /// Which.
    pub layout: Layout,
}

/// A render plan: everything a backend needs, nothing it must decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderPlan {
    /// The axis start (absolute ms).
    pub start: Millis,
    /// Frames per second.
    pub fps: u32,
    /// Frames in the output: the axis length in whole frames.
    pub frames: u64,
    /// The streams.
    pub inputs: Vec<PlannedInput>,
    /// Layouts over the axis, back to back, covering it.
    pub layouts: Vec<PlannedLayout>,
    /// Gap filling.
    pub fill: GapFill,
    /// Outputs.
    pub outputs: Vec<Output>,
}

impl RenderPlan {
    /// The output's length in ms (whole frames); 0 without a frame rate,
    /// saturated for a hand-built plan too long to express.
    pub fn duration_ms(&self) -> Millis {
        let ms = self.frames.saturating_mul(1000).checked_div(u64::from(self.fps)).unwrap_or(0);
        Millis::try_from(ms).unwrap_or(Millis::MAX)
    }

    /// The frame shown at axis time `ms` (saturating).
    pub fn frame_at(&self, ms: Millis) -> u64 {
        (ms.max(0).unsigned_abs().saturating_mul(u64::from(self.fps))).div_ceil(1000)
    }
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// No stream has a recording.
    #[error("no stream has any recording")]
    NoRecordings,
    /// An input with no timeline.
    #[error("stream {0:?} has no recordings")]
    NoTimeline(String),
    /// Frames per second outside 1..=60.
    #[error("{0} frames per second is outside 1..=60")]
    BadFps(u32),
    /// No layout.
    #[error("at least one layout is needed")]
    NoLayout,
    /// An output that cannot be made.
    #[error("bad output: {0}")]
    BadOutput(&'static str),
    /// The recordings span more than [`MAX_AXIS_MS`].
    #[error("the recordings span {span_ms} ms, more than {max_ms}")]
    TooLong {
        /// From the first recording's start to the last one's end.
        span_ms: Millis,
        /// The bound.
        max_ms: Millis,
    },
    /// More inputs or layout switches than a plan takes.
    #[error("{count} {what}, more than {max}")]
    TooMany {
        /// What ("inputs", "layout switches").
        what: &'static str,
        /// How many.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A recording time outside the range timelines hold (a timeline
    /// edited by hand): no arithmetic is attempted on it.
    #[error("recording time {0} is out of range")]
    TimeOutOfRange(Millis),
    /// The recordings span less than one frame: nothing to render.
    #[error("the recordings span {span_ms} ms, less than one frame at {fps} fps")]
    TooShort {
        /// From the first recording's start to the last one's end.
        span_ms: Millis,
        /// The requested frame rate.
        fps: u32,
    },
    /// A layout that does not validate.
    #[error("layout switch {index}: {error}")]
    Layout {
        /// Which switch.
        index: usize,
        /// Why.
        error: LayoutError,
    },
}

/// Composes a plan from `timelines` (by stream id).
pub fn plan(req: &PlanRequest, timelines: &BTreeMap<String, Timeline>) -> Result<RenderPlan, PlanError> {
    if !(1..=60).contains(&req.fps) {
        return Err(PlanError::BadFps(req.fps));
    }
    if req.switches.is_empty() {
        return Err(PlanError::NoLayout);
    }
    if req.inputs.len() > MAX_PLAN_INPUTS {
        return Err(PlanError::TooMany { what: "inputs", count: req.inputs.len(), max: MAX_PLAN_INPUTS });
    }
    if req.switches.len() > MAX_SWITCHES {
        return Err(PlanError::TooMany { what: "layout switches", count: req.switches.len(), max: MAX_SWITCHES });
    }
    for o in &req.outputs {
        if let Output::Hls { segment_seconds, keys, rotate_every } = o
            && (*segment_seconds == 0 || (keys.len() > 1 && *rotate_every == 0))
        {
            return Err(PlanError::BadOutput("HLS needs a segment length, and rotation a period"));
        }
    }
    let mut spans = Vec::new();
    for input in &req.inputs {
        // A colour is drawn by the backend itself: it needs no recording.
        if matches!(input.kind, InputKind::Color(_)) {
            continue;
        }
        let t = timelines.get(&input.id).ok_or_else(|| PlanError::NoTimeline(input.id.clone()))?;
        spans.push(t.span().ok_or_else(|| PlanError::NoTimeline(input.id.clone()))?);
    }
    let start = spans.iter().map(|s| s.from).min().ok_or(PlanError::NoRecordings)?;
    let end = spans.iter().map(|s| s.to).max().ok_or(PlanError::NoRecordings)?;
    for t in [start, end] {
        if !(0..=crate::ingest::MAX_TIME_MS).contains(&t) {
            return Err(PlanError::TimeOutOfRange(t));
        }
    }
    // Both in 0..=MAX_TIME_MS: no wrap below, and the span is bounded.
    let span_ms = end - start;
    if span_ms > MAX_AXIS_MS {
        return Err(PlanError::TooLong { span_ms, max_ms: MAX_AXIS_MS });
    }
    let fps = u64::from(req.fps);
    let frames = span_ms.unsigned_abs() * fps / 1000;
    if frames == 0 {
        return Err(PlanError::TooShort { span_ms, fps: req.fps });
    }
    // At most MAX_AXIS_MS: fits.
    let axis_end = (frames * 1000 / fps) as Millis;
    // Axis time of an instant, clamped onto 0..=axis_end (saturating: a
    // switch may be any i64).
    let on_axis = |t: Millis| t.saturating_sub(start).clamp(0, axis_end);

    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        if matches!(input.kind, InputKind::Color(_)) {
            // Shown over the whole axis.
            inputs.push(PlannedInput {
                input: input.clone(),
                pieces: Vec::new(),
                gaps: Vec::new(),
                first: 0,
                last: axis_end,
            });
            continue;
        }
        let t = &timelines[&input.id];
        let mut pieces: Vec<Piece> = Vec::new();
        let mut covered: Option<Millis> = None;
        for seg in t.segments() {
            if !(0..=crate::ingest::MAX_TIME_MS).contains(&seg.start) || seg.end < seg.start {
                return Err(PlanError::TimeOutOfRange(seg.start));
            }
            // start <= seg.start <= seg.end <= end: both differences are
            // within 0..=span_ms.
            let (s, e) = (seg.start - start, (seg.end - start).min(axis_end));
            let from = covered.map_or(s, |c| c.max(s));
            if e <= from {
                continue; // wholly overlapped, or past the axis
            }
            pieces.push(Piece { url: seg.url.clone(), at: from, skip: from - s, duration: e - from });
            covered = Some(e);
        }
        let gaps = pieces
            .windows(2)
            .filter(|w| w[1].at > w[0].at + w[0].duration)
            .map(|w| Span { from: w[0].at + w[0].duration, to: w[1].at })
            .collect();
        let first = pieces.first().map_or(0, |p| p.at);
        let last = pieces.last().map_or(0, |p| p.at + p.duration);
        inputs.push(PlannedInput { input: input.clone(), pieces, gaps, first, last });
    }

    let mut layouts = Vec::with_capacity(req.switches.len());
    let mut switches: Vec<(usize, &LayoutSwitch)> = req.switches.iter().enumerate().collect();
    switches.sort_by_key(|(_, s)| s.at);
    for (k, (index, sw)) in switches.iter().enumerate() {
        let from = if k == 0 { 0 } else { on_axis(sw.at) };
        let to = switches.get(k + 1).map_or(axis_end, |(_, next)| on_axis(next.at));
        let resolved = layout(req.canvas, &sw.template, &req.inputs, req.watermark.as_ref(), req.limits)
            .map_err(|error| PlanError::Layout { index: *index, error })?;
        if to > from {
            layouts.push(PlannedLayout { span: Span { from, to }, layout: resolved });
        }
    }
    Ok(RenderPlan { start, fps: req.fps, frames, inputs, layouts, fill: req.fill, outputs: req.outputs.clone() })
}
