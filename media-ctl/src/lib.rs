#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Roomkit's media control plane: what a live-class platform does around
//! its encoders. It plans, validates, tracks and verifies;
//! encoding is a backend's job (ffmpeg here, a cloud service elsewhere).
//!
//! * [`layout`]: typed mix templates (single, side by side, picture in
//!   picture, grid, custom regions with crop, fit, z-order and input kind),
//!   resolved in pixels or canvas fractions and validated (canvas sides
//!   within 128..=4096 and even, regions inside, unique z, crops inside
//!   their input, at most 16 inputs), plus a text or image watermark.
//! * [`orchestrate`]: a class session's state machine (sans-IO): streams
//!   up and down, relays, recordings, the mix and its layout, transcoding;
//!   idempotent commands with ids, retried with backoff, state queryable.
//! * [`ingest`]: callbacks of Roomkit, Tencent Cloud CSS, TRTC, Agora Cloud
//!   Recording, LiveKit (webhooks and egress), SRS and nginx-rtmp, typed:
//!   recorded files, streams up and down, or callbacks to acknowledge and
//!   ignore; retries dropped, segments ordered per stream, gaps and
//!   overlaps found; times checked, counts bounded.
//! * [`plan`]: from the timelines, a render plan on one axis: each file's
//!   place, gap filling (freeze or slate, and silence), layout switches,
//!   watermark, MP4 / FLV / HLS outputs with AES-128 keys and rotation.
//! * [`auth`]: Tencent `sign = md5(key + t)` with expiry, HMAC-SHA256
//!   over timestamp, nonce and body with a replay window and a bounded
//!   nonce cache, both ways; TRTC's `Sign`, Agora's `Agora-Signature`
//!   (V1 and V2) and LiveKit's webhook JWT; constant-time comparison.
//! * [`input`]: the URL allow-list (http/https downloads, rtmp/rtmps/srt
//!   live, local files only inside one directory) and the bounds on ids
//!   and URLs.
//! * [`ffmpeg`]: a plan as ffmpeg arguments and a filter graph (overlay,
//!   scale, pad, crop, tpad, apad, concat, setpts, adelay, amix, drawtext),
//!   run as a child process with progress and cancellation, failures as
//!   typed errors; every URL allow-listed and every input and output
//!   under `-protocol_whitelist`; HLS segments encrypted afterwards with
//!   rotating keys; the relay command.
//!
//! * [`live`]: live jobs (relays and recordings of live streams) as
//!   supervised ffmpeg processes: read timeouts, restarts with backoff
//!   when a publisher drops and returns, health, stop within a grace
//!   period; a backend that runs the orchestrator's commands with them
//!   and reports losses and recoveries back; the live mixer
//!   ([`live::mixer`]): live inputs on a canvas, layout switches while it
//!   runs (filter commands between two frames: no restart, no hole), out to
//!   RTMP, live HLS with AES-128 and rotating keys, FLV and MP4; recordings
//!   as FLV segments reported with Unix-millisecond times, as Roomkit
//!   recording callbacks signed afresh at each attempt and retried with
//!   backoff ([`live::callbacks`]), which [`ingest`] reads as they are.
//!
//! # Bad input
//!
//! | input | answer |
//! | --- | --- |
//! | a canvas or region out of range, overlapping z, an unknown input, a crop outside its input | [`layout::LayoutError`] naming the region and field |
//! | a callback that is not JSON (or a form), of no known shape, missing a field, ending before it starts, absurdly long, with a time outside 1970..=9999, over the stream or segment limits | [`ingest::IngestError`] naming the provider and field, or listing the shapes it knows; nothing ingested |
//! | a known provider's callback about something else (a room opening, an upload's progress) | [`ingest::Callback::Ignored`], saying what it was |
//! | a URL with another scheme (`concat:`, `data:`, `pipe:`, `tcp:`...), a local path outside the directory (`..`, a symbolic link), an id or URL too long or with control characters | [`input::InputError`] naming the rule |
//! | a render plan built by hand with numbers that do not hold together | [`ffmpeg::FfmpegError::BadPlan`]; [`plan::PlanError`] for requests over the bounds |
//! | the same callback again (providers retry up to 12 times) | [`ingest::Ingested::Duplicate`]; the same file id with other contents: [`ingest::IngestError::Conflict`] |
//! | a wrong or expired signature, a replayed nonce, a flood of nonces, a webhook token for another body or with another algorithm | [`auth::AuthError`] |
//! | a callback for a command never issued | [`orchestrate::OrchestrateError::UnknownCommand`]; repeats of a callback change nothing |
//! | a stream id that cannot be part of a file name (`/`, `%`, a leading `.`) | [`input::InputError::NotAName`] |
//! | a live command the backend does not run, more live jobs than allowed | [`live::LiveError`] |
//! | more recording callbacks waiting than the queue holds | [`live::callbacks::CallbackError::Full`]; the file stays on disk |
//! | a mix with no output, a frame rate outside 1..=60, an input twice, more regions than inputs, a path `tee` would misread, a layout ffmpeg refused | [`live::mixer::MixError`]; the layout in force stays |
//! | ffmpeg missing, failing or cancelled | [`ffmpeg::FfmpegError`] with ffmpeg's last lines |
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod ffmpeg;
pub mod ingest;
pub mod input;
pub mod layout;
pub mod live;
pub mod orchestrate;
pub mod plan;
