//! `birdclef-infer features` and `demo`, run as a user runs them. The synthetic-audio tests need
//! nothing outside the repository; the real-recording checks use ../shared when it is there.
use birdclef_models::rng::Rng;
use std::process::Command;

use birdclef::{bin, run, scratch_dir, shared_data};
use birdclef_models::audio::{decode_file, write_wav_f32};
use birdclef_models::card::Card;
use birdclef_models::frontend::Frontend;
use birdclef_models::{npy, synth};

const CARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/cards/nvbird224.card.json"
);

#[test]
fn features_npy_equals_the_library_frontend() {
    let dir = scratch_dir("features-synth");
    let (samples, _) = synth::soundscape(13.0, 32_000, &synth::species(4), 6, &mut Rng::new(3));
    // 22.05 kHz input: the CLI must resample exactly as the library does.
    let at22 = birdclef_models::audio::resample(&samples, 32_000, 22_050).expect("resample");
    let wav = dir.join("synth.wav");
    write_wav_f32(&wav, &at22, 22_050).expect("wav");
    let out = dir.join("synth.npy");
    let (code, stdout, stderr) = run(Command::new(bin("birdclef-infer"))
        .args(["features", "--card", CARD])
        .arg(&wav)
        .arg("-o")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("[3, 1, 224, 224]"), "{stdout}");
    let got = npy::read_f32(&out).expect("npy");
    let fe = Frontend::new(Card::load(CARD.as_ref()).expect("card").frontend).expect("frontend");
    let want = fe.compute(&decode_file(&wav).expect("decode").samples);
    assert_eq!(got.shape(), want.shape());
    assert_eq!(got, want.into_dyn(), "CLI and library disagree");
}

#[test]
fn bad_input_fails_cleanly_and_writes_nothing() {
    let dir = scratch_dir("features-bad");
    let not_audio = dir.join("notes.ogg");
    std::fs::write(&not_audio, "this is not audio\n").expect("write");
    let empty = dir.join("empty.wav");
    std::fs::write(&empty, "").expect("write");
    let bad_card = dir.join("bad.card.json");
    std::fs::write(&bad_card, r#"{"format_version": 1, "name": "x"}"#).expect("write");
    let good_audio = dir.join("ok.wav");
    write_wav_f32(&good_audio, &vec![0.0; 32_000], 32_000).expect("wav");
    let cases = [
        (
            CARD.to_string(),
            not_audio.clone(),
            "not a recognised audio file",
        ),
        (CARD.to_string(), empty.clone(), "empty"),
        (CARD.to_string(), dir.join("missing.ogg"), "cannot read"),
        (
            bad_card.display().to_string(),
            good_audio.clone(),
            "not a valid model card",
        ),
    ];
    for (card, audio, why) in cases {
        let out = dir.join("out.npy");
        let (code, _, stderr) = run(Command::new(bin("birdclef-infer"))
            .args(["features", "--card", &card])
            .arg(&audio)
            .arg("-o")
            .arg(&out));
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(why), "expected {why:?} in {stderr}");
        let named = if why.contains("card") {
            card.clone()
        } else {
            audio.display().to_string()
        };
        assert!(stderr.contains(&named), "error must name {named}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "no output may be left behind");
    }
}

#[test]
fn demo_runs_end_to_end() {
    let dir = scratch_dir("demo");
    let (code, stdout, stderr) = run(Command::new(bin("birdclef-infer"))
        .args(["demo", "--seconds", "7", "--out"])
        .arg(&dir));
    assert_eq!(code, 0, "{stderr}");
    for name in ["nvbird224", "kefir128"] {
        let x = npy::read_f32(&dir.join(format!("demo_soundscape.{name}.npy"))).expect("npy");
        assert_eq!(x.shape()[0], 2, "7 s = one full window + a 2-s partial one");
        assert!(x.iter().all(|v| v.is_finite()));
        assert!(stdout.contains(name), "{stdout}");
    }
}

#[test]
fn real_recordings_in_every_format_give_matching_features() {
    let Some(formats) = shared_data("formats") else {
        return;
    };
    let dir = scratch_dir("features-formats");
    let reference = dir.join("reference.npy");
    let (code, _, stderr) = run(Command::new(bin("birdclef-infer"))
        .args(["features", "--card", CARD])
        .arg(formats.join("birds_10s_32k_reference.wav"))
        .arg("-o")
        .arg(&reference));
    assert_eq!(code, 0, "{stderr}");
    let reference = npy::read_f32(&reference).expect("npy");
    // FLAC is lossless and 48 kHz: after resampling, its log-mel must match the reference closely
    // wherever the reference is not near the floor.
    let out = dir.join("flac.npy");
    let (code, _, stderr) = run(Command::new(bin("birdclef-infer"))
        .args(["features", "--card", CARD])
        .arg(formats.join("birds_10s_48k.flac"))
        .arg("-o")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let flac = npy::read_f32(&out).expect("npy");
    assert_eq!(flac.shape(), reference.shape());
    let diffs: Vec<f32> = flac
        .iter()
        .zip(reference.iter())
        .filter(|(_, r)| **r > -60.0)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    println!(
        "48 kHz FLAC vs 32 kHz WAV: mean |diff| {mean:.3} dB over {} bins above -60 dB",
        diffs.len()
    );
    assert!(mean < 0.5, "mean difference {mean} dB");
}

#[test]
fn outputs_are_checked_before_reading_and_inputs_are_never_overwritten() {
    let dir = scratch_dir("features-outputs");
    let wav = dir.join("ok.wav");
    write_wav_f32(&wav, &vec![0.0; 32_000], 32_000).expect("wav");
    let card = dir.join("card.json");
    std::fs::copy(CARD, &card).expect("card");
    let not_audio = dir.join("notes.ogg");
    std::fs::write(&not_audio, "not audio").expect("write");
    let features = |card: &std::path::Path, audio: &std::path::Path, out: &std::path::Path| {
        run(Command::new(bin("birdclef-infer"))
            .args(["features", "--card"])
            .arg(card)
            .arg(audio)
            .arg("-o")
            .arg(out))
    };
    // A bad output is the error even when the audio is bad too: it is checked first.
    for (out, why) in [
        (dir.join("missing/x.npy"), "does not exist"),
        (dir.to_path_buf(), "is a directory"),
    ] {
        let (code, _, stderr) = features(&card, &not_audio, &out);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(why) && stderr.contains("--out"), "{stderr}");
        assert!(!stderr.contains("not a recognised audio file"), "{stderr}");
    }
    // -o naming the audio or the card: refused naming both, the input unchanged.
    for input in [&wav, &card] {
        let before = std::fs::read(input).expect("read");
        let (code, _, stderr) = features(&card, &wav, input);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("refusing to overwrite"), "{stderr}");
        assert!(stderr.contains(&input.display().to_string()), "{stderr}");
        assert_eq!(std::fs::read(input).expect("read"), before);
    }
    // A link stays a link, its target gets the .npy.
    let link = dir.join("link.npy");
    std::os::unix::fs::symlink("target.npy", &link).expect("link");
    let (code, _, stderr) = features(&card, &wav, &link);
    assert_eq!(code, 0, "{stderr}");
    assert!(std::fs::symlink_metadata(&link)
        .expect("meta")
        .file_type()
        .is_symlink());
    assert_eq!(
        npy::read_f32(&dir.join("target.npy")).expect("npy").shape()[0],
        1
    );

    // demo: an --out that is a file, or holding a directory where an output goes.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").expect("write");
    let (code, _, stderr) = run(Command::new(bin("birdclef-infer"))
        .args(["demo", "--seconds", "2", "--out"])
        .arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("a-file") && stderr.contains("not a directory"),
        "{stderr}"
    );
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("demo_soundscape.kefir128.npy")).expect("mkdir");
    let (code, stdout, stderr) = run(Command::new(bin("birdclef-infer"))
        .args(["demo", "--seconds", "2", "--out"])
        .arg(&blocked));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("demo_soundscape.kefir128.npy"), "{stderr}");
    assert!(stdout.is_empty(), "nothing done before the check: {stdout}");
}
