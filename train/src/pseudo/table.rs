//! The pseudo-label file: an HDF5 table of windows and their ensemble probabilities.
//!
//! # Layout (format version 1)
//!
//! | object | type | content |
//! | --- | --- | --- |
//! | `/row_id` | `str[n]` | `<soundscape stem>_<window end second>`, as in a submission |
//! | `/soundscape` | `str[n]` | the soundscape's file name (e.g. `XC123.ogg`) |
//! | `/start`, `/end` | `f64[n]` | window start and end in seconds (`end` = the row id's second) |
//! | `/probs` | `f32[n, k]` | ensemble probabilities, columns in `/labels` order |
//! | `/labels` | `str[k]` | species codes |
//! | `/teachers` | `str[t]` | the teacher files or directories, as given |
//! | `/teacher_names` | `str[t]` | the name in each teacher's model card |
//! | `/failed` | `str[m]` | `"<file>: <why>"` for soundscapes that could not be read (no rows) |
//!
//! Rows are sorted by soundscape file name, then by window. Root attributes: `format_version`
//! (u32), `sample_rate` (u32), `window_seconds` (f64), `shard` (`"K/N"`, or `"merged"`),
//! `created_by` (program and version) and `complete` (u8, 1), written last.
//!
//! ```python
//! import h5py, pandas as pd
//! with h5py.File("pseudo.h5", "r") as f:
//!     assert f.attrs["complete"] == 1
//!     labels = list(f["labels"].asstr()[:])
//!     df = pd.DataFrame(f["probs"][:], columns=labels, index=f["row_id"].asstr()[:])
//!     df.insert(0, "soundscape", f["soundscape"].asstr()[:])
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use birdclef_models::fsio;

use crate::data::h5;
use crate::error::TrainError;

/// Version of the file layout described in the module documentation.
pub const FORMAT_VERSION: u32 = 1;

/// The content of a pseudo-label file, in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Row ids.
    pub row_id: Vec<String>,
    /// Soundscape file name of each row.
    pub soundscape: Vec<String>,
    /// Window start (s).
    pub start: Vec<f64>,
    /// Window end (s).
    pub end: Vec<f64>,
    /// Probabilities, row-major `[rows, labels]`.
    pub probs: Vec<f32>,
    /// Species codes.
    pub labels: Vec<String>,
    /// Teachers as given.
    pub teachers: Vec<String>,
    /// Card names of the teachers.
    pub teacher_names: Vec<String>,
    /// Soundscapes that could not be read.
    pub failed: Vec<String>,
    /// Sample rate of the teachers' frontend.
    pub sample_rate: u32,
    /// Window length (s).
    pub window_seconds: f64,
    /// `K/N` or `merged`.
    pub shard: String,
}

impl Table {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.row_id.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.row_id.is_empty()
    }

    /// Write the file atomically (temporary file beside it, then rename).
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        let k = self.labels.len();
        if self.probs.len() != self.len() * k
            || self.soundscape.len() != self.len()
            || self.start.len() != self.len()
            || self.end.len() != self.len()
        {
            return Err(TrainError::PseudoLabels {
                path: path.to_path_buf(),
                reason: "inconsistent pseudo-label table".into(),
            });
        }
        let file = birdclef_models::fsio::AtomicFile::new(path)?;
        self.write_to(file.path())?;
        Ok(file.commit()?)
    }

    fn write_to(&self, tmp: &Path) -> Result<(), TrainError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |cause: hdf5::Error| TrainError::Hdf5 {
                path: tmp.to_path_buf(),
                what,
                cause,
            }
        };
        let file = hdf5::File::create(tmp).map_err(err("create"))?;
        for (name, v) in [
            ("row_id", &self.row_id),
            ("soundscape", &self.soundscape),
            ("labels", &self.labels),
            ("teachers", &self.teachers),
            ("teacher_names", &self.teacher_names),
            ("failed", &self.failed),
        ] {
            h5::write_strings(&file, name, v).map_err(err(name))?;
        }
        for (name, v) in [("start", &self.start), ("end", &self.end)] {
            h5::write_1d(&file, name, v).map_err(err(name))?;
        }
        let probs = file
            .new_dataset::<f32>()
            .shape([self.len(), self.labels.len()])
            .create("probs")
            .map_err(err("probs"))?;
        if !self.probs.is_empty() {
            probs.write_raw(&self.probs).map_err(err("probs"))?;
        }
        h5::write_attr(&file, "format_version", &FORMAT_VERSION).map_err(err("format_version"))?;
        h5::write_attr(&file, "sample_rate", &self.sample_rate).map_err(err("sample_rate"))?;
        h5::write_attr(&file, "window_seconds", &self.window_seconds)
            .map_err(err("window_seconds"))?;
        let created_by = format!("birdclef-train {}", env!("CARGO_PKG_VERSION"));
        for (name, value) in [("shard", self.shard.as_str()), ("created_by", &created_by)] {
            h5::write_str_attr(&file, name, value).map_err(err(name))?;
        }
        file.flush().map_err(err("flush"))?;
        h5::write_attr(&file, "complete", &1u8).map_err(err("complete"))?;
        drop(probs);
        file.close().map_err(err("close"))?;
        Ok(())
    }

    /// Read a pseudo-label file; the error names the file and what is wrong with it.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |cause: hdf5::Error| TrainError::PseudoUnreadable {
                path: path.to_path_buf(),
                what,
                cause,
            }
        };
        let invalid = |reason: String| TrainError::PseudoLabels {
            path: path.to_path_buf(),
            reason,
        };
        let file = hdf5::File::open(path).map_err(err("open"))?;
        let complete = h5::read_attr::<u8>(&file, "complete").map_err(err("attribute complete"))?;
        if complete != 1 {
            return Err(invalid("incomplete pseudo-label file".into()));
        }
        let version = h5::read_attr::<u32>(&file, "format_version")
            .map_err(err("attribute format_version"))?;
        if version != FORMAT_VERSION {
            return Err(invalid(format!(
                "pseudo-label format version {version}; this program reads {FORMAT_VERSION}"
            )));
        }
        let read_str = |name: &str| h5::read_strings(&file, name).map_err(err(name));
        let read_f64 = |name: &str| h5::read_1d::<f64>(&file, name).map_err(err(name));
        let probs_ds = file.dataset("probs").map_err(err("probs"))?;
        let table = Table {
            row_id: read_str("row_id")?,
            soundscape: read_str("soundscape")?,
            start: read_f64("start")?,
            end: read_f64("end")?,
            probs: probs_ds.read_raw::<f32>().map_err(err("probs"))?,
            labels: read_str("labels")?,
            teachers: read_str("teachers")?,
            teacher_names: read_str("teacher_names")?,
            failed: read_str("failed")?,
            sample_rate: h5::read_attr(&file, "sample_rate").map_err(err("sample_rate"))?,
            window_seconds: h5::read_attr(&file, "window_seconds")
                .map_err(err("window_seconds"))?,
            shard: h5::read_str_attr(&file, "shard").map_err(err("shard"))?,
        };
        let n = table.len();
        if probs_ds.shape() != [n, table.labels.len()]
            || table.soundscape.len() != n
            || table.start.len() != n
            || table.end.len() != n
        {
            return Err(invalid(format!(
                "its datasets disagree in length (row_id {n}, probs {:?})",
                probs_ds.shape()
            )));
        }
        Ok(table)
    }

    /// Probabilities of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let k = self.labels.len();
        &self.probs[i * k..(i + 1) * k]
    }
}

/// Join the files of a sharded run into the file one unsharded run writes: same teachers and
/// labels required, rows sorted by soundscape then window, a soundscape in two inputs and a row
/// id given twice (the same shard given twice) refused, naming both files. `out` is checked
/// before the inputs are read, and must not be one of them. Written atomically. Returns the
/// merged table.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<Table, TrainError> {
    let Some(first_path) = inputs.first() else {
        return Err(TrainError::NothingToMerge);
    };
    fsio::check_output_file(out)?;
    fsio::refuse_overwriting(out, inputs.iter().map(PathBuf::as_path))?;
    let tables: Vec<Table> = inputs
        .iter()
        .map(|p| Table::read(p))
        .collect::<Result<_, TrainError>>()?;
    let first = &tables[0];
    let mut owner: HashMap<&str, &Path> = HashMap::new();
    for (t, p) in tables.iter().zip(inputs) {
        for (what, a, b) in [
            ("labels", &first.labels, &t.labels),
            ("teachers", &first.teachers, &t.teachers),
        ] {
            if a != b {
                return Err(TrainError::ShardsDiffer {
                    first: first_path.clone(),
                    second: p.clone(),
                    what,
                });
            }
        }
        if t.window_seconds != first.window_seconds || t.sample_rate != first.sample_rate {
            return Err(TrainError::ShardWindows {
                first: first_path.clone(),
                second: p.clone(),
            });
        }
        let mut seen: Vec<&str> = t.soundscape.iter().map(String::as_str).collect();
        seen.dedup();
        for s in seen {
            if let Some(other) = owner.insert(s, p) {
                if other != p.as_path() {
                    return Err(TrainError::SoundscapeTwice {
                        soundscape: s.to_string(),
                        first: other.to_path_buf(),
                        second: p.clone(),
                    });
                }
            }
        }
    }
    let mut row_owner: HashMap<&str, usize> = HashMap::new();
    for (ti, t) in tables.iter().enumerate() {
        for id in &t.row_id {
            if let Some(other) = row_owner.insert(id, ti) {
                let (a, b) = (&inputs[other], &inputs[ti]);
                let note = if other == ti {
                    " (twice in one file)"
                } else if fsio::same_file(a, b) {
                    " (the same file given twice)"
                } else {
                    ""
                };
                return Err(TrainError::RowTwice {
                    row_id: id.clone(),
                    first: a.clone(),
                    second: b.clone(),
                    note,
                });
            }
        }
    }
    let k = first.labels.len();
    let mut rows: Vec<(usize, usize)> = tables
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| (0..t.len()).map(move |r| (ti, r)))
        .collect();
    rows.sort_by(|&(ta, ra), &(tb, rb)| {
        let (a, b) = (&tables[ta], &tables[tb]);
        a.soundscape[ra]
            .cmp(&b.soundscape[rb])
            .then(a.start[ra].total_cmp(&b.start[rb]))
    });
    let mut merged = Table {
        labels: first.labels.clone(),
        teachers: first.teachers.clone(),
        teacher_names: first.teacher_names.clone(),
        sample_rate: first.sample_rate,
        window_seconds: first.window_seconds,
        shard: "merged".into(),
        ..Table::default()
    };
    for (ti, r) in rows {
        let t = &tables[ti];
        merged.row_id.push(t.row_id[r].clone());
        merged.soundscape.push(t.soundscape[r].clone());
        merged.start.push(t.start[r]);
        merged.end.push(t.end[r]);
        merged.probs.extend_from_slice(&t.probs[r * k..(r + 1) * k]);
    }
    merged.failed = tables.iter().flat_map(|t| t.failed.clone()).collect();
    merged.failed.sort();
    merged.write(out)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_and_empty_merges_are_typed_errors() {
        let dir = std::env::temp_dir().join(format!("birdclef-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let garbage = dir.join("garbage.h5");
        std::fs::write(&garbage, b"not HDF5").expect("write");
        let err = Table::read(&garbage).expect_err("not HDF5");
        assert!(
            matches!(&err, TrainError::PseudoUnreadable { path, what, .. }
                if path == &garbage && what == "open"),
            "{err:?}"
        );
        // HDF5's message is the cause, not repeated in the error's own.
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(
            err.to_string(),
            format!(
                "{}: not a readable pseudo-label file: open",
                garbage.display()
            )
        );
        assert!(matches!(
            merge(&[], &dir.join("out.h5")),
            Err(TrainError::NothingToMerge)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
