//! `birdclef-export`: a trained checkpoint → an ONNX file whose outputs equal the trained
//! network's, with the model card inside. The ONNX writer and its self-verification arrive with
//! the network-definition issue; this skeleton already checks its inputs and says so clearly.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Export a birdclef-train checkpoint to ONNX (opset 17) and verify it against the checkpoint.
#[derive(Parser, Debug)]
#[command(name = "birdclef-export", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Checkpoint directory written by `birdclef-train` (weights, card.json, reference batch).
    #[arg(long, value_name = "CKPT")]
    checkpoint: PathBuf,
    /// Output ONNX file.
    #[arg(long, value_name = "MODEL.onnx")]
    out: PathBuf,
}

const EXAMPLES: &str = "Example:
  birdclef-export --checkpoint runs/teacher/fold0 --out submission/fold0.onnx";

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
    let card_path = cli.checkpoint.join("card.json");
    let card = birdclef_models::card::Card::load(&card_path)
        .with_context(|| format!("{}: not a checkpoint", cli.checkpoint.display()))?;
    bail!(
        "{}: exporting {} to {} is not implemented yet (the ONNX writer comes with the \
         network-definition work)",
        cli.checkpoint.display(),
        card.architecture
            .as_deref()
            .unwrap_or("a frontend-only card"),
        cli.out.display()
    )
}
