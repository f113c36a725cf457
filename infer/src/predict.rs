//! The submission command: soundscapes + ONNX models → Kaggle submission CSV (and detections).
//!
//! Steps: find the audio files (optionally one shard of them), load and check the models, run the
//! [`runner`], ensemble the models, smooth over neighbouring windows, put the
//! columns in the requested order, write the CSV atomically with its row count checked, and write
//! detections for field users.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ndarray::{s, Array2};
use rayon::prelude::*;

use crate::detections;
use crate::model::{check_ensemble, OnnxModel};
use crate::ort_env;
use crate::postprocess::{ensemble, smooth, Ensemble, Kernel};
use crate::runner::{self, Failure, RunConfig};
use crate::shard::{self, ShardEnv, ShardSpec};
use crate::submission::{column_order, write_submission, FileRows};

/// Audio file extensions taken from a soundscape directory.
pub const AUDIO_EXTENSIONS: [&str; 5] = ["ogg", "oga", "mp3", "flac", "wav"];

/// Everything the submission command needs.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// ONNX models written by birdclef-export (an ensemble).
    pub models: Vec<PathBuf>,
    /// Soundscape files or directories (a directory contributes its audio files, not recursively).
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
    /// Process one shard of the files.
    pub shard: Option<ShardSpec>,
    /// Detections CSV (file, start, end, species, probability).
    pub detections: Option<PathBuf>,
    /// Directory for Raven selection tables.
    pub raven_dir: Option<PathBuf>,
    /// Probability threshold for detections.
    pub threshold: f32,
    /// Workers, batch size, time limit, progress.
    pub run: RunConfig,
    /// ONNX Runtime intra-op threads per session.
    pub ort_threads: usize,
    /// Explicit ONNX Runtime library.
    pub ort_lib: Option<PathBuf>,
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
    /// Seconds of audio decoded.
    pub audio_seconds: f64,
    /// Wall time.
    pub elapsed: Duration,
    /// Windows inferred.
    pub windows: usize,
    /// Warnings to show the user (unknown species, non-finite values, ...).
    pub warnings: Vec<String>,
}

/// The audio files named by `inputs` (files, or directories searched one level deep), sorted by
/// name. Two files with the same stem would give the same row ids: that is an error.
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input)
                .with_context(|| format!("{}: cannot list the directory", input.display()))?;
            for entry in entries {
                let path = entry
                    .with_context(|| format!("{}: cannot list the directory", input.display()))?
                    .path();
                let audio = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
                if audio && path.is_file() {
                    files.push(path);
                }
            }
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            bail!("{}: no such file or directory", input.display());
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then(a.cmp(b)));
    files.dedup();
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for f in &files {
        let stem = stem_of(f);
        if let Some(other) = seen.insert(stem.clone(), f) {
            bail!(
                "{} and {} have the same stem {stem:?}, so their row ids would collide",
                other.display(),
                f.display()
            );
        }
    }
    Ok(files)
}

/// The file name without directory and extension: the first part of its row ids.
pub fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Run the submission command.
pub fn predict(opts: &PredictOptions) -> Result<PredictSummary> {
    ort_env::init(opts.ort_lib.as_deref())?;
    let mut warnings = Vec::new();
    let all = discover(&opts.soundscapes)?;
    let files = match &opts.shard {
        Some(spec) => {
            let shard = spec.resolve(&ShardEnv::from_process_env())?;
            if opts.ensemble == Ensemble::Rank && shard.n > 1 {
                warnings.push(format!(
                    "--ensemble rank ranks within this shard ({shard}) only; shards are ranked separately"
                ));
            }
            shard::select(&all, shard)
        }
        None => all,
    };
    let load = |p: &PathBuf| OnnxModel::load(p, opts.ort_threads);
    let load_set = || opts.models.iter().map(load).collect::<Result<Vec<_>>>();
    // The first worker's sessions are built in parallel: nothing else can run before they exist
    // (they carry the cards), and building one takes ~40 ms of a core per model.
    let first = opts
        .models
        .par_iter()
        .map(load)
        .collect::<Result<Vec<_>>>()?;
    check_ensemble(&first)?;
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
    let (n_models, k) = (out.models, out.classes);

    // Per model, every file's rows stacked, so rank ensembling sees all rows of the run.
    let total_rows: usize = out.files.iter().map(|f| f.windows).sum();
    let mut per_model: Vec<Array2<f32>> = vec![Array2::zeros((total_rows, k)); n_models];
    let mut row = 0;
    for f in &out.files {
        for w in 0..f.windows {
            for (m, matrix) in per_model.iter_mut().enumerate() {
                let src = &f.probs[(w * n_models + m) * k..(w * n_models + m + 1) * k];
                matrix
                    .row_mut(row + w)
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = v);
            }
        }
        row += f.windows;
    }
    let combined = if total_rows == 0 {
        Array2::zeros((0, k))
    } else {
        ensemble(&per_model, opts.ensemble)?
    };

    let window_seconds = frontend.windows.window_seconds;
    let mut rows_out = Vec::with_capacity(out.files.len());
    let mut row = 0;
    for f in &out.files {
        let mut probs = combined.slice(s![row..row + f.windows, ..]).to_owned();
        row += f.windows;
        if let Some(kernel) = &opts.smooth {
            smooth(&mut probs, kernel.weights())?;
        }
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
    if opts.detections.is_some() || opts.raven_dir.is_some() {
        let found =
            detections::detections(&rows_out, &columns.names, window_seconds, opts.threshold)?;
        if let Some(path) = &opts.detections {
            detections::write_csv(path, &found)?;
        }
        if let Some(dir) = &opts.raven_dir {
            let stems: Vec<String> = rows_out.iter().map(|r| r.stem.clone()).collect();
            detections::write_raven_tables(dir, &stems, &found, frontend.fmin, frontend.fmax)?;
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
