//! The annotated-soundscape setup end to end with 3-s windows, on synthesised soundscapes (nothing
//! from ../shared): `birdclef-train fit --annotations --audio` with configs/annotated-3s.toml
//! (train/val/test by recording group, the test split scored at the end), then the best
//! checkpoint exported, birdclef-infer writing a row at every 3-s window end, and `score`.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use birdclef::{bin, run, scratch_dir};
use birdclef_models::audio::write_wav_f32;
use birdclef_models::rng::Rng;
use birdclef_models::synth;

/// Six 24-s soundscapes at six sites, each with calls of three species, and their annotation
/// table (the calls' stretches; every fourth as a point annotation at its start).
fn annotated(dir: &Path) -> std::path::PathBuf {
    let species = synth::species(3);
    let audio = dir.join("audio");
    std::fs::create_dir_all(&audio).expect("dir");
    let mut table = String::from("filename,start,end,label,group\n");
    let mut rng = Rng::new(11);
    for i in 0..6 {
        let (x, events) = synth::soundscape(24.0, 32_000, &species, 10, &mut rng);
        let name = format!("site{i}/rec{i}.wav");
        std::fs::create_dir_all(audio.join(format!("site{i}"))).expect("dir");
        write_wav_f32(&audio.join(&name), &x, 32_000).expect("wav");
        for (e, ev) in events.iter().enumerate() {
            let end = if e % 4 == 3 {
                String::new()
            } else {
                format!("{:.3}", ev.end)
            };
            table.push_str(&format!(
                "{name},{:.3},{end},{},site{i}\n",
                ev.start, species[ev.species].label
            ));
        }
    }
    let path = dir.join("annotations.csv");
    std::fs::write(&path, table).expect("table");
    path
}

/// `birdclef-train fit --annotations TABLE --audio DIR/audio` with configs/annotated-3s.toml on
/// a tiny input, 2 epochs of 2 batches.
fn fit(dir: &Path, table: &Path, out: &Path) -> Command {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/annotated-3s.toml");
    let mut cmd = Command::new(bin("birdclef-train"));
    cmd.args(["--device", "cpu", "fit", "--annotations"])
        .arg(table)
        .arg("--audio")
        .arg(dir.join("audio"))
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out);
    for o in [
        "annotations.min_count=1",
        "annotations.ratios=[0.5, 0.25, 0.25]",
        "model.n_mels=32",
        "model.hop_length=1600",
        "model.n_fft=512",
        "optim.epochs=2",
        "optim.batch_size=8",
        "run.debug_batches=2",
    ] {
        cmd.args(["--set", o]);
    }
    cmd
}

/// Export checkpoint `ckpt` to `onnx` and score `audio` with it into `out`; the submission's text.
fn export_and_infer(ckpt: &Path, onnx: &Path, audio: &Path, out: &Path) -> String {
    let (code, _, stderr) = run(Command::new(bin("birdclef-export"))
        .arg("--checkpoint")
        .arg(ckpt)
        .arg("--out")
        .arg(onnx));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(Command::new(bin("birdclef-infer"))
        .arg("--models")
        .arg(onnx)
        .arg("--soundscapes")
        .arg(audio)
        .arg("--out")
        .arg(out));
    assert_eq!(code, 0, "{stderr}");
    std::fs::read_to_string(out).expect("submission")
}

#[test]
fn annotated_three_second_windows_train_export_infer_and_score() {
    let dir = scratch_dir("annotated-cli");
    let table = annotated(&dir);
    let out = dir.join("run");
    let (code, stdout, stderr) = run(&mut fit(&dir, &table, &out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("negative windows of 3.00 s"), "{stderr}");
    assert!(
        stdout.contains("fold 0: test split: macro ROC-AUC"),
        "{stdout}"
    );
    // The split: every site in one split, all three splits used.
    let split = std::fs::read_to_string(out.join("split.csv")).expect("split.csv");
    let sites: BTreeMap<&str, &str> = split
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1], f[2])
        })
        .collect();
    assert_eq!(sites.len(), 6, "{split}");
    for s in ["train", "val", "test"] {
        assert!(sites.values().any(|v| *v == s), "{split}");
    }
    let fold = out.join("fold0");
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fold.join("test_metrics.json")).expect("test_metrics.json"),
    )
    .expect("json");
    assert!(
        metrics["windows"].as_u64().expect("windows") > 0,
        "{metrics}"
    );
    assert!(
        metrics["loss"].as_f64().is_some_and(f64::is_finite),
        "{metrics}"
    );
    let confusion = std::fs::read_to_string(fold.join("confusion_test.csv")).expect("confusion");
    assert_eq!(
        confusion.lines().count(),
        4,
        "header + 3 species: {confusion}"
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fold.join("best/card.json")).expect("card"))
            .expect("card json");
    assert_eq!(card["frontend"]["windows"]["window_seconds"], 3.0, "{card}");
    assert_eq!(card["input_shape"][2], 61, "3 s at hop 1600: {card}");

    // Export, infer on a 12-s soundscape: rows at 3, 6, 9 and 12 s; score against a solution.
    let test = dir.join("test");
    std::fs::create_dir_all(&test).expect("dir");
    let (x, _) = synth::soundscape(12.0, 32_000, &synth::species(3), 4, &mut Rng::new(3));
    write_wav_f32(&test.join("field.wav"), &x, 32_000).expect("wav");
    let sub = dir.join("submission.csv");
    let text = export_and_infer(&fold.join("best"), &dir.join("best.onnx"), &test, &sub);
    let ids: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().expect("id"))
        .collect();
    assert_eq!(ids, ["field_3", "field_6", "field_9", "field_12"], "{text}");
    let header = text.lines().next().expect("header").to_string();
    let solution = dir.join("solution.csv");
    let labels = header.split(',').count() - 1;
    let mut sol = header.clone() + "\n";
    for (r, id) in ids.iter().enumerate() {
        let row: Vec<&str> = (0..labels)
            .map(|c| if (r + c) % 2 == 0 { "1" } else { "0" })
            .collect();
        sol.push_str(&format!("{id},{}\n", row.join(",")));
    }
    std::fs::write(&solution, sol).expect("solution");
    let (code, stdout, stderr) = run(Command::new(bin("birdclef-infer"))
        .arg("score")
        .arg("--solution")
        .arg(&solution)
        .arg(&sub));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("macro_roc_auc="), "{stdout}");
    // Probabilities of a sigmoid model need not sum to 1 per window.
    let sums = row_sums(&text);
    assert!(sums.iter().any(|s| (s - 1.0).abs() > 1e-3), "{sums:?}");

    // Single-label training with softmax cross-entropy (negatives have no class, so none): the
    // card says softmax, and birdclef-infer's rows then sum to 1.
    let out = dir.join("softmax");
    let (code, _, stderr) = run(fit(&dir, &table, &out).args([
        "--set",
        "loss.kind=softmax",
        "--set",
        "annotations.negatives=0",
        "--set",
        "run.f1_argmax=true",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let best = out.join("fold0/best");
    let card = std::fs::read_to_string(best.join("card.json")).expect("card");
    assert!(
        card.contains("\"output_activation\": \"softmax\""),
        "{card}"
    );
    let text = export_and_infer(&best, &dir.join("softmax.onnx"), &test, &dir.join("sm.csv"));
    let sums = row_sums(&text);
    assert_eq!(sums.len(), 4);
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "{sums:?}");
    // A softmax loss with negatives is refused before any work.
    let (code, _, stderr) =
        run(fit(&dir, &table, &dir.join("refused")).args(["--set", "loss.kind=softmax"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("annotations.negatives"), "{stderr}");
    assert!(!dir.join("refused").exists());
}

/// Each row's sum of probabilities in a submission.
fn row_sums(text: &str) -> Vec<f64> {
    text.lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .skip(1)
                .map(|v| v.parse::<f64>().expect("number"))
                .sum()
        })
        .collect()
}
