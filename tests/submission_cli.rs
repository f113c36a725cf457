//! `birdclef-infer` as a Kaggle submission tool, end to end on synthesised audio: models made by
//! `birdclef-train init` + `birdclef-export`, soundscapes written as WAV files, broken files among
//! them. Nothing here needs ../shared.
use birdclef_models::rng::Rng;
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
    let (x, _) = synth::soundscape(seconds, 32_000, &synth::species(5), 4, &mut Rng::new(seed));
    std::fs::create_dir_all(dir).expect("soundscape dir");
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

    // The windows of truncated.wav that hold real predictions, from its summary line.
    let line = stderr
        .lines()
        .find(|l| l.contains("truncated.wav") && l.contains("scored)"))
        .expect("truncated.wav is listed");
    let decoded: usize = line
        .rsplit('(')
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no window count in {line:?}"));
    assert!((1..6).contains(&decoded), "{line}");
    let ids =
        |n: usize| -> Vec<String> { (1..=n).map(|i| format!("truncated_{}", 5 * i)).collect() };

    // Post-processing leaves fallback windows exactly 0.0 and out of smoothing: the last decoded
    // window is smoothed as the end of the recording, (p[n-2] + p[n-1]) / 2 with kernel 1,1,1.
    let post = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut cmd = Command::new(bin("birdclef-infer"));
        cmd.arg("--models").arg(&m).arg("--soundscapes").arg(&audio);
        cmd.arg("--out").arg(&out).args(extra);
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, 1, "{err}");
        read_csv(&out).1
    };
    for (name, extra) in [
        ("smooth.csv", &["--smooth", "1,1,1"][..]),
        ("geometric.csv", &["--ensemble", "geometric"][..]),
        ("rank.csv", &["--ensemble", "rank"][..]),
    ] {
        let got = post(name, extra);
        let at = |id: &str| &got.iter().find(|(r, _)| r == id).expect(id).1;
        for id in ids(6).iter().skip(decoded).chain([&"empty_5".to_string()]) {
            assert!(
                at(id).iter().all(|&p| p == 0.0),
                "{name} {id}: {:?}",
                at(id)
            );
        }
        for id in ids(decoded) {
            assert!(at(&id).iter().all(|&p| p > 0.0), "{name} {id}");
        }
        if name == "smooth.csv" && decoded >= 2 {
            let last = &ids(decoded)[decoded - 1];
            let before = &ids(decoded)[decoded - 2];
            for c in 0..LABELS.len() {
                let want = (row(before)[c] + row(last)[c]) / 2.0;
                assert!(
                    (at(last)[c] - want).abs() < 2e-6,
                    "{last}[{c}]: {} vs {want}",
                    at(last)[c]
                );
            }
        }
        if name == "geometric.csv" {
            for id in ids(decoded) {
                for (p, q) in at(&id).iter().zip(row(&id)) {
                    assert!((p - q).abs() < 2e-6, "{id}: {p} vs {q}");
                }
            }
        }
    }

    // Audio in subfolders is found (row ids are <stem>_<end>), and a dangling link is a failed
    // entry: named, counted, exit 1.
    let nested = dir.join("nested");
    soundscape(&nested.join("site1/deep"), "deep.wav", 6.0, 4);
    soundscape(&nested, "top.wav", 5.0, 5);
    std::os::unix::fs::symlink("gone.wav", nested.join("dangling.wav")).expect("link");
    let out = dir.join("nested.csv");
    let (code, stdout, stderr) = infer(
        &["--models"],
        &[
            &m,
            Path::new("--soundscapes"),
            &nested,
            Path::new("--out"),
            &out,
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains("wrote 3 rows for 2 files"), "{stdout}");
    assert!(
        stderr.contains("1 of 3 files could not be fully scored"),
        "{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("dangling.wav"))
        .unwrap_or_else(|| panic!("the dangling link must be named: {stderr}"));
    assert!(
        line.contains("gone.wav") && line.contains("no rows"),
        "{line}"
    );
    let (_, rows) = read_csv(&out);
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["deep_5", "deep_10", "top_5"]);
    // The same stem in another folder: an error naming both, nothing written.
    soundscape(&nested.join("site2"), "deep.wav", 5.0, 6);
    let out = dir.join("collide.csv");
    let (code, _, stderr) = infer(
        &["--models"],
        &[
            &m,
            Path::new("--soundscapes"),
            &nested,
            Path::new("--out"),
            &out,
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("site1/deep/deep.wav") && stderr.contains("site2/deep.wav"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// Start reading the FIFO `path` on a thread; the bytes arrive on the returned channel once the
/// writer closes it.
fn read_fifo(path: &Path) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&path) {
            let _ = std::io::Read::read_to_end(&mut f, &mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

#[test]
fn outputs_are_checked_before_any_work_and_inputs_are_never_overwritten() {
    use std::os::unix::fs::FileTypeExt;
    let dir = scratch_dir("sub-outputs");
    let card = small_card(&dir, &LABELS);
    let m = model(&dir, "m", "efficientvit_b0", 1, &card);
    let audio = dir.join("audio");
    let wav = soundscape(&audio, "rec.wav", 7.0, 1);
    let junk = dir.join("junk.onnx");
    std::fs::write(&junk, b"not a model").expect("write");
    let go = |model: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut cmd = Command::new(bin("birdclef-infer"));
        cmd.arg("--models")
            .arg(model)
            .arg("--soundscapes")
            .arg(&audio);
        for a in extra {
            cmd.arg(a);
        }
        run(&mut cmd)
    };

    // Bad output paths are named before any model is loaded (the junk model would be the error
    // otherwise) or anything decoded, and nothing is written.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").expect("write");
    let raven_blocked = dir.join("raven-blocked");
    std::fs::create_dir_all(raven_blocked.join("rec.selections.txt")).expect("mkdir");
    let ok_out = dir.join("ok.csv");
    let missing = dir.join("missing/out.csv");
    let cases: [(&[&dyn AsRef<std::ffi::OsStr>], &str, &str); 5] = [
        (&[&"--out", &missing], "--out", "does not exist"),
        (&[&"--out", &audio], "--out", "is a directory"),
        (
            &[&"--out", &ok_out, &"--detections", &missing],
            "--detections",
            "does not exist",
        ),
        (
            &[&"--out", &ok_out, &"--raven-dir", &file],
            "--raven-dir",
            "not a directory",
        ),
        (
            &[&"--out", &ok_out, &"--raven-dir", &raven_blocked],
            "rec.selections.txt",
            "is a directory",
        ),
    ];
    for (extra, named, why) in cases {
        let (code, _, err) = go(&junk, extra);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(named) && err.contains(why),
            "{named} / {why}: {err}"
        );
        assert!(
            !err.contains("junk.onnx"),
            "checked before the models: {err}"
        );
        assert!(!ok_out.exists() && !missing.exists());
    }

    // An output that is an input is refused naming both, and the input is left as it was.
    let sample = dir.join("sample_submission.csv");
    std::fs::write(&sample, format!("row_id,{}\n", LABELS.join(","))).expect("write");
    let taxonomy = dir.join("taxonomy.csv");
    std::fs::write(&taxonomy, "primary_label\namerob\nbarswa\n").expect("write");
    let model_bytes = std::fs::read(&m).expect("model");
    let wav_bytes = std::fs::read(&wav).expect("wav");
    let sample_bytes = std::fs::read(&sample).expect("sample");
    let tax_bytes = std::fs::read(&taxonomy).expect("taxonomy");
    let cases: [(&[&dyn AsRef<std::ffi::OsStr>], &Path); 5] = [
        (&[&"--out", &m], &m),
        (&[&"--out", &wav], &wav),
        (
            &[&"--out", &sample, &"--sample-submission", &sample],
            &sample,
        ),
        (&[&"--out", &taxonomy, &"--taxonomy", &taxonomy], &taxonomy),
        (&[&"--out", &ok_out, &"--detections", &m], &m),
    ];
    for (extra, input) in cases {
        let (code, _, err) = go(&m, extra);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert!(err.contains(&input.display().to_string()), "{err}");
    }
    assert_eq!(std::fs::read(&m).expect("model"), model_bytes);
    assert_eq!(std::fs::read(&wav).expect("wav"), wav_bytes);
    assert_eq!(std::fs::read(&sample).expect("sample"), sample_bytes);
    assert_eq!(std::fs::read(&taxonomy).expect("taxonomy"), tax_bytes);
    let (code, _, err) = go(&m, &[&"--out", &ok_out, &"--detections", &ok_out]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("same file"), "{err}");
    assert!(!ok_out.exists());

    // A sample submission sharing no species with the models: refused, naming it and labels of
    // both sides, instead of an all-zero submission.
    let other = dir.join("other_sample.csv");
    std::fs::write(&other, "row_id,zzz1,zzz2\n").expect("write");
    let (code, _, err) = go(&m, &[&"--out", &ok_out, &"--sample-submission", &other]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("other_sample.csv") && err.contains("zzz1") && err.contains("amerob"),
        "{err}"
    );
    assert!(!ok_out.exists());

    // The reference CSV.
    let (code, _, err) = go(&m, &[&"--out", &ok_out]);
    assert_eq!(code, 0, "{err}");
    let want = std::fs::read(&ok_out).expect("csv");

    // A link stays a link and its target gets the CSV.
    let target = dir.join("target.csv");
    let link = dir.join("link.csv");
    std::os::unix::fs::symlink("target.csv", &link).expect("link");
    let (code, _, err) = go(&m, &[&"--out", &link]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .expect("meta")
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).expect("target"), want);

    // A FIFO gets the CSV written into it and stays a FIFO.
    let fifo = dir.join("pipe.csv");
    let (code, _, err) = run(Command::new("mkfifo").arg(&fifo));
    assert_eq!(code, 0, "mkfifo: {err}");
    let got = read_fifo(&fifo);
    let (code, _, err) = go(&m, &[&"--out", &fifo]);
    assert_eq!(code, 0, "{err}");
    let bytes = got
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the FIFO's reader got the CSV");
    assert_eq!(bytes, want);
    assert!(std::fs::metadata(&fifo)
        .expect("meta")
        .file_type()
        .is_fifo());

    // /dev/null stays a character device.
    let (code, _, err) = go(&m, &[&"--out", &"/dev/null"]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::metadata("/dev/null")
        .expect("meta")
        .file_type()
        .is_char_device());

    // Detections that cannot be written once the submission is: exit 1 (not 2), the submission
    // in place, an error naming the file.
    if Path::new("/dev/full").exists() {
        let out = dir.join("with-detections.csv");
        let (code, _, err) = go(
            &m,
            &[
                &"--out",
                &out,
                &"--detections",
                &"/dev/full",
                &"--threshold",
                &"0",
            ],
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("error:") && err.contains("/dev/full"), "{err}");
        assert!(err.contains("was written"), "{err}");
        assert_eq!(std::fs::read(&out).expect("submission"), want);
    }
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

/// Time-shift test-time augmentation: every window's probability is the mean of the window and
/// its views 2.5 s earlier and later, each view scored exactly as a window of the same audio cut
/// 2.5 s later would be; at the recording's ends a view slides back inside (onto the window
/// itself); how the work is split changes nothing. A shift as long as the window is refused.
#[test]
fn time_shift_views_are_the_windows_of_the_shifted_audio() {
    let dir = scratch_dir("sub-tta");
    let card = small_card(&dir, &LABELS);
    let a = model(&dir, "a", "efficientvit_b0", 3, &card);
    let (x, _) = synth::soundscape(30.0, 32_000, &synth::species(5), 6, &mut Rng::new(77));
    let full = dir.join("full.wav");
    let late = dir.join("late.wav");
    write_wav_f32(&full, &x, 32_000).expect("wav");
    write_wav_f32(&late, &x[80_000..], 32_000).expect("wav");
    let go = |audio: &Path, out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut cmd = Command::new(bin("birdclef-infer"));
        cmd.arg("--models")
            .arg(&a)
            .arg("--soundscapes")
            .arg(audio)
            .arg("--out")
            .arg(&out)
            .args(extra);
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, 0, "{extra:?}: {err}");
        read_csv(&out).1
    };
    let p = go(&full, "p.csv", &[]);
    let q = go(&late, "q.csv", &[]);
    assert_eq!(p.len(), 6);
    // q's whole windows 0..=4 cover [2.5 + 5j, 7.5 + 5j) of the full recording.
    let expected: Vec<Vec<f64>> = (0..6)
        .map(|i| {
            let earlier = if i == 0 { &p[0].1 } else { &q[i - 1].1 };
            let later = if i == 5 { &p[5].1 } else { &q[i].1 };
            (0..LABELS.len())
                .map(|c| (p[i].1[c] + earlier[c] + later[c]) / 3.0)
                .collect()
        })
        .collect();
    for extra in [
        &["--tta-shifts", "-2.5,2.5"][..],
        &[
            "--tta-shifts",
            "2.5,-2.5",
            "--batch-size",
            "1",
            "--workers",
            "2",
        ][..],
    ] {
        let t = go(&full, "t.csv", extra);
        assert_eq!(t.len(), 6, "{extra:?}");
        let mut worst = 0.0f64;
        for (row, want) in t.iter().zip(&expected) {
            for (got, want) in row.1.iter().zip(want) {
                worst = worst.max((got - want).abs());
            }
        }
        assert!(worst < 1e-5, "{extra:?}: views differ by {worst}");
        // The augmentation changes something: the test would not pass with views ignored.
        let moved = t
            .iter()
            .zip(&p)
            .flat_map(|(x, y)| x.1.iter().zip(&y.1).map(|(u, v)| (u - v).abs()))
            .fold(0.0f64, f64::max);
        assert!(moved > 1e-4, "{extra:?}: TTA left every value as it was");
    }
    let (code, _, err) = infer(
        &["--models"],
        &[
            &a,
            Path::new("--soundscapes"),
            &full,
            Path::new("--out"),
            &dir.join("bad.csv"),
            Path::new("--tta-shifts"),
            Path::new("-5"),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("--tta-shifts -5") && err.contains("5 s window"),
        "{err}"
    );
    assert!(!dir.join("bad.csv").exists());
}

/// A model with a 15-s context scored per 5-s window: each row is the model on the 15 s centred
/// on its window, zero-padded before the recording's start. Shown against the same weights
/// under a plain 15-s window card run on the recording with 5 s of silence in front, whose
/// windows are exactly the contexts of every third 5-s window.
#[test]
fn a_context_model_scores_each_window_on_the_clip_centred_on_it() {
    let dir = scratch_dir("sub-context");
    let mut fe = FrontendConfig::kefir128();
    fe.n_mels = 32;
    fe.hop_length = 3200;
    fe.normalize = Normalize::ImageStandard;
    fe.windows.context_seconds = Some(15.0);
    let mut card = Card::frontend_only("ctx15", fe.clone());
    card.labels = LABELS.iter().map(|s| s.to_string()).collect();
    assert_eq!(card.input_shape[2], 151, "15 s at hop 3200");
    let card_path = dir.join("ctx15.card.json");
    card.save(&card_path).expect("card");
    let ctx = model(&dir, "ctx", "efficientvit_b0", 5, &card_path);
    // The same checkpoint under a plain 15-s window card.
    let plain_dir = dir.join("plain");
    std::fs::create_dir_all(&plain_dir).expect("dir");
    for entry in std::fs::read_dir(dir.join("ctx")).expect("ckpt") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, plain_dir.join(p.file_name().expect("name"))).expect("copy");
    }
    let mut plain = Card::load(&plain_dir.join("card.json")).expect("card");
    plain.frontend.windows.window_seconds = 15.0;
    plain.frontend.windows.context_seconds = None;
    plain.save(&plain_dir.join("card.json")).expect("card");
    let plain_onnx = dir.join("plain.onnx");
    let (code, _, err) = run(Command::new(bin("birdclef-export"))
        .arg("--checkpoint")
        .arg(&plain_dir)
        .arg("--out")
        .arg(&plain_onnx));
    assert_eq!(code, 0, "{err}");

    let (x, _) = synth::soundscape(45.0, 32_000, &synth::species(5), 8, &mut Rng::new(9));
    let mut padded = vec![0.0f32; 5 * 32_000];
    padded.extend_from_slice(&x);
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a).expect("dir");
    std::fs::create_dir_all(&b).expect("dir");
    write_wav_f32(&a.join("x.wav"), &x, 32_000).expect("wav");
    write_wav_f32(&b.join("x.wav"), &padded, 32_000).expect("wav");
    let score = |m: &Path, audio: &Path, out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut cmd = Command::new(bin("birdclef-infer"));
        cmd.arg("--models")
            .arg(m)
            .arg("--soundscapes")
            .arg(audio)
            .arg("--out")
            .arg(&out)
            .args(extra);
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, 0, "{err}");
        read_csv(&out).1
    };
    let plain_rows = score(&plain_onnx, &b, "plain.csv", &[]);
    for extra in [&[][..], &["--batch-size", "1", "--workers", "2"][..]] {
        let rows = score(&ctx, &a, "ctx.csv", extra);
        let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(ids.len(), 9, "one row per 5-s window: {ids:?}");
        assert_eq!((ids[0], ids[8]), ("x_5", "x_45"));
        for j in 0..3 {
            let worst = rows[3 * j]
                .1
                .iter()
                .zip(&plain_rows[j].1)
                .map(|(u, v)| (u - v).abs())
                .fold(0.0f64, f64::max);
            assert!(
                worst < 1e-5,
                "{extra:?}: window {} differs by {worst}",
                3 * j
            );
        }
        // Neighbouring windows see different clips.
        assert_ne!(rows[0].1, rows[1].1);
    }
}
