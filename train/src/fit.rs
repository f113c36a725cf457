//! `birdclef-train fit`: train one fold of a dataset and keep exportable checkpoints.
//!
//! [`fit`] trains with AdamW (written here on tch tensors, with PyTorch's `torch.optim.AdamW`
//! update, because tch 0.24's optimiser does not expose its moments: ours are saved and a resumed
//! run continues bit for bit), a linear warm-up then cosine learning rate per step, BCE or focal
//! loss, global gradient-norm clipping, an optional EMA of the weights (validated and saved), and
//! on CUDA optional fp16 autocast with a dynamic loss scale (inf/NaN steps are skipped).
//!
//! After each epoch it validates on the held-out fold (the first
//! [`DataConfig::val_max_windows`](crate::config::DataConfig) 5-s windows of each recording's
//! head, positives = primary and secondary labels): validation loss, macro ROC-AUC and padded cmAP
//! ([`birdclef_models::metrics`]). It rewrites `history.csv` and `history.png`, and writes the
//! checkpoint directories `best/` (by [`BestMetric`]) and `last/`, each atomically (temporary
//! directory + rename) and each exportable by `birdclef-export` (card, weights, reference batch)
//! plus `train_state.json` / `train_state.safetensors` (raw weights, AdamW moments, step, loss
//! scale). Randomness comes from the seed and the epoch only (batch generators, libtorch's
//! generator reseeded per epoch), so a resumed run repeats what the killed one would have done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use birdclef_models::card::{Card, FoldInfo, Provenance, CARD_FORMAT_VERSION};
use birdclef_models::checkpoint::{self, Checkpoint, NamedTensor};
use birdclef_models::frontend::{Frontend, FrontendConfig, Normalize};
use birdclef_models::fsio;
use birdclef_models::ir::ParamKind;
use birdclef_models::{metrics, nets, synth::Rng};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Reduction, Tensor};

use crate::batch::{Batch, BatchBuilder, Item};
use crate::config::{BestMetric, LossConfig, LossKind, TrainConfig};
use crate::data::{AudioStore, Dataset};
use crate::distill::{epoch_items, PseudoSet};
use crate::init::{reference_input, NVBIRD224_CARD};
use crate::net::{self, Net};

/// In the fold vector passed to [`fit`]: a recording that is always in the training set and
/// never validated on.
pub const ALWAYS_TRAIN: usize = usize::MAX;

/// Training state file (JSON) inside `last/` and `best/`.
pub const STATE_JSON: &str = "train_state.json";
/// Training tensors (raw weights, AdamW moments) inside `last/` and `best/`.
pub const STATE_TENSORS: &str = "train_state.safetensors";
/// The history table in the output directory.
pub const HISTORY_CSV: &str = "history.csv";
/// The history plot in the output directory.
pub const HISTORY_PNG: &str = "history.png";
/// Columns of `history.csv`.
pub const HISTORY_COLUMNS: [&str; 9] = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_macro_roc_auc",
    "val_cmap",
    "lr",
    "seconds",
    "train_samples_per_s",
    "skipped_steps",
];

/// One row of `history.csv` (epochs count from 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Validation loss (the configured BCE or focal loss, on 0/1 labels).
    pub val_loss: f64,
    /// Validation macro ROC-AUC (NaN when no class has a positive and a negative).
    pub val_macro_roc_auc: f64,
    /// Validation padded cmAP.
    pub val_cmap: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall time of the epoch (training and validation; checkpoint writing not included).
    pub seconds: f64,
    /// Training samples per second (data pipeline and network together).
    pub train_samples_per_s: f64,
    /// Optimiser steps skipped for inf/NaN gradients.
    pub skipped_steps: usize,
}

impl EpochRow {
    fn metric(&self, m: BestMetric) -> f64 {
        match m {
            BestMetric::ValMacroRocAuc => self.val_macro_roc_auc,
            BestMetric::ValCmap => self.val_cmap,
            BestMetric::ValLoss => self.val_loss,
        }
    }

    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{:.3},{:.2},{}",
            self.epoch,
            self.train_loss,
            self.val_loss,
            self.val_macro_roc_auc,
            self.val_cmap,
            self.lr,
            self.seconds,
            self.train_samples_per_s,
            self.skipped_steps
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != HISTORY_COLUMNS.len() {
            return None;
        }
        let p = |i: usize| f[i].parse::<f64>().ok();
        Some(Self {
            epoch: f[0].parse().ok()?,
            train_loss: p(1)?,
            val_loss: p(2)?,
            val_macro_roc_auc: p(3)?,
            val_cmap: p(4)?,
            lr: p(5)?,
            seconds: p(6)?,
            train_samples_per_s: p(7)?,
            skipped_steps: f[8].parse().ok()?,
        })
    }
}

/// What [`fit`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    /// The output directory.
    pub out_dir: PathBuf,
    /// Every epoch's row (including those of a run this one resumed).
    pub history: Vec<EpochRow>,
    /// The epoch kept in `best/` and its metric value.
    pub best: (usize, f64),
    /// Epochs trained by this call (fewer than `history.len()` when resumed).
    pub epochs_run: usize,
    /// Training recordings and validation windows.
    pub sizes: (usize, usize),
}

/// Saved in `train_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken (AdamW's bias-correction count, skipped steps excluded).
    pub adam_step: u64,
    /// Batches processed (the LR schedule's position).
    pub batch_step: u64,
    /// Best metric value so far and its epoch.
    pub best_value: f64,
    /// The epoch of `best_value`.
    pub best_epoch: usize,
    /// Dynamic loss scale (AMP).
    pub loss_scale: f64,
    /// Finite steps since the last loss-scale change.
    pub growth_tracker: usize,
    /// The validation fold and fold count.
    pub fold: usize,
    /// Fold count.
    pub n_folds: usize,
    /// Whether `weights.safetensors` holds EMA weights (the raw ones are in the tensors file).
    pub ema: bool,
    /// The configuration of the run, as TOML.
    pub config: String,
}

/// The frontend a configuration asks for: the card's (or the built-in nvbird224 card with
/// per-image standardisation) with the `model.*` overrides, and the card's name.
pub fn resolve_frontend(cfg: &TrainConfig) -> Result<(FrontendConfig, String)> {
    let card = match &cfg.model.card {
        Some(p) => Card::load(p).with_context(|| format!("model.card {}", p.display()))?,
        None => {
            let mut c = Card::from_json(NVBIRD224_CARD)?;
            c.frontend.normalize = Normalize::ImageStandard;
            c
        }
    };
    let mut f = card.frontend.clone();
    if let Some(n) = cfg.model.n_mels {
        f.n_mels = n;
    }
    if let Some(h) = cfg.model.hop_length {
        f.hop_length = h;
    }
    if let Some(n) = cfg.model.n_fft {
        f.n_fft = n;
        f.win_length = f.win_length.min(n);
    }
    if let Some(c) = cfg.model.channels {
        f.channels = c;
    }
    f.validate().map_err(|e| anyhow!("model: {e}"))?;
    if (f.windows.window_seconds - cfg.augment.crop_seconds).abs() > 1e-9 {
        bail!(
            "augment.crop_seconds = {} but the card's window is {} s; they must agree",
            cfg.augment.crop_seconds,
            f.windows.window_seconds
        );
    }
    Ok((f, card.name))
}

/// Learning rate at batch `step` of `total`: linear warm-up over `warmup` steps, then cosine from
/// `lr` to `lr * min_ratio` at the last step.
pub fn lr_at(step: u64, total: u64, warmup: u64, lr: f64, min_ratio: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    let floor = lr * min_ratio;
    floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// The training loss (mean over weighted elements) of `logits` against targets `y` with weights
/// `w`, computed in fp32.
pub fn loss(logits: &Tensor, y: &Tensor, w: &Tensor, cfg: &LossConfig) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let bce =
        logits.binary_cross_entropy_with_logits(y, None::<Tensor>, None::<Tensor>, Reduction::None);
    let l = match cfg.kind {
        LossKind::Bce => bce,
        LossKind::Focal => {
            let p = logits.sigmoid();
            let pt: Tensor = y * &p + (1.0 - y) * (1.0 - &p);
            let one_minus: Tensor = 1.0 - pt;
            let modulating = one_minus.pow_tensor_scalar(cfg.focal_gamma);
            bce * modulating
        }
    };
    (l * w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1.0)
}

/// Held-out windows: inputs and 0/1 labels.
struct ValSet {
    x: Vec<f32>,
    shape: [usize; 3],
    y: Vec<f32>,
    n: usize,
}

fn build_val(
    ds: &Dataset,
    store: &dyn AudioStore,
    val_idx: &[usize],
    frontend: &Frontend,
    max_windows: usize,
    cap: Option<usize>,
) -> Result<ValSet> {
    let k = ds.labels.len();
    let shape = frontend.config().input_shape();
    let per: usize = shape.iter().product();
    let mut out = ValSet {
        x: Vec::new(),
        shape,
        y: Vec::new(),
        n: 0,
    };
    for &i in val_idx {
        let seg = store.segments(i)?;
        let images = frontend.compute(&seg.head);
        let windows = images.shape()[0].min(max_windows);
        let r = &ds.recordings[i];
        let mut row = vec![0.0f32; k];
        for &s in std::iter::once(&r.primary).chain(&r.secondary) {
            if s < k {
                row[s] = 1.0;
            }
        }
        let flat = images
            .as_slice()
            .ok_or_else(|| anyhow!("non-contiguous frontend output"))?;
        for w in 0..windows {
            if cap.is_some_and(|c| out.n >= c) {
                return Ok(out);
            }
            out.x.extend_from_slice(&flat[w * per..(w + 1) * per]);
            out.y.extend_from_slice(&row);
            out.n += 1;
        }
    }
    Ok(out)
}

/// Validation numbers: (loss, macro ROC-AUC, padded cmAP, note). The loss is the training loss
/// (BCE or focal, without label smoothing or masks) averaged over windows and classes.
fn validate(
    net: &Net,
    val: &ValSet,
    k: usize,
    batch: usize,
    amp: bool,
    loss_cfg: &LossConfig,
) -> Result<(f64, f64, f64, Option<String>)> {
    let per: usize = val.shape.iter().product();
    let mut probs = Vec::with_capacity(val.n * k);
    let mut loss_sum = 0.0;
    let dev = net.device();
    for start in (0..val.n).step_by(batch) {
        let end = (start + batch).min(val.n);
        let m = end - start;
        let x = net::tensor_from(
            &val.x[start * per..end * per],
            &[m, val.shape[0], val.shape[1], val.shape[2]],
            dev,
        )?;
        let y = net::tensor_from(&val.y[start * k..end * k], &[m, k], dev)?;
        let logits =
            tch::no_grad(|| tch::autocast(amp, || net.f_forward(&x, false)))?.to_kind(Kind::Float);
        let w = Tensor::ones_like(&y);
        loss_sum += loss(&logits, &y, &w, loss_cfg).double_value(&[]) * (m * k) as f64;
        probs.extend(net::to_vec_f32(&logits.sigmoid())?);
    }
    let val_loss = loss_sum / (val.n * k).max(1) as f64;
    let sol = Array2::from_shape_vec((val.n, k), val.y.clone())?;
    let sub = Array2::from_shape_vec((val.n, k), probs)?;
    let mut note = None;
    let auc = match metrics::macro_roc_auc(sol.view(), sub.view()) {
        Ok(r) => r.macro_auc,
        Err(e) => {
            note = Some(format!("macro ROC-AUC undefined: {e}"));
            f64::NAN
        }
    };
    let cmap = metrics::padded_cmap(sol.view(), sub.view(), metrics::DEFAULT_PADDING_FACTOR)
        .map(|r| r.cmap)
        .unwrap_or(f64::NAN);
    Ok((val_loss, auc, cmap, note))
}

/// AdamW (PyTorch's update) with its moments in tensors we can save.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    fn new(params: &[Tensor]) -> Self {
        Self {
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            step: 0,
        }
    }

    fn step(&mut self, params: &[Tensor], lr: f64, cfg: &crate::config::OptimConfig) {
        self.step += 1;
        let bc1 = 1.0 - cfg.beta1.powi(self.step as i32);
        let bc2 = 1.0 - cfg.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let _ = p.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
                let _ = m.g_mul_scalar_(cfg.beta1);
                let _ = m.g_add_(&(&g * (1.0 - cfg.beta1)));
                let _ = v.g_mul_scalar_(cfg.beta2);
                let _ = v.g_add_(&(&g * &g * (1.0 - cfg.beta2)));
                let denom = v.sqrt() / bc2.sqrt() + cfg.eps;
                let _ = p.g_add_(&(&*m / denom * (-lr / bc1)));
            }
        });
    }
}

fn copy_all(dst: &[Tensor], src: &[Tensor]) {
    tch::no_grad(|| {
        for (d, s) in dst.iter().zip(src) {
            d.shallow_clone().copy_(s);
        }
    });
}

fn snapshot(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(|t| t.detach().copy()).collect()
}

/// `dir`, or the copy moved aside by an interrupted [`fsio::write_dir_atomic`].
fn existing_dir(dir: &Path) -> Option<PathBuf> {
    if dir.join(STATE_JSON).is_file() {
        return Some(dir.to_path_buf());
    }
    let parent = dir.parent()?;
    let prefix = fsio::aside_prefix(&dir.file_name()?.to_string_lossy());
    std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                && p.join(STATE_JSON).is_file()
        })
}

/// What a fold directory holds, as `fit --resume` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldRun {
    /// No run: no `last/` checkpoint, `best/`, `history.csv` or `config.toml` (or no directory).
    Nothing,
    /// A run stopped before its first epoch finished: `config.toml` (perhaps `history.csv` or
    /// `best/`) but no `last/` checkpoint. Resuming it trains the fold from its beginning.
    Unfinished,
    /// A run to continue from this `last/` checkpoint (or its copy moved aside by an interrupted
    /// write).
    Resumable(PathBuf),
}

impl FoldRun {
    /// What `out_dir` (a fold directory) holds.
    pub fn of(out_dir: &Path) -> Self {
        if let Some(last) = existing_dir(&out_dir.join("last")) {
            return Self::Resumable(last);
        }
        let started = ["last", "best", HISTORY_CSV, "config.toml"]
            .iter()
            .any(|name| out_dir.join(name).exists());
        if started {
            Self::Unfinished
        } else {
            Self::Nothing
        }
    }
}

/// Whether `out_dir` holds a run that a fresh (not resumed) [`fit`] refuses to overwrite: a
/// `last/` checkpoint or a `history.csv`.
pub fn holds_run(out_dir: &Path) -> bool {
    out_dir.join("last").exists() || out_dir.join(HISTORY_CSV).exists()
}

fn write_history(out_dir: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut text = HISTORY_COLUMNS.join(",");
    text.push('\n');
    for r in rows {
        text.push_str(&r.csv());
        text.push('\n');
    }
    let path = out_dir.join(HISTORY_CSV);
    Ok(birdclef_models::fsio::write_atomic(&path, text.as_bytes())?)
}

fn read_history(out_dir: &Path) -> Vec<EpochRow> {
    std::fs::read_to_string(out_dir.join(HISTORY_CSV))
        .map(|t| t.lines().skip(1).filter_map(EpochRow::parse).collect())
        .unwrap_or_default()
}

/// Draw `history.png`: losses (left; train blue, validation red) and validation metrics (right;
/// macro ROC-AUC green, padded cmAP magenta, on [0, 1]) against the epoch. No text is drawn, so
/// no system font is needed; the colours are the legend.
pub fn plot_history(path: &Path, rows: &[EpochRow]) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    let file = birdclef_models::fsio::AtomicFile::new(path)?;
    {
        let root = BitMapBackend::new(file.path(), (960, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(480);
        let n = rows.last().map_or(1, |r| r.epoch).max(2) as f64;
        let finite = |v: f64| v.is_finite().then_some(v);
        let losses: Vec<f64> = rows
            .iter()
            .flat_map(|r| [r.train_loss, r.val_loss])
            .filter_map(finite)
            .collect();
        let hi = losses.iter().copied().fold(0.0f64, f64::max).max(1e-6) * 1.05;
        let panels = [(&left, hi), (&right, 1.0)];
        for (pi, (area, top)) in panels.iter().enumerate() {
            let mut chart = ChartBuilder::on(area)
                .margin(20)
                .build_cartesian_2d(1.0..n, 0.0..*top)
                .map_err(|e| err(&e))?;
            // Frame and a light grid (no labels: no fonts).
            let grid = RGBColor(220, 220, 220);
            for i in 0..=4 {
                let y = top * i as f64 / 4.0;
                chart
                    .draw_series(LineSeries::new([(1.0, y), (n, y)], &grid))
                    .map_err(|e| err(&e))?;
            }
            for e in 1..=(n as usize) {
                chart
                    .draw_series(LineSeries::new([(e as f64, 0.0), (e as f64, *top)], &grid))
                    .map_err(|e| err(&e))?;
            }
            let series: Vec<(Vec<(f64, f64)>, RGBColor)> = if pi == 0 {
                vec![
                    (
                        rows.iter()
                            .map(|r| (r.epoch as f64, r.train_loss))
                            .collect(),
                        BLUE,
                    ),
                    (
                        rows.iter().map(|r| (r.epoch as f64, r.val_loss)).collect(),
                        RED,
                    ),
                ]
            } else {
                vec![
                    (
                        rows.iter()
                            .map(|r| (r.epoch as f64, r.val_macro_roc_auc))
                            .collect(),
                        RGBColor(0, 160, 0),
                    ),
                    (
                        rows.iter().map(|r| (r.epoch as f64, r.val_cmap)).collect(),
                        MAGENTA,
                    ),
                ]
            };
            for (pts, colour) in series {
                let pts: Vec<(f64, f64)> = pts.into_iter().filter(|p| p.1.is_finite()).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                    .map_err(|e| err(&e))?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(file.commit()?)
}

fn data_hash(ds: &Dataset, folds: &[usize], cfg: &TrainConfig) -> String {
    let mut h = Sha256::new();
    for l in &ds.labels {
        h.update(l.as_bytes());
        h.update([0]);
    }
    for (r, f) in ds.recordings.iter().zip(folds) {
        h.update(r.filename.as_bytes());
        h.update(f.to_le_bytes());
    }
    h.update(cfg.data.cache_seconds.to_le_bytes());
    crate::hex(&h.finalize())
}

fn git_commit() -> Option<String> {
    if let Ok(c) = std::env::var("BIRDCLEF_COMMIT") {
        return Some(c);
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Train fold `fold` of `ds` (audio from `store`) as `cfg` says, writing into `out_dir`.
///
/// `folds` has one entry per recording: its fold, or [`ALWAYS_TRAIN`] for recordings that are
/// always trained on. Recordings whose fold is `fold` are validated on; all others are trained
/// on. `backgrounds` are 32 kHz clips for background mixing (may be empty). With `resume`, the run
/// continues from `out_dir/last` (the epoch that was running when it stopped is redone); a run
/// stopped before its first epoch finished ([`FoldRun::Unfinished`]) is said so on stderr and
/// trained from its beginning; a directory with no run at all ([`FoldRun::Nothing`]) is an error.
/// Without `resume`, `out_dir` must not already hold a run ([`holds_run`]).
#[allow(clippy::too_many_arguments)]
pub fn fit(
    ds: &Dataset,
    store: &dyn AudioStore,
    folds: &[usize],
    fold: usize,
    cfg: &TrainConfig,
    backgrounds: &[Vec<f32>],
    out_dir: &Path,
    device: Device,
    resume: bool,
) -> Result<FitSummary> {
    fit_with(
        ds,
        store,
        folds,
        fold,
        cfg,
        backgrounds,
        None,
        out_dir,
        device,
        resume,
    )
}

/// [`fit`], and with `pseudo` a distillation: every batch holds
/// [`DistillConfig::pseudo_fraction`](crate::config::DistillConfig) pseudo-labelled windows
/// (soft targets) and labelled clips for the rest, mixed up across both; an epoch has as many
/// steps as the labelled data alone would give, so runs with and without pseudo-labels cost the
/// same number of steps. Pseudo-labelled windows are never validated on.
#[allow(clippy::too_many_arguments)]
pub fn fit_with(
    ds: &Dataset,
    store: &dyn AudioStore,
    folds: &[usize],
    fold: usize,
    cfg: &TrainConfig,
    backgrounds: &[Vec<f32>],
    pseudo: Option<&PseudoSet>,
    out_dir: &Path,
    device: Device,
    resume: bool,
) -> Result<FitSummary> {
    cfg.validate()?;
    let pseudo = pseudo.filter(|p| !p.is_empty() && cfg.distill.pseudo_fraction > 0.0);
    let n_rec = ds.recordings.len();
    if folds.len() != n_rec || store.len() != n_rec {
        bail!(
            "{} recordings, {} fold entries and {} stored audio entries: they must agree",
            n_rec,
            folds.len(),
            store.len()
        );
    }
    let k = ds.labels.len();
    let train_idx: Vec<usize> = (0..n_rec).filter(|&i| folds[i] != fold).collect();
    let val_idx: Vec<usize> = (0..n_rec).filter(|&i| folds[i] == fold).collect();
    if train_idx.is_empty() || val_idx.is_empty() {
        bail!(
            "fold {fold}: {} training and {} validation recordings; both must be non-empty",
            train_idx.len(),
            val_idx.len()
        );
    }
    let (fcfg, card_name) = resolve_frontend(cfg)?;
    let frontend = Frontend::new(fcfg.clone()).map_err(|e| anyhow!("{e}"))?;
    let o = &cfg.optim;
    let seed = cfg.run.seed;
    let amp = o.amp && device.is_cuda();

    let last_dir = out_dir.join("last");
    let best_dir = out_dir.join("best");
    let resume_from = if resume {
        match FoldRun::of(out_dir) {
            FoldRun::Resumable(dir) => Some(dir),
            FoldRun::Unfinished => {
                eprintln!(
                    "fit: {} has no last/ checkpoint: its run stopped before the first epoch \
                     finished; training the fold from its beginning",
                    out_dir.display()
                );
                None
            }
            FoldRun::Nothing => bail!(
                "{}: nothing to resume: no run there (no last/ checkpoint, no config.toml); \
                 leave out --resume to start one",
                out_dir.display()
            ),
        }
    } else {
        None
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    if !resume && holds_run(out_dir) {
        bail!(
            "{} already holds a run; resume it, or choose another output directory",
            out_dir.display()
        );
    }
    for dir in [&last_dir, &best_dir] {
        let n = fsio::remove_stale_temps(dir, "tmp");
        if n > 0 {
            eprintln!("fit: removed {n} unfinished checkpoint folder(s) of a killed run");
        }
    }

    let graph = nets::build_spec(&cfg.model.arch, fcfg.channels, k)
        .map_err(|e| anyhow!("model.arch {}: {e}", cfg.model.arch))?;
    let param_info: Vec<(String, bool)> = graph
        .params
        .iter()
        .map(|p| (p.name.clone(), p.kind == ParamKind::Trainable))
        .collect();
    let mut model = Net::new(graph, device, seed)?;
    if let Some(init) = &cfg.model.init {
        model
            .load_weights(&init.join(checkpoint::WEIGHTS_FILE))
            .with_context(|| format!("model.init {}", init.display()))?;
    }
    let all: Vec<Tensor> = param_info
        .iter()
        .map(|(n, _)| {
            model
                .param(n)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| anyhow!("parameter {n} missing"))
        })
        .collect::<Result<_>>()?;
    let trainable: Vec<Tensor> = all
        .iter()
        .zip(&param_info)
        .filter(|(_, (_, t))| *t)
        .map(|(p, _)| p.shallow_clone())
        .collect();
    let trainable_names: Vec<&str> = param_info
        .iter()
        .filter(|(_, t)| *t)
        .map(|(n, _)| n.as_str())
        .collect();
    let mut adam = AdamW::new(&trainable);
    let mut ema: Option<Vec<Tensor>> = o.ema_decay.map(|_| snapshot(&all));

    let mut state = TrainState {
        epoch: 0,
        adam_step: 0,
        batch_step: 0,
        best_value: f64::NAN,
        best_epoch: 0,
        loss_scale: o.loss_scale,
        growth_tracker: 0,
        fold,
        n_folds: cfg.data.n_folds,
        ema: ema.is_some(),
        config: cfg.to_toml(),
    };
    let mut history: Vec<EpochRow> = Vec::new();
    if let Some(dir) = &resume_from {
        let text = std::fs::read_to_string(dir.join(STATE_JSON))
            .with_context(|| format!("reading {}", dir.join(STATE_JSON).display()))?;
        state = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", dir.join(STATE_JSON).display()))?;
        if state.fold != fold {
            bail!(
                "{}: saved for fold {}, not {fold}",
                dir.display(),
                state.fold
            );
        }
        let now = cfg.to_toml();
        if state.config != now {
            let saved: Vec<&str> = state.config.lines().collect();
            let changed: Vec<String> = now
                .lines()
                .filter(|l| !saved.contains(l))
                .map(|l| format!("`{}`", l.trim()))
                .collect();
            bail!(
                "{}: the run was started with another configuration (now {}); resuming would \
                 mix two experiments. Restore the saved configuration ({}/config.toml) or start \
                 a new run directory",
                dir.display(),
                if changed.is_empty() {
                    "some keys were removed".to_string()
                } else {
                    changed.join(", ")
                },
                out_dir.display()
            );
        }
        let tensors = checkpoint::read_tensors(&dir.join(STATE_TENSORS))?;
        let by: BTreeMap<&str, &NamedTensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let get = |name: String, like: &Tensor| -> Result<Tensor> {
            let t = by
                .get(name.as_str())
                .ok_or_else(|| anyhow!("{}: no tensor {name}", dir.display()))?;
            let shape: Vec<usize> = like.size().iter().map(|&d| d as usize).collect();
            if t.shape != shape {
                bail!(
                    "{}: {name} has shape {:?}, expected {shape:?}",
                    dir.display(),
                    t.shape
                );
            }
            Ok(net::tensor_from(&t.data, &t.shape, device)?)
        };
        let raw: Vec<Tensor> = param_info
            .iter()
            .zip(&all)
            .map(|((n, _), p)| get(format!("param/{n}"), p))
            .collect::<Result<_>>()?;
        copy_all(&all, &raw);
        for (i, n) in trainable_names.iter().enumerate() {
            adam.m[i] = get(format!("adam_m/{n}"), &trainable[i])?;
            adam.v[i] = get(format!("adam_v/{n}"), &trainable[i])?;
        }
        adam.step = state.adam_step;
        if let Some(e) = &mut ema {
            let saved = checkpoint::read_tensors(&dir.join(checkpoint::WEIGHTS_FILE))?;
            let by: BTreeMap<&str, &NamedTensor> =
                saved.iter().map(|t| (t.name.as_str(), t)).collect();
            for ((n, _), slot) in param_info.iter().zip(e.iter_mut()) {
                let t = by
                    .get(n.as_str())
                    .ok_or_else(|| anyhow!("{}: no weight {n}", dir.display()))?;
                *slot = net::tensor_from(&t.data, &t.shape, device)?;
            }
        }
        // The best so far is what best/ holds (it is written before last/).
        if let Some(b) = existing_dir(&best_dir) {
            if let Ok(t) = std::fs::read_to_string(b.join(STATE_JSON)) {
                if let Ok(bs) = serde_json::from_str::<TrainState>(&t) {
                    state.best_value = bs.best_value;
                    state.best_epoch = bs.best_epoch;
                }
            }
        }
        history = read_history(out_dir);
        history.retain(|r| r.epoch <= state.epoch);
        eprintln!(
            "fit: resuming from {} after epoch {} (step {})",
            dir.display(),
            state.epoch,
            state.batch_step
        );
    }

    birdclef_models::fsio::write_atomic(&out_dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    // Validation windows, computed once.
    let cap = cfg.run.debug_batches.map(|b| 4 * b * o.batch_size);
    let val = build_val(
        ds,
        store,
        &val_idx,
        &frontend,
        cfg.data.val_max_windows,
        cap,
    )?;
    let reference = reference_input(&fcfg, seed).map_err(|e| anyhow!("{e}"))?;
    let ref_x = net::tensor_from(&reference.data, &reference.shape, device)?;

    // The training order: every recording `repeats` times.
    let epoch_len = train_idx.len() * o.repeats;
    let full_batches = epoch_len / o.batch_size;
    let mut steps_per_epoch = if full_batches == 0 { 1 } else { full_batches };
    if let Some(d) = cfg.run.debug_batches {
        steps_per_epoch = steps_per_epoch.min(d);
    }
    let total_steps = (steps_per_epoch * o.epochs) as u64;
    let warmup = (o.warmup_epochs * steps_per_epoch as f64).round() as u64;

    let workers = if cfg.data.num_workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.data.num_workers
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .context("building the batch thread pool")?;
    let mut builder = BatchBuilder::new(
        ds,
        store,
        frontend.clone(),
        cfg.augment.clone(),
        cfg.loss.clone(),
        backgrounds,
        seed,
    );
    if let Some(p) = pseudo {
        builder = builder.with_pseudo(p);
    }
    let kind = if pseudo.is_some() { "distill" } else { "fit" };
    let card_base = Card {
        format_version: CARD_FORMAT_VERSION,
        name: format!("{}-{card_name}-fold{fold}", cfg.model.arch),
        architecture: Some(cfg.model.arch.clone()),
        labels: ds.labels.clone(),
        frontend: fcfg.clone(),
        input_shape: fcfg.input_shape(),
        provenance: Provenance {
            data_hash: Some(data_hash(ds, folds, cfg)),
            folds: Some(FoldInfo {
                fold,
                n_folds: cfg.data.n_folds,
            }),
            commit: git_commit(),
            notes: None,
        },
    };
    card_base
        .validate_for_model()
        .map_err(|r| anyhow!("the card would be invalid: {r}"))?;

    let mut epochs_run = 0;
    for epoch in state.epoch..o.epochs {
        let t0 = Instant::now();
        tch::manual_seed((seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)) as i64 & i64::MAX);
        let mut order: Vec<usize> = (0..o.repeats)
            .flat_map(|_| train_idx.iter().copied())
            .collect();
        let mut rng = Rng::new(seed ^ 0x00F1_7000 ^ ((epoch as u64) << 32));
        rng.shuffle(&mut order);
        let bs = o.batch_size.min(order.len());
        let items: Vec<Item> = match pseudo {
            Some(p) => {
                let share = (bs as f64 * cfg.distill.pseudo_fraction).round() as usize;
                let n_pseudo = share.clamp(1, bs.saturating_sub(1).max(1));
                epoch_items(&order, p.len(), n_pseudo, bs, steps_per_epoch, &mut rng)
            }
            None => order.iter().map(|&r| Item::Clip(r)).collect(),
        };
        let mut loss_sum = 0.0;
        let mut skipped = 0usize;
        let mut lr = 0.0;
        let mut samples = 0usize;
        let result: Result<()> = std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
            let order = &items;
            let builder = &builder;
            let pool = &pool;
            s.spawn(move || {
                for b in 0..steps_per_epoch {
                    let batch = pool.install(|| builder.build_items(order, bs, epoch, b));
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..steps_per_epoch {
                let batch = rx.recv().context("the batch builder stopped")??;
                let n = batch.shape[0];
                samples += n;
                lr = lr_at(state.batch_step, total_steps, warmup, o.lr, o.min_lr_ratio);
                let x = net::tensor_from(&batch.x, &batch.shape, device)?;
                let y = net::tensor_from(&batch.y, &[n, k], device)?;
                let w = net::tensor_from(&batch.w, &[n, k], device)?;
                for p in &trainable {
                    p.shallow_clone().zero_grad();
                }
                let logits = tch::autocast(amp, || model.f_forward(&x, true))?;
                let l = loss(&logits, &y, &w, &cfg.loss);
                loss_sum += l.double_value(&[]);
                let scale = if amp { state.loss_scale } else { 1.0 };
                (&l * scale).backward();
                let grads: Vec<Tensor> = trainable.iter().map(Tensor::grad).collect();
                let norms: Vec<Tensor> = tch::no_grad(|| {
                    grads
                        .iter()
                        .filter(|g| g.defined())
                        .map(|g| {
                            if amp {
                                let _ = g.shallow_clone().g_mul_scalar_(1.0 / scale);
                            }
                            g.norm()
                        })
                        .collect()
                });
                let total = if norms.is_empty() {
                    0.0
                } else {
                    Tensor::stack(&norms, 0).norm().double_value(&[])
                };
                state.batch_step += 1;
                if !total.is_finite() {
                    skipped += 1;
                    if amp {
                        state.loss_scale *= o.loss_scale_backoff;
                        state.growth_tracker = 0;
                    }
                    continue;
                }
                if amp {
                    state.growth_tracker += 1;
                    if state.growth_tracker >= o.loss_scale_growth_interval {
                        state.loss_scale *= o.loss_scale_growth;
                        state.growth_tracker = 0;
                    }
                }
                if o.grad_clip_norm > 0.0 && total > o.grad_clip_norm {
                    let c = o.grad_clip_norm / (total + 1e-6);
                    tch::no_grad(|| {
                        for g in grads.iter().filter(|g| g.defined()) {
                            let _ = g.shallow_clone().g_mul_scalar_(c);
                        }
                    });
                }
                adam.step(&trainable, lr, o);
                if let (Some(e), Some(d)) = (&mut ema, o.ema_decay) {
                    let step = adam.step as f64;
                    let d = d.min((1.0 + step) / (10.0 + step));
                    tch::no_grad(|| {
                        for (e, p) in e.iter_mut().zip(&all) {
                            let _ = e.g_mul_scalar_(d);
                            let _ = e.g_add_(&(p.detach() * (1.0 - d)));
                        }
                    });
                }
            }
            Ok(())
        });
        result?;
        let train_seconds = t0.elapsed().as_secs_f64();
        state.adam_step = adam.step;

        // Validate (and save) with the EMA weights when there are any.
        let raw = ema.as_ref().map(|e| {
            let raw = snapshot(&all);
            copy_all(&all, e);
            raw
        });
        let (val_loss, auc, cmap, note) =
            validate(&model, &val, k, cfg.data.val_batch_size, amp, &cfg.loss)?;
        if let Some(n) = note {
            eprintln!("fit: epoch {}: {n}", epoch + 1);
        }
        let mut row = EpochRow {
            epoch: epoch + 1,
            train_loss: loss_sum / steps_per_epoch as f64,
            val_loss,
            val_macro_roc_auc: auc,
            val_cmap: cmap,
            lr,
            seconds: 0.0,
            train_samples_per_s: samples as f64 / train_seconds.max(1e-9),
            skipped_steps: skipped,
        };
        state.epoch = epoch + 1;
        let value = row.metric(cfg.run.best_metric);
        let better = match cfg.run.best_metric {
            BestMetric::ValLoss => value < state.best_value,
            _ => value > state.best_value,
        };
        let is_best = state.best_epoch == 0
            || (value.is_finite() && (better || !state.best_value.is_finite()));
        if is_best {
            state.best_value = value;
            state.best_epoch = epoch + 1;
        }
        let raw_params = raw.as_deref().unwrap_or(&all);
        let save = |dir: &Path| -> Result<()> {
            fsio::write_dir_atomic(dir, |tmp| -> Result<()> {
                model.save_weights(&tmp.join(checkpoint::WEIGHTS_FILE))?;
                let mut card = card_base.clone();
                card.provenance.notes = Some(format!(
                    "birdclef-train {kind}: fold {fold}/{}, epoch {} of {}, {} = {value:.5}{}{}; seed {seed}",
                    cfg.data.n_folds,
                    epoch + 1,
                    o.epochs,
                    cfg.run.best_metric.name(),
                    if ema.is_some() { ", EMA weights" } else { "" },
                    pseudo.map_or(String::new(), |p| format!(
                        ", {} pseudo-labelled windows at {} of each batch",
                        p.len(),
                        cfg.distill.pseudo_fraction
                    )),
                ));
                card.save(&tmp.join(checkpoint::CARD_FILE))?;
                let y = tch::no_grad(|| model.f_forward(&ref_x, false))?;
                let output = NamedTensor {
                    name: "output".into(),
                    shape: y.size().iter().map(|&d| d as usize).collect(),
                    data: net::to_vec_f32(&y)?,
                };
                checkpoint::write_tensors(
                    &tmp.join(checkpoint::REFERENCE_FILE),
                    &[reference.clone(), output],
                    None,
                )?;
                let mut tensors = Vec::new();
                for ((n, _), t) in param_info.iter().zip(raw_params) {
                    tensors.push(NamedTensor {
                        name: format!("param/{n}"),
                        shape: t.size().iter().map(|&d| d as usize).collect(),
                        data: net::to_vec_f32(t)?,
                    });
                }
                for (i, n) in trainable_names.iter().enumerate() {
                    for (prefix, t) in [("adam_m", &adam.m[i]), ("adam_v", &adam.v[i])] {
                        tensors.push(NamedTensor {
                            name: format!("{prefix}/{n}"),
                            shape: t.size().iter().map(|&d| d as usize).collect(),
                            data: net::to_vec_f32(t)?,
                        });
                    }
                }
                checkpoint::write_tensors(&tmp.join(STATE_TENSORS), &tensors, None)?;
                std::fs::write(tmp.join(STATE_JSON), serde_json::to_string_pretty(&state)?)?;
                Checkpoint::open(tmp)?;
                Ok(())
            })
        };
        row.seconds = t0.elapsed().as_secs_f64();
        history.push(row);
        write_history(out_dir, &history)?;
        if let Err(e) = plot_history(&out_dir.join(HISTORY_PNG), &history) {
            eprintln!("fit: {e} (history.png not updated)");
        }
        // history first, then best/, then last/: a run killed in between redoes this epoch and
        // drops its row again (history is cut to last/'s epoch on resume).
        if is_best {
            save(&best_dir)?;
        }
        save(&last_dir)?;
        if let Some(r) = &raw {
            copy_all(&all, r);
        }
        eprintln!(
            "{kind}: epoch {}/{}: train_loss {:.4} val_loss {:.4} val_macro_roc_auc {:.4} val_cmap {:.4} lr {:.2e} {:.1} s ({:.1} samples/s){}",
            row.epoch,
            o.epochs,
            row.train_loss,
            row.val_loss,
            row.val_macro_roc_auc,
            row.val_cmap,
            row.lr,
            row.seconds,
            row.train_samples_per_s,
            if is_best { " *best" } else { "" }
        );
        epochs_run += 1;
    }
    Ok(FitSummary {
        out_dir: out_dir.to_path_buf(),
        history,
        best: (state.best_epoch, state.best_value),
        epochs_run,
        sizes: (train_idx.len(), val.n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let lr = |s| lr_at(s, 100, 10, 1e-3, 0.1);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(100) - 1e-4).abs() < 1e-12);
        for s in 10..100 {
            assert!(lr(s + 1) <= lr(s));
        }
    }

    #[test]
    fn focal_loss_is_below_bce_and_weights_mask() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, -3.0]).reshape([1, 4]);
        let y = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).reshape([1, 4]);
        let w = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
        let mut cfg = LossConfig::default();
        let bce = loss(&logits, &y, &w, &cfg).double_value(&[]);
        cfg.kind = LossKind::Focal;
        let focal = loss(&logits, &y, &w, &cfg).double_value(&[]);
        assert!(focal < bce && focal > 0.0, "{focal} vs {bce}");
        // Masking a class removes it from the mean.
        cfg.kind = LossKind::Bce;
        let w2 = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0]).reshape([1, 4]);
        let masked = loss(&logits, &y, &w2, &cfg).double_value(&[]);
        let first3 = loss(
            &logits.narrow(1, 0, 3),
            &y.narrow(1, 0, 3),
            &w.narrow(1, 0, 3),
            &cfg,
        )
        .double_value(&[]);
        assert!((masked - first3).abs() < 1e-6);
    }
}
