//! `birdclef-infer`: CPU-only scoring of soundscapes with ONNX Runtime.
mod features;
use birdclef_infer::ort_env;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Score soundscapes on the CPU with ONNX Runtime and write a Kaggle BirdCLEF submission.
#[derive(Parser, Debug)]
#[command(name = "birdclef-infer", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, the project's .env, then python3's onnxruntime).
    #[arg(long, global = true, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// Worker threads for decoding and features (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  birdclef-infer demo --out demo-out
  birdclef-infer features --card models/cards/nvbird224.card.json recording.ogg -o features.npy
  birdclef-infer doctor";

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the model-input tensor [windows, channels, mels, frames] of one audio file as .npy,
    /// computed exactly as inference computes it (to diff against a Python pipeline).
    #[command(
        after_help = "Example:\n  birdclef-infer features --card models/cards/nvbird224.card.json \
                            XC123.ogg -o XC123.npy\n\n  In Python: np.load('XC123.npy').shape == (windows, 1, 224, 224)"
    )]
    Features {
        /// Model card (JSON) whose frontend to use; a card made by training or a shipped one.
        #[arg(long, value_name = "CARD.json")]
        card: PathBuf,
        /// Audio file (Ogg Vorbis, MP3, FLAC or WAV; any rate and channel count).
        audio: PathBuf,
        /// Output .npy (float32, C order), written atomically.
        #[arg(short, long, value_name = "OUT.npy")]
        out: PathBuf,
    },
    /// Run the built-in example end to end: synthesise a soundscape, decode it through the real
    /// audio path, compute features with both shipped reference frontends, print a summary.
    Demo {
        /// Directory for the demo's audio and feature files.
        #[arg(long, value_name = "DIR", default_value = "demo-out")]
        out: PathBuf,
        /// Seconds of audio to synthesise.
        #[arg(long, default_value_t = 12.0)]
        seconds: f64,
        /// Random seed of the synthetic soundscape.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Show where ONNX Runtime was found and its version.
    Doctor,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {n} worker threads: {e}"))?;
    }
    match cli.command {
        Command::Features { card, audio, out } => {
            let summary = features::write_features(&card, &audio, &out)?;
            println!("{summary}");
            Ok(())
        }
        Command::Demo { out, seconds, seed } => features::demo(&out, seconds, seed),
        Command::Doctor => {
            let report = ort_env::doctor(cli.ort_lib.as_deref())?;
            println!("{report}");
            Ok(())
        }
    }
}
