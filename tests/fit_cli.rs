//! `birdclef-train fit` from the command line on a synthesised BirdCLEF-layout directory (nothing
//! from ../shared): it trains, writes history.csv/history.png and checkpoints, and best/ exports.
use birdclef_models::rng::Rng;
use std::path::Path;
use std::process::Command;

use birdclef::{bin, run, scratch_dir};
use birdclef_models::audio::write_wav_f32;
use birdclef_models::synth;

fn competition(root: &Path) {
    let species = synth::species(4);
    let mut meta = String::from("primary_label,secondary_labels,type,rating,filename\n");
    let mut rng = Rng::new(5);
    for (s, sp) in species.iter().enumerate() {
        std::fs::create_dir_all(root.join("train_audio").join(&sp.label)).expect("dir");
        for r in 0..4 {
            let mut x = synth::background(8 * 32_000, 0.01, &mut rng);
            for c in 0..6 {
                synth::add_call(&mut x, 32_000, 10_000 + c * 40_000, sp, 0.3);
            }
            let name = format!("{}/XC{s}{r}.wav", sp.label);
            write_wav_f32(&root.join("train_audio").join(&name), &x, 32_000).expect("wav");
            meta.push_str(&format!("{},[],['call'],4.0,{name}\n", sp.label));
        }
    }
    std::fs::write(root.join("train_metadata.csv"), meta).expect("meta");
    let mut tax = String::from("primary_label,common_name\n");
    for sp in &species {
        tax.push_str(&format!("{},{}\n", sp.label, sp.label));
    }
    std::fs::write(root.join("taxonomy.csv"), tax).expect("taxonomy");
    std::fs::create_dir_all(root.join("unlabeled_soundscapes")).expect("dir");
    let (bg, _) = synth::soundscape(20.0, 32_000, &species, 3, &mut rng);
    write_wav_f32(&root.join("unlabeled_soundscapes/site1.wav"), &bg, 32_000).expect("wav");
}

#[test]
fn fit_trains_and_its_best_checkpoint_exports() {
    let dir = scratch_dir("fit-cli");
    let data = dir.join("competition");
    competition(&data);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/debug.toml");
    let out = dir.join("run");
    let (code, stdout, stderr) = run(Command::new(bin("birdclef-train"))
        .args(["--device", "cpu", "fit", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--set", "data.n_folds=2", "--set", "optim.epochs=2"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("fold 0: best"), "{stdout}");
    let fold = out.join("fold0");
    let history = std::fs::read_to_string(fold.join("history.csv")).expect("history");
    assert!(
        history.starts_with("epoch,train_loss,val_loss,val_macro_roc_auc,val_cmap"),
        "{history}"
    );
    assert_eq!(history.lines().count(), 3, "header + 2 epochs");
    let png = std::fs::read(fold.join("history.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let onnx = dir.join("best.onnx");
    let (code, _, stderr) = run(Command::new(bin("birdclef-export"))
        .arg("--checkpoint")
        .arg(fold.join("best"))
        .arg("--out")
        .arg(&onnx));
    assert_eq!(code, 0, "{stderr}");
    // A bad data directory is a clear error naming it.
    let (code, _, stderr) = run(Command::new(bin("birdclef-train"))
        .args(["--device", "cpu", "fit", "--data"])
        .arg(dir.join("nowhere"))
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(dir.join("run2")));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The same run directory again without --resume: refused before the data is read.
    let (code, _, stderr) = run(fit(&data, &out).args(["--set", "data.n_folds=2"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already holds a run"), "{stderr}");
    assert!(
        !stderr.contains("recordings,"),
        "the dataset was read: {stderr}"
    );

    // A run killed before its first epoch finished (config.toml, no last/): --resume trains the
    // fold from its beginning and says so.
    let killed = dir.join("killed");
    std::fs::create_dir_all(killed.join("fold0")).expect("dir");
    std::fs::write(killed.join("fold0/config.toml"), "").expect("config");
    let (code, _, stderr) = run(fit(&data, &killed).args([
        "--resume",
        "--set",
        "data.n_folds=2",
        "--set",
        "optim.epochs=1",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("stopped before the first epoch finished"),
        "{stderr}"
    );
    let history = std::fs::read_to_string(killed.join("fold0/history.csv")).expect("history");
    assert_eq!(history.lines().count(), 2, "header + 1 epoch");
}

/// `birdclef-train --device cpu fit --data DATA --config configs/debug.toml --out OUT`.
fn fit(data: &Path, out: &Path) -> Command {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/debug.toml");
    let mut cmd = Command::new(bin("birdclef-train"));
    cmd.args(["--device", "cpu", "fit", "--data"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out);
    cmd
}

#[test]
fn outputs_resume_and_options_are_checked_before_any_work() {
    let dir = scratch_dir("fit-cli-checks");
    let data = dir.join("competition");
    competition(&data);
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).expect("dir");
    std::fs::write(runs.join("plain"), "x").expect("file");
    std::fs::create_dir_all(runs.join("foldfile")).expect("dir");
    std::fs::write(runs.join("foldfile/fold0"), "x").expect("file");
    let cases: [(&str, &[&str], &[&str]); 7] = [
        ("plain", &[], &["plain", "not a directory"]),
        ("foldfile", &[], &["fold0", "not a directory"]),
        (
            "never-ran",
            &["--resume"],
            &["never-ran", "nothing to resume"],
        ),
        ("new", &["--fold", "5"], &["--fold 5"]),
        ("new", &["--cap-per-species", "0"], &["--cap-per-species"]),
        ("new", &["--backgrounds", "0"], &["--backgrounds"]),
        (
            "new",
            &["--background-seconds", "0"],
            &["--background-seconds"],
        ),
    ];
    for (out, extra, expected) in cases {
        let (code, _, stderr) = run(fit(&data, &runs.join(out)).args(extra));
        assert_eq!(code, 2, "{out} {extra:?}: {stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{out} {extra:?}: {stderr}");
        }
        // Nothing was read, cached or trained.
        assert!(!stderr.contains("recordings,"), "{stderr}");
        assert!(
            !runs.join(".cache").exists(),
            "{out} {extra:?}: a cache was built"
        );
        assert!(!runs.join("new").exists() && !runs.join("never-ran").exists());
    }
}

/// configs/per-frequency-cnn.toml (efficientnet_b0 on per-frequency standardised input) trains a
/// few batches, its card carries the normalisation, and its best checkpoint exports.
#[test]
fn the_per_frequency_cnn_config_trains_and_exports() {
    let dir = scratch_dir("fit-perfreq");
    let data = dir.join("competition");
    competition(&data);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/per-frequency-cnn.toml");
    let out = dir.join("run");
    let mut cmd = Command::new(bin("birdclef-train"));
    cmd.args(["--device", "cpu", "fit", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&out);
    for o in [
        "model.n_mels=32",
        "model.hop_length=3200",
        "model.n_fft=512",
        "optim.epochs=2",
        "optim.batch_size=4",
        "optim.repeats=1",
        "run.debug_batches=2",
        "data.n_folds=2",
        "data.cache_seconds=8",
    ] {
        cmd.args(["--set", o]);
    }
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    let best = out.join("fold0/best");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("card.json")).expect("card"))
            .expect("json");
    assert_eq!(card["frontend"]["normalize"], "per_frequency", "{card}");
    assert_eq!(card["architecture"], "efficientnet_b0", "{card}");
    let (code, _, stderr) = run(Command::new(bin("birdclef-export"))
        .arg("--checkpoint")
        .arg(&best)
        .arg("--out")
        .arg(dir.join("perfreq.onnx")));
    assert_eq!(code, 0, "{stderr}");
}

/// A 10-s context around each 5-s window (configs/debug.toml with model.context_seconds=10 and
/// 10-s crops): it trains, the card says so with a 10-s input, and it exports.
#[test]
fn a_context_longer_than_the_window_trains_and_exports() {
    let dir = scratch_dir("fit-context");
    let data = dir.join("competition");
    competition(&data);
    let out = dir.join("run");
    let (code, _, stderr) = run(fit(&data, &out).args([
        "--set",
        "model.context_seconds=10",
        "--set",
        "augment.crop_seconds=10",
        "--set",
        "optim.epochs=1",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let best = out.join("fold0/best");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("card.json")).expect("card"))
            .expect("json");
    let windows = &card["frontend"]["windows"];
    assert_eq!(
        (
            windows["window_seconds"].as_f64(),
            windows["context_seconds"].as_f64()
        ),
        (Some(5.0), Some(10.0)),
        "{card}"
    );
    assert_eq!(card["input_shape"][2], 101, "10 s at hop 3200: {card}");
    let (code, _, stderr) = run(Command::new(bin("birdclef-export"))
        .arg("--checkpoint")
        .arg(&best)
        .arg("--out")
        .arg(dir.join("context.onnx")));
    assert_eq!(code, 0, "{stderr}");
    // A crop that is not the context is refused before any work.
    let (code, _, stderr) =
        run(fit(&data, &dir.join("bad")).args(["--set", "model.context_seconds=10"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("augment.crop_seconds = 5") && stderr.contains("10 s"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("recordings,"),
        "the dataset was read: {stderr}"
    );
}
