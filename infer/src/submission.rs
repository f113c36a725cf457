//! The Kaggle BirdCLEF submission CSV: its species columns, row ids and a fast, atomic writer.
//!
//! A submission has a header `row_id,<species 1>,<species 2>,…` and one row per 5-s window of
//! every test soundscape. The row id is `<soundscape stem>_<window end second>` ([`row_id`]),
//! e.g. `soundscape_XC218948_5` for the first window.
//!
//! * [`column_order`] decides the species columns: the model card's label order by default, or
//!   the order of a `sample_submission.csv` header or of `taxonomy.csv`'s `primary_label`
//!   column, and maps each column to the model output that fills it.
//! * [`SubmissionWriter`] (or [`write_submission`] for a slice of [`FileRows`]) formats every
//!   row into one buffer, sorted by file stem then window end second, checks the number of data
//!   rows against the number expected, and only then writes the file atomically (temporary file
//!   + rename), so a submission on disk is always complete.
//!
//! Probabilities are written with at most 6 significant digits, as C's `printf("%.6g")` does
//! (`0.5`, `0.000123457`, `1.23457e-05`, `1`), via [`push_prob`]. NaN and ±infinity are
//! written as `0` and counted in [`WriteReport::non_finite`] so the caller can warn.

use crate::files::FileError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// The name of the first column of every submission.
pub const ROW_ID: &str = "row_id";

/// Why the columns could not be decided or a submission could not be written. Every variant
/// that concerns a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmissionError {
    /// Both a sample submission and a taxonomy were given as the column order.
    #[error(
        "both a sample submission ({sample_submission}) and a taxonomy ({taxonomy}) were given \
         for the column order: give one"
    )]
    ConflictingColumnSources {
        /// The sample submission.
        sample_submission: PathBuf,
        /// The taxonomy.
        taxonomy: PathBuf,
    },
    /// A list of names (model labels or columns) is empty, repeats a name or holds a name that
    /// cannot be written to a CSV field unquoted.
    #[error("{what}: {reason}")]
    InvalidNames {
        /// Which list.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The sample submission or taxonomy shares no species with the models: every column
    /// would be 0.
    #[error(
        "{path}: none of its {columns} species is a label of the models, so every column would \
         be 0 (its species: {column_preview}; the models' labels: {label_preview}); is it the \
         file for these models?"
    )]
    NoCommonSpecies {
        /// The sample submission or taxonomy.
        path: PathBuf,
        /// How many species it has.
        columns: usize,
        /// Its first few species.
        column_preview: String,
        /// The models' first few labels.
        label_preview: String,
    },
    /// A file's predictions do not fit the submission.
    #[error("file {stem:?}: {reason}")]
    InvalidFile {
        /// The file stem.
        stem: String,
        /// What is wrong.
        reason: String,
    },
    /// The same file stem was added twice: its row ids would repeat.
    #[error("file stem {0:?} was added twice: its row ids would repeat")]
    DuplicateStem(String),
    /// The number of data rows is not the number expected; nothing was written.
    #[error("{path}: {got} data rows formatted but {expected} expected; the file was not written")]
    RowCount {
        /// The submission that was not written.
        path: PathBuf,
        /// Expected number of data rows.
        expected: usize,
        /// Number of data rows formatted.
        got: usize,
    },
    /// Reading, parsing or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Where the species columns of a submission come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    /// The model card's label order.
    ModelLabels,
    /// The header of a `sample_submission.csv` (all columns but `row_id`).
    SampleSubmission(PathBuf),
    /// The `primary_label` column of a `taxonomy.csv`, in row order.
    Taxonomy(PathBuf),
}

/// The species columns of a submission and where each one's values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// Species column names, in output order (without `row_id`).
    pub names: Vec<String>,
    /// For each column, the index into the model labels of the output that fills it, or `None`
    /// for a species the models do not know (that column is written as 0).
    pub model_index: Vec<Option<usize>>,
    /// The columns the models do not know (written as 0), in column order: warn about them.
    pub unknown: Vec<String>,
    /// Model labels that are not among the columns (their outputs are dropped), in model
    /// order: warn about them.
    pub unused_labels: Vec<String>,
    /// Where the column order came from.
    pub source: ColumnSource,
}

impl Columns {
    /// Reorder a `[rows × model labels]` matrix into `[rows × columns]`, with 0 for the
    /// [`unknown`](Columns::unknown) columns.
    ///
    /// # Errors
    ///
    /// [`SubmissionError::InvalidNames`] when `probs` does not have one column per model label
    /// this mapping was made for.
    pub fn select(&self, probs: ArrayView2<'_, f32>) -> Result<Array2<f32>, SubmissionError> {
        let labels = self.model_label_count();
        if probs.ncols() != labels {
            return Err(SubmissionError::InvalidNames {
                what: "predictions".into(),
                reason: format!(
                    "{} columns, but the column mapping was made for {labels} model labels",
                    probs.ncols()
                ),
            });
        }
        let mut out = Array2::<f32>::zeros((probs.nrows(), self.names.len()));
        for (c, source) in self.model_index.iter().enumerate() {
            if let Some(m) = *source {
                out.column_mut(c).assign(&probs.column(m));
            }
        }
        Ok(out)
    }

    fn model_label_count(&self) -> usize {
        self.model_index.iter().filter(|m| m.is_some()).count() + self.unused_labels.len()
    }
}

/// Decide the species columns of the submission.
///
/// By default (both paths `None`) the columns are `model_labels` in order. With
/// `sample_submission`, they are that CSV's header without its first column, which must be
/// `row_id`; with `taxonomy`, the values of its `primary_label` column in row order. Each column
/// is mapped to its index in `model_labels`; columns the models do not know are listed in
/// [`Columns::unknown`] (written as 0) and model labels left out in [`Columns::unused_labels`]:
/// the caller should warn about both.
///
/// # Errors
///
/// [`SubmissionError::ConflictingColumnSources`] when both paths are given; I/O, CSV and format
/// errors naming the file (no `row_id` first, no `primary_label` column, no species);
/// [`SubmissionError::NoCommonSpecies`] when the file shares no species with `model_labels`;
/// [`SubmissionError::InvalidNames`] for an empty or repeated name or one holding `,`, `"` or a
/// line break.
pub fn column_order(
    model_labels: &[String],
    sample_submission: Option<&Path>,
    taxonomy: Option<&Path>,
) -> Result<Columns, SubmissionError> {
    check_names("model labels", model_labels)?;
    let (names, source) = match (sample_submission, taxonomy) {
        (Some(s), Some(t)) => {
            return Err(SubmissionError::ConflictingColumnSources {
                sample_submission: s.to_path_buf(),
                taxonomy: t.to_path_buf(),
            })
        }
        (None, None) => (model_labels.to_vec(), ColumnSource::ModelLabels),
        (Some(s), None) => (
            sample_submission_columns(s)?,
            ColumnSource::SampleSubmission(s.to_path_buf()),
        ),
        (None, Some(t)) => (taxonomy_labels(t)?, ColumnSource::Taxonomy(t.to_path_buf())),
    };
    let what = match &source {
        ColumnSource::ModelLabels => "model labels".to_string(),
        ColumnSource::SampleSubmission(p) | ColumnSource::Taxonomy(p) => p.display().to_string(),
    };
    check_names(&what, &names)?;

    let index: HashMap<&str, usize> = model_labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let model_index: Vec<Option<usize>> = names
        .iter()
        .map(|n| index.get(n.as_str()).copied())
        .collect();
    if let ColumnSource::SampleSubmission(path) | ColumnSource::Taxonomy(path) = &source {
        if model_index.iter().all(Option::is_none) {
            return Err(SubmissionError::NoCommonSpecies {
                path: path.clone(),
                columns: names.len(),
                column_preview: few(&names),
                label_preview: few(model_labels),
            });
        }
    }
    let unknown = names
        .iter()
        .zip(&model_index)
        .filter(|(_, m)| m.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let used: HashSet<&str> = names.iter().map(String::as_str).collect();
    let unused_labels = model_labels
        .iter()
        .filter(|l| !used.contains(l.as_str()))
        .cloned()
        .collect();
    Ok(Columns {
        names,
        model_index,
        unknown,
        unused_labels,
        source,
    })
}

/// The first few names, for a message.
fn few(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... ({} in all)", names.len()));
    }
    text
}

/// The species columns of a `sample_submission.csv`: its header without the leading `row_id`.
///
/// # Errors
///
/// I/O, CSV and format errors naming the file.
pub fn sample_submission_columns(path: &Path) -> Result<Vec<String>, SubmissionError> {
    let mut reader = csv_reader(path)?;
    let header = reader.headers().map_err(|source| {
        SubmissionError::from(FileError::Csv {
            path: path.to_path_buf(),
            cause: source,
        })
    })?;
    let fields: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == 0 {
                f.trim_start_matches('\u{feff}').to_string()
            } else {
                f.to_string()
            }
        })
        .collect();
    match fields.first() {
        Some(first) if first == ROW_ID => {}
        Some(first) => {
            return Err(SubmissionError::from(FileError::Format {
                path: path.to_path_buf(),
                reason: format!("the first column is {first:?}, expected {ROW_ID:?}"),
            }))
        }
        None => {
            return Err(SubmissionError::from(FileError::Format {
                path: path.to_path_buf(),
                reason: "empty header".into(),
            }))
        }
    }
    let species: Vec<String> = fields.into_iter().skip(1).collect();
    if species.is_empty() {
        return Err(SubmissionError::from(FileError::Format {
            path: path.to_path_buf(),
            reason: "no species column after row_id".into(),
        }));
    }
    Ok(species)
}

/// The `primary_label` values of a `taxonomy.csv`, in row order.
///
/// # Errors
///
/// I/O, CSV and format errors naming the file (no `primary_label` column, an empty value, no
/// rows).
pub fn taxonomy_labels(path: &Path) -> Result<Vec<String>, SubmissionError> {
    let mut reader = csv_reader(path)?;
    let csv_err = |source| {
        SubmissionError::from(FileError::Csv {
            path: path.to_path_buf(),
            cause: source,
        })
    };
    let header = reader.headers().map_err(csv_err)?.clone();
    let col = header
        .iter()
        .position(|h| h.trim_start_matches('\u{feff}') == "primary_label")
        .ok_or_else(|| {
            SubmissionError::from(FileError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "no primary_label column (columns: {})",
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            })
        })?;
    let mut labels = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(csv_err)?;
        let label = record.get(col).unwrap_or("").trim();
        if label.is_empty() {
            return Err(SubmissionError::from(FileError::Format {
                path: path.to_path_buf(),
                reason: format!("data row {} has no primary_label", i + 1),
            }));
        }
        labels.push(label.to_string());
    }
    if labels.is_empty() {
        return Err(SubmissionError::from(FileError::Format {
            path: path.to_path_buf(),
            reason: "no rows".into(),
        }));
    }
    Ok(labels)
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>, SubmissionError> {
    let file = crate::files::open_input(path)?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file))
}

fn check_names(what: &str, names: &[String]) -> Result<(), SubmissionError> {
    let invalid = |reason: String| SubmissionError::InvalidNames {
        what: what.to_string(),
        reason,
    };
    if names.is_empty() {
        return Err(invalid("no species".into()));
    }
    let mut seen = HashSet::new();
    for n in names {
        if n.is_empty() {
            return Err(invalid("an empty species name".into()));
        }
        if n.contains([',', '"', '\n', '\r']) {
            return Err(invalid(format!(
                "species name {n:?} holds a comma, quote or line break"
            )));
        }
        if n == ROW_ID {
            return Err(invalid(format!("{ROW_ID:?} is not a species name")));
        }
        if !seen.insert(n.as_str()) {
            return Err(invalid(format!("species {n:?} appears twice")));
        }
    }
    Ok(())
}

/// The row id of the window of file `stem` that ends at `end_second`: `<stem>_<end_second>`.
///
/// ```
/// assert_eq!(birdclef_infer::submission::row_id("soundscape_XC218948", 5), "soundscape_XC218948_5");
/// ```
pub fn row_id(stem: &str, end_second: u64) -> String {
    format!("{stem}_{end_second}")
}

/// The predictions of one audio file, in the submission's column order.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRows {
    /// File stem (the name without directory and extension), the first part of its row ids.
    pub stem: String,
    /// The end second of each row's window (5, 10, …); any order, no repeats.
    pub end_seconds: Vec<u64>,
    /// `[rows × columns]` probabilities, row `i` for `end_seconds[i]`.
    pub probs: Array2<f32>,
}

/// What [`SubmissionWriter::finish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// Data rows written (without the header).
    pub rows: usize,
    /// Files written.
    pub files: usize,
    /// NaN or infinite values written as 0: warn when non-zero.
    pub non_finite: usize,
    /// Bytes written.
    pub bytes: usize,
}

/// One file's rows, already formatted.
#[derive(Debug, Clone)]
struct Formatted {
    text: Vec<u8>,
    rows: usize,
    non_finite: usize,
}

/// Collects files' predictions and writes the submission CSV atomically.
///
/// Each [`add`](SubmissionWriter::add) formats that file's rows at once (so files can be added
/// as they are scored, from one thread, or formatted in parallel by [`write_submission`]);
/// [`finish`](SubmissionWriter::finish) sorts the files by stem, checks the row count and
/// writes the file.
#[derive(Debug, Clone)]
pub struct SubmissionWriter {
    columns: Vec<String>,
    files: BTreeMap<String, Formatted>,
}

impl SubmissionWriter {
    /// A writer for these species columns (without `row_id`).
    ///
    /// # Errors
    ///
    /// [`SubmissionError::InvalidNames`] for no column, an empty or repeated name or one that
    /// would need CSV quoting.
    pub fn new(columns: Vec<String>) -> Result<Self, SubmissionError> {
        check_names("submission columns", &columns)?;
        Ok(SubmissionWriter {
            columns,
            files: BTreeMap::new(),
        })
    }

    /// The species columns.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Format and keep the rows of one file. `probs` is `[rows × columns]`, row `i` being the
    /// window that ends at `end_seconds[i]`; rows are written in increasing end second.
    ///
    /// # Errors
    ///
    /// [`SubmissionError::DuplicateStem`] when the stem was added before;
    /// [`SubmissionError::InvalidFile`] for an empty stem or one holding `,`, `"` or a line
    /// break, a shape that does not match, or a repeated end second.
    pub fn add(
        &mut self,
        stem: &str,
        end_seconds: &[u64],
        probs: ArrayView2<'_, f32>,
    ) -> Result<(), SubmissionError> {
        if self.files.contains_key(stem) {
            return Err(SubmissionError::DuplicateStem(stem.to_string()));
        }
        let formatted = format_file(stem, end_seconds, probs, self.columns.len())?;
        self.files.insert(stem.to_string(), formatted);
        Ok(())
    }

    /// Data rows added so far.
    pub fn rows(&self) -> usize {
        self.files.values().map(|f| f.rows).sum()
    }

    /// NaN or infinite values met so far (written as 0).
    pub fn non_finite(&self) -> usize {
        self.files.values().map(|f| f.non_finite).sum()
    }

    /// The whole CSV: header, then the files by stem, each file's rows by end second.
    pub fn render(&self) -> Vec<u8> {
        let body: usize = self.files.values().map(|f| f.text.len()).sum();
        let mut out = Vec::with_capacity(body + 16 * (self.columns.len() + 1));
        out.extend_from_slice(ROW_ID.as_bytes());
        for c in &self.columns {
            out.push(b',');
            out.extend_from_slice(c.as_bytes());
        }
        out.push(b'\n');
        for f in self.files.values() {
            out.extend_from_slice(&f.text);
        }
        out
    }

    /// Write the CSV to `path` atomically, after checking that it holds exactly
    /// `expected_rows` data rows (counted on the formatted text).
    ///
    /// # Errors
    ///
    /// [`SubmissionError::RowCount`] (nothing written, an existing file is left as it was) or
    /// [`FileError::Io`] naming the file.
    pub fn finish(self, path: &Path, expected_rows: usize) -> Result<WriteReport, SubmissionError> {
        let bytes = self.render();
        // Count the lines of the text itself, not the bookkeeping, before anything is written.
        let lines = bytes.iter().filter(|&&b| b == b'\n').count();
        let got = lines.saturating_sub(1);
        if got != expected_rows || got != self.rows() {
            return Err(SubmissionError::RowCount {
                path: path.to_path_buf(),
                expected: expected_rows,
                got,
            });
        }
        birdclef_models::fsio::write_atomic(path, &bytes)
            .map_err(|e| SubmissionError::from(FileError::from(e)))?;
        Ok(WriteReport {
            rows: got,
            files: self.files.len(),
            non_finite: self.non_finite(),
            bytes: bytes.len(),
        })
    }
}

/// Write the submission for `files` (formatted in parallel) to `path` atomically; see
/// [`SubmissionWriter`].
///
/// # Errors
///
/// As [`SubmissionWriter::new`], [`SubmissionWriter::add`] and [`SubmissionWriter::finish`].
pub fn write_submission(
    path: &Path,
    columns: &[String],
    files: &[FileRows],
    expected_rows: usize,
) -> Result<WriteReport, SubmissionError> {
    let mut writer = SubmissionWriter::new(columns.to_vec())?;
    let formatted: Vec<Result<Formatted, SubmissionError>> = files
        .par_iter()
        .map(|f| format_file(&f.stem, &f.end_seconds, f.probs.view(), columns.len()))
        .collect();
    for (file, formatted) in files.iter().zip(formatted) {
        let formatted = formatted?;
        if writer.files.contains_key(&file.stem) {
            return Err(SubmissionError::DuplicateStem(file.stem.clone()));
        }
        writer.files.insert(file.stem.clone(), formatted);
    }
    writer.finish(path, expected_rows)
}

/// Check that a stem can start a row id without CSV quoting.
pub(crate) fn check_stem(stem: &str) -> Result<(), String> {
    if stem.is_empty() {
        return Err("empty file stem".into());
    }
    if stem.contains([',', '"', '\n', '\r']) {
        return Err("the stem holds a comma, quote or line break".into());
    }
    Ok(())
}

fn format_file(
    stem: &str,
    end_seconds: &[u64],
    probs: ArrayView2<'_, f32>,
    columns: usize,
) -> Result<Formatted, SubmissionError> {
    let invalid = |reason: String| SubmissionError::InvalidFile {
        stem: stem.to_string(),
        reason,
    };
    check_stem(stem).map_err(invalid)?;
    if probs.nrows() != end_seconds.len() || probs.ncols() != columns {
        return Err(invalid(format!(
            "predictions are {}×{} but {} windows × {} columns were expected",
            probs.nrows(),
            probs.ncols(),
            end_seconds.len(),
            columns
        )));
    }
    let mut order: Vec<usize> = (0..end_seconds.len()).collect();
    order.sort_by_key(|&i| end_seconds[i]);
    if let Some(w) = order
        .windows(2)
        .find(|w| end_seconds[w[0]] == end_seconds[w[1]])
    {
        return Err(invalid(format!(
            "end second {} appears twice",
            end_seconds[w[0]]
        )));
    }
    let mut text = Vec::with_capacity(end_seconds.len() * (stem.len() + 8 + columns * 9));
    let mut non_finite = 0;
    let mut id = String::new();
    for &r in &order {
        id.clear();
        // Writing to a String cannot fail.
        let _ = write!(id, "{stem}_{}", end_seconds[r]);
        text.extend_from_slice(id.as_bytes());
        for &v in probs.row(r) {
            text.push(b',');
            if !push_prob(&mut text, v) {
                non_finite += 1;
            }
        }
        text.push(b'\n');
    }
    Ok(Formatted {
        text,
        rows: end_seconds.len(),
        non_finite,
    })
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `a · 10^k` with exact powers of ten (at most two roundings).
fn scale10(a: f64, k: i32) -> f64 {
    let mut a = a;
    let mut k = k;
    while k > 22 {
        a *= 1e22;
        k -= 22;
    }
    while k < -22 {
        a /= 1e22;
        k += 22;
    }
    if k >= 0 {
        a * POW10[k as usize]
    } else {
        a / POW10[(-k) as usize]
    }
}

/// Append `x` to `buf` with at most 6 significant digits, as C's `printf("%.6g")` writes it
/// (trailing zeros dropped; scientific notation with a signed two-digit exponent below 1e-4 or
/// from 1e6 on). Both zeros are written `0`. NaN and ±infinity are written `0` and the function
/// returns `false`; it returns `true` otherwise.
///
/// Digits are rounded to nearest, ties to even, on the exact value of `x`, as `format!("{:.5e}")`
/// rounds them.
pub fn push_prob(buf: &mut Vec<u8>, x: f32) -> bool {
    if !x.is_finite() {
        buf.push(b'0');
        return false;
    }
    if x == 0.0 {
        buf.push(b'0');
        return true;
    }
    let mut a = f64::from(x);
    if a < 0.0 {
        buf.push(b'-');
        a = -a;
    }
    let (digits, exp) = sig6(a);
    push_g(buf, digits, exp);
    true
}

/// The six significant digits (100000..=999999) and decimal exponent of `a > 0`, finite.
fn sig6(a: f64) -> (u32, i32) {
    // floor(log10 a) is `e` or `e + 1` for this estimate from the binary exponent (an f32 is
    // never subnormal as an f64); the loop corrects it.
    let binary_exp = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    // floor(binary_exp · log10 2) in integer arithmetic (exact for |binary_exp| < 1650).
    let mut e = (binary_exp * 78_913) >> 18;
    for _ in 0..3 {
        let scaled = scale10(a, 5 - e);
        if scaled >= 999_999.5 {
            // Either the estimate was one too low or the value rounds up to the next decade.
            if scaled >= 1_000_000.0 {
                e += 1;
                continue;
            }
        } else if scaled < 100_000.0 {
            e -= 1;
            continue;
        }
        // 0 < scaled < 1e6 here, so truncation is floor (and no libm call).
        let frac = scaled - (scaled as u64) as f64;
        if (frac - 0.5).abs() < 1e-6 {
            // Within reach of the scaling's rounding error of a tie: ask the exact formatter.
            return sig6_exact(a);
        }
        // Not a tie (checked above), so rounding half up is rounding to nearest.
        let m = (scaled + 0.5) as u32;
        if m >= 1_000_000 {
            return (100_000, e + 1);
        }
        return (m, e);
    }
    sig6_exact(a)
}

/// [`sig6`] through the standard library's exact formatting (slow path).
fn sig6_exact(a: f64) -> (u32, i32) {
    let s = format!("{a:.5e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let digits: u32 = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    (digits, exp.parse().unwrap_or(0))
}

fn push_g(buf: &mut Vec<u8>, mut digits: u32, exp: i32) {
    let mut d = [0u8; 6];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (digits % 10) as u8;
        digits /= 10;
    }
    let mut len = 6;
    while len > 1 && d[len - 1] == b'0' {
        len -= 1;
    }
    // The text is assembled in a fixed buffer with fixed-size copies only (variable-length
    // copies of a few bytes become calls to memcpy, which dominated the time), then appended
    // with one fixed-size copy and a truncate. At most 11 bytes: "0.000123457", "1.23457e-05".
    let mut out = [b'0'; 16];
    let n = if (-4..0).contains(&exp) {
        // 0.000ddddd: the common case for probabilities.
        let zeros = (-exp - 1) as usize;
        out[1] = b'.';
        out[2 + zeros..8 + zeros].copy_from_slice(&d);
        2 + zeros + len
    } else if (0..6).contains(&exp) {
        let int_len = exp as usize + 1;
        out[..6].copy_from_slice(&d);
        if len > int_len {
            out[int_len] = b'.';
            out[int_len + 1..7].copy_from_slice(&d[int_len..]);
            len + 1
        } else {
            int_len
        }
    } else {
        out[0] = d[0];
        let mut n = 1;
        if len > 1 {
            out[1] = b'.';
            out[2..7].copy_from_slice(&d[1..]);
            n = len + 1;
        }
        out[n] = b'e';
        out[n + 1] = if exp < 0 { b'-' } else { b'+' };
        n += 2;
        let e = exp.unsigned_abs();
        if e >= 100 {
            out[n] = b'0' + (e / 100 % 10) as u8;
            n += 1;
        }
        out[n] = b'0' + (e / 10 % 10) as u8;
        out[n + 1] = b'0' + (e % 10) as u8;
        n + 2
    };
    let start = buf.len();
    buf.extend_from_slice(&out);
    buf.truncate(start + n);
}

/// [`push_prob`] into a new `String` (for messages and tests).
pub fn format_prob(x: f32) -> String {
    let mut buf = Vec::with_capacity(12);
    push_prob(&mut buf, x);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prob_formatting_like_printf_g() {
        let cases: &[(f32, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (0.5, "0.5"),
            (0.25, "0.25"),
            (0.1, "0.1"),
            (0.123_456_79, "0.123457"),
            (0.000_123_456_79, "0.000123457"),
            (0.0001, "0.0001"),
            (0.000_012_345_679, "1.23457e-05"),
            (1e-7, "1e-07"),
            (1e-30, "1e-30"),
            (0.999_999_9, "1"),
            (0.999_999_4, "0.999999"),
            (123_456.7, "123457"),
            (1_234_567.0, "1.23457e+06"),
            (-0.5, "-0.5"),
            (1.015_625, "1.01562"), // a tie: to even, as printf does
            (1.046_875, "1.04688"), // a tie rounding up to even
            (f32::MIN_POSITIVE, "1.17549e-38"),
            (1e-45, "1.4013e-45"),
            (f32::MAX, "3.40282e+38"),
        ];
        for &(x, want) in cases {
            assert_eq!(format_prob(x), want, "{x:e}");
        }
        let mut buf = Vec::new();
        assert!(!push_prob(&mut buf, f32::NAN));
        assert!(!push_prob(&mut buf, f32::INFINITY));
        assert!(!push_prob(&mut buf, f32::NEG_INFINITY));
        assert_eq!(buf, b"000");
    }

    #[test]
    fn fast_digits_match_exact_formatting() {
        // xorshift over bit patterns and uniform values: the fast path must agree with the
        // standard library's exact rounding everywhere.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for i in 0..400_000 {
            let r = next();
            let x = if i % 2 == 0 {
                f32::from_bits((r >> 32) as u32 & 0x7F7F_FFFF)
            } else {
                (r >> 40) as f32 / (1u64 << 24) as f32
            };
            if !x.is_finite() || x <= 0.0 {
                continue;
            }
            let a = f64::from(x);
            assert_eq!(sig6(a), sig6_exact(a), "{x:e}");
            let text = format_prob(x);
            let back: f64 = text.parse().unwrap();
            assert!((back - a).abs() <= a * 5e-6, "{x:e} -> {text}");
        }
    }

    #[test]
    fn digits_at_decade_boundaries() {
        // The f32 neighbours of every power of ten, and of x.xxxxx5 mid-points.
        for k in -45..=38 {
            let p = format!("1e{k}").parse::<f32>().unwrap();
            for x in [
                p,
                f32::from_bits(p.to_bits() + 1),
                f32::from_bits(p.to_bits() - 1),
            ] {
                if x.is_finite() && x > 0.0 {
                    let a = f64::from(x);
                    assert_eq!(sig6(a), sig6_exact(a), "{x:e}");
                }
            }
            let m = format!("9.999995e{k}").parse::<f32>().unwrap();
            let mid = format!("1.234565e{k}").parse::<f32>().unwrap();
            for c in [m, mid] {
                for x in [
                    c,
                    f32::from_bits(c.to_bits() + 1),
                    f32::from_bits(c.to_bits() - 1),
                ] {
                    if x.is_finite() && x > 0.0 {
                        let a = f64::from(x);
                        assert_eq!(sig6(a), sig6_exact(a), "{x:e}");
                    }
                }
            }
        }
    }

    #[test]
    fn row_ids() {
        assert_eq!(row_id("soundscape_XC218948", 5), "soundscape_XC218948_5");
        assert_eq!(row_id("a", 240), "a_240");
    }
}
