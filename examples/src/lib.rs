//! Roomkit examples live under `examples/<name>/`; this library is empty.
#![forbid(unsafe_code)]
