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

#[test]
fn annotated_three_second_windows_train_export_infer_and_score() {
    let dir = scratch_dir("annotated-cli");
    let table = annotated(&dir);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/annotated-3s.toml");
    let out = dir.join("run");
    let (code, stdout, stderr) = run(Command::new(bin("birdclef-train"))
        .args(["--device", "cpu", "fit", "--annotations"])
        .arg(&table)
        .arg("--audio")
        .arg(dir.join("audio"))
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args([
            "--set",
            "annotations.min_count=1",
            "--set",
            "annotations.ratios=[0.5, 0.25, 0.25]",
            "--set",
            "model.n_mels=32",
            "--set",
            "model.hop_length=1600",
            "--set",
            "model.n_fft=512",
            "--set",
            "optim.epochs=2",
            "--set",
            "optim.batch_size=8",
            "--set",
            "run.debug_batches=2",
        ]));
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
    let onnx = dir.join("best.onnx");
    let (code, _, stderr) = run(Command::new(bin("birdclef-export"))
        .arg("--checkpoint")
        .arg(fold.join("best"))
        .arg("--out")
        .arg(&onnx));
    assert_eq!(code, 0, "{stderr}");
    let test = dir.join("test");
    std::fs::create_dir_all(&test).expect("dir");
    let (x, _) = synth::soundscape(12.0, 32_000, &synth::species(3), 4, &mut Rng::new(3));
    write_wav_f32(&test.join("field.wav"), &x, 32_000).expect("wav");
    let sub = dir.join("submission.csv");
    let (code, _, stderr) = run(Command::new(bin("birdclef-infer"))
        .arg("--models")
        .arg(&onnx)
        .arg("--soundscapes")
        .arg(&test)
        .arg("--out")
        .arg(&sub));
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&sub).expect("submission");
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
}
