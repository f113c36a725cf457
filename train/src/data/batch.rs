//! Training batches, built on rayon workers as plain `Vec<f32>` (a tch `Tensor` is `Send` but not
//! `Sync`; the training loop turns a finished [`Batch`] into tensors with `Tensor::from_slice`).
//!
//! Each sample: a random crop of [`AugmentConfig::crop_seconds`] from the recording's head or
//! tail segment (zero-padded when shorter), a circular time shift, a random gain, an optional
//! background clip, optional mixup with a second crop (targets combined by maximum or by weight),
//! then the model card's frontend ([`Frontend::compute_clip`], the code inference runs) and
//! SpecAugment time and frequency masks (filled with the image mean).
//!
//! With a [`PseudoSet`] (distillation), a sample may instead be a pseudo-labelled soundscape
//! window ([`Item::Pseudo`]): the window's audio with the same shift and gain, and its soft
//! targets; mixup pairs samples of either kind.
//!
//! Everything random comes from a per-sample generator seeded from `(seed, epoch, position in the
//! epoch)`, so a batch is the same whatever the thread count or the order the workers ran in.

use birdclef_models::frontend::Frontend;
use birdclef_models::rng::Rng;
use rayon::prelude::*;

use super::soft::PseudoSet;
use super::{AudioStore, DataError, Dataset};
use crate::config::{AugmentConfig, DistillConfig, LossConfig, MixLabel, Sampler};

/// One training sample's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A random crop of a labelled recording (index into [`Dataset::recordings`]).
    Clip(usize),
    /// A pseudo-labelled window (index into [`PseudoSet::windows`]).
    Pseudo(usize),
}

/// One sample: its model input (flattened), its targets and its loss weights.
pub type Sample = (Vec<f32>, Vec<f32>, Vec<f32>);

/// A finished batch: `n` model inputs and their targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Inputs, row-major `[n, channels, mels, frames]`.
    pub x: Vec<f32>,
    /// Shape of `x`.
    pub shape: [usize; 4],
    /// Targets `[n, classes]`.
    pub y: Vec<f32>,
    /// Loss weights `[n, classes]` (0 where a secondary label is masked, else 1).
    pub w: Vec<f32>,
}

/// Builds training batches of a dataset (see the module documentation).
pub struct BatchBuilder<'a> {
    ds: &'a Dataset,
    store: &'a dyn AudioStore,
    frontend: Frontend,
    aug: AugmentConfig,
    loss: LossConfig,
    backgrounds: &'a [Vec<f32>],
    seed: u64,
    pseudo: Option<&'a PseudoSet>,
    distill: DistillConfig,
}

/// Mix three integers into one well-spread seed.
pub fn sample_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut r = Rng::new(seed ^ epoch.wrapping_mul(0xD134_2543_DE82_EF95));
    let a = r.next_u64();
    let mut r = Rng::new(a ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
    r.next_u64()
}

/// Shift `clip` circularly by a whole number of samples drawn uniformly from
/// `-max_shift..=max_shift` (positive: later in time); returns the shift.
fn time_shift(clip: &mut [f32], max_shift: usize, rng: &mut Rng) -> i64 {
    let n = clip.len();
    if max_shift == 0 || n == 0 {
        return 0;
    }
    let shift = rng.below(2 * max_shift + 1) as i64 - max_shift as i64;
    let by = (shift.unsigned_abs() as usize) % n;
    if shift >= 0 {
        clip.rotate_right(by);
    } else {
        clip.rotate_left(by);
    }
    shift
}

fn db_to_gain(db: f64) -> f32 {
    10f64.powf(db / 20.0) as f32
}

impl<'a> BatchBuilder<'a> {
    /// A builder for `ds` (audio from `store`), computing inputs with `frontend`.
    /// `backgrounds` are 32 kHz clips (any length) mixed in with `aug.background_prob`.
    pub fn new(
        ds: &'a Dataset,
        store: &'a dyn AudioStore,
        frontend: Frontend,
        aug: AugmentConfig,
        loss: LossConfig,
        backgrounds: &'a [Vec<f32>],
        seed: u64,
    ) -> Self {
        Self {
            ds,
            store,
            frontend,
            aug,
            loss,
            backgrounds,
            seed,
            pseudo: None,
            distill: DistillConfig::default(),
        }
    }

    /// Also draw samples from pseudo-labelled windows ([`Item::Pseudo`]), and mix labelled clips
    /// with them, as `distill` says ([`DistillConfig::mix_prob`], `sampler`).
    pub fn with_pseudo(mut self, pseudo: &'a PseudoSet, distill: DistillConfig) -> Self {
        self.pseudo = Some(pseudo);
        self.distill = distill;
        self
    }

    /// The frontend in use.
    pub fn frontend(&self) -> &Frontend {
        &self.frontend
    }

    /// Samples of one crop.
    pub fn crop_samples(&self) -> usize {
        (self.aug.crop_seconds * f64::from(self.frontend.config().sample_rate)).round() as usize
    }

    /// Clean targets and loss weights of recording `rec` (before mixup).
    pub fn targets(&self, rec: usize) -> (Vec<f32>, Vec<f32>) {
        let k = self.ds.labels.len();
        let eps = self.loss.label_smoothing as f32;
        let neg = eps / k as f32;
        let mut y = vec![neg; k];
        let mut w = vec![1.0f32; k];
        let r = &self.ds.recordings[rec];
        for &s in &r.secondary {
            if s < k && s != r.primary {
                if self.loss.secondary_mask {
                    w[s] = 0.0;
                } else {
                    y[s] = (self.loss.secondary_weight as f32 * (1.0 - eps)).max(neg);
                }
            }
        }
        if r.primary < k {
            y[r.primary] = 1.0 - eps;
            w[r.primary] = 1.0;
        }
        (y, w)
    }

    fn pseudo_set(&self) -> Result<&PseudoSet, DataError> {
        self.pseudo.ok_or(DataError::NoPseudoSet)
    }

    /// Targets and loss weights of a sample source (before mixup).
    fn item_targets(&self, item: Item) -> Result<(Vec<f32>, Vec<f32>), DataError> {
        match item {
            Item::Clip(rec) => Ok(self.targets(rec)),
            Item::Pseudo(i) => {
                let p = self.pseudo_set()?;
                Ok((p.targets(i).to_vec(), p.weights().to_vec()))
            }
        }
    }

    /// A random crop of a recording, or a pseudo-labelled window, with time shift and gain.
    fn clip(&self, item: Item, rng: &mut Rng) -> Result<Vec<f32>, DataError> {
        let n = self.crop_samples();
        let mut out = vec![0.0f32; n];
        match item {
            Item::Clip(rec) => {
                let seg = self.store.segments(rec)?;
                let src = if !seg.tail.is_empty() && rng.uniform() < self.aug.tail_prob {
                    &seg.tail
                } else {
                    &seg.head
                };
                if src.len() > n {
                    let start = rng.below(src.len() - n + 1);
                    out.copy_from_slice(&src[start..start + n]);
                } else {
                    out[..src.len()].copy_from_slice(src);
                }
            }
            Item::Pseudo(i) => out = self.pseudo_set()?.audio(i, n)?,
        }
        let max_shift =
            (self.aug.time_shift_seconds * f64::from(self.frontend.config().sample_rate)) as usize;
        time_shift(&mut out, max_shift, rng);
        let [lo, hi] = self.aug.gain_db;
        let g = db_to_gain(rng.range(lo, hi.max(lo + f64::EPSILON)));
        out.iter_mut().for_each(|v| *v *= g);
        Ok(out)
    }

    /// With probability [`DistillConfig::mix_prob`], mix a pseudo-labelled window into the
    /// labelled `clip`: `(1 - w) clip + w window` (the window with its own shift and gain), the
    /// targets the maximum or the weighted mean of the two, the loss weights the smaller. Returns
    /// the window and the weight when it mixed.
    fn mix_pseudo(
        &self,
        clip: &mut [f32],
        y: &mut [f32],
        w: &mut [f32],
        rng: &mut Rng,
    ) -> Result<Option<(usize, f32)>, DataError> {
        let d = &self.distill;
        let Some(p) = self.pseudo else {
            return Ok(None);
        };
        if d.mix_prob <= 0.0 || p.is_empty() || rng.uniform() >= d.mix_prob {
            return Ok(None);
        }
        let j = match d.sampler {
            Sampler::Weighted => p.draw_weighted(rng),
            Sampler::Uniform => rng.below(p.len()),
        };
        let window = self.clip(Item::Pseudo(j), rng)?;
        let lam = if d.mix_random {
            rng.range(0.0, d.mix_weight)
        } else {
            d.mix_weight
        } as f32;
        for (c, v) in clip.iter_mut().zip(&window) {
            *c = (1.0 - lam) * *c + lam * v;
        }
        for ((yk, wk), (&t, &pw)) in y
            .iter_mut()
            .zip(w.iter_mut())
            .zip(p.targets(j).iter().zip(p.weights()))
        {
            *yk = match d.mix_label {
                MixLabel::Max => yk.max(t),
                MixLabel::Weighted => (1.0 - lam) * *yk + lam * t,
            };
            *wk = wk.min(pw);
        }
        Ok(Some((j, lam)))
    }

    /// Sample `pos` of the epoch from `item`; `pool` is where mixup partners come from.
    pub fn sample(
        &self,
        item: Item,
        pool: &[Item],
        epoch: usize,
        pos: usize,
    ) -> Result<Sample, DataError> {
        let mut rng = Rng::new(sample_seed(self.seed, epoch as u64, pos as u64));
        let mut clip = self.clip(item, &mut rng)?;
        let (mut y, mut w) = self.item_targets(item)?;
        if let Item::Clip(_) = item {
            self.mix_pseudo(&mut clip, &mut y, &mut w, &mut rng)?;
        }
        if !self.backgrounds.is_empty() && rng.uniform() < self.aug.background_prob {
            let bg = &self.backgrounds[rng.below(self.backgrounds.len())];
            if !bg.is_empty() {
                let [lo, hi] = self.aug.background_gain_db;
                let g = db_to_gain(rng.range(lo, hi.max(lo + f64::EPSILON)));
                let start = if bg.len() > clip.len() {
                    rng.below(bg.len() - clip.len() + 1)
                } else {
                    0
                };
                for (c, b) in clip.iter_mut().zip(&bg[start..]) {
                    *c += g * b;
                }
            }
        }
        if !pool.is_empty() && rng.uniform() < self.aug.mixup_prob {
            let other = pool[rng.below(pool.len())];
            let clip2 = self.clip(other, &mut rng)?;
            let (y2, w2) = self.item_targets(other)?;
            let (a, b) = if self.aug.mixup_alpha > 0.0 {
                let lam = rng.beta(self.aug.mixup_alpha) as f32;
                (lam, 1.0 - lam)
            } else {
                (1.0, 1.0)
            };
            for (c, d) in clip.iter_mut().zip(&clip2) {
                *c = a * *c + b * d;
            }
            let (ya, yb) = if self.aug.mixup_alpha > 0.0 {
                (a, b)
            } else {
                (0.5, 0.5)
            };
            for k in 0..y.len() {
                y[k] = if self.aug.mixup_max_labels {
                    y[k].max(y2[k])
                } else {
                    ya * y[k] + yb * y2[k]
                };
                w[k] = w[k].min(w2[k]);
            }
        }
        let mut image = self.frontend.compute_clip(&clip);
        let (_, mels, frames) = image.dim();
        let mean = image.mean().unwrap_or(0.0);
        let mut mask = |time: bool, count: usize, width: usize| {
            let size = if time { frames } else { mels };
            for _ in 0..count {
                if width == 0 || size == 0 {
                    break;
                }
                let wdt = rng.below(width.min(size) + 1);
                let start = rng.below(size - wdt + 1);
                for mut ch in image.outer_iter_mut() {
                    for i in start..start + wdt {
                        if time {
                            ch.column_mut(i).fill(mean);
                        } else {
                            ch.row_mut(i).fill(mean);
                        }
                    }
                }
            }
        };
        mask(true, self.aug.time_masks, self.aug.time_mask_width);
        mask(false, self.aug.freq_masks, self.aug.freq_mask_width);
        Ok((image.iter().copied().collect(), y, w))
    }

    /// Batch `batch` of epoch `epoch`: samples for the recordings `order[batch*n..(batch+1)*n]`
    /// (positions in `order` seed the per-sample generators; mixup partners are drawn from all of
    /// `order`). Built in parallel on the current rayon pool.
    pub fn build(
        &self,
        order: &[usize],
        n: usize,
        epoch: usize,
        batch: usize,
    ) -> Result<Batch, DataError> {
        let items: Vec<Item> = order.iter().map(|&r| Item::Clip(r)).collect();
        self.build_items(&items, n, epoch, batch)
    }

    /// As [`BatchBuilder::build`], for samples of either source.
    pub fn build_items(
        &self,
        order: &[Item],
        n: usize,
        epoch: usize,
        batch: usize,
    ) -> Result<Batch, DataError> {
        let start = batch * n;
        let end = (start + n).min(order.len());
        let samples: Vec<_> = (start..end)
            .into_par_iter()
            .map(|pos| self.sample(order[pos], order, epoch, pos))
            .collect::<Result<_, DataError>>()?;
        let [c, m, f] = self.frontend.config().input_shape();
        let count = samples.len();
        let mut batch_out = Batch {
            x: Vec::with_capacity(count * c * m * f),
            shape: [count, c, m, f],
            y: Vec::with_capacity(count * self.ds.labels.len()),
            w: Vec::with_capacity(count * self.ds.labels.len()),
        };
        for (x, y, w) in samples {
            batch_out.x.extend_from_slice(&x);
            batch_out.y.extend_from_slice(&y);
            batch_out.w.extend_from_slice(&w);
        }
        Ok(batch_out)
    }
}

/// The samples of one epoch when a share of every batch is pseudo-labelled: `steps` batches of
/// `batch` items, each with `n_pseudo` pseudo-labelled windows after `batch - n_pseudo` labelled
/// items taken in turn from `labelled` (an epoch's shuffled order). The windows come from
/// successive random permutations of `0..pseudo_len`, so each is used about equally often, or,
/// with `weighted`, are drawn from it by [`PseudoSet::draw_weighted`].
pub fn epoch_items(
    labelled: &[usize],
    pseudo_len: usize,
    n_pseudo: usize,
    batch: usize,
    steps: usize,
    rng: &mut Rng,
    weighted: Option<&PseudoSet>,
) -> Vec<Item> {
    let n_pseudo = if pseudo_len == 0 {
        0
    } else {
        n_pseudo.min(batch)
    };
    let n_lab = batch - n_pseudo;
    let mut stream: Vec<usize> = Vec::new();
    let mut next_pseudo = move |rng: &mut Rng| {
        if let Some(p) = weighted {
            return p.draw_weighted(rng);
        }
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
    use std::path::PathBuf;

    use birdclef_models::frontend::Frontend;

    use super::*;
    use crate::config::TrainConfig;
    use crate::data::{MemoryStore, Recording, Segments};

    /// `augment.time_shift_seconds` is a circular shift uniform in ±T: an impulse in the middle
    /// of a crop moves both ways, never further than T, and every shift size is drawn.
    #[test]
    fn crops_shift_both_ways_within_the_bound() {
        let cfg = TrainConfig::from_toml(
            "",
            "test",
            &[
                "augment.time_shift_seconds=0.001".into(),
                "augment.gain_db=[0.0, 0.0]".into(),
            ],
        )
        .expect("config");
        let (fcfg, _) = crate::training::resolve_frontend(&cfg).expect("frontend");
        let rate = fcfg.sample_rate as usize;
        let max = rate / 1000; // 0.001 s
        let n = (cfg.augment.crop_seconds * rate as f64).round() as usize;
        let mut head = vec![0.0f32; n];
        head[n / 2] = 1.0;
        let ds = Dataset {
            root: PathBuf::from("/synthetic"),
            labels: vec!["a".into()],
            recordings: vec![Recording {
                filename: "a.ogg".into(),
                path: PathBuf::from("a.ogg"),
                primary: 0,
                secondary: Vec::new(),
                rating: None,
                group: None,
            }],
        };
        let store = MemoryStore(vec![Segments {
            head,
            tail: Vec::new(),
        }]);
        let b = BatchBuilder::new(
            &ds,
            &store,
            Frontend::new(fcfg).expect("frontend"),
            cfg.augment.clone(),
            cfg.loss.clone(),
            &[],
            1,
        );
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..2000 {
            let clip = b.clip(Item::Clip(0), &mut Rng::new(seed)).expect("clip");
            let at = clip
                .iter()
                .position(|&v| (v - 1.0).abs() < 1e-4)
                .expect("the impulse is kept");
            let shift = at as i64 - (n / 2) as i64;
            assert!(
                shift.unsigned_abs() as usize <= max,
                "shift {shift} samples exceeds ±{max}"
            );
            seen.insert(shift);
        }
        assert_eq!(
            seen.len(),
            2 * max + 1,
            "every shift in ±{max} is drawn: {seen:?}"
        );
        assert!(seen.first() == Some(&-(max as i64)) && seen.last() == Some(&(max as i64)));
    }

    #[test]
    fn every_batch_has_its_share_of_pseudo_labelled_windows() {
        let labelled: Vec<usize> = (0..40).collect();
        let mut rng = Rng::new(1);
        let items = epoch_items(&labelled, 7, 3, 8, 5, &mut rng, None);
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
        let items = epoch_items(&labelled, 0, 3, 8, 5, &mut rng, None);
        assert!(items.iter().all(|i| matches!(i, Item::Clip(_))));
    }

    #[test]
    fn clips_are_mixed_with_pseudo_labelled_windows_as_configured() {
        let mut cfg = TrainConfig::default();
        cfg.model.n_mels = Some(32);
        cfg.augment.time_shift_seconds = 0.0;
        cfg.augment.gain_db = [0.0, 0.0];
        let (fcfg, _) = crate::training::resolve_frontend(&cfg).expect("frontend");
        let n = (cfg.augment.crop_seconds * 32_000.0) as usize;
        let ds = Dataset {
            root: PathBuf::from("/x"),
            labels: vec!["a".into(), "b".into(), "c".into()],
            recordings: vec![Recording {
                filename: "a/1.wav".into(),
                path: PathBuf::from("/x/a/1.wav"),
                primary: 0,
                secondary: Vec::new(),
                rating: None,
                group: None,
            }],
        };
        let store = MemoryStore(vec![Segments {
            head: vec![1.0; n],
            tail: Vec::new(),
        }]);
        let soundscape = MemoryStore(vec![Segments {
            head: vec![3.0; 2 * n],
            tail: Vec::new(),
        }]);
        let set = PseudoSet::new(
            Box::new(soundscape),
            vec![
                crate::data::soft::PseudoWindow { rec: 0, start: 0 },
                crate::data::soft::PseudoWindow { rec: 0, start: n },
            ],
            vec![0.2, 0.9, 0.0, 0.0, 0.0, 0.0],
            vec![1.0, 1.0, 0.0],
        )
        .expect("set");
        let builder = |d: DistillConfig| {
            BatchBuilder::new(
                &ds,
                &store,
                Frontend::new(fcfg.clone()).expect("frontend"),
                cfg.augment.clone(),
                cfg.loss.clone(),
                &[],
                1,
            )
            .with_pseudo(&set, d)
        };
        let mix = |b: &BatchBuilder<'_>, seed: u64| {
            let mut clip = vec![1.0f32; n];
            let (mut y, mut w) = b.targets(0);
            let r = b
                .mix_pseudo(&mut clip, &mut y, &mut w, &mut Rng::new(seed))
                .expect("mix");
            (r, clip, y, w)
        };
        // Every clip, weight 0.5, targets the maximum; the weighted sampler never draws window 1,
        // whose targets are all 0.
        let max = DistillConfig {
            mix_prob: 1.0,
            sampler: Sampler::Weighted,
            ..DistillConfig::default()
        };
        for seed in 0..20 {
            let (r, clip, y, w) = mix(&builder(max.clone()), seed);
            assert_eq!(r, Some((0, 0.5)));
            assert!(
                clip.iter().all(|&v| (v - 2.0).abs() < 1e-6),
                "0.5 * 1 + 0.5 * 3"
            );
            assert_eq!(y, vec![1.0, 0.9, 0.0]);
            assert_eq!(
                w,
                vec![1.0, 1.0, 0.0],
                "species the pseudo-labels lack are masked"
            );
        }
        // Weighted targets, random weights in [0, 0.4].
        let weighted = DistillConfig {
            mix_prob: 1.0,
            mix_weight: 0.4,
            mix_random: true,
            mix_label: MixLabel::Weighted,
            sampler: Sampler::Weighted,
            ..DistillConfig::default()
        };
        let mut lams = Vec::new();
        for seed in 0..50 {
            let (r, clip, y, _) = mix(&builder(weighted.clone()), seed);
            let (_, lam) = r.expect("mixed");
            assert!((0.0..0.4).contains(&lam));
            assert!((clip[0] - (1.0 + 2.0 * lam)).abs() < 1e-5);
            assert!(
                (y[0] - (1.0 - lam + 0.2 * lam)).abs() < 1e-6 && (y[1] - 0.9 * lam).abs() < 1e-6
            );
            lams.push(lam);
        }
        assert!(
            lams.iter().any(|&l| l < 0.1) && lams.iter().any(|&l| l > 0.3),
            "{lams:?}"
        );
        // mix_prob 0.3: about 30 % of clips; none without the option.
        let some = DistillConfig {
            mix_prob: 0.3,
            ..DistillConfig::default()
        };
        let b = builder(some);
        let mixed = (0..1000).filter(|&s| mix(&b, s).0.is_some()).count();
        assert!((230..370).contains(&mixed), "{mixed} of 1000 mixed");
        let b = builder(DistillConfig::default());
        assert!((0..100).all(|s| mix(&b, s).0.is_none()));
    }
}
