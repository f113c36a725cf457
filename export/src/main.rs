//! `birdclef-export`: a trained checkpoint → an ONNX file whose outputs equal the trained
//! network's, with the model card inside.
//!
//! Every file is verified before it exists: the ONNX model is written to a temporary file, run in
//! ONNX Runtime on the checkpoint's reference batch, and renamed into place only if every output
//! is within `--tolerance` of the stored reference output.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use birdclef_export::export::{check_output, checkpoints_in_run, plan_outputs, DEFAULT_TOLERANCE};
use birdclef_export::{export_checkpoint, ExportOptions, Exported};
use birdclef_models::fsio;
use clap::Parser;

/// Export birdclef-train checkpoints to ONNX (opset 17), each verified against its checkpoint.
#[derive(Parser, Debug)]
#[command(name = "birdclef-export", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Checkpoint directory written by `birdclef-train` (card.json, weights.safetensors,
    /// reference.safetensors). Repeat it to export several folds into --out-dir.
    #[arg(long, value_name = "CKPT", required_unless_present = "run")]
    checkpoint: Vec<PathBuf>,
    /// Export every subdirectory of RUN_DIR that holds a card.json (one per fold) into --out-dir.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "checkpoint")]
    run: Option<PathBuf>,
    /// Output ONNX file (one checkpoint).
    #[arg(long, value_name = "MODEL.onnx", conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Output directory: each checkpoint becomes `<checkpoint dir name>.onnx` in it.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Largest accepted |ONNX Runtime - reference| / max(1, |reference|) for any output of the
    /// reference batch: absolute for logits within +-1, relative beyond.
    #[arg(long, value_name = "TOL", default_value_t = DEFAULT_TOLERANCE, allow_negative_numbers = true)]
    tolerance: f32,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, the project's .env, then pip's onnxruntime package).
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
}

const EXAMPLES: &str = "Examples:
  birdclef-export --checkpoint runs/teacher/fold0/best --out submission/fold0.onnx
  birdclef-export --checkpoint runs/student/fold0/best --checkpoint runs/student/fold1/best \\
      --out-dir submission                                  # fold0.onnx, fold1.onnx
  birdclef-export --run runs/student --out-dir submission --tolerance 1e-4";

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if !(cli.tolerance.is_finite() && cli.tolerance >= 0.0) {
        bail!(
            "--tolerance must be a finite number >= 0, got {}",
            cli.tolerance
        );
    }
    let opts = ExportOptions {
        tolerance: cli.tolerance,
        ort_lib: cli.ort_lib.clone(),
    };
    let plan: Vec<(PathBuf, PathBuf)> = match (&cli.out, &cli.out_dir) {
        (Some(out), None) => {
            if cli.checkpoint.len() != 1 {
                bail!(
                    "--out writes one file but {} checkpoints were given; use --out-dir DIR \
                     to export several",
                    cli.checkpoint.len()
                );
            }
            vec![(cli.checkpoint[0].clone(), out.clone())]
        }
        (None, Some(dir)) => {
            fsio::check_output_dir(dir).context("--out-dir")?;
            let checkpoints = match &cli.run {
                Some(run_dir) => checkpoints_in_run(run_dir)?,
                None => cli.checkpoint.clone(),
            };
            plan_outputs(&checkpoints, dir)?
        }
        (None, None) => bail!("say where to write: --out MODEL.onnx or --out-dir DIR"),
        (Some(_), Some(_)) => bail!("give either --out or --out-dir, not both"),
    };

    // Every output is checked before any checkpoint is exported: a bad one stops the run at once.
    for (checkpoint, out) in &plan {
        if checkpoint.is_dir() {
            check_output(checkpoint, out)?;
        }
    }

    let total = plan.len();
    let mut failed = 0usize;
    for (checkpoint, out) in &plan {
        match export_checkpoint(checkpoint, out, &opts) {
            Ok(done) => println!("{}", report(&done)),
            Err(e) if total == 1 => return Err(e.into()),
            Err(e) => {
                eprintln!("error: {:#}", anyhow::Error::from(e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {total} checkpoints failed (see above); the other {} were written and \
             verified",
            total - failed
        );
    }
    Ok(())
}

/// One line per file: path, size, max abs diff.
fn report(e: &Exported) -> String {
    format!(
        "{}: {} ({} bytes), max |onnxruntime - reference| = {:.2e} over {} outputs, \
         relative to max(1, |reference|) {:.2e} (tolerance {:.1e}), from {}",
        e.path.display(),
        human_size(e.bytes),
        e.bytes,
        e.max_abs_diff,
        shape_text(&e.output_shape),
        e.scaled_diff,
        e.tolerance,
        Path::new(&e.checkpoint).display()
    )
}

fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
