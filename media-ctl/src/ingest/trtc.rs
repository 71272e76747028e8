//! Tencent Real-Time Communication (TRTC) callbacks, following TRTC's
//! documents "Room and Media Callbacks" (event groups 1 and 2) and "Cloud
//! Recording and Web Page Recording Webhooks" (event groups 3 and 8).
//! The body is `EventGroupId`, `EventType`, `CallbackTs` (ms) and
//! `EventInfo` (`RoomId`, `EventTs` in seconds, `EventMsTs` in ms,
//! `UserId`, `TaskId`, `Payload`), either at the top level or, in the
//! call kit's `Call.CallbackAfterRecordChanged`, under `Callback`. The
//! signature (`Sign` header) is checked by [`crate::auth::TrtcSign`].
//!
//! * Group 2: 201/202 video, 203/204 audio, 205/206 auxiliary (screen
//!   sharing) stream started/stopped: up and down events.
//! * Group 3, 310 (MP4 recording stopped): `Payload.FileMessage[]` with
//!   `FileName`, `UserId`, `TrackType`, `MediaId` (`main`, `aux`, `mix`),
//!   `StartTimeStamp` and `EndTimeStamp` (ms): one segment each, the
//!   storage object name as its URL.
//! * Group 3, 311 (VOD upload done): `Payload.Status` and
//!   `Payload.TencentVod` with `FileId`, `VideoUrl`, `CacheFile`,
//!   `UserId`, `TrackType`, `MediaId`, `StartTimeStamp`, `EndTimeStamp`.
//!   A status other than 0 (the file still on the recording servers, or
//!   failed) is ignored with its `Errmsg`.
//! * Everything else (room events, recorder start and stop, slices, web
//!   page recording) is [`Callback::Ignored`].

use serde_json::{Map, Value};

use super::util::{Obj, clean, secs_ms, stream_event};
use super::{Callback, FileFormat, IngestError, Millis, Provider, Segment, Timing, Track, check_time, checked};

/// The TRTC event object, at the top level or under `Callback`.
pub(super) fn recognise(map: &Map<String, Value>) -> Option<&Map<String, Value>> {
    let is_trtc = |m: &Map<String, Value>| {
        m.contains_key("EventType") && (m.contains_key("EventGroupId") || m.contains_key("EventInfo"))
    };
    if is_trtc(map) {
        return Some(map);
    }
    match map.get("Callback") {
        Some(Value::Object(inner)) if is_trtc(inner) => Some(inner),
        _ => None,
    }
}

/// The stream a file or an event belongs to (see the module's stream ids).
fn stream_of(room: &str, user: Option<&str>, media: Option<&str>, track_type: Option<&str>) -> String {
    let mut s = match user {
        Some(u) if !u.is_empty() && media != Some("mix") => {
            let aux = if media == Some("aux") { "/aux" } else { "" };
            format!("{room}/{u}{aux}")
        }
        _ => format!("{room}/mix"),
    };
    if track_type == Some("audio") {
        s.push_str("/audio");
    }
    s
}

/// A file's segment from its fields.
fn file(room: &str, f: &Obj<'_>, file_id: &str, url: &str, name: Option<&str>) -> Result<Segment, IngestError> {
    let user = f.opt_str("UserId")?.filter(|u| !u.is_empty());
    let stream = stream_of(room, user, f.opt_str("MediaId")?, f.opt_str("TrackType")?);
    checked(Segment {
        stream,
        file_id: file_id.to_owned(),
        user: user.map(str::to_owned),
        start: check_time("StartTimeStamp", f.int("StartTimeStamp")?)?,
        end: check_time("EndTimeStamp", f.int("EndTimeStamp")?)?,
        url: url.to_owned(),
        format: FileFormat::of_name(name.unwrap_or(url)),
        timing: Timing::Reported,
    })
}

pub(super) fn parse(map: &Map<String, Value>, received_at: Millis) -> Result<Callback, IngestError> {
    let inner = recognise(map).ok_or(IngestError::Field { provider: Provider::Trtc, field: "EventType" })?;
    let o = Obj::new(inner, Provider::Trtc);
    let group = o.opt_int("EventGroupId")?;
    let ty = o.int("EventType")?;
    let ignored = |why: String| Ok(Callback::Ignored { provider: Provider::Trtc, why });
    match (group.unwrap_or(ty / 100), ty) {
        (2, 201..=206) => {
            let info = o.obj("EventInfo")?;
            let room = info.id("RoomId")?;
            let user = info.id("UserId")?;
            let at = match (info.opt_int("EventMsTs")?, info.opt_int("EventTs")?) {
                (Some(ms), _) => Some(check_time("EventMsTs", ms)?),
                (None, Some(s)) => Some(secs_ms("EventTs", s, 0)?),
                (None, None) => None,
            };
            let (track, aux) = match ty {
                201 | 202 => (Track::Video, false),
                203 | 204 => (Track::Audio, false),
                _ => (Track::Video, true),
            };
            let stream = stream_of(&room, Some(&user), aux.then_some("aux"), None);
            let detail = info.opt_text("Reason")?.map(|r| clean(&format!("reason {r}"), 256));
            let e = stream_event(Provider::Trtc, stream, Some(user), track, at, received_at, detail)?;
            Ok(if ty % 2 == 1 { Callback::StreamUp(e) } else { Callback::StreamDown(e) })
        }
        (3, 310) => {
            let info = o.obj("EventInfo")?;
            let room = info.id("RoomId")?;
            let payload = info.obj("Payload")?;
            let files = payload.objects("FileMessage")?;
            if files.is_empty() {
                return ignored("cloud recording 310 lists no FileMessage".to_owned());
            }
            let segments = files
                .iter()
                .map(|f| {
                    let name = f.nonempty("FileName")?;
                    file(&room, f, name, name, None)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Callback::Segments(segments))
        }
        (3, 311) => {
            let info = o.obj("EventInfo")?;
            let room = info.id("RoomId")?;
            let payload = info.obj("Payload")?;
            let status = payload.int("Status")?;
            if status != 0 {
                let msg = payload.opt_str("Errmsg")?.unwrap_or("");
                return ignored(clean(&format!("cloud recording VOD upload status {status}: {msg}"), 256));
            }
            let vod = payload.obj("TencentVod")?;
            let seg = file(
                &room,
                &vod,
                vod.nonempty("FileId")?,
                vod.nonempty("VideoUrl")?,
                vod.opt_str("CacheFile")?.filter(|n| !n.is_empty()),
            )?;
            Ok(Callback::Segments(vec![seg]))
        }
        (g, t) => ignored(format!("event group {g} type {t} carries no recorded file or stream change")),
    }
}
