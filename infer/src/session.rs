//! ONNX Runtime sessions on the CPU: building one and running a float32 tensor through it.
//! Shared by the submission runner ([`crate::model`]) and `birdclef-export`'s self-verification.
use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::ort_env;

/// Why a session could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// ONNX Runtime has not been loaded ([`ort_env::init`] did not run or failed).
    #[error("ONNX Runtime is not available")]
    Runtime(#[source] ort_env::OrtError),
    /// ONNX Runtime refused to build the session (an invalid model, a thread pool it could not
    /// create); its message. `ort`'s message already holds any cause it wraps (an I/O error
    /// reading the file), so the error is not also a source: `{:#}` would repeat it.
    #[error("{0}")]
    Build(ort::Error),
    /// The input does not fit the shape it was given as.
    #[error("input has shape {shape:?} but {values} values")]
    InputSize {
        /// The shape given.
        shape: Vec<usize>,
        /// Values given.
        values: usize,
    },
    /// Running the session failed, or its output is not what was asked for.
    #[error("input {shape:?}: {message}")]
    Run {
        /// The input shape.
        shape: Vec<usize>,
        /// What went wrong.
        message: String,
    },
}

/// Where a model comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// Serialised ONNX bytes.
    Memory(&'a [u8]),
    /// An ONNX file.
    File(&'a Path),
}

/// A CPU session with all graph optimisations and `threads` intra-op threads.
/// [`ort_env::init`] must have run.
///
/// # Errors
///
/// [`SessionError::Runtime`] when ONNX Runtime is not loaded, [`SessionError::Build`] with ONNX
/// Runtime's message when it refuses the model.
pub fn build_session(source: ModelSource<'_>, threads: usize) -> Result<Session, SessionError> {
    let env = ort_env::environment().map_err(SessionError::Runtime)?;
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
    session.map_err(SessionError::Build)
}

/// Run `data` (of `shape`) as the input `input_name`; return the shape and values of the output
/// `output` (the first output when `None`).
///
/// # Errors
///
/// [`SessionError::InputSize`] when `data` does not hold `shape`'s values,
/// [`SessionError::Run`] saying what failed otherwise.
pub fn run_f32(
    session: &mut Session,
    input_name: &str,
    shape: &[usize],
    data: &[f32],
    output: Option<&str>,
) -> Result<(Vec<usize>, Vec<f32>), SessionError> {
    if data.len() != shape.iter().product::<usize>() {
        return Err(SessionError::InputSize {
            shape: shape.to_vec(),
            values: data.len(),
        });
    }
    let run_err = |message: String| SessionError::Run {
        shape: shape.to_vec(),
        message,
    };
    // A view of the caller's buffer: an ensemble runs every model on the same batch, no copies.
    let tensor =
        TensorRef::from_array_view((shape.to_vec(), data)).map_err(|e| run_err(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![input_name => tensor])
        .map_err(|e| run_err(e.to_string()))?;
    let value = match output {
        Some(name) => outputs
            .get(name)
            .ok_or_else(|| run_err(format!("the model has no output named {name:?}")))?,
        None => &outputs[0],
    };
    let (out_shape, values) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| run_err(format!("the output is not a float tensor: {e}")))?;
    Ok((
        out_shape.iter().map(|&d| d.max(0) as usize).collect(),
        values.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_onnx_runtime_refuses_is_a_typed_build_error() {
        if let Err(e) = ort_env::init(None) {
            println!("SKIPPED: no ONNX Runtime: {e:#}");
            return;
        }
        let e = build_session(ModelSource::Memory(b"not an onnx model"), 1)
            .expect_err("garbage is refused");
        assert!(matches!(e, SessionError::Build(_)), "{e:?}");
        assert!(!e.to_string().is_empty());
        // `ort` puts a wrapped cause's text in its message and also returns it as source: the
        // session error shows it once.
        let wrapped = SessionError::Build(ort::Error::wrap(std::io::Error::other("disk on fire")));
        assert_eq!(
            crate::error_chain::error_chain(&wrapped),
            "disk on fire",
            "{wrapped:?}"
        );
    }

    #[test]
    fn a_missing_runtime_keeps_its_cause() {
        let e = SessionError::Runtime(ort_env::OrtError::NotInitialised);
        assert_eq!(
            crate::error_chain::error_chain(&e),
            "ONNX Runtime is not available: ONNX Runtime is not initialised: call ort_env::init \
             first"
        );
    }
}
