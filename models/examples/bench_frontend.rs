//! Single-thread decode / resample / log-mel timings per soundscape, in milliseconds.
//! `cargo run --release -p birdclef-models --example bench_frontend -- [--json] [--repeat N] FILE...`
//! `bench/frontend.sh` runs it beside the Python reference (soundfile + librosa) and prints one
//! table. Each number is the best of `--repeat` runs (default 3), to damp a noisy machine.
use std::path::Path;
use std::time::Instant;

use birdclef_models::audio::{decode_file, resample};
use birdclef_models::frontend::{Frontend, FrontendConfig, Normalize};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Symphonia alone: demux and decode every packet, keep nothing.
fn symphonia_only(path: &Path) -> Res<usize> {
    let mss = MediaSourceStream::new(Box::new(std::fs::File::open(path)?), Default::default());
    let mut format = symphonia::default::get_probe().probe(
        &Hint::new(),
        mss,
        FormatOptions::default(),
        MetadataOptions::default(),
    )?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or("no audio track")?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|c| c.audio())
        .ok_or("no params")?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())?;
    let mut frames = 0;
    while let Some(packet) = format.next_packet()? {
        frames += decoder.decode(&packet)?.frames();
    }
    Ok(frames)
}

fn best_ms<T>(repeat: usize, mut f: impl FnMut() -> Res<T>) -> Res<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let v = f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        last = Some(v);
    }
    Ok((best, last.ok_or("no run")?))
}

fn main() -> Res<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut json = false;
    let mut repeat = 3;
    while let Some(a) = args.first().cloned() {
        match a.as_str() {
            "--json" => json = true,
            "--repeat" if args.len() > 1 => {
                repeat = args[1].parse()?;
                args.remove(0);
            }
            _ => break,
        }
        args.remove(0);
    }
    if args.is_empty() {
        return Err("usage: bench_frontend [--json] [--repeat N] FILE...".into());
    }
    // One thread: the numbers are per core.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()?;
    let nvbird = Frontend::new(FrontendConfig::nvbird224())?;
    let kefir = Frontend::new(FrontendConfig::kefir128())?;
    // What `birdclef-train` cards use: nvbird224 plus per-image standardisation.
    let nvbird_std = Frontend::new(FrontendConfig {
        normalize: Normalize::ImageStandard,
        ..FrontendConfig::nvbird224()
    })?;
    let mut rows = Vec::new();
    for file in &args {
        let path = Path::new(file);
        let (raw_ms, _) = best_ms(repeat, || symphonia_only(path))?;
        let (decode_ms, decoded) = best_ms(repeat, || Ok(decode_file(path)?))?;
        // The bench files are 32 kHz, so decode_file does not resample them: time 48 -> 32 kHz on
        // the same audio, as if it had come at 48 kHz.
        let at48 = resample(&decoded.samples, 32_000, 48_000)?;
        let (resample_ms, _) = best_ms(repeat, || Ok(resample(&at48, 48_000, 32_000)?))?;
        let (nvbird_ms, x) = best_ms(repeat, || Ok(nvbird.compute(&decoded.samples)))?;
        let (std_ms, _) = best_ms(repeat, || Ok(nvbird_std.compute(&decoded.samples)))?;
        let (kefir_ms, _) = best_ms(repeat, || Ok(kefir.compute(&decoded.samples)))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.push(serde_json::json!({
            "file": name, "seconds": decoded.duration_seconds(), "windows": x.shape()[0],
            "symphonia_ms": raw_ms, "decode_ms": decode_ms, "resample_48k_ms": resample_ms,
            "mel_nvbird224_ms": nvbird_ms, "mel_nvbird224_std_ms": std_ms, "mel_kefir128_ms": kefir_ms,
            "decode_plus_mel_ms": decode_ms + nvbird_ms,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let cols = [
        "symphonia_ms",
        "decode_ms",
        "resample_48k_ms",
        "mel_nvbird224_ms",
        "mel_nvbird224_std_ms",
        "mel_kefir128_ms",
        "decode_plus_mel_ms",
    ];
    print!("{:<26}", "file");
    cols.iter().for_each(|c| print!(" {:>18}", c));
    println!();
    for r in &rows {
        print!("{:<26}", r["file"].as_str().unwrap_or(""));
        cols.iter()
            .for_each(|c| print!(" {:>18.1}", r[c].as_f64().unwrap_or(f64::NAN)));
        println!();
    }
    Ok(())
}
