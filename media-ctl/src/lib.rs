//! Roomkit's media control plane: what SEED.md's live-streaming section
//! does around the encoders. It plans, validates, tracks and verifies;
//! encoding is a backend's job (ffmpeg here, a cloud service elsewhere).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod ffmpeg;
pub mod ingest;
pub mod layout;
pub mod orchestrate;
pub mod plan;
