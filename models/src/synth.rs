//! Synthetic bird-like audio, deterministic from a seed, for the demo and for tests that must run
//! without `../shared` (whose recordings may not be copied into the project).
//!
//! A soundscape is quiet pink-ish background noise with calls dropped in at random times. Each
//! [`CallType`] has its own shape in the time–frequency plane (rising or falling sweep, trill,
//! harmonic stack, two-note whistle), so a classifier can tell them apart from log-mel images.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

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

/// [`soundscape`] under a domain shift: louder background, quieter calls (see
/// [`CompetitionSpec::domain_shift`]).
fn shifted_soundscape(
    seconds: f64,
    sample_rate: u32,
    all: &[Species],
    calls: usize,
    shift: f64,
    rng: &mut Rng,
) -> (Vec<f32>, Vec<Event>) {
    let n = (seconds * f64::from(sample_rate)) as usize;
    let mut out = background(n, 0.01 * (1.0 + 2.0 * shift), rng);
    let mut events = Vec::new();
    for _ in 0..calls {
        let species = rng.below(all.len().max(1));
        let Some(sp) = all.get(species) else {
            break;
        };
        let start = rng.range(0.0, (seconds - sp.seconds).max(0.0));
        let amp = rng.range(0.1, 0.4) * (1.0 - 0.5 * shift);
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

// ---------------------------------------------------------------------------------------------
// A whole synthetic competition directory.
// ---------------------------------------------------------------------------------------------

/// Parameters of a synthetic competition written by [`write_competition`] (a `[data.synth]`
/// table of a pipeline file; missing keys keep their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompetitionSpec {
    /// Number of species (labels `synbird0`, `synbird1`, ...; see [`species`]). At least 1.
    pub species: usize,
    /// Training recordings per species (`train_audio/<label>/*.wav`). At least 1.
    pub recordings_per_species: usize,
    /// Typical length of a training recording in seconds; each one is 0.7-1.3 times this.
    /// At least 2 s.
    pub recording_seconds: f64,
    /// Number of unlabeled soundscapes (`unlabeled_soundscapes/*.wav`).
    pub unlabeled: usize,
    /// Length of each unlabeled soundscape in seconds (at least 1 s when `unlabeled > 0`).
    pub unlabeled_seconds: f64,
    /// Number of test soundscapes (`test_soundscapes/*.wav`). At least 1.
    pub test: usize,
    /// Length of each test soundscape in seconds: a positive multiple of 5 (one solution row per
    /// 5-s window). All test soundscapes together need at least two windows.
    pub test_seconds: f64,
    /// Everything written is a function of the spec, this seed included.
    pub seed: u64,
    /// How far the soundscapes (test and unlabeled) are from the clean focal training
    /// recordings, from 0 (the same calls and levels) to 1: their calls are a "dialect" (pitch
    /// moved by up to 10 % and duration by up to 20 %, the sign alternating between species),
    /// quieter (amplitude times `1 - shift / 2`) and more frequent (times `1 + shift`, so they
    /// overlap more), over louder background (times `1 + 2 shift`). As in the real
    /// competitions, only the unlabeled soundscapes show what the test looks like.
    pub domain_shift: f64,
}

impl Default for CompetitionSpec {
    /// The project's embedded demo dataset: 8 species × 6 recordings of about 10 s, 10 unlabeled
    /// soundscapes and 4 test soundscapes of 30 s (15 minutes of audio in all, 24 scored rows).
    fn default() -> Self {
        Self {
            species: 8,
            recordings_per_species: 6,
            recording_seconds: 10.0,
            unlabeled: 10,
            unlabeled_seconds: 30.0,
            test: 4,
            test_seconds: 30.0,
            seed: 2026,
            domain_shift: 0.0,
        }
    }
}

/// What [`write_competition`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct CompetitionSummary {
    /// The competition directory.
    pub root: PathBuf,
    /// The labels, in taxonomy (submission column) order.
    pub labels: Vec<String>,
    /// Training recordings written (rows of `train_metadata.csv`).
    pub train_files: usize,
    /// Unlabeled soundscapes written.
    pub unlabeled_files: usize,
    /// Test soundscapes written.
    pub test_files: usize,
    /// Rows of `test_solution.csv` (5-s windows over all test soundscapes).
    pub test_rows: usize,
}

/// Why a synthetic competition could not be written. Every variant names a path.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The spec cannot be generated (e.g. a test length that is not a multiple of 5 s).
    #[error("{root}: cannot write a synthetic competition: {reason}")]
    Spec {
        /// The competition directory asked for.
        root: PathBuf,
        /// What is wrong with the spec.
        reason: String,
    },
    /// A directory or file could not be created or written.
    #[error("{path}: cannot write: {cause}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// An output could not be written (the error names it).
    #[error(transparent)]
    Output(#[from] crate::fsio::OutputError),
}

impl SynthError {
    /// The path this error is about.
    pub fn path(&self) -> &Path {
        match self {
            SynthError::Spec { root, .. } => root,
            SynthError::Io { path, .. } => path,
            SynthError::Output(e) => e.path(),
        }
    }
}

/// The length of a scored window of a test soundscape, in seconds.
const WINDOW_SECONDS: f64 = 5.0;
/// The longest file the generator agrees to write, in seconds.
const MAX_FILE_SECONDS: f64 = 3600.0;
/// Independent random streams, so that e.g. more unlabeled soundscapes leave the test set alone.
const STREAM_TRAIN: u64 = 1;
const STREAM_UNLABELED: u64 = 2;
const STREAM_TEST: u64 = 3;

/// Write a synthetic competition in the Kaggle BirdCLEF layout under `root` (created if missing;
/// files of the same names are overwritten, other files are left alone):
///
/// ```text
/// <root>/taxonomy.csv                      primary_label,scientific_name,common_name
/// <root>/sample_submission.csv             row_id,<labels...>: a few rows of equal probabilities
/// <root>/train_metadata.csv                primary_label,secondary_labels,type,latitude,longitude,
///                                          scientific_name,common_name,author,license,rating,url,filename
/// <root>/train_audio/<label>/XC<n>.wav     focal recordings (32 kHz, a few at 22.05 or 44.1 kHz)
/// <root>/unlabeled_soundscapes/*.wav       32-kHz soundscapes without labels (some near-silent)
/// <root>/test_soundscapes/soundscape_synth_<i>.wav
/// <root>/test_solution.csv                 row_id,<labels...>: 0/1 per 5-s window
/// ```
///
/// A training recording is background noise with a call of its primary species every 1-3 s at
/// varying loudness, and in about a third of them one or two quieter calls of a secondary species
/// (listed in `secondary_labels`). Soundscapes mix calls of random species, some faint, over
/// background noise, and about half carry a steady insect-like drone that training recordings never
/// have, so that the unlabeled soundscapes teach something the training audio does not.
///
/// A test window `<stem>_<end second>` is positive for a species when one of its calls overlaps
/// the window by at least half the call's duration. Every species has at least one positive and
/// one negative window, so the macro ROC-AUC is defined for all of them.
///
/// Everything is deterministic from `spec`. Errors name the path: an invalid spec
/// ([`SynthError::Spec`]) or a failed write ([`SynthError::Io`]); nothing panics.
pub fn write_competition(
    root: &Path,
    spec: &CompetitionSpec,
) -> Result<CompetitionSummary, SynthError> {
    validate_spec(root, spec)?;
    let all = species(spec.species);
    let labels: Vec<String> = all.iter().map(|s| s.label.clone()).collect();
    let windows_per_file = (spec.test_seconds / WINDOW_SECONDS).round() as usize;

    for dir in [
        root.to_path_buf(),
        root.join("train_audio"),
        root.join("unlabeled_soundscapes"),
        root.join("test_soundscapes"),
    ] {
        create_dir(&dir)?;
    }
    for label in &labels {
        create_dir(&root.join("train_audio").join(label))?;
    }

    // Plans are drawn sequentially (cheap); the audio is rendered in parallel from them.
    let train = plan_train(spec, &all);
    // Soundscapes carry the species as the domain shift changes them.
    let scape = soundscape_species(&all, spec.domain_shift);
    let test = plan_test(spec, &scape, windows_per_file);

    write_text(&root.join("taxonomy.csv"), &taxonomy_csv(&all))?;
    write_text(
        &root.join("sample_submission.csv"),
        &sample_submission_csv(&labels, windows_per_file),
    )?;
    write_text(
        &root.join("train_metadata.csv"),
        &train_metadata_csv(&train, &all),
    )?;
    write_text(
        &root.join("test_solution.csv"),
        &test_solution_csv(&test, &labels, windows_per_file),
    )?;

    enum Job<'a> {
        Train(&'a TrainPlan),
        Unlabeled(usize),
        Test(&'a TestPlan),
    }
    let jobs: Vec<Job<'_>> = train
        .iter()
        .map(Job::Train)
        .chain((0..spec.unlabeled).map(Job::Unlabeled))
        .chain(test.iter().map(Job::Test))
        .collect();
    jobs.par_iter().try_for_each(|job| {
        let (path, audio, rate) = match job {
            Job::Train(p) => (
                root.join("train_audio").join(&p.filename),
                render_train(p, &all),
                p.sample_rate,
            ),
            Job::Unlabeled(i) => (
                root.join("unlabeled_soundscapes")
                    .join(format!("synth_unlabeled_{i:03}.wav")),
                render_unlabeled(spec, &scape, *i),
                crate::audio::TARGET_SAMPLE_RATE,
            ),
            Job::Test(p) => (
                root.join("test_soundscapes")
                    .join(format!("{}.wav", p.stem)),
                render_test(p, &scape, spec.test_seconds, spec.domain_shift),
                crate::audio::TARGET_SAMPLE_RATE,
            ),
        };
        crate::audio::write_wav_f32(&path, &audio, rate).map_err(SynthError::from)
    })?;

    Ok(CompetitionSummary {
        root: root.to_path_buf(),
        labels,
        train_files: train.len(),
        unlabeled_files: spec.unlabeled,
        test_files: test.len(),
        test_rows: spec.test * windows_per_file,
    })
}

fn validate_spec(root: &Path, spec: &CompetitionSpec) -> Result<(), SynthError> {
    let fail = |reason: String| {
        Err(SynthError::Spec {
            root: root.to_path_buf(),
            reason,
        })
    };
    let seconds_ok = |s: f64, min: f64| s.is_finite() && s >= min && s <= MAX_FILE_SECONDS;
    if spec.species == 0 {
        return fail("at least one species is needed".into());
    }
    if !(0.0..=1.0).contains(&spec.domain_shift) {
        return fail(format!(
            "domain_shift must be within 0-1, got {}",
            spec.domain_shift
        ));
    }
    if spec.recordings_per_species == 0 {
        return fail("at least one training recording per species is needed".into());
    }
    if !seconds_ok(spec.recording_seconds, 2.0) {
        return fail(format!(
            "recording_seconds must be within 2-{MAX_FILE_SECONDS} s, got {}",
            spec.recording_seconds
        ));
    }
    if spec.unlabeled > 0 && !seconds_ok(spec.unlabeled_seconds, 1.0) {
        return fail(format!(
            "unlabeled_seconds must be within 1-{MAX_FILE_SECONDS} s, got {}",
            spec.unlabeled_seconds
        ));
    }
    if spec.test == 0 {
        return fail("at least one test soundscape is needed".into());
    }
    let windows = spec.test_seconds / WINDOW_SECONDS;
    if !seconds_ok(spec.test_seconds, WINDOW_SECONDS) || windows.fract() != 0.0 {
        return fail(format!(
            "test_seconds must be a positive multiple of {WINDOW_SECONDS} s up to {MAX_FILE_SECONDS} s, got {}",
            spec.test_seconds
        ));
    }
    if spec.test.saturating_mul(windows as usize) < 2 {
        return fail(
            "the test soundscapes need at least two 5-s windows in all, so that every species \
             can have a positive and a negative window"
                .into(),
        );
    }
    Ok(())
}

/// A generator for one stream and item, independent of all others.
fn sub_rng(seed: u64, stream: u64, index: u64) -> Rng {
    let a = Rng::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64();
    Rng::new(a ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7))
}

/// The highest frequency a call of `sp` reaches, in Hz.
fn max_hz(sp: &Species) -> f64 {
    let factor = match sp.call {
        CallType::UpSweep | CallType::DownSweep => 1.6,
        CallType::Trill => 1.0,
        CallType::Harmonic => 1.5,
        CallType::TwoNote => 1.35,
    };
    sp.base_hz * factor + 50.0
}

/// A steady insect-like drone (a tone with a slow tremolo) over part of `out`.
fn add_drone(out: &mut [f32], sample_rate: u32, rng: &mut Rng) {
    let sr = f64::from(sample_rate);
    let freq = rng.range(2500.0, 9000.0).min(0.4 * sr);
    let amp = rng.range(0.004, 0.015);
    let tremolo_hz = rng.range(0.2, 1.0);
    let len = out.len();
    let start = rng.below(len / 2 + 1);
    let end = start + ((len - start) as f64 * rng.range(0.4, 1.0)) as usize;
    let tau = 2.0 * std::f64::consts::PI;
    for (k, slot) in out.iter_mut().enumerate().take(end).skip(start) {
        let t = k as f64 / sr;
        // Fade in and out over 0.2 s.
        let fade = ((k - start) as f64 / (0.2 * sr))
            .min((end - k) as f64 / (0.2 * sr))
            .min(1.0);
        let env = fade * (0.6 + 0.4 * (tau * tremolo_hz * t).sin());
        *slot += (amp * env * (tau * freq * t).sin()) as f32;
    }
}

/// One training recording to write.
struct TrainPlan {
    primary: usize,
    secondary: Option<usize>,
    /// `<label>/XC<n>.wav`, relative to `train_audio/`.
    filename: String,
    sample_rate: u32,
    seconds: f64,
    call_type: &'static str,
    latitude: f64,
    longitude: f64,
    author: &'static str,
    license: &'static str,
    rating: f64,
    seed: u64,
}

const AUTHORS: [&str; 6] = [
    "Ada Synth",
    "Doe, Jane",
    "Jan \"Bird\" Novak",
    "M. Rossi",
    "Tanaka Hiro",
    "O'Neil, Pat",
];
const LICENSES: [&str; 3] = [
    "Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
    "Creative Commons Attribution-ShareAlike 4.0",
    "Creative Commons Attribution 4.0",
];
const RATINGS: [f64; 8] = [5.0, 5.0, 4.5, 4.0, 4.0, 3.5, 3.0, 0.0];

fn plan_train(spec: &CompetitionSpec, all: &[Species]) -> Vec<TrainPlan> {
    let mut rng = sub_rng(spec.seed, STREAM_TRAIN, u64::MAX);
    let mut plans = Vec::with_capacity(all.len() * spec.recordings_per_species);
    for (primary, sp) in all.iter().enumerate() {
        for r in 0..spec.recordings_per_species {
            let k = plans.len();
            let secondary = (all.len() > 1 && rng.uniform() < 0.35).then(|| {
                let other = rng.below(all.len() - 1);
                if other >= primary {
                    other + 1
                } else {
                    other
                }
            });
            // A few recordings at other rates, to exercise resampling; 22.05 kHz only when every
            // call in it stays below that rate's Nyquist frequency.
            let fits_22k = std::iter::once(primary)
                .chain(secondary)
                .all(|s| max_hz(&all[s]) < 0.45 * 22_050.0);
            let sample_rate = match k % 12 {
                5 if fits_22k => 22_050,
                5 | 11 => 44_100,
                _ => 32_000,
            };
            let call_type = match rng.below(4) {
                0 => "['song']",
                1 => "['call', 'song']",
                _ => "['call']",
            };
            plans.push(TrainPlan {
                primary,
                secondary,
                filename: format!("{}/XC{}.wav", sp.label, 100_000 + 37 * k + r % 37),
                sample_rate,
                seconds: (spec.recording_seconds * rng.range(0.7, 1.3)).max(2.0),
                call_type,
                latitude: rng.range(-40.0, 60.0),
                longitude: rng.range(-120.0, 150.0),
                author: AUTHORS[rng.below(AUTHORS.len())],
                license: LICENSES[rng.below(LICENSES.len())],
                rating: RATINGS[rng.below(RATINGS.len())],
                seed: rng.next_u64(),
            });
        }
    }
    plans
}

fn render_train(plan: &TrainPlan, all: &[Species]) -> Vec<f32> {
    let mut rng = Rng::new(plan.seed);
    let sr = f64::from(plan.sample_rate);
    let n = (plan.seconds * sr) as usize;
    let mut out = background(n, rng.range(0.004, 0.03), &mut rng);
    let sp = &all[plan.primary];
    let mut t = rng.range(0.1, 1.0);
    while t + sp.seconds <= plan.seconds {
        let amp = rng.range(0.08, 0.5);
        add_call(&mut out, plan.sample_rate, (t * sr) as usize, sp, amp);
        t += sp.seconds + rng.range(0.4, 2.4);
    }
    if let Some(s) = plan.secondary {
        let other = &all[s];
        for _ in 0..1 + rng.below(2) {
            let start = rng.range(0.0, (plan.seconds - other.seconds).max(0.0));
            let amp = rng.range(0.03, 0.12);
            add_call(
                &mut out,
                plan.sample_rate,
                (start * sr) as usize,
                other,
                amp,
            );
        }
    }
    out
}

/// The species as soundscapes carry them under a domain shift `shift` (see
/// [`CompetitionSpec::domain_shift`]): the same list for 0.
fn soundscape_species(all: &[Species], shift: f64) -> Vec<Species> {
    all.iter()
        .enumerate()
        .map(|(i, sp)| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            Species {
                base_hz: sp.base_hz * (1.0 + 0.1 * shift * sign),
                seconds: sp.seconds * (1.0 + 0.2 * shift),
                ..sp.clone()
            }
        })
        .collect()
}

fn render_unlabeled(spec: &CompetitionSpec, all: &[Species], i: usize) -> Vec<f32> {
    let mut rng = sub_rng(spec.seed, STREAM_UNLABELED, i as u64);
    let rate = crate::audio::TARGET_SAMPLE_RATE;
    let seconds = spec.unlabeled_seconds;
    let shift = spec.domain_shift;
    // Every fourth soundscape is near-silent: faint background, no calls.
    let silent = i % 4 == 3;
    let calls = if silent {
        0
    } else {
        (seconds * rng.range(0.15, 0.4) * (1.0 + shift)).round() as usize
    };
    let (mut out, _) = if shift > 0.0 {
        shifted_soundscape(seconds, rate, all, calls, shift, &mut rng)
    } else {
        soundscape(seconds, rate, all, calls, &mut rng)
    };
    if silent {
        out.iter_mut().for_each(|v| *v *= 0.2);
    } else if rng.uniform() < 0.5 {
        add_drone(&mut out, rate, &mut rng);
    }
    out
}

/// One test soundscape to write, with its calls and their peak amplitudes.
struct TestPlan {
    stem: String,
    calls: Vec<(Event, f64)>,
    background_level: f64,
    seed: u64,
}

fn plan_test(spec: &CompetitionSpec, all: &[Species], windows_per_file: usize) -> Vec<TestPlan> {
    let mut rng = sub_rng(spec.seed, STREAM_TEST, u64::MAX);
    let total_windows = spec.test * windows_per_file;
    let window = |g: usize| (g / windows_per_file, g % windows_per_file);
    // Each species gets one window where it surely calls and one where it surely does not.
    let positive: Vec<usize> = (0..all.len())
        .map(|s| s * total_windows / all.len())
        .collect();
    let silent: Vec<usize> = positive
        .iter()
        .map(|&p| (p + total_windows / 2) % total_windows)
        .collect();
    let mut calls: Vec<Vec<(Event, f64)>> = vec![Vec::new(); spec.test];
    for (s, sp) in all.iter().enumerate() {
        let (file, w) = window(positive[s]);
        let slack = (WINDOW_SECONDS - sp.seconds).max(0.0);
        let start = w as f64 * WINDOW_SECONDS + rng.range(0.1 * slack, 0.9 * slack);
        let event = Event {
            species: s,
            start,
            end: start + sp.seconds,
        };
        calls[file].push((event, rng.range(0.15, 0.4)));
    }
    for (file, file_calls) in calls.iter_mut().enumerate() {
        let count = (spec.test_seconds * rng.range(0.15, 0.35) * (1.0 + spec.domain_shift)).round()
            as usize;
        for _ in 0..count {
            let s = rng.below(all.len());
            let sp = &all[s];
            let (silent_file, w) = window(silent[s]);
            let quiet_from = w as f64 * WINDOW_SECONDS;
            let quiet_to = quiet_from + WINDOW_SECONDS;
            // Log-uniform loudness: many faint calls, some loud ones.
            let amp = 0.04 * 10f64.powf(rng.uniform());
            for _ in 0..8 {
                let start = rng.range(0.0, (spec.test_seconds - sp.seconds).max(0.0));
                let end = start + sp.seconds;
                if file == silent_file && start < quiet_to && end > quiet_from {
                    continue; // keep this species' silent window silent
                }
                let event = Event {
                    species: s,
                    start,
                    end,
                };
                file_calls.push((event, amp));
                break;
            }
        }
        file_calls.sort_by(|a, b| a.0.start.total_cmp(&b.0.start));
    }
    calls
        .into_iter()
        .enumerate()
        .map(|(i, calls)| TestPlan {
            stem: format!("soundscape_synth_{i}"),
            calls,
            background_level: rng.range(0.008, 0.025),
            seed: rng.next_u64(),
        })
        .collect()
}

fn render_test(plan: &TestPlan, all: &[Species], seconds: f64, shift: f64) -> Vec<f32> {
    let mut rng = Rng::new(plan.seed);
    let rate = crate::audio::TARGET_SAMPLE_RATE;
    let sr = f64::from(rate);
    let level = plan.background_level * (1.0 + 2.0 * shift);
    let mut out = background((seconds * sr) as usize, level, &mut rng);
    for (event, amp) in &plan.calls {
        let start = (event.start * sr) as usize;
        add_call(
            &mut out,
            rate,
            start,
            &all[event.species],
            amp * (1.0 - 0.5 * shift),
        );
    }
    if rng.uniform() < 0.5 {
        add_drone(&mut out, rate, &mut rng);
    }
    out
}

/// Whether a call overlaps the window `[from, to)` by at least half its duration.
fn call_in_window(event: &Event, from: f64, to: f64) -> bool {
    let overlap = event.end.min(to) - event.start.max(from);
    overlap >= 0.5 * (event.end - event.start) - 1e-9
}

/// A CSV field, double-quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn csv_line(fields: &[&str]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// A Latin-looking binomial and an English-looking name for species `i`.
fn species_names(i: usize, sp: &Species) -> (String, String) {
    const GENERA: [&str; 4] = ["Synthavis", "Fictornis", "Pseudotrillus", "Simulacra"];
    let (epithet, common) = match sp.call {
        CallType::UpSweep => ("ascendens", "Rising Whistler"),
        CallType::DownSweep => ("descendens", "Falling Whistler"),
        CallType::Trill => ("trillans", "Trilling Warbler"),
        CallType::Harmonic => ("harmonicus", "Buzzing Chat"),
        CallType::TwoNote => ("bitonus", "Two-note Tit"),
    };
    let round = i / CallType::ALL.len();
    let genus = GENERA[round % GENERA.len()];
    let scientific = if round < GENERA.len() {
        format!("{genus} {epithet}")
    } else {
        format!("{genus} {epithet} {round}")
    };
    (
        scientific,
        format!("{common} ({:.1} kHz)", sp.base_hz / 1000.0),
    )
}

fn taxonomy_csv(all: &[Species]) -> String {
    let mut out = csv_line(&["primary_label", "scientific_name", "common_name"]);
    for (i, sp) in all.iter().enumerate() {
        let (scientific, common) = species_names(i, sp);
        out.push_str(&csv_line(&[&sp.label, &scientific, &common]));
    }
    out
}

fn header_with_labels(labels: &[String]) -> String {
    let mut fields = vec!["row_id"];
    fields.extend(labels.iter().map(String::as_str));
    csv_line(&fields)
}

fn sample_submission_csv(labels: &[String], windows_per_file: usize) -> String {
    let mut out = header_with_labels(labels);
    let p = format!("{}", 1.0 / labels.len() as f64);
    for w in 0..windows_per_file.min(3) {
        let row_id = format!("soundscape_synth_0_{}", (w + 1) * WINDOW_SECONDS as usize);
        let mut fields = vec![row_id.as_str()];
        fields.extend(labels.iter().map(|_| p.as_str()));
        out.push_str(&csv_line(&fields));
    }
    out
}

fn train_metadata_csv(plans: &[TrainPlan], all: &[Species]) -> String {
    let mut out = csv_line(&[
        "primary_label",
        "secondary_labels",
        "type",
        "latitude",
        "longitude",
        "scientific_name",
        "common_name",
        "author",
        "license",
        "rating",
        "url",
        "filename",
    ]);
    for p in plans {
        let sp = &all[p.primary];
        let secondary = match p.secondary {
            Some(s) => format!("['{}']", all[s].label),
            None => "[]".to_string(),
        };
        let (scientific, common) = species_names(p.primary, sp);
        let stem = p
            .filename
            .rsplit('/')
            .next()
            .unwrap_or(&p.filename)
            .trim_end_matches(".wav");
        out.push_str(&csv_line(&[
            &sp.label,
            &secondary,
            p.call_type,
            &format!("{:.4}", p.latitude),
            &format!("{:.4}", p.longitude),
            &scientific,
            &common,
            p.author,
            p.license,
            &format!("{:.1}", p.rating),
            &format!("https://synthetic.invalid/{stem}"),
            &p.filename,
        ]));
    }
    out
}

fn test_solution_csv(plans: &[TestPlan], labels: &[String], windows_per_file: usize) -> String {
    let mut out = header_with_labels(labels);
    for plan in plans {
        for w in 0..windows_per_file {
            let from = w as f64 * WINDOW_SECONDS;
            let to = from + WINDOW_SECONDS;
            let mut positive = vec![false; labels.len()];
            for (event, _) in &plan.calls {
                if call_in_window(event, from, to) {
                    positive[event.species] = true;
                }
            }
            let row_id = format!("{}_{}", plan.stem, (w + 1) * WINDOW_SECONDS as usize);
            let mut fields = vec![row_id.as_str()];
            fields.extend(positive.iter().map(|&p| if p { "1" } else { "0" }));
            out.push_str(&csv_line(&fields));
        }
    }
    out
}

fn create_dir(dir: &Path) -> Result<(), SynthError> {
    std::fs::create_dir_all(dir).map_err(|cause| SynthError::Io {
        path: dir.to_path_buf(),
        cause,
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), SynthError> {
    Ok(crate::fsio::write_atomic(path, text.as_bytes())?)
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

    /// A fresh, unique scratch directory.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("birdclef-synth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The fields of one CSV line (double-quoted fields with doubled inner quotes).
    fn split_csv_line(line: &str) -> Vec<String> {
        let mut fields = vec![String::new()];
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    fields.last_mut().unwrap().push('"');
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(String::new()),
                _ => fields.last_mut().unwrap().push(c),
            }
        }
        assert!(!quoted, "unterminated quote in {line:?}");
        fields
    }

    fn read_csv(path: &Path) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.ends_with('\n'), "{}", path.display());
        text.lines().map(split_csv_line).collect()
    }

    fn wav_rate(path: &Path) -> u32 {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..4], b"RIFF", "{}", path.display());
        u32::from_le_bytes(bytes[24..28].try_into().unwrap())
    }

    fn wav_seconds(path: &Path) -> f64 {
        let bytes = std::fs::read(path).unwrap();
        let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap());
        f64::from(data / 4) / f64::from(wav_rate(path))
    }

    #[test]
    fn competition_layout_and_csvs() {
        let root = scratch("layout");
        let spec = CompetitionSpec::default();
        let started = std::time::Instant::now();
        let summary = write_competition(&root, &spec).unwrap();
        eprintln!("default competition written in {:?}", started.elapsed());
        let labels: Vec<String> = (0..spec.species).map(|i| format!("synbird{i}")).collect();
        assert_eq!(summary.root, root);
        assert_eq!(summary.labels, labels);
        assert_eq!(
            summary.train_files,
            spec.species * spec.recordings_per_species
        );
        assert_eq!(summary.unlabeled_files, spec.unlabeled);
        assert_eq!(summary.test_files, spec.test);

        let taxonomy = read_csv(&root.join("taxonomy.csv"));
        assert_eq!(
            taxonomy[0],
            ["primary_label", "scientific_name", "common_name"]
        );
        assert_eq!(taxonomy.len(), 1 + spec.species);
        for (row, label) in taxonomy[1..].iter().zip(&labels) {
            assert_eq!(row.len(), 3);
            assert_eq!(&row[0], label);
        }

        let mut header = vec!["row_id".to_string()];
        header.extend(labels.iter().cloned());
        let sample = read_csv(&root.join("sample_submission.csv"));
        assert_eq!(sample[0], header);
        assert!(sample.len() > 1);
        for row in &sample[1..] {
            assert_eq!(row.len(), header.len());
            assert!(row[0].starts_with("soundscape_synth_0_"));
            let sum: f64 = row[1..].iter().map(|v| v.parse::<f64>().unwrap()).sum();
            assert!((sum - 1.0).abs() < 1e-9);
        }

        let meta = read_csv(&root.join("train_metadata.csv"));
        assert_eq!(
            meta[0],
            [
                "primary_label",
                "secondary_labels",
                "type",
                "latitude",
                "longitude",
                "scientific_name",
                "common_name",
                "author",
                "license",
                "rating",
                "url",
                "filename"
            ]
        );
        assert_eq!(meta.len(), 1 + summary.train_files);
        let mut rates = std::collections::BTreeSet::new();
        let mut with_secondary = 0;
        let mut per_label = vec![0; spec.species];
        for row in &meta[1..] {
            assert_eq!(row.len(), 12, "{row:?}");
            let primary = labels.iter().position(|l| *l == row[0]).unwrap();
            per_label[primary] += 1;
            assert!(row[1].starts_with('[') && row[1].ends_with(']'), "{row:?}");
            if row[1] != "[]" {
                with_secondary += 1;
                let inner = row[1].trim_matches(['[', ']', '\'']);
                assert!(labels.iter().any(|l| l == inner) && inner != row[0]);
            }
            assert!(row[2].starts_with("['") && row[2].ends_with("']"));
            let rating: f64 = row[9].parse().unwrap();
            assert!((0.0..=5.0).contains(&rating));
            assert!(row[11].starts_with(&format!("{}/XC", row[0])) && row[11].ends_with(".wav"));
            let wav = root.join("train_audio").join(&row[11]);
            rates.insert(wav_rate(&wav));
            let seconds = wav_seconds(&wav);
            assert!(seconds >= 0.7 * spec.recording_seconds - 0.01, "{seconds}");
        }
        assert_eq!(per_label, vec![spec.recordings_per_species; spec.species]);
        assert!(with_secondary > 0);
        assert_eq!(
            rates.into_iter().collect::<Vec<_>>(),
            [22_050, 32_000, 44_100]
        );
        // Fields with commas and quotes survive the round trip.
        assert!(meta
            .iter()
            .any(|r| r[7] == "Jan \"Bird\" Novak" || r[7] == "Doe, Jane"));

        let unlabeled: Vec<_> = std::fs::read_dir(root.join("unlabeled_soundscapes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(unlabeled.len(), spec.unlabeled);
        for path in &unlabeled {
            assert_eq!(wav_rate(path), 32_000);
            assert!((wav_seconds(path) - spec.unlabeled_seconds).abs() < 1e-3);
        }

        let windows = (spec.test_seconds / 5.0) as usize;
        let solution = read_csv(&root.join("test_solution.csv"));
        assert_eq!(solution[0], header);
        assert_eq!(solution.len() - 1, spec.test * windows);
        assert_eq!(summary.test_rows, spec.test * windows);
        let mut positives = vec![0; spec.species];
        for (r, row) in solution[1..].iter().enumerate() {
            assert_eq!(row.len(), header.len());
            let (file, w) = (r / windows, r % windows);
            assert_eq!(row[0], format!("soundscape_synth_{file}_{}", 5 * (w + 1)));
            for (s, v) in row[1..].iter().enumerate() {
                match v.as_str() {
                    "1" => positives[s] += 1,
                    "0" => {}
                    other => panic!("solution value {other}"),
                }
            }
        }
        for (s, &p) in positives.iter().enumerate() {
            assert!(
                p > 0 && p < solution.len() - 1,
                "{}: {p} positive windows",
                labels[s]
            );
        }
        for i in 0..spec.test {
            let path = root.join(format!("test_soundscapes/soundscape_synth_{i}.wav"));
            assert_eq!(wav_rate(&path), 32_000);
            assert!((wav_seconds(&path) - spec.test_seconds).abs() < 1e-3);
            let audio = crate::audio::decode_file(&path).unwrap();
            assert!(audio.samples.iter().all(|v| v.is_finite() && v.abs() < 2.0));
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_domain_shift_changes_the_soundscapes_only() {
        let spec = CompetitionSpec {
            species: 4,
            recordings_per_species: 2,
            recording_seconds: 4.0,
            unlabeled: 2,
            unlabeled_seconds: 10.0,
            test: 2,
            test_seconds: 10.0,
            seed: 3,
            domain_shift: 0.0,
        };
        let (a, b) = (scratch("shift-a"), scratch("shift-b"));
        write_competition(&a, &spec).unwrap();
        write_competition(
            &b,
            &CompetitionSpec {
                domain_shift: 0.8,
                ..spec.clone()
            },
        )
        .unwrap();
        let read = |root: &Path, rel: &str| std::fs::read(root.join(rel)).unwrap();
        assert_eq!(
            read(&a, "train_metadata.csv"),
            read(&b, "train_metadata.csv")
        );
        for entry in std::fs::read_dir(a.join("train_audio")).unwrap() {
            let label = entry.unwrap().file_name();
            for f in std::fs::read_dir(a.join("train_audio").join(&label)).unwrap() {
                let rel = Path::new("train_audio")
                    .join(&label)
                    .join(f.unwrap().file_name());
                let rel = rel.to_string_lossy().into_owned();
                assert_eq!(
                    read(&a, &rel),
                    read(&b, &rel),
                    "{rel}: focal recordings stay clean"
                );
            }
        }
        for rel in [
            "test_soundscapes/soundscape_synth_0.wav",
            "unlabeled_soundscapes/synth_unlabeled_000.wav",
        ] {
            assert_ne!(read(&a, rel), read(&b, rel), "{rel}");
        }
        // Louder background: the quietest tenth of the shifted soundscape has more energy.
        let floor = |root: &Path| {
            let x =
                crate::audio::decode_file(&root.join("test_soundscapes/soundscape_synth_1.wav"))
                    .unwrap()
                    .samples;
            let mut frames: Vec<f64> = x
                .chunks(1600)
                .map(|c| c.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / c.len() as f64)
                .collect();
            frames.sort_by(f64::total_cmp);
            frames[frames.len() / 10].sqrt()
        };
        assert!(
            floor(&b) > 1.5 * floor(&a),
            "{} vs {}",
            floor(&b),
            floor(&a)
        );
        let bad = CompetitionSpec {
            domain_shift: 1.5,
            ..spec
        };
        assert!(write_competition(&scratch("shift-bad"), &bad).is_err());
        for d in [a, b] {
            std::fs::remove_dir_all(&d).ok();
        }
    }

    #[test]
    fn competition_is_deterministic() {
        let spec = CompetitionSpec {
            species: 5,
            recordings_per_species: 2,
            recording_seconds: 4.0,
            unlabeled: 2,
            unlabeled_seconds: 6.0,
            test: 2,
            test_seconds: 10.0,
            seed: 11,
            domain_shift: 0.0,
        };
        let (a, b, c) = (scratch("det-a"), scratch("det-b"), scratch("det-c"));
        write_competition(&a, &spec).unwrap();
        write_competition(&b, &spec).unwrap();
        write_competition(&c, &CompetitionSpec { seed: 12, ..spec }).unwrap();
        let read = |root: &Path, rel: &str| std::fs::read(root.join(rel)).unwrap();
        for rel in [
            "test_solution.csv",
            "train_metadata.csv",
            "test_soundscapes/soundscape_synth_1.wav",
            "unlabeled_soundscapes/synth_unlabeled_000.wav",
        ] {
            assert_eq!(read(&a, rel), read(&b, rel), "{rel}");
        }
        assert_ne!(
            read(&a, "test_soundscapes/soundscape_synth_1.wav"),
            read(&c, "test_soundscapes/soundscape_synth_1.wav")
        );
        // Even with only 4 windows for 5 species, each has a positive and a negative.
        let solution = read_csv(&a.join("test_solution.csv"));
        assert_eq!(solution.len(), 1 + 4);
        for s in 1..=spec.species {
            let column: Vec<&str> = solution[1..].iter().map(|r| r[s].as_str()).collect();
            assert!(column.contains(&"1") && column.contains(&"0"), "{column:?}");
        }
        for root in [a, b, c] {
            std::fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn competition_errors_name_the_path() {
        let root = scratch("errors");
        let bad = CompetitionSpec {
            test_seconds: 12.0,
            ..CompetitionSpec::default()
        };
        let e = write_competition(&root, &bad).unwrap_err();
        assert!(matches!(e, SynthError::Spec { .. }), "{e}");
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
        assert!(e.to_string().contains("multiple of 5"), "{e}");
        let one_window = CompetitionSpec {
            test: 1,
            test_seconds: 5.0,
            ..CompetitionSpec::default()
        };
        assert!(write_competition(&root, &one_window).is_err());
        assert!(!root.exists(), "an invalid spec writes nothing");

        // A file where the directory should be.
        std::fs::write(&root, b"not a directory").unwrap();
        let e = write_competition(&root, &CompetitionSpec::default()).unwrap_err();
        assert!(matches!(e, SynthError::Io { .. }), "{e}");
        assert_eq!(e.path(), root.as_path());
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
        std::fs::remove_file(&root).unwrap();
    }
}
