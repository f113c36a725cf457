//! The `train_state.*` files every checkpoint of a run carries besides what `birdclef-export`
//! reads: `train_state.json` ([`TrainState`]: epoch, steps, best metric, loss scale, the run's
//! configuration) and `train_state.safetensors` (the raw weights `param/<name>`, and AdamW's
//! moments `adam_m/<name>`, `adam_v/<name>` of every trainable parameter). With them a killed run
//! continues where its `last/` checkpoint left it ([`FoldRun`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use birdclef_models::checkpoint::{self, NamedTensor};
use birdclef_models::fsio;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::history::HISTORY_CSV;
use crate::error::TrainError;
use crate::model::net;

/// Training state file (JSON) inside `last/` and `best/`.
pub const STATE_JSON: &str = "train_state.json";
/// Training tensors (raw weights, AdamW moments) inside `last/` and `best/`.
pub const STATE_TENSORS: &str = "train_state.safetensors";
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
    /// Where the `plateau` learning-rate schedule stands (absent from states written before it
    /// existed: the default).
    #[serde(default)]
    pub plateau: super::optim::Plateau,
}

/// `dir`, or the copy moved aside by an interrupted [`fsio::write_dir_atomic`].
pub fn existing_dir(dir: &Path) -> Option<PathBuf> {
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

/// Read `train_state.json` of checkpoint `dir`.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join(STATE_JSON);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io("reading", &path))?;
    serde_json::from_str(&text).map_err(|cause| TrainError::Json {
        what: "parsing",
        path,
        cause,
    })
}

/// `[name, tensor]` pairs as named tensors on the CPU.
pub fn named(
    pairs: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<Vec<NamedTensor>, TrainError> {
    pairs
        .into_iter()
        .map(|(name, t)| {
            let data = net::to_vec_f32(&t).map_err(TrainError::torch(format!("reading {name}")))?;
            Ok(NamedTensor {
                name,
                shape: t.size().iter().map(|&d| d as usize).collect(),
                data,
            })
        })
        .collect()
}

/// The tensors of a saved state, by name, checked against the shapes of the live tensors.
pub struct SavedTensors {
    dir: PathBuf,
    by_name: BTreeMap<String, NamedTensor>,
}

impl SavedTensors {
    /// Read `file` of checkpoint `dir` (`train_state.safetensors`, or the weights).
    pub fn read(dir: &Path, file: &str) -> Result<Self, TrainError> {
        let tensors = checkpoint::read_tensors(&dir.join(file))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            by_name: tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
        })
    }

    /// Tensor `name` on `device`, which must have the shape of `like`.
    pub fn get(&self, name: &str, like: &Tensor, device: Device) -> Result<Tensor, TrainError> {
        let resume = |reason: String| TrainError::Resume {
            dir: self.dir.clone(),
            reason,
        };
        let t = self
            .by_name
            .get(name)
            .ok_or_else(|| resume(format!("no tensor {name}")))?;
        let shape: Vec<usize> = like.size().iter().map(|&d| d as usize).collect();
        if t.shape != shape {
            return Err(resume(format!(
                "{name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        net::tensor_from(&t.data, &t.shape, device).map_err(TrainError::torch(format!(
            "{}: moving {name} to {device:?}",
            self.dir.display()
        )))
    }
}

/// Write `state` as `train_state.json` into the checkpoint being filled at `dir`.
pub fn write_state(dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    let path = dir.join(STATE_JSON);
    let text = serde_json::to_string_pretty(state).map_err(|cause| TrainError::Json {
        what: "writing",
        path: path.clone(),
        cause,
    })?;
    Ok(fsio::write_atomic(&path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TrainState {
        TrainState {
            epoch: 3,
            adam_step: 30,
            batch_step: 30,
            best_value: 0.5,
            best_epoch: 2,
            loss_scale: 1.0,
            growth_tracker: 0,
            fold: 0,
            n_folds: 5,
            ema: false,
            config: String::new(),
            plateau: super::super::optim::Plateau {
                scale: 0.25,
                best: Some(0.4),
                bad_epochs: 1,
            },
        }
    }

    /// The plateau schedule's position survives a save, and a state written before the schedule
    /// existed reads as a fresh one.
    #[test]
    fn the_plateau_position_is_saved_and_old_states_still_read() {
        let s = state();
        let text = serde_json::to_string_pretty(&s).expect("json");
        let back: TrainState = serde_json::from_str(&text).expect("read");
        assert_eq!(back, s);
        let mut old: serde_json::Value = serde_json::from_str(&text).expect("value");
        old.as_object_mut().expect("object").remove("plateau");
        let back: TrainState = serde_json::from_value(old).expect("old state");
        assert_eq!(back.plateau, Default::default());
    }
}
