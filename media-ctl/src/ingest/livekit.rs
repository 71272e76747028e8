//! LiveKit webhooks, following LiveKit's "Webhooks" document and its
//! protocol definitions (`livekit_webhook.proto`, `livekit_egress.proto`,
//! `livekit_models.proto`): `event`, `room`, `participant`, `track`,
//! `egressInfo`, `id` and `createdAt` (Unix seconds), in protobuf JSON
//! (camelCase names, 64-bit integers as strings, enums by name, defaults
//! omitted); snake_case names are accepted too. The `Authorization`
//! token is checked by [`crate::auth::LiveKitWebhookAuth`].
//!
//! * `egress_ended`: `egressInfo` with `egressId`, `roomName`, `status`,
//!   `error`, the request (`participant`, `trackComposite`, `track`,
//!   `roomComposite`, `web`) and its results: `fileResults[]`
//!   (`filename`, `startedAt`, `endedAt`, `duration` in nanoseconds,
//!   `location`) and `segmentResults[]` (`playlistName`,
//!   `playlistLocation`, the same times). One segment per result; an
//!   egress without results (failed, aborted) is ignored with its error.
//! * `track_published` / `track_unpublished`: up and down of a
//!   participant's audio or video (`track.type`, `track.source`; screen
//!   sharing is the participant's `/screen` stream).
//! * `participant_left`: the participant's stream is down.
//! * Everything else (rooms starting and finishing, participants joining,
//!   egress started or updated, ingress) is [`Callback::Ignored`].

use serde_json::{Map, Value};

use super::util::{Obj, clean, ns_ms, secs_ms, stream_event};
use super::{Callback, FileFormat, IngestError, Millis, Provider, Segment, Timing, Track, checked};

const MARKERS: [&str; 9] = [
    "egressInfo",
    "egress_info",
    "room",
    "participant",
    "track",
    "ingressInfo",
    "ingress_info",
    "createdAt",
    "created_at",
];

/// A LiveKit webhook: an `event` name and one of its objects.
pub(super) fn recognise(map: &Map<String, Value>) -> bool {
    map.get("event").is_some_and(Value::is_string) && MARKERS.iter().any(|k| map.contains_key(*k))
}

/// The camelCase name if present, else the snake_case one.
fn pick(o: &Obj<'_>, camel: &'static str, snake: &'static str) -> &'static str {
    if o.has(camel) { camel } else { snake }
}

/// An enum given by name or number (protobuf JSON accepts both).
fn enum_value<'a>(o: &Obj<'a>, name: &'static str, names: &[&'static str]) -> Result<&'a str, IngestError> {
    match o.opt_str(name) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Ok(names[0]), // the default value is omitted
        Err(_) => {
            let n = o.int(name)?;
            usize::try_from(n).ok().and_then(|i| names.get(i)).copied().ok_or_else(|| o.field(name))
        }
    }
}

fn result(
    egress: &str,
    stream: &str,
    o: &Obj<'_>,
    name_field: (&'static str, &'static str),
    location: (&'static str, &'static str),
    format: Option<FileFormat>,
) -> Result<Segment, IngestError> {
    let name = o.nonempty(pick(o, name_field.0, name_field.1))?;
    let start = ns_ms("startedAt", o.int(pick(o, "startedAt", "started_at"))?)?;
    let ended = o.opt_int(pick(o, "endedAt", "ended_at"))?.unwrap_or(0);
    let end = if ended > 0 {
        ns_ms("endedAt", ended)?
    } else {
        let d = o.opt_int("duration")?.filter(|d| *d > 0).ok_or_else(|| o.field("endedAt"))?;
        let d = ns_ms("duration", d)?;
        start.checked_add(d).ok_or(IngestError::TimeOutOfRange { field: "duration", value: d })?
    };
    let url = o.opt_str(pick(o, location.0, location.1))?.filter(|l| !l.is_empty()).unwrap_or(name);
    checked(Segment {
        stream: stream.to_owned(),
        file_id: format!("{egress}/{name}"),
        user: None,
        start,
        end,
        url: url.to_owned(),
        format: format.unwrap_or_else(|| FileFormat::of_name(name)),
        timing: Timing::Reported,
    })
}

fn egress_ended(info: &Obj<'_>) -> Result<Callback, IngestError> {
    let id = info.nonempty(pick(info, "egressId", "egress_id"))?;
    let room = info.opt_str(pick(info, "roomName", "room_name"))?.filter(|r| !r.is_empty());
    let room_of = |req: &Obj<'_>| -> Result<String, IngestError> {
        Ok(req.opt_str(pick(req, "roomName", "room_name"))?.filter(|r| !r.is_empty()).or(room).unwrap_or(id).to_owned())
    };
    let stream = if let Some(req) = info.opt_obj("participant")? {
        let screen =
            if req.opt_bool(pick(&req, "screenShare", "screen_share"))?.unwrap_or(false) { "/screen" } else { "" };
        format!("{}/{}{screen}", room_of(&req)?, req.nonempty("identity")?)
    } else if let Some(req) = info.opt_obj(pick(info, "trackComposite", "track_composite"))? {
        let video = req.opt_str(pick(&req, "videoTrackId", "video_track_id"))?.filter(|t| !t.is_empty());
        let audio = req.opt_str(pick(&req, "audioTrackId", "audio_track_id"))?.filter(|t| !t.is_empty());
        match (video, audio) {
            (Some(v), _) => format!("{}/{v}", room_of(&req)?),
            (None, Some(a)) => format!("{}/{a}/audio", room_of(&req)?),
            (None, None) => return Err(info.field("trackComposite")),
        }
    } else if let Some(req) = info.opt_obj("track")? {
        format!("{}/{}", room_of(&req)?, req.nonempty(pick(&req, "trackId", "track_id"))?)
    } else if let Some(req) = info.opt_obj(pick(info, "roomComposite", "room_composite"))? {
        let audio = if req.opt_bool(pick(&req, "audioOnly", "audio_only"))?.unwrap_or(false) { "/audio" } else { "" };
        format!("{}/mix{audio}", room_of(&req)?)
    } else if info.has("web") {
        format!("web/{id}")
    } else {
        format!("{}/{id}", room.unwrap_or("egress"))
    };
    let mut segments = Vec::new();
    let files = info.objects(pick(info, "fileResults", "file_results"))?;
    let file = info.opt_obj("file")?; // deprecated single result
    for f in files.iter().chain(file.iter()) {
        segments.push(result(id, &stream, f, ("filename", "filename"), ("location", "location"), None)?);
    }
    let lists = info.objects(pick(info, "segmentResults", "segment_results"))?;
    let list = info.opt_obj("segments")?; // deprecated single result
    for s in lists.iter().chain(list.iter()) {
        segments.push(result(
            id,
            &stream,
            s,
            ("playlistName", "playlist_name"),
            ("playlistLocation", "playlist_location"),
            Some(FileFormat::Hls),
        )?);
    }
    if segments.len() > super::MAX_FILES_PER_CALLBACK {
        return Err(IngestError::TooManyFiles { count: segments.len(), max: super::MAX_FILES_PER_CALLBACK });
    }
    if segments.is_empty() {
        const STATUS: [&str; 7] = [
            "EGRESS_STARTING",
            "EGRESS_ACTIVE",
            "EGRESS_ENDING",
            "EGRESS_COMPLETE",
            "EGRESS_FAILED",
            "EGRESS_ABORTED",
            "EGRESS_LIMIT_REACHED",
        ];
        let status = enum_value(info, "status", &STATUS)?;
        let error = info.opt_str("error")?.unwrap_or("");
        return Ok(Callback::Ignored {
            provider: Provider::LiveKit,
            why: clean(&format!("egress {id} ended ({status}) without files: {error}"), 256),
        });
    }
    Ok(Callback::Segments(segments))
}

pub(super) fn parse(map: &Map<String, Value>, received_at: Millis) -> Result<Callback, IngestError> {
    let o = Obj::new(map, Provider::LiveKit);
    let event = o.str("event")?;
    let at = o.opt_int(pick(&o, "createdAt", "created_at"))?.map(|s| secs_ms("createdAt", s, 0)).transpose()?;
    match event {
        "egress_ended" => egress_ended(&o.obj(pick(&o, "egressInfo", "egress_info"))?),
        "track_published" | "track_unpublished" | "participant_left" => {
            let room = o.obj("room")?.nonempty("name")?;
            let identity = o.obj("participant")?.nonempty("identity")?;
            let (track, screen, detail) = if event == "participant_left" {
                (Track::All, false, None)
            } else {
                let t = o.obj("track")?;
                let kind = enum_value(&t, "type", &["AUDIO", "VIDEO", "DATA"])?;
                let source = enum_value(
                    &t,
                    "source",
                    &["UNKNOWN", "CAMERA", "MICROPHONE", "SCREEN_SHARE", "SCREEN_SHARE_AUDIO"],
                )?;
                let track = match kind {
                    "AUDIO" => Track::Audio,
                    "VIDEO" => Track::Video,
                    other => {
                        return Ok(Callback::Ignored {
                            provider: Provider::LiveKit,
                            why: clean(&format!("{event} of a {other} track"), 256),
                        });
                    }
                };
                let sid = t.opt_str("sid")?.map(|s| clean(&format!("track {s}"), 256));
                (track, source.starts_with("SCREEN_SHARE"), sid)
            };
            let stream = format!("{room}/{identity}{}", if screen { "/screen" } else { "" });
            let e = stream_event(Provider::LiveKit, stream, Some(identity.to_owned()), track, at, received_at, detail)?;
            Ok(if event == "track_published" { Callback::StreamUp(e) } else { Callback::StreamDown(e) })
        }
        other => Ok(Callback::Ignored {
            provider: Provider::LiveKit,
            why: clean(&format!("{other} carries no recorded file or stream change"), 256),
        }),
    }
}
