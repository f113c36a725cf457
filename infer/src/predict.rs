//! The submission command: soundscapes + ONNX models → Kaggle submission CSV (and detections).
//!
//! Steps: check every output path (before any decoding or model loading), find the audio files
//! (optionally one shard of them), load and check the models, run the [`runner`], ensemble the
//! models, smooth over neighbouring windows ([`combine`]), put the columns in the requested order,
//! write the CSV atomically with its row count checked, and write detections for field users.
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use birdclef_models::fsio::{self, OutputError, Target};
use ndarray::{s, Array2};
use rayon::prelude::*;

use crate::detections;
use crate::engine::{self, Engine, EngineError};
use crate::error_chain::error_chain;
use crate::model::{check_ensemble, EnsembleError, ModelError, OnnxModel};
use crate::postprocess::{ensemble, file_max, smooth, Ensemble, FileMax, Kernel, PostprocessError};
use crate::runner::{self, Failure, FileScores, RunnerConfig, RunnerError, FALLBACK_PROBABILITY};
use crate::shard::{self, ShardEnv, ShardError, ShardSpec};
use crate::submission::{column_order, write_submission, FileRows, SubmissionError};

/// Why the soundscapes could not be listed ([`discover`]). Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// An input does not exist.
    #[error("{path}: no such file or directory")]
    Missing {
        /// The input.
        path: PathBuf,
    },
    /// An input is a symbolic link that cannot be followed.
    #[error("{path}: {why}")]
    BrokenLink {
        /// The link.
        path: PathBuf,
        /// Where it points and why that cannot be read.
        why: String,
    },
    /// A directory given as an input cannot be listed.
    #[error("{path}: cannot list the directory")]
    ListDirectory {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        cause: std::io::Error,
    },
    /// Two files have the same stem, so their row ids would collide.
    #[error(
        "{first} and {second} have the same stem {stem:?}, so their row ids would collide; \
         rename one or score them in separate runs"
    )]
    SameStem {
        /// The file found first (in name order).
        first: PathBuf,
        /// The other one.
        second: PathBuf,
        /// Their stem.
        stem: String,
    },
}

/// Why the submission command failed; nothing was written. The cause names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PredictError {
    /// The soundscapes could not be listed.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    /// The shard could not be resolved.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// An output cannot be written; `flag` is the option that names it.
    #[error("{flag}")]
    Output {
        /// `--out`, `--detections` or `--raven-dir`.
        flag: &'static str,
        /// Why (it names the file).
        #[source]
        cause: OutputError,
    },
    /// `--detections` and `--out` name the same file.
    #[error(
        "--detections {detections} and --out {out} are the same file; give them different names"
    )]
    SameOutput {
        /// `--detections`.
        detections: PathBuf,
        /// `--out`.
        out: PathBuf,
    },
    /// The engine (ONNX Runtime or OpenVINO) could not be found or loaded.
    #[error(transparent)]
    Runtime(#[from] EngineError),
    /// A model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The models cannot be ensembled.
    #[error(transparent)]
    Ensemble(#[from] EnsembleError),
    /// The columns could not be decided or the submission not written.
    #[error(transparent)]
    Submission(#[from] SubmissionError),
    /// The scoring run stopped.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// The predictions could not be combined.
    #[error(transparent)]
    Postprocess(#[from] PostprocessError),
    /// A `--tta-shifts` shift is as long as the models' window or longer (its view would be
    /// another window).
    #[error(
        "--tta-shifts {shift}: a shift must be shorter than the models' {window} s window \
         (e.g. -2.5,2.5 for 5-s windows)"
    )]
    ShiftTooLong {
        /// The shift, in seconds.
        shift: f64,
        /// The model card's window length, in seconds.
        window: f64,
    },
}

/// Audio file extensions taken from a soundscape directory.
pub const AUDIO_EXTENSIONS: [&str; 5] = ["ogg", "oga", "mp3", "flac", "wav"];

/// Everything the submission command needs.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// ONNX models written by birdclef-export (an ensemble).
    pub models: Vec<PathBuf>,
    /// Soundscape files or directories (a directory contributes the audio files in it and in its
    /// subdirectories; see [`discover`]).
    pub soundscapes: Vec<PathBuf>,
    /// Submission CSV to write.
    pub out: PathBuf,
    /// Column order from a sample_submission.csv.
    pub sample_submission: Option<PathBuf>,
    /// Column order from a taxonomy.csv.
    pub taxonomy: Option<PathBuf>,
    /// How to combine the models.
    pub ensemble: Ensemble,
    /// Smoothing kernel over neighbouring windows.
    pub smooth: Option<Kernel>,
    /// Per-file scaling by each species' maximum over the file's windows (after smoothing).
    pub file_max: Option<FileMax>,
    /// Process one shard of the files.
    pub shard: Option<ShardSpec>,
    /// Detections CSV (file, start, end, species, probability).
    pub detections: Option<PathBuf>,
    /// Directory for Raven selection tables.
    pub raven_dir: Option<PathBuf>,
    /// Probability threshold for detections.
    pub threshold: f32,
    /// Workers, batch size, time limit, progress.
    pub run: RunnerConfig,
    /// The engine that runs the models.
    pub engine: Engine,
    /// Intra-op threads per model session (per worker).
    pub model_threads: usize,
    /// Explicit ONNX Runtime library (with [`Engine::Ort`]).
    pub ort_lib: Option<PathBuf>,
    /// Explicit OpenVINO library or its directory (with [`Engine::Openvino`]).
    pub openvino_lib: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug)]
pub struct PredictSummary {
    /// Files scored (in this shard).
    pub files: usize,
    /// Rows written.
    pub rows: usize,
    /// Files whose rows are partly or wholly fallback values, with the reason.
    pub failures: Vec<(PathBuf, Failure)>,
    /// Entries of the soundscape directories that could not be read at all (dangling symbolic
    /// links, unlistable subdirectories), with why (not repeating the path): no rows. Reported
    /// by the first shard only, so that merged shards list each once.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Extra outputs (`--detections`, `--raven-dir`) that could not be written after the
    /// submission was: each error names its file.
    pub unwritten: Vec<String>,
    /// Seconds of audio decoded.
    pub audio_seconds: f64,
    /// Wall time.
    pub elapsed: Duration,
    /// Windows inferred.
    pub windows: usize,
    /// Warnings to show the user (unknown species, non-finite values, ...).
    pub warnings: Vec<String>,
}

/// What [`discover`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    /// The audio files, sorted by name (then path).
    pub files: Vec<PathBuf>,
    /// Entries under the given directories that could not be looked at, sorted, each with why
    /// (the reason does not repeat the path): dangling symbolic links (they may have named audio
    /// or a directory of it), subdirectories that cannot be listed, entries whose type cannot be
    /// read, special files with an audio extension. They give no rows; callers report them as
    /// failed.
    pub unreadable: Vec<(PathBuf, String)>,
}

fn is_audio(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Why `path`, a symbolic link that cannot be followed, cannot.
fn broken_link(path: &Path, cause: &std::io::Error) -> String {
    let to = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into());
    if cause.kind() == std::io::ErrorKind::NotFound {
        format!("a dangling symbolic link: its target {to} does not exist")
    } else {
        format!("a symbolic link to {to} that cannot be followed: {cause}")
    }
}

/// Add the audio files under `dir` (links followed, each directory listed once) to `found`.
fn walk(dir: &Path, found: &mut Discovered, seen: &mut HashSet<(u64, u64)>) {
    let unlistable = |found: &mut Discovered, e: std::io::Error| {
        found
            .unreadable
            .push((dir.to_path_buf(), format!("cannot list the directory: {e}")));
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return unlistable(found, e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return unlistable(found, e),
        };
        let path = entry.path();
        // Links are followed; one that leads nowhere is reported, not skipped.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
                let why = if is_link {
                    broken_link(&path, &e)
                } else {
                    format!("cannot read its type: {e}")
                };
                found.unreadable.push((path, why));
                continue;
            }
        };
        if meta.is_dir() {
            if seen.insert((meta.dev(), meta.ino())) {
                walk(&path, found, seen);
            }
        } else if is_audio(&path) {
            if meta.is_file() {
                found.files.push(path);
            } else {
                found.unreadable.push((
                    path,
                    "not a regular file (a device, FIFO or socket), not read".into(),
                ));
            }
        }
    }
}

/// The audio files named by `inputs`: files, and the audio files (by extension,
/// [`AUDIO_EXTENSIONS`]) in directories and all their subdirectories, symbolic links followed,
/// sorted by name. Row ids are `<file stem>_<end second>` whatever the folder, so two files with
/// the same stem (in one folder or in two) are an error naming both. Entries that cannot be read
/// are returned in [`Discovered::unreadable`], not skipped silently.
///
/// # Errors
///
/// An input that does not exist (or is a dangling link) or a directory given as an input that
/// cannot be listed; two files with the same stem.
pub fn discover(inputs: &[PathBuf]) -> Result<Discovered, DiscoverError> {
    let mut found = Discovered::default();
    let mut seen = HashSet::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(m) if m.is_dir() => {
                std::fs::read_dir(input).map_err(|cause| DiscoverError::ListDirectory {
                    path: input.clone(),
                    cause,
                })?;
                if seen.insert((m.dev(), m.ino())) {
                    walk(input, &mut found, &mut seen);
                }
            }
            Ok(_) => found.files.push(input.clone()),
            Err(e) => {
                if std::fs::symlink_metadata(input).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(DiscoverError::BrokenLink {
                        path: input.clone(),
                        why: broken_link(input, &e),
                    });
                }
                return Err(DiscoverError::Missing {
                    path: input.clone(),
                });
            }
        }
    }
    let mut files = found.files;
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then(a.cmp(b)));
    files.dedup();
    let mut seen_stems: HashMap<String, &Path> = HashMap::new();
    for f in &files {
        let stem = stem_of(f);
        if let Some(other) = seen_stems.insert(stem.clone(), f) {
            return Err(DiscoverError::SameStem {
                first: other.to_path_buf(),
                second: f.clone(),
                stem,
            });
        }
    }
    found.unreadable.sort();
    found.unreadable.dedup();
    Ok(Discovered {
        files,
        unreadable: found.unreadable,
    })
}

/// The file name without directory and extension: the first part of its row ids.
pub fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether two checked outputs land in the same regular file.
fn same_target(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::File(x), Target::File(y)) => {
            let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            abs(x) == abs(y) || fsio::same_file(x, y)
        }
        _ => false,
    }
}

/// Check every output of the run before any work: each can be written, none is one of the
/// run's inputs (`inputs`), no two are the same file. The Raven tables of `stems` are checked
/// where `--raven-dir` already exists.
fn check_outputs(
    opts: &PredictOptions,
    inputs: &[&Path],
    stems: &[String],
) -> Result<(), PredictError> {
    let flagged = |flag| move |cause| PredictError::Output { flag, cause };
    let out = fsio::check_output_file(&opts.out).map_err(flagged("--out"))?;
    fsio::refuse_overwriting(&opts.out, inputs.iter().copied()).map_err(flagged("--out"))?;
    if let Some(det) = &opts.detections {
        let target = fsio::check_output_file(det).map_err(flagged("--detections"))?;
        fsio::refuse_overwriting(det, inputs.iter().copied()).map_err(flagged("--detections"))?;
        if same_target(&out, &target) {
            return Err(PredictError::SameOutput {
                detections: det.clone(),
                out: opts.out.clone(),
            });
        }
    }
    if let Some(dir) = &opts.raven_dir {
        fsio::check_output_dir(dir).map_err(flagged("--raven-dir"))?;
        if dir.is_dir() {
            for stem in stems {
                let table = dir.join(format!("{stem}{}", detections::RAVEN_SUFFIX));
                fsio::check_output_file(&table).map_err(flagged("--raven-dir"))?;
                fsio::refuse_overwriting(&table, inputs.iter().copied())
                    .map_err(flagged("--raven-dir"))?;
            }
        }
    }
    Ok(())
}

/// Windows of `f` that hold real predictions: all of them, or for a failed file those decoded
/// before the failure (always its first windows; the rest are fallback windows).
pub fn real_windows(f: &FileScores) -> usize {
    f.failure
        .as_ref()
        .map_or(f.windows, |x| x.decoded_windows.min(f.windows))
}

/// Every file's `[windows × labels]` probabilities after post-processing: the models of the
/// ensemble combined `how` over the real windows of the whole run (rank ensembling ranks those
/// only), then each file smoothed with `kernel` over its own real windows, as a recording that
/// ends with its last decoded window, then scaled by its own maxima (`file_max`, over those
/// windows). A failed file's fallback windows (those after its decoded ones, see
/// [`real_windows`]) take part in none of it: they are not smoothed, not neighbours of real
/// windows, not in a maximum, and hold exactly [`FALLBACK_PROBABILITY`].
///
/// `files[i].probs` is `windows × n_models × k`, row-major (as [`runner::run`] returns it).
///
/// # Errors
///
/// As [`ensemble`] and [`smooth`].
pub fn combine(
    files: &[FileScores],
    n_models: usize,
    k: usize,
    how: Ensemble,
    kernel: Option<&Kernel>,
    file_max_how: Option<FileMax>,
) -> Result<Vec<Array2<f32>>, PostprocessError> {
    let real: Vec<usize> = files.iter().map(real_windows).collect();
    // Per model, the real rows of every file stacked, so rank ensembling sees all of them.
    let total: usize = real.iter().sum();
    let mut per_model: Vec<Array2<f32>> = vec![Array2::zeros((total, k)); n_models];
    let mut row = 0;
    for (f, &r) in files.iter().zip(&real) {
        for w in 0..r {
            for (m, matrix) in per_model.iter_mut().enumerate() {
                let at = (w * n_models + m) * k;
                if let Some(src) = f.probs.get(at..at + k) {
                    matrix
                        .row_mut(row + w)
                        .iter_mut()
                        .zip(src)
                        .for_each(|(d, &v)| *d = v);
                }
            }
        }
        row += r;
    }
    let combined = if total == 0 {
        Array2::zeros((0, k))
    } else {
        ensemble(&per_model, how)?
    };
    let mut row = 0;
    let mut out = Vec::with_capacity(files.len());
    for (f, &r) in files.iter().zip(&real) {
        let mut head = combined.slice(s![row..row + r, ..]).to_owned();
        row += r;
        if let Some(kernel) = kernel {
            smooth(&mut head, kernel.weights())?;
        }
        if let Some(how) = file_max_how {
            file_max(&mut head, how);
        }
        let mut probs = Array2::from_elem((f.windows, k), FALLBACK_PROBABILITY);
        probs.slice_mut(s![..r, ..]).assign(&head);
        out.push(probs);
    }
    Ok(out)
}

/// Run the submission command.
///
/// Every output is checked before any work. Errors writing `--detections` or `--raven-dir`
/// after the submission was written do not fail the call: they are in
/// [`PredictSummary::unwritten`].
pub fn predict(opts: &PredictOptions) -> Result<PredictSummary, PredictError> {
    let mut warnings = Vec::new();
    let found = discover(&opts.soundscapes)?;
    let shard = opts
        .shard
        .as_ref()
        .map(|spec| spec.resolve(&ShardEnv::from_process_env()))
        .transpose()?;
    let files = match shard {
        Some(shard) => {
            if opts.ensemble == Ensemble::Rank && shard.n > 1 {
                warnings.push(format!(
                    "--ensemble rank ranks within this shard ({shard}) only; shards are ranked separately"
                ));
            }
            shard::select(&found.files, shard)
        }
        None => found.files.clone(),
    };
    // Entries without rows belong to no shard: the first one reports them.
    let unreadable = if shard.is_none_or(|s| s.k == 0) {
        found.unreadable.clone()
    } else {
        Vec::new()
    };
    let mut inputs: Vec<&Path> = opts.models.iter().map(PathBuf::as_path).collect();
    inputs.extend(opts.sample_submission.as_deref());
    inputs.extend(opts.taxonomy.as_deref());
    inputs.extend(opts.ort_lib.as_deref());
    inputs.extend(opts.openvino_lib.as_deref());
    inputs.extend(found.files.iter().map(PathBuf::as_path));
    let stems: Vec<String> = files.iter().map(|f| stem_of(f)).collect();
    check_outputs(opts, &inputs, &stems)?;

    let lib = match opts.engine {
        Engine::Ort => opts.ort_lib.as_deref(),
        Engine::Openvino => opts.openvino_lib.as_deref(),
    };
    engine::init(opts.engine, lib)?;
    // Every batch the runner makes holds at most `batch_size` windows: OpenVINO compiles for it.
    let batch = Some(opts.run.batch_size.max(1));
    let load = |p: &PathBuf| OnnxModel::load_for_batch(p, opts.engine, opts.model_threads, batch);
    let load_set = || opts.models.iter().map(load).collect::<Result<Vec<_>, _>>();
    // The first worker's models are loaded in parallel: nothing else can run before they exist
    // (they carry the cards); an ONNX Runtime session takes ~40-80 ms of a core to build, an
    // OpenVINO compilation ~0.3 s. The other workers load their own in their threads.
    let first = opts
        .models
        .par_iter()
        .map(load)
        .collect::<Result<Vec<_>, _>>()?;
    check_ensemble(&first)?;
    let window = first[0].card.frontend.windows.window_seconds;
    if let Some(&shift) = opts.run.tta_shifts.iter().find(|s| s.abs() >= window) {
        return Err(PredictError::ShiftTooLong { shift, window });
    }
    let labels = first[0].card.labels.clone();
    let frontend = first[0].card.frontend.clone();
    let columns = column_order(
        &labels,
        opts.sample_submission.as_deref(),
        opts.taxonomy.as_deref(),
    )?;
    if !columns.unknown.is_empty() {
        warnings.push(format!(
            "{} species are not known to the models and get 0: {}",
            columns.unknown.len(),
            preview(&columns.unknown)
        ));
    }
    if !columns.unused_labels.is_empty() {
        warnings.push(format!(
            "{} model labels are not submission columns and are dropped: {}",
            columns.unused_labels.len(),
            preview(&columns.unused_labels)
        ));
    }
    if files.is_empty() {
        warnings.push("no audio files to score: the submission has the header only".into());
    }

    let out = runner::run(&files, first, load_set, &opts.run)?;
    warnings.extend(out.warnings.iter().cloned());
    let total_rows: usize = out.files.iter().map(|f| f.windows).sum();
    let combined = combine(
        &out.files,
        out.models,
        out.classes,
        opts.ensemble,
        opts.smooth.as_ref(),
        opts.file_max,
    )?;

    let window_seconds = frontend.windows.window_seconds;
    let mut rows_out = Vec::with_capacity(out.files.len());
    for (f, probs) in out.files.iter().zip(combined) {
        rows_out.push(FileRows {
            stem: stem_of(&f.path),
            end_seconds: (0..f.windows)
                .map(|i| frontend.window_end_seconds(i).round() as u64)
                .collect(),
            probs: columns.select(probs.view())?,
        });
    }
    let report = write_submission(&opts.out, &columns.names, &rows_out, total_rows)?;
    if report.non_finite > 0 {
        warnings.push(format!(
            "{} non-finite probabilities were written as 0",
            report.non_finite
        ));
    }
    // The submission is written: what fails from here on is reported, not fatal.
    let mut unwritten = Vec::new();
    if opts.detections.is_some() || opts.raven_dir.is_some() {
        match detections::detections(&rows_out, &columns.names, window_seconds, opts.threshold) {
            Ok(found) => {
                if let Some(path) = &opts.detections {
                    if let Err(e) = detections::write_csv(path, &found) {
                        unwritten.push(format!("--detections: {}", error_chain(&e)));
                    }
                }
                if let Some(dir) = &opts.raven_dir {
                    let stems: Vec<String> = rows_out.iter().map(|r| r.stem.clone()).collect();
                    if let Err(e) = detections::write_raven_tables(
                        dir,
                        &stems,
                        &found,
                        frontend.fmin,
                        frontend.fmax,
                    ) {
                        unwritten.push(format!("--raven-dir: {}", error_chain(&e)));
                    }
                }
            }
            Err(e) => unwritten.push(format!("detections: {}", error_chain(&e))),
        }
    }
    let failures = out
        .files
        .iter()
        .filter_map(|f| f.failure.clone().map(|fail| (f.path.clone(), fail)))
        .collect();
    Ok(PredictSummary {
        files: out.files.len(),
        rows: report.rows,
        failures,
        unreadable,
        unwritten,
        audio_seconds: out.files.iter().map(|f| f.seconds).sum(),
        elapsed: out.elapsed,
        windows: out.windows_inferred,
        warnings,
    })
}

fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    if names.len() > shown.len() {
        format!("{}, ...", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("predict-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"x").expect("write");
    }

    #[test]
    fn discovery_recurses_and_reports_what_it_cannot_read() {
        let d = scratch("discover");
        touch(&d.join("top.wav"));
        touch(&d.join("site1/a.ogg"));
        touch(&d.join("site1/deep/b.FLAC"));
        touch(&d.join("site2/notes.txt"));
        std::os::unix::fs::symlink("gone.wav", d.join("site2/dangling.wav")).expect("link");
        std::os::unix::fs::symlink("loop.mp3", d.join("site2/loop.mp3")).expect("link");
        // A link back to the top: each directory is listed once.
        std::os::unix::fs::symlink("..", d.join("site1/up")).expect("link");
        let found = discover(std::slice::from_ref(&d)).expect("discover");
        assert_eq!(
            found.files,
            [
                d.join("site1/a.ogg"),
                d.join("site1/deep/b.FLAC"),
                d.join("top.wav")
            ]
        );
        let broken: Vec<&Path> = found.unreadable.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            broken,
            [d.join("site2/dangling.wav"), d.join("site2/loop.mp3")]
        );
        assert!(
            found.unreadable[0].1.contains("dangling")
                && found.unreadable[0].1.contains("gone.wav"),
            "{:?}",
            found.unreadable
        );
        assert!(
            found.unreadable[1].1.contains("cannot be followed"),
            "{:?}",
            found.unreadable
        );

        // The same stem in two folders would give the same row ids: an error naming both.
        touch(&d.join("site2/a.wav"));
        let e = discover(std::slice::from_ref(&d))
            .expect_err("collision")
            .to_string();
        assert!(
            e.contains("site1/a.ogg") && e.contains("site2/a.wav"),
            "{e}"
        );
        // A dangling link given as an input is an error naming it.
        let e = discover(&[d.join("site2/dangling.wav")])
            .expect_err("dangling input")
            .to_string();
        assert!(e.contains("dangling.wav") && e.contains("gone.wav"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }

    /// A file of `windows` rows from `probs` (`windows × models × classes`); `decoded` set when
    /// it failed after that many windows.
    fn scores(name: &str, windows: usize, decoded: Option<usize>, probs: Vec<f32>) -> FileScores {
        FileScores {
            path: PathBuf::from(name),
            probs,
            windows,
            failure: decoded.map(|d| Failure {
                reason: format!("{name}: truncated"),
                decoded_windows: d,
            }),
            seconds: 0.0,
        }
    }

    #[test]
    fn fallback_windows_stay_zero_and_out_of_smoothing() {
        // One model, one class. The good file: 0.2, 0.4, 0.6. The truncated file: 3 decoded
        // windows 0.3, 0.6, 0.9, then 2 fallback windows (0.0 from the runner).
        let good = scores("good.wav", 3, None, vec![0.2, 0.4, 0.6]);
        let cut = scores("cut.wav", 5, Some(3), vec![0.3, 0.6, 0.9, 0.0, 0.0]);
        let skipped = scores("skipped.wav", 1, Some(0), vec![0.0]);
        let files = [good, cut, skipped];
        let kernel: Kernel = "1,1,1".parse().expect("kernel");
        let out = combine(&files, 1, 1, Ensemble::Mean, Some(&kernel), None).expect("combine");
        let close = |a: &Array2<f32>, b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
        };
        assert!(close(&out[0], &[0.3, 0.4, 0.5]), "{}", out[0]);
        // The last decoded window is an edge: (0.6 + 0.9) / 2, not (0.6 + 0.9 + 0) / 3.
        assert!(close(&out[1], &[0.45, 0.6, 0.75, 0.0, 0.0]), "{}", out[1]);
        assert_eq!(out[1][[3, 0]], FALLBACK_PROBABILITY);
        assert_eq!(out[1][[4, 0]], FALLBACK_PROBABILITY);
        assert_eq!(out[2], array![[FALLBACK_PROBABILITY]]);

        // Geometric mean of two models: the floor 1e-7 never reaches a fallback window.
        let two = [
            scores("a.wav", 2, None, vec![0.25, 1.0, 0.5, 0.5]),
            scores("b.wav", 3, Some(1), vec![0.04, 1.0, 0.0, 0.0, 0.0, 0.0]),
        ];
        let out = combine(&two, 2, 1, Ensemble::Geometric, None, None).expect("combine");
        assert!(close(&out[0], &[0.5, 0.5]), "{}", out[0]);
        assert!((out[1][[0, 0]] - 0.2).abs() < 1e-6, "{}", out[1]);
        assert_eq!(out[1][[1, 0]], 0.0);
        assert_eq!(out[1][[2, 0]], 0.0);

        // Rank: fallback windows are not ranked (the real ones spread over [0, 1]) and stay 0.
        let ranked = [
            scores("a.wav", 2, None, vec![0.1, 0.9]),
            scores("b.wav", 2, Some(1), vec![0.5, 0.0]),
        ];
        let out = combine(&ranked, 1, 1, Ensemble::Rank, None, None).expect("combine");
        assert_eq!(out[0], array![[0.0f32], [1.0]]);
        assert_eq!(out[1], array![[0.5f32], [0.0]]);

        // File maxima come from the real windows only, after smoothing; fallback rows stay 0.
        let out = combine(
            &files,
            1,
            1,
            Ensemble::Mean,
            Some(&kernel),
            Some(FileMax::Multiply(1.0)),
        )
        .expect("combine");
        assert!(
            close(&out[0], &[0.3 * 0.5, 0.4 * 0.5, 0.5 * 0.5]),
            "{}",
            out[0]
        );
        assert!(
            close(&out[1], &[0.45 * 0.75, 0.6 * 0.75, 0.75 * 0.75, 0.0, 0.0]),
            "{}",
            out[1]
        );
        let out =
            combine(&files, 1, 1, Ensemble::Min, None, Some(FileMax::Blend(0.5))).expect("combine");
        assert!(close(&out[1], &[0.6, 0.75, 0.9, 0.0, 0.0]), "{}", out[1]);
        assert_eq!(out[2], array![[FALLBACK_PROBABILITY]]);
    }
}
