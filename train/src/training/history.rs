//! `history.csv` and `history.png`: one row per epoch, rewritten after every epoch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::BestMetric;
use crate::error::TrainError;

/// The history table in the output directory.
pub const HISTORY_CSV: &str = "history.csv";
/// The history plot in the output directory.
pub const HISTORY_PNG: &str = "history.png";
/// Columns of `history.csv`.
pub const HISTORY_COLUMNS: [&str; 11] = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_macro_roc_auc",
    "val_cmap",
    "lr",
    "seconds",
    "train_samples_per_s",
    "skipped_steps",
    "val_macro_f1",
    "val_weighted_f1",
];

/// Columns of histories written before the F1 columns existed (read on resume).
const OLD_COLUMNS: usize = 9;

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
    /// Validation macro F1 (`run.f1_threshold` or `run.f1_argmax`; NaN when no class has a
    /// positive, and in rows of older histories).
    pub val_macro_f1: f64,
    /// Validation F1 weighted by each class's positives.
    pub val_weighted_f1: f64,
}

impl EpochRow {
    /// The value of `m` in this row.
    pub fn metric(&self, m: BestMetric) -> f64 {
        match m {
            BestMetric::ValMacroRocAuc => self.val_macro_roc_auc,
            BestMetric::ValCmap => self.val_cmap,
            BestMetric::ValLoss => self.val_loss,
            BestMetric::ValMacroF1 => self.val_macro_f1,
            BestMetric::ValWeightedF1 => self.val_weighted_f1,
        }
    }

    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{:.3},{:.2},{},{},{}",
            self.epoch,
            self.train_loss,
            self.val_loss,
            self.val_macro_roc_auc,
            self.val_cmap,
            self.lr,
            self.seconds,
            self.train_samples_per_s,
            self.skipped_steps,
            self.val_macro_f1,
            self.val_weighted_f1
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != HISTORY_COLUMNS.len() && f.len() != OLD_COLUMNS {
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
            val_macro_f1: f.get(9).map_or(Some(f64::NAN), |v| v.parse().ok())?,
            val_weighted_f1: f.get(10).map_or(Some(f64::NAN), |v| v.parse().ok())?,
        })
    }
}

/// The latest epoch's validation confusion matrix, beside `history.csv`.
pub const CONFUSION_CSV: &str = "confusion.csv";
/// The confusion matrix of the epoch `best/` holds.
pub const CONFUSION_BEST_CSV: &str = "confusion_best.csv";

/// Write confusion matrix `m` (`[true, predicted]` window counts) to `path` atomically, as
/// [`birdclef_infer::score::confusion_csv`] (the layout `birdclef-infer score --confusion`
/// writes).
pub fn write_confusion(
    path: &Path,
    labels: &[String],
    m: &ndarray::Array2<u64>,
) -> Result<(), TrainError> {
    let text = birdclef_infer::score::confusion_csv(labels, m);
    Ok(birdclef_models::fsio::write_atomic(path, text.as_bytes())?)
}

/// The latest epoch's confusion matrix as an image, beside `confusion.csv`.
pub const CONFUSION_PNG: &str = "confusion.png";

/// Draw confusion matrix `m` as a grid (true label down, predicted across, in label order), each
/// cell shaded from white (none) to dark blue (all of its row's windows); rows without windows
/// stay light grey. No text (no fonts needed); `confusion.csv` has the numbers.
pub fn plot_confusion(path: &Path, m: &ndarray::Array2<u64>) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Debug| TrainError::Plot {
        path: path.to_path_buf(),
        reason: format!("{e:?}"),
    };
    let k = m.nrows().max(1);
    let cell = (640 / k).clamp(2, 40) as i32;
    let side = (cell * k as i32) as u32;
    let file = birdclef_models::fsio::AtomicFile::new(path)?;
    {
        let root = BitMapBackend::new(file.path(), (side, side)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        for (t, row) in m.outer_iter().enumerate() {
            let total: u64 = row.sum();
            for (p, &v) in row.iter().enumerate() {
                let colour = if total == 0 {
                    RGBColor(235, 235, 235)
                } else {
                    let share = v as f64 / total as f64;
                    let fade = |full: f64| (255.0 - share * (255.0 - full)).round() as u8;
                    RGBColor(fade(20.0), fade(40.0), fade(140.0))
                };
                let (x, y) = (p as i32 * cell, t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    colour.filled(),
                ))
                .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(file.commit()?)
}

/// Write `history.csv` of `rows` into `out_dir`, atomically.
pub fn write_history(out_dir: &Path, rows: &[EpochRow]) -> Result<(), TrainError> {
    let mut text = HISTORY_COLUMNS.join(",");
    text.push('\n');
    for r in rows {
        text.push_str(&r.csv());
        text.push('\n');
    }
    let path = out_dir.join(HISTORY_CSV);
    Ok(birdclef_models::fsio::write_atomic(&path, text.as_bytes())?)
}

/// The rows of `out_dir/history.csv` (none when it is missing; unreadable lines are skipped).
pub fn read_history(out_dir: &Path) -> Vec<EpochRow> {
    std::fs::read_to_string(out_dir.join(HISTORY_CSV))
        .map(|t| t.lines().skip(1).filter_map(EpochRow::parse).collect())
        .unwrap_or_default()
}

/// Draw `history.png`: losses (left; train blue, validation red) and validation metrics (right;
/// macro ROC-AUC green, padded cmAP magenta, on [0, 1]) against the epoch. No text is drawn, so
/// no system font is needed; the colours are the legend.
pub fn plot_history(path: &Path, rows: &[EpochRow]) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Debug| TrainError::Plot {
        path: path.to_path_buf(),
        reason: format!("{e:?}"),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows round-trip, and rows of a history written before the F1 columns (9 columns) still
    /// read, with NaN F1, so that resuming such a run keeps its history.
    #[test]
    fn rows_round_trip_and_older_rows_read() {
        let row = EpochRow {
            epoch: 2,
            train_loss: 0.5,
            val_loss: 0.25,
            val_macro_roc_auc: 0.75,
            val_cmap: 0.625,
            lr: 1e-3,
            seconds: 1.5,
            train_samples_per_s: 12.25,
            skipped_steps: 1,
            val_macro_f1: 0.375,
            val_weighted_f1: 0.5,
        };
        assert_eq!(EpochRow::parse(&row.csv()), Some(row));
        let old = EpochRow::parse("3,0.5,0.25,0.75,0.625,0.001,1.500,12.25,0").expect("old row");
        assert_eq!(old.epoch, 3);
        assert!(old.val_macro_f1.is_nan() && old.val_weighted_f1.is_nan());
        assert_eq!(EpochRow::parse("3,0.5,0.25"), None);
    }
}
