//! The log-mel frontend: 32 kHz mono audio → `[windows, channels, mels, frames]` model input.
//!
//! Semantics follow librosa 0.11 so that a user's Python pipeline and this crate give the same
//! numbers (parity tests: `models/tests/frontend_golden.rs`):
//!
//! 1. The soundscape is cut into consecutive, non-overlapping windows of `window_seconds`
//!    ([`WindowPolicy`] decides the last, partial one; partial windows are zero-padded).
//! 2. Each window is an independent clip: `librosa.stft(clip, n_fft, hop_length, win_length,
//!    window="hann", center, pad_mode)`, magnitude raised to `power`.
//! 3. `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk, norm)` weights (computed in `f64`,
//!    stored as `f32` exactly as librosa does) are applied.
//! 4. Optional decibels: `librosa.power_to_db(S, ref, amin, top_db)`, where `top_db` and
//!    `ref = "max"` act per window.
//! 5. Optional normalisation per image or per mel band, then the image is repeated over
//!    `channels`.
//!
//! The STFT runs in `f32`. (librosa's runs in `f64`, since it multiplies the `float32` clip by a
//! `float64` window; measured on real audio, `f32` stays within 7e-5 dB of it, and an `f64` STFT
//! within 8e-6 dB at 1.2x the cost.)

use std::sync::Arc;

use crate::power::{PowerScratch, PowerSpectrum};
use ndarray::{Array4, ArrayViewMut2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Precision of the FFT and of the power spectrum (see the module docs). The mel weights are `f32`.
type Fx = f32;

/// Mel scale formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelScale {
    /// `2595 * log10(1 + f / 700)` (librosa `htk=True`).
    Htk,
    /// Slaney's Auditory Toolbox scale, linear below 1 kHz (librosa's default `htk=False`).
    Slaney,
}

/// Normalisation of each mel filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelNorm {
    /// Divide each triangle by its width in Hz (librosa `norm="slaney"`, the default).
    Slaney,
    /// Triangles peak at 1 (librosa `norm=None`).
    None,
}

/// How `center=true` pads a clip before framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros (librosa 0.11's default, `pad_mode="constant"`).
    Constant,
    /// Mirror without repeating the edge sample (`pad_mode="reflect"`).
    Reflect,
}

/// The `ref` of `power_to_db`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbReference {
    /// A fixed reference power (librosa's default is 1.0).
    Value(f64),
    /// The window's own maximum (`ref=np.max`), so the loudest bin is 0 dB.
    Max,
}

/// Decibel conversion, `10 * log10(max(amin, S) / ref)` then clipped to `max - top_db`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// Reference power.
    #[serde(default = "default_db_ref")]
    pub reference: DbReference,
    /// Floor applied before the logarithm.
    #[serde(default = "default_amin")]
    pub amin: f64,
    /// Dynamic range kept below each window's maximum; `None` keeps everything.
    #[serde(default = "default_top_db")]
    pub top_db: Option<f64>,
}

fn default_db_ref() -> DbReference {
    DbReference::Value(1.0)
}
fn default_amin() -> f64 {
    1e-10
}
fn default_top_db() -> Option<f64> {
    Some(80.0)
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            reference: default_db_ref(),
            amin: default_amin(),
            top_db: default_top_db(),
        }
    }
}

/// Normalisation of a window's (log-)mel image, applied after decibels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Leave values as they are.
    None,
    /// Whole image to `[0, 1]`: `(x - min) / (max - min)` (a constant image becomes zeros).
    ImageMinMax,
    /// Whole image to zero mean, unit variance (population std; a constant image becomes zeros).
    ImageStandard,
    /// Each mel band to zero mean, unit variance over time.
    PerFrequency,
}

/// Which windows a soundscape is cut into.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowPolicy {
    /// Window length in seconds (5 in every BirdCLEF).
    #[serde(default = "default_window_seconds")]
    pub window_seconds: f64,
    /// A final partial window is kept (zero-padded) when it holds at least this many seconds.
    /// A file shorter than that still gets one (zero-padded) window.
    #[serde(default = "default_min_last")]
    pub min_last_window_seconds: f64,
    /// The model sees this many seconds centred on each window (a 10-s or 20-s clip scored
    /// per 5-s window), zero-padded beyond the recording's ends; none: the window itself. Rows
    /// stay one per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_seconds: Option<f64>,
}

fn default_window_seconds() -> f64 {
    5.0
}
fn default_min_last() -> f64 {
    1.0
}

impl Default for WindowPolicy {
    fn default() -> Self {
        Self {
            window_seconds: default_window_seconds(),
            min_last_window_seconds: default_min_last(),
            context_seconds: None,
        }
    }
}

/// Every parameter of the frontend. Serialised in each model card; see `models/cards/*.card.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// Sample rate of the input audio (Hz); decoding resamples to it.
    pub sample_rate: u32,
    /// How the soundscape is cut into windows.
    #[serde(default)]
    pub windows: WindowPolicy,
    /// FFT size.
    pub n_fft: usize,
    /// Hann window length (≤ `n_fft`; centred inside the FFT frame like librosa).
    pub win_length: usize,
    /// Hop between frames in samples.
    pub hop_length: usize,
    /// Number of mel bands.
    pub n_mels: usize,
    /// Lowest mel edge (Hz).
    pub fmin: f64,
    /// Highest mel edge (Hz), at most `sample_rate / 2`.
    pub fmax: f64,
    /// Mel scale formula.
    pub mel_scale: MelScale,
    /// Filter normalisation.
    #[serde(default = "default_mel_norm")]
    pub mel_norm: MelNorm,
    /// Exponent of the magnitude (2 = power, 1 = magnitude).
    #[serde(default = "default_power")]
    pub power: f64,
    /// Pad the clip by `n_fft / 2` on both sides so frame `t` is centred at `t * hop_length`.
    #[serde(default = "default_true")]
    pub center: bool,
    /// Padding used when `center` is true.
    #[serde(default = "default_pad_mode")]
    pub pad_mode: PadMode,
    /// Decibel conversion; `None` keeps linear mel power.
    #[serde(default = "default_db")]
    pub db: Option<DbConfig>,
    /// Normalisation after decibels.
    #[serde(default = "default_normalize")]
    pub normalize: Normalize,
    /// The image is repeated over this many channels (1, or 3 for RGB-pretrained backbones).
    #[serde(default = "default_channels")]
    pub channels: usize,
}

fn default_mel_norm() -> MelNorm {
    MelNorm::Slaney
}
fn default_power() -> f64 {
    2.0
}
fn default_true() -> bool {
    true
}
fn default_pad_mode() -> PadMode {
    PadMode::Constant
}
fn default_db() -> Option<DbConfig> {
    Some(DbConfig::default())
}
fn default_normalize() -> Normalize {
    Normalize::None
}
fn default_channels() -> usize {
    1
}

/// A frontend configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid frontend configuration: {reason}")]
pub struct FrontendError {
    /// Which setting is wrong and why.
    pub reason: String,
}

impl FrontendConfig {
    /// NVBird's BirdCLEF 2024 student frontend: n_fft 1536, win 1024, hop 717, 224 HTK mels
    /// 90–14000 Hz, giving a 224×224 image per 5-s window.
    pub fn nvbird224() -> Self {
        Self {
            sample_rate: 32_000,
            windows: WindowPolicy::default(),
            n_fft: 1536,
            win_length: 1024,
            hop_length: 717,
            n_mels: 224,
            fmin: 90.0,
            fmax: 14_000.0,
            mel_scale: MelScale::Htk,
            mel_norm: MelNorm::Slaney,
            power: 2.0,
            center: true,
            pad_mode: PadMode::Constant,
            db: Some(DbConfig::default()),
            normalize: Normalize::None,
            channels: 1,
        }
    }

    /// Kefir's BirdCLEF 2024 frontend: n_fft 1024, hop 500, 128 Slaney mels 40–15000 Hz
    /// (128×321 per 5-s window).
    pub fn kefir128() -> Self {
        Self {
            n_fft: 1024,
            win_length: 1024,
            hop_length: 500,
            n_mels: 128,
            fmin: 40.0,
            fmax: 15_000.0,
            mel_scale: MelScale::Slaney,
            ..Self::nvbird224()
        }
    }

    /// Check every parameter; the error says which one is wrong and why.
    pub fn validate(&self) -> Result<(), FrontendError> {
        let err = |reason: String| Err(FrontendError { reason });
        if self.sample_rate == 0 {
            return err("sample_rate must be positive".into());
        }
        if !(self.windows.window_seconds > 0.0 && self.windows.window_seconds <= 600.0) {
            return err(format!(
                "windows.window_seconds must be in (0, 600], got {}",
                self.windows.window_seconds
            ));
        }
        if !(self.windows.min_last_window_seconds >= 0.0
            && self.windows.min_last_window_seconds <= self.windows.window_seconds)
        {
            return err(format!(
                "windows.min_last_window_seconds must be in [0, window_seconds], got {}",
                self.windows.min_last_window_seconds
            ));
        }
        if let Some(c) = self.windows.context_seconds {
            if !(c >= self.windows.window_seconds && c <= 600.0) {
                return err(format!(
                    "windows.context_seconds must be in [window_seconds = {}, 600], got {c}",
                    self.windows.window_seconds
                ));
            }
        }
        if self.n_fft < 2 || self.n_fft > 1 << 16 {
            return err(format!("n_fft must be in [2, 65536], got {}", self.n_fft));
        }
        if self.win_length == 0 || self.win_length > self.n_fft {
            return err(format!(
                "win_length must be in [1, n_fft={}], got {}",
                self.n_fft, self.win_length
            ));
        }
        if self.hop_length == 0 {
            return err("hop_length must be positive".into());
        }
        if self.n_mels == 0 || self.n_mels > 2048 {
            return err(format!("n_mels must be in [1, 2048], got {}", self.n_mels));
        }
        let nyquist = f64::from(self.sample_rate) / 2.0;
        if !(self.fmin >= 0.0 && self.fmin < self.fmax && self.fmax <= nyquist) {
            return err(format!(
                "need 0 <= fmin < fmax <= sample_rate/2 = {nyquist}, got fmin {} fmax {}",
                self.fmin, self.fmax
            ));
        }
        if !(self.power > 0.0 && self.power.is_finite()) {
            return err(format!("power must be positive, got {}", self.power));
        }
        if let Some(db) = &self.db {
            if !(db.amin >= 1e-30 && db.amin.is_finite()) {
                return err(format!("db.amin must be at least 1e-30, got {}", db.amin));
            }
            if let DbReference::Value(r) = db.reference {
                if !(r > 0.0 && r.is_finite()) {
                    return err(format!("db.reference must be positive, got {r}"));
                }
            }
            if let Some(t) = db.top_db {
                if t.is_nan() || t < 0.0 {
                    return err(format!("db.top_db must be non-negative, got {t}"));
                }
            }
        }
        if self.channels == 0 || self.channels > 16 {
            return err(format!(
                "channels must be in [1, 16], got {}",
                self.channels
            ));
        }
        if self.input_samples() < self.n_fft && !self.center {
            return err(format!(
                "a {}-sample window is shorter than n_fft={} without center padding",
                self.input_samples(),
                self.n_fft
            ));
        }
        Ok(())
    }

    /// Samples per window.
    pub fn window_samples(&self) -> usize {
        (self.windows.window_seconds * f64::from(self.sample_rate)).round() as usize
    }

    /// Samples the model sees per window: the context ([`WindowPolicy::context_seconds`]) or
    /// the window itself.
    pub fn input_samples(&self) -> usize {
        self.windows.context_seconds.map_or_else(
            || self.window_samples(),
            |c| (c * f64::from(self.sample_rate)).round() as usize,
        )
    }

    /// Samples of context before each window: the input starts this far before the window
    /// (half the context beyond the window, rounded down).
    pub fn context_lead(&self) -> usize {
        (self.input_samples().saturating_sub(self.window_samples())) / 2
    }

    /// STFT frames per window.
    pub fn frames(&self) -> usize {
        let n = self.input_samples();
        if self.center {
            1 + n / self.hop_length
        } else {
            1 + n.saturating_sub(self.n_fft) / self.hop_length
        }
    }

    /// The model input shape of one window: `[channels, n_mels, frames]`.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.n_mels, self.frames()]
    }

    /// How many windows a signal of `n_samples` is cut into (always at least one).
    pub fn window_count(&self, n_samples: usize) -> usize {
        let w = self.window_samples().max(1);
        let full = n_samples / w;
        let rest = n_samples % w;
        let min_rest = (self.windows.min_last_window_seconds * f64::from(self.sample_rate)).ceil();
        let with_rest = full + usize::from(rest > 0 && rest as f64 >= min_rest);
        with_rest.max(1)
    }

    /// End second of window `i`, as used in Kaggle row ids (`<stem>_<end>`): 5, 10, …
    pub fn window_end_seconds(&self, i: usize) -> f64 {
        (i + 1) as f64 * self.windows.window_seconds
    }
}

/// `n` samples of `samples` from index `start` (which may be negative), zeros where that runs
/// outside it: a slice of `samples` when it lies inside, else built in `buf`.
pub fn padded_range<'a>(
    samples: &'a [f32],
    start: isize,
    n: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let len = samples.len() as isize;
    if start >= 0 && start + n as isize <= len {
        return &samples[start as usize..start as usize + n];
    }
    buf.clear();
    buf.resize(n, 0.0);
    let from = start.clamp(0, len);
    let to = (start + n as isize).clamp(0, len);
    if from < to {
        let at = (from - start) as usize;
        buf[at..at + (to - from) as usize].copy_from_slice(&samples[from as usize..to as usize]);
    }
    buf
}

/// Convert Hz to mel.
pub fn hz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = 6.4f64.ln() / 27.0;
            if f >= min_log_hz {
                min_log_mel + (f / min_log_hz).ln() / logstep
            } else {
                f / f_sp
            }
        }
    }
}

/// Convert mel to Hz.
pub fn mel_to_hz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = 6.4f64.ln() / 27.0;
            if m >= min_log_mel {
                min_log_hz * (logstep * (m - min_log_mel)).exp()
            } else {
                f_sp * m
            }
        }
    }
}

/// One mel filter stored sparsely: weights for FFT bins `start..start + weights.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFilter {
    /// First FFT bin with a non-zero weight.
    pub start: usize,
    /// The non-zero weights.
    pub weights: Vec<f32>,
}

/// The mel filterbank as librosa builds it (`librosa.filters.mel`, float32 result).
pub fn mel_filterbank(cfg: &FrontendConfig) -> Vec<MelFilter> {
    let n_bins = cfg.n_fft / 2 + 1;
    let sr = f64::from(cfg.sample_rate);
    // np.fft.rfftfreq(n_fft, d=1/sr)
    let val = 1.0 / (cfg.n_fft as f64 * (1.0 / sr));
    let fftfreqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * val).collect();
    // mel_frequencies(n_mels + 2, fmin, fmax): np.linspace in mel, then back to Hz.
    let n_pts = cfg.n_mels + 2;
    let lo = hz_to_mel(cfg.fmin, cfg.mel_scale);
    let hi = hz_to_mel(cfg.fmax, cfg.mel_scale);
    let step = (hi - lo) / (n_pts - 1) as f64;
    let mel_f: Vec<f64> = (0..n_pts)
        .map(|i| {
            let m = if i == n_pts - 1 {
                hi
            } else {
                lo + i as f64 * step
            };
            mel_to_hz(m, cfg.mel_scale)
        })
        .collect();
    (0..cfg.n_mels)
        .map(|i| {
            let fdiff_lo = mel_f[i + 1] - mel_f[i];
            let fdiff_hi = mel_f[i + 2] - mel_f[i + 1];
            let enorm = match cfg.mel_norm {
                MelNorm::Slaney => Some(2.0 / (mel_f[i + 2] - mel_f[i])),
                MelNorm::None => None,
            };
            let dense: Vec<f32> = fftfreqs
                .iter()
                .map(|&f| {
                    let lower = -(mel_f[i] - f) / fdiff_lo;
                    let upper = (mel_f[i + 2] - f) / fdiff_hi;
                    let w = lower.min(upper).max(0.0) as f32;
                    match enorm {
                        Some(e) => (f64::from(w) * e) as f32,
                        None => w,
                    }
                })
                .collect();
            let start = dense.iter().position(|&w| w != 0.0).unwrap_or(0);
            let end = dense
                .iter()
                .rposition(|&w| w != 0.0)
                .map_or(start, |e| e + 1);
            MelFilter {
                start,
                weights: dense[start..end].to_vec(),
            }
        })
        .collect()
}

/// `scipy.signal.get_window("hann", n, fftbins=True)` (periodic), centred in `n_fft` zeros.
fn hann_padded(win_length: usize, n_fft: usize) -> Vec<Fx> {
    let mut w = vec![0.0; n_fft];
    let left = (n_fft - win_length) / 2;
    for i in 0..win_length {
        let x = 2.0 * std::f64::consts::PI * i as f64 / win_length as f64;
        w[left + i] = (0.5 - 0.5 * x.cos()) as Fx;
    }
    w
}

/// A ready frontend: configuration, FFT plan, window and filterbank, shared by all threads.
#[derive(Clone)]
pub struct Frontend {
    cfg: FrontendConfig,
    power: PowerSpectrum,
    window: Arc<Vec<Fx>>,
    /// First and one-past-last non-zero sample of the padded window.
    window_span: (usize, usize),
    filters: Arc<Vec<MelFilter>>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend").field("cfg", &self.cfg).finish()
    }
}

/// Per-thread scratch buffers.
struct Scratch {
    frame: Vec<Fx>,
    fft: PowerScratch,
    power: Vec<Fx>,
}

impl Frontend {
    /// Validate `cfg` and prepare the FFT plan, window and filterbank.
    pub fn new(cfg: FrontendConfig) -> Result<Self, FrontendError> {
        cfg.validate()?;
        let power = PowerSpectrum::new(cfg.n_fft);
        let window = hann_padded(cfg.win_length, cfg.n_fft);
        let left = (cfg.n_fft - cfg.win_length) / 2;
        let filters = mel_filterbank(&cfg);
        Ok(Self {
            power,
            window: Arc::new(window),
            window_span: (left, left + cfg.win_length),
            filters: Arc::new(filters),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FrontendConfig {
        &self.cfg
    }

    /// The mel filterbank in use.
    pub fn filters(&self) -> &[MelFilter] {
        &self.filters
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            frame: vec![0.0; self.cfg.n_fft],
            fft: self.power.scratch(),
            power: vec![0.0; self.power.bins()],
        }
    }

    /// All windows of a 32 kHz mono signal: `[windows, channels, n_mels, frames]` (each window
    /// the context centred on it, when the policy has one).
    /// Windows are computed in parallel on the current rayon pool.
    pub fn compute(&self, samples: &[f32]) -> Array4<f32> {
        let n_windows = self.cfg.window_count(samples.len());
        let [channels, n_mels, frames] = self.cfg.input_shape();
        let mut out = Array4::<f32>::zeros((n_windows, channels, n_mels, frames));
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each_init(
                || (self.scratch(), Vec::new()),
                |(scratch, clip_buf), (i, mut win)| {
                    let clip = self.window_samples_of(samples, i, clip_buf);
                    let (mut first, mut rest) = win.view_mut().split_at(Axis(0), 1);
                    let mut image = first.index_axis_mut(Axis(0), 0);
                    self.image_into(clip, scratch, &mut image);
                    for mut ch in rest.axis_iter_mut(Axis(0)) {
                        ch.assign(&image);
                    }
                },
            );
        out
    }

    /// The model input of a single clip (zero-padded or cut to one input, the context when there
    /// is one): `[channels, mels, frames]`.
    pub fn compute_clip(&self, clip: &[f32]) -> ndarray::Array3<f32> {
        let [channels, n_mels, frames] = self.cfg.input_shape();
        let mut out = vec![0.0; channels * n_mels * frames];
        self.compute_clip_into(clip, &mut out);
        ndarray::Array3::from_shape_vec((channels, n_mels, frames), out)
            .expect("the buffer has the input shape")
    }

    /// [`Self::compute_clip`] written into `out` (row-major `[channels, mels, frames]`, of the
    /// card's input size), so that a batch can be filled in place.
    ///
    /// # Panics
    /// When `out` is not `channels × mels × frames` long.
    pub fn compute_clip_into(&self, clip: &[f32], out: &mut [f32]) {
        let [channels, n_mels, frames] = self.cfg.input_shape();
        let plane = n_mels * frames;
        assert_eq!(out.len(), channels * plane, "output buffer size");
        let mut scratch = self.scratch();
        let mut clip_buf = Vec::new();
        let samples = padded_range(clip, 0, self.cfg.input_samples(), &mut clip_buf);
        let (first, rest) = out.split_at_mut(plane);
        let mut image = ArrayViewMut2::from_shape((n_mels, frames), &mut *first)
            .expect("the plane has the image shape");
        self.image_into(samples, &mut scratch, &mut image);
        for ch in rest.chunks_exact_mut(plane) {
            ch.copy_from_slice(first);
        }
    }

    /// Window `i` of `samples`, zero-padded to a full window when it runs past the end.
    fn window_samples_of<'a>(
        &self,
        samples: &'a [f32],
        i: usize,
        buf: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        let n = self.cfg.input_samples();
        let start = (i * self.cfg.window_samples()) as isize - self.cfg.context_lead() as isize;
        padded_range(samples, start, n, buf)
    }

    /// Sample `j` of the (possibly centre-padded) clip.
    #[inline]
    fn padded_sample(&self, clip: &[f32], j: isize) -> f32 {
        let n = clip.len() as isize;
        if (0..n).contains(&j) {
            return clip[j as usize];
        }
        match self.cfg.pad_mode {
            PadMode::Constant => 0.0,
            PadMode::Reflect => {
                if n == 1 {
                    return clip[0];
                }
                // Reflect without repeating the edge: period 2(n-1).
                let period = 2 * (n - 1);
                let mut k = j.rem_euclid(period);
                if k >= n {
                    k = period - k;
                }
                clip[k as usize]
            }
        }
    }

    /// Compute one clip's image into `image` (`[n_mels, frames]`), with AVX2 code where the CPU
    /// has it (the same arithmetic in the same order, so the same numbers).
    fn image_into(&self, clip: &[f32], s: &mut Scratch, image: &mut ArrayViewMut2<'_, f32>) {
        #[cfg(target_arch = "x86_64")]
        if crate::dsp::has_avx2() {
            #[allow(unsafe_code)]
            // SAFETY: the CPU supports AVX2 (checked at run time just above).
            return unsafe { self.image_into_avx2(clip, s, image) };
        }
        self.image_into_body(clip, s, image);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn image_into_avx2(&self, clip: &[f32], s: &mut Scratch, image: &mut ArrayViewMut2<'_, f32>) {
        self.image_into_body(clip, s, image);
    }

    #[inline(always)]
    fn image_into_body(&self, clip: &[f32], s: &mut Scratch, image: &mut ArrayViewMut2<'_, f32>) {
        let cfg = &self.cfg;
        let n_fft = cfg.n_fft;
        let offset: isize = if cfg.center { (n_fft / 2) as isize } else { 0 };
        let (w0, w1) = self.window_span;
        let squared = cfg.power == 2.0;
        for t in 0..image.ncols() {
            let base = (t * cfg.hop_length) as isize - offset;
            // Only samples under the (non-zero part of the) window matter.
            s.frame[..w0].fill(0.0);
            s.frame[w1..].fill(0.0);
            let lo = base + w0 as isize;
            let n = clip.len() as isize;
            if lo >= 0 && lo + (w1 - w0) as isize <= n {
                let src = &clip[lo as usize..lo as usize + (w1 - w0)];
                for ((dst, &x), &w) in s.frame[w0..w1]
                    .iter_mut()
                    .zip(src)
                    .zip(&self.window[w0..w1])
                {
                    *dst = Fx::from(x) * w;
                }
            } else {
                for k in w0..w1 {
                    s.frame[k] =
                        Fx::from(self.padded_sample(clip, base + k as isize)) * self.window[k];
                }
            }
            self.power.process(&mut s.frame, &mut s.power, &mut s.fft);
            if !squared {
                let p = cfg.power as Fx;
                s.power.iter_mut().for_each(|v| *v = v.sqrt().powf(p));
            }
            for (m, filt) in self.filters.iter().enumerate() {
                let bins = &s.power[filt.start..filt.start + filt.weights.len()];
                image[[m, t]] = crate::dsp::dot(bins, &filt.weights);
            }
        }
        if let Some(db) = &cfg.db {
            to_db(image, db);
        }
        normalize(image, cfg.normalize);
    }
}

/// `librosa.power_to_db` on one image, in place.
#[inline(always)]
fn to_db(image: &mut ArrayViewMut2<'_, f32>, db: &DbConfig) {
    // amin >= 1e-30 (validated) keeps every argument a normal f32, as log2_approx needs.
    let amin = db.amin as f32;
    let ref_power = match db.reference {
        DbReference::Value(r) => r,
        DbReference::Max => f64::from(image_max(image).max(0.0)),
    };
    let ref_db = (10.0 * ref_power.max(db.amin).log10()) as f32;
    // 10 * log10(x) = 10 * log10(2) * log2(x)
    let scale = 10.0 * std::f32::consts::LOG10_2;
    let to_db = |v: &mut f32| *v = scale * crate::dsp::log2_approx(v.max(amin)) - ref_db;
    match image.as_slice_mut() {
        Some(values) => values.iter_mut().for_each(to_db),
        None => image.iter_mut().for_each(to_db),
    }
    if let Some(top_db) = db.top_db {
        let top = image_max(image);
        let floor = top - top_db as f32;
        image.mapv_inplace(|v| v.max(floor));
    }
}

#[inline(always)]
fn normalize(image: &mut ArrayViewMut2<'_, f32>, how: Normalize) {
    const EPS: f64 = 1e-6;
    match how {
        Normalize::None => {}
        Normalize::ImageMinMax => {
            let (lo, hi) = image
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let range = hi - lo;
            if range > 0.0 {
                image.mapv_inplace(|v| (v - lo) / range);
            } else {
                image.fill(0.0);
            }
        }
        Normalize::ImageStandard => standardize(image.view_mut(), EPS),
        Normalize::PerFrequency => {
            for row in image.axis_iter_mut(Axis(0)) {
                standardize(row.into_dyn(), EPS);
            }
        }
    }
}

/// The largest value of an image (`-inf` for an empty one), in independent lanes so it vectorises.
#[inline(always)]
fn image_max(image: &ArrayViewMut2<'_, f32>) -> f32 {
    match image.as_slice() {
        Some(values) => crate::dsp::max(values),
        None => image.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
    }
}

#[inline(always)]
fn standardize<D: ndarray::Dimension>(mut x: ndarray::ArrayViewMut<'_, f32, D>, eps: f64) {
    let n = x.len().max(1) as f64;
    let (mean, var) = {
        // A view that is not contiguous (never the case for this crate's own images) is copied.
        let copy: Vec<f32>;
        let values = match x.as_slice() {
            Some(values) => values,
            None => {
                copy = x.iter().copied().collect();
                &copy
            }
        };
        let mean = crate::dsp::sum_f64(values) / n;
        (mean, crate::dsp::sum_sq_dev_f64(values, mean) / n)
    };
    let std = var.sqrt();
    if std <= eps {
        x.fill(0.0);
    } else {
        let inv = 1.0 / std;
        x.mapv_inplace(|v| ((f64::from(v) - mean) * inv) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_shapes() {
        assert_eq!(FrontendConfig::nvbird224().input_shape(), [1, 224, 224]);
        assert_eq!(FrontendConfig::kefir128().input_shape(), [1, 128, 321]);
    }

    #[test]
    fn a_context_is_the_clip_centred_on_each_window() {
        let mut cfg = FrontendConfig::kefir128();
        cfg.n_mels = 16;
        cfg.hop_length = 3200;
        cfg.windows.context_seconds = Some(15.0);
        cfg.validate().expect("valid");
        assert_eq!(cfg.input_shape(), [1, 16, 151]);
        assert_eq!(
            (cfg.window_samples(), cfg.context_lead()),
            (160_000, 160_000)
        );
        let fe = Frontend::new(cfg.clone()).expect("frontend");
        let mut rng = crate::rng::Rng::new(3);
        let x: Vec<f32> = (0..12 * 32_000)
            .map(|_| rng.uniform() as f32 - 0.5)
            .collect();
        let images = fe.compute(&x);
        // 12 s: two whole windows and a 2-s rest (kept: at least 1 s); rows are per window.
        assert_eq!(images.shape()[0], 3);
        let clip = |from: isize| -> Vec<f32> {
            (from..from + 480_000)
                .map(|j| {
                    if (0..x.len() as isize).contains(&j) {
                        x[j as usize]
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        for (i, from) in [(0, -160_000), (1, 0), (2, 160_000)] {
            let want = fe.compute_clip(&clip(from));
            assert_eq!(images.index_axis(Axis(0), i), want.view(), "window {i}");
        }
        let mut bad = cfg;
        bad.windows.context_seconds = Some(4.0);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("context_seconds"));
    }

    #[test]
    fn window_policy() {
        let c = FrontendConfig::nvbird224();
        assert_eq!(c.window_count(0), 1);
        assert_eq!(c.window_count(100), 1);
        assert_eq!(c.window_count(160_000), 1);
        assert_eq!(c.window_count(160_000 + 31_999), 1);
        assert_eq!(c.window_count(160_000 + 32_000), 2);
        assert_eq!(c.window_count(240 * 32_000), 48);
        assert_eq!(c.window_count(240 * 32_000 - 7), 48);
        assert_eq!(c.window_end_seconds(0), 5.0);
        assert_eq!(c.window_end_seconds(47), 240.0);
    }

    #[test]
    fn mel_scales_round_trip() {
        for scale in [MelScale::Htk, MelScale::Slaney] {
            for f in [0.0, 90.0, 999.0, 1000.0, 1001.0, 14_000.0] {
                let back = mel_to_hz(hz_to_mel(f, scale), scale);
                assert!((back - f).abs() < 1e-8, "{scale:?} {f} -> {back}");
            }
        }
        // Known values: librosa.hz_to_mel(1000) = 15 (Slaney), 999.985... (HTK).
        assert!((hz_to_mel(1000.0, MelScale::Slaney) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(1000.0, MelScale::Htk) - 999.985_537_139_624_4).abs() < 1e-9);
    }

    #[test]
    fn validation_names_the_parameter() {
        let mut c = FrontendConfig::nvbird224();
        c.win_length = 4096;
        assert!(c.validate().unwrap_err().reason.contains("win_length"));
        let mut c = FrontendConfig::nvbird224();
        c.fmax = 20_000.0;
        assert!(c.validate().unwrap_err().reason.contains("fmax"));
        let mut c = FrontendConfig::kefir128();
        c.hop_length = 0;
        assert!(c.validate().unwrap_err().reason.contains("hop_length"));
    }

    #[test]
    fn sine_peaks_in_the_right_band() {
        let fe = Frontend::new(FrontendConfig::kefir128()).expect("valid");
        let f0 = 3000.0;
        let x: Vec<f32> = (0..160_000)
            .map(|i| (2.0 * std::f64::consts::PI * f0 * i as f64 / 32_000.0).sin() as f32)
            .collect();
        let img = fe.compute(&x);
        assert_eq!(img.shape(), &[1, 1, 128, 321]);
        let col = img.slice(ndarray::s![0, 0, .., 160]);
        let best = col
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0;
        let lo = mel_to_hz(
            hz_to_mel(40.0, MelScale::Slaney)
                + best as f64
                    * (hz_to_mel(15_000.0, MelScale::Slaney) - hz_to_mel(40.0, MelScale::Slaney))
                    / 129.0,
            MelScale::Slaney,
        );
        assert!((lo - f0).abs() < 300.0, "peak band starts at {lo} Hz");
    }

    #[test]
    fn standardisation_matches_a_naive_f64_reference() {
        let x: Vec<f32> = (0..180_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5 + (i as f32 * 0.01).sin())
            .collect();
        let plain = Frontend::new(FrontendConfig::nvbird224())
            .expect("valid")
            .compute(&x);
        let naive = |v: &[f32]| -> Vec<f32> {
            let n = v.len() as f64;
            let mean = v.iter().map(|&a| f64::from(a)).sum::<f64>() / n;
            let var = v
                .iter()
                .map(|&a| (f64::from(a) - mean).powi(2))
                .sum::<f64>()
                / n;
            v.iter()
                .map(|&a| ((f64::from(a) - mean) / var.sqrt()) as f32)
                .collect()
        };
        for how in [Normalize::ImageStandard, Normalize::PerFrequency] {
            let cfg = FrontendConfig {
                normalize: how,
                ..FrontendConfig::nvbird224()
            };
            let got = Frontend::new(cfg).expect("valid").compute(&x);
            for w in 0..plain.shape()[0] {
                let image = plain.slice(ndarray::s![w, 0, .., ..]);
                let want: Vec<f32> = match how {
                    Normalize::ImageStandard => naive(&image.iter().copied().collect::<Vec<_>>()),
                    _ => image
                        .rows()
                        .into_iter()
                        .flat_map(|r| naive(&r.to_vec()))
                        .collect(),
                };
                let g = got.slice(ndarray::s![w, 0, .., ..]);
                for (a, b) in g.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{how:?} window {w}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn vector_width_does_not_change_a_value() {
        // image_into picks AVX2 code where the CPU has it; the portable body must agree bit for
        // bit (on a CPU without AVX2 both sides are the portable code).
        let x: Vec<f32> = (0..160_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        for cfg in [FrontendConfig::nvbird224(), FrontendConfig::kefir128()] {
            let cfg = FrontendConfig {
                normalize: Normalize::ImageStandard,
                ..cfg
            };
            let fe = Frontend::new(cfg).expect("valid");
            let [_, n_mels, frames] = fe.config().input_shape();
            let mut a = ndarray::Array2::<f32>::zeros((n_mels, frames));
            let mut b = a.clone();
            fe.image_into(&x, &mut fe.scratch(), &mut a.view_mut());
            fe.image_into_body(&x, &mut fe.scratch(), &mut b.view_mut());
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }

    #[test]
    fn channels_repeat_and_normalize() {
        let mut cfg = FrontendConfig::kefir128();
        cfg.channels = 3;
        cfg.normalize = Normalize::ImageMinMax;
        let fe = Frontend::new(cfg).expect("valid");
        let x: Vec<f32> = (0..200_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let img = fe.compute(&x);
        assert_eq!(img.shape(), &[2, 3, 128, 321]);
        assert_eq!(
            img.slice(ndarray::s![0, 0, .., ..]),
            img.slice(ndarray::s![0, 2, .., ..])
        );
        let max = img.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let min = img.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        assert_eq!((min, max), (0.0, 1.0));
    }
}
