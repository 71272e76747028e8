//! SRS HTTP callbacks, following SRS's "HTTP Callback" document (the
//! `http_hooks` section of its configuration) and its "DVR" document for
//! file names. The body is JSON with `action`, `client_id`, `ip`,
//! `vhost`, `app`, `stream`, `param`, and per action `cwd`, `file`,
//! `url`, `duration`, `seq_no`.
//!
//! * `on_dvr`, a recorded file: SRS sends no times, but its file names
//!   usually carry one: `[timestamp]` in `dvr_path` (and SRS 1's default,
//!   `[stream].[timestamp].flv`) is the file's creation time in Unix
//!   milliseconds, 13 digits. With it, the segment starts there and ends
//!   at the callback's arrival (sent when the file is closed):
//!   [`Timing::StartOnly`]. Without it (or with only the `[2006][01]...`
//!   calendar variables, whose time zone is the server's), both are the
//!   arrival: [`Timing::OnArrival`].
//! * `on_hls`, a segment with its `duration` (seconds): when its name
//!   carries a `[timestamp]`, it runs from there for the duration
//!   ([`Timing::Reported`]); otherwise it ends at the arrival.
//! * `on_publish` / `on_unpublish`: the stream is up / down.
//! * Other actions (`on_connect`, `on_close`, `on_play`, `on_stop`,
//!   `on_hls_notify`) are [`Callback::Ignored`].

use serde_json::{Map, Value};

use super::util::{Obj, basename, last_digit_run, stream_event};
use super::{Callback, FileFormat, IngestError, MAX_SEGMENT_MS, Millis, Provider, Segment, Timing, Track, checked};

/// The `[timestamp]` (13 digits of Unix milliseconds) in a DVR or HLS
/// file name, after the stream's name.
pub(super) fn name_time(file: &str, stream: &str) -> Option<Millis> {
    let base = basename(file);
    let rest = base.strip_prefix(stream).unwrap_or(base);
    last_digit_run(rest, 13..=13)
}

/// `duration` in seconds, as milliseconds within a segment's bounds.
fn duration_ms(map: &Map<String, Value>) -> Result<Option<Millis>, IngestError> {
    match map.get("duration") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let d = v.as_f64().filter(|d| d.is_finite() && *d >= 0.0);
            let d = d.ok_or(IngestError::Field { provider: Provider::Srs, field: "duration" })?;
            let ms = (d * 1000.0).round();
            if ms > MAX_SEGMENT_MS as f64 {
                // `as` saturates: an absurd float reports as i64::MAX.
                return Err(IngestError::AbsurdDuration { duration_ms: ms as i64 });
            }
            Ok(Some(ms as Millis))
        }
    }
}

pub(super) fn parse(map: &Map<String, Value>, received_at: Millis) -> Result<Callback, IngestError> {
    let o = Obj::new(map, Provider::Srs);
    let action = o.str("action")?;
    let ignored = |why: String| Ok(Callback::Ignored { provider: Provider::Srs, why });
    if !matches!(action, "on_dvr" | "on_hls" | "on_publish" | "on_unpublish") {
        return ignored(format!("{} carries no recorded file or stream change", super::util::clean(action, 64)));
    }
    let app = o.opt_str("app")?.unwrap_or("");
    let name = o.nonempty("stream")?;
    let stream = if app.is_empty() { name.to_owned() } else { format!("{app}/{name}") };
    if matches!(action, "on_publish" | "on_unpublish") {
        let e = stream_event(Provider::Srs, stream, None, Track::All, None, received_at, None)?;
        return Ok(if action == "on_publish" { Callback::StreamUp(e) } else { Callback::StreamDown(e) });
    }
    let file = o.nonempty("file")?;
    let hls = action == "on_hls";
    let duration = duration_ms(map)?;
    if hls && duration.is_none() {
        return Err(o.field("duration"));
    }
    let overflow = |value| IngestError::TimeOutOfRange { field: "duration", value };
    let (start, end, timing) = match (name_time(file, name), duration) {
        (Some(t), Some(d)) => (t, t.checked_add(d).ok_or_else(|| overflow(d))?, Timing::Reported),
        (Some(t), None) => (t, received_at, Timing::StartOnly),
        (None, d) => {
            let d = d.unwrap_or(0);
            (received_at.checked_sub(d).ok_or_else(|| overflow(d))?, received_at, Timing::OnArrival)
        }
    };
    let seg = Segment {
        stream,
        url: o.opt_str("url")?.filter(|u| !u.is_empty()).unwrap_or(file).to_owned(),
        file_id: file.to_owned(),
        user: None,
        start,
        end,
        format: if hls { FileFormat::Hls } else { FileFormat::of_name(file) },
        timing,
    };
    Ok(Callback::Segments(vec![checked(seg)?]))
}
