//! Power spectrum `|X_k|²` of a real frame, the part of the STFT the log-mel frontend needs.
//!
//! For an even `n_fft = 2M` the frame is read as `M` complex samples `z_n = x_{2n} + i·x_{2n+1}`
//! (the same memory), transformed by one complex FFT of length `M`, and the spectrum of the
//! real frame follows from `Z` by the usual split:
//!
//! `E_k = (Z_k + conj Z_{M-k}) / 2`, `O_k = (Z_k - conj Z_{M-k}) / (2i)`, `X_k = E_k + W^k O_k`,
//! `W = exp(-2πi / n_fft)`.
//!
//! Bins `k` and `M - k` share the sums `Z_k ± conj Z_{M-k}`, so each loop step produces both and
//! writes only their power: the complex spectrum is never stored. The loop is plain `f32`
//! arithmetic on slices, which the compiler vectorises. Odd sizes fall back to `realfft`.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};

/// A planned power-spectrum transform for one `n_fft`.
#[derive(Clone)]
pub struct PowerSpectrum {
    n_fft: usize,
    plan: Plan,
}

#[derive(Clone)]
enum Plan {
    /// `n_fft = 2M`: a complex FFT of `M` points and the split (`half_cos[k] = cos(2πk/n)/2`,
    /// `half_sin[k] = sin(2πk/n)/2` for `k` in `0..=M/2`).
    Split {
        fft: Arc<dyn Fft<f32>>,
        half_cos: Vec<f32>,
        half_sin: Vec<f32>,
    },
    /// Odd `n_fft`: realfft's transform, then the magnitudes.
    Real(Arc<dyn RealToComplex<f32>>),
}

/// Buffers one thread reuses across frames.
pub struct PowerScratch {
    fft: Vec<Complex<f32>>,
    spectrum: Vec<Complex<f32>>,
}

impl PowerSpectrum {
    /// Plan the transform for frames of `n_fft` samples (`n_fft >= 2`).
    pub fn new(n_fft: usize) -> Self {
        let plan = if n_fft.is_multiple_of(2) && n_fft >= 4 {
            let m = n_fft / 2;
            let (half_cos, half_sin) = (0..=m / 2)
                .map(|k| {
                    let theta = 2.0 * std::f64::consts::PI * k as f64 / n_fft as f64;
                    ((0.5 * theta.cos()) as f32, (0.5 * theta.sin()) as f32)
                })
                .unzip();
            Plan::Split {
                fft: FftPlanner::<f32>::new().plan_fft_forward(m),
                half_cos,
                half_sin,
            }
        } else {
            Plan::Real(RealFftPlanner::<f32>::new().plan_fft_forward(n_fft))
        };
        Self { n_fft, plan }
    }

    /// Number of bins, `n_fft / 2 + 1`.
    pub fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Scratch buffers for [`Self::process`].
    pub fn scratch(&self) -> PowerScratch {
        match &self.plan {
            Plan::Split { fft, .. } => PowerScratch {
                fft: vec![Complex::default(); fft.get_inplace_scratch_len()],
                spectrum: Vec::new(),
            },
            Plan::Real(fft) => PowerScratch {
                fft: fft.make_scratch_vec(),
                spectrum: fft.make_output_vec(),
            },
        }
    }

    /// `out[k] = |X_k|^2` for `k` in `0..=n_fft/2`, `X` the DFT of `frame`. `frame` (`n_fft`
    /// samples) is used as working memory and left holding garbage.
    ///
    /// # Panics
    /// When `frame` is not `n_fft` long or `out` is not `n_fft / 2 + 1` long.
    #[inline(always)]
    pub fn process(&self, frame: &mut [f32], out: &mut [f32], scratch: &mut PowerScratch) {
        assert_eq!(frame.len(), self.n_fft, "frame length");
        assert_eq!(out.len(), self.bins(), "power spectrum length");
        match &self.plan {
            Plan::Split {
                fft,
                half_cos,
                half_sin,
            } => {
                let z = as_complex(frame);
                fft.process_with_scratch(z, &mut scratch.fft);
                split_power(frame, half_cos, half_sin, out);
            }
            Plan::Real(fft) => {
                // The plan's own buffers have the right sizes, so this cannot fail; keep zeros
                // if it ever did.
                if fft
                    .process_with_scratch(frame, &mut scratch.spectrum, &mut scratch.fft)
                    .is_err()
                {
                    scratch.spectrum.fill(Complex::default());
                }
                for (p, c) in out.iter_mut().zip(&scratch.spectrum) {
                    *p = c.re * c.re + c.im * c.im;
                }
            }
        }
    }
}

/// An even-length `f32` slice as interleaved complex numbers, without copying.
#[allow(unsafe_code)]
fn as_complex(frame: &mut [f32]) -> &mut [Complex<f32>] {
    // SAFETY: `Complex<f32>` is `#[repr(C)] { re: f32, im: f32 }`: the size of two f32, the
    // alignment of one, and every bit pattern valid. So `align_to_mut` has nothing to put in the
    // head, and for an even length nothing in the tail (checked below).
    let (head, body, tail) = unsafe { frame.align_to_mut::<Complex<f32>>() };
    assert!(
        head.is_empty() && tail.is_empty(),
        "an even-length f32 frame"
    );
    body
}

/// Powers of bins `k` and `M - k` from `P = Z_k` and `Q = Z_{M-k}`, with `c = cos(2πk/n)/2`,
/// `s = sin(2πk/n)/2`: with `a = P + conj Q` and `b = P - conj Q`,
/// `X_k = (a + W^k (-i) b) / 2`, and `X_{M-k}` is the same with `conj a` and `-conj b`.
#[inline(always)]
fn pair_power((pr, pi): (f32, f32), (qr, qi): (f32, f32), c: f32, s: f32) -> (f32, f32) {
    let (ar, ai) = (0.5 * (pr + qr), 0.5 * (pi - qi));
    let (br, bi) = (pr - qr, pi + qi);
    let u = c * bi - s * br;
    let v = c * br + s * bi;
    let (xr, xi) = (ar + u, ai - v);
    let (yr, yi) = (ar - u, ai + v);
    (xr * xr + xi * xi, yr * yr + yi * yi)
}

/// The split step: `z` holds `Z` interleaved (`2M` floats); writes `out[0..=M]`.
#[inline(always)]
fn split_power(z: &[f32], half_cos: &[f32], half_sin: &[f32], out: &mut [f32]) {
    let m = z.len() / 2;
    let (zr0, zi0) = (z[0], z[1]);
    out[0] = (zr0 + zi0) * (zr0 + zi0);
    out[m] = (zr0 - zi0) * (zr0 - zi0);
    let half = m / 2;
    // Bin k (1..=pairs) pairs with bin M - k; for even M, bin M/2 is its own partner.
    let pairs = if m.is_multiple_of(2) { half - 1 } else { half };
    let at = |i: usize| (z[2 * i], z[2 * i + 1]);
    // Four bins per step in fixed-size lanes (the compiler turns them into vector code): bins
    // k..k+4 read Z forwards, their partners M-k-3..=M-k read it backwards.
    const L: usize = 4;
    let mut k = 1;
    while k + L - 1 <= pairs {
        let j0 = m - k - (L - 1);
        let p: &[f32; 2 * L] = z[2 * k..2 * k + 2 * L].try_into().expect("2L floats");
        let q: &[f32; 2 * L] = z[2 * j0..2 * j0 + 2 * L].try_into().expect("2L floats");
        let c: &[f32; L] = half_cos[k..k + L].try_into().expect("L floats");
        let s: &[f32; L] = half_sin[k..k + L].try_into().expect("L floats");
        let mut pk = [0.0f32; L];
        let mut pj = [0.0f32; L];
        for l in 0..L {
            let r = L - 1 - l;
            (pk[l], pj[r]) = pair_power(
                (p[2 * l], p[2 * l + 1]),
                (q[2 * r], q[2 * r + 1]),
                c[l],
                s[l],
            );
        }
        out[k..k + L].copy_from_slice(&pk);
        out[j0..j0 + L].copy_from_slice(&pj);
        k += L;
    }
    for k in k..=pairs {
        (out[k], out[m - k]) = pair_power(at(k), at(m - k), half_cos[k], half_sin[k]);
    }
    if m.is_multiple_of(2) && half > 0 {
        out[half] = pair_power(at(half), at(half), half_cos[half], half_sin[half]).0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_power(x: &[f32]) -> Vec<f64> {
        let n = x.len();
        (0..=n / 2)
            .map(|k| {
                let (mut re, mut im) = (0.0f64, 0.0f64);
                for (t, &v) in x.iter().enumerate() {
                    let th = -2.0 * std::f64::consts::PI * (k * t) as f64 / n as f64;
                    re += f64::from(v) * th.cos();
                    im += f64::from(v) * th.sin();
                }
                re * re + im * im
            })
            .collect()
    }

    #[test]
    fn matches_a_direct_dft_for_even_and_odd_sizes() {
        for n in [2usize, 3, 4, 6, 8, 10, 15, 16, 30, 64, 100, 1024, 1536] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) + (i as f32 * 0.3).sin())
                .collect();
            let want = naive_power(&x);
            let ps = PowerSpectrum::new(n);
            let mut frame = x.clone();
            let mut out = vec![f32::NAN; ps.bins()];
            ps.process(&mut frame, &mut out, &mut ps.scratch());
            let peak = want.iter().fold(0.0f64, |a, &b| a.max(b));
            for (k, (&g, &w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(g) - w).abs() <= 1e-5 * peak + 1e-6,
                    "n {n} bin {k}: {g} vs {w}"
                );
            }
        }
    }
}
