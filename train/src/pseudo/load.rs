//! `birdclef-train distill`: students learn from labelled clips and from soundscape windows that
//! a teacher ensemble pseudo-labelled ([`crate::pseudo`]).
//!
//! [`load_pseudo`] reads a pseudo-label file, maps its species onto the dataset's label order
//! (species the file lacks are masked out of the loss of pseudo-labelled samples), turns the
//! ensemble probabilities into soft targets ([`DistillConfig::soft_target`]: temperature, power,
//! then the floor), drops windows whose largest soft target is below the threshold, and puts the soundscapes' audio in the HDF5 audio cache (whole
//! files, read window by window). [`crate::training::fit_with`] then fills each batch with
//! [`DistillConfig::pseudo_fraction`] pseudo-labelled windows and labelled clips for the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use birdclef_models::audio::TARGET_SAMPLE_RATE;

use crate::config::DistillConfig;
use crate::data::cache::{Cache, CacheOptions};
use crate::data::soft::{PseudoSet, PseudoWindow};
use crate::data::{Dataset, Recording};
use crate::error::TrainError;
use crate::pseudo::Table;

/// Seconds of "head" kept per soundscape in the audio cache: more than any recording, so the
/// whole file is kept.
pub const WHOLE_FILE_SECONDS: f64 = 1.0e7;

/// What [`load_pseudo`] found.
#[derive(Debug)]
pub struct LoadedPseudo {
    /// The windows kept.
    pub set: PseudoSet,
    /// Windows in the file.
    pub total: usize,
    /// Dataset species the file has no column for (masked).
    pub missing_labels: Vec<String>,
    /// Species of the file the dataset does not have (ignored).
    pub unknown_labels: Vec<String>,
}

/// Read `path` (a file written by `birdclef-train pseudo-label`) for a dataset with `labels`,
/// keeping windows as `cfg` says; the soundscapes are looked up by file name in
/// `soundscape_dir` and cached under `cache_dir`.
pub fn load_pseudo(
    path: &Path,
    labels: &[String],
    soundscape_dir: &Path,
    cache_dir: &Path,
    cfg: &DistillConfig,
    threads: usize,
) -> Result<LoadedPseudo, TrainError> {
    let invalid = |reason: String| TrainError::PseudoLabels {
        path: path.to_path_buf(),
        reason,
    };
    let table = Table::read(path)?;
    if table.sample_rate != TARGET_SAMPLE_RATE {
        return Err(invalid(format!(
            "windows at {} Hz; training audio is {TARGET_SAMPLE_RATE} Hz",
            table.sample_rate
        )));
    }
    let column: BTreeMap<&str, usize> = table
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let map: Vec<Option<usize>> = labels
        .iter()
        .map(|l| column.get(l.as_str()).copied())
        .collect();
    let missing_labels: Vec<String> = labels
        .iter()
        .zip(&map)
        .filter(|(_, m)| m.is_none())
        .map(|(l, _)| l.clone())
        .collect();
    if missing_labels.len() == labels.len() {
        return Err(invalid(format!(
            "none of its {} species is a label of the dataset",
            table.labels.len()
        )));
    }
    let unknown_labels: Vec<String> = table
        .labels
        .iter()
        .filter(|l| !labels.contains(l))
        .cloned()
        .collect();
    let weights: Vec<f32> = map
        .iter()
        .map(|m| if m.is_some() { cfg.weight as f32 } else { 0.0 })
        .collect();

    let mut files: Vec<&str> = Vec::new();
    let mut kept: Vec<usize> = Vec::new();
    let mut targets = Vec::new();
    for r in 0..table.len() {
        let row = table.row(r);
        let soft: Vec<f32> = map
            .iter()
            .map(|m| m.map_or(0.0, |c| cfg.soft_target(row[c])))
            .collect();
        let top = soft.iter().copied().fold(0.0f32, f32::max);
        if f64::from(top) < cfg.threshold {
            continue;
        }
        files.push(table.soundscape[r].as_str());
        kept.push(r);
        targets.extend(soft);
    }
    files.sort_unstable();
    files.dedup();
    let recordings: Vec<Recording> = files
        .iter()
        .map(|f| Recording {
            filename: (*f).to_string(),
            path: soundscape_dir.join(f),
            primary: 0,
            secondary: Vec::new(),
            positives: Vec::new(),
            rating: None,
            group: None,
        })
        .collect();
    let index: BTreeMap<&str, usize> = files.iter().enumerate().map(|(i, f)| (*f, i)).collect();
    let windows: Vec<PseudoWindow> = kept
        .iter()
        .map(|&r| PseudoWindow {
            rec: index[table.soundscape[r].as_str()],
            start: (table.start[r] * f64::from(TARGET_SAMPLE_RATE)).round() as usize,
        })
        .collect();
    let ds = Dataset {
        root: PathBuf::from(soundscape_dir),
        labels: Vec::new(),
        sources: Vec::new(),
        recordings,
    };
    let cache = Cache::build_or_open(
        &ds,
        cache_dir,
        &CacheOptions {
            seconds: WHOLE_FILE_SECONDS,
            threads,
            skip_bad: false,
        },
    )
    .map_err(|cause| TrainError::PseudoAudio {
        path: path.to_path_buf(),
        dir: soundscape_dir.to_path_buf(),
        cause,
    })?;
    let set = PseudoSet::new(Box::new(cache), windows, targets, weights)?;
    Ok(LoadedPseudo {
        set,
        total: table.len(),
        missing_labels,
        unknown_labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_targets_follow_temperature_and_power() {
        let mut c = DistillConfig::default();
        assert!((c.transform(0.3) - 0.3).abs() < 1e-6);
        c.temperature = 0.5;
        assert!(c.transform(0.8) > 0.9 && c.transform(0.2) < 0.1);
        c.temperature = 1.0;
        c.power = 2.0;
        assert!((c.transform(0.5) - 0.25).abs() < 1e-6);
        c.floor = 0.3;
        assert_eq!(c.soft_target(0.5), 0.0, "0.25 is below the floor");
        assert!((c.soft_target(0.8) - 0.64).abs() < 1e-6);
    }
}
