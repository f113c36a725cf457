//! `birdclef-train`: training on libtorch (tch). For now `doctor`, which checks the toolchain, and
//! `init`, which creates a checkpoint (fresh or imported from timm weights).

mod torch_version;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use birdclef_train::device::{self, CudaProbe, DeviceRequest};
use birdclef_train::init::{init_checkpoint, InitOptions};
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
}

const FIT_EXAMPLES: &str = "Examples:
  birdclef-train fit --data ../shared/data/birdclef-mini --config configs/birdclef-mini.toml \\
      --out runs/mini
  birdclef-train --device cuda fit --data /kaggle/input/birdclef-2024 --config teacher.toml \\
      --out runs/t1 --fold 0 --set optim.lr=5e-4 --set optim.epochs=30
  birdclef-train fit ... --out runs/t1 --resume     # continue a killed run";

/// `birdclef-train fit` options.
#[derive(Args, Debug)]
struct FitArgs {
    /// The competition directory (train_metadata.csv, train_audio/, taxonomy.csv or
    /// sample_submission.csv, unlabeled_soundscapes/ for background mixing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Experiment config (TOML); every key is documented in train/src/config.rs.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Run directory: fold<N>/ per trained fold.
    #[arg(long, value_name = "RUN_DIR")]
    out: PathBuf,
    /// Train only this fold (default: the config's data.folds).
    #[arg(long, value_name = "N")]
    fold: Option<usize>,
    /// Continue from each fold's last/ checkpoint.
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
    /// Keep at most this many recordings per species (best rated first).
    #[arg(long, value_name = "N")]
    cap_per_species: Option<usize>,
    /// Classes with fewer recordings than this are only ever trained on, never validated.
    #[arg(long, value_name = "N", default_value_t = 2)]
    min_count_for_val: usize,
    /// Seconds of each unlabeled soundscape loaded for background mixing.
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    background_seconds: f64,
    /// Most unlabeled soundscapes loaded for background mixing.
    #[arg(long, value_name = "N", default_value_t = 16)]
    backgrounds: usize,
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Doctor => doctor(cli.device),
        Command::Init(args) => init(cli.device, args),
        Command::Fit(args) => fit(cli.device, args),
    }
}

/// `birdclef-train fit`.
fn fit(request: DeviceRequest, args: FitArgs) -> Result<()> {
    use anyhow::Context;
    use birdclef_train::config::TrainConfig;
    use birdclef_train::data::cache::{load_backgrounds, Cache, CacheOptions};
    use birdclef_train::data::folds::assign_folds;
    use birdclef_train::data::metadata::{load_dataset, DataOptions};

    let chosen = device::choose(request, &CudaProbe::detect())?;
    eprintln!("info: using device {chosen} (requested {request})");
    let cfg = TrainConfig::load(&args.config, &args.overrides)?;
    let loaded = load_dataset(
        &args.data,
        &DataOptions {
            group_column: args.group_column.clone(),
            cap_per_species: args.cap_per_species,
            ..DataOptions::default()
        },
    )?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let ds = loaded.dataset;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| {
        args.out
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(".cache")
    });
    let cache = Cache::build_or_open(
        &ds,
        &cache_dir,
        &CacheOptions {
            seconds: cfg.data.cache_seconds,
            threads: cfg.data.num_workers,
            ..CacheOptions::default()
        },
    )?;
    let backgrounds = if cfg.augment.background_prob > 0.0 && args.backgrounds > 0 {
        load_backgrounds(&args.data, args.background_seconds, args.backgrounds)?
    } else {
        Vec::new()
    };
    eprintln!(
        "info: {} recordings, {} labels, {} background clips; audio cache {}",
        ds.recordings.len(),
        ds.labels.len(),
        backgrounds.len(),
        cache.path().display()
    );
    let folds = assign_folds(&ds, cfg.data.n_folds, cfg.run.seed, args.min_count_for_val);
    let which = match args.fold {
        Some(f) => vec![f],
        None => cfg.data.folds.clone(),
    };
    for fold in which {
        anyhow::ensure!(
            fold < cfg.data.n_folds,
            "--fold {fold} is not below data.n_folds = {}",
            cfg.data.n_folds
        );
        let out = args.out.join(format!("fold{fold}"));
        let s = birdclef_train::fit::fit(
            &ds,
            &cache,
            &folds,
            fold,
            &cfg,
            &backgrounds,
            &out,
            chosen.to_tch(),
            args.resume,
        )
        .with_context(|| format!("fold {fold}"))?;
        println!(
            "fold {fold}: best {:?} = {:.4} at epoch {}; {} epochs; checkpoints in {}",
            cfg.run.best_metric,
            s.best.1,
            s.best.0,
            s.epochs_run,
            out.display()
        );
    }
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
