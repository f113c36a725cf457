//! Running an ONNX model in ONNX Runtime, to verify what the emitter wrote.
//!
//! ONNX Runtime is found and loaded by `birdclef-infer`'s [`birdclef_infer::ort_env`] (the same
//! search order as `birdclef-infer`: `--ort-lib`, `ORT_DYLIB_PATH`, the project's
//! `.env/libonnxruntime.so`, pip's onnxruntime package), so an exported file is checked by the very
//! runtime that will score with it.

use std::path::Path;

use birdclef_infer::ort_env::OrtError;
use birdclef_infer::session::{build_session, run_f32, ModelSource, SessionError};
use birdclef_models::checkpoint::NamedTensor;
use ort::session::Session;

use crate::emit::{INPUT, OUTPUT};

/// Why a model could not be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// ONNX Runtime could not be found or loaded (the error lists where it looked).
    #[error(transparent)]
    Runtime(#[from] OrtError),
    /// ONNX Runtime refused the model.
    #[error("ONNX Runtime cannot load {origin}")]
    Load {
        /// The file, or `<memory>`.
        origin: String,
        /// ONNX Runtime's error (boxed: it is large, and rare).
        #[source]
        cause: Box<SessionError>,
    },
    /// The run failed or gave something other than one float tensor.
    #[error("running {origin} in ONNX Runtime failed")]
    Run {
        /// The file, or `<memory>`.
        origin: String,
        /// What went wrong (boxed: it is large, and rare).
        #[source]
        cause: Box<SessionError>,
    },
}

/// An ONNX model loaded into an ONNX Runtime session (CPU).
pub struct OrtModel {
    session: Session,
    origin: String,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl OrtModel {
    fn load(
        source: ModelSource<'_>,
        origin: String,
        ort_lib: Option<&Path>,
    ) -> Result<Self, RunError> {
        birdclef_infer::ort_env::init(ort_lib)?;
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let session = build_session(source, threads).map_err(|e| RunError::Load {
            origin: origin.clone(),
            cause: Box::new(e),
        })?;
        Ok(Self { session, origin })
    }

    /// Load serialised ONNX bytes. `ort_lib` is the `--ort-lib` choice; ONNX Runtime is loaded
    /// once per process, so later calls ignore it.
    pub fn from_bytes(bytes: &[u8], ort_lib: Option<&Path>) -> Result<Self, RunError> {
        Self::load(ModelSource::Memory(bytes), "<memory>".into(), ort_lib)
    }

    /// Load an ONNX file (see [`from_bytes`](Self::from_bytes) for `ort_lib`).
    pub fn from_file(path: &Path, ort_lib: Option<&Path>) -> Result<Self, RunError> {
        let origin = path.display().to_string();
        Self::load(ModelSource::File(path), origin, ort_lib)
    }

    /// Run the model on `input` (fed to the graph input [`INPUT`]); returns [`OUTPUT`].
    pub fn run(&mut self, input: &NamedTensor) -> Result<NamedTensor, RunError> {
        let (shape, data) = run_f32(
            &mut self.session,
            INPUT,
            &input.shape,
            &input.data,
            Some(OUTPUT),
        )
        .map_err(|e| RunError::Run {
            origin: self.origin.clone(),
            cause: Box::new(e),
        })?;
        Ok(NamedTensor {
            name: OUTPUT.to_string(),
            shape,
            data,
        })
    }
}

/// Load `bytes` and run them once on `input`.
pub fn run_onnx(
    bytes: &[u8],
    input: &NamedTensor,
    ort_lib: Option<&Path>,
) -> Result<NamedTensor, RunError> {
    OrtModel::from_bytes(bytes, ort_lib)?.run(input)
}
