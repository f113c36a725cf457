//! Synthetic bird-like audio, deterministic from a seed, for the demo and for tests that must run
//! without `../shared` (whose recordings may not be copied into the project).
//!
//! A soundscape is quiet pink-ish background noise with calls dropped in at random times. Each
//! [`CallType`] has its own shape in the time–frequency plane (rising or falling sweep, trill,
//! harmonic stack, two-note whistle), so a classifier can tell them apart from log-mel images.

use serde::{Deserialize, Serialize};

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
}

/// The shape of a synthetic call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    /// A rising frequency sweep.
    UpSweep,
    /// A falling frequency sweep.
    DownSweep,
    /// A rapidly amplitude-modulated tone.
    Trill,
    /// A tone with its second and third harmonics.
    Harmonic,
    /// Two short whistles at different pitches.
    TwoNote,
}

impl CallType {
    /// All call types, in a fixed order.
    pub const ALL: [CallType; 5] = [
        CallType::UpSweep,
        CallType::DownSweep,
        CallType::Trill,
        CallType::Harmonic,
        CallType::TwoNote,
    ];
}

/// A species of the synthetic world: a call type at a characteristic pitch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Species {
    /// Label (e.g. `synbird0`).
    pub label: String,
    /// Call shape.
    pub call: CallType,
    /// Base frequency in Hz.
    pub base_hz: f64,
    /// Call duration in seconds.
    pub seconds: f64,
}

/// `n` species with distinct call types and pitches (deterministic).
pub fn species(n: usize) -> Vec<Species> {
    (0..n)
        .map(|i| {
            let call = CallType::ALL[i % CallType::ALL.len()];
            // Spread pitches over 1.5-7.5 kHz; species sharing a call type differ by pitch.
            let base_hz = 1500.0 + 6000.0 * ((i * 7) % n.max(1)) as f64 / n.max(1) as f64;
            Species {
                label: format!("synbird{i}"),
                call,
                base_hz,
                seconds: 0.6 + 0.1 * (i % 4) as f64,
            }
        })
        .collect()
}

/// Add one call of `sp` to `out` starting at sample `start`, with peak amplitude `amp`.
pub fn add_call(out: &mut [f32], sample_rate: u32, start: usize, sp: &Species, amp: f64) {
    let sr = f64::from(sample_rate);
    let n = (sp.seconds * sr) as usize;
    let mut phase = 0.0f64;
    let mut phase2 = 0.0f64;
    for k in 0..n {
        let Some(slot) = out.get_mut(start + k) else {
            break;
        };
        let t = k as f64 / sr;
        let u = k as f64 / n as f64;
        // Raised-cosine envelope so calls have no clicks.
        let env = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * u).cos();
        let f0 = sp.base_hz;
        let (freq, gain, extra) = match sp.call {
            CallType::UpSweep => (f0 * (1.0 + 0.6 * u), 1.0, 0.0),
            CallType::DownSweep => (f0 * (1.6 - 0.6 * u), 1.0, 0.0),
            CallType::Trill => (
                f0,
                0.5 + 0.5 * (2.0 * std::f64::consts::PI * 25.0 * t).sin(),
                0.0,
            ),
            CallType::Harmonic => (f0 * 0.5, 1.0, 1.0),
            CallType::TwoNote => (if u < 0.5 { f0 } else { f0 * 1.35 }, 1.0, 0.0),
        };
        phase += 2.0 * std::f64::consts::PI * freq / sr;
        phase2 += 2.0 * std::f64::consts::PI * 2.0 * freq / sr;
        let mut v = phase.sin() * gain;
        if extra > 0.0 {
            v = 0.6 * v + 0.3 * phase2.sin() + 0.2 * (1.5 * phase2).sin();
        }
        *slot += (amp * env * v) as f32;
    }
}

/// Background noise: white noise through a one-pole low-pass (more energy at low frequencies,
/// like wind and distant traffic), at RMS about `level`.
pub fn background(n: usize, level: f64, rng: &mut Rng) -> Vec<f32> {
    let mut y = 0.0f64;
    (0..n)
        .map(|_| {
            let white = rng.range(-1.0, 1.0);
            y = 0.97 * y + 0.03 * white * 10.0;
            (level * (0.7 * y + 0.3 * white)) as f32
        })
        .collect()
}

/// One call event placed in a soundscape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Index into the species list.
    pub species: usize,
    /// Start time in seconds.
    pub start: f64,
    /// End time in seconds.
    pub end: f64,
}

/// A soundscape of `seconds` with `calls` random calls of the given species.
/// Returns the samples and the events (for labels).
pub fn soundscape(
    seconds: f64,
    sample_rate: u32,
    all: &[Species],
    calls: usize,
    rng: &mut Rng,
) -> (Vec<f32>, Vec<Event>) {
    let n = (seconds * f64::from(sample_rate)) as usize;
    let mut out = background(n, 0.01, rng);
    let mut events = Vec::new();
    if all.is_empty() {
        return (out, events);
    }
    for _ in 0..calls {
        let species = rng.below(all.len());
        let sp = &all[species];
        let latest = (seconds - sp.seconds).max(0.0);
        let start = rng.range(0.0, latest);
        let amp = rng.range(0.1, 0.4);
        add_call(
            &mut out,
            sample_rate,
            (start * f64::from(sample_rate)) as usize,
            sp,
            amp,
        );
        events.push(Event {
            species,
            start,
            end: start + sp.seconds,
        });
    }
    (out, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let sp = species(6);
        let (a, ea) = soundscape(12.0, 32_000, &sp, 8, &mut Rng::new(7));
        let (b, eb) = soundscape(12.0, 32_000, &sp, 8, &mut Rng::new(7));
        assert_eq!(a, b);
        assert_eq!(ea, eb);
        assert_eq!(a.len(), 384_000);
        assert!(a.iter().all(|v| v.is_finite() && v.abs() < 2.0));
        let (c, _) = soundscape(12.0, 32_000, &sp, 8, &mut Rng::new(8));
        assert_ne!(a, c);
    }

    #[test]
    fn species_are_distinct() {
        let sp = species(10);
        for i in 0..sp.len() {
            for j in 0..i {
                assert!(
                    sp[i].call != sp[j].call || (sp[i].base_hz - sp[j].base_hz).abs() > 100.0,
                    "{} and {} look alike",
                    sp[i].label,
                    sp[j].label
                );
            }
        }
    }
}
