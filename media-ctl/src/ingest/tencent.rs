//! Tencent Cloud Streaming Services (CSS) callbacks, following Tencent
//! Cloud's CSS documents "Recording Event Notification" (`event_type`
//! 100) and the push/interruption event notification (`event_type` 1 and
//! 0), both under CSS's "How to Receive Event Notification".
//!
//! * 100, a recorded file: `stream_id`, `file_id` (or `record_file_id`),
//!   `file_format`, `video_url`, and `start_time`/`end_time` in Unix
//!   seconds with their microsecond parts in `start_time_usec` and
//!   `end_time_usec` (kept to the millisecond).
//! * 1, a push started, and 0, a push interrupted: `stream_id`,
//!   `event_time` (Unix seconds), `sequence` (one per push), and for 0
//!   `errcode`/`errmsg`.
//! * Any other `event_type` (screenshots, moderation, recording status,
//!   push errors) is [`Callback::Ignored`].

use serde_json::{Map, Value};

use super::util::{Obj, clean, secs_ms, stream_event};
use super::{Callback, FileFormat, IngestError, Millis, Provider, Segment, Timing, Track, checked};

/// Seconds plus a microsecond part (0..1,000,000), in milliseconds.
fn time(o: &Obj<'_>, secs: &'static str, usec: &'static str) -> Result<Millis, IngestError> {
    let s = o.int(secs)?;
    let us = match o.opt_int(usec)? {
        None => 0,
        Some(us) if (0..1_000_000).contains(&us) => us,
        Some(_) => return Err(o.field(usec)),
    };
    secs_ms(secs, s, us / 1000)
}

pub(super) fn parse(map: &Map<String, Value>, received_at: Millis) -> Result<Callback, IngestError> {
    let o = Obj::new(map, Provider::TencentCss);
    let event = o.int("event_type")?;
    match event {
        100 => {
            let seg = Segment {
                stream: o.str("stream_id")?.to_owned(),
                file_id: o.str_any(&["file_id", "record_file_id"])?.to_owned(),
                user: o.opt_str("user_id")?.map(str::to_owned),
                start: time(&o, "start_time", "start_time_usec")?,
                end: time(&o, "end_time", "end_time_usec")?,
                url: o.str("video_url")?.to_owned(),
                format: FileFormat::parse(o.opt_str("file_format")?.unwrap_or("flv")),
                timing: Timing::Reported,
            };
            Ok(Callback::Segments(vec![checked(seg)?]))
        }
        0 | 1 => {
            let stream = o.str("stream_id")?.to_owned();
            let at = o.opt_int("event_time")?.map(|t| secs_ms("event_time", t, 0)).transpose()?;
            let detail = if event == 0 {
                let code = o.opt_text("errcode")?;
                let msg = o.opt_str("errmsg")?;
                match (code, msg) {
                    (None, None) => None,
                    (c, m) => Some(clean(&format!("errcode {}: {}", c.unwrap_or_default(), m.unwrap_or("")), 256)),
                }
            } else {
                o.opt_text("sequence")?.map(|s| clean(&format!("sequence {s}"), 256))
            };
            let e = stream_event(Provider::TencentCss, stream, None, Track::All, at, received_at, detail)?;
            Ok(if event == 1 { Callback::StreamUp(e) } else { Callback::StreamDown(e) })
        }
        other => Ok(Callback::Ignored {
            provider: Provider::TencentCss,
            why: format!("event_type {other} is neither a recording (100) nor a push (1) or interruption (0)"),
        }),
    }
}
