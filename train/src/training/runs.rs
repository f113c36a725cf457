//! Training runs over a competition directory: what `birdclef-train fit` and `distill` (and the
//! pipeline) do around [`fit_with`]: read the dataset, open the audio cache, load background
//! clips, assign folds, load the pseudo-labels, and train each requested fold into
//! `RUN_DIR/fold<N>/`.

use std::path::{Path, PathBuf};

use birdclef_models::fsio;
use tch::Device;

use birdclef_models::card::Card;
use birdclef_models::frontend::Frontend;

use super::history::write_confusion;
use super::validate::{ValSet, Validation};
use super::{fit_with, holds_run, resolve_frontend, FitSummary, FoldRun, ALWAYS_TRAIN, HELD_OUT};
use crate::config::{SplitMode, TrainConfig};
use crate::data::annotated::{load_annotated, split_csv};
use crate::data::cache::{load_backgrounds, Cache, CacheOptions};
use crate::data::folds::assign_folds;
use crate::data::metadata::{load_dataset, DataOptions};
use crate::data::sources::add_sources;
use crate::data::{AudioStore, Dataset};
use crate::error::TrainError;
use crate::model::net::Net;
use crate::pseudo::load::load_pseudo;

/// Everything a training run needs besides its configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The competition directory.
    pub data: PathBuf,
    /// The run directory (`fold<N>/` inside).
    pub out: PathBuf,
    /// Train only this fold (default: the config's `data.folds`).
    pub fold: Option<usize>,
    /// Continue each fold from its `last/` checkpoint; see [`plan_folds`] for folds without one.
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
    /// Train on annotated soundscapes instead of the competition's recordings (`--data` then
    /// only gives background clips, and may be empty).
    pub annotations: Option<AnnotatedSource>,
    /// Extra data sources (competition directories or CSVs of recordings), only trained on;
    /// see [`crate::data::sources`].
    pub extra_data: Vec<PathBuf>,
    /// Training device.
    pub device: Device,
}

/// Annotated soundscapes: `fit --annotations TABLE --audio DIR`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotatedSource {
    /// The annotation table (CSV or Raven selection table).
    pub table: PathBuf,
    /// The directory its file names are relative to.
    pub audio: PathBuf,
}

/// The split of a run on annotated soundscapes: `file,group,split` per soundscape.
pub const SPLIT_CSV: &str = "split.csv";
/// The best checkpoint's scores on the test split.
pub const TEST_METRICS_JSON: &str = "test_metrics.json";
/// The best checkpoint's confusion matrix on the test split.
pub const CONFUSION_TEST_CSV: &str = "confusion_test.csv";

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
            annotations: None,
            extra_data: Vec::new(),
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

    /// Check the options that the configuration does not (before any work).
    pub fn validate(&self, cfg: &TrainConfig) -> Result<(), TrainError> {
        let bad = |option, message: String| Err(TrainError::BadOption { option, message });
        if self.ratio_split(cfg) && self.fold.is_some_and(|f| f != 0) {
            return bad(
                "--fold",
                "with annotations.split = \"ratios\" there is one split, trained as fold 0".into(),
            );
        }
        if let Some(f) = self.fold {
            if f >= cfg.data.n_folds {
                return bad(
                    "--fold",
                    format!(
                        "--fold {f}: there are only folds 0 to {} (data.n_folds = {})",
                        cfg.data.n_folds - 1,
                        cfg.data.n_folds
                    ),
                );
            }
        }
        if self.cap_per_species == Some(0) {
            return bad(
                "--cap-per-species",
                "--cap-per-species 0 keeps no recording; it must be at least 1".into(),
            );
        }
        if self.backgrounds == 0 {
            return bad(
                "--backgrounds",
                "--backgrounds 0 loads no background clip; it must be at least 1 (to train \
                 without background mixing, set augment.background_prob=0)"
                    .into(),
            );
        }
        if !(self.background_seconds.is_finite() && self.background_seconds > 0.0) {
            return bad(
                "--background-seconds",
                format!(
                    "--background-seconds must be a positive number of seconds, not {}",
                    self.background_seconds
                ),
            );
        }
        Ok(())
    }

    /// The folds to train: `--fold`, else the configuration's `data.folds` (fold 0 alone for
    /// annotated soundscapes split by ratios).
    pub fn folds(&self, cfg: &TrainConfig) -> Vec<usize> {
        match self.fold {
            Some(f) => vec![f],
            None if self.ratio_split(cfg) => vec![0],
            None => cfg.data.folds.clone(),
        }
    }

    /// Whether this is a run on annotated soundscapes with one train/val/test split.
    fn ratio_split(&self, cfg: &TrainConfig) -> bool {
        self.annotations.is_some() && cfg.annotations.split == SplitMode::Ratios
    }
}

/// The directory fold `fold` of a run is trained in.
pub fn fold_dir(run_dir: &Path, fold: usize) -> PathBuf {
    run_dir.join(format!("fold{fold}"))
}

/// Whether any of `folds` of `run_dir` holds something of a run (a checkpoint, or the
/// `config.toml` of one that stopped before its first epoch finished): what `--resume` needs.
pub fn any_fold_started(run_dir: &Path, folds: &[usize]) -> bool {
    folds
        .iter()
        .any(|&f| FoldRun::of(&fold_dir(run_dir, f)) != FoldRun::Nothing)
}

/// Check the run directory and decide how each fold starts, before any work; returns each fold
/// with the `resume` flag for [`fit_with`].
///
/// The run directory, every fold directory and the audio cache directory must be directories or
/// creatable ones. Without `resume`, a fold directory that already holds a run is refused. With
/// `resume`: a fold with a `last/` checkpoint continues from it; one whose run stopped before
/// its first epoch finished (`config.toml`, no `last/`) is trained from its beginning (said so by
/// [`fit_with`]); a fold with nothing at all is trained from its beginning when another of the
/// folds holds a run (a killed multi-fold run had not reached it), and when none does, there is
/// nothing to resume and it is an error.
pub fn plan_folds(opts: &RunOptions, cfg: &TrainConfig) -> Result<Vec<(usize, bool)>, TrainError> {
    opts.validate(cfg)?;
    let check = |dir: &Path, what| {
        fsio::check_output_dir(dir).map_err(|cause| TrainError::BadOutput { what, cause })
    };
    check(&opts.out, "the run directory (--out)")?;
    let folds = opts.folds(cfg);
    for &f in &folds {
        check(&fold_dir(&opts.out, f), "the run directory (--out)")?;
    }
    let cache_dir = opts.cache_dir();
    check(&cache_dir, "the audio cache directory")?;
    if !opts.resume {
        for &f in &folds {
            let dir = fold_dir(&opts.out, f);
            if holds_run(&dir) {
                return Err(TrainError::HoldsRun {
                    dir,
                    hint: " (--resume)",
                });
            }
        }
        return Ok(folds.into_iter().map(|f| (f, false)).collect());
    }
    if !any_fold_started(&opts.out, &folds) {
        return Err(TrainError::Resume {
            dir: opts.out.clone(),
            reason: format!(
                "nothing to resume: none of {} holds a run (a last/ checkpoint or config.toml); \
                 leave out --resume to start one",
                folds
                    .iter()
                    .map(|&f| format!("fold{f}/"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(folds
        .into_iter()
        .map(|f| {
            let dir = fold_dir(&opts.out, f);
            let started = FoldRun::of(&dir) != FoldRun::Nothing;
            if !started {
                eprintln!(
                    "fit: fold {f}: no run in {} to resume (the run stopped before it); training \
                     it from its beginning",
                    dir.display()
                );
            }
            (f, started)
        })
        .collect())
}

/// Train the folds `opts` and `cfg` name; returns each fold's number and summary. Every output
/// path and the resume state are checked first ([`plan_folds`]), before the dataset is read.
pub fn train_folds(
    opts: &RunOptions,
    cfg: &TrainConfig,
) -> Result<Vec<(usize, FitSummary)>, TrainError> {
    cfg.validate()?;
    let plan = plan_folds(opts, cfg)?;
    // The model's input (card, overrides, crop) is checked before the data is read.
    let (fcfg, _) = resolve_frontend(cfg)?;
    let cache_dir = opts.cache_dir();
    let (ds, store, folds): (Dataset, Box<dyn AudioStore>, Vec<usize>) = match &opts.annotations {
        Some(src) => {
            let a = load_annotated(
                &src.table,
                &src.audio,
                cfg,
                fcfg.windows.window_seconds,
                fcfg.input_samples() as f64 / f64::from(fcfg.sample_rate),
                &cache_dir,
            )?;
            for w in &a.warnings {
                eprintln!("warning: {w}");
            }
            let negatives: usize = a.per_split.iter().map(|c| c.1).sum();
            eprintln!(
                "info: {} annotated and {negatives} negative windows of {:.2} s from {} \
                 soundscape(s) in {}; windows per split (annotated + negative): {}",
                a.dataset.recordings.len() - negatives,
                fcfg.windows.window_seconds,
                a.files.len(),
                src.table.display(),
                a.per_split
                    .iter()
                    .map(|(p, n)| format!("{p}+{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            std::fs::create_dir_all(&opts.out).map_err(TrainError::io("creating", &opts.out))?;
            fsio::write_atomic(
                &opts.out.join(SPLIT_CSV),
                split_csv(&a.files, cfg.annotations.split).as_bytes(),
            )?;
            (a.dataset, Box::new(a.store), a.folds)
        }
        None => {
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
            let mut ds = loaded.dataset;
            // Folds of this competition's recordings; extra ones are only trained on.
            let mut folds =
                assign_folds(&ds, cfg.data.n_folds, cfg.run.seed, opts.min_count_for_val);
            for r in add_sources(&mut ds, &opts.extra_data, cfg.data.extra_cap_per_species)? {
                eprintln!(
                    "info: {}: {} recordings added of {} rows ({} of other species, {} \
                     duplicate Xeno-canto recordings, {} beyond data.extra_cap_per_species = {})",
                    r.path.display(),
                    r.kept,
                    r.rows,
                    r.other_species,
                    r.duplicates,
                    r.over_cap,
                    cfg.data.extra_cap_per_species
                );
            }
            folds.resize(ds.recordings.len(), ALWAYS_TRAIN);
            let cache = Cache::build_or_open(
                &ds,
                &cache_dir,
                &CacheOptions {
                    seconds: cfg.data.cache_seconds,
                    threads: cfg.data.num_workers,
                    ..CacheOptions::default()
                },
            )?;
            eprintln!("info: audio cache {}", cache.path().display());
            (ds, Box::new(cache), folds)
        }
    };
    let backgrounds = if cfg.augment.background_prob == 0.0 || opts.backgrounds == 0 {
        Vec::new()
    } else if opts.annotations.is_some() && opts.data.as_os_str().is_empty() {
        eprintln!(
            "warning: augment.background_prob is {} but no --data directory gives background \
             clips: training without background mixing",
            cfg.augment.background_prob
        );
        Vec::new()
    } else {
        load_backgrounds(&opts.data, opts.background_seconds, opts.backgrounds)?
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
        "info: {} recordings, {} labels, {} background clips",
        ds.recordings.len(),
        ds.labels.len(),
        backgrounds.len(),
    );
    let mut out = Vec::new();
    for (fold, resume) in plan {
        let dir = fold_dir(&opts.out, fold);
        let mut s = fit_with(
            &ds,
            &*store,
            &folds,
            fold,
            cfg,
            &backgrounds,
            pseudo.as_ref(),
            &dir,
            opts.device,
            resume,
        )
        .map_err(|cause| TrainError::Fold {
            fold,
            cause: Box::new(cause),
        })?;
        s.test = score_test(&ds, &*store, &folds, &dir, cfg, opts.device).map_err(|cause| {
            TrainError::Fold {
                fold,
                cause: Box::new(cause),
            }
        })?;
        out.push((fold, s));
    }
    Ok(out)
}

/// Score the best checkpoint of `fold_dir` on the recordings `folds` marks [`HELD_OUT`] (none:
/// `None`), writing [`TEST_METRICS_JSON`] and [`CONFUSION_TEST_CSV`] beside it.
pub fn score_test(
    ds: &Dataset,
    store: &dyn AudioStore,
    folds: &[usize],
    fold_dir: &Path,
    cfg: &TrainConfig,
    device: Device,
) -> Result<Option<Validation>, TrainError> {
    let test_idx: Vec<usize> = (0..folds.len()).filter(|&i| folds[i] == HELD_OUT).collect();
    if test_idx.is_empty() {
        return Ok(None);
    }
    let best = fold_dir.join("best");
    let net = Net::from_checkpoint(&best, device)?;
    let card_path = best.join(birdclef_models::checkpoint::CARD_FILE);
    let card = Card::load(&card_path).map_err(|cause| TrainError::ModelCard {
        path: card_path.clone(),
        cause,
    })?;
    let frontend = Frontend::new(card.frontend).map_err(|cause| TrainError::Frontend {
        what: "model",
        cause,
    })?;
    let set = ValSet::build(ds, store, &test_idx, &frontend, 1, None)?;
    let (v, note) = set.score(
        &net,
        cfg.data.val_batch_size,
        false,
        &cfg.loss,
        cfg.run.f1_decision(),
    )?;
    if let Some(n) = note {
        eprintln!("fit: test split: {n}");
    }
    let json = serde_json::json!({
        "checkpoint": best,
        "windows": set.n,
        "loss": finite(v.loss),
        "macro_roc_auc": finite(v.macro_roc_auc),
        "cmap": finite(v.cmap),
        "macro_f1": finite(v.macro_f1),
        "weighted_f1": finite(v.weighted_f1),
    });
    let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
    fsio::write_atomic(&fold_dir.join(TEST_METRICS_JSON), text.as_bytes())?;
    write_confusion(&fold_dir.join(CONFUSION_TEST_CSV), &ds.labels, &v.confusion)?;
    eprintln!(
        "fit: test split ({} windows, best checkpoint): loss {:.4} macro_roc_auc {:.4} cmap {:.4} \
         macro_f1 {:.4} weighted_f1 {:.4}",
        set.n, v.loss, v.macro_roc_auc, v.cmap, v.macro_f1, v.weighted_f1
    );
    Ok(Some(v))
}

/// A JSON number, or null for NaN and infinities.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("birdclef-runs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    fn cfg(folds: &str) -> TrainConfig {
        TrainConfig::from_toml(&format!("[data]\nn_folds = 3\nfolds = {folds}\n"), "t", &[])
            .expect("config")
    }

    /// A fold directory as a run leaves it: `last/` (epoch done) or only config.toml (killed
    /// in its first epoch).
    fn fold(run: &Path, f: usize, last: bool) {
        let dir = fold_dir(run, f);
        std::fs::create_dir_all(&dir).expect("fold dir");
        std::fs::write(dir.join("config.toml"), "").expect("config");
        if last {
            std::fs::create_dir_all(dir.join("last")).expect("last");
            std::fs::write(dir.join("last").join(crate::training::STATE_JSON), "{}")
                .expect("state");
        }
    }

    fn resume(run: &Path) -> RunOptions {
        RunOptions {
            resume: true,
            ..RunOptions::new(Path::new("data"), run)
        }
    }

    #[test]
    fn resuming_needs_a_run_and_starts_the_folds_it_had_not_reached() {
        let d = scratch("plan");
        let run = d.join("run");
        // Nothing there (no directory, or an empty one): nothing to resume, said so.
        for _ in 0..2 {
            let msg = crate::error::report(&plan_folds(&resume(&run), &cfg("[0, 1]")).unwrap_err());
            assert!(
                msg.contains(&run.display().to_string()) && msg.contains("nothing to resume"),
                "{msg}"
            );
            std::fs::create_dir_all(&run).expect("empty run dir");
        }
        // Killed in fold 1's first epoch: fold 0 resumes, fold 1 (config.toml only) starts
        // from its beginning with resume set (fit says so), fold 2 was never reached.
        fold(&run, 0, true);
        fold(&run, 1, false);
        assert_eq!(
            plan_folds(&resume(&run), &cfg("[0, 1, 2]")).expect("plan"),
            [(0, true), (1, true), (2, false)]
        );
        assert_eq!(FoldRun::of(&fold_dir(&run, 1)), FoldRun::Unfinished);
        // --fold 2 alone: that fold has no run.
        let only2 = RunOptions {
            fold: Some(2),
            ..resume(&run)
        };
        // Without --resume a fold that holds a run is refused before any work.
        std::fs::write(fold_dir(&run, 1).join(crate::training::HISTORY_CSV), "").expect("history");
        let err = plan_folds(&only2, &cfg("[0, 1, 2]")).unwrap_err();
        assert!(
            matches!(&err, TrainError::Resume { dir, .. } if dir == &run),
            "{err:?}"
        );
        let fresh = RunOptions::new(Path::new("data"), &run);
        let msg = crate::error::report(&plan_folds(&fresh, &cfg("[1]")).unwrap_err());
        assert!(
            msg.contains("fold1") && msg.contains("already holds a run"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn outputs_and_options_are_checked_before_any_work() {
        let d = scratch("checks");
        std::fs::write(d.join("file"), "x").expect("file");
        let c = cfg("[0]");
        let err = plan_folds(&RunOptions::new(Path::new("data"), &d.join("file")), &c).unwrap_err();
        // The output error underneath says what is wrong, the context which output it is; the
        // chain says each once.
        assert!(
            matches!(
                &err,
                TrainError::BadOutput {
                    what: "the run directory (--out)",
                    cause: fsio::OutputError::NotDirectory { .. },
                }
            ),
            "{err:?}"
        );
        let msg = crate::error::report(&err);
        assert_eq!(
            msg,
            format!(
                "the run directory (--out): {}: exists and is not a directory",
                d.join("file").display()
            )
        );
        std::fs::create_dir_all(d.join("run")).expect("run");
        std::fs::write(d.join("run/fold0"), "x").expect("fold file");
        let msg = crate::error::report(
            &plan_folds(&RunOptions::new(Path::new("data"), &d.join("run")), &c).unwrap_err(),
        );
        assert!(
            msg.contains("fold0") && msg.contains("not a directory"),
            "{msg}"
        );
        let ok = RunOptions::new(Path::new("data"), &d.join("new/run"));
        assert_eq!(
            plan_folds(&ok, &c).expect("a missing parent is fine"),
            [(0, false)]
        );
        for (opts, flag) in [
            (
                RunOptions {
                    cache_dir: Some(d.join("file")),
                    ..ok.clone()
                },
                "not a directory",
            ),
            (
                RunOptions {
                    fold: Some(3),
                    ..ok.clone()
                },
                "--fold 3",
            ),
            (
                RunOptions {
                    cap_per_species: Some(0),
                    ..ok.clone()
                },
                "--cap-per-species",
            ),
            (
                RunOptions {
                    backgrounds: 0,
                    ..ok.clone()
                },
                "--backgrounds",
            ),
            (
                RunOptions {
                    background_seconds: 0.0,
                    ..ok.clone()
                },
                "--background-seconds",
            ),
        ] {
            let msg = crate::error::report(&plan_folds(&opts, &c).unwrap_err());
            assert!(msg.contains(flag), "{msg}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
