//! Detections: the windows where a species' probability reaches a threshold, as a CSV or as
//! Raven Pro selection tables.
//!
//! For passive acoustic monitoring a submission matrix is less useful than a list of events.
//! [`detections`] turns the per-file predictions ([`FileRows`]) into [`Detection`]s, and two
//! writers save them, both atomically:
//!
//! * [`write_csv`]: one CSV, `file,start,end,species,probability`.
//! * [`write_raven_tables`]: **one Raven Pro selection table per audio file**, named
//!   `<stem>.selections.txt`, in a directory. Per-file tables are what Raven opens next to the
//!   recording they belong to (File → Open Selection Table while the sound is open), so a
//!   reviewer can page through one recording's detections with their spectrogram; times are
//!   relative to the start of that file. A table is written for every file scored, with only
//!   the header when nothing was detected, so "scored, nothing found" differs from "not scored".
//!
//! Raven tables are tab-separated with the header
//! `Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\tProbability`;
//! `View` is `Spectrogram 1`, `Channel` is 1 and the frequency band is the frontend's
//! `fmin`–`fmax`, the band the model saw.

use crate::files::FileError;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::submission::{check_stem, push_prob, FileRows};

/// The header line of a Raven Pro selection table written by [`write_raven_tables`].
pub const RAVEN_HEADER: &str = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\t\
                                Low Freq (Hz)\tHigh Freq (Hz)\tSpecies\tProbability";

/// The header line of the CSV written by [`write_csv`].
pub const CSV_HEADER: &str = "file,start,end,species,probability";

/// The suffix of the per-file Raven tables: `<stem>.selections.txt`.
pub const RAVEN_SUFFIX: &str = ".selections.txt";

/// Why detections could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetectionError {
    /// The inputs do not fit together (column count, window length, threshold).
    #[error("{0}")]
    Invalid(String),
    /// Reading, parsing or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// One species detected in one window of one audio file.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The audio file's stem (as in the row ids).
    pub file: String,
    /// Window start, seconds from the start of the file.
    pub start: f64,
    /// Window end, seconds from the start of the file.
    pub end: f64,
    /// The species (a submission column name).
    pub species: String,
    /// The (post-processed) probability that reached the threshold.
    pub probability: f32,
}

/// The windows whose probability is at least `threshold`, one [`Detection`] per window and
/// species.
///
/// `columns` names the columns of every file's `probs`; a window ending at `e` seconds spans
/// `[max(e − window_seconds, 0), e]`. The result is sorted by file stem, then start time, then
/// column order. NaN never reaches a threshold.
///
/// # Errors
///
/// [`DetectionError::Invalid`] when a file's column count is not `columns.len()`, its row count
/// is not its number of end seconds, `window_seconds` is not positive and finite, or
/// `threshold` is NaN.
pub fn detections(
    files: &[FileRows],
    columns: &[String],
    window_seconds: f64,
    threshold: f32,
) -> Result<Vec<Detection>, DetectionError> {
    if !(window_seconds.is_finite() && window_seconds > 0.0) {
        return Err(DetectionError::Invalid(format!(
            "window length {window_seconds} s is not a positive number"
        )));
    }
    if threshold.is_nan() {
        return Err(DetectionError::Invalid("the threshold is NaN".into()));
    }
    let mut order: Vec<&FileRows> = files.iter().collect();
    order.sort_by(|a, b| a.stem.cmp(&b.stem));
    let mut out = Vec::new();
    for f in order {
        if f.probs.ncols() != columns.len() || f.probs.nrows() != f.end_seconds.len() {
            return Err(DetectionError::Invalid(format!(
                "file {:?}: predictions are {}×{} but {} windows × {} columns were expected",
                f.stem,
                f.probs.nrows(),
                f.probs.ncols(),
                f.end_seconds.len(),
                columns.len()
            )));
        }
        let mut rows: Vec<usize> = (0..f.end_seconds.len()).collect();
        rows.sort_by_key(|&r| f.end_seconds[r]);
        for r in rows {
            let end = f.end_seconds[r] as f64;
            let start = (end - window_seconds).max(0.0);
            for (c, &p) in f.probs.row(r).iter().enumerate() {
                if p >= threshold {
                    out.push(Detection {
                        file: f.stem.clone(),
                        start,
                        end,
                        species: columns[c].clone(),
                        probability: p,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn push_seconds(buf: &mut String, s: f64) {
    // Times are multiples of the window hop; three decimals (milliseconds) are plenty.
    let _ = write!(buf, "{s:.3}");
}

fn prob_text(p: f32) -> String {
    let mut b = Vec::with_capacity(12);
    push_prob(&mut b, p);
    String::from_utf8_lossy(&b).into_owned()
}

/// Write `detections` as a CSV (`file,start,end,species,probability`) to `path`, atomically.
/// Fields are quoted where needed; times have three decimals and probabilities up to six
/// significant digits.
///
/// # Errors
///
/// [`FileError::Csv`] or [`FileError::Io`] naming the file.
pub fn write_csv(path: &Path, detections: &[Detection]) -> Result<(), DetectionError> {
    let csv_err = |source| {
        DetectionError::from(FileError::Csv {
            path: path.to_path_buf(),
            cause: source,
        })
    };
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(64 * (detections.len() + 1)));
    w.write_record(CSV_HEADER.split(',')).map_err(csv_err)?;
    let mut start = String::new();
    let mut end = String::new();
    for d in detections {
        start.clear();
        end.clear();
        push_seconds(&mut start, d.start);
        push_seconds(&mut end, d.end);
        w.write_record([
            d.file.as_str(),
            &start,
            &end,
            d.species.as_str(),
            &prob_text(d.probability),
        ])
        .map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| {
        DetectionError::from(FileError::Io {
            path: path.to_path_buf(),
            cause: e.into_error(),
        })
    })?;
    birdclef_models::fsio::write_atomic(path, &bytes)
        .map_err(|e| DetectionError::from(FileError::from(e)))
}

/// The text of one Raven Pro selection table holding `detections` (all of one file), numbered
/// from 1 in the given order, with the band `fmin`–`fmax` Hz.
pub fn raven_table(detections: &[&Detection], fmin: f64, fmax: f64) -> String {
    let mut s = String::with_capacity(64 * (detections.len() + 1));
    s.push_str(RAVEN_HEADER);
    s.push('\n');
    for (i, d) in detections.iter().enumerate() {
        let _ = write!(s, "{}\tSpectrogram 1\t1\t", i + 1);
        push_seconds(&mut s, d.start);
        s.push('\t');
        push_seconds(&mut s, d.end);
        let _ = write!(s, "\t{fmin:.1}\t{fmax:.1}\t");
        // Tabs or line breaks in a species name would break the table.
        s.extend(
            d.species
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c }),
        );
        s.push('\t');
        s.push_str(&prob_text(d.probability));
        s.push('\n');
    }
    s
}

/// Write one Raven Pro selection table per file into `dir` (created if missing):
/// `<dir>/<stem>.selections.txt` for every stem in `stems` and every file of `detections`
/// (header only where a file has no detection). Each table's selections are sorted by begin
/// time, then species, and numbered from 1; `fmin`/`fmax` are the frontend's band in Hz.
/// Every table is written atomically. Returns the paths written, sorted.
///
/// # Errors
///
/// [`DetectionError::Invalid`] for a stem that is empty or holds a path separator, or a band
/// that is not `0 ≤ fmin < fmax`; [`FileError::Io`] naming the directory or file.
pub fn write_raven_tables(
    dir: &Path,
    stems: &[String],
    detections: &[Detection],
    fmin: f64,
    fmax: f64,
) -> Result<Vec<PathBuf>, DetectionError> {
    if !(fmin.is_finite() && fmax.is_finite() && 0.0 <= fmin && fmin < fmax) {
        return Err(DetectionError::Invalid(format!(
            "frequency band {fmin}–{fmax} Hz is not 0 ≤ fmin < fmax"
        )));
    }
    let mut by_file: BTreeMap<&str, Vec<&Detection>> = BTreeMap::new();
    for s in stems {
        by_file.entry(s.as_str()).or_default();
    }
    for d in detections {
        by_file.entry(d.file.as_str()).or_default().push(d);
    }
    for stem in by_file.keys() {
        check_stem(stem)
            .and_then(|()| {
                if stem.contains(['/', '\\']) || *stem == "." || *stem == ".." {
                    Err("the stem holds a path separator".to_string())
                } else {
                    Ok(())
                }
            })
            .map_err(|r| DetectionError::Invalid(format!("file stem {stem:?}: {r}")))?;
    }
    std::fs::create_dir_all(dir).map_err(|source| {
        DetectionError::from(FileError::Io {
            path: dir.to_path_buf(),
            cause: source,
        })
    })?;
    let mut written = Vec::with_capacity(by_file.len());
    for (stem, mut dets) in by_file {
        dets.sort_by(|a, b| {
            a.start
                .total_cmp(&b.start)
                .then_with(|| a.end.total_cmp(&b.end))
                .then_with(|| a.species.cmp(&b.species))
        });
        let path = dir.join(format!("{stem}{RAVEN_SUFFIX}"));
        let text = raven_table(&dets, fmin, fmax);
        birdclef_models::fsio::write_atomic(&path, text.as_bytes())
            .map_err(|e| DetectionError::from(FileError::from(e)))?;
        written.push(path);
    }
    Ok(written)
}
