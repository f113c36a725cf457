//! An exported model: its ONNX Runtime session and the model card stored in its metadata.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use birdclef_models::card::{Card, ONNX_CARD_KEY};
use ort::session::Session;

use crate::session::{build_session, run_f32, ModelSource};

/// An ONNX model ready to run on the CPU.
pub struct OnnxModel {
    /// The file it came from.
    pub path: PathBuf,
    /// Its model card (labels, frontend, input shape).
    pub card: Card,
    session: Session,
    input_name: String,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("card", &self.card.name)
            .finish()
    }
}

impl OnnxModel {
    /// Load a model written by `birdclef-export`; `threads` is ONNX Runtime's intra-op pool.
    /// [`crate::ort_env::init`] must have been called.
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        if path.is_dir() {
            bail!(
                "{}: is a directory, not an ONNX model file (export a checkpoint directory \
                 with birdclef-export)",
                path.display()
            );
        }
        if !path.is_file() {
            bail!("{}: no such model file", path.display());
        }
        let session = build_session(ModelSource::File(path), threads)
            .map_err(|e| anyhow!("{}: ONNX Runtime cannot load it: {e}", path.display()))?;
        let json = session
            .metadata()
            .ok()
            .and_then(|m| m.custom(ONNX_CARD_KEY))
            .ok_or_else(|| {
                anyhow!(
                    "{}: no model card in the ONNX metadata (key {ONNX_CARD_KEY:?}); \
                     was it written by birdclef-export?",
                    path.display()
                )
            })?;
        let card =
            Card::from_json(&json).with_context(|| format!("{}: model card", path.display()))?;
        card.validate_for_model()
            .map_err(|e| anyhow!("{}: model card: {e}", path.display()))?;
        let input_name = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| anyhow!("{}: the model has no input", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            card,
            session,
            input_name,
        })
    }

    /// Number of classes (outputs per window).
    pub fn classes(&self) -> usize {
        self.card.labels.len()
    }

    /// Run a batch: `input` holds `n` windows of the card's input shape, row-major; returns
    /// `n × classes` logits.
    pub fn run(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.card.input_shape;
        if input.len() != n * c * h * w {
            bail!(
                "{}: batch of {} values is not {n} windows of {c}x{h}x{w}",
                self.path.display(),
                input.len()
            );
        }
        let k = self.classes();
        let (shape, values) = run_f32(
            &mut self.session,
            &self.input_name,
            &[n, c, h, w],
            input,
            None,
        )
        .map_err(|e| anyhow!("{}: inference failed: {e}", self.path.display()))?;
        if values.len() != n * k {
            bail!(
                "{}: output shape {:?} is not [{n}, {k}] (the card lists {k} labels)",
                self.path.display(),
                shape
            );
        }
        Ok(values)
    }
}

/// Check that models can be ensembled: identical labels in the same order, and frontends that cut
/// soundscapes into the same windows (sample rate and window policy). Different frontends are
/// otherwise allowed. The error names both files and the difference.
pub fn check_ensemble(models: &[OnnxModel]) -> Result<()> {
    let cards: Vec<(&Path, &Card)> = models.iter().map(|m| (m.path.as_path(), &m.card)).collect();
    check_cards(&cards)
}

/// [`check_ensemble`] for any models given as (file, card), e.g. ONNX files and checkpoint
/// directories together.
pub fn check_cards(models: &[(&Path, &Card)]) -> Result<()> {
    let Some(&(first_path, first)) = models.first() else {
        bail!("no models given");
    };
    for &(path, card) in &models[1..] {
        if first.labels != card.labels {
            let diff = first
                .ensemble_mismatch(card)
                .unwrap_or_else(|| "labels differ".into());
            bail!(
                "{} and {} cannot be ensembled: {diff}",
                first_path.display(),
                path.display()
            );
        }
        let (a, b) = (&first.frontend, &card.frontend);
        if a.sample_rate != b.sample_rate || a.windows != b.windows {
            bail!(
                "{} and {} cannot be ensembled: they cut audio into different windows \
                 ({} Hz, {:?} vs {} Hz, {:?})",
                first_path.display(),
                path.display(),
                a.sample_rate,
                a.windows,
                b.sample_rate,
                b.windows
            );
        }
        if a == b && first.input_shape != card.input_shape {
            bail!(
                "{} and {} have the same frontend but different input shapes {:?} vs {:?}",
                first_path.display(),
                path.display(),
                first.input_shape,
                card.input_shape
            );
        }
    }
    Ok(())
}
