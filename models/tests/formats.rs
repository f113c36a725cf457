//! Every recording in ../shared/data/formats decodes to mono 32 kHz; the broken ones give a typed
//! error that names the file. Skipped (with a message) where ../shared is absent.
use std::path::PathBuf;

use birdclef_models::audio::{decode_file, AudioError, TARGET_SAMPLE_RATE};

fn formats_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/formats");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: {} not found", dir.display());
        None
    }
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[test]
fn every_good_file_decodes_to_32k_mono() {
    let Some(dir) = formats_dir() else { return };
    let reference = decode_file(&dir.join("birds_10s_32k_reference.wav")).expect("reference");
    assert_eq!(reference.samples.len(), 324_263); // soundfile reports 324,263 frames
    let ref_rms = rms(&reference.samples);
    let cases = [
        ("birds_10s_32k_mono.ogg", 32_000, 1, 10.1332),
        ("birds_10s_22k05_stereo.ogg", 22_050, 2, 10.1332),
        ("birds_10s_44k1_stereo_s16.wav", 44_100, 2, 10.1332),
        ("birds_10s_48k_f32.wav", 48_000, 1, 10.1332),
        ("birds_10s_48k.flac", 48_000, 1, 10.1332),
        ("birds_10s_44k1.mp3", 44_100, 1, 10.1332),
        ("short_1s.ogg", 32_000, 1, 1.0),
        ("silent_5s.wav", 32_000, 1, 5.0),
    ];
    for (name, rate, channels, seconds) in cases {
        let d = decode_file(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.source.sample_rate, rate, "{name}");
        assert_eq!(d.source.channels, channels, "{name}");
        let got = d.duration_seconds();
        // Lossy codecs may add or drop a few ms of priming/padding.
        assert!(
            (got - seconds).abs() < 0.06,
            "{name}: {got} s, want {seconds}"
        );
        let r = rms(&d.samples);
        if name.starts_with("birds_") {
            // Same recording in every container: loudness within 10% of the reference. The stereo
            // files were upmixed at -3 dB per channel (soundfile reads the same 0.707 ratio).
            let want = if channels == 2 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            assert!(
                (r / ref_rms / want - 1.0).abs() < 0.1,
                "{name}: rms {r} vs {ref_rms} x {want}"
            );
        } else if name.starts_with("silent") {
            assert_eq!(r, 0.0, "{name}");
        }
        println!("{name:32} {rate:>6} Hz {channels} ch -> {:>7} samples at {TARGET_SAMPLE_RATE} Hz, rms {r:.4}", d.samples.len());
    }
}

#[test]
fn broken_files_give_typed_errors_naming_the_file() {
    let Some(dir) = formats_dir() else { return };
    for name in ["bad_empty.ogg", "bad_not_audio.ogg", "bad_truncated.ogg"] {
        let err = decode_file(&dir.join(name)).expect_err(name);
        let msg = err.to_string();
        println!("{name}: {msg}");
        assert!(msg.contains(name), "message must name the file: {msg}");
        assert!(err.path().ends_with(name));
        match (name, &err) {
            ("bad_empty.ogg", AudioError::Empty { .. }) => {}
            ("bad_not_audio.ogg", AudioError::UnknownFormat { .. }) => {}
            (
                "bad_truncated.ogg",
                AudioError::Truncated {
                    decoded_seconds, ..
                },
            ) => {
                assert!(
                    *decoded_seconds > 1.0 && *decoded_seconds < 6.0,
                    "{decoded_seconds}"
                );
            }
            _ => panic!("{name}: unexpected error kind {err:?}"),
        }
    }
    let missing = decode_file(&dir.join("does_not_exist.ogg")).expect_err("missing");
    assert!(matches!(missing, AudioError::Io { .. }), "{missing:?}");
}

#[test]
fn streaming_decode_holds_one_packet_at_a_time() {
    // Three minutes of 48 kHz mono float WAV, streamed: every chunk is small, and the
    // chunks joined equal the whole-file decode.
    let dir = std::env::temp_dir().join(format!("stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("long.wav");
    let n = 180 * 48_000;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.013).sin() * 0.2) + ((i % 97) as f32 / 970.0))
        .collect();
    birdclef_models::audio::write_wav_f32(&path, &x, 48_000).expect("wav");
    drop(x);
    let mut stream = birdclef_models::audio::AudioStream::open(&path).expect("open");
    let (mut joined, mut largest, mut chunks) = (Vec::new(), 0, 0);
    while let Some(chunk) = stream.next_chunk().expect("chunk") {
        largest = largest.max(chunk.len());
        chunks += 1;
        joined.extend_from_slice(&chunk);
    }
    let whole = decode_file(&path).expect("decode");
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "{chunks} chunks, largest {largest} samples, {} samples in all",
        joined.len()
    );
    assert_eq!(joined.len(), 180 * 32_000);
    assert_eq!(joined, whole.samples);
    assert!(
        chunks > 100,
        "the file must arrive in many pieces, got {chunks}"
    );
    assert!(
        largest <= 32_768,
        "a chunk of {largest} samples is not streaming"
    );
}
