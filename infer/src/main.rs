//! `birdclef-infer`: CPU-only scoring of soundscapes with ONNX Runtime or OpenVINO.
mod features;
use birdclef_infer::engine::Engine;
use birdclef_infer::postprocess::{Ensemble, FileMax, Kernel, Shifts};
use birdclef_infer::predict::{predict, PredictOptions};
use birdclef_infer::runner::{fmt_secs, RunnerConfig, DEFAULT_BATCH_SIZE};
use birdclef_infer::shard::ShardSpec;
use birdclef_infer::{openvino_env, ort_env};

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

/// Score soundscapes on the CPU with ONNX Runtime and write a Kaggle BirdCLEF submission.
///
/// Without a subcommand: every 5-s window of every soundscape gets a row
/// `<stem>_<end second>` with one probability per species. Exit status: 0 success; 1 the
/// submission was written but some files could not be (fully) decoded (their rows hold 0.0;
/// listed at the end) or --detections / --raven-dir could not be written (an error names the
/// file); 2 error, nothing written (every output is checked before any work).
#[derive(Parser, Debug)]
#[command(
    name = "birdclef-infer",
    version,
    about,
    after_help = EXAMPLES,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, libonnxruntime.so beside this binary, the
    /// project's .env, then pip's onnxruntime package).
    #[arg(long, global = true, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// OpenVINO's libopenvino_c.so* or the directory holding it (else OPENVINO_DYLIB_PATH,
    /// openvino/ beside this binary, the project's .env/openvino, then pip's openvino package).
    #[arg(long, global = true, value_name = "FILE|DIR")]
    openvino_lib: Option<PathBuf>,
    /// Threads of the `features` and `demo` subcommands [default: the number of cores]; scoring
    /// uses --workers.
    #[arg(long, global = true, value_name = "N", value_parser = parse_positive)]
    threads: Option<usize>,
    #[command(flatten)]
    predict: PredictArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "Examples:
  birdclef-infer --models fold0.onnx fold1.onnx --soundscapes test_soundscapes --out submission.csv \\
      --sample-submission sample_submission.csv --smooth 0.1,0.2,0.4,0.2,0.1 --time-limit 120m
  birdclef-infer --models m.onnx --soundscapes survey/ --out part3.csv --shard 3/16
  birdclef-infer merge part*.csv -o submission.csv
  birdclef-infer score submission.csv --solution test_solution.csv
  birdclef-infer features --card models/cards/nvbird224.card.json recording.ogg -o features.npy
  birdclef-infer demo --out demo-out";

/// The submission command's options (used when no subcommand is given).
#[derive(Args, Debug)]
struct PredictArgs {
    /// ONNX models written by birdclef-export (several = an ensemble).
    #[arg(long, num_args = 1.., required = true, value_name = "MODEL.onnx")]
    models: Vec<PathBuf>,
    /// Soundscape files or directories of them (.ogg, .mp3, .flac, .wav; subdirectories searched).
    #[arg(long, num_args = 1.., required = true, value_name = "DIR|FILE")]
    soundscapes: Vec<PathBuf>,
    /// Submission CSV to write (atomically).
    #[arg(long, required = true, value_name = "CSV")]
    out: Option<PathBuf>,
    /// Take the species columns (and their order) from this sample_submission.csv.
    #[arg(long, value_name = "CSV", conflicts_with = "taxonomy")]
    sample_submission: Option<PathBuf>,
    /// Take the species columns from the primary_label column of this taxonomy.csv.
    #[arg(long, value_name = "CSV")]
    taxonomy: Option<PathBuf>,
    /// How to combine several models: mean, min, geometric, rank, or power:Q (the power mean
    /// (mean p^Q)^(1/Q); `power` alone is Q = 2).
    #[arg(long, value_name = "METHOD", default_value = "mean")]
    ensemble: Ensemble,
    /// Smooth over neighbouring windows with this kernel, e.g. 0.1,0.2,0.4,0.2,0.1 (default: off).
    #[arg(long, value_name = "W1,W2,...")]
    smooth: Option<Kernel>,
    /// Combine each window with the file's per-species maximum (after smoothing): `multiply`
    /// (p * max), `multiply:E` (p * max^E) or `blend:A` ((1-A) p + A max) (default: off).
    #[arg(long, value_name = "multiply[:E]|blend:A")]
    file_max: Option<FileMax>,
    /// Time-shift test-time augmentation: also score every window shifted by these seconds and
    /// average each model's views, e.g. -2.5,2.5 (3x the model time; default: off).
    #[arg(long, value_name = "S1,S2,...", allow_hyphen_values = true)]
    tta_shifts: Option<Shifts>,
    /// Score only shard K of N (0-based), or `auto` from SLURM_ARRAY_TASK_ID/COUNT or
    /// JOB_COMPLETION_INDEX (`auto/N` for Kubernetes indexed jobs). Join with `merge`.
    #[arg(long, value_name = "K/N|auto|auto/N")]
    shard: Option<ShardSpec>,
    /// Also write detections above --threshold as CSV (file,start,end,species,probability).
    #[arg(long, value_name = "CSV")]
    detections: Option<PathBuf>,
    /// Also write a Raven Pro selection table per soundscape into this directory.
    #[arg(long, value_name = "DIR")]
    raven_dir: Option<PathBuf>,
    /// Probability threshold for detections, in [0, 1].
    #[arg(long, default_value_t = 0.5, value_parser = parse_probability, allow_negative_numbers = true)]
    threshold: f32,
    /// Warn when the projected total time exceeds this (e.g. 120m, 90s, 2h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    time_limit: Option<Duration>,
    /// With --time-limit: once the projection exceeds it, start no new files; their rows get 0.0.
    #[arg(long, requires = "time_limit")]
    strict: bool,
    /// Windows per inference batch (small batches keep activations in the CPU cache).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = parse_positive)]
    batch_size: usize,
    /// Worker threads, each decoding, computing features and running its own copy of every model
    /// (an ONNX Runtime session or an OpenVINO compilation) [default: the number of cores].
    /// Parallel single-threaded sessions outrun intra-op threads.
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    workers: Option<usize>,
    /// The inference engine: ONNX Runtime or OpenVINO (same ONNX files, same probabilities
    /// within 1e-4).
    #[arg(long, value_enum, default_value_t = Engine::Ort)]
    engine: Engine,
    /// Intra-op threads of each model's session, per worker (either engine).
    #[arg(long, alias = "ort-threads", value_name = "N", default_value_t = 1, value_parser = parse_positive)]
    model_threads: usize,
    /// Show a progress line even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
}

/// A count of at least 1 (workers, threads, windows per batch).
fn parse_positive(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A probability in [0, 1].
fn parse_probability(text: &str) -> Result<f32, String> {
    let p: f32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{text} is not a probability in [0, 1]"));
    }
    Ok(p)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 120m, 90s or 2h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use s, m or h)")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration as given (checked like --time-limit), kept as text for run.sh.
fn parse_time_text(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.to_string())
}

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
    /// Write a Kaggle submission kit: this binary, ONNX Runtime, OpenVINO, the models, run.sh
    /// and the notebook cell, in a new folder to upload as a dataset (runs with the internet off).
    #[command(after_help = "Example:
  birdclef-infer kit --models fold*.onnx --out birdclef-kit --time-limit 80m \
      -- --smooth 0.1,0.2,0.4,0.2,0.1

  Upload birdclef-kit/ as a Kaggle dataset; paste notebook-cell.txt into the notebook.")]
    Kit {
        /// ONNX models written by birdclef-export (several = an ensemble).
        #[arg(long = "models", num_args = 1.., required = true, value_name = "MODEL.onnx")]
        kit_models: Vec<PathBuf>,
        /// The kit folder to create (never written over).
        #[arg(long = "out", value_name = "DIR")]
        kit_out: PathBuf,
        /// The engine run.sh uses.
        #[arg(long = "engine", value_enum, default_value_t = Engine::Openvino)]
        kit_engine: Engine,
        /// run.sh's --time-limit (with --strict: files that would not fit get 0.0 rows).
        #[arg(long = "time-limit", default_value = "80m", value_parser = parse_time_text)]
        kit_time_limit: String,
        /// Further options run.sh passes to the submission command (after `--`).
        #[arg(last = true, value_name = "OPTION")]
        kit_args: Vec<String>,
    },
    /// Show where ONNX Runtime and OpenVINO were found and their versions.
    Doctor,
    /// Join the CSVs of shard runs into one submission (same header, no duplicate rows).
    Merge {
        /// Shard CSVs.
        #[arg(required = true, value_name = "CSV")]
        inputs: Vec<PathBuf>,
        /// Output CSV (written atomically).
        #[arg(short, long, value_name = "CSV")]
        out: PathBuf,
    },
    /// Score a submission against a solution: macro ROC-AUC (species with a positive) and padded
    /// cmAP. The last line is `macro_roc_auc=<value>`.
    Score {
        /// The submission CSV.
        submission: PathBuf,
        /// The solution CSV (row_id + 0/1 per species).
        #[arg(long, value_name = "CSV")]
        solution: PathBuf,
        /// Rows of ones padded for cmAP (BirdCLEF 2023 used 5).
        #[arg(long, default_value_t = 5)]
        padding: usize,
        /// Print each species' AUC and AP.
        #[arg(long)]
        per_species: bool,
        /// Also print macro and weighted F1 (over the species with a positive), predicting a
        /// species where its probability is at least THRESHOLD, or, with `argmax`, each row's
        /// most probable species only.
        #[arg(long, value_name = "THRESHOLD|argmax", value_parser = parse_decision)]
        f1: Option<birdclef_models::metrics::Decision>,
        /// Write the confusion matrix (each solution row with a positive: its first positive
        /// species against the submission's most probable one) to this CSV.
        #[arg(long, value_name = "CSV")]
        confusion: Option<PathBuf>,
    },
}

fn parse_decision(s: &str) -> Result<birdclef_models::metrics::Decision, String> {
    use birdclef_models::metrics::Decision;
    if s == "argmax" {
        return Ok(Decision::Argmax);
    }
    match s.parse::<f64>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(Decision::Threshold(t)),
        _ => Err(format!(
            "{s:?} is neither a threshold in [0, 1] nor `argmax`"
        )),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Exit status 0, or 1 when the submission was written but some files failed or an extra
/// output (detections, Raven tables) could not be written.
fn run(cli: Cli) -> Result<u8> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {n} worker threads: {e}"))?;
    }
    let Some(command) = cli.command else {
        return submission(cli.predict, cli.ort_lib, cli.openvino_lib);
    };
    if !cli.predict.models.is_empty()
        || !cli.predict.soundscapes.is_empty()
        || cli.predict.out.is_some()
    {
        bail!("--models, --soundscapes and --out belong to the submission command; give them without a subcommand");
    }
    match command {
        Command::Features { card, audio, out } => {
            let summary = features::write_features(&card, &audio, &out)?;
            println!("{summary}");
        }
        Command::Demo { out, seconds, seed } => features::demo(&out, seconds, seed)?,
        Command::Doctor => {
            // Both engines are reported; only ONNX Runtime, the default, must be there.
            let report = ort_env::doctor(cli.ort_lib.as_deref())?;
            println!("{report}");
            match openvino_env::doctor(cli.openvino_lib.as_deref()) {
                Ok(report) => println!("{report}"),
                Err(e) if cli.openvino_lib.is_some() => return Err(e.into()),
                Err(e) => println!(
                    "openvino:             not available (--engine openvino will fail): {e}"
                ),
            }
        }
        Command::Kit {
            kit_models,
            kit_out,
            kit_engine,
            kit_time_limit,
            kit_args,
        } => {
            let report = birdclef_infer::kit::write_kit(&birdclef_infer::kit::KitOptions {
                models: kit_models,
                out: kit_out.clone(),
                engine: kit_engine,
                time_limit: kit_time_limit,
                extra_args: kit_args,
                ort_lib: cli.ort_lib,
                openvino_lib: cli.openvino_lib,
            })?;
            println!(
                "wrote {} files ({:.0} MB) to {}; upload it as a Kaggle dataset and paste {} into a notebook cell",
                report.files.len(),
                report.bytes as f64 / 1e6,
                kit_out.display(),
                kit_out.join("notebook-cell.txt").display()
            );
        }
        Command::Merge { inputs, out } => {
            let report = birdclef_infer::shard::merge(&inputs, &out)?;
            println!(
                "merged {} shard files, {} rows -> {}",
                report.inputs,
                report.rows,
                out.display()
            );
        }
        Command::Score {
            submission,
            solution,
            padding,
            per_species,
            f1,
            confusion,
        } => {
            if let Some(path) = &confusion {
                birdclef_models::fsio::check_output_file(path)?;
            }
            let report = birdclef_infer::score::score_with(&submission, &solution, padding, f1)?;
            if let Some(path) = &confusion {
                birdclef_infer::score::write_confusion(&report, path)?;
            }
            if per_species {
                println!("{report:#}");
            } else {
                println!("{report}");
            }
        }
    }
    Ok(0)
}

fn submission(
    args: PredictArgs,
    ort_lib: Option<PathBuf>,
    openvino_lib: Option<PathBuf>,
) -> Result<u8> {
    let Some(out) = args.out else {
        bail!("--out is required");
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let opts = PredictOptions {
        models: args.models,
        soundscapes: args.soundscapes,
        out: out.clone(),
        sample_submission: args.sample_submission,
        taxonomy: args.taxonomy,
        ensemble: args.ensemble,
        smooth: args.smooth,
        file_max: args.file_max,
        shard: args.shard,
        detections: args.detections,
        raven_dir: args.raven_dir,
        threshold: args.threshold,
        run: RunnerConfig {
            workers: args.workers.unwrap_or(cores),
            batch_size: args.batch_size,
            time_limit: args.time_limit,
            strict: args.strict,
            progress: args.progress || std::io::stderr().is_terminal(),
            tta_shifts: args
                .tta_shifts
                .map(|s| s.seconds().to_vec())
                .unwrap_or_default(),
        },
        engine: args.engine,
        model_threads: args.model_threads,
        ort_lib,
        openvino_lib,
    };
    let summary = predict(&opts)?;
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "wrote {} rows for {} files to {} in {} ({:.0} windows/s, {:.0}x real time)",
        summary.rows,
        summary.files,
        out.display(),
        fmt_secs(secs),
        summary.windows as f64 / secs.max(1e-9),
        summary.audio_seconds / secs.max(1e-9)
    );
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    for e in &summary.unwritten {
        eprintln!(
            "error: {e} (the submission {} was written; this output was not)",
            out.display()
        );
    }
    let failed = summary.failures.len() + summary.unreadable.len();
    if failed > 0 {
        eprintln!(
            "warning: {failed} of {} files could not be fully scored; their missing windows hold 0.0:",
            summary.files + summary.unreadable.len()
        );
        for (_, f) in &summary.failures {
            eprintln!("  {}", failure_line(&f.reason, f.decoded_windows));
        }
        for (path, why) in &summary.unreadable {
            eprintln!("  {}: {why} (not scored, no rows)", path.display());
        }
    }
    Ok(u8::from(failed > 0 || !summary.unwritten.is_empty()))
}

/// One line of the failure summary: what went wrong (the reason names the file) and how many
/// windows hold real predictions.
fn failure_line(reason: &str, scored: usize) -> String {
    let plural = if scored == 1 { "" } else { "s" };
    format!("{reason} ({scored} window{plural} scored)")
}

#[cfg(test)]
mod tests {
    use super::{failure_line, Cli};
    use clap::Parser;

    #[test]
    fn zero_counts_and_thresholds_outside_0_1_are_refused_when_parsing() {
        let base = [
            "birdclef-infer",
            "--models",
            "m.onnx",
            "--soundscapes",
            "a",
            "--out",
            "o",
        ];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        for (flag, value, needle) in [
            ("--workers", "0", "at least 1"),
            ("--batch-size", "0", "at least 1"),
            ("--model-threads", "0", "at least 1"),
            ("--threads", "0", "at least 1"),
            ("--workers", "two", "not a whole number"),
            ("--threshold", "1.5", "[0, 1]"),
            ("--threshold", "-0.1", "[0, 1]"),
            ("--threshold", "NaN", "[0, 1]"),
            ("--threshold", "high", "not a number"),
        ] {
            let e = parse(&[flag, value]).expect_err(&format!("{flag} {value}"));
            let msg = e.to_string();
            assert!(
                msg.contains(flag) && msg.contains(needle),
                "{flag} {value}: {msg}"
            );
        }
        let cli = parse(&["--threshold", "1", "--workers", "3", "--batch-size", "2"]).expect("ok");
        assert_eq!(cli.predict.threshold, 1.0);
        assert_eq!(cli.predict.workers, Some(3));
        assert_eq!(cli.predict.batch_size, 2);
        // The old name of --model-threads still works.
        let cli = parse(&["--ort-threads", "2"]).expect("alias");
        assert_eq!(cli.predict.model_threads, 2);
        assert_eq!(
            parse(&["--threshold", "0"]).expect("ok").predict.threshold,
            0.0
        );
        assert!(Cli::try_parse_from(["birdclef-infer", "--threads", "0", "doctor"]).is_err());
    }

    #[test]
    fn a_failure_line_counts_windows_in_words() {
        assert_eq!(
            failure_line("audio/x.ogg: file is empty (0 bytes)", 0),
            "audio/x.ogg: file is empty (0 bytes) (0 windows scored)"
        );
        assert_eq!(
            failure_line("audio/x.ogg: truncated", 1),
            "audio/x.ogg: truncated (1 window scored)"
        );
    }
}
