//! `birdclef-train` as a library: the tch interpreter of the layer-graph IR ([`net`]), checkpoint
//! creation ([`init`]) and the choice of compute device ([`device`]). The binary in `main.rs` is a
//! thin command-line layer over these.
#![deny(unsafe_code)]

pub mod batch;
pub mod config;
pub mod data;
pub mod device;
pub mod distill;
pub mod fit;
pub mod h5;
pub mod init;
pub mod net;
pub mod pipeline;
pub mod pseudo;
pub mod runs;

/// Lower-case hexadecimal of `bytes` (the hash keys of caches, runs and stages).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file's modification time in nanoseconds since the epoch (0 when the platform has none):
/// with its size, what the content keys use to notice a changed file without reading it.
pub(crate) fn modified_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}
