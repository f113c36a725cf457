//! Checkpoint → verified ONNX file.
//!
//! [`export_checkpoint`] reads a checkpoint directory (see `birdclef_models::checkpoint`), emits
//! its graph with its weights and card, writes the bytes to a temporary file (an [`AtomicFile`]:
//! beside the target with links followed, or in the temporary directory when the target is a
//! device or FIFO), runs that file in ONNX Runtime on the checkpoint's reference batch and puts it
//! in place only if every output is within the tolerance of the stored reference output. On any
//! failure the temporary file is removed and the target is left as it was.

use std::path::{Path, PathBuf};

use birdclef_models::checkpoint::{Checkpoint, CheckpointError, NamedTensor, CARD_FILE};
use birdclef_models::fsio::{self, AtomicFile};

use crate::emit::{self, EmitError};
use crate::ort_run::{OrtModel, RunError};

/// The default bound on `|ONNX Runtime − reference| / max(1, |reference|)` for every output:
/// 1e-4 absolute for logits within ±1, 1e-4 relative beyond (trained models emit logits of
/// −10 to −20 for absent species, where float32 drift through a deep network exceeds 1e-4).
pub const DEFAULT_TOLERANCE: f32 = 1e-4;

/// Settings of an export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Largest accepted absolute difference between an ONNX Runtime output and the reference.
    pub tolerance: f32,
    /// `--ort-lib`: the ONNX Runtime library to load (else the usual search).
    pub ort_lib: Option<PathBuf>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            tolerance: DEFAULT_TOLERANCE,
            ort_lib: None,
        }
    }
}

/// A written and verified ONNX file.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The checkpoint directory it came from.
    pub checkpoint: PathBuf,
    /// The ONNX file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Largest `|ONNX Runtime − reference|` over the reference batch.
    pub max_abs_diff: f32,
    /// Largest `|ONNX Runtime − reference| / max(1, |reference|)`.
    pub scaled_diff: f32,
    /// The tolerance it was checked against.
    pub tolerance: f32,
    /// Shape of the reference output, `[batch, classes]`.
    pub output_shape: Vec<usize>,
}

/// Why a checkpoint was not exported. Every variant names the checkpoint directory.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint directory does not exist.
    #[error(
        "checkpoint {dir}: no such directory (a checkpoint is a directory with card.json, \
         weights.safetensors and reference.safetensors)"
    )]
    NoDirectory {
        /// The path given.
        dir: PathBuf,
    },
    /// The checkpoint cannot be read (card, weights, architecture).
    #[error("checkpoint {dir}")]
    Checkpoint {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The cause, naming the file.
        #[source]
        cause: CheckpointError,
    },
    /// The reference batch is unusable.
    #[error("checkpoint {dir}: reference batch: {reason}")]
    Reference {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The graph could not be emitted.
    #[error("checkpoint {dir}: cannot write ONNX")]
    Emit {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        cause: EmitError,
    },
    /// ONNX Runtime could not be loaded or refused the model.
    #[error("checkpoint {dir}")]
    Run {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        cause: RunError,
    },
    /// The exported model does not reproduce the reference output.
    #[error(
        "checkpoint {dir}: verification failed: at output {at:?} of {shape:?} ONNX Runtime gives \
         {got} and the reference {want}, a difference of {scaled_diff:.3e} relative to \
         max(1, |reference|), more than the tolerance {tolerance:.1e} (largest absolute \
         difference {max_abs_diff:.3e}); nothing was written to {out}"
    )]
    Mismatch {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The target file (not written).
        out: PathBuf,
        /// Largest absolute difference (infinite when a value is NaN or the shapes differ).
        max_abs_diff: f32,
        /// Largest `|difference| / max(1, |reference|)`, the checked quantity.
        scaled_diff: f32,
        /// The tolerance.
        tolerance: f32,
        /// Index `[row, class]` of the largest scaled difference.
        at: Vec<usize>,
        /// Output shape.
        shape: Vec<usize>,
        /// ONNX Runtime's value there.
        got: f32,
        /// The reference value there.
        want: f32,
    },
    /// Writing or renaming the file failed.
    #[error("checkpoint {dir}: {path}")]
    Io {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The output file cannot be written (a directory, a missing directory, an input).
    #[error("checkpoint {dir}")]
    Output {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The cause, naming the output.
        #[source]
        cause: birdclef_models::fsio::OutputError,
    },
    /// A run directory ([`checkpoints_in_run`]) cannot be listed.
    #[error("run directory {dir}")]
    RunDirectory {
        /// The run directory.
        dir: PathBuf,
        /// The operating system's error.
        #[source]
        cause: std::io::Error,
    },
    /// A run directory holds no checkpoint.
    #[error(
        "run directory {dir}: no subdirectory holds a {CARD_FILE} (expected one checkpoint \
         directory per fold, e.g. {dir}/fold0/{CARD_FILE} or fold0/best/{CARD_FILE})"
    )]
    NoCheckpoints {
        /// The run directory.
        dir: PathBuf,
    },
    /// No output file name can be made from a checkpoint path ([`output_path`]).
    #[error("{checkpoint}: cannot name an output after this checkpoint path")]
    Unnamed {
        /// The checkpoint path.
        checkpoint: PathBuf,
    },
    /// Two checkpoints would be written to the same file ([`plan_outputs`]).
    #[error(
        "checkpoints {first} and {second} would both be written to {out}; export them into \
         different --out-dir directories"
    )]
    SameOutput {
        /// The first checkpoint.
        first: PathBuf,
        /// The other one.
        second: PathBuf,
        /// The file both would write.
        out: PathBuf,
    },
}

/// The largest `|a − b| / max(1, |b|)` and where; NaN anywhere counts as infinite.
pub fn max_scaled_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs() / y.abs().max(1.0);
        let d = if d.is_nan() { f32::INFINITY } else { d };
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

/// The largest `|a − b|` and where; NaN anywhere counts as an infinite difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

/// Check, before any work, that `out` can be written as the export of the checkpoint `dir`:
/// a file whose directory exists (or can be created: its first existing ancestor is a
/// directory), not a directory, and none of the checkpoint's files.
///
/// # Errors
///
/// [`ExportError::Output`] naming the output and what is wrong.
pub fn check_output(dir: &Path, out: &Path) -> Result<(), ExportError> {
    let output = |cause| ExportError::Output {
        dir: dir.to_path_buf(),
        cause,
    };
    match out.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The directory is created by the export.
        Some(parent) if std::fs::metadata(parent).is_err() => {
            fsio::check_output_dir(parent).map_err(output)?;
        }
        _ => {
            fsio::check_output_file(out).map_err(output)?;
        }
    }
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    fsio::refuse_overwriting(out, files.iter().map(PathBuf::as_path)).map_err(output)
}

/// Export the checkpoint in `dir` to `out`, verified; see the module documentation. `out` is
/// checked ([`check_output`]) before the checkpoint is read.
pub fn export_checkpoint(
    dir: &Path,
    out: &Path,
    opts: &ExportOptions,
) -> Result<Exported, ExportError> {
    if !dir.is_dir() {
        return Err(ExportError::NoDirectory {
            dir: dir.to_path_buf(),
        });
    }
    check_output(dir, out)?;
    let ckpt = Checkpoint::open(dir).map_err(|cause| ExportError::Checkpoint {
        dir: dir.to_path_buf(),
        cause,
    })?;
    let (input, reference) = ckpt.reference().map_err(|cause| ExportError::Checkpoint {
        dir: dir.to_path_buf(),
        cause,
    })?;
    check_reference(&ckpt, &input, &reference)?;
    let bytes = emit::emit(&ckpt.graph, &ckpt.weights, Some(&ckpt.card)).map_err(|cause| {
        ExportError::Emit {
            dir: dir.to_path_buf(),
            cause,
        }
    })?;

    let io = |path: &Path, cause| ExportError::Io {
        dir: dir.to_path_buf(),
        path: path.to_path_buf(),
        cause,
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let tmp = AtomicFile::new(out).map_err(|cause| ExportError::Output {
        dir: dir.to_path_buf(),
        cause,
    })?;
    std::fs::write(tmp.path(), &bytes).map_err(|e| io(tmp.path(), e))?;

    // Verify the file as written, with the runtime that will score with it.
    let run_err = |cause| ExportError::Run {
        dir: dir.to_path_buf(),
        cause,
    };
    let mut model = OrtModel::from_file(tmp.path(), opts.ort_lib.as_deref()).map_err(run_err)?;
    let got = model.run(&input).map_err(run_err)?;
    drop(model);
    let ((diff, _), (scaled, at)) = if got.shape == reference.shape {
        (
            max_abs_diff(&got.data, &reference.data),
            max_scaled_diff(&got.data, &reference.data),
        )
    } else {
        ((f32::INFINITY, 0), (f32::INFINITY, 0))
    };
    if scaled > opts.tolerance || opts.tolerance.is_nan() {
        let classes = reference.shape.get(1).copied().unwrap_or(1).max(1);
        return Err(ExportError::Mismatch {
            dir: dir.to_path_buf(),
            out: out.to_path_buf(),
            max_abs_diff: diff,
            scaled_diff: scaled,
            tolerance: opts.tolerance,
            at: vec![at / classes, at % classes],
            shape: got.shape.clone(),
            got: got.data.get(at).copied().unwrap_or(f32::NAN),
            want: reference.data.get(at).copied().unwrap_or(f32::NAN),
        });
    }
    tmp.commit().map_err(|cause| ExportError::Output {
        dir: dir.to_path_buf(),
        cause,
    })?;
    Ok(Exported {
        checkpoint: dir.to_path_buf(),
        path: out.to_path_buf(),
        bytes: bytes.len() as u64,
        max_abs_diff: diff,
        scaled_diff: scaled,
        tolerance: opts.tolerance,
        output_shape: reference.shape,
    })
}

/// The reference batch must be `[B, C, H, W]` as the card says and `[B, classes]`.
fn check_reference(
    ckpt: &Checkpoint,
    input: &NamedTensor,
    output: &NamedTensor,
) -> Result<(), ExportError> {
    let card = &ckpt.card;
    let fail = |reason: String| {
        Err(ExportError::Reference {
            dir: ckpt.dir.clone(),
            reason,
        })
    };
    let [c, h, w] = card.input_shape;
    let ok_input = input.shape.len() == 4 && input.shape[1..] == [c, h, w] && input.shape[0] > 0;
    if !ok_input {
        return fail(format!(
            "input has shape {:?}; the card's input_shape {:?} needs [batch, {c}, {h}, {w}]",
            input.shape, card.input_shape
        ));
    }
    let want = vec![input.shape[0], card.labels.len()];
    if output.shape != want {
        return fail(format!(
            "output has shape {:?}; {} windows and {} labels need {want:?}",
            output.shape,
            input.shape[0],
            card.labels.len()
        ));
    }
    Ok(())
}

/// The output file of a checkpoint in folds mode: `<out_dir>/<checkpoint dir name>.onnx`.
pub fn output_path(checkpoint: &Path, out_dir: &Path) -> Result<PathBuf, ExportError> {
    let abs = std::path::absolute(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
    let names: Vec<String> = abs
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    // Training writes <run>/fold<N>/best and /last: name those after the fold.
    let name = match names.as_slice() {
        [.., fold, last] if last == "best" || last == "last" => Some(fold.clone()),
        [.., last] => Some(last.clone()),
        [] => None,
    }
    .ok_or_else(|| ExportError::Unnamed {
        checkpoint: checkpoint.to_path_buf(),
    })?;
    Ok(out_dir.join(format!("{name}.onnx")))
}

/// The checkpoints of a run, sorted: each subdirectory of `run_dir` that holds a `card.json`, or
/// whose `best/` does (the layout `birdclef-train fit` writes: `<run>/fold<N>/best`).
pub fn checkpoints_in_run(run_dir: &Path) -> Result<Vec<PathBuf>, ExportError> {
    let entries = std::fs::read_dir(run_dir).map_err(|cause| ExportError::RunDirectory {
        dir: run_dir.to_path_buf(),
        cause,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            if p.join(CARD_FILE).is_file() {
                Some(p)
            } else {
                let best = p.join("best");
                best.join(CARD_FILE).is_file().then_some(best)
            }
        })
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(ExportError::NoCheckpoints {
            dir: run_dir.to_path_buf(),
        });
    }
    Ok(dirs)
}

/// Pair every checkpoint with its output file in `out_dir`, refusing two checkpoints that would
/// write the same file.
pub fn plan_outputs(
    checkpoints: &[PathBuf],
    out_dir: &Path,
) -> Result<Vec<(PathBuf, PathBuf)>, ExportError> {
    let mut plan: Vec<(PathBuf, PathBuf)> = Vec::new();
    for c in checkpoints {
        let out = output_path(c, out_dir)?;
        if let Some((other, _)) = plan.iter().find(|(_, o)| *o == out) {
            return Err(ExportError::SameOutput {
                first: other.clone(),
                second: c.clone(),
                out,
            });
        }
        plan.push((c.clone(), out));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #[test]
    fn training_layout_fold_best_is_found_and_named_after_the_fold() {
        let run = std::env::temp_dir().join(format!("export-run-{}", std::process::id()));
        for d in ["fold0/best", "fold0/last", "fold1/best", "plain", "empty"] {
            std::fs::create_dir_all(run.join(d)).expect("dir");
        }
        for d in ["fold0/best", "fold0/last", "fold1/best", "plain"] {
            std::fs::write(run.join(d).join(CARD_FILE), "{}").expect("card");
        }
        let found = checkpoints_in_run(&run).expect("checkpoints");
        assert_eq!(
            found,
            vec![
                run.join("fold0/best"),
                run.join("fold1/best"),
                run.join("plain")
            ]
        );
        let out = Path::new("/out");
        assert_eq!(
            output_path(&run.join("fold0/best"), out).expect("name"),
            out.join("fold0.onnx")
        );
        assert_eq!(
            output_path(&run.join("fold0/last"), out).expect("name"),
            out.join("fold0.onnx")
        );
        assert_eq!(
            output_path(&run.join("plain"), out).expect("name"),
            out.join("plain.onnx")
        );
        std::fs::remove_dir_all(&run).ok();
    }

    use super::*;

    #[test]
    fn differences_and_nan() {
        assert_eq!(max_abs_diff(&[1.0, 2.0, 3.0], &[1.0, 2.5, 2.9]).1, 1);
        assert_eq!(max_abs_diff(&[0.0, f32::NAN], &[0.0, 1.0]).0, f32::INFINITY);
        assert_eq!(max_abs_diff(&[], &[]), (0.0, 0));
        // Relative beyond |reference| = 1, absolute within.
        assert_eq!(max_scaled_diff(&[-20.002, 0.5], &[-20.0, 0.5]).1, 0);
        assert!((max_scaled_diff(&[-20.002], &[-20.0]).0 - 1e-4).abs() < 1e-6);
        assert!((max_scaled_diff(&[0.3002], &[0.3]).0 - 2e-4).abs() < 1e-6);
        assert_eq!(max_scaled_diff(&[f32::NAN], &[1.0]).0, f32::INFINITY);
    }

    #[test]
    fn output_names_and_collisions() {
        let out = Path::new("/o");
        assert_eq!(
            output_path(Path::new("runs/a/fold0/"), out).expect("name"),
            PathBuf::from("/o/fold0.onnx")
        );
        let err = plan_outputs(&[PathBuf::from("x/fold0"), PathBuf::from("y/fold0")], out)
            .expect_err("collision");
        assert!(err.to_string().contains("both"), "{err}");
    }
}
