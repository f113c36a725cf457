//! `birdclef-train fit`: train one fold of a dataset and keep exportable checkpoints.
//!
//! [`fit_with`] composes a [`Trainer`](trainer::Trainer) (the network with AdamW, the dynamic
//! loss scale, gradient clipping and the EMA: [`optim`]) with the data (augmented batches built
//! on rayon workers, [`crate::data::batch`]), the learning-rate schedule (linear warm-up, then
//! cosine, per step), validation on the held-out fold ([`validate`]) and the checkpointer: after
//! each epoch it rewrites `history.csv` and `history.png` ([`history`]) and writes the checkpoint
//! directories `best/` (by [`BestMetric`]) and `last/`, each atomically and each exportable by
//! `birdclef-export` (card, weights, reference batch) plus the training state ([`state`]).
//! Randomness comes from the seed and the epoch only (batch generators, libtorch's generator
//! reseeded per epoch), so a run resumed on the CPU repeats what the killed one would have done.
//! On CUDA, cuDNN picks its algorithms per run, so a resumed run is close to, not bit for bit
//! equal to, an uninterrupted one.
//!
//! [`runs`] trains the folds of a competition directory (what `fit` and `distill` run).

pub mod history;
pub mod optim;
pub mod runs;
pub mod state;
mod trainer;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::Instant;

use birdclef_models::card::{Card, FoldInfo, Provenance, CARD_FORMAT_VERSION};
use birdclef_models::frontend::{Frontend, FrontendConfig, Normalize};
use birdclef_models::fsio;
use birdclef_models::nets;
use birdclef_models::rng::Rng;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Reduction, Tensor};

pub use history::{
    EpochRow, CONFUSION_BEST_CSV, CONFUSION_CSV, CONFUSION_PNG, HISTORY_COLUMNS, HISTORY_CSV,
    HISTORY_PNG,
};
pub use optim::lr_at;
pub use state::{holds_run, FoldRun, TrainState, STATE_JSON, STATE_TENSORS};
pub use trainer::{EpochStats, Schedule};

use crate::config::{BestMetric, LossConfig, LossKind, LrSchedule, Sampler, TrainConfig};
use crate::data::batch::{balanced_order, epoch_items, BatchBuilder, Item};
use crate::data::soft::PseudoSet;
use crate::data::{AudioStore, Dataset};
use crate::error::TrainError;
use crate::model::init::reference_input;
use history::{plot_confusion, plot_history, write_confusion, write_history};
use trainer::Trainer;
use validate::ValSet;

pub use crate::data::folds::{ALWAYS_TRAIN, HELD_OUT};

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
    /// The best checkpoint's scores on the test split (annotated soundscapes with
    /// `split = "ratios"`; set by [`runs::train_folds`]).
    pub test: Option<validate::Validation>,
}

/// The frontend a configuration asks for: the card's (or the built-in nvbird224 card with
/// per-image standardisation) with the `model.*` overrides, and the card's name.
pub fn resolve_frontend(cfg: &TrainConfig) -> Result<(FrontendConfig, String), TrainError> {
    let card = match &cfg.model.card {
        Some(p) => Card::load(p).map_err(|cause| TrainError::ModelCard {
            path: p.clone(),
            cause,
        })?,
        None => {
            let mut c = Card::nvbird224();
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
    if let Some(n) = cfg.model.normalize {
        f.normalize = n;
    }
    if let Some(w) = cfg.model.window_seconds {
        f.windows.window_seconds = w;
        f.windows.min_last_window_seconds = f.windows.min_last_window_seconds.min(w);
    }
    if let Some(c) = cfg.model.context_seconds {
        f.windows.context_seconds = (c != f.windows.window_seconds).then_some(c);
    }
    f.validate().map_err(|cause| TrainError::Frontend {
        what: "model",
        cause,
    })?;
    let input_seconds = f
        .windows
        .context_seconds
        .unwrap_or(f.windows.window_seconds);
    if (input_seconds - cfg.augment.crop_seconds).abs() > 1e-9 {
        return Err(TrainError::CropWindow {
            crop_seconds: cfg.augment.crop_seconds,
            window_seconds: input_seconds,
        });
    }
    Ok((f, card.name))
}

/// The training loss (mean over weighted elements) of `logits` against targets `y` with weights
/// `w`, computed in fp32.
pub fn loss(logits: &Tensor, y: &Tensor, w: &Tensor, cfg: &LossConfig) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let bce = || {
        logits.binary_cross_entropy_with_logits(y, None::<Tensor>, None::<Tensor>, Reduction::None)
    };
    let l = match cfg.kind {
        LossKind::Bce => bce(),
        LossKind::Focal => {
            let p = logits.sigmoid();
            let pt: Tensor = y * &p + (1.0 - y) * (1.0 - &p);
            let one_minus: Tensor = 1.0 - pt;
            let modulating = one_minus.pow_tensor_scalar(cfg.focal_gamma);
            bce() * modulating
        }
        LossKind::Softmax => {
            // Cross-entropy against the targets normalised to sum 1; each sample weighted by
            // its classes' weights averaged under that distribution (a row without any target
            // weighs 0).
            let y = y.to_kind(Kind::Float);
            let p = &y / y.sum_dim_intlist(1, true, Kind::Float).clamp_min(1e-12);
            let ce =
                -(&p * logits.log_softmax(1, Kind::Float)).sum_dim_intlist(1, false, Kind::Float);
            let sw = (&p * w).sum_dim_intlist(1, false, Kind::Float);
            return (ce * &sw).sum(Kind::Float) / sw.sum(Kind::Float).clamp_min(1e-12);
        }
    };
    (l * w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1.0)
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

/// The knowledge-distillation teachers `paths` name (checkpoints, or run directories standing for
/// their `fold<N>/best`), each checked to have the student's `labels` and input `frontend`, in
/// eval mode on `device`.
pub fn kd_teachers(
    paths: &[PathBuf],
    labels: &[String],
    frontend: &FrontendConfig,
    device: Device,
) -> Result<Vec<crate::model::net::Net>, TrainError> {
    let mut dirs = Vec::new();
    for p in paths {
        if p.join(birdclef_models::checkpoint::CARD_FILE).is_file() {
            dirs.push(p.clone());
            continue;
        }
        match birdclef_export::export::checkpoints_in_run(p) {
            Ok(found) if !found.is_empty() => dirs.extend(found),
            _ => {
                return Err(TrainError::KdTeacher {
                    path: p.clone(),
                    reason: "neither a checkpoint (card.json) nor a run directory with \
                             fold<N>/best/"
                        .into(),
                })
            }
        }
    }
    dirs.iter()
        .map(|dir| {
            let card = Card::load(&dir.join(birdclef_models::checkpoint::CARD_FILE))?;
            let mismatch = |reason: String| TrainError::KdTeacher {
                path: dir.clone(),
                reason,
            };
            if card.labels != labels {
                return Err(mismatch(format!(
                    "its {} labels are not the student's {} labels in the same order",
                    card.labels.len(),
                    labels.len()
                )));
            }
            if &card.frontend != frontend {
                return Err(mismatch(
                    "its frontend differs from the student's: the teachers see the student's \
                     augmented batch, so they need the same input"
                        .into(),
                ));
            }
            Ok(crate::model::net::Net::from_checkpoint(dir, device)?)
        })
        .collect()
}

/// Train fold `fold` of `ds` (audio from `store`) as `cfg` says, writing into `out_dir`.
///
/// `folds` has one entry per recording: its fold, [`ALWAYS_TRAIN`] for recordings that are
/// always trained on, or [`HELD_OUT`] for recordings never used. Recordings whose fold is `fold`
/// are validated on; all others are trained on. `backgrounds` are 32 kHz clips for background mixing (may be empty). With `resume`, the run
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
) -> Result<FitSummary, TrainError> {
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
) -> Result<FitSummary, TrainError> {
    cfg.validate()?;
    let pseudo = pseudo.filter(|p| !p.is_empty() && cfg.distill.uses_pseudo_labels());
    let n_rec = ds.recordings.len();
    if folds.len() != n_rec || store.len() != n_rec {
        return Err(TrainError::Sizes {
            recordings: n_rec,
            folds: folds.len(),
            stored: store.len(),
        });
    }
    let k = ds.labels.len();
    let train_idx: Vec<usize> = (0..n_rec)
        .filter(|&i| folds[i] != fold && folds[i] != HELD_OUT)
        .collect();
    let val_idx: Vec<usize> = (0..n_rec).filter(|&i| folds[i] == fold).collect();
    if train_idx.is_empty() || val_idx.is_empty() {
        return Err(TrainError::EmptyFold {
            fold,
            train: train_idx.len(),
            val: val_idx.len(),
        });
    }
    let (fcfg, card_name) = resolve_frontend(cfg)?;
    let frontend = Frontend::new(fcfg.clone()).map_err(|cause| TrainError::Frontend {
        what: "model",
        cause,
    })?;

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
            FoldRun::Nothing => {
                return Err(TrainError::Resume {
                    dir: out_dir.to_path_buf(),
                    reason: "nothing to resume: no run there (no last/ checkpoint, no \
                             config.toml); leave out --resume to start one"
                        .into(),
                })
            }
        }
    } else {
        None
    };
    std::fs::create_dir_all(out_dir).map_err(TrainError::io("creating", out_dir))?;
    if !resume && holds_run(out_dir) {
        return Err(TrainError::HoldsRun {
            dir: out_dir.to_path_buf(),
            hint: "",
        });
    }
    for dir in [&last_dir, &best_dir] {
        let n = fsio::remove_stale_temps(dir, "tmp");
        if n > 0 {
            eprintln!("fit: removed {n} unfinished checkpoint folder(s) of a killed run");
        }
    }

    let o = &cfg.optim;
    let seed = cfg.run.seed;
    let graph = nets::build_spec_with(&cfg.model.arch, fcfg.channels, k, cfg.model.drop_path_rate)
        .map_err(|cause| TrainError::Arch {
            arch: cfg.model.arch.clone(),
            cause: Box::new(cause),
        })?;
    let mut trainer = Trainer::new(cfg, graph, fold, device)?;
    if cfg.distill.uses_kd() {
        let teachers = kd_teachers(&cfg.distill.kd_teachers, &ds.labels, &fcfg, device)?;
        eprintln!(
            "fit: knowledge distillation from {} teacher(s), weight {}, temperature {}",
            teachers.len(),
            cfg.distill.kd_weight,
            cfg.distill.kd_temperature
        );
        trainer.set_kd_teachers(teachers);
    }
    if let Some(dir) = &resume_from {
        trainer.resume(dir, &best_dir, out_dir)?;
        eprintln!(
            "fit: resuming from {} after epoch {} (step {})",
            dir.display(),
            trainer.state.epoch,
            trainer.state.batch_step
        );
    }
    fsio::write_atomic(&out_dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    // Validation windows, computed once.
    let cap = cfg.run.debug_batches.map(|b| 4 * b * o.batch_size);
    let val = ValSet::build(
        ds,
        store,
        &val_idx,
        &frontend,
        cfg.data.val_max_windows,
        cap,
    )?;
    let reference = reference_input(&fcfg, seed)?;

    // The training order: every recording `repeats` times.
    let epoch_len = train_idx.len() * o.repeats;
    let full_batches = epoch_len / o.batch_size;
    let mut steps_per_epoch = if full_batches == 0 { 1 } else { full_batches };
    if let Some(d) = cfg.run.debug_batches {
        steps_per_epoch = steps_per_epoch.min(d);
    }
    let schedule = Schedule {
        steps_per_epoch,
        total: (steps_per_epoch * o.epochs) as u64,
        warmup: (o.warmup_epochs * steps_per_epoch as f64).round() as u64,
    };

    let workers = if cfg.data.num_workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.data.num_workers
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .map_err(|cause| TrainError::ThreadPool {
            what: "batch",
            cause,
        })?;
    let mut builder = BatchBuilder::new(
        ds,
        store,
        frontend.clone(),
        cfg.augment.clone(),
        cfg.loss.clone(),
        backgrounds,
        seed,
    );
    let class_counts = crate::data::primary_counts(ds, &train_idx);
    builder = builder.with_class_counts(&class_counts);
    if let Some(p) = pseudo {
        builder = builder.with_pseudo(p, cfg.distill.clone());
    }
    let kind = if pseudo.is_some() { "distill" } else { "fit" };
    let card_base = Card {
        format_version: CARD_FORMAT_VERSION,
        name: format!("{}-{card_name}-fold{fold}", cfg.model.arch),
        architecture: Some(cfg.model.arch.clone()),
        labels: ds.labels.clone(),
        frontend: fcfg.clone(),
        input_shape: fcfg.input_shape(),
        output_activation: cfg.loss.kind.output_activation(),
        provenance: Provenance {
            data_hash: Some(data_hash(ds, folds, cfg)),
            folds: Some(FoldInfo {
                fold,
                n_folds: cfg.data.n_folds,
            }),
            commit: git_commit(),
            notes: None,
            sources: ds.sources.clone(),
        },
    };
    card_base
        .validate_for_model()
        .map_err(TrainError::CardProblem)?;

    let mut epochs_run = 0;
    for epoch in trainer.state.epoch..o.epochs {
        let t0 = Instant::now();
        tch::manual_seed((seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)) as i64 & i64::MAX);
        let mut rng = Rng::new(seed ^ 0x00F1_7000 ^ ((epoch as u64) << 32));
        let order: Vec<usize> = if cfg.data.balance > 0.0 {
            balanced_order(
                ds,
                &train_idx,
                &class_counts,
                cfg.data.balance,
                o.repeats,
                &mut rng,
            )
        } else {
            let mut order: Vec<usize> = (0..o.repeats)
                .flat_map(|_| train_idx.iter().copied())
                .collect();
            rng.shuffle(&mut order);
            order
        };
        let bs = o.batch_size.min(order.len());
        let items: Vec<Item> = match pseudo {
            Some(p) if cfg.distill.pseudo_fraction > 0.0 => {
                let share = (bs as f64 * cfg.distill.pseudo_fraction).round() as usize;
                let n_pseudo = share.clamp(1, bs.saturating_sub(1).max(1));
                let weighted = (cfg.distill.sampler == Sampler::Weighted).then_some(p);
                epoch_items(
                    &order,
                    p.len(),
                    n_pseudo,
                    bs,
                    steps_per_epoch,
                    &mut rng,
                    weighted,
                )
            }
            _ => order.iter().map(|&r| Item::Clip(r)).collect(),
        };
        let stats = trainer.epoch(&builder, &pool, &items, bs, epoch, schedule)?;
        let train_seconds = t0.elapsed().as_secs_f64();

        // Validate and save with the EMA weights when there are any.
        trainer.with_eval_weights(|t, raw| -> Result<(), TrainError> {
            let (v, note) = t.validate(&val)?;
            if let Some(n) = note {
                eprintln!("{kind}: epoch {}: {n}", epoch + 1);
            }
            let mut row = EpochRow {
                epoch: epoch + 1,
                train_loss: stats.train_loss,
                val_loss: v.loss,
                val_macro_roc_auc: v.macro_roc_auc,
                val_cmap: v.cmap,
                lr: stats.lr,
                seconds: 0.0,
                train_samples_per_s: stats.samples as f64 / train_seconds.max(1e-9),
                skipped_steps: stats.skipped,
                val_macro_f1: v.macro_f1,
                val_weighted_f1: v.weighted_f1,
            };
            let value = row.metric(cfg.run.best_metric);
            let state = &mut t.state;
            state.epoch = epoch + 1;
            if o.schedule == LrSchedule::Plateau {
                let m = o.plateau_metric.unwrap_or(cfg.run.best_metric);
                if state.plateau.update(row.metric(m), m == BestMetric::ValLoss, o) {
                    eprintln!(
                        "{kind}: epoch {}: {} has not improved for {} epochs; the learning rate is now {} × its schedule",
                        epoch + 1,
                        m.name(),
                        o.plateau_patience + 1,
                        state.plateau.scale
                    );
                }
            }
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
            let mut card = card_base.clone();
            card.provenance.notes = Some(format!(
                "birdclef-train {kind}: fold {fold}/{}, epoch {} of {}, {} = {value:.5}{}{}; seed {seed}",
                cfg.data.n_folds,
                epoch + 1,
                o.epochs,
                cfg.run.best_metric.name(),
                if o.ema_decay.is_some() { ", EMA weights" } else { "" },
                pseudo.map_or(String::new(), |p| format!(
                    ", {} pseudo-labelled windows at {} of each batch, mixed into {} of the clips",
                    p.len(),
                    cfg.distill.pseudo_fraction,
                    cfg.distill.mix_prob
                )),
            ));
            row.seconds = t0.elapsed().as_secs_f64();
            t.history.push(row);
            write_history(out_dir, &t.history)?;
            write_confusion(&out_dir.join(CONFUSION_CSV), &ds.labels, &v.confusion)?;
            if let Err(e) = plot_confusion(&out_dir.join(CONFUSION_PNG), &v.confusion) {
                eprintln!("{kind}: {e} (confusion.png not updated)");
            }
            if is_best {
                write_confusion(&out_dir.join(CONFUSION_BEST_CSV), &ds.labels, &v.confusion)?;
            }
            if let Err(e) = plot_history(&out_dir.join(HISTORY_PNG), &t.history) {
                eprintln!("{kind}: {e} (history.png not updated)");
            }
            // history first, then best/, then last/: a run killed in between redoes this epoch
            // and drops its row again (history is cut to last/'s epoch on resume).
            if is_best {
                t.save(&best_dir, &card, &reference, raw)?;
            }
            t.save(&last_dir, &card, &reference, raw)?;
            eprintln!(
                "{kind}: epoch {}/{}: train_loss {:.4} val_loss {:.4} val_macro_roc_auc {:.4} val_cmap {:.4} val_macro_f1 {:.4} lr {:.2e} {:.1} s ({:.1} samples/s){}{}",
                row.epoch,
                o.epochs,
                row.train_loss,
                row.val_loss,
                row.val_macro_roc_auc,
                row.val_cmap,
                row.val_macro_f1,
                row.lr,
                row.seconds,
                row.train_samples_per_s,
                if row.skipped_steps > 0 { format!(", {} steps skipped", row.skipped_steps) } else { String::new() },
                if is_best { " *best" } else { "" }
            );
            Ok(())
        })?;
        epochs_run += 1;
    }
    Ok(FitSummary {
        out_dir: out_dir.to_path_buf(),
        history: trainer.history.clone(),
        best: (trainer.state.best_epoch, trainer.state.best_value),
        epochs_run,
        sizes: (train_idx.len(), val.n),
        test: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_loss_is_the_cross_entropy_of_normalised_targets() {
        let logits =
            Tensor::from_slice(&[2.0f32, 0.0, -1.0, 0.5, 0.5, 3.0, 1.0, 2.0, 3.0]).reshape([3, 3]);
        // One-hot, two positives (normalised to 0.5 each), and a row without targets.
        let y =
            Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]).reshape([3, 3]);
        let w = Tensor::ones([3, 3], (Kind::Float, Device::Cpu));
        let cfg = LossConfig {
            kind: LossKind::Softmax,
            ..LossConfig::default()
        };
        let got = loss(&logits, &y, &w, &cfg).double_value(&[]);
        let lse = |r: [f64; 3]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
        let ce0 = lse([2.0, 0.0, -1.0]) - 2.0;
        let ce1 = lse([0.5, 0.5, 3.0]) - 0.5;
        assert!((got - (ce0 + ce1) / 2.0).abs() < 1e-6, "{got}");
        // Class weights: a sample weighs its target classes' weights.
        let w2 =
            Tensor::from_slice(&[3.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).reshape([3, 3]);
        let got = loss(&logits, &y, &w2, &cfg).double_value(&[]);
        assert!((got - (3.0 * ce0 + ce1) / 4.0).abs() < 1e-6, "{got}");
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
