//! `birdclef-train`: training on libtorch (tch): `doctor` (the toolchain), `init` (a fresh or
//! timm-imported checkpoint), `fit` (teachers), `pseudo-label` / `pseudo-merge` (teacher ensemble
//! over unlabeled soundscapes), `distill` (students) and `pipeline` (all of it, then export,
//! inference and scoring).

mod torch_version;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use birdclef_infer::shard::ShardSpec;
use birdclef_train::config::TrainConfig;
use birdclef_train::model::device::{self, CudaProbe, DeviceRequest};
use birdclef_train::model::init::{init_checkpoint, InitOptions};
use birdclef_train::pseudo::{self, PseudoLabelOptions};
use birdclef_train::training::runs::{train_folds, AnnotatedSource, RunOptions};
use clap::{Args, Parser, Subcommand};

/// Train BirdCLEF models with libtorch.
#[derive(Parser, Debug)]
#[command(name = "birdclef-train", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Compute device: auto (CUDA device 0 if available, else CPU), cpu, cuda, or cuda:N.
    /// Asking for CUDA when it is not available is an error.
    #[arg(long, global = true, value_name = "DEVICE", default_value = "auto")]
    device: DeviceRequest,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  birdclef-train doctor
  birdclef-train --device cuda doctor
  birdclef-train init --arch efficientvit_b0 --classes 182 --out runs/student/init

On a GPU machine with its own PyTorch 2.11.0, point the loader at it:
  LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib \\
    birdclef-train --device cuda doctor";

#[derive(Subcommand, Debug)]
enum Command {
    /// Report the libtorch build, CUDA availability and the device that would be used.
    Doctor,
    /// Create a checkpoint directory (card.json, weights.safetensors, reference.safetensors) for
    /// an architecture: freshly initialised, or with timm weights imported.
    #[command(after_help = INIT_EXAMPLES)]
    Init(InitArgs),
    /// Train teachers on a Kaggle BirdCLEF directory: one checkpoint directory per fold
    /// (RUN_DIR/fold<N>/best and /last, exportable), history.csv and history.png per fold.
    #[command(after_help = FIT_EXAMPLES)]
    Fit(FitArgs),
    /// Distill students: like fit, with a share of every batch taken from soundscape windows
    /// pseudo-labelled by a teacher ensemble (soft targets).
    #[command(after_help = DISTILL_EXAMPLES)]
    Distill(DistillArgs),
    /// Label unlabeled soundscapes with a teacher ensemble (checkpoints or ONNX files) into an
    /// HDF5 file; resumable and shardable.
    #[command(name = "pseudo-label", after_help = PSEUDO_EXAMPLES)]
    PseudoLabel(PseudoArgs),
    /// Join the HDF5 files of a sharded pseudo-labelling run into the file one run would write.
    #[command(name = "pseudo-merge")]
    PseudoMerge(MergeArgs),
    /// Teachers -> pseudo-labels -> students -> export -> inference -> score, from one TOML file
    /// (default: the embedded synthetic competition), skipping stages that are up to date.
    #[command(after_help = PIPELINE_EXAMPLES)]
    Pipeline(PipelineArgs),
}

const PIPELINE_EXAMPLES: &str = "Examples:
  birdclef-train pipeline                                   # embedded synthetic default
  birdclef-train pipeline --config configs/birdclef-mini.pipeline.toml --out runs/mini-pipeline

OUT/submission/ holds the exported student ensemble, OUT/summary.csv one row per stage
(stage,status,seconds,metric,value). Run it again to skip what is up to date; a stage that was
interrupted resumes.";

/// `birdclef-train pipeline` options.
#[derive(Args, Debug)]
struct PipelineArgs {
    /// Pipeline config (TOML); documented in train/src/pipeline/config.rs [default: the embedded
    /// synthetic competition, configs/synthetic.pipeline.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output directory [default: runs/<config file stem>, or runs/synthetic].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// ONNX Runtime library (export checks and inference) [default: as birdclef-infer finds it].
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
}

const DISTILL_EXAMPLES: &str = "Examples:
  birdclef-train distill --data ../shared/data/birdclef-mini --config configs/birdclef-mini.toml \\
      --pseudo runs/mini/pseudo.h5 --out runs/mini-student --set distill.pseudo_fraction=0.5

Every fit option applies; the config's [distill] section sets the share of pseudo-labelled
windows per batch, the soft-target temperature and power, the confidence threshold and weight.";

const PSEUDO_EXAMPLES: &str = "Examples:
  birdclef-train pseudo-label --teacher runs/mini --soundscapes DATA/unlabeled_soundscapes \\
      --out runs/mini/pseudo.h5
  birdclef-train pseudo-label --teacher fold0.onnx --teacher fold1.onnx ... --shard 3/16 --out p3.h5
  # Slurm (--out's directory must exist): mkdir -p shards; sbatch --array=0-15 \\
  #        --wrap 'birdclef-train pseudo-label ... --shard auto --out shards/p$SLURM_ARRAY_TASK_ID.h5'
  # then
  birdclef-train pseudo-merge --out pseudo.h5 shards/p*.h5

A killed run started again with the same arguments continues where it stopped (finished
soundscapes are kept in OUT.parts/). Exit status: 0 success, 1 some soundscapes could not be read
(they have no rows; the file is still written), 2 error.";

/// `birdclef-train distill` options.
#[derive(Args, Debug)]
struct DistillArgs {
    #[command(flatten)]
    fit: FitArgs,
    /// Pseudo-label file written by `birdclef-train pseudo-label` (or `pseudo-merge`).
    #[arg(long, value_name = "FILE.h5")]
    pseudo: PathBuf,
    /// Directory of the pseudo-labelled soundscapes [default: DATA/unlabeled_soundscapes].
    #[arg(long, value_name = "DIR")]
    soundscapes: Option<PathBuf>,
}

/// `birdclef-train pseudo-label` options.
#[derive(Args, Debug)]
struct PseudoArgs {
    /// A teacher: checkpoint directory, ONNX file, run directory (its fold<N>/best) or directory
    /// of ONNX files (repeatable; all are ensembled).
    #[arg(long = "teacher", value_name = "PATH", required = true)]
    teachers: Vec<PathBuf>,
    /// Soundscape files or directories.
    #[arg(long, value_name = "PATH", required = true, num_args = 1..)]
    soundscapes: Vec<PathBuf>,
    /// The HDF5 file to write; its directory must exist, and it must not be a teacher or a
    /// soundscape (checked before any work).
    #[arg(long, value_name = "FILE.h5")]
    out: PathBuf,
    /// Label one shard only: K/N, or auto (auto/N) from Slurm's SLURM_ARRAY_TASK_ID/COUNT or a
    /// Kubernetes indexed job's JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "K/N|auto")]
    shard: Option<ShardSpec>,
    /// Windows per forward pass (at least 1).
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch_size: usize,
    /// Decoding threads (at least 1) [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// ONNX Runtime library for ONNX teachers [default: as birdclef-infer finds it].
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
}

/// `birdclef-train pseudo-merge` options.
#[derive(Args, Debug)]
struct MergeArgs {
    /// The merged file to write (not one of the shards; checked before they are read).
    #[arg(long, value_name = "FILE.h5")]
    out: PathBuf,
    /// The shards' files.
    #[arg(value_name = "SHARD.h5", required = true)]
    inputs: Vec<PathBuf>,
}

const FIT_EXAMPLES: &str = "Examples:
  birdclef-train fit --data ../shared/data/birdclef-mini --config configs/birdclef-mini.toml \\
      --out runs/mini
  birdclef-train --device cuda fit --data /kaggle/input/birdclef-2024 --config teacher.toml \\
      --out runs/t1 --fold 0 --set optim.lr=5e-4 --set optim.epochs=30
  birdclef-train fit ... --out runs/t1 --resume     # continue a killed run
  # annotated soundscapes (3-s windows, train/val/test by recording group)
  birdclef-train fit --annotations kenya.csv --audio kenya/soundscapes \\
      --config configs/annotated-3s.toml --out runs/kenya";

/// `birdclef-train fit` options.
#[derive(Args, Debug)]
struct FitArgs {
    /// The competition directory (train_metadata.csv, train_audio/, taxonomy.csv or
    /// sample_submission.csv, unlabeled_soundscapes/ for background mixing). With
    /// --annotations it only gives background clips and may be left out.
    #[arg(long, value_name = "DIR", required_unless_present = "annotations")]
    data: Option<PathBuf>,
    /// Train on annotated soundscapes instead: a CSV (filename,start,end,label[,group]; the
    /// columns are set in the config's [annotations] section) or a Raven selection table.
    #[arg(long, value_name = "TABLE", requires = "audio")]
    annotations: Option<PathBuf>,
    /// An extra data source (repeatable; the NVBird setup): a previous year's competition
    /// directory or a CSV of recordings (primary_label, secondary_labels, filename relative to
    /// the CSV; rating, date, url optional). Only this competition's species are kept, duplicate
    /// Xeno-canto recordings dropped, and each species filled up to
    /// data.extra_cap_per_species recordings, most recent first; extra recordings are never
    /// validated on.
    #[arg(
        long = "extra-data",
        value_name = "DIR|CSV",
        conflicts_with = "annotations"
    )]
    extra_data: Vec<PathBuf>,
    /// The directory the annotation table's file names are relative to.
    #[arg(long, value_name = "DIR", requires = "annotations")]
    audio: Option<PathBuf>,
    /// Experiment config (TOML); every key is documented in train/src/config.rs.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Run directory: fold<N>/ per trained fold (created with its parents; checked, like the
    /// audio cache directory, before any work).
    #[arg(long, value_name = "RUN_DIR")]
    out: PathBuf,
    /// Train only this fold (default: the config's data.folds).
    #[arg(long, value_name = "N")]
    fold: Option<usize>,
    /// Continue a killed run: each fold from its last/ checkpoint. A fold whose run stopped
    /// before its first epoch finished (config.toml, no last/) is trained from its beginning,
    /// and so is a fold with no run at all when another fold of RUN_DIR has one (the killed run
    /// had not reached it). When none of the folds has a run there is nothing to resume: an
    /// error.
    #[arg(long)]
    resume: bool,
    /// Override a config key, e.g. --set optim.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Where the HDF5 audio cache lives [default: RUN_DIR/../.cache].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Column of train_metadata.csv whose values must not be split across folds.
    #[arg(long, value_name = "COLUMN")]
    group_column: Option<String>,
    /// Keep at most this many recordings per species (best rated first; at least 1).
    #[arg(long, value_name = "N")]
    cap_per_species: Option<usize>,
    /// Classes with fewer recordings than this are only ever trained on, never validated.
    #[arg(long, value_name = "N", default_value_t = 2)]
    min_count_for_val: usize,
    /// Seconds of each unlabeled soundscape loaded for background mixing.
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    background_seconds: f64,
    /// Most unlabeled soundscapes loaded for background mixing (at least 1; set
    /// augment.background_prob=0 to train without background mixing).
    #[arg(long, value_name = "N", default_value_t = 16)]
    backgrounds: usize,
    /// A teacher for live knowledge distillation (repeatable): a checkpoint directory, or a run
    /// directory for its fold<N>/best; added to the config's distill.kd_teachers. Takes effect
    /// with distill.kd_weight above 0.
    #[arg(long = "kd-teacher", value_name = "DIR")]
    kd_teachers: Vec<PathBuf>,
}

const INIT_EXAMPLES: &str = "Examples:
  # EfficientViT-B0 student, 182 classes, 1-channel nvbird224 log-mel input, fresh init (seed 0)
  birdclef-train init --arch efficientvit_b0 --classes 182 --out runs/student/init

  # EfficientNet-B0 teacher with a SED head from timm ImageNet weights (RGB stem summed to 1
  # channel, classifier left fresh), labels and frontend from a card
  birdclef-train init --arch efficientnet_b0+sed --card labels.card.json \\
    --timm-weights efficientnet_b0.safetensors --out runs/teacher/init

The timm weights are a state_dict saved with safetensors.torch.save_file(model.state_dict(), F).
Exit status: 0 success, 2 error (nothing is left behind at --out).";

#[derive(Args, Debug)]
struct InitArgs {
    /// Architecture: efficientvit_b0, efficientnet_b0 or mnasnet_100, optionally with `+sed`.
    #[arg(long, value_name = "NAME[+sed]")]
    arch: String,
    /// Number of classes (labels class0..class{N-1}); may be omitted when --card has labels,
    /// and must agree with them otherwise.
    #[arg(long, value_name = "N")]
    classes: Option<usize>,
    /// Input channels [default: the card frontend's channels, 1 for nvbird224].
    #[arg(long = "in-chans", value_name = "C")]
    in_chans: Option<usize>,
    /// Import a timm state_dict (safetensors) instead of a fresh initialisation.
    #[arg(long, value_name = "FILE.safetensors")]
    timm_weights: Option<PathBuf>,
    /// Card with the frontend (and labels, if it has any) [default: built-in nvbird224 with
    /// per-image standardisation].
    #[arg(long, value_name = "CARD.json")]
    card: Option<PathBuf>,
    /// Seed of the fresh initialisation and of the synthetic reference audio.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// The checkpoint directory to create.
    #[arg(long, value_name = "CKPT")]
    out: PathBuf,
    /// Replace --out if it exists and is not empty.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Doctor => doctor(cli.device),
        Command::Init(args) => init(cli.device, args),
        Command::Fit(args) => fit(cli.device, args, None),
        Command::Distill(args) => fit(cli.device, args.fit, Some((args.pseudo, args.soundscapes))),
        Command::PseudoLabel(args) => return pseudo_label(cli.device, args),
        Command::PseudoMerge(args) => pseudo_merge(args),
        Command::Pipeline(args) => pipeline(cli.device, args),
    }
    .map(|()| ExitCode::SUCCESS)
}

impl FitArgs {
    fn options(&self, device: tch::Device) -> RunOptions {
        RunOptions {
            fold: self.fold,
            resume: self.resume,
            cache_dir: self.cache_dir.clone(),
            group_column: self.group_column.clone(),
            cap_per_species: self.cap_per_species,
            min_count_for_val: self.min_count_for_val,
            background_seconds: self.background_seconds,
            backgrounds: self.backgrounds,
            annotations: self
                .annotations
                .clone()
                .zip(self.audio.clone())
                .map(|(table, audio)| AnnotatedSource { table, audio }),
            extra_data: self.extra_data.clone(),
            device,
            ..RunOptions::new(self.data.as_deref().unwrap_or(Path::new("")), &self.out)
        }
    }
}

/// `birdclef-train fit` and `distill`.
fn fit(
    request: DeviceRequest,
    args: FitArgs,
    distill: Option<(PathBuf, Option<PathBuf>)>,
) -> Result<()> {
    let chosen = device::choose(request, &CudaProbe::detect())?;
    eprintln!("info: using device {chosen} (requested {request})");
    let mut cfg = TrainConfig::load(&args.config, &args.overrides)?;
    cfg.distill
        .kd_teachers
        .extend(args.kd_teachers.iter().cloned());
    if !cfg.distill.kd_teachers.is_empty() && cfg.distill.kd_weight == 0.0 {
        eprintln!(
            "warning: knowledge-distillation teachers are given but distill.kd_weight is 0: \
             they are not used (--set distill.kd_weight=0.5, say)"
        );
    }
    let mut opts = args.options(chosen.to_tch());
    if let Some((pseudo, soundscapes)) = distill {
        opts.pseudo = Some(pseudo);
        opts.soundscapes = soundscapes;
    }
    for (fold, s) in train_folds(&opts, &cfg)? {
        println!(
            "fold {fold}: best {:?} = {:.4} at epoch {}; {} epochs; checkpoints in {}",
            cfg.run.best_metric,
            s.best.1,
            s.best.0,
            s.epochs_run,
            s.out_dir.display()
        );
        if let Some(t) = &s.test {
            println!(
                "fold {fold}: test split: macro ROC-AUC {:.4}, cmAP {:.4}, macro F1 {:.4}, \
                 weighted F1 {:.4} (test_metrics.json)",
                t.macro_roc_auc, t.cmap, t.macro_f1, t.weighted_f1
            );
        }
    }
    Ok(())
}

/// `birdclef-train pseudo-label`.
fn pseudo_label(request: DeviceRequest, args: PseudoArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        args.threads != Some(0),
        "--threads must be at least 1 (leave it out for one per core)"
    );
    let chosen = device::choose(request, &CudaProbe::detect())?;
    eprintln!("info: using device {chosen} (requested {request})");
    let s = pseudo::pseudo_label(&PseudoLabelOptions {
        teachers: args.teachers,
        soundscapes: args.soundscapes,
        out: args.out,
        shard: args.shard,
        batch_size: args.batch_size,
        device: chosen.to_tch(),
        threads: args.threads.unwrap_or(0),
        ort_lib: args.ort_lib,
    })?;
    println!(
        "wrote {}: {} windows of {} soundscapes (shard {}; {} resumed from an earlier run) in {:.1} s",
        s.out.display(),
        s.windows,
        s.files,
        s.shard,
        s.resumed,
        s.seconds
    );
    if s.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "warning: {} soundscape(s) could not be read and have no rows:",
        s.failed.len()
    );
    // Each reason names its file.
    for (_, why) in &s.failed {
        eprintln!("  {why}");
    }
    Ok(ExitCode::from(1))
}

/// `birdclef-train pseudo-merge`.
fn pseudo_merge(args: MergeArgs) -> Result<()> {
    let t = pseudo::merge(&args.inputs, &args.out)?;
    println!(
        "wrote {}: {} windows from {} files",
        args.out.display(),
        t.len(),
        args.inputs.len()
    );
    Ok(())
}

/// `birdclef-train pipeline`.
fn pipeline(request: DeviceRequest, args: PipelineArgs) -> Result<()> {
    use birdclef_train::pipeline::{self, PipelineConfig, PipelineOptions};
    let chosen = device::choose(request, &CudaProbe::detect())?;
    eprintln!("info: using device {chosen} (requested {request})");
    let (cfg, base_dir, name) = match &args.config {
        Some(p) => (
            PipelineConfig::load(p)?,
            p.parent().unwrap_or(Path::new(".")).to_path_buf(),
            p.file_stem()
                .map(|s| {
                    s.to_string_lossy()
                        .trim_end_matches(".pipeline")
                        .to_string()
                })
                .unwrap_or_else(|| "pipeline".into()),
        ),
        None => (
            PipelineConfig::from_toml(pipeline::DEFAULT_CONFIG, "the embedded default")?,
            PathBuf::from("."),
            "synthetic".to_string(),
        ),
    };
    let out = args.out.unwrap_or_else(|| Path::new("runs").join(name));
    let rows = pipeline::run_pipeline(
        &cfg,
        &PipelineOptions {
            out: out.clone(),
            base_dir,
            device: chosen.to_tch(),
            ort_lib: args.ort_lib,
        },
    )?;
    println!("\n{}", pipeline::format_summary(&rows));
    if let Some(line) = pipeline::comparison(&rows) {
        println!("{line}\n");
    }
    println!(
        "summary: {}\nsubmission ensemble: {}",
        out.join("summary.csv").display(),
        out.join("submission").display()
    );
    Ok(())
}

/// `birdclef-train init`.
fn init(request: DeviceRequest, args: InitArgs) -> Result<()> {
    let chosen = device::choose(request, &CudaProbe::detect())?;
    eprintln!("info: using device {chosen} (requested {request})");
    let opts = InitOptions {
        arch: args.arch,
        classes: args.classes,
        in_chans: args.in_chans,
        timm_weights: args.timm_weights,
        card: args.card,
        seed: args.seed,
        out: args.out,
        force: args.force,
        device: chosen.to_tch(),
    };
    let summary = init_checkpoint(&opts)?;
    if let Some(report) = &summary.import {
        for w in report.warnings() {
            eprintln!("warning: {w}");
        }
    }
    let card = &summary.card;
    println!(
        "wrote {}: {} ({} classes, input {:?}, {} trainable parameters); reference {:?} -> {:?}",
        summary.out.display(),
        card.architecture.as_deref().unwrap_or("?"),
        card.labels.len(),
        card.input_shape,
        summary.trainable,
        summary.reference_shapes.0,
        summary.reference_shapes.1
    );
    Ok(())
}

/// Print the toolchain report, then fail if the requested device is unusable.
fn doctor(request: DeviceRequest) -> Result<()> {
    let probe = CudaProbe::detect();
    let chosen = device::choose(request, &probe);

    let show = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or_else(|| "not loaded".to_string(), |p| p.display().to_string())
    };
    let runtime_version = probe
        .torch_cpu_path
        .as_deref()
        .and_then(Path::parent)
        .and_then(torch_version::libtorch_version)
        .unwrap_or_else(|| "unknown".to_string());

    row("birdclef-train", env!("CARGO_PKG_VERSION"));
    row("tch crate", env!("BIRDCLEF_TCH_VERSION"));
    row(
        "libtorch built against",
        format!(
            "{} in {}",
            env!("BIRDCLEF_LIBTORCH_VERSION"),
            env!("BIRDCLEF_LIBTORCH_LIB")
        ),
    );
    row(
        "libtorch loaded",
        format!("{runtime_version} from {}", show(&probe.torch_cpu_path)),
    );
    row("libtorch_cuda", show(&probe.torch_cuda_path));
    row("libcuda (driver)", show(&probe.libcuda_path));
    row("cuda available", probe.available);
    row("cuda device count", probe.device_count);
    row("cudnn available", probe.cudnn);
    if probe.available {
        // Only asked when CUDA is up: on a CPU-only setup these calls throw inside libtorch.
        row("cuda runtime version", tch::utils::version_cudart());
        if probe.cudnn {
            row("cudnn version", tch::utils::version_cudnn());
        }
    } else {
        for reason in probe.reasons_unavailable() {
            row("why no cuda", reason);
        }
    }
    match chosen {
        Ok(chosen) => {
            row("device", format!("{chosen} (requested {request})"));
            eprintln!("info: using device {chosen} (requested {request})");
            // Touch the device once so that a broken setup fails here, not mid-training.
            let t = tch::Tensor::ones([2], (tch::Kind::Float, chosen.to_tch()));
            let sum = t.sum(tch::Kind::Float).double_value(&[]);
            anyhow::ensure!(
                (sum - 2.0).abs() < 1e-6,
                "sanity check on {chosen} failed: sum of [1, 1] is {sum}"
            );
            Ok(())
        }
        Err(e) => {
            row("device", format!("none (requested {request})"));
            Err(e.into())
        }
    }
}

/// One `label: value` line of the doctor report, values aligned.
fn row(label: &str, value: impl std::fmt::Display) {
    println!("{:<24}{value}", format!("{label}:"));
}
