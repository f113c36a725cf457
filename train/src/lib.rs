//! `birdclef-train` as a library, one folder per stage of the work:
//!
//! - [`data`]: a competition directory read as it is, folds, the audio cache, soft-labelled
//!   windows and augmented batches;
//! - [`model`]: the tch interpreter of the layer-graph IR, checkpoint creation, the device;
//! - [`training`]: the training loop of one fold (trainer, optimiser, state, history,
//!   validation) and the folds of a run;
//! - [`pseudo`]: teacher ensembles labelling soundscapes into an HDF5 file, and reading it back
//!   for distillation;
//! - [`pipeline`]: all of it from one TOML file, then export, inference and scoring.
//!
//! [`config`] is the experiment configuration they share, [`error`] the [`TrainError`] their
//! top-level functions return. The binary in `main.rs` is a thin
//! command-line layer over these.
#![deny(unsafe_code)]

pub mod config;
pub mod data;
#[cfg(test)]
mod doc_defaults;
pub mod error;
pub mod model;
pub mod pipeline;
pub mod pseudo;
pub mod training;

pub use error::TrainError;

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
