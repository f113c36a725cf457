//! ONNX Runtime sessions on the CPU: building one and running a float32 tensor through it.
//! Shared by the submission runner ([`crate::model`]) and `birdclef-export`'s self-verification.
use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::ort_env;

/// Where a model comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// Serialised ONNX bytes.
    Memory(&'a [u8]),
    /// An ONNX file.
    File(&'a Path),
}

/// A CPU session with all graph optimisations and `threads` intra-op threads.
/// [`ort_env::init`] must have run. The error is ONNX Runtime's message.
pub fn build_session(source: ModelSource<'_>, threads: usize) -> Result<Session, String> {
    let env = ort_env::environment().map_err(|e| format!("{e:#}"))?;
    // SessionBuilder errors are not Send: keep the whole chain in one ort::Result.
    let session = (|| -> ort::Result<Session> {
        let mut b = Session::builder(&env)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(threads.max(1))?
            .with_inter_threads(1)?;
        match source {
            ModelSource::Memory(bytes) => b.commit_from_memory(bytes),
            ModelSource::File(path) => b.commit_from_file(path),
        }
    })();
    session.map_err(|e| e.to_string())
}

/// Run `data` (of `shape`) as the input `input_name`; return the shape and values of the output
/// `output` (the first output when `None`). The error says what failed.
pub fn run_f32(
    session: &mut Session,
    input_name: &str,
    shape: &[usize],
    data: &[f32],
    output: Option<&str>,
) -> Result<(Vec<usize>, Vec<f32>), String> {
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "input has shape {shape:?} but {} values",
            data.len()
        ));
    }
    // A view of the caller's buffer: an ensemble runs every model on the same batch, no copies.
    let tensor = TensorRef::from_array_view((shape.to_vec(), data))
        .map_err(|e| format!("input {shape:?}: {e}"))?;
    let outputs = session
        .run(ort::inputs![input_name => tensor])
        .map_err(|e| format!("input {shape:?}: {e}"))?;
    let value = match output {
        Some(name) => outputs
            .get(name)
            .ok_or_else(|| format!("the model has no output named {name:?}"))?,
        None => &outputs[0],
    };
    let (out_shape, values) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| format!("the output is not a float tensor: {e}"))?;
    Ok((
        out_shape.iter().map(|&d| d.max(0) as usize).collect(),
        values.to_vec(),
    ))
}
