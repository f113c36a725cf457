//! `features` and `demo`: audio → model-input tensors through the shared frontend.
use birdclef_models::rng::Rng;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use birdclef_models::audio::{decode_file, write_wav_f32, TARGET_SAMPLE_RATE};
use birdclef_models::card::Card;
use birdclef_models::frontend::Frontend;
use birdclef_models::fsio;
use birdclef_models::{npy, synth};
use ndarray::Array4;

/// The reference frontend cards shipped in `models/cards/`, embedded so the demo needs no files.
const SHIPPED_CARDS: [(&str, &str); 2] = [
    ("nvbird224", birdclef_models::card::NVBIRD224_JSON),
    ("kefir128", birdclef_models::card::KEFIR128_JSON),
];

/// What `features` computed, for the one-line report.
pub struct Summary {
    /// Card name.
    pub card: String,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// Seconds of audio at 32 kHz.
    pub seconds: f64,
    /// Source rate and channels.
    pub source: String,
    /// Value range and mean.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Mean value.
    pub mean: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<10} {:>7.2} s ({}) -> {:?} [windows, channels, mels, frames]; min {:.2} max {:.2} mean {:.2}",
            self.card, self.seconds, self.source, self.shape, self.min, self.max, self.mean
        )
    }
}

/// Decode `audio` and compute its model input with `frontend`.
fn compute(frontend: &Frontend, audio: &Path) -> Result<(Array4<f32>, f64, String)> {
    let decoded = decode_file(audio)?;
    let source = format!(
        "{} Hz, {} ch, {}",
        decoded.source.sample_rate, decoded.source.channels, decoded.source.codec
    );
    Ok((
        frontend.compute(&decoded.samples),
        decoded.duration_seconds(),
        source,
    ))
}

fn summarize(card: &Card, x: &Array4<f32>, seconds: f64, source: String) -> Summary {
    let (min, max, sum) = x.iter().fold(
        (f32::INFINITY, f32::NEG_INFINITY, 0.0f64),
        |(a, b, s), &v| (a.min(v), b.max(v), s + f64::from(v)),
    );
    Summary {
        card: card.name.clone(),
        shape: x.shape().to_vec(),
        seconds,
        source,
        min,
        max,
        mean: sum / x.len().max(1) as f64,
    }
}

/// `birdclef-infer features`: card + audio → `.npy`.
///
/// `out` is checked (writable, neither the card nor the audio) before anything is read.
pub fn write_features(card_path: &Path, audio: &Path, out: &Path) -> Result<Summary> {
    fsio::check_output_file(out).context("--out")?;
    fsio::refuse_overwriting(out, [card_path, audio]).context("--out")?;
    let card = Card::load(card_path)?;
    let frontend = Frontend::new(card.frontend.clone())
        .with_context(|| format!("{}: frontend", card_path.display()))?;
    let (x, seconds, source) = compute(&frontend, audio)?;
    npy::write_f32(out, &x)?;
    Ok(summarize(&card, &x, seconds, source))
}

/// `birdclef-infer demo`: synthesise → WAV → decode → features for both shipped cards.
pub fn demo(out_dir: &Path, seconds: f64, seed: u64) -> Result<()> {
    anyhow::ensure!(
        seconds > 0.0 && seconds <= 3600.0,
        "--seconds must be in (0, 3600], got {seconds}"
    );
    fsio::check_output_dir(out_dir).context("--out")?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create the output directory", out_dir.display()))?;
    let wav = out_dir.join("demo_soundscape.wav");
    let npys: Vec<PathBuf> = SHIPPED_CARDS
        .iter()
        .map(|(name, _)| out_dir.join(format!("demo_soundscape.{name}.npy")))
        .collect();
    for path in std::iter::once(&wav).chain(&npys) {
        fsio::check_output_file(path).context("--out")?;
    }
    let species = synth::species(5);
    let calls = (seconds * 0.8).ceil() as usize;
    let (samples, events) = synth::soundscape(
        seconds,
        TARGET_SAMPLE_RATE,
        &species,
        calls,
        &mut Rng::new(seed),
    );
    write_wav_f32(&wav, &samples, TARGET_SAMPLE_RATE)
        .with_context(|| format!("{}: cannot write", wav.display()))?;
    println!(
        "synthesised {seconds} s with {} calls of {} species -> {}",
        events.len(),
        species.len(),
        wav.display()
    );
    for ((name, json), path) in SHIPPED_CARDS.into_iter().zip(&npys) {
        let card = Card::from_json(json).with_context(|| format!("shipped card {name}"))?;
        let frontend = Frontend::new(card.frontend.clone())?;
        let (x, secs, source) = compute(&frontend, &wav)?;
        npy::write_f32(path, &x)?;
        println!(
            "{}  -> {}",
            summarize(&card, &x, secs, source),
            path.display()
        );
    }
    Ok(())
}
