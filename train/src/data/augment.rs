//! Waveform and image augmentations beyond the crop, shift, gain, background, mixup and
//! SpecAugment of [`super::batch`]:
//! - [`resample`]: band-limited resampling, used for a speed change (tempo and pitch together);
//! - [`time_stretch`]: a phase vocoder that changes the tempo and keeps the pitch;
//! - [`pitch_shift`]: a time stretch followed by resampling, which changes the pitch and keeps the
//!   length;
//! - [`add_coloured_noise`]: Gaussian noise with power ∝ f^(−β) (β = 0 white, 1 pink, 2 brown) at
//!   a signal-to-noise ratio;
//! - [`time_cutmix`]: a stretch of one clip replaced by the same stretch of another;
//! - [`image_power`] and [`image_contrast`]: a gamma curve and a contrast scale on the model input.
//!
//! Each is a plain function of its inputs (and, for noise, a generator), tested below on signals
//! whose answer is known (a sine's frequency, a noise's spectral slope, an exact SNR).

use std::cell::RefCell;
use std::f64::consts::PI;

use birdclef_models::rng::Rng;
use realfft::num_complex::Complex;
use realfft::RealFftPlanner;

thread_local! {
    static PLANNER: RefCell<RealFftPlanner<f32>> = RefCell::new(RealFftPlanner::new());
    static PLANNER64: RefCell<RealFftPlanner<f64>> = RefCell::new(RealFftPlanner::new());
}

/// Resampling ratios are rounded to multiples of 1 / this (0.5%), so that the polyphase filter
/// of [`birdclef_models::audio::StreamResampler`] has at most this many phases.
const RATIO_STEPS: u32 = 200;

/// `step` rounded to a multiple of 1 / [`RATIO_STEPS`] (at least that).
pub fn quantise_ratio(step: f64) -> f64 {
    f64::from(ratio_numerator(step)) / f64::from(RATIO_STEPS)
}

fn ratio_numerator(step: f64) -> u32 {
    ((step * f64::from(RATIO_STEPS)).round() as u32).max(1)
}

/// `n` samples of `src` read at positions `0, step, 2·step, …` (in input samples), with
/// `step` rounded by [`quantise_ratio`]: `step > 1` plays the clip faster (higher and shorter),
/// `< 1` slower. The band-limited resampler of audio decoding does the work, so speeding up
/// does not alias. Samples past the end of `src` are zero.
pub fn resample(src: &[f32], step: f64, n: usize) -> Vec<f32> {
    let mut out = birdclef_models::audio::resample(src, ratio_numerator(step), RATIO_STEPS)
        .expect("both rates are positive and the ratio has at most RATIO_STEPS phases");
    out.resize(n, 0.0);
    out
}

/// FFT size of the phase vocoder (64 ms at 32 kHz, librosa's default size).
const PV_FFT: usize = 2048;
/// Hop of the phase vocoder.
const PV_HOP: usize = PV_FFT / 4;

fn hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * PI * i as f64 / n as f64).cos())
        .collect()
}

/// One analysis frame of the phase vocoder: magnitudes and unit phasors (1 where a bin is 0,
/// whose angle is 0).
struct PvFrame {
    mag: Vec<f64>,
    unit: Vec<Complex<f64>>,
}

/// `x` played `rate` times as fast with its pitch kept (`rate > 1` shortens it): librosa's
/// phase vocoder (`librosa.effects.time_stretch`: Hann windows of [`PV_FFT`] samples, hop
/// [`PV_HOP`], centred frames over zero padding; each output frame takes the magnitudes
/// interpolated between the two nearest input frames and a phase advanced by the input's phase
/// difference). Output length `round(len / rate)`. Computed in f64: the phases of near-silent
/// bins are noise in f32, and the vocoder carries them forward until a sound reaches those bins.
///
/// The phase advance, `expected + wrap(angle(b) − angle(a) − expected)`, equals
/// `angle(b) − angle(a)` modulo 2π, so the output phase is carried as a phasor multiplied by
/// `b̂ · conj(â)` (no trigonometry per bin), and input frames are analysed as the output
/// reaches them (two at a time, not the whole spectrogram).
pub fn time_stretch(x: &[f32], rate: f64) -> Vec<f32> {
    let out_len = (x.len() as f64 / rate).round() as usize;
    if x.is_empty() || out_len == 0 {
        return vec![0.0; out_len];
    }
    let (n, hop) = (PV_FFT, PV_HOP);
    let bins = n / 2 + 1;
    let window = hann(n);
    // Frames centred at t·hop over the signal padded with n/2 zeros on both sides; frame
    // `frames` (past the end) is silent.
    let frames = x.len() / hop + 1;
    let (forward, inverse) = PLANNER64.with(|p| {
        let mut p = p.borrow_mut();
        (p.plan_fft_forward(n), p.plan_fft_inverse(n))
    });
    let mut buf = vec![0.0f64; n];
    let mut spec = forward.make_output_vec();
    let mut analyse = |t: usize| -> PvFrame {
        if t >= frames {
            return PvFrame {
                mag: vec![0.0; bins],
                unit: vec![Complex::new(1.0, 0.0); bins],
            };
        }
        for (j, (b, &w)) in buf.iter_mut().zip(&window).enumerate() {
            let at = (t * hop + j).checked_sub(n / 2);
            *b = at.and_then(|i| x.get(i)).map_or(0.0, |&v| f64::from(v) * w);
        }
        forward
            .process(&mut buf, &mut spec)
            .expect("the buffers have the plan's sizes");
        let mag: Vec<f64> = spec.iter().map(|c| c.norm_sqr().sqrt()).collect();
        let unit = spec
            .iter()
            .zip(&mag)
            .map(|(c, &r)| {
                if r > 0.0 {
                    c / r
                } else {
                    Complex::new(1.0, 0.0)
                }
            })
            .collect();
        PvFrame { mag, unit }
    };
    // librosa's frame count, `len(np.arange(0, frames, rate))`; the output is cut or
    // zero-padded to `out_len` as its `istft(length=…)` does.
    let out_frames = (frames as f64 / rate).ceil() as usize;
    let (mut at, mut fa, mut fb) = (0, analyse(0), analyse(1));
    let mut phasor = fa.unit.clone();
    let span = (out_frames * hop + n).max(out_len + n);
    let mut out = vec![0.0f64; span];
    let mut norm = vec![0.0f64; span];
    let mut frame = vec![0.0f64; n];
    let mut synth = inverse.make_input_vec();
    for k in 0..out_frames {
        let pos = k as f64 * rate;
        let i = (pos.floor() as usize).min(frames - 1);
        let f = (pos - i as f64).clamp(0.0, 1.0);
        if i != at {
            if i == at + 1 {
                fa = std::mem::replace(&mut fb, analyse(i + 1));
            } else {
                (fa, fb) = (analyse(i), analyse(i + 1));
            }
            at = i;
        }
        for (bin, s) in synth.iter_mut().enumerate() {
            let mag = fa.mag[bin] * (1.0 - f) + fb.mag[bin] * f;
            let p = phasor[bin];
            *s = p * mag;
            // A product of unit phasors: its modulus drifts by about 1e-16 per frame.
            phasor[bin] = p * fb.unit[bin] * fa.unit[bin].conj();
        }
        // A real signal's DC and Nyquist bins are real.
        synth[0].im = 0.0;
        synth[bins - 1].im = 0.0;
        inverse
            .process(&mut synth, &mut frame)
            .expect("the buffers have the plan's sizes");
        let start = k * hop;
        for (j, (&v, &w)) in frame.iter().zip(&window).enumerate() {
            out[start + j] += v * w / n as f64;
            norm[start + j] += w * w;
        }
    }
    out.iter()
        .zip(&norm)
        .skip(n / 2)
        .take(out_len)
        .map(|(&v, &w)| if w > 1e-10 { (v / w) as f32 } else { 0.0 })
        .collect()
}

/// `x` with its pitch moved by `semitones` and its length kept: stretched to `2^(s/12)` times
/// its length, then resampled back (librosa's `pitch_shift` recipe); the ratio is rounded by
/// [`quantise_ratio`], so the shift is within 0.06 semitones of `semitones` from −4 up (the
/// rounding step grows as the ratio falls: about 0.17 semitones at −24).
pub fn pitch_shift(x: &[f32], semitones: f64) -> Vec<f32> {
    let ratio = quantise_ratio(2f64.powf(semitones / 12.0));
    let stretched = time_stretch(x, 1.0 / ratio);
    resample(&stretched, ratio, x.len())
}

/// Unit-RMS Gaussian noise of `n` samples whose power spectrum falls as `f^(−exponent)` (0 white,
/// 1 pink, 2 brown), shaped in the frequency domain (without its DC bin unless white).
pub fn coloured_noise(n: usize, exponent: f64, rng: &mut Rng) -> Vec<f32> {
    if n < 2 {
        return vec![0.0; n];
    }
    // Box-Muller, both outputs of each pair (`1 - u` is in (0, 1], so the logarithm is finite).
    let mut x = Vec::with_capacity(n + 1);
    while x.len() < n {
        let r = (-2.0 * (1.0 - rng.uniform()).ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * rng.uniform()).sin_cos();
        x.push((r * cos) as f32);
        x.push((r * sin) as f32);
    }
    x.truncate(n);
    if exponent != 0.0 {
        let (forward, inverse) = PLANNER.with(|p| {
            let mut p = p.borrow_mut();
            (p.plan_fft_forward(n), p.plan_fft_inverse(n))
        });
        let mut spec = forward.make_output_vec();
        forward
            .process(&mut x, &mut spec)
            .expect("the buffers have the plan's sizes");
        spec[0] = Complex::new(0.0, 0.0);
        for (k, c) in spec.iter_mut().enumerate().skip(1) {
            *c *= (k as f64).powf(-exponent / 2.0) as f32;
        }
        if n.is_multiple_of(2) {
            let last = spec.len() - 1;
            spec[last].im = 0.0;
        }
        inverse
            .process(&mut spec, &mut x)
            .expect("the buffers have the plan's sizes");
    }
    let rms = (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64).sqrt();
    if rms > 0.0 {
        x.iter_mut().for_each(|v| *v = (f64::from(*v) / rms) as f32);
    }
    x
}

/// Add [`coloured_noise`] of spectral exponent `exponent` to `clip` at a signal-to-noise ratio of
/// `snr_db` (signal power over noise power). A silent clip is left silent (its SNR is undefined).
pub fn add_coloured_noise(clip: &mut [f32], exponent: f64, snr_db: f64, rng: &mut Rng) {
    let n = clip.len();
    let power = clip
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / n.max(1) as f64;
    if power <= 0.0 {
        return;
    }
    let noise = coloured_noise(n, exponent, rng);
    let gain = (power / 10f64.powf(snr_db / 10.0)).sqrt() as f32;
    for (c, v) in clip.iter_mut().zip(&noise) {
        *c += gain * v;
    }
}

/// Replace `round(fraction · len)` consecutive samples of `a`, at a random start, with the same
/// samples of `b`; returns the share of `a` replaced.
pub fn time_cutmix(a: &mut [f32], b: &[f32], fraction: f64, rng: &mut Rng) -> f64 {
    let n = a.len().min(b.len());
    let width = ((fraction.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    if n == 0 || width == 0 {
        return 0.0;
    }
    let start = rng.below(n - width + 1);
    a[start..start + width].copy_from_slice(&b[start..start + width]);
    width as f64 / a.len() as f64
}

/// A gamma curve on `image`: each value, as a share `s` of the image's range, becomes `s^gamma`
/// (its minimum and maximum stay; `gamma > 1` darkens the quiet parts, `< 1` lifts them).
pub fn image_power(image: &mut [f32], gamma: f64) {
    let lo = image.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = image.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if hi <= lo {
        return;
    }
    let span = f64::from(hi - lo);
    for v in image.iter_mut() {
        let s = (f64::from(*v - lo) / span).clamp(0.0, 1.0);
        *v = lo + (span * s.powf(gamma)) as f32;
    }
}

/// Scale `image`'s deviations from its mean by `factor` (its mean stays).
pub fn image_contrast(image: &mut [f32], factor: f64) {
    if image.is_empty() {
        return;
    }
    let mean = image.iter().map(|&v| f64::from(v)).sum::<f64>() / image.len() as f64;
    for v in image.iter_mut() {
        *v = (mean + factor * (f64::from(*v) - mean)) as f32;
    }
}

/// A draw from `[lo, hi]`, uniform in the logarithm (so that `[0.5, 2]` is as likely to halve
/// as to double); both must be positive.
pub fn log_uniform(rng: &mut Rng, [lo, hi]: [f64; 2]) -> f64 {
    (rng.range(lo.ln(), hi.ln().max(lo.ln() + f64::EPSILON))).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SR: f64 = 32_000.0;

    fn sine(freq: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * PI * freq * i as f64 / SR).sin() as f32)
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// The frequency of the strongest component of `x` (Hann window, 2^15-point FFT, parabolic
    /// interpolation of the peak).
    fn peak_hz(x: &[f32]) -> f64 {
        let n = 1 << 15;
        assert!(x.len() >= n);
        let start = (x.len() - n) / 2;
        let w = hann(n);
        let mut frame: Vec<f32> = x[start..start + n]
            .iter()
            .zip(&w)
            .map(|(&a, &b)| (f64::from(a) * b) as f32)
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n);
        let mut spec = fft.make_output_vec();
        fft.process(&mut frame, &mut spec).expect("fft");
        let mag: Vec<f64> = spec.iter().map(|c| f64::from(c.norm()).ln()).collect();
        let k = (1..mag.len() - 1)
            .max_by(|&a, &b| mag[a].total_cmp(&mag[b]))
            .expect("bins");
        let (a, b, c) = (mag[k - 1], mag[k], mag[k + 1]);
        let offset = 0.5 * (a - c) / (a - 2.0 * b + c);
        (k as f64 + offset) * SR / n as f64
    }

    #[test]
    fn resampling_changes_speed_without_aliasing() {
        let n = 64_000;
        let up = resample(&sine(1000.0, (n as f64 * 1.25) as usize + 100), 1.2, n);
        assert_eq!(up.len(), n);
        assert!((peak_hz(&up) - 1200.0).abs() < 0.5, "{}", peak_hz(&up));
        // The passband keeps its amplitude (1/√2 for a unit sine).
        let mid = &up[1000..n - 1000];
        assert!((rms(mid) - 0.5f64.sqrt()).abs() < 0.01, "rms {}", rms(mid));
        let down = resample(&sine(1000.0, n), 0.8, n);
        assert!((peak_hz(&down) - 800.0).abs() < 0.5, "{}", peak_hz(&down));
        // 15.5 kHz played 1.25x as fast would be 19.4 kHz, above the 16 kHz Nyquist frequency:
        // a plain interpolator folds it back to 12.6 kHz; the filter removes it.
        let high = resample(&sine(15_500.0, 90_000), 1.25, n);
        assert!(
            rms(&high[1000..n - 1000]) < 0.01,
            "alias rms {}",
            rms(&high)
        );
        // Step 1 is (nearly) the identity.
        let x = sine(440.0, 8_000);
        let same = resample(&x, 1.0, x.len());
        let err = x[100..7_900]
            .iter()
            .zip(&same[100..7_900])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 0.06, "identity error {err}");
    }

    #[test]
    fn time_stretch_keeps_pitch_and_changes_length() {
        let x = sine(1000.0, 48_000);
        for rate in [0.8, 1.2] {
            let y = time_stretch(&x, rate);
            assert_eq!(y.len(), (48_000.0 / rate).round() as usize);
            assert!(
                (peak_hz(&y) - 1000.0).abs() < 0.5,
                "rate {rate}: {}",
                peak_hz(&y)
            );
        }
        // Rate 1 reconstructs the input.
        let mut r = Rng::new(3);
        let noise: Vec<f32> = (0..20_000).map(|_| r.normal() as f32).collect();
        let same = time_stretch(&noise, 1.0);
        let err = noise
            .iter()
            .zip(&same)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-3, "identity error {err}");
        // A tone burst at 1 s, slowed to 0.8x, starts at 1.25 s.
        let mut burst = vec![0.0f32; 64_000];
        burst[32_000..40_000].copy_from_slice(&sine(2000.0, 8_000));
        let slow = time_stretch(&burst, 0.8);
        let onset = slow.iter().position(|v| v.abs() > 0.5).expect("onset");
        assert!(
            (onset as f64 - 40_000.0).abs() < 600.0,
            "onset at sample {onset}"
        );
    }

    /// The signal of tests/golden/augment/make_golden.py.
    fn golden_signal() -> Vec<f32> {
        (0..32_000)
            .map(|i| {
                let t = i as f64 / SR;
                let am =
                    0.5 * (2.0 * PI * 440.0 * t).sin() * (1.0 + 0.5 * (2.0 * PI * 3.0 * t).sin());
                let chirp = 0.3 * (2.0 * PI * (1500.0 * t + 2000.0 * t * t)).sin();
                let onset = if t >= 0.5 {
                    0.2 * (2.0 * PI * 6000.0 * t + 1.0).sin()
                } else {
                    0.0
                };
                (am + chirp + onset) as f32
            })
            .collect()
    }

    #[test]
    fn time_stretch_matches_librosa() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/augment");
        let x = golden_signal();
        // The last case's length is where librosa's frame count, ceil(frames / rate), exceeds
        // the output length's own frame count by one.
        for (rate, len, name) in [
            ("0.8", 32_000, "time_stretch_0.8"),
            ("1.25", 32_000, "time_stretch_1.25"),
            ("0.8", 20_000, "time_stretch_20000_0.8"),
        ] {
            let want = birdclef_models::npy::read_f32(&dir.join(format!("{name}.npy")))
                .expect("golden file");
            let got = time_stretch(&x[..len], rate.parse().expect("rate"));
            assert_eq!(got.len(), want.len(), "rate {rate}");
            let err = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "rate {rate}: max abs difference {err}");
        }
    }

    #[test]
    fn pitch_shift_moves_by_semitones_and_keeps_length() {
        let x = sine(1000.0, 48_000);
        for semitones in [4.0, -4.0, 1.0] {
            let y = pitch_shift(&x, semitones);
            assert_eq!(y.len(), x.len());
            let ratio = quantise_ratio(2f64.powf(semitones / 12.0));
            assert!((12.0 * ratio.log2() - semitones).abs() < 0.06);
            assert!(
                (peak_hz(&y) - 1000.0 * ratio).abs() < 0.5,
                "{semitones}: {}",
                peak_hz(&y)
            );
        }
    }

    #[test]
    fn noise_has_its_colour_and_snr() {
        let n = 1 << 17;
        for exponent in [0.0, 1.0, 2.0] {
            let mut r = Rng::new(11);
            let x = coloured_noise(n, exponent, &mut r);
            assert!((rms(&x) - 1.0).abs() < 1e-4);
            // Mean power in octave bands from bin 64 up; slope of log power against log
            // frequency.
            let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n);
            let mut buf = x.clone();
            let mut spec = fft.make_output_vec();
            fft.process(&mut buf, &mut spec).expect("fft");
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            let mut lo = 64;
            while lo * 2 <= n / 2 {
                let p: f64 = spec[lo..lo * 2]
                    .iter()
                    .map(|c| f64::from(c.norm_sqr()))
                    .sum::<f64>()
                    / lo as f64;
                xs.push((lo as f64 * 1.5).log10());
                ys.push(p.log10());
                lo *= 2;
            }
            let mx = xs.iter().sum::<f64>() / xs.len() as f64;
            let my = ys.iter().sum::<f64>() / ys.len() as f64;
            let slope = xs
                .iter()
                .zip(&ys)
                .map(|(x, y)| (x - mx) * (y - my))
                .sum::<f64>()
                / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
            assert!(
                (slope + exponent).abs() < 0.1,
                "β {exponent}: slope {slope}"
            );
        }
        let clean = sine(1000.0, 32_000);
        for snr in [0.0, 10.0, 27.5] {
            let mut noisy = clean.clone();
            add_coloured_noise(&mut noisy, 1.0, snr, &mut Rng::new(5));
            let noise: Vec<f32> = noisy.iter().zip(&clean).map(|(a, b)| a - b).collect();
            let got = 20.0 * (rms(&clean) / rms(&noise)).log10();
            assert!((got - snr).abs() < 1e-3, "snr {snr}: {got}");
        }
        let mut silent = vec![0.0f32; 100];
        add_coloured_noise(&mut silent, 0.0, 10.0, &mut Rng::new(1));
        assert!(silent.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn cutmix_replaces_one_stretch() {
        let mut a = vec![1.0f32; 100];
        let b = vec![2.0f32; 100];
        let share = time_cutmix(&mut a, &b, 0.3, &mut Rng::new(9));
        assert!((share - 0.3).abs() < 1e-12);
        let first = a.iter().position(|&v| v == 2.0).expect("a cut");
        assert!(a[first..first + 30].iter().all(|&v| v == 2.0));
        assert_eq!(a.iter().filter(|&&v| v == 2.0).count(), 30);
        let mut c = vec![1.0f32; 10];
        assert_eq!(time_cutmix(&mut c, &b, 0.0, &mut Rng::new(9)), 0.0);
        assert!(c.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn image_power_and_contrast() {
        let mut im = vec![-10.0f32, -5.0, 0.0, 10.0];
        image_power(&mut im, 2.0);
        // Shares 0, 0.25, 0.5, 1 of the range [-10, 10] become 0, 0.0625, 0.25, 1.
        let want = [-10.0f32, -8.75, -5.0, 10.0];
        for (g, w) in im.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{im:?}");
        }
        let mut flat = vec![3.0f32; 4];
        image_power(&mut flat, 2.0);
        assert_eq!(flat, vec![3.0; 4]);
        let mut im = vec![1.0f32, 2.0, 3.0, 6.0];
        image_contrast(&mut im, 0.5);
        assert_eq!(im, vec![2.0, 2.5, 3.0, 4.5]);
        let mut r = Rng::new(2);
        for _ in 0..100 {
            let g = log_uniform(&mut r, [0.5, 2.0]);
            assert!((0.5..=2.0).contains(&g));
        }
    }
}
