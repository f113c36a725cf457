//! The library side of `birdclef-infer`: what other binaries of the workspace share with it.
//!
//! [`ort_env`] finds and initialises the ONNX Runtime shared library; `birdclef-export` uses it to
//! run the ONNX files it writes before it accepts them. [`openvino_env`] does the same for
//! OpenVINO, the second [`engine`].

pub mod detections;
pub mod engine;
pub mod error_chain;
pub mod files;
pub mod kit;
pub mod model;
pub mod onnx_meta;
pub mod openvino_env;
pub mod ort_env;
pub mod postprocess;
pub mod predict;
pub mod runner;
pub mod score;
pub mod session;
pub mod shard;
pub mod submission;
#[cfg(test)]
mod test_dir;
