//! Soft-labelled training windows: soundscape windows with target probabilities (pseudo-labels
//! made by a teacher ensemble, [`crate::pseudo`]) and the audio they come from. Batches draw
//! from them as [`Item::Pseudo`](super::batch::Item::Pseudo).

use birdclef_models::rng::Rng;

use super::{AudioStore, DataError, WeightedDraw};

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
    /// The windows' draw weights (the sum of each one's soft targets), for
    /// [`draw_weighted`](PseudoSet::draw_weighted).
    draw: WeightedDraw,
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
    ) -> Result<Self, DataError> {
        if targets.len() != windows.len() * weights.len() {
            return Err(DataError::PseudoTargets {
                targets: targets.len(),
                windows: windows.len(),
                classes: weights.len(),
            });
        }
        if let Some(w) = windows.iter().find(|w| w.rec >= store.len()) {
            return Err(DataError::PseudoSoundscape {
                soundscape: w.rec,
                len: store.len(),
            });
        }
        let k = weights.len().max(1);
        let draw = WeightedDraw::new(
            targets
                .chunks(k)
                .map(|t| t.iter().map(|&v| f64::from(v)).sum::<f64>()),
        );
        Ok(Self {
            store,
            windows,
            targets,
            weights,
            draw,
        })
    }

    /// A window drawn with probability proportional to the sum of its soft targets (windows
    /// whose targets are all 0 are never drawn; when every window's are, uniformly).
    pub fn draw_weighted(&self, rng: &mut Rng) -> usize {
        self.draw.draw(rng)
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
    pub fn audio(&self, i: usize, n: usize) -> Result<Vec<f32>, DataError> {
        let w = self.windows.get(i).ok_or(DataError::NoPseudoWindow {
            index: i,
            len: self.len(),
        })?;
        self.store.head_range(w.rec, w.start, n)
    }

    /// `m` samples centred on window `i` of `n` samples (for a crop that a stretch or speed
    /// change brings back to `n`): from `start + n/2 − m/2` (at least 0), zero-padded past the
    /// end.
    pub fn audio_around(&self, i: usize, n: usize, m: usize) -> Result<Vec<f32>, DataError> {
        let w = self.windows.get(i).ok_or(DataError::NoPseudoWindow {
            index: i,
            len: self.len(),
        })?;
        let start = (w.start + n / 2).saturating_sub(m / 2);
        self.store.head_range(w.rec, start, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{MemoryStore, Segments};

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
        // Centred on the window: 5 samples around window 0 (2..5) start at 2 + 1 - 2 = 1; a
        // shorter read of 1 starts at 3.
        assert_eq!(
            set.audio_around(0, 3, 5).expect("audio"),
            vec![1.0, 2.0, 3.0, 4.0, 5.0]
        );
        assert_eq!(set.audio_around(0, 3, 1).expect("audio"), vec![3.0]);
        assert_eq!(set.audio(1, 4).expect("audio"), vec![8.0, 9.0, 0.0, 0.0]);
        assert_eq!(set.targets(1), &[0.5, 0.5]);
        // Window 0 weighs 1.0, window 1 weighs 1.0: drawn about equally; a window with no
        // probability is never drawn.
        let mut rng = Rng::new(1);
        let mut count = [0usize; 2];
        for _ in 0..2000 {
            count[set.draw_weighted(&mut rng)] += 1;
        }
        assert!(count[0] > 800 && count[1] > 800, "{count:?}");
        let store = MemoryStore(vec![Segments {
            head: vec![0.0; 10],
            tail: Vec::new(),
        }]);
        let skewed = PseudoSet::new(
            Box::new(store),
            (0..3).map(|start| PseudoWindow { rec: 0, start }).collect(),
            vec![0.0, 0.0, 0.9, 0.9, 0.1, 0.1],
            vec![1.0, 1.0],
        )
        .expect("set");
        let mut count = [0usize; 3];
        for _ in 0..5000 {
            count[skewed.draw_weighted(&mut rng)] += 1;
        }
        assert_eq!(count[0], 0, "{count:?}");
        let ratio = count[1] as f64 / count[2] as f64;
        assert!((ratio - 9.0).abs() < 1.5, "{count:?}");
        assert!(PseudoSet::new(
            Box::new(MemoryStore::default()),
            vec![PseudoWindow { rec: 0, start: 0 }],
            vec![0.0],
            vec![1.0],
        )
        .is_err());
    }
}
