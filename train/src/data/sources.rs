//! Several data sources (the NVBird setup): this competition's recordings plus previous years'
//! competitions and extra collections (`fit --extra-data PATH`, repeatable).
//!
//! An extra source is a directory in the competition layout (`train_metadata.csv`,
//! `train_audio/`) or a CSV of recordings in the same columns (`primary_label`,
//! `secondary_labels`, `filename` relative to the CSV's directory; `rating`, `date`, `url`
//! optional). Its rows are read against **this** competition's labels:
//! - a row whose primary label is not one of them is dropped (counted per source), and so are
//!   secondary labels that are not;
//! - a row whose Xeno-canto recording (`XC<digits>` in the file name, else the `url`) is already
//!   in this competition's data or in an earlier row or source is a duplicate and dropped
//!   (rows without a Xeno-canto number are never taken for duplicates);
//! - the rest fill each species up to [`DataConfig::extra_cap_per_species`] recordings in all,
//!   most recent first (the `date` column, then the higher Xeno-canto number, then source and
//!   row order): this competition's recordings all count and are all kept, so a species that
//!   already has that many gets nothing extra.
//!
//! Extra recordings are only ever trained on: the folds, and so validation, are this
//! competition's. Every source and the recordings taken from it go into
//! [`Dataset::sources`] and from there into each checkpoint card's provenance.
//!
//! [`DataConfig::extra_cap_per_species`]: crate::config::DataConfig::extra_cap_per_species

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use birdclef_models::card::DataSource;

use super::metadata::{read_metadata, xeno_canto_id, RowInfo};
use super::{DataError, Dataset, Recording};

/// What was taken from one extra source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceReport {
    /// The directory or CSV file.
    pub path: PathBuf,
    /// Rows read.
    pub rows: usize,
    /// Rows dropped for a primary label that is not one of this competition's.
    pub other_species: usize,
    /// Rows dropped as a Xeno-canto recording already taken.
    pub duplicates: usize,
    /// Rows dropped because their species already had its fill.
    pub over_cap: usize,
    /// Recordings added.
    pub kept: usize,
}

/// The metadata CSV and the audio directory of an extra source.
fn layout(path: &Path) -> Result<(PathBuf, PathBuf), DataError> {
    if path.is_dir() {
        Ok((path.join("train_metadata.csv"), path.join("train_audio")))
    } else if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok((path.to_path_buf(), dir))
    } else {
        Err(DataError::Invalid {
            root: path.to_path_buf(),
            problems: vec![
                "an extra data source must be a competition directory (train_metadata.csv, \
                 train_audio/) or a CSV of recordings; this is neither"
                    .into(),
            ],
        })
    }
}

/// Add the recordings of `sources` to `ds` (after its own, which stay first and unchanged), as
/// the module documentation says, with at most `cap` recordings per species in all. Returns
/// what each source gave. Every problem of every source (a missing column or audio file, a
/// malformed row) is reported at once, naming its file and line, before anything is added.
pub fn add_sources(
    ds: &mut Dataset,
    sources: &[PathBuf],
    cap: usize,
) -> Result<Vec<SourceReport>, DataError> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let k = ds.labels.len();
    let mut have = vec![0usize; k];
    for r in &ds.recordings {
        if let Some(c) = have.get_mut(r.primary) {
            *c += 1;
        }
    }
    let mut seen: HashSet<u64> = ds
        .recordings
        .iter()
        .filter_map(|r| xeno_canto_id(&r.filename))
        .collect();

    // Read every source, collecting all problems.
    let mut read = Vec::new();
    for path in sources {
        let (meta, audio) = layout(path)?;
        let mut problems = Vec::new();
        let rows = read_metadata(&meta, &audio, &ds.labels, None, true, &mut problems);
        if !problems.is_empty() {
            return Err(DataError::Invalid {
                root: path.clone(),
                problems,
            });
        }
        read.push((path.clone(), rows));
    }

    // Duplicates, in source and row order.
    let mut reports = Vec::new();
    let mut candidates: Vec<(usize, usize, Recording, RowInfo)> = Vec::new();
    for (s, (path, rows)) in read.into_iter().enumerate() {
        let mut report = SourceReport {
            path,
            rows: rows.rows.len() + rows.other_species.values().sum::<usize>(),
            other_species: rows.other_species.values().sum(),
            duplicates: 0,
            over_cap: 0,
            kept: 0,
        };
        for (i, (rec, info)) in rows.rows.into_iter().enumerate() {
            if let Some(id) = info.xc_id {
                if !seen.insert(id) {
                    report.duplicates += 1;
                    continue;
                }
            }
            candidates.push((s, i, rec, info));
        }
        reports.push(report);
    }

    // The fill: per species, the most recent first.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        ca.2.primary
            .cmp(&cb.2.primary)
            .then_with(|| cb.3.date.is_some().cmp(&ca.3.date.is_some()))
            .then_with(|| cb.3.date.cmp(&ca.3.date))
            .then_with(|| cb.3.xc_id.is_some().cmp(&ca.3.xc_id.is_some()))
            .then_with(|| cb.3.xc_id.cmp(&ca.3.xc_id))
            .then_with(|| (ca.0, ca.1).cmp(&(cb.0, cb.1)))
    });
    let mut keep = vec![false; candidates.len()];
    for i in order {
        let (s, _, rec, _) = &candidates[i];
        if have[rec.primary] < cap {
            have[rec.primary] += 1;
            keep[i] = true;
        } else {
            reports[*s].over_cap += 1;
        }
    }
    if ds.sources.is_empty() {
        ds.sources.push(DataSource {
            path: ds.root.display().to_string(),
            recordings: ds.recordings.len(),
        });
    }
    for ((s, _, rec, _), k) in candidates.into_iter().zip(keep) {
        if k {
            reports[s].kept += 1;
            ds.recordings.push(rec);
        }
    }
    for r in &reports {
        ds.sources.push(DataSource {
            path: r.path.display().to_string(),
            recordings: r.kept,
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::metadata::{load_dataset, DataOptions};

    /// `rows` as `path`, and an empty audio file for each row's `.ogg` under `audio` (only
    /// their existence is checked here).
    fn table(path: &Path, audio: &Path, header: &str, rows: &[&str]) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, format!("{header}\n{}\n", rows.join("\n"))).expect("csv");
        for r in rows {
            let f = r
                .split(',')
                .find(|c| c.ends_with(".ogg"))
                .expect("filename cell");
            let p = audio.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(p, b"").expect("audio");
        }
    }

    #[test]
    fn extra_sources_keep_this_years_species_drop_duplicates_and_fill_the_most_recent() {
        let dir = std::env::temp_dir().join(format!("birdclef-sources-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let main = dir.join("main");
        table(
            &main.join("train_metadata.csv"),
            &main.join("train_audio"),
            "primary_label,secondary_labels,filename",
            &["a,[],a/XC1.ogg", "a,[],a/XC2.ogg", "b,[],b/XC3.ogg"],
        );
        std::fs::write(main.join("taxonomy.csv"), "primary_label\na\nb\nc\n").expect("tax");
        // A previous year: a duplicate of XC1, three more of a (two dated), one of b, one of a
        // species this year does not have, one of c with an unknown secondary label.
        let year = dir.join("year2");
        table(
            &year.join("train_metadata.csv"),
            &year.join("train_audio"),
            "primary_label,secondary_labels,filename,date",
            &[
                "a,[],a/XC1.ogg,2019-01-01",
                "a,[],a/XC10.ogg,2020-05-01",
                "a,[],a/XC11.ogg,2022-05-01",
                "a,[],a/XC12.ogg,",
                "b,[],b/XC13.ogg,",
                "d,[],d/XC14.ogg,2023-01-01",
                "c,\"['a', 'zzz']\",c/XC15.ogg,",
            ],
        );
        // A CSV of recordings: b with its number in the URL only, c from elsewhere (no
        // Xeno-canto number), and XC11 again.
        let csv = dir.join("extra/recordings.csv");
        table(
            &csv,
            &dir.join("extra"),
            "primary_label,secondary_labels,filename,url,date",
            &[
                "b,[],b/16.ogg,https://xeno-canto.org/16,",
                "c,[],c/in1.ogg,,2023-02-02",
                "a,[],a/XC11.ogg,,2022-05-01",
            ],
        );
        let mut ds = load_dataset(&main, &DataOptions::default())
            .expect("main")
            .dataset;
        let before = ds.recordings.clone();
        let reports = add_sources(&mut ds, &[year.clone(), csv.clone()], 3).expect("sources");
        assert_eq!(ds.recordings[..3], before[..]);
        let names: Vec<&str> = ds.recordings[3..]
            .iter()
            .map(|r| r.filename.as_str())
            .collect();
        // a: 2 of its own, 1 more, the most recent (XC11, 2022); b: 1 + 2; c: 0 + 2.
        assert_eq!(
            names,
            [
                "a/XC11.ogg",
                "b/XC13.ogg",
                "c/XC15.ogg",
                "b/16.ogg",
                "c/in1.ogg"
            ]
        );
        assert_eq!(ds.recordings[5].secondary, [0], "a kept, zzz dropped");
        assert_eq!(ds.recordings[5].path, year.join("train_audio/c/XC15.ogg"));
        assert_eq!(ds.recordings[7].path, dir.join("extra/c/in1.ogg"));
        let r = &reports[0];
        assert_eq!(
            (r.rows, r.other_species, r.duplicates, r.over_cap, r.kept),
            (7, 1, 1, 2, 3)
        );
        let r = &reports[1];
        assert_eq!(
            (r.rows, r.other_species, r.duplicates, r.over_cap, r.kept),
            (3, 0, 1, 0, 2)
        );
        let sources: Vec<usize> = ds.sources.iter().map(|s| s.recordings).collect();
        assert_eq!(sources, [3, 3, 2]);
        assert_eq!(ds.sources[1].path, year.display().to_string());

        // A cap the competition already fills adds nothing of that species.
        let mut small = load_dataset(&main, &DataOptions::default())
            .expect("main")
            .dataset;
        add_sources(&mut small, std::slice::from_ref(&year), 1).expect("sources");
        assert!(small.recordings[3..].iter().all(|r| r.primary == 2));

        // A missing audio file or a path that is neither: named, nothing added.
        std::fs::remove_file(year.join("train_audio/b/XC13.ogg")).expect("rm");
        let mut ds2 = small.clone();
        let msg = add_sources(&mut ds2, std::slice::from_ref(&year), 3)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("train_metadata.csv:6") && msg.contains("XC13.ogg"),
            "{msg}"
        );
        assert_eq!(ds2, small);
        let msg = add_sources(&mut ds2, &[dir.join("nowhere")], 3)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nowhere") && msg.contains("neither"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
