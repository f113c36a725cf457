//! The one random-number generator of the workspace: seedable, the same on every platform and
//! thread, so that synthetic audio, weight initialisation, fold assignment and augmentations
//! depend only on their seeds.

/// A small, fast, seedable generator (SplitMix64); good enough for test signals.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Shuffle `v` in place (Fisher–Yates, from the last element down).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// Standard normal (Box-Muller; `1 - u` is in `(0, 1]`, so the logarithm is finite).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Gamma(`shape`, 1) (Marsaglia-Tsang; shapes below 1 through Gamma(a + 1) U^(1/a)).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform().max(1e-300);
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.max(1e-300).ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(`alpha`, `alpha`), from two Gamma draws (mixup's mixing weight).
    pub fn beta(&mut self, alpha: f64) -> f64 {
        let a = self.gamma(alpha);
        let b = self.gamma(alpha);
        if a + b > 0.0 {
            a / (a + b)
        } else {
            0.5
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    fn moments(mut draw: impl FnMut() -> f64) -> (f64, f64) {
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| draw()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        (mean, var)
    }

    #[test]
    fn distributions_have_their_moments() {
        let mut r = Rng::new(1);
        let (m, v) = moments(|| r.normal());
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "normal {m} {v}");
        let (m, v) = moments(|| r.gamma(2.5));
        assert!(
            (m - 2.5).abs() < 0.08 && (v - 2.5).abs() < 0.2,
            "gamma {m} {v}"
        );
        let (m, _) = moments(|| r.gamma(0.4));
        assert!((m - 0.4).abs() < 0.03, "gamma(0.4) {m}");
        // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
        let (m, v) = moments(|| r.beta(0.4));
        assert!(
            (m - 0.5).abs() < 0.02 && (v - 1.0 / 7.2).abs() < 0.01,
            "beta {m} {v}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(9);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(9);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut v: Vec<usize> = (0..10).collect();
        Rng::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
