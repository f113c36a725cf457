//! Scoring a submission CSV against a solution CSV with the competition metrics.
//!
//! [`score`] reads both files (`row_id` plus one column per species), aligns the submission's
//! rows to the solution's by row id and computes, over the solution's species columns:
//!
//! * the BirdCLEF 2024/2025 metric, macro ROC-AUC over the species with at least one positive
//!   ([`birdclef_models::metrics::macro_roc_auc_with_labels`]);
//! * the BirdCLEF 2023 metric, padded cmAP ([`birdclef_models::metrics::padded_cmap`]).
//!
//! Every solution row must be in the submission; extra submission rows are ignored and counted.
//! Every solution species must be a submission column; extra submission columns are ignored.
//! A solution column named `Usage` (Kaggle's public/private split) is not a species and is
//! skipped.

use crate::files::FileError;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use birdclef_models::metrics::{self, MetricError};
use ndarray::Array2;

pub use birdclef_models::metrics::DEFAULT_PADDING_FACTOR;

/// Solution columns that are not species.
const NON_SPECIES: &[&str] = &["Usage"];

/// Why a submission could not be scored. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreError {
    /// Solution rows are missing from the submission.
    #[error(
        "{submission}: {count} row(s) of the solution are missing, e.g. {}",
        .examples.join(", ")
    )]
    MissingRows {
        /// The submission.
        submission: PathBuf,
        /// How many solution rows are missing.
        count: usize,
        /// Up to 10 of the missing row ids, in solution order.
        examples: Vec<String>,
    },
    /// Solution species are not columns of the submission.
    #[error("{submission}: {} solution species are not columns: {}", .missing.len(), .missing.join(", "))]
    MissingColumns {
        /// The submission.
        submission: PathBuf,
        /// The missing species, in solution order.
        missing: Vec<String>,
    },
    /// The metric could not be computed (e.g. a species positive in every row). The metric's
    /// message is the source, not part of this one, so `{:#}` shows it once.
    #[error("{solution}")]
    Metric {
        /// The solution.
        solution: PathBuf,
        /// The cause.
        #[source]
        source: MetricError,
    },
    /// Reading, parsing or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The result of [`score`].
///
/// `Display` prints a small table; the alternate form (`{:#}`) adds one line per species. The
/// last line is always exactly `macro_roc_auc=<value with 6 decimals>`, for scripts.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    /// Solution rows scored.
    pub rows: usize,
    /// Submission rows not in the solution (ignored).
    pub extra_submission_rows: usize,
    /// Submission species columns not in the solution (ignored).
    pub extra_submission_columns: usize,
    /// The solution's species, in its column order.
    pub species: Vec<String>,
    /// Positive rows per species.
    pub positives: Vec<usize>,
    /// Per-species ROC-AUC, `None` for a species without positives (not scored).
    pub per_species_auc: Vec<Option<f64>>,
    /// Species scored by ROC-AUC (those with a positive).
    pub scored_species: usize,
    /// Macro ROC-AUC: the BirdCLEF 2024/2025 score.
    pub macro_roc_auc: f64,
    /// Per-species average precision on the padded columns.
    pub per_species_ap: Vec<f64>,
    /// Padded cmAP: the BirdCLEF 2023 score.
    pub cmap: f64,
    /// Rows of ones appended for cmAP.
    pub padding: usize,
    /// F1 when asked for ([`score_with`]): how labels were predicted, and the scores.
    pub f1: Option<(metrics::Decision, metrics::F1Report)>,
    /// `[true, predicted]` counts of the solution rows with a positive: the row's first
    /// positive species (in solution column order) against its highest-scoring one.
    pub confusion: Array2<u64>,
}

impl fmt::Display for ScoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rows scored        {}", self.rows)?;
        if self.extra_submission_rows > 0 {
            write!(
                f,
                " ({} submission rows not in the solution ignored)",
                self.extra_submission_rows
            )?;
        }
        writeln!(f)?;
        write!(
            f,
            "species            {} ({} with a positive, scored by ROC-AUC)",
            self.species.len(),
            self.scored_species
        )?;
        if self.extra_submission_columns > 0 {
            write!(
                f,
                "; {} submission columns not in the solution ignored",
                self.extra_submission_columns
            )?;
        }
        writeln!(f)?;
        writeln!(f, "padded cmAP (pad {}) {:.6}", self.padding, self.cmap)?;
        if let Some((decision, r)) = &self.f1 {
            let how = match decision {
                metrics::Decision::Threshold(t) => format!("at {t}"),
                metrics::Decision::Argmax => "by argmax".to_string(),
            };
            writeln!(
                f,
                "F1 {how}: macro {:.6}, weighted {:.6}",
                r.macro_f1, r.weighted_f1
            )?;
        }
        if f.alternate() {
            let width = self
                .species
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(7)
                .max(7);
            let f1_head = if self.f1.is_some() { "        f1" } else { "" };
            writeln!(
                f,
                "{:<width$}  positives   roc_auc   avg_prec{f1_head}",
                "species"
            )?;
            for (i, s) in self.species.iter().enumerate() {
                let auc = match self.per_species_auc[i] {
                    Some(a) => format!("{a:.6}"),
                    None => "-".to_string(),
                };
                let f1 = match &self.f1 {
                    Some((_, r)) => match r.per_class[i] {
                        Some(v) => format!("  {v:>8.6}"),
                        None => format!("  {:>8}", "-"),
                    },
                    None => String::new(),
                };
                writeln!(
                    f,
                    "{s:<width$}  {:>9}  {auc:>8}  {:>9.6}{f1}",
                    self.positives[i], self.per_species_ap[i]
                )?;
            }
        }
        write!(f, "macro_roc_auc={:.6}", self.macro_roc_auc)
    }
}

/// A CSV of `row_id` plus numeric columns.
struct Table {
    columns: Vec<String>,
    row_ids: Vec<String>,
    /// Row-major values, `row_ids.len() × columns.len()`.
    values: Vec<f64>,
}

fn read_table(path: &Path, what: &str) -> Result<Table, ScoreError> {
    let file = crate::files::open_input(path)?;
    let csv_err = |source| {
        ScoreError::from(FileError::Csv {
            path: path.to_path_buf(),
            cause: source,
        })
    };
    let fmt_err = |reason: String| {
        ScoreError::from(FileError::Format {
            path: path.to_path_buf(),
            reason,
        })
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file);
    let header = reader.headers().map_err(csv_err)?.clone();
    let names: Vec<String> = header
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let id_col = names
        .iter()
        .position(|n| n == "row_id")
        .ok_or_else(|| fmt_err(format!("the {what} has no row_id column")))?;
    let skip: Vec<bool> = names
        .iter()
        .enumerate()
        .map(|(i, n)| i == id_col || (what == "solution" && NON_SPECIES.contains(&n.as_str())))
        .collect();
    let columns: Vec<String> = names
        .iter()
        .zip(&skip)
        .filter(|(_, s)| !**s)
        .map(|(n, _)| n.clone())
        .collect();
    if columns.is_empty() {
        return Err(fmt_err(format!("the {what} has no species column")));
    }
    let mut seen_cols = HashMap::new();
    for c in &columns {
        if seen_cols.insert(c.as_str(), ()).is_some() {
            return Err(fmt_err(format!("column {c:?} appears twice")));
        }
    }
    let mut row_ids = Vec::new();
    let mut values = Vec::new();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_err)? {
        let id = record.get(id_col).unwrap_or("").to_string();
        let line = record.position().map_or(0, |p| p.line());
        for (i, field) in record.iter().enumerate() {
            if skip.get(i).copied().unwrap_or(true) {
                continue;
            }
            let v: f64 = field.trim().parse().map_err(|_| {
                fmt_err(format!(
                    "line {line}, row {id:?}, column {:?}: {field:?} is not a number",
                    names[i]
                ))
            })?;
            if !v.is_finite() {
                return Err(fmt_err(format!(
                    "line {line}, row {id:?}, column {:?}: {field} is not finite",
                    names[i]
                )));
            }
            if what == "solution" && v != 0.0 && v != 1.0 {
                return Err(fmt_err(format!(
                    "line {line}, row {id:?}, column {:?}: {field} is not 0 or 1",
                    names[i]
                )));
            }
            values.push(v);
        }
        row_ids.push(id);
    }
    if row_ids.is_empty() {
        return Err(fmt_err(format!("the {what} has no rows")));
    }
    Ok(Table {
        columns,
        row_ids,
        values,
    })
}

fn index_rows(table: &Table, path: &Path) -> Result<HashMap<String, usize>, ScoreError> {
    let mut index = HashMap::with_capacity(table.row_ids.len());
    for (i, id) in table.row_ids.iter().enumerate() {
        if index.insert(id.clone(), i).is_some() {
            return Err(ScoreError::from(FileError::Format {
                path: path.to_path_buf(),
                reason: format!("row id {id:?} appears twice"),
            }));
        }
    }
    Ok(index)
}

/// Score `submission` against `solution`: macro ROC-AUC over the solution's species with a
/// positive, and padded cmAP with `padding` rows of ones ([`DEFAULT_PADDING_FACTOR`] = 5 on
/// Kaggle).
///
/// # Errors
///
/// I/O and CSV errors; [`FileError::Format`] for a missing `row_id` column, a repeated row id
/// or column, a value that is not a finite number (or not 0/1 in the solution);
/// [`ScoreError::MissingRows`] (up to 10 ids and the count); [`ScoreError::MissingColumns`];
/// [`ScoreError::Metric`] when the metric is undefined (no species with a positive, or one
/// positive in every row).
pub fn score(
    submission: &Path,
    solution: &Path,
    padding: usize,
) -> Result<ScoreReport, ScoreError> {
    score_with(submission, solution, padding, None)
}

/// [`score`], and F1 with the predictions `f1` makes (macro and support-weighted over the
/// species with a positive, as scikit-learn's `f1_score`) when it is given.
///
/// # Errors
///
/// As [`score`].
pub fn score_with(
    submission: &Path,
    solution: &Path,
    padding: usize,
    f1: Option<metrics::Decision>,
) -> Result<ScoreReport, ScoreError> {
    let sol = read_table(solution, "solution")?;
    let sub = read_table(submission, "submission")?;
    index_rows(&sol, solution)?;
    let sub_rows = index_rows(&sub, submission)?;

    let sub_cols: HashMap<&str, usize> = sub
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let missing: Vec<String> = sol
        .columns
        .iter()
        .filter(|c| !sub_cols.contains_key(c.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ScoreError::MissingColumns {
            submission: submission.to_path_buf(),
            missing,
        });
    }
    let col_map: Vec<usize> = sol
        .columns
        .iter()
        .map(|c| sub_cols.get(c.as_str()).copied().unwrap_or(0))
        .collect();

    let mut row_map = Vec::with_capacity(sol.row_ids.len());
    let mut missing_rows = Vec::new();
    let mut missing_count = 0;
    for id in &sol.row_ids {
        match sub_rows.get(id) {
            Some(&r) => row_map.push(r),
            None => {
                missing_count += 1;
                if missing_rows.len() < 10 {
                    missing_rows.push(id.clone());
                }
            }
        }
    }
    if missing_count > 0 {
        return Err(ScoreError::MissingRows {
            submission: submission.to_path_buf(),
            count: missing_count,
            examples: missing_rows,
        });
    }

    let (n, c) = (sol.row_ids.len(), sol.columns.len());
    let truth = Array2::from_shape_vec((n, c), sol.values).map_err(|e| {
        ScoreError::from(FileError::Format {
            path: solution.to_path_buf(),
            reason: e.to_string(),
        })
    })?;
    let sub_width = sub.columns.len();
    let mut preds = Array2::<f64>::zeros((n, c));
    for (r, &sr) in row_map.iter().enumerate() {
        for (j, &sc) in col_map.iter().enumerate() {
            preds[[r, j]] = sub.values[sr * sub_width + sc];
        }
    }
    let metric_err = |source| ScoreError::Metric {
        solution: solution.to_path_buf(),
        source,
    };
    let auc = metrics::macro_roc_auc_with_labels(truth.view(), preds.view(), &sol.columns)
        .map_err(metric_err)?;
    let cmap = metrics::padded_cmap(truth.view(), preds.view(), padding).map_err(metric_err)?;
    let f1 = match f1 {
        Some(d) => Some((
            d,
            metrics::f1_scores(truth.view(), preds.view(), d).map_err(metric_err)?,
        )),
        None => None,
    };
    let with_positive: Vec<usize> = (0..n)
        .filter(|&r| truth.row(r).iter().any(|&v| v == 1.0))
        .collect();
    let first_positive: Vec<usize> = with_positive
        .iter()
        .map(|&r| truth.row(r).iter().position(|&v| v == 1.0).unwrap_or(0))
        .collect();
    let confusion = metrics::confusion_matrix(
        &first_positive,
        preds.select(ndarray::Axis(0), &with_positive).view(),
    )
    .unwrap_or_else(|_| Array2::zeros((c, c)));
    let positives = truth
        .columns()
        .into_iter()
        .map(|col| col.iter().filter(|&&v| v == 1.0).count())
        .collect();
    Ok(ScoreReport {
        rows: n,
        extra_submission_rows: sub.row_ids.len() - n,
        extra_submission_columns: sub.columns.len() - c,
        species: sol.columns,
        positives,
        per_species_auc: auc.per_class,
        scored_species: auc.scored_classes,
        macro_roc_auc: auc.macro_auc,
        per_species_ap: cmap.per_class,
        cmap: cmap.cmap,
        padding,
        f1,
        confusion,
    })
}

/// A confusion matrix (`[true, predicted]` counts, one row and column per label) as CSV: a
/// header `true\\predicted,<label>,…`, then one row per true label. `fit`'s `confusion.csv`
/// and `score --confusion` both write it.
pub fn confusion_csv(labels: &[String], m: &Array2<u64>) -> String {
    let mut text = String::from("true\\predicted");
    for l in labels {
        text.push(',');
        text.push_str(l);
    }
    text.push('\n');
    for (label, row) in labels.iter().zip(m.outer_iter()) {
        text.push_str(label);
        for v in row {
            text.push_str(&format!(",{v}"));
        }
        text.push('\n');
    }
    text
}

/// Write `report`'s confusion matrix to `path` atomically as [`confusion_csv`], one row per
/// species of the solution.
///
/// # Errors
///
/// [`FileError`] when the file cannot be written (or `path` is not a regular file).
pub fn write_confusion(report: &ScoreReport, path: &Path) -> Result<(), FileError> {
    let text = confusion_csv(&report.species, &report.confusion);
    birdclef_models::fsio::write_atomic(path, text.as_bytes()).map_err(FileError::from)
}
