//! The inference engines a model can run on: ONNX Runtime ([`crate::ort_env`]) and OpenVINO
//! ([`crate::openvino_env`]). Both read the same ONNX file written by birdclef-export, with the
//! model card in its metadata.
use std::fmt;
use std::path::Path;

/// Which engine runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Engine {
    /// ONNX Runtime (CPU execution provider, all graph optimisations).
    #[default]
    Ort,
    /// OpenVINO's CPU plugin, fp32 inference precision (the top BirdCLEF teams submit with it).
    Openvino,
}

impl Engine {
    /// The lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Ort => "ort",
            Engine::Openvino => "openvino",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an engine could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// ONNX Runtime.
    #[error(transparent)]
    Ort(#[from] crate::ort_env::OrtError),
    /// OpenVINO.
    #[error(transparent)]
    OpenVino(#[from] crate::openvino_env::OpenVinoError),
}

/// Find and load `engine`'s library once per process (`lib` is `--ort-lib` or `--openvino-lib`).
///
/// # Errors
///
/// As [`crate::ort_env::init`] and [`crate::openvino_env::init`].
pub fn init(engine: Engine, lib: Option<&Path>) -> Result<(), EngineError> {
    match engine {
        Engine::Ort => crate::ort_env::init(lib).map(drop)?,
        Engine::Openvino => crate::openvino_env::init(lib).map(drop)?,
    }
    Ok(())
}
