//! `birdclef-infer` as a Kaggle submission tool, end to end on synthesised audio: models made by
//! `birdclef-train init` + `birdclef-export`, soundscapes written as WAV files, broken files among
//! them. Nothing here needs ../shared.
use std::path::{Path, PathBuf};
use std::process::Command;

use birdclef::{bin, init_and_export, run, scratch_dir};
use birdclef_models::audio::write_wav_f32;
use birdclef_models::card::Card;
use birdclef_models::frontend::{FrontendConfig, Normalize};
use birdclef_models::synth;

const LABELS: [&str; 5] = ["amerob", "barswa", "comcuc", "eurjay", "houspa"];

/// A small frontend (64 mels x 101 frames per 5 s) so the models run fast in tests.
fn small_card(dir: &Path, labels: &[&str]) -> PathBuf {
    let mut fe = FrontendConfig::kefir128();
    fe.n_mels = 64;
    fe.hop_length = 1600;
    fe.normalize = Normalize::ImageStandard;
    let mut card = Card::frontend_only("small64", fe);
    card.labels = labels.iter().map(|s| s.to_string()).collect();
    let path = dir.join(format!("small64-{}.card.json", labels.len()));
    card.save(&path).expect("card");
    path
}

/// init + export one model with `card`; returns the ONNX path.
fn model(dir: &Path, name: &str, arch: &str, seed: u64, card: &Path) -> PathBuf {
    let seed = seed.to_string();
    let card = card.to_string_lossy();
    init_and_export(
        dir,
        name,
        &["--arch", arch, "--seed", &seed, "--card", &card],
    )
    .0
}

fn soundscape(dir: &Path, name: &str, seconds: f64, seed: u64) -> PathBuf {
    let (x, _) = synth::soundscape(
        seconds,
        32_000,
        &synth::species(5),
        4,
        &mut synth::Rng::new(seed),
    );
    let path = dir.join(name);
    write_wav_f32(&path, &x, 32_000).expect("wav");
    path
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let text = std::fs::read_to_string(path).expect("csv");
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("header")
        .split(',')
        .map(String::from)
        .collect();
    let rows = lines
        .map(|l| {
            let mut parts = l.split(',');
            let id = parts.next().expect("row id").to_string();
            (id, parts.map(|v| v.parse().expect("number")).collect())
        })
        .collect();
    (header, rows)
}

fn infer(args: &[&str], extra: &[&Path]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("birdclef-infer"));
    cmd.args(args);
    for p in extra {
        cmd.arg(p);
    }
    run(&mut cmd)
}

#[test]
fn bad_files_never_lose_rows_and_exit_status_says_so() {
    let dir = scratch_dir("sub-bad");
    let card = small_card(&dir, &LABELS);
    let m = model(&dir, "m", "efficientvit_b0", 1, &card);
    let audio = dir.join("audio");
    std::fs::create_dir_all(&audio).expect("dir");
    soundscape(&audio, "good_a.wav", 23.0, 1); // 4 full windows + 3 s partial -> 5 rows
    soundscape(&audio, "short.wav", 0.6, 2); // shorter than 1 s -> still 1 row
    let whole = soundscape(&dir, "whole.wav", 30.0, 3);
    // Cut after ~12 s of its 30 s: the header still says 30 s -> 6 rows, 2 decoded.
    let bytes = std::fs::read(&whole).expect("read");
    std::fs::write(audio.join("truncated.wav"), &bytes[..44 + 4 * 32_000 * 12]).expect("write");
    std::fs::write(audio.join("empty.wav"), b"").expect("write");
    std::fs::write(audio.join("garbage.ogg"), b"not audio at all").expect("write");
    let out = dir.join("submission.csv");
    let (code, stdout, stderr) = infer(
        &["--models"],
        &[
            &m,
            Path::new("--soundscapes"),
            &audio,
            Path::new("--out"),
            &out,
        ],
    );
    assert_eq!(code, 1, "some files failed: exit 1\n{stderr}");
    assert!(stdout.contains("wrote 14 rows for 5 files"), "{stdout}");
    for name in ["truncated.wav", "empty.wav", "garbage.ogg"] {
        // Listed on one summary line that names the file once (the reason does not repeat it).
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(name) && l.contains("scored)"))
            .collect();
        assert_eq!(lines.len(), 1, "{name} must be listed once: {stderr}");
        assert_eq!(lines[0].matches(name).count(), 1, "{}", lines[0]);
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (header, rows) = read_csv(&out);
    assert_eq!(header[0], "row_id");
    assert_eq!(&header[1..], LABELS);
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "empty_5",
            "garbage_5",
            "good_a_5",
            "good_a_10",
            "good_a_15",
            "good_a_20",
            "good_a_25",
            "short_5",
            "truncated_5",
            "truncated_10",
            "truncated_15",
            "truncated_20",
            "truncated_25",
            "truncated_30"
        ]
    );
    let row = |id: &str| &rows.iter().find(|(r, _)| r == id).expect(id).1;
    // Decoded windows hold model outputs (sigmoids, strictly inside (0, 1)); lost ones hold 0.
    assert!(row("truncated_5").iter().all(|&p| p > 0.0 && p < 1.0));
    assert!(row("truncated_30").iter().all(|&p| p == 0.0));
    assert!(row("empty_5").iter().all(|&p| p == 0.0));
    assert!(row("short_5").iter().all(|&p| p > 0.0 && p < 1.0));
}

#[test]
fn ensembles_columns_shards_and_scores() {
    let dir = scratch_dir("sub-ens");
    let card = small_card(&dir, &LABELS);
    let a = model(&dir, "a", "efficientvit_b0", 1, &card);
    let b = model(&dir, "b", "mnasnet_100+sed", 2, &card);
    let audio = dir.join("audio");
    std::fs::create_dir_all(&audio).expect("dir");
    for i in 0..5 {
        soundscape(
            &audio,
            &format!("site{i}.wav"),
            10.0 + 5.0 * i as f64,
            10 + i,
        );
    }
    let csv = |name: &str| dir.join(name);
    let go = |models: &[&Path], out: &Path, extra: &[&str]| {
        let mut cmd = Command::new(bin("birdclef-infer"));
        cmd.arg("--models")
            .args(models)
            .arg("--soundscapes")
            .arg(&audio)
            .arg("--out")
            .arg(out);
        cmd.args(extra);
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, 0, "{err}");
    };
    go(&[&a], &csv("a.csv"), &[]);
    go(&[&b], &csv("b.csv"), &[]);
    go(&[&a, &b], &csv("ab.csv"), &[]);
    let (_, ra) = read_csv(&csv("a.csv"));
    let (_, rb) = read_csv(&csv("b.csv"));
    let (_, rab) = read_csv(&csv("ab.csv"));
    assert_eq!(rab.len(), 2 + 3 + 4 + 5 + 6);
    let mut worst = 0.0f64;
    for ((x, y), z) in ra.iter().zip(&rb).zip(&rab) {
        assert_eq!(x.0, z.0);
        for ((p, q), r) in x.1.iter().zip(&y.1).zip(&z.1) {
            worst = worst.max(((p + q) / 2.0 - r).abs());
        }
    }
    assert!(
        worst < 2e-6,
        "mean ensemble differs from the mean of the models by {worst}"
    );

    // How the work is scheduled (one worker taking single windows, or three workers sharing
    // pieces of two windows and finishing each other's files) changes no row and, beyond the
    // rounding of different batch sizes, no value.
    for (workers, batch) in [("1", "1"), ("3", "2")] {
        let out = csv(&format!("ab-{workers}-{batch}.csv"));
        go(
            &[&a, &b],
            &out,
            &["--workers", workers, "--batch-size", batch],
        );
        let (_, rows) = read_csv(&out);
        assert_eq!(rows.len(), rab.len());
        for (x, y) in rows.iter().zip(&rab) {
            assert_eq!(x.0, y.0);
            let diff = x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs());
            assert!(
                diff.fold(0.0, f64::max) < 1e-5,
                "{workers} workers, batch {batch}: row {} moved",
                x.0
            );
        }
    }

    // Each row holds the model's output on that window: model A run by ONNX Runtime in Python
    // on the features `birdclef-infer features` writes for one file.
    let npy = csv("site3.npy");
    let (code, _, err) = infer(
        &["features", "--card"],
        &[&card, &audio.join("site3.wav"), Path::new("--out"), &npy],
    );
    assert_eq!(code, 0, "{err}");
    let script = "import sys, numpy as np, onnxruntime as ort\n\
        s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
        x = np.load(sys.argv[2])\n\
        p = 1 / (1 + np.exp(-s.run(None, {s.get_inputs()[0].name: x})[0]))\n\
        print('\\n'.join(','.join(f'{v:.9g}' for v in r) for r in p))";
    let python: Vec<Vec<f64>> = String::from_utf8_lossy(&birdclef::run_python(script, &[&a, &npy]))
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().expect("number")).collect())
        .collect();
    let site3: Vec<_> = ra.iter().filter(|r| r.0.starts_with("site3_")).collect();
    assert_eq!(site3.len(), python.len(), "one row per window");
    for (i, (row, p)) in site3.iter().zip(&python).enumerate() {
        assert_eq!(row.0, format!("site3_{}", 5 * (i + 1)));
        let diff = row.1.iter().zip(p).map(|(x, y)| (x - y).abs());
        assert!(
            diff.fold(0.0, f64::max) < 1e-5,
            "{}: {:?} vs {p:?}",
            row.0,
            row.1
        );
    }

    // Column order from a sample submission; a species the models do not know gets 0.
    let sample = csv("sample_submission.csv");
    std::fs::write(&sample, "row_id,houspa,newbird,amerob\nx_5,0,0,0\n").expect("write");
    let (code, _, err) = infer(
        &["--models"],
        &[
            &a,
            Path::new("--soundscapes"),
            &audio,
            Path::new("--out"),
            &csv("cols.csv"),
            Path::new("--sample-submission"),
            &sample,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("newbird"),
        "unknown species must be named: {err}"
    );
    let (header, rows) = read_csv(&csv("cols.csv"));
    assert_eq!(header, ["row_id", "houspa", "newbird", "amerob"]);
    assert_eq!(rows[0].1[0], ra[0].1[4]);
    assert_eq!(rows[0].1[1], 0.0);
    assert_eq!(rows[0].1[2], ra[0].1[0]);

    // Shards 0/3, 1/3, 2/3 merged equal the unsharded run, byte for byte.
    let mut parts = Vec::new();
    for k in 0..3 {
        let part = csv(&format!("part{k}.csv"));
        go(&[&a, &b], &part, &["--shard", &format!("{k}/3")]);
        parts.push(part);
    }
    let merged = csv("merged.csv");
    let mut cmd = Command::new(bin("birdclef-infer"));
    cmd.arg("merge").args(&parts).arg("-o").arg(&merged);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&merged).expect("merged"),
        std::fs::read(csv("ab.csv")).expect("ab")
    );

    // Smoothing changes values but not rows.
    go(
        &[&a],
        &csv("smooth.csv"),
        &["--smooth", "0.1,0.2,0.4,0.2,0.1"],
    );
    let (_, rs) = read_csv(&csv("smooth.csv"));
    assert_eq!(rs.len(), ra.len());
    assert!(rs.iter().zip(&ra).any(|(x, y)| x.1 != y.1));

    // Scoring: a solution that marks exactly the rows model A ranks highest for species 0.
    let solution = csv("solution.csv");
    let mut text = format!("row_id,{}\n", LABELS.join(","));
    let median = {
        let mut v: Vec<f64> = ra.iter().map(|r| r.1[0]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (id, p) in &ra {
        text.push_str(&format!("{id},{},0,0,0,0\n", u8::from(p[0] > median)));
    }
    std::fs::write(&solution, text).expect("write");
    let mut cmd = Command::new(bin("birdclef-infer"));
    cmd.arg("score")
        .arg(csv("a.csv"))
        .arg("--solution")
        .arg(&solution);
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim_end().lines().last(),
        Some("macro_roc_auc=1.000000"),
        "{out}"
    );
}

#[test]
fn ensembles_that_disagree_are_refused_naming_both_files() {
    let dir = scratch_dir("sub-mismatch");
    let a = model(
        &dir,
        "five",
        "efficientvit_b0",
        1,
        &small_card(&dir, &LABELS),
    );
    let b = model(
        &dir,
        "four",
        "efficientvit_b0",
        1,
        &small_card(&dir, &LABELS[..4]),
    );
    soundscape(&dir, "s.wav", 6.0, 1);
    // Runs with these models; asserts a fatal error (exit 2, nothing written); returns stderr.
    let refused = |models: &[&Path]| {
        let out = dir.join("x.csv");
        let mut extra = models.to_vec();
        let wav = dir.join("s.wav");
        extra.extend([Path::new("--soundscapes"), &wav, Path::new("--out"), &out]);
        let (code, _, err) = infer(&["--models"], &extra);
        assert_eq!(code, 2, "{err}");
        assert!(!out.exists());
        err
    };
    let err = refused(&[&a, &b]);
    assert!(
        err.contains("five.onnx") && err.contains("four.onnx"),
        "{err}"
    );
    // A file that is not ONNX, among good models (loaded in parallel): refused, naming it.
    let junk = dir.join("junk.onnx");
    std::fs::write(&junk, b"not a model").expect("write");
    let err = refused(&[&a, &junk, &a]);
    assert!(
        err.contains("junk.onnx") && err.contains("ONNX Runtime cannot load it"),
        "{err}"
    );
}

#[test]
fn different_frontends_detections_and_strict_time_limit() {
    let dir = scratch_dir("sub-more");
    let card64 = small_card(&dir, &LABELS);
    // A second frontend: 48 mels, another hop (48 x 81 per window).
    let mut fe = FrontendConfig::kefir128();
    fe.n_mels = 48;
    fe.hop_length = 2000;
    fe.normalize = Normalize::ImageStandard;
    let mut card = Card::frontend_only("small48", fe);
    card.labels = LABELS.iter().map(|s| s.to_string()).collect();
    let card48 = dir.join("small48.card.json");
    card.save(&card48).expect("card");
    let a = model(&dir, "a64", "efficientvit_b0", 1, &card64);
    let b = model(&dir, "b48", "efficientnet_b0", 2, &card48);
    let audio = dir.join("audio");
    std::fs::create_dir_all(&audio).expect("dir");
    for i in 0..6 {
        soundscape(&audio, &format!("rec{i}.wav"), 15.0, 20 + i);
    }
    let out = dir.join("two_frontends.csv");
    let det = dir.join("detections.csv");
    let raven = dir.join("raven");
    let mut cmd = Command::new(bin("birdclef-infer"));
    cmd.arg("--models")
        .args([&a, &b])
        .arg("--soundscapes")
        .arg(&audio)
        .arg("--out")
        .arg(&out);
    cmd.arg("--detections")
        .arg(&det)
        .arg("--raven-dir")
        .arg(&raven)
        .args(["--threshold", "0.3"]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 0, "models with different frontends ensemble: {err}");
    let (_, rows) = read_csv(&out);
    assert_eq!(rows.len(), 18);
    let det_text = std::fs::read_to_string(&det).expect("detections");
    assert!(
        det_text.starts_with("file,start,end,species,probability"),
        "{det_text}"
    );
    let above: usize = rows
        .iter()
        .map(|r| r.1.iter().filter(|&&p| p >= 0.3).count())
        .sum();
    assert_eq!(
        det_text.lines().count() - 1,
        above,
        "one detection per value >= threshold"
    );
    for i in 0..6 {
        let table = raven.join(format!("rec{i}.selections.txt"));
        let t = std::fs::read_to_string(&table).expect("raven table");
        assert!(
            t.starts_with("Selection\tView\tChannel\tBegin Time (s)"),
            "{t}"
        );
    }

    // A time limit far too short, with --strict: the run stops starting files, yet every file
    // still has all its rows (zeros for the skipped ones), and the exit status says so.
    let strict = dir.join("strict.csv");
    let mut cmd = Command::new(bin("birdclef-infer"));
    cmd.arg("--models")
        .args([&a, &b])
        .arg("--soundscapes")
        .arg(&audio)
        .arg("--out")
        .arg(&strict);
    cmd.args([
        "--time-limit",
        "0.01s",
        "--strict",
        "--threads",
        "1",
        "--workers",
        "1",
    ]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exceeds the time limit"), "{err}");
    assert!(err.contains("skipped: the time limit was reached"), "{err}");
    // Each skipped file's summary line names it, once.
    for line in err
        .lines()
        .filter(|l| l.contains("skipped: the time limit"))
    {
        let named = (0..6)
            .filter(|i| line.contains(&format!("rec{i}.wav")))
            .count();
        assert_eq!(named, 1, "{line}");
        assert_eq!(line.matches(".wav").count(), 1, "{line}");
    }
    let (_, rows) = read_csv(&strict);
    assert_eq!(rows.len(), 18, "full rows even when stopped early");
}
