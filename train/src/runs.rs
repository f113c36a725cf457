//! Training runs over a competition directory: what `birdclef-train fit` and `distill` (and the
//! pipeline) do around [`fit_with`]: read the dataset, open the audio cache, load background
//! clips, assign folds, load the pseudo-labels, and train each requested fold into
//! `RUN_DIR/fold<N>/`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use tch::Device;

use crate::config::TrainConfig;
use crate::data::cache::{load_backgrounds, Cache, CacheOptions};
use crate::data::folds::assign_folds;
use crate::data::metadata::{load_dataset, DataOptions};
use crate::distill::load_pseudo;
use crate::fit::{fit_with, FitSummary};

/// Everything a training run needs besides its configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The competition directory.
    pub data: PathBuf,
    /// The run directory (`fold<N>/` inside).
    pub out: PathBuf,
    /// Train only this fold (default: the config's `data.folds`).
    pub fold: Option<usize>,
    /// Continue each fold from its `last/` checkpoint.
    pub resume: bool,
    /// Audio cache directory (default: `RUN_DIR/../.cache`).
    pub cache_dir: Option<PathBuf>,
    /// Metadata column whose values are never split across folds.
    pub group_column: Option<String>,
    /// At most this many recordings per species.
    pub cap_per_species: Option<usize>,
    /// Classes with fewer recordings are only trained on.
    pub min_count_for_val: usize,
    /// Seconds of each unlabeled soundscape loaded for background mixing.
    pub background_seconds: f64,
    /// Most unlabeled soundscapes loaded for background mixing.
    pub backgrounds: usize,
    /// Pseudo-label file for distillation.
    pub pseudo: Option<PathBuf>,
    /// Where the pseudo-labelled soundscapes are (default: `DATA/unlabeled_soundscapes`).
    pub soundscapes: Option<PathBuf>,
    /// Training device.
    pub device: Device,
}

impl RunOptions {
    /// Defaults for a competition directory and a run directory (CPU).
    pub fn new(data: &Path, out: &Path) -> Self {
        Self {
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            fold: None,
            resume: false,
            cache_dir: None,
            group_column: None,
            cap_per_species: None,
            min_count_for_val: 2,
            background_seconds: 60.0,
            backgrounds: 16,
            pseudo: None,
            soundscapes: None,
            device: Device::Cpu,
        }
    }

    /// The audio cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            self.out
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(".cache")
        })
    }
}

/// Train the folds `opts` and `cfg` name; returns each fold's number and summary.
pub fn train_folds(opts: &RunOptions, cfg: &TrainConfig) -> Result<Vec<(usize, FitSummary)>> {
    cfg.validate()?;
    let loaded = load_dataset(
        &opts.data,
        &DataOptions {
            group_column: opts.group_column.clone(),
            cap_per_species: opts.cap_per_species,
            ..DataOptions::default()
        },
    )?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let ds = loaded.dataset;
    let cache_dir = opts.cache_dir();
    let cache = Cache::build_or_open(
        &ds,
        &cache_dir,
        &CacheOptions {
            seconds: cfg.data.cache_seconds,
            threads: cfg.data.num_workers,
            ..CacheOptions::default()
        },
    )?;
    let backgrounds = if cfg.augment.background_prob > 0.0 && opts.backgrounds > 0 {
        load_backgrounds(&opts.data, opts.background_seconds, opts.backgrounds)?
    } else {
        Vec::new()
    };
    let pseudo = match &opts.pseudo {
        Some(p) => {
            let dir = opts
                .soundscapes
                .clone()
                .unwrap_or_else(|| opts.data.join("unlabeled_soundscapes"));
            let loaded = load_pseudo(
                p,
                &ds.labels,
                &dir,
                &cache_dir,
                &cfg.distill,
                cfg.data.num_workers,
            )?;
            if !loaded.missing_labels.is_empty() {
                eprintln!(
                    "warning: {} has no column for {} species of the dataset ({}); they are \
                     masked in pseudo-labelled samples",
                    p.display(),
                    loaded.missing_labels.len(),
                    loaded.missing_labels.join(", ")
                );
            }
            if !loaded.unknown_labels.is_empty() {
                eprintln!(
                    "warning: {} species of {} are not labels of the dataset and are ignored: {}",
                    loaded.unknown_labels.len(),
                    p.display(),
                    loaded.unknown_labels.join(", ")
                );
            }
            eprintln!(
                "info: {} of {} pseudo-labelled windows kept (threshold {}), {} of each batch",
                loaded.set.len(),
                loaded.total,
                cfg.distill.threshold,
                cfg.distill.pseudo_fraction
            );
            Some(loaded.set)
        }
        None => None,
    };
    eprintln!(
        "info: {} recordings, {} labels, {} background clips; audio cache {}",
        ds.recordings.len(),
        ds.labels.len(),
        backgrounds.len(),
        cache.path().display()
    );
    let folds = assign_folds(&ds, cfg.data.n_folds, cfg.run.seed, opts.min_count_for_val);
    let which = match opts.fold {
        Some(f) => vec![f],
        None => cfg.data.folds.clone(),
    };
    let mut out = Vec::new();
    for fold in which {
        ensure!(
            fold < cfg.data.n_folds,
            "fold {fold} is not below data.n_folds = {}",
            cfg.data.n_folds
        );
        let dir = opts.out.join(format!("fold{fold}"));
        let s = fit_with(
            &ds,
            &cache,
            &folds,
            fold,
            cfg,
            &backgrounds,
            pseudo.as_ref(),
            &dir,
            opts.device,
            opts.resume,
        )
        .with_context(|| format!("fold {fold}"))?;
        out.push((fold, s));
    }
    Ok(out)
}
