//! `birdclef-train pseudo-label`, `pseudo-merge` and `distill` on a synthetic competition with two
//! untrained teachers: the HDF5 file as h5py reads it, shards merged equal to one run, a killed
//! run resumed, ONNX and checkpoint teachers agreeing, unreadable soundscapes listed without
//! losing the others, and a student distilled from the file.

use std::path::Path;
use std::process::Command;

use birdclef::{bin, h5_dump, init, pseudo_fixture, run, scratch_dir, PseudoFixture};
use serde_json::Value;

/// `birdclef-train --device cpu pseudo-label` of `soundscapes` with `teachers`.
fn pseudo_cmd(teachers: &[&Path], soundscapes: &Path, extra: &[&str], out: &Path) -> Command {
    let mut cmd = Command::new(bin("birdclef-train"));
    cmd.args(["--device", "cpu", "pseudo-label"]);
    for t in teachers {
        cmd.arg("--teacher").arg(t);
    }
    cmd.arg("--soundscapes")
        .arg(soundscapes)
        .arg("--out")
        .arg(out)
        .args(extra);
    cmd
}

/// Pseudo-label the fixture's soundscapes: (exit code, stderr).
fn pseudo(fx: &PseudoFixture, teachers: &[&Path], extra: &[&str], out: &Path) -> (i32, String) {
    let (code, _, err) = run(&mut pseudo_cmd(teachers, &fx.soundscapes, extra, out));
    (code, err)
}

/// As [`pseudo`], but the process stops as if killed after `n` soundscapes.
fn pseudo_killed_after(fx: &PseudoFixture, teacher: &Path, n: usize, out: &Path) -> i32 {
    let mut cmd = pseudo_cmd(&[teacher], &fx.soundscapes, &[], out);
    run(cmd.env("BIRDCLEF_PSEUDO_ABORT_AFTER", n.to_string())).0
}

fn values(v: &Value, name: &str) -> Vec<Value> {
    v[name]["values"].as_array().cloned().unwrap_or_default()
}

fn probs(v: &Value) -> Vec<f64> {
    values(v, "probs")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Everything but the `shard` attribute, which says how the file was made.
fn content(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(a) = v["attrs"].as_object_mut() {
        a.remove("shard");
    }
    v
}

/// How far two runs' probabilities may differ where only rounding differs (batch composition,
/// libtorch vs ONNX Runtime kernels). birdclef-export promises 1e-4 (relative to max(1, |logit|))
/// between ONNX Runtime and libtorch logits, and a sigmoid's slope is at most 1/4, so this is that
/// promise for probabilities with room to spare; a wrong window or teacher moves them by ~0.1.
const PROB_TOLERANCE: f64 = 1e-4;

/// Largest absolute difference of two equally long vectors.
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn pseudo_labels_read_in_h5py_and_shards_merge_to_the_unsharded_file() {
    let dir = scratch_dir("pseudo-shards");
    let fx = pseudo_fixture(&dir);
    let full = dir.join("full.h5");
    let (code, err) = pseudo(&fx, &[&fx.teacher_a, &fx.teacher_b], &[], &full);
    assert_eq!(code, 0, "{err}");
    let v = h5_dump(&full);
    assert_eq!(v["attrs"]["complete"], 1);
    assert_eq!(v["attrs"]["format_version"], 1);
    assert_eq!(v["attrs"]["shard"], "0/1");
    // 6 soundscapes of 12 s: windows ending at 5, 10 and 15 s (the last 2 s is padded).
    assert_eq!(v["row_id"]["shape"], serde_json::json!([18]));
    assert_eq!(v["probs"]["shape"], serde_json::json!([18, 4]));
    assert_eq!(v["labels"]["values"].as_array().map(Vec::len), Some(4));
    assert_eq!(v["teachers"]["values"].as_array().map(Vec::len), Some(2));
    let ids = values(&v, "row_id");
    assert_eq!(ids[0], "synth_unlabeled_000_5");
    assert_eq!(ids[2], "synth_unlabeled_000_15");
    assert_eq!(values(&v, "start")[2], 10.0);
    assert_eq!(values(&v, "end")[2], 15.0);
    assert!(probs(&v).iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(!dir.join("full.h5.parts").exists(), "parts are removed");

    // Streamed in pieces of 2 windows (12 s = 2 + 1): the same rows, and the same numbers up to
    // libtorch's batch-size-dependent rounding (2e-6 here; up to 8e-6 with oneDNN limited to
    // SSE4.1 kernels, so the bound leaves room for other CPUs).
    let small = dir.join("small-batches.h5");
    let (code, err) = pseudo(
        &fx,
        &[&fx.teacher_a, &fx.teacher_b],
        &["--batch-size", "2"],
        &small,
    );
    assert_eq!(code, 0, "{err}");
    let sv = h5_dump(&small);
    assert_eq!(values(&sv, "row_id"), ids);
    let worst = max_abs_diff(&probs(&sv), &probs(&v));
    assert!(
        worst < PROB_TOLERANCE,
        "pieces of 2 windows vs one piece: {worst}"
    );

    let mut shards = Vec::new();
    for k in 0..3 {
        let out = dir.join(format!("shard{k}.h5"));
        let shard = format!("{k}/3");
        let (code, err) = pseudo(
            &fx,
            &[&fx.teacher_a, &fx.teacher_b],
            &["--shard", &shard],
            &out,
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(h5_dump(&out)["row_id"]["shape"], serde_json::json!([6]));
        shards.push(out);
    }
    let merged = dir.join("merged.h5");
    let (code, _, err) = run(Command::new(bin("birdclef-train"))
        .arg("pseudo-merge")
        .arg("--out")
        .arg(&merged)
        .args(shards.iter().rev()));
    assert_eq!(code, 0, "{err}");
    let m = h5_dump(&merged);
    assert_eq!(m["attrs"]["shard"], "merged");
    assert_eq!(
        content(&m),
        content(&v),
        "merged shards differ from one run"
    );

    // A shard given twice is refused, naming both files.
    let (code, _, err) = run(Command::new(bin("birdclef-train"))
        .arg("pseudo-merge")
        .arg("--out")
        .arg(dir.join("twice.h5"))
        .arg(&shards[0])
        .arg(&merged));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("shard0.h5") && err.contains("merged.h5"),
        "{err}"
    );

    // The same shard given twice: refused, naming a row id and the file (both times), and
    // nothing written.
    let twice = dir.join("same-twice.h5");
    let (code, _, err) = run(Command::new(bin("birdclef-train"))
        .arg("pseudo-merge")
        .arg("--out")
        .arg(&twice)
        .arg(&shards[0])
        .arg(&shards[1])
        .arg(&shards[0]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("row id synth_unlabeled_000_5"), "{err}");
    assert_eq!(err.matches("shard0.h5").count(), 2, "{err}");
    assert!(!twice.exists(), "nothing is written");

    // The output is one of the shards: refused before anything is read, the shard kept.
    let before = std::fs::read(&shards[1]).expect("shard");
    let (code, _, err) = run(Command::new(bin("birdclef-train"))
        .arg("pseudo-merge")
        .arg("--out")
        .arg(&shards[1])
        .args(&shards));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("shard1.h5") && err.contains("refusing to overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(&shards[1]).expect("shard"), before);
    // An output in a missing directory, or a directory: refused, naming it.
    for (out, why) in [
        (dir.join("missing/merged.h5"), "does not exist"),
        (dir.to_path_buf(), "is a directory"),
    ] {
        let (code, _, err) = run(Command::new(bin("birdclef-train"))
            .arg("pseudo-merge")
            .arg("--out")
            .arg(&out)
            .args(&shards));
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&out.display().to_string()) && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn a_killed_run_resumes_where_it_stopped() {
    let dir = scratch_dir("pseudo-resume");
    let fx = pseudo_fixture(&dir);
    let full = dir.join("full.h5");
    let (code, err) = pseudo(&fx, &[&fx.teacher_a], &[], &full);
    assert_eq!(code, 0, "{err}");

    let out = dir.join("resumed.h5");
    let code = pseudo_killed_after(&fx, &fx.teacher_a, 4, &out);
    assert_eq!(code, 137, "the run stops as if killed");
    assert!(!out.exists(), "no output file from a killed run");
    let parts = std::fs::read_dir(dir.join("resumed.h5.parts"))
        .expect("parts kept")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        })
        .count();
    assert_eq!(parts, 4);

    let (code, err) = pseudo(&fx, &[&fx.teacher_a], &[], &out);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming: 4 of 6"), "{err}");
    assert_eq!(content(&h5_dump(&out)), content(&h5_dump(&full)));

    // Other teachers: the parts of the earlier run are not reused.
    let other = dir.join("other.h5");
    assert_eq!(pseudo_killed_after(&fx, &fx.teacher_a, 2, &other), 137);
    let (code, err) = pseudo(&fx, &[&fx.teacher_b], &[], &other);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("starting afresh") && !err.contains("resuming"),
        "{err}"
    );
}

#[test]
fn onnx_teachers_agree_with_checkpoints_and_bad_files_keep_the_rest() {
    let dir = scratch_dir("pseudo-onnx");
    let fx = pseudo_fixture(&dir);
    let (a, b) = (dir.join("ckpt.h5"), dir.join("onnx.h5"));
    let (code, err) = pseudo(&fx, &[&fx.teacher_a], &[], &a);
    assert_eq!(code, 0, "{err}");
    let (code, err) = pseudo(&fx, &[&fx.teacher_a_onnx], &[], &b);
    assert_eq!(code, 0, "{err}");
    let worst = max_abs_diff(&probs(&h5_dump(&a)), &probs(&h5_dump(&b)));
    assert!(
        worst < PROB_TOLERANCE,
        "ONNX vs checkpoint teacher: {worst}"
    );

    // Teachers with other labels cannot be ensembled.
    let other = dir.join("other_labels");
    init(&other, &["--arch", "mnasnet_100", "--classes", "3"]);
    let (code, err) = pseudo(&fx, &[&fx.teacher_a, &other], &[], &dir.join("x.h5"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be ensembled"), "{err}");

    // Unreadable soundscapes (not audio; audio without a sample): exit 1, named, no rows; the
    // others are all there.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    for e in std::fs::read_dir(&fx.soundscapes).expect("list") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, broken.join(p.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(broken.join("zz_garbage.wav"), b"not audio at all").expect("write");
    birdclef_models::audio::write_wav_f32(&broken.join("zz_silent.wav"), &[], 32_000)
        .expect("write");
    let out = dir.join("broken.h5");
    let (code, _, err) = run(&mut pseudo_cmd(&[&fx.teacher_a], &broken, &[], &out));
    assert_eq!(code, 1, "{err}");
    let v = h5_dump(&out);
    assert_eq!(v["row_id"]["shape"], serde_json::json!([18]));
    let failed = values(&v, "failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    // Every line about a failed file names it exactly once: the progress line, the summary
    // and the file's `failed` entry.
    for name in ["zz_garbage.wav", "zz_silent.wav"] {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(name)).collect();
        assert_eq!(lines.len(), 2, "{name}: {err}");
        for line in lines {
            assert_eq!(line.matches(name).count(), 1, "{line}");
        }
        let entry: Vec<&str> = failed
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| s.contains(name))
            .collect();
        assert_eq!(entry.len(), 1, "{failed:?}");
        assert_eq!(entry[0].matches(name).count(), 1, "{}", entry[0]);
        assert!(
            entry[0].starts_with(&broken.display().to_string()),
            "{}",
            entry[0]
        );
    }

    // A dangling link in a subfolder is a failed soundscape too: named, counted, exit 1.
    std::fs::create_dir_all(broken.join("sub")).expect("dir");
    std::os::unix::fs::symlink("gone.wav", broken.join("sub/zz_dangling.wav")).expect("link");
    let out = dir.join("dangling.h5");
    let (code, _, err) = run(&mut pseudo_cmd(&[&fx.teacher_a], &broken, &[], &out));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("zz_dangling.wav"), "{err}");
    let v = h5_dump(&out);
    assert_eq!(v["row_id"]["shape"], serde_json::json!([18]));
    let failed = values(&v, "failed");
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().any(|f| f
        .as_str()
        .is_some_and(|s| s.contains("zz_dangling.wav") && s.contains("gone.wav"))));
}

#[test]
fn outputs_and_options_are_checked_before_labelling() {
    let dir = scratch_dir("pseudo-checks");
    let fx = pseudo_fixture(&dir);
    let soundscape = std::fs::read_dir(&fx.soundscapes)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .min()
        .expect("a soundscape");
    let teacher = std::fs::read(&fx.teacher_a_onnx).expect("teacher");
    let audio = std::fs::read(&soundscape).expect("soundscape");
    let missing = dir.join("missing");
    let out = dir.join("p.h5");
    let in_missing = missing.join("p.h5");
    let cases: Vec<(&Path, &[&str], Vec<String>)> = vec![
        (
            &in_missing,
            &[],
            vec!["missing".into(), "does not exist".into()],
        ),
        (&dir, &[], vec!["is a directory".into()]),
        (
            &fx.teacher_a_onnx,
            &[],
            vec!["refusing to overwrite".into(), "teacher_a".into()],
        ),
        (
            &soundscape,
            &[],
            vec![
                "refusing to overwrite".into(),
                soundscape.display().to_string(),
            ],
        ),
        (&out, &["--batch-size", "0"], vec!["--batch-size".into()]),
        (&out, &["--threads", "0"], vec!["--threads".into()]),
    ];
    for (target, extra, expected) in cases {
        let (code, err) = pseudo(&fx, &[&fx.teacher_a_onnx], extra, target);
        assert_eq!(code, 2, "{} {extra:?}: {err}", target.display());
        for e in &expected {
            assert!(
                err.contains(e.as_str()),
                "{} {extra:?}: {err}",
                target.display()
            );
        }
        assert!(!err.contains("soundscapes ("), "labelling ran: {err}");
    }
    assert!(!missing.exists(), "no directory is created");
    assert!(!out.exists() && !dir.join("p.h5.parts").exists());
    assert_eq!(std::fs::read(&fx.teacher_a_onnx).expect("teacher"), teacher);
    assert_eq!(std::fs::read(&soundscape).expect("soundscape"), audio);
}

/// `birdclef-train distill` of the fixture's data with configs/debug.toml (3 folds).
fn distill(fx: &PseudoFixture, labels: &Path, out: &Path, set: &[&str]) -> (i32, String, String) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/debug.toml");
    let mut cmd = Command::new(bin("birdclef-train"));
    cmd.args(["--device", "cpu", "distill", "--data"])
        .arg(&fx.data)
        .arg("--config")
        .arg(&config)
        .arg("--pseudo")
        .arg(labels)
        .arg("--out")
        .arg(out)
        .args(["--set", "data.n_folds=3"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    run(&mut cmd)
}

#[test]
fn a_student_distils_from_the_pseudo_labels() {
    let dir = scratch_dir("pseudo-distill");
    let fx = pseudo_fixture(&dir);
    let labels = dir.join("pseudo.h5");
    let (code, err) = pseudo(&fx, &[&fx.teacher_a], &[], &labels);
    assert_eq!(code, 0, "{err}");
    let out = dir.join("student");
    let (code, stdout, err) = distill(&fx, &labels, &out, &["distill.threshold=0.0"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("fold 0: best"), "{stdout}");
    assert!(
        err.contains("18 of 18 pseudo-labelled windows kept"),
        "{err}"
    );
    let card = std::fs::read_to_string(out.join("fold0/best/card.json")).expect("card");
    assert!(card.contains("birdclef-train distill") && card.contains("18 pseudo-labelled windows"));

    // A threshold above every probability keeps no window: plain training, said so.
    let (code, _, err) = distill(
        &fx,
        &labels,
        &dir.join("student2"),
        &["distill.threshold=1.0"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("0 of 18 pseudo-labelled windows kept"),
        "{err}"
    );

    // A file that is not a pseudo-label file: named in the error.
    let not_labels = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/debug.toml");
    let (code, _, err) = distill(&fx, &not_labels, &dir.join("student3"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("debug.toml") && err.contains("pseudo-label"),
        "{err}"
    );
}
