//! [`TrainError`]: why a top-level operation of the crate failed ([`fit`](crate::training::fit),
//! [`train_folds`](crate::training::runs::train_folds), [`pseudo_label`](crate::pseudo::pseudo_label),
//! [`merge`](crate::pseudo::merge), [`Table::read`](crate::pseudo::Table::read),
//! [`load_pseudo`](crate::pseudo::load::load_pseudo),
//! [`run_pipeline`](crate::pipeline::run_pipeline), ...).
//!
//! The errors of the lower layers are kept whole: [`ConfigError`], [`DataError`], [`NetError`],
//! [`InitError`] and those of `birdclef-models`, `birdclef-infer` and `birdclef-export` are
//! variants of their own, shown as they are. A variant that adds context (`fold 0`,
//! `teacher DIR`, `pipeline stage students`, `reading FILE`) keeps what went wrong underneath as
//! its [`source`](std::error::Error::source) and does not repeat it in its own message, so the
//! chain — what the binary prints with anyhow's `{:#}`, and what [`report`] returns — names
//! every cause once.

use std::path::PathBuf;

use birdclef_export::export::ExportError;
use birdclef_infer::postprocess::PostprocessError;
use birdclef_infer::score::ScoreError;
use birdclef_infer::shard::ShardError;
use birdclef_models::card::{CardError, CardProblem};
use birdclef_models::checkpoint::CheckpointError;
use birdclef_models::frontend::FrontendError;
use birdclef_models::fsio::OutputError;
use birdclef_models::nets::ArchError;
use birdclef_models::synth::SynthError;
use tch::TchError;

use crate::config::ConfigError;
use crate::data::metadata::DataError;
use crate::model::init::InitError;
use crate::model::net::NetError;

/// Why training, pseudo-labelling, merging or the pipeline failed. Every variant names the file,
/// directory, option or configuration key at fault (or wraps an error that does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The training configuration cannot be read or used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The training data cannot be read, cached or drawn from.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The network could not be built, run, loaded or saved (boxed: it is large).
    #[error(transparent)]
    Net(#[from] Box<NetError>),
    /// The reference input of a checkpoint could not be made.
    #[error(transparent)]
    Init(#[from] Box<InitError>),
    /// A checkpoint or tensor file could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A model card could not be read or written.
    #[error(transparent)]
    Card(#[from] CardError),
    /// An output path cannot be written (the error names it).
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A shard could not be resolved.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A checkpoint could not be exported to ONNX (boxed: it is large).
    #[error(transparent)]
    Export(#[from] Box<ExportError>),
    /// A submission could not be scored.
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// The synthetic competition could not be written.
    #[error(transparent)]
    Synth(#[from] SynthError),
    /// An ONNX teacher could not be loaded or run.
    #[error(transparent)]
    OnnxModel(#[from] Box<birdclef_infer::model::ModelError>),
    /// Teachers that cannot be ensembled (the error names both).
    #[error(transparent)]
    Ensemble(#[from] Box<birdclef_infer::model::EnsembleError>),
    /// ONNX Runtime could not be found or loaded.
    #[error(transparent)]
    Ort(#[from] Box<birdclef_infer::ort_env::OrtError>),
    /// Soundscapes could not be listed.
    #[error(transparent)]
    Discover(#[from] Box<birdclef_infer::predict::DiscoverError>),
    /// Scoring the test soundscapes failed.
    #[error(transparent)]
    Predict(#[from] Box<birdclef_infer::predict::PredictError>),

    /// A file or directory could not be read, created, listed or removed.
    #[error("{what} {path}")]
    Io {
        /// What was being done (`reading`, `creating`, ...) or the setting that names the file
        /// (`teacher.config`).
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        cause: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{what} {path}")]
    Json {
        /// `parsing` or `writing`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// serde's message.
        #[source]
        cause: serde_json::Error,
    },
    /// TOML text is not valid (syntax, or an unknown or mistyped key).
    #[error("{origin}")]
    Toml {
        /// The file, or the setting that names it.
        origin: String,
        /// The parser's message, with line and column.
        #[source]
        cause: toml::de::Error,
    },
    /// A configuration section could not be written back as TOML.
    #[error("[{section}]")]
    TomlWrite {
        /// The section (`teacher`, `student`).
        section: String,
        /// The serializer's message.
        #[source]
        cause: toml::ser::Error,
    },
    /// An HDF5 file could not be written.
    #[error("{path}: {what}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// The dataset or attribute, or the operation (`create`, `flush`).
        what: String,
        /// What the library said.
        #[source]
        cause: hdf5::Error,
    },
    /// libtorch refused an operation outside the network (moving a batch, reading outputs).
    #[error("{context}")]
    Torch {
        /// What was being done.
        context: String,
        /// libtorch's error.
        #[source]
        cause: TchError,
    },
    /// A thread pool could not be started.
    #[error("building the {what} thread pool")]
    ThreadPool {
        /// Whose pool (`batch`, `decoding`).
        what: &'static str,
        /// rayon's error.
        #[source]
        cause: rayon::ThreadPoolBuildError,
    },
    /// An output of the run cannot be written (checked before any work).
    #[error("{what}")]
    BadOutput {
        /// Which output (`the run directory (--out)`).
        what: &'static str,
        /// Why, naming the path.
        #[source]
        cause: OutputError,
    },
    /// A command-line option (or its field in the options struct) has a value that cannot work.
    #[error("{message}")]
    BadOption {
        /// The option, e.g. `--fold`.
        option: &'static str,
        /// What is wrong, naming the option.
        message: String,
    },

    /// The frontend the configuration or a teacher's card describes is invalid.
    #[error("{what}")]
    Frontend {
        /// Whose frontend (`model`, `teacher frontend`).
        what: &'static str,
        /// What is wrong.
        #[source]
        cause: FrontendError,
    },
    /// The card named by `model.card` could not be read.
    #[error("model.card {path}")]
    ModelCard {
        /// The card file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: CardError,
    },
    /// The weights named by `model.init` could not be loaded.
    #[error("model.init {path}")]
    ModelInit {
        /// The checkpoint directory.
        path: PathBuf,
        /// Why.
        #[source]
        cause: Box<NetError>,
    },
    /// `model.arch` cannot be built.
    #[error("model.arch {arch}")]
    Arch {
        /// The architecture as configured.
        arch: String,
        /// Why (boxed: it is large).
        #[source]
        cause: Box<ArchError>,
    },
    /// The card a checkpoint would carry is invalid.
    #[error("the card would be invalid")]
    CardProblem(#[source] CardProblem),
    /// The training crop and the model's input (the card's window, or its context) differ.
    #[error(
        "augment.crop_seconds = {crop_seconds} but the model's input is {window_seconds} s (the \
         window, or model.context_seconds when set); they must agree"
    )]
    CropWindow {
        /// `augment.crop_seconds`.
        crop_seconds: f64,
        /// The model's input length in seconds.
        window_seconds: f64,
    },
    /// The dataset, the fold vector and the audio store have different lengths.
    #[error(
        "{recordings} recordings, {folds} fold entries and {stored} stored audio entries: they \
         must agree"
    )]
    Sizes {
        /// Recordings of the dataset.
        recordings: usize,
        /// Fold entries.
        folds: usize,
        /// Recordings of the audio store.
        stored: usize,
    },
    /// A fold leaves nothing to train or to validate on.
    #[error(
        "fold {fold}: {train} training and {val} validation recordings; both must be non-empty"
    )]
    EmptyFold {
        /// The fold.
        fold: usize,
        /// Training recordings.
        train: usize,
        /// Validation recordings.
        val: usize,
    },
    /// A fresh run would overwrite one that is there.
    #[error("{dir} already holds a run; resume it{hint}, or choose another output directory")]
    HoldsRun {
        /// The fold directory.
        dir: PathBuf,
        /// How to resume (` (--resume)` for the command line, or nothing).
        hint: &'static str,
    },
    /// A run cannot be resumed from `dir`.
    #[error("{dir}: {reason}")]
    Resume {
        /// The run, fold or checkpoint directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The network lacks a parameter its graph lists.
    #[error("parameter {name} missing")]
    MissingParameter {
        /// The parameter's IR name.
        name: String,
    },
    /// The thread building batches stopped without sending one.
    #[error("the batch builder stopped")]
    BatchBuilder(#[source] std::sync::mpsc::RecvError),
    /// Validation outputs do not have the shape of the validation set.
    #[error("validation scores")]
    ValidationShape(#[source] ndarray::ShapeError),
    /// `history.png` could not be drawn.
    #[error("drawing {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What the plotting library said.
        reason: String,
    },
    /// Training fold `fold` failed.
    #[error("fold {fold}")]
    Fold {
        /// The fold.
        fold: usize,
        /// Why.
        #[source]
        cause: Box<TrainError>,
    },

    /// A teacher could not be loaded or run.
    #[error("teacher {path}")]
    Teacher {
        /// The checkpoint directory.
        path: PathBuf,
        /// Why.
        #[source]
        cause: Box<TrainError>,
    },
    /// A knowledge-distillation teacher that cannot teach this student.
    #[error("distill.kd_teachers {path}: {reason}")]
    KdTeacher {
        /// The teacher checkpoint.
        path: PathBuf,
        /// What does not fit (labels, frontend, a file that is not a checkpoint).
        reason: String,
    },
    /// A teacher argument names nothing usable.
    #[error("teacher {path}: {reason}")]
    TeacherPath {
        /// The argument.
        path: PathBuf,
        /// What it is not.
        reason: &'static str,
    },
    /// A teacher directory could not be listed.
    #[error("teacher {path}: cannot list the directory")]
    TeacherDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        cause: std::io::Error,
    },
    /// No teacher at all.
    #[error("no teachers given")]
    NoTeachers,
    /// A pseudo-label file is incomplete, inconsistent or does not fit the training data.
    #[error("{path}: {reason}")]
    PseudoLabels {
        /// The pseudo-label file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// HDF5 cannot read a pseudo-label file.
    #[error("{path}: not a readable pseudo-label file: {what}")]
    PseudoUnreadable {
        /// The file.
        path: PathBuf,
        /// The dataset or attribute (or `open`).
        what: String,
        /// What the library said.
        #[source]
        cause: hdf5::Error,
    },
    /// The soundscapes of a pseudo-label file could not be cached.
    #[error("the soundscapes of {path} (looked up in {dir})")]
    PseudoAudio {
        /// The pseudo-label file.
        path: PathBuf,
        /// The soundscape directory.
        dir: PathBuf,
        /// Why.
        #[source]
        cause: DataError,
    },
    /// `merge` was given no files.
    #[error("no pseudo-label files to merge")]
    NothingToMerge,
    /// Two shards come from different runs.
    #[error("{first} and {second} have different {what}; only shards of one run can be merged")]
    ShardsDiffer {
        /// The first shard.
        first: PathBuf,
        /// The shard that differs.
        second: PathBuf,
        /// `labels` or `teachers`.
        what: &'static str,
    },
    /// Two shards cut audio into different windows.
    #[error("{first} and {second} cut audio into different windows")]
    ShardWindows {
        /// The first shard.
        first: PathBuf,
        /// The shard that differs.
        second: PathBuf,
    },
    /// A soundscape is in two shards.
    #[error("soundscape {soundscape} is in both {first} and {second}")]
    SoundscapeTwice {
        /// The soundscape's file name.
        soundscape: String,
        /// The shard it was seen in first.
        first: PathBuf,
        /// The other one.
        second: PathBuf,
    },
    /// A row id is given twice.
    #[error("row id {row_id} is in both {first} and {second}{note}; every row may be merged once")]
    RowTwice {
        /// The row id.
        row_id: String,
        /// The shard it was seen in first.
        first: PathBuf,
        /// The other one (perhaps the same).
        second: PathBuf,
        /// ` (twice in one file)`, ` (the same file given twice)` or nothing.
        note: &'static str,
    },

    /// A pipeline configuration value that cannot work.
    #[error("{key} {reason}")]
    PipelineKey {
        /// The section and key, e.g. `[pseudo] batch_size`.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The pipeline file (or the embedded default) is not usable.
    #[error("{origin}")]
    PipelineFile {
        /// The file, or where the text came from.
        origin: String,
        /// Why.
        #[source]
        cause: Box<TrainError>,
    },
    /// `[data] dir` is not a competition directory.
    #[error("[data] dir {dir}: no train_metadata.csv there; is it a BirdCLEF directory?")]
    NotCompetition {
        /// The directory.
        dir: PathBuf,
    },
    /// `infer.smooth` is not a valid kernel.
    #[error("infer.smooth")]
    Smooth(#[source] PostprocessError),
    /// Test soundscapes could not be read.
    #[error(
        "{} test soundscape(s) could not be read: {}",
        reasons.len(),
        reasons.join("; ")
    )]
    TestSoundscapes {
        /// One reason per file, each naming it.
        reasons: Vec<String>,
    },
    /// A pipeline stage failed.
    #[error("pipeline stage {stage}")]
    Stage {
        /// The stage.
        stage: String,
        /// Why.
        #[source]
        cause: Box<TrainError>,
    },
}

impl From<NetError> for TrainError {
    fn from(e: NetError) -> Self {
        Self::Net(Box::new(e))
    }
}

impl From<InitError> for TrainError {
    fn from(e: InitError) -> Self {
        Self::Init(Box::new(e))
    }
}

impl From<ExportError> for TrainError {
    fn from(e: ExportError) -> Self {
        Self::Export(Box::new(e))
    }
}

impl TrainError {
    /// [`TrainError::Io`] for `path` while doing `what`.
    pub(crate) fn io(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let (what, path) = (what.into(), path.into());
        move |cause| Self::Io { what, path, cause }
    }

    /// [`TrainError::Torch`] while doing `context`.
    pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(TchError) -> Self {
        let context = context.into();
        move |cause| Self::Torch { context, cause }
    }
}

/// `error` and its causes, joined by `": "`: what the binary prints (anyhow's `{:#}`).
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_travel_between_threads_and_stay_small() {
        send_sync_static::<TrainError>();
        send_sync_static::<DataError>();
        // clippy's result_large_err limit.
        assert!(std::mem::size_of::<TrainError>() <= 128);
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        let e = TrainError::Fold {
            fold: 2,
            cause: Box::new(TrainError::io("reading", "/x/state.json")(
                std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
            )),
        };
        assert_eq!(report(&e), "fold 2: reading /x/state.json: gone");
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "fold 2: reading /x/state.json: gone"
        );
    }
}
