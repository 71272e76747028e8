//! Code shared by Roomkit's examples (under `examples/<name>/`), their
//! tests and the load generator.
#![forbid(unsafe_code)]

pub mod classroom;
pub mod cluster;
pub mod edge;
pub mod host_api;
pub mod metrics;

/// The README's code, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
