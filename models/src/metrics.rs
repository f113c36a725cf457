//! Competition metrics for BirdCLEF, computed exactly as the Kaggle metric code does.
//!
//! Two metrics are implemented, both on a *solution* matrix (rows × classes, every entry 0 or
//! 1) and a *submission* matrix of the same shape holding one score per row and class:
//!
//! * **Macro ROC-AUC** ([`macro_roc_auc`], [`macro_roc_auc_with_labels`]): the BirdCLEF 2024
//!   and BirdCLEF 2025 metric. Only the classes whose solution column has at least one positive
//!   are scored; the result is scikit-learn's
//!   `roc_auc_score(solution[:, kept], submission[:, kept], average="macro")`, the unweighted
//!   mean of the per-class AUCs. Each AUC is the Mann–Whitney statistic with mid-ranks for
//!   ties, `P(score⁺ > score⁻) + ½·P(score⁺ = score⁻)`, which is exactly the area under
//!   scikit-learn's trapezoidal ROC curve over distinct thresholds. It is computed from integer
//!   counts with a single division, so it agrees with scikit-learn to the last few bits.
//! * **Padded cmAP** ([`padded_cmap`]): the BirdCLEF 2023 metric. `padding_factor` rows of all
//!   ones ([`DEFAULT_PADDING_FACTOR`] = 5 on Kaggle) are appended to *both* the solution and
//!   the submission, then the result is scikit-learn's
//!   `average_precision_score(padded_solution, padded_submission, average="macro")`. Each
//!   class's average precision is the step-wise sum over distinct score thresholds in
//!   descending order, `AP = Σₙ (Rₙ − Rₙ₋₁)·Pₙ`; all rows sharing a score form one threshold,
//!   as in scikit-learn.
//!
//! Degenerate classes follow scikit-learn where it defines a value and are errors where it
//! does not:
//!
//! * ROC-AUC skips classes without positives (as the Kaggle metric does). A scored class without
//!   negatives has no ROC curve: scikit-learn ≤ 1.5 raised `ValueError`, later versions warn and
//!   return `nan` (which makes the macro mean `nan`). Here it is
//!   [`MetricError::NoNegatives`], naming the class. If no class has a positive at all, the
//!   Kaggle code fails an assertion; here it is [`MetricError::NoScoredClasses`].
//! * Average precision of a class without positives (possible only with `padding_factor = 0`)
//!   is `0.0`, as scikit-learn 1.x returns it (with the warning "No positive class found in
//!   y_true"); it counts in the macro mean.
//!
//! Every input is validated first ([`MetricError`]): equal shapes, at least one row and one
//! class, finite scores, solution values exactly 0 or 1. `-0.0` and `0.0` are the same score.
//! The functions never panic. Classes are scored in parallel with rayon, each in
//! O(n log n) for n rows.
//!
//! The golden files under `models/tests/golden/metrics/` hold cases computed with
//! scikit-learn; `tests/metrics_golden.rs` checks these functions against them.

use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;
use serde::Serialize;

/// Rows of all ones that the BirdCLEF 2023 metric appends before averaging precision.
pub const DEFAULT_PADDING_FACTOR: usize = 5;

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// Solution and submission do not have the same (rows, classes) shape.
    #[error(
        "shape mismatch: solution is {solution:?} (rows, classes) but submission is {submission:?}"
    )]
    ShapeMismatch {
        /// (rows, classes) of the solution.
        solution: (usize, usize),
        /// (rows, classes) of the submission.
        submission: (usize, usize),
    },
    /// The number of class names does not match the number of classes.
    #[error("{labels} class names given for {classes} classes")]
    LabelCountMismatch {
        /// Number of names given.
        labels: usize,
        /// Number of class columns.
        classes: usize,
    },
    /// The input has no rows or no classes.
    #[error("empty input: {rows} rows × {classes} classes")]
    Empty {
        /// Number of rows.
        rows: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A submission score is NaN or infinite.
    #[error("submission score at row {row}, class {class} is not finite ({value})")]
    NonFiniteScore {
        /// Row index (0-based).
        row: usize,
        /// Class (column) index (0-based).
        class: usize,
        /// The offending value, as f64.
        value: f64,
    },
    /// A solution value is neither 0 nor 1.
    #[error("solution value at row {row}, class {class} is {value}, not 0 or 1")]
    InvalidLabel {
        /// Row index (0-based).
        row: usize,
        /// Class (column) index (0-based).
        class: usize,
        /// The offending value, as f64.
        value: f64,
    },
    /// No class has a positive row, so ROC-AUC scores nothing.
    #[error("no class has a positive row in the solution: macro {metric} is undefined")]
    NoScoredClasses {
        /// The metric asked for (`ROC-AUC`, `F1`).
        metric: &'static str,
    },
    /// A scored class (one with positives) has no negative row, so its ROC-AUC is undefined.
    #[error(
        "class {class}{} has no negative row: ROC-AUC is undefined for it",
        name_suffix(.name.as_deref())
    )]
    NoNegatives {
        /// Class (column) index (0-based).
        class: usize,
        /// The class name, when names were given.
        name: Option<String>,
    },
}

fn name_suffix(name: Option<&str>) -> String {
    match name {
        Some(n) => format!(" ({n})"),
        None => String::new(),
    }
}

/// Result of [`macro_roc_auc`]: the macro mean and the per-class values behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RocAucReport {
    /// Unweighted mean of the AUCs of the scored classes: the competition score.
    pub macro_auc: f64,
    /// One entry per class (column order): the class's AUC, or `None` where the class has no
    /// positive row and is not scored.
    pub per_class: Vec<Option<f64>>,
    /// Number of scored classes (the `Some` entries of `per_class`).
    pub scored_classes: usize,
}

/// Result of [`padded_cmap`]: the macro mean and the per-class average precisions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CmapReport {
    /// Unweighted mean of the per-class average precisions: the competition score.
    pub cmap: f64,
    /// Average precision of every class (column order), computed on the padded columns.
    pub per_class: Vec<f64>,
    /// The number of all-ones rows that were appended.
    pub padding_factor: usize,
}

/// BirdCLEF 2024/2025 macro ROC-AUC over the classes that have at least one positive.
///
/// `solution` holds 0/1 labels and `submission` the scores, both rows × classes; any element
/// type that converts losslessly to `f64` (`f64`, `f32`, `u8`, `bool`, …) is accepted.
/// Equals scikit-learn's `roc_auc_score(solution[:, kept], submission[:, kept],
/// average="macro")` where `kept` are the columns with a positive.
///
/// # Errors
///
/// Input validation errors (see [`MetricError`]), [`MetricError::NoScoredClasses`] when no
/// class has a positive, and [`MetricError::NoNegatives`] (lowest such class index) when a
/// scored class has no negative row.
pub fn macro_roc_auc<L, S>(
    solution: ArrayView2<'_, L>,
    submission: ArrayView2<'_, S>,
) -> Result<RocAucReport, MetricError>
where
    L: Copy + Into<f64> + Sync,
    S: Copy + Into<f64> + Sync,
{
    roc_auc_impl(solution, submission, None)
}

/// [`macro_roc_auc`] with class names, used to name the class in [`MetricError::NoNegatives`].
///
/// # Errors
///
/// As [`macro_roc_auc`], plus [`MetricError::LabelCountMismatch`] when `labels` does not have
/// one name per class.
pub fn macro_roc_auc_with_labels<L, S, N>(
    solution: ArrayView2<'_, L>,
    submission: ArrayView2<'_, S>,
    labels: &[N],
) -> Result<RocAucReport, MetricError>
where
    L: Copy + Into<f64> + Sync,
    S: Copy + Into<f64> + Sync,
    N: AsRef<str>,
{
    let names: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
    roc_auc_impl(solution, submission, Some(&names))
}

/// BirdCLEF 2023 padded cmAP: append `padding_factor` rows of ones to both matrices, then take
/// the macro mean of the per-class average precisions.
///
/// Equals scikit-learn's `average_precision_score(padded_solution, padded_submission,
/// average="macro")`. Kaggle used [`DEFAULT_PADDING_FACTOR`] (5). With `padding_factor = 0` a
/// class without positives gets average precision `0.0`, as in scikit-learn 1.x.
///
/// # Errors
///
/// Input validation errors only (see [`MetricError`]); an input with no rows is
/// [`MetricError::Empty`] even when padding would make it non-empty.
pub fn padded_cmap<L, S>(
    solution: ArrayView2<'_, L>,
    submission: ArrayView2<'_, S>,
    padding_factor: usize,
) -> Result<CmapReport, MetricError>
where
    L: Copy + Into<f64> + Sync,
    S: Copy + Into<f64> + Sync,
{
    validate(&solution, &submission)?;
    let per_class: Vec<f64> = (0..solution.ncols())
        .into_par_iter()
        .map(|c| {
            let mut pairs = column_pairs(solution.column(c), submission.column(c), padding_factor);
            sort_ascending(&mut pairs);
            average_precision_sorted(&pairs)
        })
        .collect();
    let cmap = mean(&per_class);
    Ok(CmapReport {
        cmap,
        per_class,
        padding_factor,
    })
}

fn roc_auc_impl<L, S>(
    solution: ArrayView2<'_, L>,
    submission: ArrayView2<'_, S>,
    labels: Option<&[&str]>,
) -> Result<RocAucReport, MetricError>
where
    L: Copy + Into<f64> + Sync,
    S: Copy + Into<f64> + Sync,
{
    validate(&solution, &submission)?;
    if let Some(names) = labels {
        if names.len() != solution.ncols() {
            return Err(MetricError::LabelCountMismatch {
                labels: names.len(),
                classes: solution.ncols(),
            });
        }
    }
    // Per class: None when the class is not scored, Some(None) when scored but undefined.
    let outcomes: Vec<Option<Option<f64>>> = (0..solution.ncols())
        .into_par_iter()
        .map(|c| {
            let mut pairs = column_pairs(solution.column(c), submission.column(c), 0);
            if !pairs.iter().any(|&(_, positive)| positive) {
                return None;
            }
            sort_ascending(&mut pairs);
            Some(roc_auc_sorted(&pairs))
        })
        .collect();

    let mut per_class = Vec::with_capacity(outcomes.len());
    for (class, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            None => per_class.push(None),
            Some(Some(auc)) => per_class.push(Some(auc)),
            Some(None) => {
                return Err(MetricError::NoNegatives {
                    class,
                    name: labels
                        .and_then(|names| names.get(class))
                        .map(|n| (*n).to_owned()),
                })
            }
        }
    }
    let scored: Vec<f64> = per_class.iter().filter_map(|v| *v).collect();
    if scored.is_empty() {
        return Err(MetricError::NoScoredClasses { metric: "ROC-AUC" });
    }
    Ok(RocAucReport {
        macro_auc: mean(&scored),
        scored_classes: scored.len(),
        per_class,
    })
}

/// How scores become predicted labels, for [`f1_scores`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// A class is predicted where its score is at least this.
    Threshold(f64),
    /// Each row predicts its highest-scoring class only (the first of equal ones): for
    /// single-label data.
    Argmax,
}

/// F1 over the classes with at least one positive.
#[derive(Debug, Clone, PartialEq)]
pub struct F1Report {
    /// Unweighted mean of the scored classes' F1.
    pub macro_f1: f64,
    /// Mean of the scored classes' F1 weighted by their number of positives.
    pub weighted_f1: f64,
    /// F1 of each class (`None` for a class without positives).
    pub per_class: Vec<Option<f64>>,
}

/// The class with the highest score in each row (the first of equal ones, as numpy's argmax).
fn row_argmax<S: Copy + Into<f64>>(row: ArrayView1<'_, S>) -> usize {
    let mut best = 0;
    let mut best_value = f64::NEG_INFINITY;
    for (c, &v) in row.iter().enumerate() {
        let v: f64 = v.into();
        if v > best_value {
            best = c;
            best_value = v;
        }
    }
    best
}

/// Macro and support-weighted F1 of the labels `decision` predicts from `submission`, over the
/// classes that have a positive in `solution` (a scored class never predicted and never hit has
/// F1 0). Equals scikit-learn's `f1_score(solution, predicted, labels=kept, average="macro" /
/// "weighted", zero_division=0)`.
///
/// # Errors
///
/// Input validation errors (see [`MetricError`]) and [`MetricError::NoScoredClasses`] when no
/// class has a positive.
pub fn f1_scores<L, S>(
    solution: ArrayView2<'_, L>,
    submission: ArrayView2<'_, S>,
    decision: Decision,
) -> Result<F1Report, MetricError>
where
    L: Copy + Into<f64>,
    S: Copy + Into<f64>,
{
    validate(&solution, &submission)?;
    let classes = solution.ncols();
    // (true positives, predicted, positives) per class.
    let mut counts = vec![(0u64, 0u64, 0u64); classes];
    for (truth, scores) in solution.outer_iter().zip(submission.outer_iter()) {
        let top = row_argmax(scores);
        for (c, (&t, &s)) in truth.iter().zip(scores.iter()).enumerate() {
            let positive = t.into() == 1.0;
            let predicted = match decision {
                Decision::Threshold(thr) => s.into() >= thr,
                Decision::Argmax => c == top,
            };
            let e = &mut counts[c];
            e.0 += u64::from(positive && predicted);
            e.1 += u64::from(predicted);
            e.2 += u64::from(positive);
        }
    }
    let per_class: Vec<Option<f64>> = counts
        .iter()
        .map(|&(tp, predicted, positives)| {
            (positives > 0).then(|| 2.0 * tp as f64 / (predicted + positives) as f64)
        })
        .collect();
    let scored: Vec<(f64, u64)> = per_class
        .iter()
        .zip(&counts)
        .filter_map(|(f, c)| f.map(|f| (f, c.2)))
        .collect();
    if scored.is_empty() {
        return Err(MetricError::NoScoredClasses { metric: "F1" });
    }
    let macro_f1 = scored.iter().map(|s| s.0).sum::<f64>() / scored.len() as f64;
    let support: u64 = scored.iter().map(|s| s.1).sum();
    let weighted_f1 = scored.iter().map(|&(f, n)| f * n as f64).sum::<f64>() / support as f64;
    Ok(F1Report {
        macro_f1,
        weighted_f1,
        per_class,
    })
}

/// Confusion matrix `[true class, predicted class]`: row `r` counts once, at its true class
/// `truth[r]` and the highest-scoring class of `submission` (the first of equal ones). Equals
/// scikit-learn's `confusion_matrix(truth, argmax, labels=range(classes))`.
///
/// # Errors
///
/// [`MetricError::ShapeMismatch`] when `truth` does not have one class per row (given as
/// `(truth.len(), classes)`), [`MetricError::InvalidLabel`] for a true class that is not a column,
/// and the score checks of the other metrics.
pub fn confusion_matrix<S>(
    truth: &[usize],
    submission: ArrayView2<'_, S>,
) -> Result<ndarray::Array2<u64>, MetricError>
where
    S: Copy + Into<f64>,
{
    let (rows, classes) = submission.dim();
    if truth.len() != rows {
        return Err(MetricError::ShapeMismatch {
            solution: (truth.len(), classes),
            submission: (rows, classes),
        });
    }
    if rows == 0 || classes == 0 {
        return Err(MetricError::Empty { rows, classes });
    }
    if let Some((row, &t)) = truth.iter().enumerate().find(|(_, &t)| t >= classes) {
        return Err(MetricError::InvalidLabel {
            row,
            class: t,
            value: t as f64,
        });
    }
    let mut m = ndarray::Array2::<u64>::zeros((classes, classes));
    for (row, (&t, scores)) in truth.iter().zip(submission.outer_iter()).enumerate() {
        if let Some((class, &v)) = scores
            .iter()
            .enumerate()
            .find(|(_, &v)| !v.into().is_finite())
        {
            return Err(MetricError::NonFiniteScore {
                row,
                class,
                value: v.into(),
            });
        }
        m[[t, row_argmax(scores)]] += 1;
    }
    Ok(m)
}

/// Checks shapes, emptiness, label values and score finiteness (solution first, row-major).
fn validate<L, S>(
    solution: &ArrayView2<'_, L>,
    submission: &ArrayView2<'_, S>,
) -> Result<(), MetricError>
where
    L: Copy + Into<f64>,
    S: Copy + Into<f64>,
{
    if solution.dim() != submission.dim() {
        return Err(MetricError::ShapeMismatch {
            solution: solution.dim(),
            submission: submission.dim(),
        });
    }
    let (rows, classes) = solution.dim();
    if rows == 0 || classes == 0 {
        return Err(MetricError::Empty { rows, classes });
    }
    for ((row, class), &v) in solution.indexed_iter() {
        let value: f64 = v.into();
        if value != 0.0 && value != 1.0 {
            return Err(MetricError::InvalidLabel { row, class, value });
        }
    }
    for ((row, class), &v) in submission.indexed_iter() {
        let value: f64 = v.into();
        if !value.is_finite() {
            return Err(MetricError::NonFiniteScore { row, class, value });
        }
    }
    Ok(())
}

/// (score, is_positive) for one class, with `padding` extra (1.0, positive) rows. `-0.0` is
/// folded into `0.0` so that the two compare as one threshold under `total_cmp`.
fn column_pairs<L, S>(
    labels: ArrayView1<'_, L>,
    scores: ArrayView1<'_, S>,
    padding: usize,
) -> Vec<(f64, bool)>
where
    L: Copy + Into<f64>,
    S: Copy + Into<f64>,
{
    let mut pairs = Vec::with_capacity(labels.len() + padding);
    pairs.extend(labels.iter().zip(scores.iter()).map(|(&l, &s)| {
        let score: f64 = s.into();
        let label: f64 = l.into();
        (score + 0.0, label == 1.0)
    }));
    pairs.extend(std::iter::repeat_n((1.0, true), padding));
    pairs
}

fn sort_ascending(pairs: &mut [(f64, bool)]) {
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
}

/// (positives, negatives) in a run of equal scores.
fn counts(group: &[(f64, bool)]) -> (u64, u64) {
    let positives = group.iter().filter(|&&(_, p)| p).count() as u64;
    (positives, group.len() as u64 - positives)
}

/// Mann–Whitney AUC with mid-ranks on pairs sorted by ascending score; `None` when either
/// class is absent. Every positive scores 1 per negative below it and ½ per tied negative;
/// the doubled count is an exact integer, divided once at the end.
fn roc_auc_sorted(pairs: &[(f64, bool)]) -> Option<f64> {
    let mut negatives_below: u128 = 0;
    let mut positives: u128 = 0;
    let mut twice_wins: u128 = 0;
    for group in pairs.chunk_by(|a, b| a.0 == b.0) {
        let (p, n) = counts(group);
        let (p, n) = (u128::from(p), u128::from(n));
        twice_wins += p * (2 * negatives_below + n);
        negatives_below += n;
        positives += p;
    }
    if positives == 0 || negatives_below == 0 {
        return None;
    }
    Some(twice_wins as f64 / (2 * positives * negatives_below) as f64)
}

/// Step-wise average precision on pairs sorted by ascending score, walking the distinct
/// thresholds from the highest down: `Σ ΔTP/P · TP/(TP+FP)`. 0.0 when there is no positive.
fn average_precision_sorted(pairs: &[(f64, bool)]) -> f64 {
    let total_positives = pairs.iter().filter(|&&(_, p)| p).count();
    if total_positives == 0 {
        return 0.0;
    }
    let mut true_positives: u64 = 0;
    let mut predicted: u64 = 0;
    let mut sum = 0.0;
    for group in pairs.chunk_by(|a, b| a.0 == b.0).rev() {
        let (p, n) = counts(group);
        true_positives += p;
        predicted += p + n;
        if p > 0 {
            sum += p as f64 * (true_positives as f64 / predicted as f64);
        }
    }
    sum / total_positives as f64
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-15
    }

    #[test]
    fn perfect_ranking_is_one() {
        let sol = array![[0.0], [0.0], [1.0], [1.0]];
        let sub = array![[0.1], [0.2], [0.3], [0.9]];
        let r = macro_roc_auc(sol.view(), sub.view()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.macro_auc, 1.0);
        assert_eq!(r.per_class, vec![Some(1.0)]);
    }

    #[test]
    fn reversed_ranking_is_zero() {
        let sol = array![[1.0], [1.0], [0.0], [0.0]];
        let sub = array![[0.1], [0.2], [0.3], [0.9]];
        let r = macro_roc_auc(sol.view(), sub.view()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.macro_auc, 0.0);
    }

    #[test]
    fn all_tied_is_one_half() {
        let sol = array![[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]];
        let sub = Array2::from_elem((4, 2), 0.7);
        let r = macro_roc_auc(sol.view(), sub.view()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.macro_auc, 0.5);
        assert_eq!(r.per_class, vec![Some(0.5), Some(0.5)]);
    }

    #[test]
    fn partial_ties_by_hand() {
        // Positives at 0.5, 0.8; negatives at 0.5, 0.2, 0.9.
        // Pairs (pos, neg): (0.5: 0.5 tie=½, 0.2 win, 0.9 loss), (0.8: win, win, loss) → 3.5/6.
        let sol = array![[1.0], [1.0], [0.0], [0.0], [0.0]];
        let sub = array![[0.5], [0.8], [0.5], [0.2], [0.9]];
        let r = macro_roc_auc(sol.view(), sub.view()).unwrap_or_else(|e| panic!("{e}"));
        assert!(close(r.macro_auc, 3.5 / 6.0));
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        let sol = array![[1.0], [0.0]];
        let sub = array![[-0.0], [0.0]];
        let r = macro_roc_auc(sol.view(), sub.view()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.macro_auc, 0.5);
    }

    #[test]
    fn class_without_positives_is_skipped() {
        let sol = array![[1.0, 0.0], [0.0, 0.0]];
        let sub = array![[0.9, 0.1], [0.1, 0.9]];
        let r = macro_roc_auc(sol.view(), sub.view()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.per_class, vec![Some(1.0), None]);
        assert_eq!(r.scored_classes, 1);
        assert_eq!(r.macro_auc, 1.0);
    }

    #[test]
    fn class_without_negatives_is_named() {
        let sol = array![[1.0, 1.0], [0.0, 1.0]];
        let sub = array![[0.9, 0.1], [0.1, 0.9]];
        let e = macro_roc_auc_with_labels(sol.view(), sub.view(), &["amerob", "blujay"]);
        assert_eq!(
            e,
            Err(MetricError::NoNegatives {
                class: 1,
                name: Some("blujay".into())
            })
        );
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("class 1 (blujay)"), "{msg}");
        let e = macro_roc_auc(sol.view(), sub.view());
        assert_eq!(
            e,
            Err(MetricError::NoNegatives {
                class: 1,
                name: None
            })
        );
    }

    #[test]
    fn no_positive_anywhere() {
        let sol = Array2::<f64>::zeros((3, 2));
        let sub = Array2::<f64>::zeros((3, 2));
        assert_eq!(
            macro_roc_auc(sol.view(), sub.view()),
            Err(MetricError::NoScoredClasses { metric: "ROC-AUC" })
        );
        let r = padded_cmap(sol.view(), sub.view(), 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.per_class, vec![0.0, 0.0]);
        assert_eq!(r.cmap, 0.0);
    }

    #[test]
    fn average_precision_by_hand() {
        // Scores descending: 0.9 (neg), 0.8 (pos), 0.5 (pos, neg tied), 0.2 (neg).
        // Thresholds: 0.9 → TP 0/1; 0.8 → TP 1/2, ΔR ½; 0.5 → TP 2/4, ΔR ½. AP = ½·½ + ½·½.
        let sol = array![[1.0], [1.0], [0.0], [0.0], [0.0]];
        let sub = array![[0.5], [0.8], [0.5], [0.2], [0.9]];
        let r = padded_cmap(sol.view(), sub.view(), 0).unwrap_or_else(|e| panic!("{e}"));
        assert!(close(r.cmap, 0.5));
        // One padding row (score 1.0, positive) ranks first: P@1 = 1, P@3 = 2/3, P@5 = 3/5.
        let r = padded_cmap(sol.view(), sub.view(), 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(close(r.cmap, (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0));
    }

    #[test]
    fn element_types_agree() {
        let sol_u8 = array![[1u8, 0], [0, 1], [1, 1], [0, 0]];
        let sol_bool = sol_u8.mapv(|v| v == 1);
        let sol_f64 = sol_u8.mapv(f64::from);
        let sub_f32 = array![[0.25f32, 0.5], [0.5, 0.5], [0.75, 0.125], [0.25, 0.0]];
        let sub_f64 = sub_f32.mapv(f64::from);
        let a = macro_roc_auc(sol_u8.view(), sub_f32.view());
        let b = macro_roc_auc(sol_bool.view(), sub_f64.view());
        let c = macro_roc_auc(sol_f64.view(), sub_f64.view());
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(
            padded_cmap(sol_bool.view(), sub_f32.view(), 5),
            padded_cmap(sol_f64.view(), sub_f64.view(), 5)
        );
    }

    #[test]
    fn validation_errors() {
        let ok = array![[1.0, 0.0], [0.0, 1.0]];
        let wide = array![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        assert_eq!(
            macro_roc_auc(ok.view(), wide.view()),
            Err(MetricError::ShapeMismatch {
                solution: (2, 2),
                submission: (2, 3)
            })
        );
        let empty = Array2::<f64>::zeros((0, 3));
        assert_eq!(
            padded_cmap(empty.view(), empty.view(), 5),
            Err(MetricError::Empty {
                rows: 0,
                classes: 3
            })
        );
        let bad_label = array![[1.0, 0.5], [0.0, 1.0]];
        assert_eq!(
            macro_roc_auc(bad_label.view(), ok.view()),
            Err(MetricError::InvalidLabel {
                row: 0,
                class: 1,
                value: 0.5
            })
        );
        let nan_label = array![[1.0, 0.0], [f64::NAN, 1.0]];
        assert!(matches!(
            padded_cmap(nan_label.view(), ok.view(), 5),
            Err(MetricError::InvalidLabel {
                row: 1,
                class: 0,
                ..
            })
        ));
        let inf_score = array![[1.0, 0.0], [0.0, f64::INFINITY]];
        assert_eq!(
            padded_cmap(ok.view(), inf_score.view(), 5),
            Err(MetricError::NonFiniteScore {
                row: 1,
                class: 1,
                value: f64::INFINITY
            })
        );
        let nan_score = array![[f64::NAN, 0.0], [0.0, 1.0]];
        assert!(matches!(
            macro_roc_auc(ok.view(), nan_score.view()),
            Err(MetricError::NonFiniteScore {
                row: 0,
                class: 0,
                ..
            })
        ));
        assert_eq!(
            macro_roc_auc_with_labels(ok.view(), ok.view(), &["a"]),
            Err(MetricError::LabelCountMismatch {
                labels: 1,
                classes: 2
            })
        );
    }

    #[test]
    fn non_contiguous_views() {
        let sol = array![[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]];
        let sub = array![[0.3, 0.2, 0.1], [0.1, 0.9, 0.4], [0.6, 0.5, 0.2]];
        let t = macro_roc_auc(sol.t(), sub.t());
        let owned = macro_roc_auc(
            sol.t().as_standard_layout().view(),
            sub.t().as_standard_layout().view(),
        );
        assert_eq!(t, owned);
    }
}
