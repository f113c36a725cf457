//! Reading a Kaggle BirdCLEF competition directory as it is.
//!
//! ```text
//! <root>/train_metadata.csv      primary_label, secondary_labels, filename, [rating], [group column], ...
//! <root>/taxonomy.csv            primary_label column: the label order (else sample_submission.csv)
//! <root>/sample_submission.csv   row_id, <label>, <label>, ...
//! <root>/train_audio/<filename>  the recordings
//! ```
//!
//! [`load_dataset`] checks everything before returning: one [`DataError::Invalid`] lists every
//! problem found (each missing audio file, each unknown primary label, each malformed row with its
//! line number), so one run shows all that must be fixed. Secondary labels that are not in the
//! label list are dropped and counted in [`Loaded::warnings`] (older competitions' metadata names
//! species that the current label list does not score).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::{Dataset, Recording};

/// Everything that can go wrong while reading training data, building its cache or drawing
/// samples from it. Every variant about files names them; the others name the recording or
/// window index.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The competition directory has problems; all of them are listed.
    #[error("{root}: {} problem(s) in the training data:\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// The competition directory.
        root: PathBuf,
        /// One line per problem, each naming its file (and line, for CSV rows).
        problems: Vec<String>,
    },
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// An HDF5 operation failed.
    #[error("{path}: HDF5: {cause}")]
    Hdf5 {
        /// The HDF5 file.
        path: PathBuf,
        /// What the library said.
        cause: String,
    },
    /// An output file could not be written (the error names it).
    #[error(transparent)]
    Output(#[from] birdclef_models::fsio::OutputError),
    /// Recordings could not be decoded (training data must be clean; see `skip_bad`).
    #[error("{} recording(s) could not be decoded:\n  {}", failures.len(), failures.join("\n  "))]
    Decode {
        /// One message per file, naming it and the cause.
        failures: Vec<String>,
    },
    /// An audio store was asked for a recording it does not have.
    #[error("no recording {index} in a {store} of {len}")]
    NoRecording {
        /// `cache` or `store`.
        store: &'static str,
        /// The index asked for.
        index: usize,
        /// How many recordings the store has.
        len: usize,
    },
    /// The cache holds the recording as skipped (it could not be decoded; see `skip_bad`).
    #[error("recording {index} was skipped: {reason}")]
    Skipped {
        /// The recording's index in the dataset.
        index: usize,
        /// Why it could not be decoded, naming the file.
        reason: String,
    },
    /// A row of the audio cache could not be read.
    #[error("{path}: reading row {row}")]
    ReadRow {
        /// The cache file.
        path: PathBuf,
        /// The cache row.
        row: usize,
        /// What HDF5 said.
        #[source]
        cause: hdf5::Error,
    },
    /// Soft targets that do not fit their windows and classes.
    #[error("{targets} pseudo-label targets for {windows} windows of {classes} classes")]
    PseudoTargets {
        /// Targets given.
        targets: usize,
        /// Windows.
        windows: usize,
        /// Classes (loss weights).
        classes: usize,
    },
    /// A pseudo-labelled window refers to a soundscape the store does not have.
    #[error("a pseudo-labelled window refers to soundscape {soundscape} of {len}")]
    PseudoSoundscape {
        /// The soundscape index of the window.
        soundscape: usize,
        /// Soundscapes in the store.
        len: usize,
    },
    /// A pseudo-labelled window index beyond the set.
    #[error("no pseudo-labelled window {index} of {len}")]
    NoPseudoWindow {
        /// The index asked for.
        index: usize,
        /// Windows in the set.
        len: usize,
    },
    /// A batch asked for a pseudo-labelled sample but the builder has no pseudo-label set.
    #[error("a pseudo-labelled sample without a pseudo-label set")]
    NoPseudoSet,
}

/// Why a `secondary_labels` cell is not a list of labels ([`parse_label_list`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelListError {
    /// The cell is not bracketed.
    #[error("`{list}` is not a list like ['a', 'b']")]
    NotAList {
        /// The cell, trimmed.
        list: String,
    },
    /// An item is not a quoted, non-empty label.
    #[error("item `{item}` of `{list}` is not a quoted label")]
    Unquoted {
        /// The item, trimmed.
        item: String,
        /// The cell, trimmed.
        list: String,
    },
}

/// How [`DataOptions::cap_per_species`] chooses the recordings it keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CapOrder {
    /// The highest `rating` first (a missing rating ranks below every rating), ties by filename.
    /// BirdCLEF metadata has no recording date, so "most recent" cannot be offered.
    #[default]
    BestRated,
    /// The first by filename (for xeno-canto files `XC<number>`, lexicographic order).
    Filename,
}

/// Options of [`load_dataset`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataOptions {
    /// A metadata column whose value groups recordings that must share a fold (e.g. `author`).
    /// An empty cell leaves the recording in a group of its own.
    pub group_column: Option<String>,
    /// Keep at most this many recordings per primary label.
    pub cap_per_species: Option<usize>,
    /// Which recordings the cap keeps.
    pub cap_order: CapOrder,
}

/// A loaded dataset with the warnings met on the way (for the caller to print).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The dataset.
    pub dataset: Dataset,
    /// Non-fatal findings (dropped secondary labels, capped species), one line each.
    pub warnings: Vec<String>,
}

/// Read `<root>/train_metadata.csv`, the label order and check every audio file exists.
///
/// The label order comes from `taxonomy.csv` (its `primary_label` column) when present, else from
/// `sample_submission.csv`'s header (every column but `row_id`). Rows keep the metadata's order
/// (after the optional per-species cap).
pub fn load_dataset(root: &Path, opts: &DataOptions) -> Result<Loaded, DataError> {
    let mut problems = Vec::new();
    let labels = read_labels(root, &mut problems);
    let meta_path = root.join("train_metadata.csv");
    let rows = read_metadata(
        &meta_path,
        &root.join("train_audio"),
        &labels,
        opts.group_column.as_deref(),
        false,
        &mut problems,
    );
    let unknown_secondary = rows.unknown_secondary;
    let mut recordings: Vec<Recording> = rows.rows.into_iter().map(|(r, _)| r).collect();
    if !problems.is_empty() {
        return Err(DataError::Invalid {
            root: root.to_path_buf(),
            problems,
        });
    }

    let mut warnings = Vec::new();
    if !unknown_secondary.is_empty() {
        let mut names: Vec<_> = unknown_secondary.into_iter().collect();
        names.sort();
        let total: usize = names.iter().map(|(_, n)| n).sum();
        let shown: Vec<String> = names
            .iter()
            .take(10)
            .map(|(l, n)| format!("{l} ({n})"))
            .collect();
        warnings.push(format!(
            "{}: {total} secondary label(s) of {} species not in the label list were dropped: {}{}",
            meta_path.display(),
            names.len(),
            shown.join(", "),
            if names.len() > 10 { ", ..." } else { "" }
        ));
    }
    if let Some(cap) = opts.cap_per_species {
        let before = recordings.len();
        recordings = apply_cap(recordings, cap, opts.cap_order);
        if recordings.len() < before {
            warnings.push(format!(
                "cap of {cap} recordings per species: kept {} of {before}",
                recordings.len()
            ));
        }
    }
    Ok(Loaded {
        dataset: Dataset {
            root: root.to_path_buf(),
            labels,
            sources: Vec::new(),
            recordings,
        },
        warnings,
    })
}

/// What a metadata row says beyond its [`Recording`]: when and which Xeno-canto recording.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowInfo {
    /// The `date` column, when there is one and the cell is not empty (ISO dates sort in time).
    pub date: Option<String>,
    /// The Xeno-canto number, from an `XC<digits>` in the file name, else from the `url` column
    /// (`.../<digits>`).
    pub xc_id: Option<u64>,
}

/// The rows of a metadata CSV ([`read_metadata`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataRows {
    /// Each row kept, with its date and Xeno-canto number.
    pub rows: Vec<(Recording, RowInfo)>,
    /// Secondary labels not in the label list, with their counts (dropped).
    pub unknown_secondary: HashMap<String, usize>,
    /// With `drop_other_species`: primary labels not in the label list, with the rows dropped.
    pub other_species: std::collections::BTreeMap<String, usize>,
}

/// The Xeno-canto number in `s`: the digits after `XC` (a file name like `asbfly/XC134896.ogg`),
/// or the last run of digits of a Xeno-canto URL (`https://xeno-canto.org/134896`).
pub fn xeno_canto_id(s: &str) -> Option<u64> {
    if s.contains("xeno-canto.org") {
        let digits: String = s
            .trim_end_matches('/')
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return digits.parse().ok();
    }
    let at = s.rfind("XC")?;
    let digits: String = s[at + 2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Read the rows of metadata CSV `meta_path` (`primary_label`, `secondary_labels`, `filename`
/// relative to `audio_dir`, optional `rating`, `date`, `url` and `group_column`) against
/// `labels`, adding every problem to `problems` with its `file:line`. A primary label not in
/// `labels` is a problem, unless `drop_other_species`: then the row is dropped and counted.
pub fn read_metadata(
    meta_path: &Path,
    audio_dir: &Path,
    labels: &[String],
    group_column: Option<&str>,
    drop_other_species: bool,
    problems: &mut Vec<String>,
) -> MetadataRows {
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut out = MetadataRows::default();
    match std::fs::read(meta_path) {
        Err(e) => problems.push(format!("{}: cannot read: {e}", meta_path.display())),
        Ok(text) => {
            let mut reader = csv::ReaderBuilder::new().from_reader(text.as_slice());
            let header = reader.headers().cloned().unwrap_or_default();
            let col = |name: &str| header.iter().position(|h| h.trim() == name);
            let primary_col = col("primary_label");
            let secondary_col = col("secondary_labels");
            let filename_col = col("filename");
            let rating_col = col("rating");
            let group_col = group_column.map(|g| (g, col(g)));
            let date_col = col("date");
            let url_col = col("url");
            let mut header_ok = true;
            for (name, c) in [
                ("primary_label", primary_col),
                ("secondary_labels", secondary_col),
                ("filename", filename_col),
            ] {
                if c.is_none() {
                    problems.push(format!("{}: no `{name}` column", meta_path.display()));
                    header_ok = false;
                }
            }
            if let Some((g, None)) = group_col {
                problems.push(format!(
                    "{}: no `{g}` column (the configured group column)",
                    meta_path.display()
                ));
                header_ok = false;
            }
            if header_ok {
                let (Some(pc), Some(sc), Some(fc)) = (primary_col, secondary_col, filename_col)
                else {
                    unreachable!("checked above")
                };
                for record in reader.records() {
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            let line = e.position().map_or(0, |p| line_of(&text, p));
                            problems.push(format!(
                                "{}:{line}: malformed row: {e}",
                                meta_path.display()
                            ));
                            continue;
                        }
                    };
                    let line = record.position().map_or(0, |p| line_of(&text, p));
                    let at = format!("{}:{line}", meta_path.display());
                    let field = |c: usize| record.get(c).unwrap_or("").trim();
                    let primary_name = field(pc);
                    let filename = field(fc).to_string();
                    let mut row_ok = true;
                    let primary = match index.get(primary_name) {
                        Some(&i) => i,
                        None if drop_other_species && !primary_name.is_empty() => {
                            *out.other_species
                                .entry(primary_name.to_string())
                                .or_default() += 1;
                            continue;
                        }
                        None => {
                            if labels.is_empty() {
                                // The label list itself is missing: already reported.
                            } else if primary_name.is_empty() {
                                problems.push(format!("{at}: empty primary_label"));
                            } else {
                                problems.push(format!(
                                    "{at}: unknown primary label `{primary_name}` (not in the label list)"
                                ));
                            }
                            row_ok = false;
                            0
                        }
                    };
                    let secondary_names = match parse_label_list(field(sc)) {
                        Ok(s) => s,
                        Err(why) => {
                            problems.push(format!("{at}: malformed secondary_labels: {why}"));
                            row_ok = false;
                            Vec::new()
                        }
                    };
                    let rating = match rating_col.map(field) {
                        None | Some("") => None,
                        Some(r) => match r.parse::<f32>() {
                            Ok(v) if v.is_finite() => Some(v),
                            _ => {
                                problems.push(format!("{at}: rating `{r}` is not a number"));
                                row_ok = false;
                                None
                            }
                        },
                    };
                    let group = match group_col {
                        Some((_, Some(c))) => Some(field(c).to_string()).filter(|g| !g.is_empty()),
                        _ => None,
                    };
                    let path = audio_dir.join(&filename);
                    if filename.is_empty() {
                        problems.push(format!("{at}: empty filename"));
                        row_ok = false;
                    } else if !path.is_file() {
                        problems.push(format!("{at}: audio file {} is missing", path.display()));
                        row_ok = false;
                    }
                    if !row_ok {
                        continue;
                    }
                    let mut secondary = Vec::new();
                    for s in secondary_names {
                        match index.get(s.as_str()) {
                            Some(&i) if i != primary && !secondary.contains(&i) => {
                                secondary.push(i)
                            }
                            Some(_) => {}
                            None => *out.unknown_secondary.entry(s).or_default() += 1,
                        }
                    }
                    let info = RowInfo {
                        date: date_col
                            .map(field)
                            .filter(|d| !d.is_empty())
                            .map(str::to_string),
                        xc_id: xeno_canto_id(&filename)
                            .or_else(|| url_col.and_then(|c| xeno_canto_id(field(c)))),
                    };
                    out.rows.push((
                        Recording {
                            filename,
                            path,
                            primary,
                            secondary,
                            positives: Vec::new(),
                            rating,
                            group,
                        },
                        info,
                    ));
                }
            }
        }
    }
    out
}

/// The 1-based line of `text` on which the record at `pos` begins.
///
/// The csv crate's own [`csv::Position::line`] counts the line ends it has consumed when the
/// record's read starts, before the end of the previous line when that is `\r\n` or followed by
/// blank lines: one too low for every row of a CRLF file. The record's first byte is past those.
fn line_of(text: &[u8], pos: &csv::Position) -> u64 {
    let mut at = usize::try_from(pos.byte()).map_or(text.len(), |b| b.min(text.len()));
    while at < text.len() && matches!(text[at], b'\r' | b'\n') {
        at += 1;
    }
    1 + text[..at].iter().filter(|&&c| c == b'\n').count() as u64
}

/// Keep at most `cap` recordings per primary label, chosen by `order`, in their original order.
fn apply_cap(recordings: Vec<Recording>, cap: usize, order: CapOrder) -> Vec<Recording> {
    let mut by_label: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, r) in recordings.iter().enumerate() {
        by_label.entry(r.primary).or_default().push(i);
    }
    let mut keep = vec![false; recordings.len()];
    for idx in by_label.values_mut() {
        idx.sort_by(|&a, &b| {
            let (ra, rb) = (&recordings[a], &recordings[b]);
            let by_rating = match order {
                CapOrder::BestRated => {
                    let key = |r: &Recording| r.rating.unwrap_or(f32::NEG_INFINITY);
                    key(rb).total_cmp(&key(ra))
                }
                CapOrder::Filename => std::cmp::Ordering::Equal,
            };
            by_rating
                .then_with(|| ra.filename.cmp(&rb.filename))
                .then(a.cmp(&b))
        });
        for &i in idx.iter().take(cap) {
            keep[i] = true;
        }
    }
    recordings
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

/// The label order: taxonomy.csv's `primary_label` column, else sample_submission.csv's header.
fn read_labels(root: &Path, problems: &mut Vec<String>) -> Vec<String> {
    let taxonomy = root.join("taxonomy.csv");
    let submission = root.join("sample_submission.csv");
    let labels = if taxonomy.is_file() {
        match read_column(&taxonomy, "primary_label") {
            Ok(l) => l,
            Err(e) => {
                problems.push(e);
                return Vec::new();
            }
        }
    } else if submission.is_file() {
        match csv::ReaderBuilder::new()
            .from_path(&submission)
            .and_then(|mut r| r.headers().cloned())
        {
            Ok(h) => h
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| c != "row_id")
                .collect(),
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", submission.display()));
                return Vec::new();
            }
        }
    } else {
        problems.push(format!(
            "{}: neither taxonomy.csv nor sample_submission.csv is there to give the label order",
            root.display()
        ));
        return Vec::new();
    };
    let mut seen = HashSet::new();
    for l in &labels {
        if l.is_empty() {
            problems.push("the label list has an empty label".to_string());
        } else if !seen.insert(l.as_str()) {
            problems.push(format!("label `{l}` appears twice in the label list"));
        }
    }
    if labels.is_empty() {
        problems.push(format!("{}: the label list is empty", root.display()));
    }
    labels
}

/// One column of a CSV file, by header name.
pub(crate) fn read_column(path: &Path, name: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_slice());
    let header = reader
        .headers()
        .map_err(|e| format!("{}: cannot read the header: {e}", path.display()))?;
    let c = header
        .iter()
        .position(|h| h.trim() == name)
        .ok_or_else(|| format!("{}: no `{name}` column", path.display()))?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| line_of(&text, p));
            format!("{}:{line}: malformed row: {e}", path.display())
        })?;
        out.push(record.get(c).unwrap_or("").trim().to_string());
    }
    Ok(out)
}

/// Parse a Python list literal of strings as pandas writes it: `[]`, `['a', 'b']`, `["a"]`.
/// An empty cell counts as an empty list.
pub fn parse_label_list(s: &str) -> Result<Vec<String>, LabelListError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| LabelListError::NotAList {
            list: s.to_string(),
        })?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|item| {
            let t = item.trim();
            let unquoted = t
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''))
                .or_else(|| t.strip_prefix('"').and_then(|r| r.strip_suffix('"')));
            match unquoted {
                Some(u) if !u.trim().is_empty() => Ok(u.trim().to_string()),
                _ => Err(LabelListError::Unquoted {
                    item: t.to_string(),
                    list: s.to_string(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A competition directory with `metadata` as train_metadata.csv (species a and b; audio
    /// files a/1.ogg and a/2.ogg).
    fn competition(tag: &str, metadata: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("birdclef-meta-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("train_audio/a")).expect("dir");
        for f in ["1.ogg", "2.ogg"] {
            std::fs::write(root.join("train_audio/a").join(f), b"x").expect("audio");
        }
        std::fs::write(root.join("taxonomy.csv"), "primary_label\na\nb\n").expect("taxonomy");
        std::fs::write(root.join("train_metadata.csv"), metadata).expect("metadata");
        root
    }

    fn problems(root: &Path) -> Vec<String> {
        match load_dataset(root, &DataOptions::default()) {
            Err(DataError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn problems_are_reported_at_their_line_of_the_file() {
        let header = "primary_label,secondary_labels,filename";
        let root = competition("lines", "");
        let meta = root.join("train_metadata.csv").display().to_string();
        let unknown = |line: usize, label: &str| {
            format!("{meta}:{line}: unknown primary label `{label}` (not in the label list)")
        };
        for (what, text, expected) in [
            (
                "a bad first data row (LF)",
                format!("{header}\nzz,[],a/1.ogg\na,[],a/2.ogg\n"),
                vec![unknown(2, "zz")],
            ),
            (
                "a bad first data row (CRLF, as written on Windows)",
                format!("{header}\r\nzz,[],a/1.ogg\r\na,[],a/2.ogg\r\nyy,[],a/1.ogg\r\n"),
                vec![unknown(2, "zz"), unknown(4, "yy")],
            ),
            (
                "after a blank line",
                format!("{header}\n\nzz,[],a/1.ogg\n"),
                vec![unknown(3, "zz")],
            ),
            (
                "after a quoted field spanning two lines",
                format!("{header}\na,\"['b',\n'b']\",a/1.ogg\nyy,[],a/1.ogg"),
                vec![unknown(4, "yy")],
            ),
        ] {
            std::fs::write(root.join("train_metadata.csv"), &text).expect("metadata");
            assert_eq!(problems(&root), expected, "{what}");
        }
        // A row with too few fields.
        std::fs::write(
            root.join("train_metadata.csv"),
            format!("{header}\r\na,[]\r\n"),
        )
        .expect("metadata");
        let found = problems(&root);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(&format!("{meta}:2: malformed row")),
            "{found:?}"
        );
        // A malformed row of taxonomy.csv, at its line.
        std::fs::write(
            root.join("train_metadata.csv"),
            format!("{header}\na,[],a/1.ogg\n"),
        )
        .expect("metadata");
        std::fs::write(
            root.join("taxonomy.csv"),
            "primary_label\r\na\r\nb,extra\r\n",
        )
        .expect("taxonomy");
        let found = problems(&root);
        let taxonomy = root.join("taxonomy.csv").display().to_string();
        assert!(
            found[0].starts_with(&format!("{taxonomy}:3: malformed row")),
            "{found:?}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn label_lists() {
        assert_eq!(parse_label_list("[]").unwrap(), Vec::<String>::new());
        assert_eq!(parse_label_list("").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_label_list("['a', 'bb']").unwrap(),
            vec!["a".to_string(), "bb".to_string()]
        );
        assert_eq!(parse_label_list("[\"x\"]").unwrap(), vec!["x".to_string()]);
        assert!(parse_label_list("a, b").is_err());
        assert!(parse_label_list("[a]").is_err());
    }
}
