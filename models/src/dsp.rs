//! Small numeric kernels shared by the resampler and the frontend.

/// Whether the CPU running us has AVX2: the frontend and the resampler then run the same code
/// compiled for it (8-wide instead of 4-wide vectors). The answer is cached by the standard
/// library, so asking is cheap.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Dot product accumulated in eight independent lanes, so the compiler can vectorise it
/// (a plain `sum()` is a serial chain of dependent additions). Extra elements of the longer
/// slice are ignored.
#[inline(always)]
pub fn dot(x: &[f32], h: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let xc = x.chunks_exact(8);
    let hc = h.chunks_exact(8);
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(hc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(hc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest element (`-inf` for an empty slice; NaNs are skipped like `f32::max` does), kept
/// in eight independent lanes: a single running maximum is a serial chain the compiler may not
/// reorder.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// `Σ x` accumulated in `f64`, in four independent lanes (see [`max`]).
#[inline(always)]
pub fn sum_f64(x: &[f32]) -> f64 {
    lanes_f64(x, |v| v)
}

/// `Σ (x - mean)²` accumulated in `f64`, in four independent lanes.
#[inline(always)]
pub fn sum_sq_dev_f64(x: &[f32], mean: f64) -> f64 {
    lanes_f64(x, |v| (v - mean) * (v - mean))
}

#[inline(always)]
fn lanes_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(f64::from(v))).sum();
    for c in chunks {
        for k in 0..4 {
            acc[k] += f(f64::from(c[k]));
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `log2(x)` for positive, normal `f32` (`x >= f32::MIN_POSITIVE`), about 1e-7 relative error.
///
/// The exponent comes from the bits; the mantissa `m`, moved into `[√½, √2)`, goes through
/// `ln m = 2·atanh(t)`, `t = (m-1)/(m+1)`, whose series is cut after `t⁹` (|t| < 0.172, so the
/// first omitted term is below 1e-9). Branch-free, so loops over it vectorise, unlike libm's.
#[inline(always)]
pub fn log2_approx(x: f32) -> f32 {
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127;
    let mant = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = mant > std::f32::consts::SQRT_2;
    let mant = if big { mant * 0.5 } else { mant };
    let exp = exp + i32::from(big);
    let t = (mant - 1.0) / (mant + 1.0);
    let t2 = t * t;
    let series = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    exp as f32 + 2.0 * t * series * std::f32::consts::LOG2_E
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_all_tail_lengths() {
        for n in 0..40 {
            let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let h: Vec<f32> = (0..n).map(|i| 1.0 / (1.0 + i as f32)).collect();
            let naive: f32 = x.iter().zip(&h).map(|(a, b)| a * b).sum();
            assert!((dot(&x, &h) - naive).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn lane_reductions_match_serial_ones_for_all_tail_lengths() {
        for n in 0..40usize {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 4.5).collect();
            let want_max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max(&x), want_max, "n = {n}");
            let want_sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
            assert!((sum_f64(&x) - want_sum).abs() < 1e-9, "n = {n}");
            let mean = want_sum / n.max(1) as f64;
            let want_dev: f64 = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum();
            assert!(
                (sum_sq_dev_f64(&x, mean) - want_dev).abs() < 1e-9,
                "n = {n}"
            );
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
    }

    #[test]
    fn log2_approx_is_accurate_over_the_normal_range() {
        let mut worst = 0.0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < 1e30 {
            for k in 0..97 {
                let v = x * (1.0 + k as f32 / 97.0);
                let want = f64::from(v).log2();
                let err = (f64::from(log2_approx(v)) - want).abs() / want.abs().max(1.0);
                worst = worst.max(err);
            }
            x *= 7.3;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(log2_approx(1.0), 0.0);
        assert_eq!(log2_approx(8.0), 3.0);
    }
}
