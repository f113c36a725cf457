//! The pipeline's TOML file: the competition, the teacher and student training configurations,
//! pseudo-labelling, inference and what to report.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::TrainError;

/// The embedded default: a pipeline on a synthesised competition (`configs/synthetic.pipeline.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/synthetic.pipeline.toml");

/// A pipeline configuration. Relative paths are relative to the file's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// The competition.
    pub data: DataSection,
    /// First-level models.
    pub teacher: ModelSection,
    /// Pseudo-labelling of the unlabeled soundscapes.
    pub pseudo: PseudoSection,
    /// Students (distilled).
    pub student: ModelSection,
    /// Inference on the test soundscapes.
    pub infer: InferSection,
    /// What else to train and score for comparison.
    pub report: ReportSection,
    /// Noisy-student rounds: each round's students label the soundscapes for the next.
    pub rounds: RoundsSection,
}

/// `[rounds]`: noisy-student self-training. Round 1 distils the teachers' pseudo-labels into
/// students; round `k + 1` pseudo-labels the soundscapes again with round `k`'s students and
/// distils those into new students (and, with `distill.kd_weight` above 0, learns live from
/// round `k`'s students too). The last round's students are the submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundsSection {
    /// Number of rounds (2025 1st place: 4, the fourth the last that helped). Default 1.
    pub count: usize,
    /// Per round, keys merged over the student's training config for that round, as in
    /// `[student.train]` (`[[rounds.round]]` tables in order: round 1, 2, ...; e.g.
    /// `distill = { power = 1.54 }`). Rounds without an entry use the student config as it is.
    /// Default: empty.
    pub round: Vec<toml::Table>,
}

impl Default for RoundsSection {
    fn default() -> Self {
        Self {
            count: 1,
            round: Vec::new(),
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// The competition directory. Default: none (then `synthetic` must be true).
    pub dir: Option<PathBuf>,
    /// Synthesise the embedded default competition into `OUT/data` instead. Default false.
    pub synthetic: bool,
    /// Test soundscapes, relative to the competition. Default `test_soundscapes`.
    pub test_soundscapes: PathBuf,
    /// Their solution (row_id + 0/1 per species). Default `test_solution.csv`.
    pub test_solution: PathBuf,
    /// Soundscapes to pseudo-label. Default `unlabeled_soundscapes`.
    pub unlabeled: PathBuf,
    /// With `synthetic`: the competition to synthesise (`[data.synth]`, the keys of
    /// `birdclef_models::synth::CompetitionSpec`: species, recordings_per_species,
    /// recording_seconds, unlabeled, unlabeled_seconds, test, test_seconds, seed, domain_shift).
    /// Default: none (the embedded default competition).
    pub synth: Option<birdclef_models::synth::CompetitionSpec>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            dir: None,
            synthetic: false,
            test_soundscapes: "test_soundscapes".into(),
            test_solution: "test_solution.csv".into(),
            unlabeled: "unlabeled_soundscapes".into(),
            synth: None,
        }
    }
}

/// `[teacher]` and `[student]`: a training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A `birdclef-train fit` config file as the base. Default: none (the built-in defaults).
    pub config: Option<PathBuf>,
    /// Keys merged over the base, as in a fit config (`[student.train.optim]` …). Default: empty.
    pub train: toml::Table,
    /// `key=value` overrides applied last. Default: empty.
    pub set: Vec<String>,
}

/// `[pseudo]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudoSection {
    /// Windows per teacher forward pass. Default 64.
    pub batch_size: usize,
}

impl Default for PseudoSection {
    fn default() -> Self {
        Self { batch_size: 64 }
    }
}

/// `[infer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct InferSection {
    /// Smoothing kernel over neighbouring windows, e.g. `[0.1, 0.2, 0.4, 0.2, 0.1]`. Default off.
    pub smooth: Option<Vec<f32>>,
}

/// `[report]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportSection {
    /// Export and score the teacher ensemble on the test soundscapes. Default true.
    pub teachers: bool,
    /// Also train students without pseudo-labels (same config, seeds and steps) and score them.
    /// Default false.
    pub baseline: bool,
}

impl Default for ReportSection {
    fn default() -> Self {
        Self {
            teachers: true,
            baseline: false,
        }
    }
}

impl PipelineConfig {
    /// Parse a pipeline file's text (and check the values serde cannot).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TrainError> {
        let cfg: Self = toml::from_str(text).map_err(|cause| TrainError::Toml {
            origin: origin.to_string(),
            cause,
        })?;
        cfg.validate().map_err(|cause| TrainError::PipelineFile {
            origin: origin.to_string(),
            cause: Box::new(cause),
        })?;
        Ok(cfg)
    }

    /// Check the values serde cannot, so that a bad one fails before the first stage, not after
    /// hours of training.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.rounds.count == 0 {
            return Err(TrainError::PipelineKey {
                key: "[rounds] count",
                reason: "must be at least 1",
            });
        }
        if self.rounds.round.len() > self.rounds.count {
            return Err(TrainError::PipelineKey {
                key: "[[rounds.round]]",
                reason: "has more entries than [rounds] count",
            });
        }
        if self.pseudo.batch_size == 0 {
            return Err(TrainError::PipelineKey {
                key: "[pseudo] batch_size",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }

    /// Read a pipeline file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io("reading", path))?;
        Self::from_toml(&text, &path.display().to_string())
    }
}

/// Merge `over` into `base`, tables recursively, other values replaced.
fn merge_tables(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The student's training configuration in round `round` (from 1): `[student]` with the
/// round's `[[rounds.round]]` keys merged over it.
pub fn resolve_round(
    cfg: &PipelineConfig,
    round: usize,
    base_dir: &Path,
) -> Result<TrainConfig, TrainError> {
    let mut section = cfg.student.clone();
    if let Some(over) = round.checked_sub(1).and_then(|i| cfg.rounds.round.get(i)) {
        merge_tables(&mut section.train, over);
    }
    resolve_train(&section, base_dir, &format!("rounds.round {round}"))
}

/// The training configuration a `[teacher]` or `[student]` section describes.
pub fn resolve_train(
    section: &ModelSection,
    base_dir: &Path,
    what: &str,
) -> Result<TrainConfig, TrainError> {
    let mut table = match &section.config {
        Some(p) => {
            let path = base_dir.join(p);
            let setting = format!("{what}.config");
            let text =
                std::fs::read_to_string(&path).map_err(TrainError::io(setting.as_str(), &path))?;
            toml::from_str::<toml::Table>(&text).map_err(|cause| TrainError::Toml {
                origin: format!("{setting} {}", path.display()),
                cause,
            })?
        }
        None => toml::Table::new(),
    };
    merge_tables(&mut table, &section.train);
    let text = toml::to_string(&table).map_err(|cause| TrainError::TomlWrite {
        section: what.to_string(),
        cause,
    })?;
    let mut cfg = TrainConfig::from_toml(&text, &format!("[{what}]"), &section.set)?;
    for p in [&mut cfg.model.card, &mut cfg.model.init]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base_dir.join(&*p);
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc_defaults::{agrees, documented_defaults};

    #[test]
    fn every_documented_default_is_the_default() {
        let all = toml::Value::try_from(PipelineConfig::default()).expect("toml");
        let sections = [
            ("DataSection", "data"),
            ("ModelSection", "teacher"),
            ("PseudoSection", "pseudo"),
            ("InferSection", "infer"),
            ("ReportSection", "report"),
            ("RoundsSection", "rounds"),
        ];
        let mut checked = 0;
        for (st, field, text) in documented_defaults(include_str!("config.rs")) {
            let Some((_, key)) = sections.iter().find(|(s, _)| *s == st) else {
                continue;
            };
            let value = all.get(key).and_then(|t| t.get(&field));
            assert!(
                agrees(&text, value),
                "[{key}] {field}: documented default {text:?}, Default gives {value:?}"
            );
            checked += 1;
        }
        assert_eq!(checked, 15);
    }
}
