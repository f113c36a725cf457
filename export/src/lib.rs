//! `birdclef-export` as a library: the layer-graph IR written as ONNX, run in ONNX Runtime and
//! verified against a checkpoint's reference batch.
//!
//! - [`onnx_proto`]: the subset of `onnx.proto` needed to write a model (prost messages);
//! - [`emit`]: IR graph + weights (+ model card) → ONNX (opset 17);
//! - [`ort_run`]: run ONNX bytes or a file in ONNX Runtime (found as `birdclef-infer` finds it);
//! - [`export`]: checkpoint directory → ONNX file, written only if it reproduces the reference.

pub mod emit;
pub mod export;
pub mod onnx_proto;
pub mod ort_run;

pub use emit::{emit, emit_model, EmitError};
pub use export::{export_checkpoint, ExportError, ExportOptions, Exported};
pub use ort_run::{run_onnx, OrtModel, RunError};
