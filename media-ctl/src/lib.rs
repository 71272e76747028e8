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
//! * [`ingest`]: recording callbacks in Roomkit's own fields,
//!   Tencent Cloud's (event_type 100) and SRS's (on_dvr, on_hls); retries
//!   dropped, segments ordered per stream, gaps and overlaps found.
//! * [`plan`]: from the timelines, a render plan on one axis: each file's
//!   place, gap filling (freeze or slate, and silence), layout switches,
//!   watermark, MP4 / FLV / HLS outputs with AES-128 keys and rotation.
//! * [`auth`]: Tencent `sign = md5(key + t)` with expiry, and HMAC-SHA256
//!   over timestamp, nonce and body with a replay window and a bounded
//!   nonce cache, both ways; constant-time comparison.
//! * [`ffmpeg`]: a plan as ffmpeg arguments and a filter graph (overlay,
//!   scale, pad, crop, tpad, apad, concat, setpts, adelay, amix, drawtext),
//!   run as a child process with progress and cancellation, failures as
//!   typed errors; HLS segments encrypted afterwards with rotating keys;
//!   the relay command.
//!
//! # Bad input
//!
//! | input | answer |
//! | --- | --- |
//! | a canvas or region out of range, overlapping z, an unknown input, a crop outside its input | [`layout::LayoutError`] naming the region and field |
//! | a callback that is not JSON, of no known shape, missing a field, ending before it starts, absurdly long | [`ingest::IngestError`] naming the field; nothing ingested |
//! | the same callback again (providers retry up to 12 times) | [`ingest::Ingested::Duplicate`]; the same file id with other contents: [`ingest::IngestError::Conflict`] |
//! | a wrong or expired signature, a replayed nonce, a flood of nonces | [`auth::AuthError`] |
//! | a callback for a command never issued | [`orchestrate::OrchestrateError::UnknownCommand`]; repeats of a callback change nothing |
//! | ffmpeg missing, failing or cancelled | [`ffmpeg::FfmpegError`] with ffmpeg's last lines |
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod ffmpeg;
pub mod ingest;
pub mod layout;
pub mod orchestrate;
pub mod plan;
