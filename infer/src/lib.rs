//! The library side of `birdclef-infer`: what other binaries of the workspace share with it.
//!
//! [`ort_env`] finds and initialises the ONNX Runtime shared library; `birdclef-export` uses it to
//! run the ONNX files it writes before it accepts them.

pub mod detections;
pub mod error_chain;
pub mod files;
pub mod model;
pub mod ort_env;
pub mod postprocess;
pub mod predict;
pub mod runner;
pub mod score;
pub mod session;
pub mod shard;
pub mod submission;
