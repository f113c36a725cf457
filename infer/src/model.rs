//! An exported model: its session on one [`Engine`] (ONNX Runtime or OpenVINO) and the model
//! card stored in its metadata.
use std::path::{Path, PathBuf};

use birdclef_models::card::{Card, CardError, CardProblem, ONNX_CARD_KEY};
use birdclef_models::frontend::WindowPolicy;
use ort::session::Session;

use crate::engine::Engine;
use crate::onnx_meta;
use crate::session::{build_session, run_f32, ModelSource, SessionError};

/// Why a model could not be loaded or run. Every variant names the model file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A directory was given (a checkpoint directory, say) instead of an ONNX file.
    #[error(
        "{path}: is a directory, not an ONNX model file (export a checkpoint directory with \
         birdclef-export)"
    )]
    Directory {
        /// The directory.
        path: PathBuf,
    },
    /// Nothing is there.
    #[error("{path}: no such model file")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// ONNX Runtime could not build a session of it (not ONNX, an operator it lacks, ONNX
    /// Runtime not loaded).
    #[error("{path}: ONNX Runtime cannot load it")]
    Load {
        /// The model file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare).
        #[source]
        cause: Box<SessionError>,
    },
    /// The ONNX metadata holds no model card: not a file written by birdclef-export.
    #[error(
        "{path}: no model card in the ONNX metadata (key {ONNX_CARD_KEY:?}); was it written by \
         birdclef-export?"
    )]
    NoCard {
        /// The model file.
        path: PathBuf,
    },
    /// The model card in the metadata is not a valid card.
    #[error("{path}: model card")]
    Card {
        /// The model file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare).
        #[source]
        cause: Box<CardError>,
    },
    /// The card is valid but cannot describe a model (no labels, no architecture).
    #[error("{path}: model card")]
    CardProblem {
        /// The model file.
        path: PathBuf,
        /// What is missing.
        #[source]
        problem: CardProblem,
    },
    /// The file could not be read (OpenVINO reads it into memory, with its metadata).
    #[error("{path}: cannot read the model file")]
    Read {
        /// The model file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        cause: std::io::Error,
    },
    /// The file is not a well-formed ONNX protobuf (its metadata cannot be read).
    #[error("{path}: {cause}")]
    NotOnnx {
        /// The model file.
        path: PathBuf,
        /// Where the bytes stop making sense.
        cause: onnx_meta::MetaError,
    },
    /// OpenVINO refused the model or failed running it: what was being done and its message.
    #[error("{path}: OpenVINO cannot {action}: {message}")]
    OpenVino {
        /// The model file.
        path: PathBuf,
        /// What was being done ("read it", "compile it for the CPU", "run a batch of 4").
        action: String,
        /// OpenVINO's message.
        message: String,
    },
    /// The graph has no input.
    #[error("{path}: the model has no input")]
    NoInput {
        /// The model file.
        path: PathBuf,
    },
    /// [`OnnxModel::run`] was given a batch of the wrong size.
    #[error("{path}: batch of {values} values is not {windows} windows of {}x{}x{}", .shape[0], .shape[1], .shape[2])]
    BatchSize {
        /// The model file.
        path: PathBuf,
        /// Values given.
        values: usize,
        /// Windows asked for.
        windows: usize,
        /// The card's input shape of one window.
        shape: [usize; 3],
    },
    /// Running the session failed.
    #[error("{path}: inference failed")]
    Inference {
        /// The model file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare).
        #[source]
        cause: Box<SessionError>,
    },
    /// The output does not have one value per window and label.
    #[error("{path}: output shape {shape:?} is not [{windows}, {classes}] (the card lists {classes} labels)")]
    OutputShape {
        /// The model file.
        path: PathBuf,
        /// The output's shape.
        shape: Vec<usize>,
        /// Windows in the batch.
        windows: usize,
        /// Labels in the card.
        classes: usize,
    },
}

/// Why models cannot be ensembled ([`check_ensemble`], [`check_cards`]). Every variant but
/// [`EnsembleError::NoModels`] names both files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnsembleError {
    /// No model was given.
    #[error("no models given")]
    NoModels,
    /// Different labels, or the same labels in another order.
    #[error("{first} and {second} cannot be ensembled: {difference}")]
    Labels {
        /// The first model.
        first: PathBuf,
        /// The model that differs from it.
        second: PathBuf,
        /// Where the labels differ.
        difference: String,
    },
    /// Frontends that cut the audio into different windows.
    #[error(
        "{first} and {second} cannot be ensembled: they cut audio into different windows \
         ({first_rate} Hz, {first_windows:?} vs {second_rate} Hz, {second_windows:?})"
    )]
    Windows {
        /// The first model.
        first: PathBuf,
        /// The model that differs from it.
        second: PathBuf,
        /// The first model's sample rate.
        first_rate: u32,
        /// The first model's window policy.
        first_windows: WindowPolicy,
        /// The other model's sample rate.
        second_rate: u32,
        /// The other model's window policy.
        second_windows: WindowPolicy,
    },
    /// The same frontend but different input shapes.
    #[error(
        "{first} and {second} have the same frontend but different input shapes {first_shape:?} \
         vs {second_shape:?}"
    )]
    InputShapes {
        /// The first model.
        first: PathBuf,
        /// The model that differs from it.
        second: PathBuf,
        /// The first model's input shape.
        first_shape: [usize; 3],
        /// The other model's input shape.
        second_shape: [usize; 3],
    },
}

/// An ONNX model ready to run on the CPU.
pub struct OnnxModel {
    /// The file it came from.
    pub path: PathBuf,
    /// Its model card (labels, frontend, input shape).
    pub card: Card,
    backend: Backend,
}

/// The engine-specific half of an [`OnnxModel`].
enum Backend {
    Ort {
        session: Box<Session>,
        input_name: String,
    },
    OpenVino(Box<OpenVinoNet>),
}

/// A model compiled by OpenVINO for the CPU, with its one synchronous request. The core and the
/// compiled model are kept alive with the request. Every worker compiles its own: one compiled
/// model with a stream per worker, each worker running its own request of it, compiles once
/// instead of once per worker, but it ran 5 models on 32 soundscapes with 8-11% more CPU time and
/// up to 10% more wall time than a compilation per worker (two alternating runs each, 2-core VM).
struct OpenVinoNet {
    request: openvino::InferRequest,
    /// The batch size the model was compiled for, when it was given a static input shape: every
    /// run then feeds batches of exactly this many windows (a shorter one padded with zeros).
    /// OpenVINO's CPU plugin runs a static shape faster than the ONNX file's dynamic batch: on the
    /// 2-core development VM two single-threaded requests of efficientvit_b0 ran 1.10-1.17x the
    /// windows/s of the dynamic shape at batch 4 and 1.22-1.33x at batch 8
    /// (`bench/infer_reference.py raw_openvino`).
    static_batch: Option<usize>,
    _compiled: openvino::CompiledModel,
    _core: openvino::Core,
}

impl OpenVinoNet {
    /// Compile `onnx` for the CPU: `threads` inference threads in one stream, latency mode, fp32
    /// inference precision (OpenVINO would otherwise pick bf16 on CPUs that have it, and its
    /// outputs would no longer equal ONNX Runtime's), no thread pinning. With `static_batch`, the
    /// input is first reshaped to that batch of `input_shape`. Compiling efficientvit_b0 takes
    /// about 0.3 s of a core (ONNX Runtime builds a session in a quarter of that).
    fn compile(
        onnx: &[u8],
        threads: usize,
        input_shape: [usize; 3],
        static_batch: Option<usize>,
    ) -> Result<Self, (&'static str, String)> {
        use openvino::{Core, DeviceType, PartialShape, RwPropertyKey};
        let mut core = Core::new().map_err(|e| ("start a core", e.to_string()))?;
        let threads = threads.max(1).to_string();
        for (key, value) in [
            (RwPropertyKey::InferenceNumThreads, threads.as_str()),
            (RwPropertyKey::NumStreams, "1"),
            (RwPropertyKey::HintPerformanceMode, "LATENCY"),
            (RwPropertyKey::HintInferencePrecision, "f32"),
            (RwPropertyKey::HintEnableCpuPinning, "NO"),
        ] {
            core.set_property(&DeviceType::CPU, &key, value)
                .map_err(|e| ("configure the CPU", e.to_string()))?;
        }
        let mut model = core
            .read_model_from_buffer(onnx, None)
            .map_err(|e| ("read it", e.to_string()))?;
        let static_batch = static_batch.map(|b| b.max(1));
        if let Some(batch) = static_batch {
            let [c, h, w] = input_shape;
            let dims = [batch, c, h, w].map(|d| d as i64);
            let shape = PartialShape::new_static(4, &dims)
                .map_err(|e| ("give it a static input shape", e.to_string()))?;
            model
                .reshape_single_input(&shape)
                .map_err(|e| ("give it a static input shape", e.to_string()))?;
        }
        let mut compiled = core
            .compile_model(&model, DeviceType::CPU)
            .map_err(|e| ("compile it for the CPU", e.to_string()))?;
        let request = compiled
            .create_infer_request()
            .map_err(|e| ("create an inference request", e.to_string()))?;
        Ok(Self {
            request,
            static_batch,
            _compiled: compiled,
            _core: core,
        })
    }

    /// Run `n` windows of `input` (`shape` = `[n, c, h, w]`); the first output's shape and
    /// values. A model compiled for a static batch runs them in batches of that size, the last
    /// padded with zeros whose outputs are dropped.
    fn run(&mut self, shape: &[usize], input: &[f32]) -> Result<(Vec<usize>, Vec<f32>), String> {
        let Some(batch) = self.static_batch else {
            return self.infer(shape, input);
        };
        let n = shape.first().copied().unwrap_or(0);
        let per: usize = shape.iter().skip(1).product();
        let mut padded = Vec::new();
        let mut values = Vec::new();
        let mut out_shape = Vec::new();
        for first in (0..n).step_by(batch) {
            let len = batch.min(n - first);
            let part = &input[first * per..(first + len) * per];
            let full = if len == batch {
                part
            } else {
                padded.clear();
                padded.extend_from_slice(part);
                padded.resize(batch * per, 0.0);
                &padded[..]
            };
            let mut dims = shape.to_vec();
            dims[0] = batch;
            let (s, v) = self.infer(&dims, full)?;
            let per_output = v.len() / batch;
            values.extend_from_slice(&v[..len * per_output]);
            out_shape = s;
        }
        if let Some(d) = out_shape.first_mut() {
            *d = n;
        }
        Ok((out_shape, values))
    }

    /// One inference of `input` with `shape`, as compiled. A static shape's input goes into the
    /// request's own tensor, allocated once (a new tensor per batch cost a page-faulting
    /// allocation of its 0.8 MB each time).
    fn infer(&mut self, shape: &[usize], input: &[f32]) -> Result<(Vec<usize>, Vec<f32>), String> {
        use openvino::{ElementType, Shape, Tensor};
        if self.static_batch.is_some() {
            let mut tensor = self.request.get_input_tensor().map_err(|e| e.to_string())?;
            let data = tensor.get_data_mut::<f32>().map_err(|e| e.to_string())?;
            if data.len() != input.len() {
                return Err(format!(
                    "the request's input holds {} values, the batch {}",
                    data.len(),
                    input.len()
                ));
            }
            data.copy_from_slice(input);
        } else {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let shape = Shape::new(&dims).map_err(|e| e.to_string())?;
            let mut tensor = Tensor::new(ElementType::F32, &shape).map_err(|e| e.to_string())?;
            tensor
                .get_data_mut::<f32>()
                .map_err(|e| e.to_string())?
                .copy_from_slice(input);
            self.request
                .set_input_tensor(&tensor)
                .map_err(|e| e.to_string())?;
        }
        self.request.infer().map_err(|e| e.to_string())?;
        let out = self
            .request
            .get_output_tensor_by_index(0)
            .map_err(|e| e.to_string())?;
        let out_shape = out
            .get_shape()
            .map_err(|e| e.to_string())?
            .get_dimensions()
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect();
        let values = out.get_data::<f32>().map_err(|e| e.to_string())?.to_vec();
        Ok((out_shape, values))
    }
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("card", &self.card.name)
            .finish()
    }
}

impl OnnxModel {
    /// Load a model written by `birdclef-export` on `engine`, with `threads` intra-op threads
    /// per session, for batches of any size. The engine must have been initialised
    /// ([`crate::engine::init`]).
    pub fn load(path: &Path, engine: Engine, threads: usize) -> Result<Self, ModelError> {
        Self::load_for_batch(path, engine, threads, None)
    }

    /// [`OnnxModel::load`] for a run whose batches hold at most `batch` windows: OpenVINO then
    /// compiles the model for exactly that batch (a static input shape, which its CPU plugin runs
    /// faster; shorter batches are padded with zeros); ONNX Runtime ignores it.
    pub fn load_for_batch(
        path: &Path,
        engine: Engine,
        threads: usize,
        batch: Option<usize>,
    ) -> Result<Self, ModelError> {
        let path_buf = || path.to_path_buf();
        check_model_file(path)?;
        let (card, backend) = match engine {
            Engine::Ort => {
                let session = build_session(ModelSource::File(path), threads).map_err(|e| {
                    ModelError::Load {
                        path: path_buf(),
                        cause: Box::new(e),
                    }
                })?;
                let json = session
                    .metadata()
                    .ok()
                    .and_then(|m| m.custom(ONNX_CARD_KEY));
                let input_name = session
                    .inputs()
                    .first()
                    .map(|i| i.name().to_string())
                    .ok_or_else(|| ModelError::NoInput { path: path_buf() })?;
                (
                    card_from_json(path, json)?,
                    Backend::Ort {
                        session: Box::new(session),
                        input_name,
                    },
                )
            }
            Engine::Openvino => {
                let bytes = read_model_file(path)?;
                // The card is checked before OpenVINO compiles anything: it gives the input
                // shape of a static batch.
                let card = card_in_onnx(path, &bytes)?;
                let net = OpenVinoNet::compile(&bytes, threads, card.input_shape, batch).map_err(
                    |(action, message)| ModelError::OpenVino {
                        path: path_buf(),
                        action: action.to_string(),
                        message: message.trim().to_string(),
                    },
                )?;
                (card, Backend::OpenVino(Box::new(net)))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            card,
            backend,
        })
    }

    /// The engine this model runs on.
    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Ort { .. } => Engine::Ort,
            Backend::OpenVino(_) => Engine::Openvino,
        }
    }

    /// Number of classes (outputs per window).
    pub fn classes(&self) -> usize {
        self.card.labels.len()
    }

    /// Run a batch: `input` holds `n` windows of the card's input shape, row-major; returns
    /// `n × classes` logits.
    pub fn run(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let [c, h, w] = self.card.input_shape;
        if input.len() != n * c * h * w {
            return Err(ModelError::BatchSize {
                path: self.path.clone(),
                values: input.len(),
                windows: n,
                shape: self.card.input_shape,
            });
        }
        let k = self.classes();
        let (shape, values) = match &mut self.backend {
            Backend::Ort {
                session,
                input_name,
            } => run_f32(session, input_name, &[n, c, h, w], input, None).map_err(|e| {
                ModelError::Inference {
                    path: self.path.clone(),
                    cause: Box::new(e),
                }
            })?,
            Backend::OpenVino(net) => {
                net.run(&[n, c, h, w], input)
                    .map_err(|message| ModelError::OpenVino {
                        path: self.path.clone(),
                        action: format!("run a batch of {n}"),
                        message: message.trim().to_string(),
                    })?
            }
        };
        if values.len() != n * k {
            return Err(ModelError::OutputShape {
                path: self.path.clone(),
                shape,
                windows: n,
                classes: k,
            });
        }
        Ok(values)
    }
}

/// A model path must name a file: a directory (a checkpoint, say) or nothing is refused first.
fn check_model_file(path: &Path) -> Result<(), ModelError> {
    if path.is_dir() {
        return Err(ModelError::Directory {
            path: path.to_path_buf(),
        });
    }
    if !path.is_file() {
        return Err(ModelError::Missing {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The bytes of a model file.
fn read_model_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|cause| ModelError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

/// The model card in `json` (the metadata value of [`ONNX_CARD_KEY`], if any), parsed and
/// checked for a model.
fn card_from_json(path: &Path, json: Option<String>) -> Result<Card, ModelError> {
    let path_buf = || path.to_path_buf();
    let json = json.ok_or_else(|| ModelError::NoCard { path: path_buf() })?;
    let card = Card::from_json(&json).map_err(|e| ModelError::Card {
        path: path_buf(),
        cause: Box::new(e),
    })?;
    card.validate_for_model()
        .map_err(|problem| ModelError::CardProblem {
            path: path_buf(),
            problem,
        })?;
    Ok(card)
}

/// The model card of the ONNX file `path` whose bytes are `bytes`, read by the project's own
/// metadata reader.
fn card_in_onnx(path: &Path, bytes: &[u8]) -> Result<Card, ModelError> {
    let json =
        onnx_meta::metadata_value(bytes, ONNX_CARD_KEY).map_err(|cause| ModelError::NotOnnx {
            path: path.to_path_buf(),
            cause,
        })?;
    card_from_json(path, json)
}

/// The model card of an ONNX file written by `birdclef-export`, without an engine: what
/// `birdclef-infer kit` checks before it copies anything.
///
/// # Errors
///
/// [`ModelError`] naming the file: not a file, unreadable, not ONNX, no card or a bad one.
pub fn read_card(path: &Path) -> Result<Card, ModelError> {
    check_model_file(path)?;
    card_in_onnx(path, &read_model_file(path)?)
}

/// Check that models can be ensembled: identical labels in the same order, and frontends that cut
/// soundscapes into the same windows (sample rate and window policy). Different frontends are
/// otherwise allowed. The error names both files and the difference.
pub fn check_ensemble(models: &[OnnxModel]) -> Result<(), EnsembleError> {
    let cards: Vec<(&Path, &Card)> = models.iter().map(|m| (m.path.as_path(), &m.card)).collect();
    check_cards(&cards)
}

/// [`check_ensemble`] for any models given as (file, card), e.g. ONNX files and checkpoint
/// directories together.
pub fn check_cards(models: &[(&Path, &Card)]) -> Result<(), EnsembleError> {
    let Some(&(first_path, first)) = models.first() else {
        return Err(EnsembleError::NoModels);
    };
    for &(path, card) in &models[1..] {
        let (first_path, second) = (first_path.to_path_buf(), path.to_path_buf());
        if first.labels != card.labels {
            let difference = first
                .ensemble_mismatch(card)
                .unwrap_or_else(|| "labels differ".into());
            return Err(EnsembleError::Labels {
                first: first_path,
                second,
                difference,
            });
        }
        let (a, b) = (&first.frontend, &card.frontend);
        if a.sample_rate != b.sample_rate || a.windows != b.windows {
            return Err(EnsembleError::Windows {
                first: first_path,
                second,
                first_rate: a.sample_rate,
                first_windows: a.windows,
                second_rate: b.sample_rate,
                second_windows: b.windows,
            });
        }
        if a == b && first.input_shape != card.input_shape {
            return Err(EnsembleError::InputShapes {
                first: first_path,
                second,
                first_shape: first.input_shape,
                second_shape: card.input_shape,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::error_chain;
    use birdclef_models::frontend::FrontendConfig;

    #[test]
    fn errors_can_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<ModelError>();
        send_sync::<EnsembleError>();
        send_sync::<crate::runner::RunnerError>();
        send_sync::<crate::predict::PredictError>();
        send_sync::<crate::predict::DiscoverError>();
    }

    #[test]
    fn a_directory_or_a_missing_file_is_named_before_onnx_runtime_is_needed() {
        let dir = std::env::temp_dir();
        let e = OnnxModel::load(&dir, Engine::Ort, 1).expect_err("a directory");
        assert!(matches!(e, ModelError::Directory { .. }), "{e:?}");
        assert!(e.to_string().contains("birdclef-export"), "{e}");
        let gone = dir.join(format!("no-such-model-{}.onnx", std::process::id()));
        let e = OnnxModel::load(&gone, Engine::Openvino, 1).expect_err("missing");
        assert_eq!(
            e.to_string(),
            format!("{}: no such model file", gone.display())
        );
    }

    #[test]
    fn a_bad_card_is_named_with_its_file_and_its_problem_once() {
        let mut card = Card::frontend_only("m", FrontendConfig::nvbird224());
        card.frontend.n_mels = 0;
        let e = ModelError::Card {
            path: PathBuf::from("m.onnx"),
            cause: Box::new(Card::from_json(&card.to_json()).expect_err("invalid")),
        };
        let text = error_chain(&e);
        assert!(text.starts_with("m.onnx: model card: "), "{text}");
        assert_eq!(text.matches("n_mels must be").count(), 1, "{text}");
    }

    #[test]
    fn ensembles_are_refused_naming_both_files() {
        assert!(matches!(check_cards(&[]), Err(EnsembleError::NoModels)));
        let mut a = Card::frontend_only("a", FrontendConfig::nvbird224());
        a.labels = vec!["x".into(), "y".into()];
        let mut b = a.clone();
        b.labels.reverse();
        let (pa, pb) = (Path::new("a.onnx"), Path::new("b.onnx"));
        let e = check_cards(&[(pa, &a), (pb, &b)]).expect_err("labels");
        let text = e.to_string();
        assert!(
            text.starts_with("a.onnx and b.onnx cannot be ensembled: "),
            "{text}"
        );
        let mut c = a.clone();
        c.frontend.sample_rate = 16_000;
        let e = check_cards(&[(pa, &a), (pb, &c)]).expect_err("windows");
        assert!(matches!(e, EnsembleError::Windows { .. }), "{e:?}");
        assert!(e.to_string().contains("32000 Hz"), "{e}");
        check_cards(&[(pa, &a), (pb, &a)]).expect("the same card ensembles");
    }
}
