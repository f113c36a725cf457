//! Training batches, built on rayon workers as plain `Vec<f32>` (a tch `Tensor` is `Send` but not
//! `Sync`; the training loop turns a finished [`Batch`] into tensors with `Tensor::from_slice`).
//!
//! Each sample: a random crop of [`AugmentConfig::crop_seconds`] from the recording's head or
//! tail segment (zero-padded when shorter), optionally stretched in time, changed in speed and
//! shifted in pitch ([`super::augment`]; the crop is read long enough to come out at its
//! length), a circular time shift, a random gain, an optional background clip, optional mixup
//! and time CutMix with a second crop (targets combined by maximum or by weight), optional
//! coloured noise, then the model card's frontend ([`Frontend::compute_clip`], the code
//! inference runs), an optional gamma curve and contrast change, and SpecAugment time and
//! frequency masks (filled with the image mean). An augmentation whose probability is 0 draws
//! nothing from the generator, so configs without the newer ones give the batches they gave.
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

use super::augment;
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
    /// Per-species loss weights of labelled clips ([`LossConfig::class_weight_power`]).
    class_weights: Option<Vec<f32>>,
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

/// Per-species loss weights `max(n, 1)^(−power)` scaled to a mean of 1; `None` when `power` is
/// 0 or there are no species.
pub fn class_weights(counts: &[usize], power: f64) -> Option<Vec<f32>> {
    if power == 0.0 || counts.is_empty() {
        return None;
    }
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| (n.max(1) as f64).powf(-power))
        .collect();
    let mean = raw.iter().sum::<f64>() / raw.len() as f64;
    Some(raw.iter().map(|w| (w / mean) as f32).collect())
}

/// An epoch's order of the training recordings `train` (`repeats` times as many as there are),
/// drawn with replacement with probability ∝ `n^(−balance)` for the `counts[primary]`
/// recordings of each one's primary label ([`crate::config::DataConfig::balance`]); negatives
/// ([`super::NO_LABEL`]) are drawn as one class of as many as there are.
pub fn balanced_order(
    ds: &Dataset,
    train: &[usize],
    counts: &[usize],
    balance: f64,
    repeats: usize,
    rng: &mut Rng,
) -> Vec<usize> {
    // Negatives (no primary label) count as a class of their own.
    let primary = |r: usize| ds.recordings.get(r).map(|rec| rec.primary);
    let negatives = train
        .iter()
        .filter(|&&r| primary(r).is_some_and(|p| p >= counts.len()))
        .count();
    let draw = super::WeightedDraw::new(train.iter().map(|&r| {
        let n = primary(r).map_or(1, |p| counts.get(p).copied().unwrap_or(negatives));
        (n.max(1) as f64).powf(-balance)
    }));
    (0..train.len() * repeats)
        .map(|_| train[draw.draw(rng)])
        .collect()
}

/// Combine a sample's targets `y` and loss weights `w` with a partner's (`y2`, `w2`): the
/// element-wise maximum of the targets with `max`, else `a · y + b · y2`; the smaller weight.
fn combine_targets(
    y: &mut [f32],
    w: &mut [f32],
    y2: &[f32],
    w2: &[f32],
    max: bool,
    (a, b): (f32, f32),
) {
    for ((yk, wk), (&t, &pw)) in y.iter_mut().zip(w.iter_mut()).zip(y2.iter().zip(w2)) {
        *yk = if max { yk.max(t) } else { a * *yk + b * t };
        *wk = wk.min(pw);
    }
}

/// True with probability `p`; draws from `rng` only when `p > 0`.
fn chance(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && rng.uniform() < p
}

/// Uniform in `[lo, hi]` (`lo` when the range is empty).
fn in_range(rng: &mut Rng, [lo, hi]: [f64; 2]) -> f64 {
    rng.range(lo, hi.max(lo))
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
            class_weights: None,
        }
    }

    /// Weigh each species' loss in labelled clips by `n^(−p)` for its `counts[k]` training
    /// recordings (`p` = [`LossConfig::class_weight_power`]; nothing changes when it is 0).
    pub fn with_class_counts(mut self, counts: &[usize]) -> Self {
        self.class_weights = class_weights(counts, self.loss.class_weight_power);
        self
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
        for &p in std::iter::once(&r.primary).chain(&r.positives) {
            if p < k {
                y[p] = 1.0 - eps;
                w[p] = 1.0;
            }
        }
        if let Some(cw) = &self.class_weights {
            w.iter_mut().zip(cw).for_each(|(w, c)| *w *= c);
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

    /// A random crop of a recording, or a pseudo-labelled window, with time stretch, speed,
    /// pitch shift, time shift and gain.
    fn clip(&self, item: Item, rng: &mut Rng) -> Result<Vec<f32>, DataError> {
        let n = self.crop_samples();
        let a = &self.aug;
        let stretch =
            chance(rng, a.time_stretch_prob).then(|| augment::log_uniform(rng, a.time_stretch));
        let speed = chance(rng, a.speed_prob)
            .then(|| augment::quantise_ratio(augment::log_uniform(rng, a.speed)));
        // Read as much as comes out at n samples after the stretch and the speed change.
        let m = (n as f64 * stretch.unwrap_or(1.0) * speed.unwrap_or(1.0)).round() as usize;
        let mut out = vec![0.0f32; m];
        match item {
            Item::Clip(rec) => {
                let seg = self.store.segments(rec)?;
                let src = if !seg.tail.is_empty() && rng.uniform() < a.tail_prob {
                    &seg.tail
                } else {
                    &seg.head
                };
                if src.len() > m {
                    let start = rng.below(src.len() - m + 1);
                    out.copy_from_slice(&src[start..start + m]);
                } else {
                    out[..src.len()].copy_from_slice(src);
                }
            }
            Item::Pseudo(i) => out = self.pseudo_set()?.audio_around(i, n, m)?,
        }
        if let Some(rate) = stretch {
            out = augment::time_stretch(&out, rate);
        }
        if let Some(step) = speed {
            out = augment::resample(&out, step, n);
        }
        out.resize(n, 0.0);
        if chance(rng, a.pitch_shift_prob) {
            out = augment::pitch_shift(&out, in_range(rng, a.pitch_shift_semitones));
        }
        let max_shift =
            (a.time_shift_seconds * f64::from(self.frontend.config().sample_rate)) as usize;
        time_shift(&mut out, max_shift, rng);
        let [lo, hi] = a.gain_db;
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
        combine_targets(
            y,
            w,
            p.targets(j),
            p.weights(),
            d.mix_label == MixLabel::Max,
            (1.0 - lam, lam),
        );
        Ok(Some((j, lam)))
    }

    /// The waveform of a sample and its targets and loss weights, before the frontend: the crop,
    /// pseudo-labelled mixing, background, mixup, time CutMix and noise.
    fn sample_audio(&self, item: Item, pool: &[Item], rng: &mut Rng) -> Result<Sample, DataError> {
        let aug = &self.aug;
        let mut clip = self.clip(item, rng)?;
        let (mut y, mut w) = self.item_targets(item)?;
        if let Item::Clip(_) = item {
            self.mix_pseudo(&mut clip, &mut y, &mut w, rng)?;
        }
        if !self.backgrounds.is_empty() && rng.uniform() < aug.background_prob {
            let bg = &self.backgrounds[rng.below(self.backgrounds.len())];
            if !bg.is_empty() {
                let [lo, hi] = aug.background_gain_db;
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
        if !pool.is_empty() && rng.uniform() < aug.mixup_prob {
            let other = pool[rng.below(pool.len())];
            let clip2 = self.clip(other, rng)?;
            let (y2, w2) = self.item_targets(other)?;
            let (a, b) = if aug.mixup_alpha > 0.0 {
                let lam = rng.beta(aug.mixup_alpha) as f32;
                (lam, 1.0 - lam)
            } else {
                (1.0, 1.0)
            };
            for (c, d) in clip.iter_mut().zip(&clip2) {
                *c = a * *c + b * d;
            }
            let (ya, yb) = if aug.mixup_alpha > 0.0 {
                (a, b)
            } else {
                (0.5, 0.5)
            };
            combine_targets(&mut y, &mut w, &y2, &w2, aug.mixup_max_labels, (ya, yb));
        }
        if !pool.is_empty() && chance(rng, aug.cutmix_prob) {
            let other = pool[rng.below(pool.len())];
            let clip2 = self.clip(other, rng)?;
            let (y2, w2) = self.item_targets(other)?;
            let fraction = in_range(rng, aug.cutmix_fraction);
            let share = augment::time_cutmix(&mut clip, &clip2, fraction, rng) as f32;
            // Nothing cut (the width rounded to 0 samples): the partner's labels stay out.
            if share > 0.0 {
                let weights = (1.0 - share, share);
                combine_targets(&mut y, &mut w, &y2, &w2, aug.cutmix_max_labels, weights);
            }
        }
        if chance(rng, aug.noise_prob) {
            let exponent = in_range(rng, aug.noise_exponent);
            let snr = in_range(rng, aug.noise_snr_db);
            augment::add_coloured_noise(&mut clip, exponent, snr, rng);
        }
        Ok((clip, y, w))
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
        let (clip, y, w) = self.sample_audio(item, pool, &mut rng)?;
        let aug = &self.aug;
        let mut image = self.frontend.compute_clip(&clip);
        if let Some(values) = image.as_slice_memory_order_mut() {
            if chance(&mut rng, aug.image_power_prob) {
                augment::image_power(values, augment::log_uniform(&mut rng, aug.image_power));
            }
            if chance(&mut rng, aug.image_contrast_prob) {
                let factor = augment::log_uniform(&mut rng, aug.image_contrast);
                augment::image_contrast(values, factor);
            }
        }
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
        mask(true, aug.time_masks, aug.time_mask_width);
        mask(false, aug.freq_masks, aug.freq_mask_width);
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
            sources: Vec::new(),
            recordings: vec![Recording {
                filename: "a.ogg".into(),
                path: PathBuf::from("a.ogg"),
                primary: 0,
                secondary: Vec::new(),
                positives: Vec::new(),
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

    fn recording(name: &str, primary: usize, secondary: Vec<usize>) -> Recording {
        Recording {
            filename: format!("{name}.ogg"),
            path: PathBuf::from(format!("{name}.ogg")),
            primary,
            secondary,
            positives: Vec::new(),
            rating: None,
            group: None,
        }
    }

    /// A dataset of species `a` and `b`.
    fn labels_ab(recordings: Vec<Recording>) -> Dataset {
        Dataset {
            root: PathBuf::from("/synthetic"),
            labels: vec!["a".into(), "b".into()],
            sources: Vec::new(),
            recordings,
        }
    }

    /// Two recordings of constant audio (0.1 and 0.3) or of a 1-kHz sine (`sine`), labels `a`
    /// and `b`, and a builder with every random augmentation off except the `overrides`.
    fn two_recordings(sine: bool, overrides: &[&str]) -> (Dataset, MemoryStore, TrainConfig) {
        let mut set: Vec<String> = [
            "augment.time_shift_seconds=0.0",
            "augment.gain_db=[0.0, 0.0]",
            "augment.mixup_prob=0.0",
            "augment.time_masks=0",
            "augment.freq_masks=0",
            "model.n_mels=32",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        set.extend(overrides.iter().map(|s| s.to_string()));
        let cfg = TrainConfig::from_toml("", "test", &set).expect("config");
        let ds = labels_ab(vec![
            recording("a", 0, Vec::new()),
            recording("b", 1, Vec::new()),
        ]);
        let n = 10 * 32_000;
        let audio = |level: f32| -> Vec<f32> {
            if sine {
                (0..n)
                    .map(|i| {
                        level * (std::f64::consts::TAU * 1000.0 * i as f64 / 32_000.0).sin() as f32
                    })
                    .collect()
            } else {
                vec![level; n]
            }
        };
        let store = MemoryStore(vec![
            Segments {
                head: audio(0.1),
                tail: Vec::new(),
            },
            Segments {
                head: audio(0.3),
                tail: Vec::new(),
            },
        ]);
        (ds, store, cfg)
    }

    fn builder<'a>(ds: &'a Dataset, store: &'a MemoryStore, cfg: &TrainConfig) -> BatchBuilder<'a> {
        let (fcfg, _) = crate::training::resolve_frontend(cfg).expect("frontend");
        BatchBuilder::new(
            ds,
            store,
            Frontend::new(fcfg).expect("frontend"),
            cfg.augment.clone(),
            cfg.loss.clone(),
            &[],
            1,
        )
    }

    #[test]
    fn cutmix_takes_one_stretch_of_the_partner() {
        for max in [true, false] {
            let (ds, store, cfg) = two_recordings(
                false,
                &[
                    "augment.cutmix_prob=1.0",
                    "augment.cutmix_fraction=[0.25, 0.25]",
                    &format!("augment.cutmix_max_labels={max}"),
                ],
            );
            let b = builder(&ds, &store, &cfg);
            let n = b.crop_samples();
            let (clip, y, w) = b
                .sample_audio(Item::Clip(0), &[Item::Clip(1)], &mut Rng::new(4))
                .expect("sample");
            let from_b: Vec<usize> = (0..n).filter(|&i| clip[i] == 0.3).collect();
            assert_eq!(from_b.len(), n / 4);
            assert_eq!(from_b[n / 4 - 1] - from_b[0], n / 4 - 1, "one stretch");
            assert_eq!(clip.iter().filter(|&&v| v == 0.1).count(), n - n / 4);
            assert_eq!(
                y,
                if max {
                    vec![1.0, 1.0]
                } else {
                    vec![0.75, 0.25]
                }
            );
            assert_eq!(w, vec![1.0, 1.0]);
        }
        // A share that rounds to no sample cuts nothing and adds no label.
        let (ds, store, cfg) = two_recordings(
            false,
            &[
                "augment.cutmix_prob=1.0",
                "augment.cutmix_fraction=[0.0, 0.0]",
            ],
        );
        let (clip, y, _) = builder(&ds, &store, &cfg)
            .sample_audio(Item::Clip(0), &[Item::Clip(1)], &mut Rng::new(4))
            .expect("sample");
        assert!(clip.iter().all(|&v| v == 0.1));
        assert_eq!(y, vec![1.0, 0.0]);
    }

    #[test]
    fn speed_stretch_and_pitch_change_what_they_should() {
        // Zero crossings of a 1-kHz sine over a 5-s crop: 10,000.
        let crossings = |x: &[f32]| {
            x[1000..x.len() - 1000]
                .windows(2)
                .filter(|p| (p[0] < 0.0) != (p[1] < 0.0))
                .count() as f64
                * x.len() as f64
                / (x.len() - 2000) as f64
        };
        for (set, want) in [
            (
                ["augment.speed_prob=1.0", "augment.speed=[1.2, 1.2]"],
                12_000.0,
            ),
            (
                ["augment.speed_prob=1.0", "augment.speed=[0.8, 0.8]"],
                8_000.0,
            ),
            (
                [
                    "augment.time_stretch_prob=1.0",
                    "augment.time_stretch=[0.8, 0.8]",
                ],
                10_000.0,
            ),
            (
                [
                    "augment.time_stretch_prob=1.0",
                    "augment.time_stretch=[1.25, 1.25]",
                ],
                10_000.0,
            ),
            (
                [
                    "augment.pitch_shift_prob=1.0",
                    "augment.pitch_shift_semitones=[-12.0, -12.0]",
                ],
                5_000.0,
            ),
        ] {
            let (ds, store, cfg) = two_recordings(true, &set);
            let b = builder(&ds, &store, &cfg);
            let clip = b.clip(Item::Clip(0), &mut Rng::new(2)).expect("clip");
            assert_eq!(clip.len(), b.crop_samples());
            let got = crossings(&clip);
            assert!(
                (got - want).abs() < 0.002 * want,
                "{set:?}: {got} crossings"
            );
            // Read long enough: the crop is sound to its last second (no zero padding).
            let tail = &clip[clip.len() - 32_000..];
            let rms = (tail.iter().map(|v| v * v).sum::<f32>() / tail.len() as f32).sqrt();
            assert!(rms > 0.05, "{set:?}: last second rms {rms}");
            assert!(clip.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn noise_and_image_augmentations_add_to_an_unchanged_sample() {
        let (ds, store, cfg) = two_recordings(true, &[]);
        let plain = builder(&ds, &store, &cfg);
        let (clean, _, _) = plain
            .sample_audio(Item::Clip(0), &[], &mut Rng::new(8))
            .expect("sample");
        let (_, _, noisy_cfg) = two_recordings(
            true,
            &[
                "augment.noise_prob=1.0",
                "augment.noise_snr_db=[10.0, 10.0]",
            ],
        );
        let (noisy, _, _) = builder(&ds, &store, &noisy_cfg)
            .sample_audio(Item::Clip(0), &[], &mut Rng::new(8))
            .expect("sample");
        let power = |x: &[f32]| x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
        let noise: Vec<f32> = noisy.iter().zip(&clean).map(|(a, b)| a - b).collect();
        let snr = 10.0 * (power(&clean) / power(&noise)).log10();
        assert!((snr - 10.0).abs() < 1e-3, "snr {snr}");

        // The model input of the same sample with only `overrides` on.
        let image_with = |overrides: &[&str]| {
            let (_, _, cfg) = two_recordings(true, overrides);
            builder(&ds, &store, &cfg)
                .sample(Item::Clip(0), &[], 0, 3)
                .expect("sample")
                .0
        };
        let image = image_with(&[]);
        let curved = image_with(&[
            "augment.image_power_prob=1.0",
            "augment.image_power=[2.0, 2.0]",
        ]);
        let mut want = image.clone();
        augment::image_power(&mut want, 2.0);
        assert_eq!(curved, want);
        assert_ne!(curved, image);
        let flat = image_with(&[
            "augment.image_contrast_prob=1.0",
            "augment.image_contrast=[0.5, 0.5]",
        ]);
        let mut want = image.clone();
        augment::image_contrast(&mut want, 0.5);
        assert_eq!(flat, want);
    }

    /// Augmentations whose probability is 0 draw nothing: with the default config (all of the
    /// newer ones off) a sample is what it was before they existed. The figures (sum and sum of
    /// squares of the model input, targets) were printed by this code at commit 7b74816.
    #[test]
    fn default_samples_are_those_before_the_newer_augmentations() {
        let cfg = TrainConfig::from_toml("", "test", &["model.n_mels=32".into()]).expect("config");
        let ds = labels_ab(vec![recording("a", 0, vec![1]), recording("b", 1, vec![0])]);
        let audio = |f: f64| -> Vec<f32> {
            (0..8 * 32_000)
                .map(|i| {
                    let t = i as f64;
                    let tone = (std::f64::consts::TAU * f * t / 32_000.0).sin();
                    (0.2 * tone * (1.0 + (t / 9000.0).sin())) as f32
                })
                .collect()
        };
        let store = MemoryStore(vec![
            Segments {
                head: audio(1000.0),
                tail: audio(3000.0),
            },
            Segments {
                head: audio(500.0),
                tail: Vec::new(),
            },
        ]);
        let bg = vec![audio(7000.0)];
        let (fcfg, _) = crate::training::resolve_frontend(&cfg).expect("frontend");
        let b = BatchBuilder::new(
            &ds,
            &store,
            Frontend::new(fcfg).expect("frontend"),
            cfg.augment.clone(),
            cfg.loss.clone(),
            &bg,
            7,
        );
        let before: [(f64, f64, [f32; 2]); 6] = [
            (-884.344, 1533.314, [1.0, 0.5]),
            (1102.069, 3906.744, [0.5, 1.0]),
            (-1072.780, 574.777, [1.0, 0.5]),
            (1685.992, 6092.134, [0.5, 1.0]),
            (-863.838, 315.729, [1.0, 0.5]),
            (415.304, 4278.968, [0.5, 1.0]),
        ];
        let pool = [Item::Clip(0), Item::Clip(1)];
        for (pos, (sum, squares, targets)) in before.into_iter().enumerate() {
            let (x, y, _) = b.sample(pool[pos % 2], &pool, 2, pos).expect("sample");
            let got_sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
            let got_squares: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
            assert!(
                (got_sum - sum).abs() < 0.01,
                "sample {pos}: sum {got_sum}, was {sum}"
            );
            assert!(
                (got_squares - squares).abs() < 0.01,
                "sample {pos}: sum of squares {got_squares}, was {squares}"
            );
            assert_eq!(y, targets);
        }
    }

    #[test]
    fn class_weights_and_balanced_order_follow_the_counts() {
        // Counts 1, 4, 0: weights n^-1 (0 counts as 1) = 1, 0.25, 1, mean 0.75.
        let w = class_weights(&[1, 4, 0], 1.0).expect("weights");
        let want = [4.0 / 3.0, 1.0 / 3.0, 4.0 / 3.0];
        assert!(
            w.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{w:?}"
        );
        assert_eq!(class_weights(&[1, 4], 0.0), None);

        // Labelled clips carry them as loss weights.
        let (ds, store, mut cfg) = two_recordings(false, &[]);
        cfg.loss.class_weight_power = 0.5;
        let b = builder(&ds, &store, &cfg).with_class_counts(&[9, 1]);
        // 9^-0.5 = 1/3 and 1, mean 2/3: 0.5 and 1.5.
        let (_, w) = b.targets(0);
        assert!(
            (w[0] - 0.5).abs() < 1e-6 && (w[1] - 1.5).abs() < 1e-6,
            "{w:?}"
        );

        // Balanced order: 90 recordings of species a, 10 of b; with balance 1 each species is
        // drawn about equally often, with 0.5 in the ratio sqrt(90) : sqrt(10) = 3 : 1.
        let ds = labels_ab(
            (0..100)
                .map(|i| recording("x", usize::from(i >= 90), Vec::new()))
                .collect(),
        );
        let train: Vec<usize> = (0..100).collect();
        let counts = crate::data::primary_counts(&ds, &train);
        assert_eq!(counts, vec![90, 10]);
        for (balance, want_b) in [(1.0, 0.5), (0.5, 0.25)] {
            let order = balanced_order(&ds, &train, &counts, balance, 200, &mut Rng::new(3));
            assert_eq!(order.len(), 20_000);
            let share_b = order.iter().filter(|&&r| r >= 90).count() as f64 / 20_000.0;
            assert!(
                (share_b - want_b).abs() < 0.015,
                "balance {balance}: {share_b}"
            );
        }
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
            sources: Vec::new(),
            recordings: vec![Recording {
                filename: "a/1.wav".into(),
                path: PathBuf::from("/x/a/1.wav"),
                primary: 0,
                secondary: Vec::new(),
                positives: Vec::new(),
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
