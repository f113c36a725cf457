//! The model card: everything a checkpoint or ONNX file needs to be used correctly.
//!
//! A card travels inside every checkpoint (as `card.json`) and every exported ONNX file (in
//! `metadata_props`). It holds the ordered labels (one output per label), the complete
//! [`FrontendConfig`] that turns audio into the model's input, the input shape, the architecture
//! name and provenance (data hash, folds, code commit). Cards are JSON; [`Card::load`] reads and
//! validates one, with errors that name the file and the field.
//!
//! A card with no labels and no architecture is a *frontend card*: it only fixes how audio
//! becomes features (the repo ships `models/cards/nvbird224.card.json` and
//! `models/cards/kefir128.card.json`). [`Card::validate_for_model`] additionally requires labels
//! and an architecture.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frontend::{FrontendConfig, FrontendError};

/// The `metadata_props` key under which an exported ONNX model carries its card (JSON).
pub const ONNX_CARD_KEY: &str = "birdclef.card";
/// The `metadata_props` key of an exported model's labels, a JSON array in output order.
pub const ONNX_LABELS_KEY: &str = "birdclef.labels";
/// The shipped NVBird 224x224 frontend card, `models/cards/nvbird224.card.json`.
pub const NVBIRD224_JSON: &str = include_str!("../cards/nvbird224.card.json");
/// The shipped Kefir 128-mel frontend card, `models/cards/kefir128.card.json`.
pub const KEFIR128_JSON: &str = include_str!("../cards/kefir128.card.json");

/// The card format version this crate writes and reads.
pub const CARD_FORMAT_VERSION: u32 = 1;

/// Where a model came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Hash of the training data (file list and preprocessing parameters), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// The validation fold this model held out, and the fold count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<FoldInfo>,
    /// Source commit of the code that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Free text: which command, config file or teacher ensemble made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Where the training recordings came from when there were several sources (the
    /// competition directory, then each extra one, with the recordings taken from each); empty
    /// (and left out) for one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<DataSource>,
}

/// One source of training recordings ([`Provenance::sources`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// The directory or CSV file, as given.
    pub path: String,
    /// Recordings taken from it.
    pub recordings: usize,
}

/// Fold membership of a trained model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldInfo {
    /// The held-out fold (0-based).
    pub fold: usize,
    /// Number of folds.
    pub n_folds: usize,
}

/// How a model's logits become probabilities ([`Card::output_activation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputActivation {
    /// Each class on its own (multi-label): `1 / (1 + e^-x)`.
    #[default]
    Sigmoid,
    /// Over the classes of a window (single-label): `e^x / Σ e^x`, summing to 1.
    Softmax,
}

impl OutputActivation {
    /// Whether it is the default, sigmoid (then a card leaves it out).
    pub fn is_sigmoid(&self) -> bool {
        *self == Self::Sigmoid
    }

    /// Turn `logits` (windows × `classes`, row-major) into probabilities in place.
    pub fn apply(self, logits: &mut [f32], classes: usize) {
        match self {
            Self::Sigmoid => logits.iter_mut().for_each(|v| *v = crate::ir::sigmoid(*v)),
            Self::Softmax => {
                for row in logits.chunks_mut(classes.max(1)) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f64;
                    for v in row.iter_mut() {
                        let e = f64::from(*v - max).exp();
                        sum += e;
                        *v = e as f32;
                    }
                    row.iter_mut()
                        .for_each(|v| *v = (f64::from(*v) / sum) as f32);
                }
            }
        }
    }
}

/// A model card. See the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// Card format version ([`CARD_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Short name of the model or frontend.
    pub name: String,
    /// Architecture name (e.g. `efficientvit_b0`); `None` for a frontend card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Output labels in order; empty for a frontend card.
    #[serde(default)]
    pub labels: Vec<String>,
    /// How audio becomes the model input.
    pub frontend: FrontendConfig,
    /// Input shape of one window, `[channels, n_mels, frames]`; must agree with `frontend`.
    pub input_shape: [usize; 3],
    /// How the logits become probabilities: `sigmoid` (multi-label; the default, left out of
    /// the JSON) or `softmax` (a model trained with softmax cross-entropy).
    #[serde(default, skip_serializing_if = "OutputActivation::is_sigmoid")]
    pub output_activation: OutputActivation,
    /// Where the model came from.
    #[serde(default)]
    pub provenance: Provenance,
}

/// Why a card could not be loaded or used. Every variant says which file (when there is one).
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The JSON does not describe a card.
    #[error("{path}: not a valid model card: {cause}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message, with line and column.
        cause: serde_json::Error,
    },
    /// The card parsed but its content is inconsistent.
    #[error("{origin}: invalid model card: {problem}")]
    Invalid {
        /// The file, or where the card came from.
        origin: String,
        /// What is wrong (part of the message, so not also a `source`: `{:#}` would repeat it).
        problem: CardProblem,
    },
    /// An output could not be written (the error names it).
    #[error(transparent)]
    Output(#[from] crate::fsio::OutputError),
}

/// What is wrong with a card's content ([`Card::validate`], [`Card::validate_for_model`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CardProblem {
    /// A card format this build does not read.
    #[error("format_version {found} is not supported (this build reads {CARD_FORMAT_VERSION})")]
    Version {
        /// The card's version.
        found: u32,
    },
    /// No name.
    #[error("name is empty")]
    NoName,
    /// The frontend cannot work (the cause is part of the message, so not also a `source`:
    /// `{:#}` would repeat it).
    #[error("frontend: {0}")]
    Frontend(FrontendError),
    /// `input_shape` is not what the frontend gives.
    #[error(
        "input_shape {card:?} disagrees with the frontend, which gives {frontend:?} \
         ([channels, n_mels, frames])"
    )]
    InputShape {
        /// The card's `input_shape`.
        card: [usize; 3],
        /// What the frontend computes.
        frontend: [usize; 3],
    },
    /// An empty label.
    #[error("label {index} is empty")]
    EmptyLabel {
        /// Its position.
        index: usize,
    },
    /// A label that cannot be a CSV column name.
    #[error(
        "label {index} ({label:?}) contains a comma, quote or newline (it becomes a CSV column)"
    )]
    LabelCharacters {
        /// Its position.
        index: usize,
        /// The label.
        label: String,
    },
    /// A label given twice.
    #[error("label {label:?} appears twice")]
    DuplicateLabel {
        /// The label.
        label: String,
    },
    /// A fold number outside the fold count.
    #[error("provenance.folds: fold {fold} of {n_folds} is impossible")]
    Folds {
        /// The fold.
        fold: usize,
        /// The fold count.
        n_folds: usize,
    },
    /// A model card without labels.
    #[error("a model card needs at least one label")]
    NoLabels,
    /// A model card without an architecture.
    #[error("a model card needs an architecture")]
    NoArchitecture,
}

impl From<FrontendError> for CardProblem {
    fn from(e: FrontendError) -> Self {
        Self::Frontend(e)
    }
}

impl Card {
    /// The shipped NVBird 224x224 frontend card ([`NVBIRD224_JSON`]).
    pub fn nvbird224() -> Self {
        match Self::from_json(NVBIRD224_JSON) {
            Ok(card) => card,
            // A file of this repository, checked by the card tests: it cannot be invalid in a
            // build that passed them.
            Err(e) => unreachable!("models/cards/nvbird224.card.json: {e}"),
        }
    }

    /// A frontend-only card (no labels, no architecture).
    pub fn frontend_only(name: &str, frontend: FrontendConfig) -> Self {
        let input_shape = frontend.input_shape();
        Self {
            format_version: CARD_FORMAT_VERSION,
            name: name.to_string(),
            architecture: None,
            labels: Vec::new(),
            frontend,
            input_shape,
            output_activation: OutputActivation::Sigmoid,
            provenance: Provenance::default(),
        }
    }

    /// Read and validate a card file.
    pub fn load(path: &Path) -> Result<Self, CardError> {
        let text = std::fs::read_to_string(path).map_err(|cause| CardError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let card = Self::from_json(&text).map_err(|e| match e {
            CardError::Parse { cause, .. } => CardError::Parse {
                path: path.to_path_buf(),
                cause,
            },
            CardError::Invalid { problem, .. } => CardError::Invalid {
                origin: path.display().to_string(),
                problem,
            },
            other => other,
        })?;
        Ok(card)
    }

    /// Parse and validate a card from JSON text.
    pub fn from_json(text: &str) -> Result<Self, CardError> {
        let card: Card = serde_json::from_str(text).map_err(|cause| CardError::Parse {
            path: PathBuf::from("<json>"),
            cause,
        })?;
        card.validate().map_err(|problem| CardError::Invalid {
            origin: "<json>".into(),
            problem,
        })?;
        Ok(card)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data structs to a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Write the card as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), CardError> {
        Ok(crate::fsio::write_atomic(path, self.to_json().as_bytes())?)
    }

    /// Structural checks: version, frontend, input shape, label uniqueness.
    pub fn validate(&self) -> Result<(), CardProblem> {
        if self.format_version != CARD_FORMAT_VERSION {
            return Err(CardProblem::Version {
                found: self.format_version,
            });
        }
        if self.name.trim().is_empty() {
            return Err(CardProblem::NoName);
        }
        self.frontend.validate()?;
        let derived = self.frontend.input_shape();
        if self.input_shape != derived {
            return Err(CardProblem::InputShape {
                card: self.input_shape,
                frontend: derived,
            });
        }
        let mut seen = HashSet::new();
        for (index, label) in self.labels.iter().enumerate() {
            if label.trim().is_empty() {
                return Err(CardProblem::EmptyLabel { index });
            }
            if label.contains(',') || label.contains('"') || label.contains('\n') {
                return Err(CardProblem::LabelCharacters {
                    index,
                    label: label.clone(),
                });
            }
            if !seen.insert(label.as_str()) {
                return Err(CardProblem::DuplicateLabel {
                    label: label.clone(),
                });
            }
        }
        if let Some(f) = &self.provenance.folds {
            if f.n_folds == 0 || f.fold >= f.n_folds {
                return Err(CardProblem::Folds {
                    fold: f.fold,
                    n_folds: f.n_folds,
                });
            }
        }
        Ok(())
    }

    /// [`validate`](Self::validate) plus what a trained model needs: labels and an architecture.
    pub fn validate_for_model(&self) -> Result<(), CardProblem> {
        self.validate()?;
        if self.labels.is_empty() {
            return Err(CardProblem::NoLabels);
        }
        match &self.architecture {
            Some(a) if !a.trim().is_empty() => Ok(()),
            _ => Err(CardProblem::NoArchitecture),
        }
    }

    /// The first difference that stops two cards from being ensembled (labels or input), if any.
    pub fn ensemble_mismatch(&self, other: &Card) -> Option<String> {
        if self.labels != other.labels {
            let n = self.labels.len().min(other.labels.len());
            let first = (0..n).find(|&i| self.labels[i] != other.labels[i]);
            return Some(match first {
                Some(i) => format!(
                    "labels differ at position {i}: {:?} vs {:?}",
                    self.labels[i], other.labels[i]
                ),
                None => format!(
                    "label counts differ: {} vs {}",
                    self.labels.len(),
                    other.labels.len()
                ),
            });
        }
        if self.input_shape != other.input_shape {
            return Some(format!(
                "input shapes differ: {:?} vs {:?}",
                self.input_shape, other.input_shape
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_card() -> Card {
        let mut c = Card::frontend_only("m", FrontendConfig::nvbird224());
        c.architecture = Some("efficientvit_b0".into());
        c.labels = vec!["asbfly".into(), "ashdro1".into()];
        c.provenance.folds = Some(FoldInfo {
            fold: 0,
            n_folds: 5,
        });
        c
    }

    #[test]
    fn json_round_trip() {
        let c = model_card();
        let back = Card::from_json(&c.to_json()).expect("valid");
        assert_eq!(c, back);
        back.validate_for_model().expect("model card");
    }

    #[test]
    fn softmax_cards_say_so_and_sigmoid_cards_are_as_before() {
        let mut c = model_card();
        assert!(
            !c.to_json().contains("output_activation"),
            "the default is left out"
        );
        c.output_activation = OutputActivation::Softmax;
        let json = c.to_json();
        assert!(
            json.contains("\"output_activation\": \"softmax\""),
            "{json}"
        );
        assert_eq!(Card::from_json(&json).expect("valid"), c);
        // Two windows of three classes: softmax rows sum to 1 and equal e^x / Σ e^x (in f64),
        // also for logits whose exponentials overflow f32.
        let logits = [2.0f32, 0.0, -1.0, 1000.0, 999.0, -1000.0];
        let mut p = logits;
        OutputActivation::Softmax.apply(&mut p, 3);
        let want = |row: &[f32], i: usize| {
            let m = row.iter().copied().fold(f32::MIN, f32::max);
            let s: f64 = row.iter().map(|&v| f64::from(v - m).exp()).sum();
            f64::from(row[i] - m).exp() / s
        };
        for r in 0..2 {
            let row = &logits[3 * r..3 * r + 3];
            for i in 0..3 {
                assert!((f64::from(p[3 * r + i]) - want(row, i)).abs() < 1e-7);
            }
            assert!((p[3 * r..3 * r + 3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!((f64::from(p[0]) - (2f64.exp() / (2f64.exp() + 1.0 + (-1f64).exp()))).abs() < 1e-7);
        let mut s = logits;
        OutputActivation::Sigmoid.apply(&mut s, 3);
        assert_eq!(s[1], 0.5);
        assert!((s[0] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
    }

    #[test]
    fn inconsistent_cards_are_refused_with_the_reason() {
        let mut c = model_card();
        c.input_shape = [1, 224, 225];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("input_shape"));
        let mut c = model_card();
        c.labels.push("asbfly".into());
        assert!(matches!(
            c.validate().unwrap_err(),
            CardProblem::DuplicateLabel { .. }
        ));
        let mut c = model_card();
        c.labels = vec!["a,b".into()];
        assert!(c.validate().unwrap_err().to_string().contains("comma"));
        let c = Card::frontend_only("f", FrontendConfig::kefir128());
        c.validate().expect("frontend card is fine");
        assert_eq!(c.validate_for_model().unwrap_err(), CardProblem::NoLabels);
    }

    #[test]
    fn the_shipped_nvbird224_card_is_valid() {
        let c = Card::from_json(NVBIRD224_JSON).expect("valid");
        assert_eq!(c.input_shape, [1, 224, 224]);
        assert_eq!(Card::nvbird224(), c);
        Card::from_json(KEFIR128_JSON).expect("valid");
    }

    #[test]
    fn parse_errors_name_the_field() {
        let text = model_card().to_json().replace("\"n_fft\"", "\"nfft\"");
        let err = Card::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("nfft"), "{err}");
    }

    /// An error and its sources as `anyhow`'s `{:#}` prints them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    }

    /// These errors put their cause in the message; it was also their `source`, so `{:#}` in a
    /// binary printed it two or three times.
    #[test]
    fn error_chains_name_each_cause_once() {
        let mut c = model_card();
        c.frontend.n_mels = 0;
        let text = chain(&Card::from_json(&c.to_json()).unwrap_err());
        assert_eq!(text.matches("n_mels must be").count(), 1, "{text}");

        let problem = CardProblem::NoLabels;
        let invalid = crate::checkpoint::CheckpointError::InvalidCard {
            path: "ckpt/card.json".into(),
            problem,
        };
        let text = chain(&invalid);
        assert_eq!(text.matches("at least one label").count(), 1, "{text}");

        let arch = crate::checkpoint::CheckpointError::Architecture {
            path: "ckpt/card.json".into(),
            cause: Box::new(crate::nets::ArchError::Unnamed),
        };
        let text = chain(&arch);
        assert_eq!(text.matches("names no architecture").count(), 1, "{text}");

        let io = crate::fsio::OutputError::Io {
            path: "out.csv".into(),
            cause: std::io::Error::other("disk on fire"),
        };
        let text = chain(&io);
        assert_eq!(text, "out.csv: disk on fire");

        let resample = crate::audio::AudioError::Resample {
            path: "a.ogg".into(),
            cause: crate::audio::ResampleError {
                from_hz: 1,
                to_hz: 2,
                reason: "odd".into(),
            },
        };
        let text = chain(&resample);
        assert_eq!(text.matches("cannot resample").count(), 1, "{text}");
    }

    #[test]
    fn ensemble_mismatch_names_the_difference() {
        let a = model_card();
        let mut b = model_card();
        assert_eq!(a.ensemble_mismatch(&b), None);
        b.labels[1] = "other".into();
        let m = a.ensemble_mismatch(&b).expect("differs");
        assert!(m.contains("position 1"), "{m}");
    }
}
