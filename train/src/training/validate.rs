//! Validation on the held-out fold: the first [`DataConfig::val_max_windows`] 5-s windows of each
//! held-out recording's head, computed once per run, positives = primary and secondary labels;
//! scored every epoch with the validation loss, macro ROC-AUC, padded cmAP, macro and weighted
//! F1 and a confusion matrix ([`birdclef_models::metrics`]).
//!
//! [`DataConfig::val_max_windows`]: crate::config::DataConfig::val_max_windows

use birdclef_models::frontend::Frontend;
use birdclef_models::metrics;
use ndarray::{Array2, Axis};
use tch::{Kind, Tensor};

use super::loss;
use crate::config::{LossConfig, LossKind};
use crate::data::{AudioStore, Dataset};
use crate::error::TrainError;
use crate::model::net::{self, Net};

/// Held-out windows: inputs and 0/1 labels.
#[derive(Debug)]
pub struct ValSet {
    x: Vec<f32>,
    shape: [usize; 3],
    y: Vec<f32>,
    /// The primary label of each window's recording (the true class of the confusion matrix;
    /// [`crate::data::NO_LABEL`] for a negative window).
    primary: Vec<usize>,
    /// Number of windows.
    pub n: usize,
    k: usize,
}

/// One epoch's validation numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// The training loss (BCE or focal, without label smoothing or masks) averaged over windows
    /// and classes (softmax cross-entropy: over windows).
    pub loss: f64,
    /// Macro ROC-AUC (NaN when no class has a positive and a negative).
    pub macro_roc_auc: f64,
    /// Padded cmAP.
    pub cmap: f64,
    /// Macro F1 over the classes with a positive (NaN when there are none).
    pub macro_f1: f64,
    /// Support-weighted F1.
    pub weighted_f1: f64,
    /// `[true, predicted]` counts: each window's primary label against its most probable class.
    pub confusion: ndarray::Array2<u64>,
}

impl ValSet {
    /// The windows of recordings `val_idx`: at most `max_windows` per recording, at most `cap`
    /// in all.
    pub fn build(
        ds: &Dataset,
        store: &dyn AudioStore,
        val_idx: &[usize],
        frontend: &Frontend,
        max_windows: usize,
        cap: Option<usize>,
    ) -> Result<Self, TrainError> {
        let k = ds.labels.len();
        let shape = frontend.config().input_shape();
        let mut out = Self {
            x: Vec::new(),
            shape,
            y: Vec::new(),
            primary: Vec::new(),
            n: 0,
            k,
        };
        for &i in val_idx {
            let audio = store.validation_audio(i)?;
            let images = if store.validation_is_one_input() {
                frontend.compute_clip(&audio).insert_axis(Axis(0))
            } else {
                frontend.compute(&audio)
            };
            let windows = images.shape()[0].min(max_windows);
            let r = &ds.recordings[i];
            let mut row = vec![0.0f32; k];
            for &s in std::iter::once(&r.primary)
                .chain(&r.secondary)
                .chain(&r.positives)
            {
                if s < k {
                    row[s] = 1.0;
                }
            }
            for w in 0..windows {
                if cap.is_some_and(|c| out.n >= c) {
                    return Ok(out);
                }
                // Row-major, whatever the array's memory layout.
                out.x.extend(images.index_axis(Axis(0), w).iter().copied());
                out.y.extend_from_slice(&row);
                out.primary.push(r.primary);
                out.n += 1;
            }
        }
        Ok(out)
    }

    /// Score `net` in eval mode, `batch` windows per forward pass (fp16 autocast with
    /// `autocast`). The second value says why the ROC-AUC is undefined, when it is.
    pub fn score(
        &self,
        net: &Net,
        batch: usize,
        autocast: bool,
        loss_cfg: &LossConfig,
        decision: metrics::Decision,
    ) -> Result<(Validation, Option<String>), TrainError> {
        let (k, per) = (self.k, self.shape.iter().product::<usize>());
        let mut probs = Vec::with_capacity(self.n * k);
        let mut loss_sum = 0.0;
        let dev = net.device();
        for start in (0..self.n).step_by(batch.max(1)) {
            let end = (start + batch).min(self.n);
            let m = end - start;
            let x = net::tensor_from(
                &self.x[start * per..end * per],
                &[m, self.shape[0], self.shape[1], self.shape[2]],
                dev,
            )
            .map_err(TrainError::torch("validation inputs"))?;
            let y = net::tensor_from(&self.y[start * k..end * k], &[m, k], dev)
                .map_err(TrainError::torch("validation labels"))?;
            let logits = tch::no_grad(|| tch::autocast(autocast, || net.f_forward(&x, false)))?
                .to_kind(Kind::Float);
            let w = Tensor::ones_like(&y);
            loss_sum += loss(&logits, &y, &w, loss_cfg).double_value(&[]) * (m * k) as f64;
            probs.extend(
                net::to_vec_f32(&match loss_cfg.kind {
                    LossKind::Softmax => logits.softmax(1, Kind::Float),
                    LossKind::Bce | LossKind::Focal => logits.sigmoid(),
                })
                .map_err(TrainError::torch("reading validation outputs"))?,
            );
        }
        let sol = Array2::from_shape_vec((self.n, k), self.y.clone())
            .map_err(TrainError::ValidationShape)?;
        let sub =
            Array2::from_shape_vec((self.n, k), probs).map_err(TrainError::ValidationShape)?;
        let mut note = None;
        let macro_roc_auc = match metrics::macro_roc_auc(sol.view(), sub.view()) {
            Ok(r) => r.macro_auc,
            Err(e) => {
                note = Some(format!("macro ROC-AUC undefined: {e}"));
                f64::NAN
            }
        };
        let cmap = metrics::padded_cmap(sol.view(), sub.view(), metrics::DEFAULT_PADDING_FACTOR)
            .map(|r| r.cmap)
            .unwrap_or(f64::NAN);
        let f1 = metrics::f1_scores(sol.view(), sub.view(), decision).ok();
        // Negative windows (no primary label) have no row in the confusion matrix.
        let labelled: Vec<usize> = (0..self.n).filter(|&i| self.primary[i] < k).collect();
        let truth: Vec<usize> = labelled.iter().map(|&i| self.primary[i]).collect();
        let confusion = metrics::confusion_matrix(&truth, sub.select(Axis(0), &labelled).view())
            .unwrap_or_else(|_| ndarray::Array2::zeros((k, k)));
        let validation = Validation {
            loss: loss_sum / (self.n * k).max(1) as f64,
            macro_roc_auc,
            cmap,
            macro_f1: f1.as_ref().map_or(f64::NAN, |f| f.macro_f1),
            weighted_f1: f1.as_ref().map_or(f64::NAN, |f| f.weighted_f1),
            confusion,
        };
        Ok((validation, note))
    }
}
