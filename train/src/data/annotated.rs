//! Annotated soundscapes as training data (`birdclef-train fit --annotations TABLE --audio DIR`,
//! the Kenya setup): every annotation of the table ([`super::annotations`]) becomes one window of
//! the configured length, cut from its decoded soundscape on demand ([`WindowStore`]).
//!
//! - **Validation and test windows** are centred on the annotation (on its middle, for one longer
//!   than the window), shifted inside the file where it would run over an end.
//! - **Training windows** are random crops of a context reaching
//!   [`AnnotationsConfig::jitter_seconds`] beyond that window on both sides (and over the whole
//!   of an annotation longer than the window), so a point annotation lands up to the jitter off
//!   centre.
//! - **Labels**: the annotation's label is the window's primary label; every other annotation of
//!   the same file that overlaps the centred window is a full positive of it too. They are the
//!   same for every crop, so a neighbour at the edge of the window may be cropped out.
//! - **Negatives** ([`AnnotationsConfig::negatives`] per annotated window of a split) are drawn
//!   uniformly from the stretches of that split's files that no annotation touches, counting
//!   annotations of dropped labels; their windows have no label ([`NO_LABEL`]).
//! - **Classes**: those of [`AnnotationsConfig::labels`] (in its order) or of the table (sorted),
//!   less those with fewer than [`AnnotationsConfig::min_count`] annotations.
//! - **Split**: by group (a file's group is that of its first annotation), with
//!   [`split_groups`], stratified by species: `data.n_folds` folds, or train/val/test by
//!   [`AnnotationsConfig::ratios`]. No group, and so no file, is in two splits.
//!
//! [`AnnotationsConfig::jitter_seconds`]: crate::config::AnnotationsConfig::jitter_seconds
//! [`AnnotationsConfig::negatives`]: crate::config::AnnotationsConfig::negatives
//! [`AnnotationsConfig::labels`]: crate::config::AnnotationsConfig::labels
//! [`AnnotationsConfig::min_count`]: crate::config::AnnotationsConfig::min_count
//! [`AnnotationsConfig::ratios`]: crate::config::AnnotationsConfig::ratios

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use birdclef_models::audio::TARGET_SAMPLE_RATE;
use birdclef_models::rng::Rng;

use super::annotations::{min_count_filter, read_annotations, split_groups, Annotation};
use super::cache::{Cache, CacheOptions};
use super::folds::{ALWAYS_TRAIN, HELD_OUT};
use super::{AudioStore, DataError, Dataset, Recording, Segments, NO_LABEL};
use crate::config::{SplitMode, TrainConfig};
use crate::pseudo::load::WHOLE_FILE_SECONDS;

/// One window: training crops come from samples `start..start + len` of file `file`,
/// validation from `val_start..val_start + val_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Index of the soundscape.
    pub file: usize,
    /// First sample of the training context.
    pub start: usize,
    /// Samples of the training context.
    pub len: usize,
    /// First sample of the centred window.
    pub val_start: usize,
    /// Samples of the centred window (the window length).
    pub val_len: usize,
}

/// The windows of annotated soundscapes, read from the decoded files on demand: a window's head
/// is its training context, its validation audio the centred window.
pub struct WindowStore {
    files: Box<dyn AudioStore>,
    windows: Vec<Window>,
}

impl WindowStore {
    /// Windows of the soundscapes in `files`.
    pub fn new(files: Box<dyn AudioStore>, windows: Vec<Window>) -> Self {
        Self { files, windows }
    }

    /// The windows.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    fn window(&self, index: usize) -> Result<Window, DataError> {
        self.windows
            .get(index)
            .copied()
            .ok_or(DataError::NoRecording {
                store: "window store",
                index,
                len: self.windows.len(),
            })
    }
}

impl AudioStore for WindowStore {
    fn len(&self) -> usize {
        self.windows.len()
    }

    fn segments(&self, index: usize) -> Result<Segments, DataError> {
        let w = self.window(index)?;
        Ok(Segments {
            head: self.files.head_range(w.file, w.start, w.len)?,
            tail: Vec::new(),
        })
    }

    fn validation_audio(&self, index: usize) -> Result<Vec<f32>, DataError> {
        let w = self.window(index)?;
        self.files.head_range(w.file, w.val_start, w.val_len)
    }

    fn validation_is_one_input(&self) -> bool {
        true
    }
}

/// Which split a soundscape is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSplit {
    /// The file, relative to the audio directory.
    pub file: String,
    /// Its group.
    pub group: String,
    /// Its fold (`split = folds`), or 0 train, 1 validation, 2 test (`split = ratios`).
    pub split: usize,
}

/// Annotated soundscapes ready for `fit`.
pub struct Annotated {
    /// One recording per window (annotated windows first, then negatives).
    pub dataset: Dataset,
    /// Their audio.
    pub store: WindowStore,
    /// Per window: its fold, or [`ALWAYS_TRAIN`] / `0` / [`HELD_OUT`] for train / validation /
    /// test with `split = ratios`.
    pub folds: Vec<usize>,
    /// Every soundscape used, with its group and split.
    pub files: Vec<FileSplit>,
    /// Labels dropped by the class filter, with their annotation counts.
    pub dropped: Vec<(String, usize)>,
    /// Annotated and negative windows per split.
    pub per_split: Vec<(usize, usize)>,
    /// Things the user should know (dropped labels, files with several groups, ...).
    pub warnings: Vec<String>,
}

/// Whether `[lo, hi]` and `[a, b]` share a point.
fn overlaps(lo: f64, hi: f64, a: f64, b: f64) -> bool {
    a <= hi && b >= lo
}

/// The start positions `x` (samples) of a stretch of `len` samples inside `0..duration` that
/// touches none of `busy` (sample intervals, sorted by start), as half-open ranges.
fn free_starts(busy: &[(usize, usize)], len: usize, duration: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let Some(last) = duration.checked_sub(len) else {
        return out;
    };
    let mut from = 0usize;
    for &(s, e) in busy {
        // x + len < s, i.e. x < s - len + 1 ... x ≤ s - len - 1.
        if s > len && s - len > from {
            out.push((from, (s - len).min(last + 1)));
        }
        from = from.max(e + 1);
        if from > last {
            return out;
        }
    }
    out.push((from, last + 1));
    out.retain(|(a, b)| a < b);
    out
}

/// Read `table`, cut its windows from the soundscapes under `audio` (decoded once into an audio
/// cache under `cache_dir`) and split them, as `cfg.annotations` says, for windows of
/// `window_seconds` seen as inputs of `input_seconds` (the window, or a longer context centred on
/// it: the labels are those of the window, the audio that of the input). Problems are reported naming the table (each row's with its line) or the
/// audio file.
pub fn load_annotated(
    table: &Path,
    audio: &Path,
    cfg: &TrainConfig,
    window_seconds: f64,
    input_seconds: f64,
    cache_dir: &Path,
) -> Result<Annotated, DataError> {
    let ac = &cfg.annotations;
    let invalid = |problems: Vec<String>| DataError::Invalid {
        root: table.to_path_buf(),
        problems,
    };
    let mut warnings = Vec::new();
    let mut annotations = read_annotations(table, &ac.columns())?;

    // A file's group is its first annotation's.
    let mut file_group: BTreeMap<String, String> = BTreeMap::new();
    let mut mixed = BTreeSet::new();
    for a in &annotations {
        let g = file_group
            .entry(a.file.clone())
            .or_insert_with(|| a.group.clone());
        if *g != a.group {
            mixed.insert(a.file.clone());
        }
    }
    if !mixed.is_empty() {
        warnings.push(format!(
            "{}: {} file(s) have annotations of several groups; each is kept whole in the group \
             of its first annotation: {}",
            table.display(),
            mixed.len(),
            mixed.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    for a in &mut annotations {
        a.group = file_group[&a.file].clone();
    }
    // Every annotation keeps negatives away, whatever its label.
    let all = annotations.clone();

    let listed = match &ac.labels {
        Some(p) => {
            let list = super::metadata::read_column(p, "primary_label").map_err(|e| {
                DataError::Invalid {
                    root: p.clone(),
                    problems: vec![e],
                }
            })?;
            let known: BTreeSet<&str> = list.iter().map(String::as_str).collect();
            let unknown: BTreeSet<String> = annotations
                .iter()
                .filter(|a| !known.contains(a.label.as_str()))
                .map(|a| a.label.clone())
                .collect();
            if !unknown.is_empty() {
                let n = annotations
                    .iter()
                    .filter(|a| unknown.contains(&a.label))
                    .count();
                warnings.push(format!(
                    "{}: {n} annotation(s) of {} label(s) not in {} are dropped: {}",
                    table.display(),
                    unknown.len(),
                    p.display(),
                    unknown
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                annotations.retain(|a| known.contains(a.label.as_str()));
            }
            Some(list)
        }
        None => None,
    };
    let (kept, dropped) = min_count_filter(annotations, ac.min_count);
    if !dropped.is_empty() {
        warnings.push(format!(
            "{}: {} label(s) with fewer than {} annotations are dropped: {}",
            table.display(),
            dropped.len(),
            ac.min_count,
            dropped
                .iter()
                .take(10)
                .map(|(l, n)| format!("{l} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if kept.is_empty() {
        return Err(invalid(vec![format!(
            "no annotation is left after the class filter (annotations.min_count = {}{})",
            ac.min_count,
            if listed.is_some() {
                " and annotations.labels"
            } else {
                ""
            }
        )]));
    }
    let labels: Vec<String> = listed.unwrap_or_else(|| {
        kept.iter()
            .map(|a| a.label.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    });
    let label_index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();

    // The soundscapes, each checked to be there.
    let files: Vec<String> = kept
        .iter()
        .map(|a| a.file.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !audio.join(f).is_file())
        .map(|f| format!("{}: no such audio file", audio.join(f).display()))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(missing));
    }

    // The split: groups into folds or train/val/test.
    let (ratios, names): (Vec<f64>, Vec<String>) = match ac.split {
        SplitMode::Folds => (
            vec![1.0; cfg.data.n_folds],
            (0..cfg.data.n_folds).map(|f| format!("fold {f}")).collect(),
        ),
        SplitMode::Ratios => (
            ac.ratios.to_vec(),
            ["train", "validation", "test"].map(String::from).to_vec(),
        ),
    };
    let group_split = split_groups(&kept, &ratios, cfg.run.seed);
    let mut problems = Vec::new();
    for (s, name) in names.iter().enumerate() {
        if ratios[s] > 0.0 && !group_split.values().any(|&v| v == s) {
            let text = format!(
                "the {name} split has no group: {} group(s) among {} splits (a file is its own \
                 group unless the table has a `{}` column)",
                group_split.len(),
                ratios.iter().filter(|r| **r > 0.0).count(),
                ac.group_column
            );
            if ac.split == SplitMode::Ratios && s == 2 {
                warnings.push(format!("{}: {text}; no test score", table.display()));
            } else {
                problems.push(text);
            }
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    // Decode every soundscape once.
    let file_ds = Dataset {
        root: audio.to_path_buf(),
        labels: Vec::new(),
        sources: Vec::new(),
        recordings: files
            .iter()
            .map(|f| Recording {
                filename: f.clone(),
                path: audio.join(f),
                primary: NO_LABEL,
                secondary: Vec::new(),
                positives: Vec::new(),
                rating: None,
                group: Some(file_group[f].clone()),
            })
            .collect(),
    };
    let cache = Cache::build_or_open(
        &file_ds,
        cache_dir,
        &CacheOptions {
            seconds: WHOLE_FILE_SECONDS,
            threads: cfg.data.num_workers,
            skip_bad: false,
        },
    )?;
    let durations: Vec<usize> = (0..files.len())
        .map(|i| cache.head_len(i))
        .collect::<Result<_, _>>()?;
    let file_index: BTreeMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();

    let sr = f64::from(TARGET_SAMPLE_RATE);
    let samples = |t: f64| (t * sr).round().max(0.0) as usize;
    let w = samples(window_seconds).max(1);
    // The model's input: the window or its context, centred on the same point.
    let n = samples(input_seconds).max(w);
    let j = samples(ac.jitter_seconds);
    let split_of = |file: &str| group_split[&file_group[file]];
    let fold_of = |s: usize| match ac.split {
        SplitMode::Folds => s,
        SplitMode::Ratios => [ALWAYS_TRAIN, 0, HELD_OUT][s],
    };
    let mut by_file: Vec<Vec<&Annotation>> = vec![Vec::new(); files.len()];
    for a in &kept {
        by_file[file_index[a.file.as_str()]].push(a);
    }
    let mut recordings = Vec::new();
    let mut windows = Vec::new();
    let mut folds = Vec::new();
    let mut per_split = vec![(0usize, 0usize); ratios.len()];
    for (fi, anns) in by_file.iter().enumerate() {
        let d = durations[fi];
        let mut anns = anns.clone();
        anns.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.label.cmp(&b.label)));
        for a in &anns {
            let centre = samples((a.start + a.end) / 2.0);
            // The window the labels describe, and the input around it.
            let win_start = centre.saturating_sub(w / 2).min(d.saturating_sub(w));
            let (lo_t, hi_t) = (
                win_start as f64 / sr,
                (win_start + w).min(d.max(w)) as f64 / sr,
            );
            let val_start = centre.saturating_sub(n / 2).min(d.saturating_sub(n));
            let lo = samples(a.start).min(val_start).saturating_sub(j);
            let hi = (samples(a.end).max(val_start + n) + j).min(d.max(val_start + n));
            let primary = label_index[a.label.as_str()];
            let positives: Vec<usize> = anns
                .iter()
                .filter(|o| overlaps(lo_t, hi_t, o.start, o.end))
                .map(|o| label_index[o.label.as_str()])
                .filter(|&l| l != primary)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let s = split_of(&files[fi]);
            per_split[s].0 += 1;
            recordings.push(Recording {
                filename: format!("{}@{:.3}s", files[fi], (a.start + a.end) / 2.0),
                path: audio.join(&files[fi]),
                primary,
                secondary: Vec::new(),
                positives,
                rating: None,
                group: Some(file_group[&files[fi]].clone()),
            });
            windows.push(Window {
                file: fi,
                start: lo,
                len: hi - lo,
                val_start,
                val_len: n,
            });
            folds.push(fold_of(s));
        }
    }

    // Negatives, per split from its own files.
    if ac.negatives > 0.0 {
        let len = n + 2 * j;
        let mut busy: Vec<Vec<(usize, usize)>> = vec![Vec::new(); files.len()];
        for a in &all {
            if let Some(&fi) = file_index.get(a.file.as_str()) {
                busy[fi].push((samples(a.start), samples(a.end)));
            }
        }
        let mut rng = Rng::new(cfg.run.seed ^ 0x4E45_4741);
        for (s, counts) in per_split.iter_mut().enumerate() {
            let want = (ac.negatives * counts.0 as f64).round() as usize;
            if want == 0 {
                continue;
            }
            let mut free: Vec<(usize, usize, usize)> = Vec::new();
            for fi in (0..files.len()).filter(|&fi| split_of(&files[fi]) == s) {
                busy[fi].sort_unstable();
                for (a, b) in free_starts(&busy[fi], len, durations[fi]) {
                    free.push((fi, a, b));
                }
            }
            let total: usize = free.iter().map(|(_, a, b)| b - a).sum();
            if total == 0 {
                warnings.push(format!(
                    "{}: the {} split has no stretch of {:.2} s without an annotation: no \
                     negatives there",
                    table.display(),
                    names[s],
                    len as f64 / sr
                ));
                continue;
            }
            for _ in 0..want {
                let mut u = rng.below(total);
                let &(fi, a, _) = free
                    .iter()
                    .find(|(_, a, b)| {
                        let n = b - a;
                        if u < n {
                            true
                        } else {
                            u -= n;
                            false
                        }
                    })
                    .expect("u < total");
                let x = a + u;
                counts.1 += 1;
                recordings.push(Recording {
                    filename: format!("{}@{:.3}s", files[fi], (x + j + n / 2) as f64 / sr),
                    path: audio.join(&files[fi]),
                    primary: NO_LABEL,
                    secondary: Vec::new(),
                    positives: Vec::new(),
                    rating: None,
                    group: Some(file_group[&files[fi]].clone()),
                });
                windows.push(Window {
                    file: fi,
                    start: x,
                    len,
                    val_start: x + j,
                    val_len: n,
                });
                folds.push(fold_of(s));
            }
        }
    }
    let file_splits = files
        .iter()
        .map(|f| FileSplit {
            file: f.clone(),
            group: file_group[f].clone(),
            split: split_of(f),
        })
        .collect();
    Ok(Annotated {
        dataset: Dataset {
            root: audio.to_path_buf(),
            labels,
            sources: Vec::new(),
            recordings,
        },
        store: WindowStore::new(Box::new(cache), windows),
        folds,
        files: file_splits,
        dropped,
        per_split,
        warnings,
    })
}

/// `split.csv` of a run: `file,group,split` per soundscape (`split` a fold number, or `train`,
/// `val`, `test`).
pub fn split_csv(files: &[FileSplit], mode: SplitMode) -> String {
    let mut out = String::from("file,group,split\n");
    for f in files {
        let split = match mode {
            SplitMode::Folds => f.split.to_string(),
            SplitMode::Ratios => ["train", "val", "test"][f.split.min(2)].to_string(),
        };
        let field = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        out.push_str(&format!("{},{},{split}\n", field(&f.file), field(&f.group)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_starts_avoid_every_annotation() {
        // 100 samples, windows of 10, annotations at 30..40 and a point at 70.
        let free = free_starts(&[(30, 40), (70, 70)], 10, 100);
        assert_eq!(free, [(0, 20), (41, 60), (71, 91)]);
        for &(a, b) in &free {
            for x in a..b {
                assert!(x + 10 < 30 || x > 40, "{x}");
                assert!(x + 10 < 70 || x > 70, "{x}");
                assert!(x + 10 <= 100);
            }
        }
        assert_eq!(free_starts(&[], 10, 9), []);
        assert_eq!(free_starts(&[], 10, 10), [(0, 1)]);
        assert_eq!(free_starts(&[(0, 95)], 10, 100), []);
    }
}
