//! Training data: a Kaggle BirdCLEF directory read as it is, its folds, and the decoded audio.
//!
//! The contract between data loading and the training loop:
//! - [`Dataset`]: the label order and one [`Recording`] per row of `train_metadata.csv`;
//! - [`AudioStore`]: decoded 32 kHz mono audio per recording — the first and the last N seconds
//!   ([`Segments`]), which is where random 5-s training crops are taken from;
//! - fold assignment: `Vec<usize>` (fold of each recording);
//! - [`soft`]: soft-labelled soundscape windows (pseudo-labels) with their audio;
//! - [`batch`]: augmented training batches of either kind of sample.

use std::path::PathBuf;

pub use metadata::DataError;

use birdclef_models::rng::Rng;

/// Draws of indices with probability proportional to their weights (with replacement).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedDraw {
    cumulative: Vec<f64>,
}

impl WeightedDraw {
    /// Draws over `0..weights.len()`; negative and NaN weights count as 0.
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut sum = 0.0;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                if w > 0.0 {
                    sum += w;
                }
                sum
            })
            .collect();
        Self { cumulative }
    }

    /// An index drawn with probability proportional to its weight (indices of weight 0 are
    /// never drawn; when every weight is 0, uniformly). `0` when there are none.
    pub fn draw(&self, rng: &mut Rng) -> usize {
        let n = self.cumulative.len();
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        if total.is_nan() || total <= 0.0 {
            return rng.below(n.max(1));
        }
        let u = rng.uniform() * total;
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(n.saturating_sub(1))
    }
}

/// Per class, the number of recordings in `idx` whose primary label it is (negatives,
/// [`NO_LABEL`], are not counted).
pub fn primary_counts(ds: &Dataset, idx: &[usize]) -> Vec<usize> {
    let mut counts = vec![0usize; ds.labels.len()];
    for &r in idx {
        if let Some(c) = ds
            .recordings
            .get(r)
            .and_then(|rec| counts.get_mut(rec.primary))
        {
            *c += 1;
        }
    }
    counts
}

/// [`Recording::primary`] of a negative window: no species calls in it.
pub const NO_LABEL: usize = usize::MAX;

/// One labelled recording (a row of train_metadata.csv, or a window cut around an annotation).
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// The `filename` column, relative to `train_audio/` (e.g. `asbfly/XC134896.ogg`).
    pub filename: String,
    /// Full path of the audio file.
    pub path: PathBuf,
    /// Index of the primary label in [`Dataset::labels`], or [`NO_LABEL`] for a window without
    /// any species (a negative cut from an unannotated stretch).
    pub primary: usize,
    /// Indices of the secondary labels (known labels only).
    pub secondary: Vec<usize>,
    /// Further labels that are full positives like the primary one (an annotated window's
    /// other annotations); empty for focal recordings.
    pub positives: Vec<usize>,
    /// The `rating` column when present.
    pub rating: Option<f32>,
    /// The value of the group column (recordist, site, ...) when one is configured.
    pub group: Option<String>,
}

/// A competition's labelled training data.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The competition directory.
    pub root: PathBuf,
    /// Species in submission order (from taxonomy.csv or sample_submission.csv).
    pub labels: Vec<String>,
    /// One entry per metadata row kept.
    pub recordings: Vec<Recording>,
    /// With extra data sources ([`sources`]): each source and its recordings, for the card's
    /// provenance; empty for one source.
    pub sources: Vec<birdclef_models::card::DataSource>,
}

/// Decoded audio of one recording: its first and last N seconds at 32 kHz (`tail` is empty when
/// the recording is no longer than N seconds, since `head` then holds all of it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Segments {
    /// The first N seconds.
    pub head: Vec<f32>,
    /// The last N seconds (possibly overlapping `head` for recordings under 2N seconds).
    pub tail: Vec<f32>,
}

/// Read access to decoded training audio, shared by the batch-building threads.
pub trait AudioStore: Sync {
    /// Number of recordings.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The segments of recording `index` (same order as [`Dataset::recordings`]).
    fn segments(&self, index: usize) -> Result<Segments, DataError>;

    /// The audio validation windows are cut from: the head by default (an annotated window's
    /// store gives its centred window).
    fn validation_audio(&self, index: usize) -> Result<Vec<f32>, DataError> {
        Ok(self.segments(index)?.head)
    }

    /// Whether [`AudioStore::validation_audio`] is one model input each (an annotated window
    /// with its context) rather than audio to cut into windows.
    fn validation_is_one_input(&self) -> bool {
        false
    }

    /// Samples in recording `index`'s head.
    fn head_len(&self, index: usize) -> Result<usize, DataError> {
        Ok(self.segments(index)?.head.len())
    }

    /// `len` samples of recording `index`'s head from sample `start`, zero-padded past its end
    /// (used for windows of whole soundscapes stored as one long head).
    fn head_range(&self, index: usize, start: usize, len: usize) -> Result<Vec<f32>, DataError> {
        let head = self.segments(index)?.head;
        let mut out = vec![0.0f32; len];
        if start < head.len() {
            let end = (start + len).min(head.len());
            out[..end - start].copy_from_slice(&head[start..end]);
        }
        Ok(out)
    }
}

/// An [`AudioStore`] held in memory (tests, small datasets).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryStore(pub Vec<Segments>);

impl AudioStore for MemoryStore {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn segments(&self, index: usize) -> Result<Segments, DataError> {
        self.0.get(index).cloned().ok_or(DataError::NoRecording {
            store: "store",
            index,
            len: self.0.len(),
        })
    }
}
pub mod annotated;
pub mod annotations;
pub mod augment;
pub mod batch;
pub mod cache;
pub mod folds;
pub mod h5;
pub mod metadata;
pub mod soft;
pub mod sources;
