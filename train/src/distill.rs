//! `birdclef-train distill`: students learn from labelled clips and from soundscape windows that
//! a teacher ensemble pseudo-labelled ([`crate::pseudo`]).
//!
//! [`load_pseudo`] reads a pseudo-label file, maps its species onto the dataset's label order
//! (species the file lacks are masked out of the loss of pseudo-labelled samples), turns the
//! ensemble probabilities into soft targets ([`DistillConfig::transform`]), drops windows below
//! the confidence threshold, and puts the soundscapes' audio in the HDF5 audio cache (whole
//! files, read window by window). [`crate::fit::fit_with`] then fills each batch with
//! [`DistillConfig::pseudo_fraction`] pseudo-labelled windows and labelled clips for the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use birdclef_models::audio::TARGET_SAMPLE_RATE;

use crate::batch::Item;
use crate::config::DistillConfig;
use crate::data::cache::{Cache, CacheOptions};
use crate::data::{AudioStore, Dataset, Recording};
use crate::pseudo::Table;

/// Seconds of "head" kept per soundscape in the audio cache: more than any recording, so the
/// whole file is kept.
pub const WHOLE_FILE_SECONDS: f64 = 1.0e7;

/// A pseudo-labelled window: a stored soundscape and the sample its window starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PseudoWindow {
    /// Index of the soundscape in the audio store.
    pub rec: usize,
    /// First sample (32 kHz).
    pub start: usize,
}

/// Pseudo-labelled windows with their soft targets and their audio.
pub struct PseudoSet {
    store: Box<dyn AudioStore>,
    windows: Vec<PseudoWindow>,
    targets: Vec<f32>,
    weights: Vec<f32>,
}

impl std::fmt::Debug for PseudoSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PseudoSet")
            .field("windows", &self.windows.len())
            .field("classes", &self.weights.len())
            .finish()
    }
}

impl PseudoSet {
    /// `targets` is `[windows, classes]`; `weights` (one per class) are the loss weights of
    /// every pseudo-labelled sample.
    pub fn new(
        store: Box<dyn AudioStore>,
        windows: Vec<PseudoWindow>,
        targets: Vec<f32>,
        weights: Vec<f32>,
    ) -> Result<Self> {
        if targets.len() != windows.len() * weights.len() {
            bail!(
                "{} pseudo-label targets for {} windows of {} classes",
                targets.len(),
                windows.len(),
                weights.len()
            );
        }
        if let Some(w) = windows.iter().find(|w| w.rec >= store.len()) {
            bail!(
                "a pseudo-labelled window refers to soundscape {} of {}",
                w.rec,
                store.len()
            );
        }
        Ok(Self {
            store,
            windows,
            targets,
            weights,
        })
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Soft targets of window `i`.
    pub fn targets(&self, i: usize) -> &[f32] {
        let k = self.weights.len();
        &self.targets[i * k..(i + 1) * k]
    }

    /// Loss weights of a pseudo-labelled sample, per class.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// `n` samples of window `i` (zero-padded past the soundscape's end).
    pub fn audio(&self, i: usize, n: usize) -> Result<Vec<f32>> {
        let w = self
            .windows
            .get(i)
            .with_context(|| format!("no pseudo-labelled window {i} of {}", self.len()))?;
        self.store.head_range(w.rec, w.start, n)
    }
}

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
) -> Result<LoadedPseudo> {
    let table = Table::read(path)?;
    if table.sample_rate != TARGET_SAMPLE_RATE {
        bail!(
            "{}: windows at {} Hz; training audio is {TARGET_SAMPLE_RATE} Hz",
            path.display(),
            table.sample_rate
        );
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
        bail!(
            "{}: none of its {} species is a label of the dataset",
            path.display(),
            table.labels.len()
        );
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
            .map(|m| m.map_or(0.0, |c| cfg.transform(row[c])))
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
    .with_context(|| {
        format!(
            "the soundscapes of {} (looked up in {})",
            path.display(),
            soundscape_dir.display()
        )
    })?;
    let set = PseudoSet::new(Box::new(cache), windows, targets, weights)?;
    Ok(LoadedPseudo {
        set,
        total: table.len(),
        missing_labels,
        unknown_labels,
    })
}

/// The samples of one epoch when a share of every batch is pseudo-labelled: `steps` batches of
/// `batch` items, each with `n_pseudo` pseudo-labelled windows after `batch - n_pseudo` labelled
/// items taken in turn from `labelled` (an epoch's shuffled order). The windows come from
/// successive random permutations of `0..pseudo_len`, so each is used about equally often.
pub fn epoch_items(
    labelled: &[usize],
    pseudo_len: usize,
    n_pseudo: usize,
    batch: usize,
    steps: usize,
    rng: &mut birdclef_models::synth::Rng,
) -> Vec<Item> {
    let n_pseudo = if pseudo_len == 0 {
        0
    } else {
        n_pseudo.min(batch)
    };
    let n_lab = batch - n_pseudo;
    let mut stream: Vec<usize> = Vec::new();
    let mut next_pseudo = move |rng: &mut birdclef_models::synth::Rng| {
        if stream.is_empty() {
            stream = (0..pseudo_len).collect();
            rng.shuffle(&mut stream);
            stream.reverse();
        }
        stream.pop().unwrap_or(0)
    };
    let mut items = Vec::with_capacity(steps * batch);
    let mut lab = labelled.iter().cycle();
    for _ in 0..steps {
        for _ in 0..n_lab {
            if let Some(&r) = lab.next() {
                items.push(Item::Clip(r));
            }
        }
        for _ in 0..n_pseudo {
            items.push(Item::Pseudo(next_pseudo(rng)));
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{MemoryStore, Segments};
    use birdclef_models::synth::Rng;

    #[test]
    fn every_batch_has_its_share_of_pseudo_labelled_windows() {
        let labelled: Vec<usize> = (0..40).collect();
        let mut rng = Rng::new(1);
        let items = epoch_items(&labelled, 7, 3, 8, 5, &mut rng);
        assert_eq!(items.len(), 40);
        let mut uses = [0usize; 7];
        for b in items.chunks(8) {
            let p: Vec<usize> = b
                .iter()
                .filter_map(|i| match i {
                    Item::Pseudo(j) => Some(*j),
                    Item::Clip(_) => None,
                })
                .collect();
            assert_eq!(p.len(), 3, "{b:?}");
            for j in p {
                uses[j] += 1;
            }
        }
        // 15 draws over 7 windows from permutations: each used 2 or 3 times.
        assert!(uses.iter().all(|&u| (2..=3).contains(&u)), "{uses:?}");
        // The labelled items are the order's first 25, in order.
        let lab: Vec<usize> = items
            .iter()
            .filter_map(|i| match i {
                Item::Clip(r) => Some(*r),
                Item::Pseudo(_) => None,
            })
            .collect();
        assert_eq!(lab, (0..25).collect::<Vec<_>>());
        // No pseudo-labelled windows: all labelled.
        let items = epoch_items(&labelled, 0, 3, 8, 5, &mut rng);
        assert!(items.iter().all(|i| matches!(i, Item::Clip(_))));
    }

    #[test]
    fn windows_read_their_audio_zero_padded() {
        let store = MemoryStore(vec![Segments {
            head: (0..10).map(|v| v as f32).collect(),
            tail: Vec::new(),
        }]);
        let set = PseudoSet::new(
            Box::new(store),
            vec![
                PseudoWindow { rec: 0, start: 2 },
                PseudoWindow { rec: 0, start: 8 },
            ],
            vec![0.1, 0.9, 0.5, 0.5],
            vec![1.0, 0.0],
        )
        .expect("set");
        assert_eq!(set.audio(0, 3).expect("audio"), vec![2.0, 3.0, 4.0]);
        assert_eq!(set.audio(1, 4).expect("audio"), vec![8.0, 9.0, 0.0, 0.0]);
        assert_eq!(set.targets(1), &[0.5, 0.5]);
        assert!(PseudoSet::new(
            Box::new(MemoryStore::default()),
            vec![PseudoWindow { rec: 0, start: 0 }],
            vec![0.0],
            vec![1.0],
        )
        .is_err());
    }

    #[test]
    fn soft_targets_follow_temperature_and_power() {
        let mut c = DistillConfig::default();
        assert!((c.transform(0.3) - 0.3).abs() < 1e-6);
        c.temperature = 0.5;
        assert!(c.transform(0.8) > 0.9 && c.transform(0.2) < 0.1);
        c.temperature = 1.0;
        c.power = 2.0;
        assert!((c.transform(0.5) - 0.25).abs() < 1e-6);
    }
}
