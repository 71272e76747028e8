//! Agora Cloud Recording callbacks through Agora's notification service
//! (NCS), following Agora's "Cloud Recording API callback service" (the
//! callback events) and "Notifications" (the envelope and the
//! signatures) documents. The envelope is `noticeId`, `productId` (3 for
//! cloud recording), `eventType`, `notifyMs` and `payload` (`cname`,
//! `uid`, `sid`, `sequence`, `sendts` in ms, `serviceType`, `details`).
//! The signatures (`Agora-Signature`, `Agora-Signature-V2`) are checked by
//! [`crate::auth::AgoraSign`].
//!
//! * 31 uploaded and 32 backuped: `details.fileList[]` with `fileName`,
//!   `trackType` (`audio`, `video`, `audio_and_video`), `uid`,
//!   `mixedAllUser`, `isPlayable` and `sliceStartTime` (ms). Agora reports
//!   no end: a file ends where the next file of its stream starts, and
//!   the last one at the event's `sendts` ([`Timing::StartOnly`]). When a
//!   stream has MP4 files, its M3U8 playlist (the same recording) is left
//!   out.
//! * 43 and 44, the audio and the video stream state changed:
//!   `details.streamUid`, `state` (0 receiving: up, 1 not: down) and
//!   `UtcMs`.
//! * Everything else (errors, warnings, recorder and uploader status, web
//!   page recording, other products) is [`Callback::Ignored`]; event 4
//!   names only a playlist, without times.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::util::{Obj, clean, stream_event};
use super::{Callback, FileFormat, IngestError, Millis, Provider, Segment, Timing, Track, check_time, checked};

fn stream_of(cname: &str, uid: Option<&str>, mixed: bool, audio_only: bool) -> String {
    let mut s = match uid {
        Some(u) if !mixed && u != "0" && !u.is_empty() => format!("{cname}/{u}"),
        _ => format!("{cname}/mix"),
    };
    if audio_only {
        s.push_str("/audio");
    }
    s
}

pub(super) fn parse(map: &Map<String, Value>, received_at: Millis) -> Result<Callback, IngestError> {
    let o = Obj::new(map, Provider::Agora);
    let ignored = |why: String| Ok(Callback::Ignored { provider: Provider::Agora, why });
    let product = o.int("productId")?;
    if product != 3 {
        return ignored(format!("productId {product} is not Cloud Recording (3)"));
    }
    let event = o.int("eventType")?;
    let payload = o.obj("payload")?;
    let cname = payload.id("cname")?;
    // When the event happened: `sendts`, else when it was sent.
    let sent = match (payload.opt_int("sendts")?, o.opt_int("notifyMs")?) {
        (Some(ms), _) => Some(check_time("sendts", ms)?),
        (None, Some(ms)) => Some(check_time("notifyMs", ms)?),
        (None, None) => None,
    };
    let details = payload.opt_obj("details")?;
    let msg_name = details.map(|d| d.opt_str("msgName")).transpose()?.flatten().unwrap_or("");
    match (event, details) {
        (31 | 32, Some(details)) => {
            let files = details.objects("fileList")?;
            if files.is_empty() {
                return ignored(format!("event {event} lists no files (web page recording)"));
            }
            let mut by_stream: BTreeMap<String, Vec<Segment>> = BTreeMap::new();
            for f in &files {
                let name = f.nonempty("fileName")?;
                let uid = f.opt_text("uid")?;
                let mixed = f.opt_bool("mixedAllUser")?.unwrap_or(false);
                let audio_only = f.opt_str("trackType")? == Some("audio");
                let stream = stream_of(&cname, uid.as_deref(), mixed, audio_only);
                let start = check_time("sliceStartTime", f.int("sliceStartTime")?)?;
                let user = uid.filter(|u| !mixed && u != "0");
                by_stream.entry(stream.clone()).or_default().push(Segment {
                    stream,
                    file_id: name.to_owned(),
                    user,
                    start,
                    end: start,
                    url: name.to_owned(),
                    format: FileFormat::of_name(name),
                    timing: Timing::StartOnly,
                });
            }
            let last_end = sent.unwrap_or(received_at);
            let mut out = Vec::new();
            for (_, mut segs) in by_stream {
                if segs.iter().any(|s| s.format == FileFormat::Mp4) {
                    segs.retain(|s| s.format != FileFormat::Hls);
                }
                segs.sort_by(|a, b| (a.start, &a.file_id).cmp(&(b.start, &b.file_id)));
                let starts: Vec<Millis> = segs.iter().map(|s| s.start).collect();
                for (k, seg) in segs.iter_mut().enumerate() {
                    seg.end = match starts.get(k + 1) {
                        Some(next) => (*next).max(seg.start),
                        None => last_end,
                    };
                }
                for seg in segs {
                    out.push(checked(seg)?);
                }
            }
            Ok(Callback::Segments(out))
        }
        (43 | 44, Some(details)) => {
            let uid = details.id("streamUid")?;
            let state = details.int("state")?;
            let at = details.opt_int("UtcMs")?.map(|ms| check_time("UtcMs", ms)).transpose()?.or(sent);
            let track = if event == 43 { Track::Audio } else { Track::Video };
            let stream = stream_of(&cname, Some(&uid), false, false);
            let user = (uid != "0").then_some(uid);
            let e = stream_event(Provider::Agora, stream, user, track, at, received_at, None)?;
            match state {
                0 => Ok(Callback::StreamUp(e)),
                1 => Ok(Callback::StreamDown(e)),
                _ => Err(IngestError::Field { provider: Provider::Agora, field: "state" }),
            }
        }
        (31 | 32 | 43 | 44, None) => Err(IngestError::Field { provider: Provider::Agora, field: "details" }),
        (event, _) => {
            ignored(clean(&format!("event {event} ({msg_name}) carries no recorded file or stream change"), 256))
        }
    }
}
