//! The experiment configuration of `birdclef-train fit`: one TOML file (see `configs/`), every key
//! optional with the default documented on its field, and `key=value` overrides from the command
//! line (dotted keys, e.g. `optim.lr=3e-4`, `augment.gain_db=[-6.0, 6.0]`, `model.arch="mnasnet_100"`;
//! a value that is not valid TOML is taken as a string, so `model.arch=mnasnet_100` works too).
//!
//! Unknown keys are errors (a misspelt option must not silently fall back to its default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A complete experiment configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Network and input.
    pub model: ModelConfig,
    /// Optimiser, schedule, EMA, mixed precision.
    pub optim: OptimConfig,
    /// Loss and targets.
    pub loss: LossConfig,
    /// Waveform and spectrogram augmentation.
    pub augment: AugmentConfig,
    /// Folds, audio cache, batch-building threads.
    pub data: DataConfig,
    /// Seed, model selection, debugging.
    pub run: RunConfig,
    /// Distillation from pseudo-labelled soundscape windows (`birdclef-train distill`).
    pub distill: DistillConfig,
    /// Annotated soundscapes (`fit --annotations`).
    pub annotations: AnnotationsConfig,
}

/// Network and input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture spec: `efficientvit_b0`, `efficientnet_b0` or `mnasnet_100`, optionally with
    /// `+sed`. Default `efficientvit_b0`.
    pub arch: String,
    /// Frontend card (JSON) giving the log-mel parameters; a relative path is relative to the
    /// config file. Default: the built-in nvbird224 card with per-image standardisation (as
    /// `birdclef-train init`).
    pub card: Option<PathBuf>,
    /// Start from this checkpoint directory's weights (e.g. one made by `birdclef-train init
    /// --timm-weights`); its architecture and class count must match. Default: fresh weights.
    pub init: Option<PathBuf>,
    /// Override the card's mel band count (a reduced input for fast CPU runs). Default: the card's.
    pub n_mels: Option<usize>,
    /// Override the card's hop length in samples. Default: the card's.
    pub hop_length: Option<usize>,
    /// Override the card's FFT size (the window length is capped at it). Default: the card's.
    pub n_fft: Option<usize>,
    /// Override the card's input channel count. Default: the card's.
    pub channels: Option<usize>,
    /// Override the card's normalisation of each window's log-mel image: `none`,
    /// `image_min_max`, `image_standard` or `per_frequency` (each mel band to zero mean, unit
    /// variance over time). Default: the card's.
    pub normalize: Option<birdclef_models::frontend::Normalize>,
    /// Override the card's window length in seconds (what birdclef-infer scores, one row per
    /// window end; what the network sees unless there is a context, and then
    /// `augment.crop_seconds` must equal it).
    /// Default: the card's.
    pub window_seconds: Option<f64>,
    /// The model sees this many seconds centred on each window (2024 1st place: 10 s; 2025 1st
    /// place: 20 s), zero-padded past a recording's ends, and birdclef-infer still writes one
    /// row per window; `augment.crop_seconds` must equal it. Default: the card's (none: the
    /// window itself).
    pub context_seconds: Option<f64>,
    /// Stochastic depth: every residual branch is dropped per sample in training, with a rate
    /// rising linearly through the network to this (2025 1st place: 0.15 in self-training).
    /// Training only: eval outputs, checkpoints and ONNX are as without. Default 0.
    pub drop_path_rate: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: "efficientvit_b0".into(),
            card: None,
            init: None,
            n_mels: None,
            hop_length: None,
            n_fft: None,
            channels: None,
            normalize: None,
            window_seconds: None,
            context_seconds: None,
            drop_path_rate: 0.0,
        }
    }
}

/// Optimiser, learning-rate schedule, EMA and mixed precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Epochs. Default 20.
    pub epochs: usize,
    /// Training batch size (the last incomplete batch of an epoch is dropped when the epoch has
    /// at least one full batch). Default 32.
    pub batch_size: usize,
    /// Each epoch visits every training recording this many times (different random crops).
    /// Default 1.
    pub repeats: usize,
    /// Peak learning rate (AdamW). Default 1e-3.
    pub lr: f64,
    /// Final learning rate of the cosine schedule, as a fraction of `lr`. Default 0.01.
    pub min_lr_ratio: f64,
    /// Linear warm-up from 0 to `lr` over this many epochs (fractions allowed), then cosine
    /// decay to `lr * min_lr_ratio` at the last step. Default 1.0.
    pub warmup_epochs: f64,
    /// AdamW decoupled weight decay. Default 1e-2.
    pub weight_decay: f64,
    /// AdamW beta1. Default 0.9.
    pub beta1: f64,
    /// AdamW beta2. Default 0.999.
    pub beta2: f64,
    /// AdamW epsilon. Default 1e-8.
    pub eps: f64,
    /// Clip the global gradient L2 norm to this; 0 disables. Default 5.0.
    pub grad_clip_norm: f64,
    /// Exponential moving average of the weights with this decay (e.g. 0.999); the EMA weights
    /// are validated and saved. Default: none.
    pub ema_decay: Option<f64>,
    /// Mixed precision (fp16 autocast) with dynamic loss scaling, on CUDA only (ignored on the
    /// CPU). Default false.
    pub amp: bool,
    /// Initial loss scale for `amp`. Default 65536.
    pub loss_scale: f64,
    /// Multiply the loss scale by this after `loss_scale_growth_interval` finite steps. Default 2.
    pub loss_scale_growth: f64,
    /// Multiply the loss scale by this after a step with inf/NaN gradients (the step is
    /// skipped). Default 0.5.
    pub loss_scale_backoff: f64,
    /// Finite steps between loss-scale growths. Default 2000.
    pub loss_scale_growth_interval: usize,
    /// Scale the loss dynamically even without fp16 autocast (on the CPU too): a check of the
    /// loss-scale machinery, which only fp16 needs. Default false.
    pub force_loss_scale: bool,
    /// Learning-rate schedule after the warm-up: `cosine` (down to `lr · min_lr_ratio` at the
    /// last step), `step` (× `step_gamma` every `step_epochs` epochs), `exponential`
    /// (× `exp_gamma` every epoch), `plateau` (× `plateau_factor` when `plateau_metric` has not
    /// improved for more than `plateau_patience` epochs) or `constant`; the decaying ones never
    /// go below `lr · min_lr_ratio`. Default `cosine`.
    pub schedule: LrSchedule,
    /// Epochs between two decays of `step`. Default 10.
    pub step_epochs: usize,
    /// Factor of each decay of `step`. Default 0.1.
    pub step_gamma: f64,
    /// Factor per epoch of `exponential`. Default 0.9.
    pub exp_gamma: f64,
    /// The validation number `plateau` watches; unset: `run.best_metric`. Default none.
    pub plateau_metric: Option<BestMetric>,
    /// Factor of each decay of `plateau`. Default 0.1.
    pub plateau_factor: f64,
    /// Epochs without improvement that `plateau` tolerates before a decay. Default 2.
    pub plateau_patience: usize,
    /// `plateau` counts a relative change of more than this (in the better direction) as an
    /// improvement. Default 1e-4.
    pub plateau_threshold: f64,
}

/// The learning-rate schedule after the warm-up (see [`OptimConfig::schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Cosine from `lr` to `lr · min_lr_ratio` over the run.
    #[default]
    Cosine,
    /// Multiplied by `step_gamma` every `step_epochs` epochs.
    Step,
    /// Multiplied by `exp_gamma` every epoch.
    Exponential,
    /// Reduced on a plateau of a validation metric.
    Plateau,
    /// `lr` throughout.
    Constant,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 32,
            repeats: 1,
            lr: 1e-3,
            min_lr_ratio: 0.01,
            warmup_epochs: 1.0,
            weight_decay: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip_norm: 5.0,
            ema_decay: None,
            amp: false,
            loss_scale: 65536.0,
            loss_scale_growth: 2.0,
            loss_scale_backoff: 0.5,
            loss_scale_growth_interval: 2000,
            force_loss_scale: false,
            schedule: LrSchedule::Cosine,
            step_epochs: 10,
            step_gamma: 0.1,
            exp_gamma: 0.9,
            plateau_metric: None,
            plateau_factor: 0.1,
            plateau_patience: 2,
            plateau_threshold: 1e-4,
        }
    }
}

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Binary cross-entropy with logits, averaged over classes and samples.
    Bce,
    /// Focal loss: BCE × (1 − p_t)^gamma.
    Focal,
    /// Softmax cross-entropy over the classes, for single-label data: the targets (primary,
    /// weighted secondaries, smoothing, mixup) normalised to sum 1 per sample; the card says
    /// `softmax`, so birdclef-infer's probabilities of a window sum to 1.
    Softmax,
}

impl LossKind {
    /// How a model trained with this loss turns logits into probabilities.
    pub fn output_activation(self) -> birdclef_models::card::OutputActivation {
        match self {
            Self::Softmax => birdclef_models::card::OutputActivation::Softmax,
            Self::Bce | Self::Focal => birdclef_models::card::OutputActivation::Sigmoid,
        }
    }
}

/// Loss and targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// `bce`, `focal` or `softmax` (single-label data). Default `bce`.
    pub kind: LossKind,
    /// Focal-loss exponent. Default 2.0.
    pub focal_gamma: f64,
    /// Label smoothing ε: positive targets become 1 − ε, negative ones ε / K (K classes).
    /// Default 0.0.
    pub label_smoothing: f64,
    /// Target of a secondary label (before smoothing is applied to the negatives). 0 makes
    /// secondary labels negatives unless `secondary_mask`. Default 0.5.
    pub secondary_weight: f64,
    /// Leave secondary labels out of the loss altogether (loss weight 0) instead of giving them
    /// `secondary_weight`. Default false.
    pub secondary_mask: bool,
    /// Class-weighted loss: each species' loss weight is `n^(−p)` for its `n` training
    /// recordings (at least 1), scaled so that the weights average 1 over the species; 0 = every
    /// species alike, 1 = inverse frequency, 0.5 = inverse square root. Labelled clips only.
    /// Default 0.0.
    pub class_weight_power: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::Bce,
            focal_gamma: 2.0,
            label_smoothing: 0.0,
            secondary_weight: 0.5,
            secondary_mask: false,
            class_weight_power: 0.0,
        }
    }
}

/// Waveform and spectrogram augmentation (training only; validation sees plain windows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Length of a training crop in seconds; must equal the card's window (5 in BirdCLEF).
    /// Default 5.0.
    pub crop_seconds: f64,
    /// Probability of taking the crop from the tail segment (when the recording has one).
    /// Default 0.5.
    pub tail_prob: f64,
    /// Circular time shift of the crop, uniform in ±this many seconds (a whole number of
    /// samples from −T to +T, either way equally likely). Default 0.5.
    pub time_shift_seconds: f64,
    /// Random gain in dB, uniform in `[lo, hi]`. Default [-6, 6].
    pub gain_db: [f64; 2],
    /// Probability of adding a background clip (when backgrounds are given). Default 0.5.
    pub background_prob: f64,
    /// Gain of the background clip in dB, uniform in `[lo, hi]`. Default [-12, 0].
    pub background_gain_db: [f64; 2],
    /// Probability of mixing a second training crop into a sample. Default 0.5.
    pub mixup_prob: f64,
    /// Mixup weight λ ~ Beta(alpha, alpha) (waveforms λ·a + (1 − λ)·b); 0 = additive mixup
    /// (a + b). Default 0.0 (additive).
    pub mixup_alpha: f64,
    /// Combine the two targets with the element-wise maximum (true) or λ-weighted (false; with
    /// additive mixup the weights are 1/2 each). Default true.
    pub mixup_max_labels: bool,
    /// Number of SpecAugment time masks. Default 2.
    pub time_masks: usize,
    /// Maximum width of a time mask in frames. Default 20.
    pub time_mask_width: usize,
    /// Number of SpecAugment frequency masks. Default 2.
    pub freq_masks: usize,
    /// Maximum width of a frequency mask in mel bands. Default 16.
    pub freq_mask_width: usize,
    /// Probability of a speed change of the crop (tempo and pitch together, by band-limited
    /// resampling). Default 0.0.
    pub speed_prob: f64,
    /// Speed factor, log-uniform in `[lo, hi]` (> 1 faster and higher; rounded to 0.005).
    /// Default [0.8, 1.2].
    pub speed: [f64; 2],
    /// Probability of a time stretch of the crop (tempo only: librosa's phase vocoder).
    /// Default 0.0.
    pub time_stretch_prob: f64,
    /// Stretch rate, log-uniform in `[lo, hi]` (> 1 faster). Default [0.8, 1.2].
    pub time_stretch: [f64; 2],
    /// Probability of a pitch shift of the crop (length kept: stretch, then resample).
    /// Default 0.0.
    pub pitch_shift_prob: f64,
    /// Pitch shift in semitones, uniform in `[lo, hi]`. Default [-4.0, 4.0].
    pub pitch_shift_semitones: [f64; 2],
    /// Probability of adding coloured Gaussian noise to the sample. Default 0.0.
    pub noise_prob: f64,
    /// Spectral exponent β of the noise, uniform in `[lo, hi]`: power ∝ f^−β, 0 white, 1 pink,
    /// 2 brown. Default [0.0, 2.0].
    pub noise_exponent: [f64; 2],
    /// Signal-to-noise ratio of the noise in dB, uniform in `[lo, hi]`. Default [3.0, 30.0].
    pub noise_snr_db: [f64; 2],
    /// Probability of time CutMix: a stretch of the crop replaced by the same stretch of a
    /// second training crop. Default 0.0.
    pub cutmix_prob: f64,
    /// Share of the crop replaced, uniform in `[lo, hi]`. Default [0.2, 0.5].
    pub cutmix_fraction: [f64; 2],
    /// Targets after CutMix: the element-wise maximum (true) or weighted by the two shares
    /// (false). Default true.
    pub cutmix_max_labels: bool,
    /// Probability of a gamma curve on the model input (each value, as a share of the image's
    /// range, raised to the exponent). Default 0.0.
    pub image_power_prob: f64,
    /// Exponent of the gamma curve, log-uniform in `[lo, hi]`. Default [0.5, 2.0].
    pub image_power: [f64; 2],
    /// Probability of a contrast change of the model input (deviations from its mean
    /// scaled). Default 0.0.
    pub image_contrast_prob: f64,
    /// Contrast factor, log-uniform in `[lo, hi]`. Default [0.75, 1.333].
    pub image_contrast: [f64; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_seconds: 5.0,
            tail_prob: 0.5,
            time_shift_seconds: 0.5,
            gain_db: [-6.0, 6.0],
            background_prob: 0.5,
            background_gain_db: [-12.0, 0.0],
            mixup_prob: 0.5,
            mixup_alpha: 0.0,
            mixup_max_labels: true,
            time_masks: 2,
            time_mask_width: 20,
            freq_masks: 2,
            freq_mask_width: 16,
            speed_prob: 0.0,
            speed: [0.8, 1.2],
            time_stretch_prob: 0.0,
            time_stretch: [0.8, 1.2],
            pitch_shift_prob: 0.0,
            pitch_shift_semitones: [-4.0, 4.0],
            noise_prob: 0.0,
            noise_exponent: [0.0, 2.0],
            noise_snr_db: [3.0, 30.0],
            cutmix_prob: 0.0,
            cutmix_fraction: [0.2, 0.5],
            cutmix_max_labels: true,
            image_power_prob: 0.0,
            image_power: [0.5, 2.0],
            image_contrast_prob: 0.0,
            image_contrast: [0.75, 1.333],
        }
    }
}

/// Folds, audio cache and batch-building threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Number of folds. Default 5.
    pub n_folds: usize,
    /// The validation fold(s) to train, one model each. Default [0].
    pub folds: Vec<usize>,
    /// Seconds of audio kept per recording, at its head and tail (the audio cache). Default 30.
    pub cache_seconds: f64,
    /// Threads that build batches (rayon); 0 = one per core. Default 0.
    pub num_workers: usize,
    /// Batch size of validation (windows per forward pass). Default 64.
    pub val_batch_size: usize,
    /// Validation looks at at most this many 5-s windows of each recording's head. Default 6.
    pub val_max_windows: usize,
    /// Class-balanced sampling: an epoch's recordings are drawn with replacement, each with
    /// probability ∝ `n^(−b)` for the `n` training recordings of its primary label; 0 = every
    /// recording once per repeat, shuffled; 1 = every species equally often. The epoch keeps its
    /// length. Default 0.0.
    pub balance: f64,
    /// Recordings of extra data sources (`fit --extra-data`) fill each species up to this many
    /// in all, most recent first; the competition's own recordings all count and are all kept.
    /// Default 500.
    pub extra_cap_per_species: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            n_folds: 5,
            folds: vec![0],
            cache_seconds: 30.0,
            num_workers: 0,
            val_batch_size: 64,
            val_max_windows: 6,
            balance: 0.0,
            extra_cap_per_species: 500,
        }
    }
}

/// How pseudo-labelled windows enter a student's training (`birdclef-train distill`; ignored by
/// `fit`). A window's soft target for a species is the ensemble probability `p`, transformed as
/// `sigmoid(logit(p) / temperature)` then raised to `power`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// Share of every batch taken from pseudo-labelled windows (the rest are labelled clips; the
    /// number of steps per epoch stays that of the labelled data alone). NVBird used about as
    /// many pseudo-labelled as labelled samples. Default 0.5.
    pub pseudo_fraction: f64,
    /// Temperature of the soft targets (< 1 sharpens, > 1 softens). Default 1.
    pub temperature: f64,
    /// Power applied to the soft targets (> 1 pushes small probabilities towards 0). Default 1.
    pub power: f64,
    /// Windows whose largest (transformed) probability is below this are left out. Default 0.
    pub threshold: f64,
    /// Loss weight of pseudo-labelled samples relative to labelled ones. Default 1.
    pub weight: f64,
    /// Soft targets below this are set to 0, after the transform (2025 2nd place: 0.1).
    /// Default 0.
    pub floor: f64,
    /// How pseudo-labelled windows are drawn: `uniform` (each about equally often) or
    /// `weighted`, with a weight equal to the sum of the window's soft targets, so windows with
    /// confident calls come more often (2025 1st place). Default `uniform`.
    pub sampler: Sampler,
    /// Probability that a labelled clip is mixed with a pseudo-labelled window (2025 1st place:
    /// every clip, 1.0). Mixes are independent of `pseudo_fraction`. Default 0.
    pub mix_prob: f64,
    /// Weight `w` of the window in a mix, `(1 - w) clip + w window`. Default 0.5.
    pub mix_weight: f64,
    /// Draw each mix's weight uniformly in `[0, mix_weight]` instead. Default false.
    pub mix_random: bool,
    /// The targets of a mix: `max` of the two (2025 1st place), or `weighted` by the mix's
    /// weights. Default `max`.
    pub mix_label: MixLabel,
    /// Live knowledge distillation: the loss is `(1 - w)` times the label loss plus `w` times the
    /// BCE of the student's `sigmoid(logits / kd_temperature)` against the teachers' (mean over
    /// teachers), the teachers run in eval mode on the same augmented batch. Applies to `fit`
    /// and `distill` when `kd_teachers` is not empty. Default 0.
    pub kd_weight: f64,
    /// Temperature of the softened sigmoids of knowledge distillation. Default 1.
    pub kd_temperature: f64,
    /// Teachers for knowledge distillation: checkpoint directories, or run directories (their
    /// `fold<N>/best`); any architecture whose card has the student's labels and frontend.
    /// Relative paths are relative to the config file. Default: empty.
    pub kd_teachers: Vec<PathBuf>,
}

/// How [`DistillConfig::sampler`] draws pseudo-labelled windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Successive random permutations (for mixes: uniform draws).
    #[default]
    Uniform,
    /// With replacement, weighted by the sum of each window's soft targets.
    Weighted,
}

/// The targets of a mix of a clip and a pseudo-labelled window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MixLabel {
    /// The larger of the two targets, per species.
    #[default]
    Max,
    /// `(1 - w) y_clip + w y_window`.
    Weighted,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            pseudo_fraction: 0.5,
            temperature: 1.0,
            power: 1.0,
            threshold: 0.0,
            weight: 1.0,
            floor: 0.0,
            sampler: Sampler::Uniform,
            mix_prob: 0.0,
            mix_weight: 0.5,
            mix_random: false,
            mix_label: MixLabel::Max,
            kd_weight: 0.0,
            kd_temperature: 1.0,
            kd_teachers: Vec::new(),
        }
    }
}

impl DistillConfig {
    /// Whether pseudo-labelled windows take part in training at all.
    pub fn uses_pseudo_labels(&self) -> bool {
        self.pseudo_fraction > 0.0 || self.mix_prob > 0.0
    }

    /// Whether live knowledge distillation is on.
    pub fn uses_kd(&self) -> bool {
        self.kd_weight > 0.0 && !self.kd_teachers.is_empty()
    }

    /// The soft target of an ensemble probability `p`: transformed, then floored.
    pub fn soft_target(&self, p: f32) -> f32 {
        let q = self.transform(p);
        if f64::from(q) < self.floor {
            0.0
        } else {
            q
        }
    }

    /// The soft target of an ensemble probability `p`.
    pub fn transform(&self, p: f32) -> f32 {
        let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
        let q = if (self.temperature - 1.0).abs() > 0.0 {
            let logit = (p / (1.0 - p)).ln();
            f64::from(birdclef_models::ir::sigmoid(
                (logit / self.temperature) as f32,
            ))
        } else {
            p
        };
        q.powf(self.power) as f32
    }
}

/// Which validation number picks the `best/` checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// Macro ROC-AUC (higher is better).
    ValMacroRocAuc,
    /// Padded cmAP (higher is better).
    ValCmap,
    /// Validation loss (lower is better).
    ValLoss,
    /// Macro F1 (higher is better).
    ValMacroF1,
    /// Support-weighted F1 (higher is better).
    ValWeightedF1,
}

impl BestMetric {
    /// Its name in configs and `history.csv` (`val_macro_roc_auc`, `val_cmap`, `val_loss`,
    /// `val_macro_f1`, `val_weighted_f1`).
    pub fn name(self) -> &'static str {
        match self {
            BestMetric::ValMacroRocAuc => "val_macro_roc_auc",
            BestMetric::ValCmap => "val_cmap",
            BestMetric::ValLoss => "val_loss",
            BestMetric::ValMacroF1 => "val_macro_f1",
            BestMetric::ValWeightedF1 => "val_weighted_f1",
        }
    }
}

/// Annotated soundscapes (`birdclef-train fit --annotations TABLE --audio DIR`; ignored
/// otherwise): the table's columns, the windows cut around each annotation, negatives, the class
/// filter and the split. See `crate::data::annotated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnotationsConfig {
    /// File name column (relative to `--audio`). Default `filename`.
    pub filename_column: String,
    /// Start column, in seconds. Default `start`.
    pub start_column: String,
    /// End column, in seconds (empty or equal to the start: a point annotation). Default `end`.
    pub end_column: String,
    /// Duration column, in seconds, read instead of the end when set. Default none.
    pub duration_column: Option<String>,
    /// Label column. Default `label`.
    pub label_column: String,
    /// Group column (time and place), optional in the table; without it every file is its own
    /// group. Default `group`.
    pub group_column: String,
    /// Species column of Raven selection tables. Default `Species`.
    pub raven_species_column: String,
    /// The label order: a CSV with a `primary_label` column (taxonomy.csv); annotations of
    /// other labels are dropped. A relative path is relative to the config file. Default none
    /// (the table's labels, sorted).
    pub labels: Option<PathBuf>,
    /// Labels with fewer annotations are dropped (the Kenya setup: 10). Default 1.
    pub min_count: usize,
    /// Training windows are cut up to this far off the annotation's centre, uniformly;
    /// validation and test windows are centred. Default 0.5.
    pub jitter_seconds: f64,
    /// Negative windows (no species) per annotated window, cut from stretches that no
    /// annotation touches. Default 0.0.
    pub negatives: f64,
    /// `folds`: `data.n_folds` folds, stratified by species and grouped, `data.folds`
    /// validated; `ratios`: one train/val/test split by `ratios`, the test split scored once
    /// with the best checkpoint at the end. Default `folds`.
    pub split: SplitMode,
    /// Train, validation and test shares with `split = "ratios"`. Default [0.7, 0.15, 0.15].
    pub ratios: [f64; 3],
}

impl Default for AnnotationsConfig {
    fn default() -> Self {
        Self {
            filename_column: "filename".into(),
            start_column: "start".into(),
            end_column: "end".into(),
            duration_column: None,
            label_column: "label".into(),
            group_column: "group".into(),
            raven_species_column: "Species".into(),
            labels: None,
            min_count: 1,
            jitter_seconds: 0.5,
            negatives: 0.0,
            split: SplitMode::Folds,
            ratios: [0.7, 0.15, 0.15],
        }
    }
}

impl AnnotationsConfig {
    /// The table's column names.
    pub fn columns(&self) -> crate::data::annotations::AnnotationColumns {
        crate::data::annotations::AnnotationColumns {
            filename: self.filename_column.clone(),
            start: self.start_column.clone(),
            end: self.end_column.clone(),
            duration: self.duration_column.clone(),
            label: self.label_column.clone(),
            group: self.group_column.clone(),
            raven_species: self.raven_species_column.clone(),
        }
    }
}

/// How annotated soundscapes are split ([`AnnotationsConfig::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMode {
    /// Group-stratified folds.
    Folds,
    /// One train/val/test split.
    Ratios,
}

/// Seed, model selection and debugging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of initialisation, shuffling, augmentation and dropout. Default 42.
    pub seed: u64,
    /// `val_macro_roc_auc`, `val_cmap`, `val_loss`, `val_macro_f1` or `val_weighted_f1`.
    /// Default `val_macro_roc_auc`.
    pub best_metric: BestMetric,
    /// Validation F1 predicts a species where its probability is at least this. Default 0.5.
    pub f1_threshold: f64,
    /// Validation F1 predicts each window's most probable species only (single-label data)
    /// instead of thresholding. Default false.
    pub f1_argmax: bool,
    /// Stop each epoch after this many batches and validate on at most 4× as many windows
    /// (a quick end-to-end check). Default: none.
    pub debug_batches: Option<usize>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            best_metric: BestMetric::ValMacroRocAuc,
            f1_threshold: 0.5,
            f1_argmax: false,
            debug_batches: None,
        }
    }
}

impl RunConfig {
    /// How F1 decides a window's predicted species ([`RunConfig::f1_argmax`],
    /// [`RunConfig::f1_threshold`]).
    pub fn f1_decision(&self) -> birdclef_models::metrics::Decision {
        if self.f1_argmax {
            birdclef_models::metrics::Decision::Argmax
        } else {
            birdclef_models::metrics::Decision::Threshold(self.f1_threshold)
        }
    }
}

/// A configuration that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// TOML syntax or an unknown / mistyped key.
    #[error("{origin}: {reason}")]
    Parse {
        /// The file or override.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Values that cannot work together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl TrainConfig {
    /// Parse TOML text (`origin` names it in errors) and apply `overrides` (`key=value`).
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let cfg: Self = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: if overrides.is_empty() {
                    origin.to_string()
                } else {
                    format!("{origin} with overrides {overrides:?}")
                },
                reason: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a config file, apply `overrides`, and make relative paths in it relative to the
    /// file's directory.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut cfg = Self::from_toml(&text, &path.display().to_string(), overrides)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.model.card,
            &mut cfg.model.init,
            &mut cfg.annotations.labels,
        ]
        .into_iter()
        .flatten()
        .chain(cfg.distill.kd_teachers.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// The configuration as TOML (written next to every run as `config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    }

    /// Check values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let o = &self.optim;
        if o.epochs == 0 || o.batch_size == 0 || o.repeats == 0 {
            return bad(
                "optim.epochs, optim.batch_size and optim.repeats must be at least 1".into(),
            );
        }
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad(format!("optim.lr must be positive, got {}", o.lr));
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) || o.warmup_epochs < 0.0 {
            return bad("optim.min_lr_ratio must be in [0, 1], optim.warmup_epochs ≥ 0".into());
        }
        if let Some(d) = o.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad(format!("optim.ema_decay must be in [0, 1), got {d}"));
            }
        }
        if o.loss_scale <= 0.0
            || o.loss_scale_growth < 1.0
            || !(0.0..1.0).contains(&o.loss_scale_backoff)
        {
            return bad("optim.loss_scale > 0, loss_scale_growth ≥ 1, loss_scale_backoff in (0, 1) are required".into());
        }
        if o.step_epochs == 0
            || !(o.step_gamma > 0.0 && o.step_gamma <= 1.0)
            || !(o.exp_gamma > 0.0 && o.exp_gamma <= 1.0)
            || !(o.plateau_factor > 0.0 && o.plateau_factor < 1.0)
            || !(0.0..1.0).contains(&o.plateau_threshold)
        {
            return bad("optim.step_epochs ≥ 1, step_gamma and exp_gamma in (0, 1], plateau_factor in (0, 1) and plateau_threshold in [0, 1) are required".into());
        }
        let l = &self.loss;
        if !(0.0..1.0).contains(&l.label_smoothing) || !(0.0..=1.0).contains(&l.secondary_weight) {
            return bad(
                "loss.label_smoothing must be in [0, 1), loss.secondary_weight in [0, 1]".into(),
            );
        }
        let a = &self.augment;
        for (name, p) in [
            ("tail_prob", a.tail_prob),
            ("background_prob", a.background_prob),
            ("mixup_prob", a.mixup_prob),
            ("speed_prob", a.speed_prob),
            ("time_stretch_prob", a.time_stretch_prob),
            ("pitch_shift_prob", a.pitch_shift_prob),
            ("noise_prob", a.noise_prob),
            ("cutmix_prob", a.cutmix_prob),
            ("image_power_prob", a.image_power_prob),
            ("image_contrast_prob", a.image_contrast_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("augment.{name} must be a probability, got {p}"));
            }
        }
        for (name, [lo, hi], min, max) in [
            ("gain_db", a.gain_db, -120.0, 120.0),
            ("background_gain_db", a.background_gain_db, -120.0, 120.0),
            ("speed", a.speed, 0.25, 4.0),
            ("time_stretch", a.time_stretch, 0.25, 4.0),
            (
                "pitch_shift_semitones",
                a.pitch_shift_semitones,
                -24.0,
                24.0,
            ),
            ("noise_exponent", a.noise_exponent, -2.0, 4.0),
            ("noise_snr_db", a.noise_snr_db, -60.0, 120.0),
            ("cutmix_fraction", a.cutmix_fraction, 0.0, 1.0),
            ("image_power", a.image_power, 0.05, 20.0),
            ("image_contrast", a.image_contrast, 0.05, 20.0),
        ] {
            if !(lo <= hi && lo >= min && hi <= max) {
                return bad(format!(
                    "augment.{name} must be a range [low, high] within [{min}, {max}], got [{lo}, {hi}]"
                ));
            }
        }
        if a.mixup_alpha < 0.0 || a.time_shift_seconds < 0.0 || a.crop_seconds <= 0.0 {
            return bad("augment.mixup_alpha, time_shift_seconds ≥ 0 and crop_seconds > 0".into());
        }
        if !(0.0..=1.0).contains(&self.run.f1_threshold) {
            return bad(format!(
                "run.f1_threshold must be in [0, 1], got {}",
                self.run.f1_threshold
            ));
        }
        if !(0.0..=4.0).contains(&l.class_weight_power) {
            return bad(format!(
                "loss.class_weight_power must be in [0, 4], got {}",
                l.class_weight_power
            ));
        }
        let d = &self.data;
        if !(0.0..=4.0).contains(&d.balance) {
            return bad(format!("data.balance must be in [0, 4], got {}", d.balance));
        }
        if d.n_folds < 2 {
            return bad(format!(
                "data.n_folds must be at least 2, got {}",
                d.n_folds
            ));
        }
        if let Some(f) = d.folds.iter().find(|&&f| f >= d.n_folds) {
            return bad(format!(
                "data.folds has fold {f}, but n_folds is {}",
                d.n_folds
            ));
        }
        if d.val_batch_size == 0 || d.val_max_windows == 0 || d.cache_seconds <= 0.0 {
            return bad(
                "data.val_batch_size, val_max_windows and cache_seconds must be positive".into(),
            );
        }
        let t = &self.distill;
        if !(0.0..1.0).contains(&t.pseudo_fraction) {
            return bad(format!(
                "distill.pseudo_fraction must be in [0, 1), got {}",
                t.pseudo_fraction
            ));
        }
        if !(t.temperature > 0.0
            && t.power > 0.0
            && t.weight >= 0.0
            && (0.0..=1.0).contains(&t.threshold))
        {
            return bad(
                "distill.temperature and power must be positive, weight ≥ 0, threshold in [0, 1]"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&t.floor)
            || !(0.0..=1.0).contains(&t.mix_prob)
            || !(0.0..=1.0).contains(&t.mix_weight)
        {
            return bad("distill.floor, mix_prob and mix_weight must be in [0, 1]".into());
        }
        if !(0.0..=1.0).contains(&t.kd_weight) || t.kd_temperature <= 0.0 {
            return bad("distill.kd_weight must be in [0, 1], kd_temperature positive".into());
        }
        let an = &self.annotations;
        if !(an.jitter_seconds.is_finite()
            && an.jitter_seconds >= 0.0
            && (0.0..=100.0).contains(&an.negatives))
        {
            return bad(format!(
                "annotations.jitter_seconds must be ≥ 0 and annotations.negatives in [0, 100], got {} and {}",
                an.jitter_seconds, an.negatives
            ));
        }
        if an.ratios.iter().any(|r| !(r.is_finite() && *r >= 0.0))
            || an.ratios[0] <= 0.0
            || an.ratios[1] <= 0.0
        {
            return bad(format!(
                "annotations.ratios must be [train, val, test] shares ≥ 0 with train and val above 0, got {:?}",
                an.ratios
            ));
        }
        if self.loss.kind == LossKind::Softmax {
            if self.distill.kd_weight > 0.0 {
                return bad("loss.kind = \"softmax\" with knowledge distillation (distill.kd_weight > 0) is not supported: the teachers' targets are per-class sigmoids".into());
            }
            if an.negatives > 0.0 {
                return bad("loss.kind = \"softmax\" needs a species in every window: set annotations.negatives = 0 (a negative window has no class to normalise to)".into());
            }
        }
        for (name, v) in [
            ("window_seconds", self.model.window_seconds),
            ("context_seconds", self.model.context_seconds),
        ] {
            if let Some(w) = v {
                if !(w.is_finite() && w > 0.0) {
                    return bad(format!("model.{name} must be positive, got {w}"));
                }
            }
        }
        if !(0.0..1.0).contains(&self.model.drop_path_rate) {
            return bad(format!(
                "model.drop_path_rate must be in [0, 1), got {}",
                self.model.drop_path_rate
            ));
        }
        if self.run.debug_batches == Some(0) {
            return bad("run.debug_batches must be at least 1".into());
        }
        Ok(())
    }
}

/// Set a dotted key of `table` from `key=value` (the value parsed as TOML, else a string).
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::Parse {
        origin: format!("override {spec:?}"),
        reason,
    };
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| err("expected key=value".into()))?;
    let key = key.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("bad key {key:?}")));
    }
    let (last, scopes) = parts.split_last().ok_or_else(|| err("empty key".into()))?;
    let mut t = table;
    for s in scopes {
        t = t
            .entry(s.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| err(format!("{s} is not a table")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let cfg = TrainConfig::from_toml("", "empty", &[]).expect("defaults");
        assert_eq!(cfg, TrainConfig::default());
        let cfg = TrainConfig::from_toml(
            "[optim]\nlr = 0.01\n",
            "t",
            &[
                "optim.epochs=3".into(),
                "model.arch=mnasnet_100".into(),
                "augment.gain_db=[-1.0, 2.0]".into(),
                "loss.kind=focal".into(),
                "optim.ema_decay=0.99".into(),
            ],
        )
        .expect("overrides");
        assert_eq!(cfg.optim.lr, 0.01);
        assert_eq!(cfg.optim.epochs, 3);
        assert_eq!(cfg.model.arch, "mnasnet_100");
        assert_eq!(cfg.augment.gain_db, [-1.0, 2.0]);
        assert_eq!(cfg.loss.kind, LossKind::Focal);
        assert_eq!(cfg.optim.ema_decay, Some(0.99));
        let back = TrainConfig::from_toml(&cfg.to_toml(), "roundtrip", &[]).expect("roundtrip");
        assert_eq!(back, cfg);
    }

    #[test]
    fn rejects_unknown_and_invalid() {
        assert!(TrainConfig::from_toml("[optim]\nlrr = 1\n", "t", &[]).is_err());
        assert!(TrainConfig::from_toml("", "t", &["data.folds=[7]".into()]).is_err());
        assert!(TrainConfig::from_toml("", "t", &["optim.epochs".into()]).is_err());
        for (set, says) in [
            ("augment.speed=[1.3, 1.1]", "augment.speed must be a range"),
            (
                "augment.time_stretch=[0.0, 1.2]",
                "augment.time_stretch must be a range",
            ),
            (
                "augment.cutmix_fraction=[0.5, 1.5]",
                "augment.cutmix_fraction",
            ),
            (
                "augment.noise_prob=1.5",
                "augment.noise_prob must be a probability",
            ),
            (
                "augment.gain_db=[6.0, -6.0]",
                "augment.gain_db must be a range",
            ),
        ] {
            let err = TrainConfig::from_toml("", "t", &[set.into()]).expect_err(set);
            assert!(err.to_string().contains(says), "{set}: {err}");
        }
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for name in ["birdclef-mini.toml", "debug.toml"] {
            TrainConfig::load(&dir.join(name), &[]).expect(name);
        }
    }

    #[test]
    fn every_documented_default_is_the_default() {
        use crate::doc_defaults::{agrees, documented_defaults};
        let all = toml::Value::try_from(TrainConfig::default()).expect("toml");
        let sections = [
            ("ModelConfig", "model"),
            ("OptimConfig", "optim"),
            ("LossConfig", "loss"),
            ("AugmentConfig", "augment"),
            ("DataConfig", "data"),
            ("RunConfig", "run"),
            ("DistillConfig", "distill"),
            ("AnnotationsConfig", "annotations"),
        ];
        let docs = documented_defaults(include_str!("config.rs"));
        let mut checked = 0;
        for (st, field, text) in &docs {
            let Some((_, key)) = sections.iter().find(|(s, _)| s == st) else {
                continue;
            };
            let value = all.get(key).and_then(|t| t.get(field));
            assert!(
                agrees(text, value),
                "{key}.{field}: documented default {text:?}, Default gives {value:?}"
            );
            checked += 1;
        }
        // Every field of every section has a documented default that was checked.
        let fields: usize = sections
            .iter()
            .map(|(_, key)| {
                let section = all
                    .get(key)
                    .and_then(toml::Value::as_table)
                    .map_or(0, |t| t.len());
                let unset = docs
                    .iter()
                    .filter(|(s, f, _)| {
                        sections.iter().any(|(st, k)| st == s && k == key)
                            && all.get(key).and_then(|t| t.get(f)).is_none()
                    })
                    .count();
                section + unset
            })
            .sum();
        assert_eq!(checked, fields, "{docs:#?}");
        assert!(checked > 50, "only {checked} defaults found");
    }

    #[test]
    fn a_wrong_documented_default_is_noticed() {
        use crate::doc_defaults::agrees;
        let v = toml::Value::Float(0.5);
        assert!(agrees("0.5", Some(&v)));
        assert!(!agrees("0.25", Some(&v)));
        assert!(agrees(
            "[-6, 6]",
            Some(&toml::Value::Array(vec![
                toml::Value::Float(-6.0),
                toml::Value::Float(6.0)
            ]))
        ));
        assert!(!agrees(
            "[-6, 0]",
            Some(&toml::Value::Array(vec![
                toml::Value::Float(-6.0),
                toml::Value::Float(6.0)
            ]))
        ));
        assert!(agrees("`bce`", Some(&toml::Value::String("bce".into()))));
        assert!(agrees("none", None));
        assert!(!agrees("5", None));
    }
}
