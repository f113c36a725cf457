//! `birdclef-train init`: a new checkpoint directory for an architecture, freshly initialised or
//! imported from timm weights, in the layout of [`birdclef_models::checkpoint`].
//!
//! The checkpoint's `reference.safetensors` holds a realistic batch (two 5-s windows of synthetic
//! bird audio from [`birdclef_models::synth`] through the card's log-mel frontend) and the logits
//! this network computes for it in eval mode, so that an exporter can verify its output.
//!
//! Everything is written into a temporary directory beside `--out` and renamed at the end, after
//! the result was reopened with [`Checkpoint::open`]: a failed `init` leaves nothing behind.

use std::path::{Path, PathBuf};

use birdclef_models::card::{Card, CardError, Provenance};
use birdclef_models::checkpoint::{self, Checkpoint, CheckpointError, NamedTensor};
use birdclef_models::frontend::Frontend;
use birdclef_models::fsio::{self, OutputError};
use birdclef_models::{nets, synth};
use sha2::{Digest, Sha256};
use tch::Device;

use super::net::{self, ImportReport, Net, NetError};

/// Windows in the reference batch.
pub const REFERENCE_BATCH: usize = 2;
/// Windows of synthetic audio that set a fresh network's BatchNorm statistics.
pub const CALIBRATION_WINDOWS: usize = 16;

/// What to initialise (the `init` command line).
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Architecture spec, `NAME` or `NAME+sed` (see [`nets::ARCHITECTURES`]).
    pub arch: String,
    /// Number of classes; required unless the card has labels, and must agree with them.
    pub classes: Option<usize>,
    /// Input channels; defaults to the card frontend's `channels`.
    pub in_chans: Option<usize>,
    /// A timm `state_dict` in safetensors to import ([`Net::import_timm`]).
    pub timm_weights: Option<PathBuf>,
    /// A card giving the frontend (and labels, if it has any); default: the built-in nvbird224.
    pub card: Option<PathBuf>,
    /// Seed of the fresh initialisation and of the synthetic reference audio.
    pub seed: u64,
    /// The checkpoint directory to create.
    pub out: PathBuf,
    /// Replace an existing non-empty `out`.
    pub force: bool,
    /// Where the reference forward pass runs.
    pub device: Device,
}

/// What [`init_checkpoint`] wrote.
#[derive(Debug, Clone)]
pub struct InitSummary {
    /// The checkpoint directory.
    pub out: PathBuf,
    /// The card written.
    pub card: Card,
    /// Trainable parameter count.
    pub trainable: usize,
    /// What the timm import did, when there was one.
    pub import: Option<ImportReport>,
    /// Shapes of the reference input and output.
    pub reference_shapes: (Vec<usize>, Vec<usize>),
}

/// Why `init` failed. Every variant names the file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Options that contradict each other or name something unknown.
    #[error("{0}")]
    Usage(String),
    /// The output directory cannot be used.
    #[error("{path}: {reason}")]
    Output {
        /// The `--out` directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// File-system error.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The card could not be read.
    #[error(transparent)]
    Card(#[from] CardError),
    /// Building, importing or running the network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Writing or re-reading the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint directory could not be put in place.
    #[error(transparent)]
    Place(#[from] OutputError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |cause| InitError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Create the checkpoint described by `opts`. See the module documentation.
pub fn init_checkpoint(opts: &InitOptions) -> Result<InitSummary, InitError> {
    check_out(&opts.out, opts.force)?;
    // With --force, `out` is replaced: it must not hold the card or weights read from it.
    fsio::refuse_dir_holding(
        &opts.out,
        opts.card
            .iter()
            .chain(&opts.timm_weights)
            .map(PathBuf::as_path),
    )?;

    let (base, card_origin) = match &opts.card {
        Some(path) => (Card::load(path)?, path.display().to_string()),
        None => {
            // The reference frontend, standardised per image: raw dB values (mean about -35)
            // condition a network badly, in training and in the export check alike.
            let mut card = Card::nvbird224();
            card.frontend.normalize = birdclef_models::frontend::Normalize::ImageStandard;
            (
                card,
                "the built-in nvbird224 card (models/cards/nvbird224.card.json) with per-image \
                 standardisation"
                    .to_string(),
            )
        }
    };
    let in_chans = opts.in_chans.unwrap_or(base.frontend.channels);
    if in_chans == 0 {
        return Err(InitError::Usage("--in-chans must be at least 1".into()));
    }
    let labels = if base.labels.is_empty() {
        let n = opts.classes.ok_or_else(|| {
            InitError::Usage(format!(
                "--classes is required: {card_origin} has no labels"
            ))
        })?;
        if n == 0 {
            return Err(InitError::Usage("--classes must be at least 1".into()));
        }
        (0..n).map(|i| format!("class{i}")).collect()
    } else {
        if let Some(n) = opts.classes {
            if n != base.labels.len() {
                return Err(InitError::Usage(format!(
                    "--classes {n} disagrees with {card_origin}, which has {} labels \
                     (omit --classes to use the card's labels)",
                    base.labels.len()
                )));
            }
        }
        base.labels.clone()
    };

    let graph = nets::build_spec(&opts.arch, in_chans, labels.len())
        .map_err(|e| InitError::Usage(format!("--arch {}: {e}", opts.arch)))?;
    let trainable = graph.trainable_count();
    let mut model = Net::new(graph, opts.device, opts.seed)?;
    let mut notes = format!(
        "birdclef-train init --arch {} ({} classes, {in_chans} input channel(s)); ",
        opts.arch,
        labels.len()
    );
    let import = match &opts.timm_weights {
        Some(path) => {
            let report = model.import_timm(path)?;
            let bytes = std::fs::read(path).map_err(io_err(path))?;
            notes.push_str(&format!(
                "weights imported from the timm state dict {} (sha256 {}): {}; ",
                path.display(),
                crate::hex(&Sha256::digest(&bytes)),
                report.summary()
            ));
            Some(report)
        }
        None => {
            notes.push_str(&format!("fresh initialisation with seed {}; ", opts.seed));
            None
        }
    };
    notes.push_str(&format!(
        "frontend from {card_origin} with channels = {in_chans}; reference batch: {REFERENCE_BATCH} \
         windows of synthetic audio (seed {})",
        opts.seed
    ));

    let mut frontend_cfg = base.frontend.clone();
    frontend_cfg.channels = in_chans;
    let input = reference_input(&frontend_cfg, opts.seed)?;
    let x = net::tensor_from(&input.data, &input.shape, opts.device).map_err(|cause| {
        NetError::Torch {
            context: "reference input".into(),
            cause,
        }
    })?;
    if import.is_none() {
        // Fresh BatchNorm statistics (mean 0, variance 1) do not fit log-mel input; set them from
        // synthetic windows so the stored reference output exercises every layer at unit scale.
        // A batch of its own, larger than the reference, so no channel's variance rests on a
        // handful of values.
        let calib =
            synthetic_windows(&frontend_cfg, CALIBRATION_WINDOWS, opts.seed, "calibration")?;
        let c = net::tensor_from(&calib.data, &calib.shape, opts.device).map_err(|cause| {
            NetError::Torch {
                context: "calibration input".into(),
                cause,
            }
        })?;
        model.calibrate_batch_norm(&c)?;
        notes.push_str(&format!(
            "; BatchNorm running statistics set from {CALIBRATION_WINDOWS} other synthetic windows"
        ));
    }
    let y = tch::no_grad(|| model.f_forward(&x, false))?;
    let output = NamedTensor {
        name: "output".into(),
        shape: y.size().iter().map(|&d| d as usize).collect(),
        data: net::to_vec_f32(&y).map_err(|cause| NetError::Torch {
            context: "reference output".into(),
            cause,
        })?,
    };

    let input_shape = frontend_cfg.input_shape();
    let card = Card {
        format_version: birdclef_models::card::CARD_FORMAT_VERSION,
        name: format!("{}-{}", opts.arch, base.name),
        architecture: Some(opts.arch.clone()),
        labels,
        frontend: frontend_cfg,
        input_shape,
        output_activation: base.output_activation,
        provenance: Provenance {
            notes: Some(notes),
            ..Provenance::default()
        },
    };
    card.validate_for_model()
        .map_err(|reason| InitError::Usage(format!("the card would be invalid: {reason}")))?;

    let reference_shapes = (input.shape.clone(), output.shape.clone());
    write_checkpoint(&opts.out, opts.force, |dir| {
        model.save_weights(&dir.join(checkpoint::WEIGHTS_FILE))?;
        card.save(&dir.join(checkpoint::CARD_FILE))?;
        checkpoint::write_tensors(
            &dir.join(checkpoint::REFERENCE_FILE),
            &[input, output],
            None,
        )?;
        // Reopen what was written: the same checks export will make.
        Checkpoint::open(dir)?;
        Ok(())
    })?;
    Ok(InitSummary {
        out: opts.out.clone(),
        card,
        trainable,
        import,
        reference_shapes,
    })
}

/// `REFERENCE_BATCH` windows of synthetic bird audio through the frontend: `input`
/// `[REFERENCE_BATCH, C, mels, frames]`.
pub fn reference_input(
    cfg: &birdclef_models::frontend::FrontendConfig,
    seed: u64,
) -> Result<NamedTensor, InitError> {
    synthetic_windows(cfg, REFERENCE_BATCH, seed ^ 0x5EED_A0D1_0000_0001, "input")
}

/// `windows` model inputs computed by the frontend from seeded synthetic audio (about one call
/// per second).
pub fn synthetic_windows(
    cfg: &birdclef_models::frontend::FrontendConfig,
    windows: usize,
    seed: u64,
    name: &str,
) -> Result<NamedTensor, InitError> {
    let frontend =
        Frontend::new(cfg.clone()).map_err(|e| InitError::Usage(format!("frontend: {e}")))?;
    let seconds = cfg.windows.window_seconds * windows as f64;
    let species = synth::species(4);
    let calls = (seconds * 1.2).ceil() as usize;
    let (audio, _) = synth::soundscape(
        seconds,
        cfg.sample_rate,
        &species,
        calls,
        &mut birdclef_models::rng::Rng::new(seed),
    );
    let images = frontend.compute(&audio);
    let shape = images.shape().to_vec();
    if shape.first().copied() != Some(windows) {
        return Err(InitError::Usage(format!(
            "frontend: {seconds} s of audio gave {:?} windows, expected {windows}",
            shape.first()
        )));
    }
    Ok(NamedTensor {
        name: name.into(),
        shape,
        data: images.iter().copied().collect(),
    })
}

/// Refuse an `out` that is a file or cannot be created (a file where a parent directory should
/// be), or a non-empty directory without `force`: before any work.
fn check_out(out: &Path, force: bool) -> Result<(), InitError> {
    let fail = |reason: &str| InitError::Output {
        path: out.to_path_buf(),
        reason: reason.to_string(),
    };
    fsio::check_output_dir(out)?;
    if out.file_name().is_none() {
        return Err(fail("has no directory name"));
    }
    match std::fs::metadata(out) {
        Err(_) => Ok(()),
        Ok(m) if !m.is_dir() => Err(fail("exists and is not a directory")),
        Ok(_) => {
            let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
            if entries.next().is_some() && !force {
                Err(fail(
                    "exists and is not empty; use --force to replace it, or choose another --out",
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Run `write` on a fresh temporary directory beside `out`, then move it to `out` (replacing an
/// existing `out` when `force`); on any error remove everything this created.
fn write_checkpoint(
    out: &Path,
    force: bool,
    write: impl FnOnce(&Path) -> Result<(), InitError>,
) -> Result<(), InitError> {
    check_out(out, force)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    out.file_name().ok_or_else(|| InitError::Output {
        path: out.to_path_buf(),
        reason: "has no directory name".into(),
    })?;
    // The first ancestor that does not exist yet: removed again if anything fails.
    let created_root = parent
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
        .map(Path::to_path_buf);
    let cleanup_parent = || {
        if let Some(root) = &created_root {
            let _ = std::fs::remove_dir_all(root);
        }
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = match fsio::temp_dir_beside(out, "init") {
        Ok(tmp) => tmp,
        Err(e) => {
            cleanup_parent();
            return Err(e.into());
        }
    };
    let result = write(&tmp).and_then(|()| Ok(fsio::replace_dir(&tmp, out)?));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        cleanup_parent();
    }
    result
}
