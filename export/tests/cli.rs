//! `birdclef-export` end to end: a checkpoint directory in, a verified ONNX file out, and every
//! way it must refuse.
//!
//! The checkpoint is built from the committed golden case `efficientvit_b0_small` (timm weights,
//! timm's float64 logits as the reference), so the reference is independent of this crate. A
//! checkpoint names a registered architecture, and `efficientvit_b0`'s head is 1024/1280 wide
//! where the small case's is 64/80; the small head is embedded exactly in the wide one:
//!
//! - `head.in_conv`: the 64 real channels, then 960 channels whose conv weights and BatchNorm
//!   scale/shift are zero, so they are 0 after Hardswish and after pooling;
//! - `head.classifier.0` (Linear 1024 → 1280): 16 stacked copies of the 80 × 64 weight (zero
//!   columns for the dead channels), so the 1280 features are 16 copies of the 80;
//! - `head.classifier.1` (LayerNorm): 16 copies of the scale and shift; the mean and variance
//!   over 16 copies equal those over one copy, so each copy is the small network's feature;
//! - `head.classifier.4` (Linear 1280 → 7): the 7 × 80 weight tiled 16 times and divided by 16
//!   (exact in binary), the bias unchanged.
//!
//! The backbone keys are timm's unchanged. The card's frontend gives the case's 64 × 96 input:
//! 64 mels, 5-s windows at 32 kHz with hop 1680 → 1 + 160000 / 1680 = 96 frames.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use birdclef_models::card::Card;
use birdclef_models::checkpoint::{write_tensors, NamedTensor};
use birdclef_models::frontend::FrontendConfig;
use common::{card_64x96, golden_dir, onnx_check, Case, TempDir};

const LABELS: usize = 7;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_birdclef-export"))
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = bin();
    for a in args {
        c.arg(a);
    }
    c.output().expect("run birdclef-export")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn card() -> Card {
    let mut card = card_64x96("efficientvit-b0-test", LABELS);
    card.provenance.notes = Some("built by export/tests/cli.rs from a timm golden case".into());
    card
}

/// `t` with shape `shape`, whose leading block holds `small` (row-major, any rank ≥ 1: rows are
/// the first axis, the rest is copied per row into the leading columns) and zeros elsewhere.
fn pad_rows_cols(small: &NamedTensor, shape: &[usize]) -> NamedTensor {
    let numel: usize = shape.iter().product();
    let mut data = vec![0.0f32; numel];
    let row_big: usize = shape[1..].iter().product();
    let row_small: usize = small.shape[1..].iter().product();
    for r in 0..small.shape[0] {
        data[r * row_big..r * row_big + row_small]
            .copy_from_slice(&small.data[r * row_small..(r + 1) * row_small]);
    }
    NamedTensor {
        name: small.name.clone(),
        shape: shape.to_vec(),
        data,
    }
}

/// The small golden weights turned into a full `efficientvit_b0` (1 channel, 7 classes)
/// checkpoint's weights; see the module documentation.
fn embedded_weights(case: &Case) -> Vec<NamedTensor> {
    const REP: usize = 16; // 1280 / 80
    let graph = birdclef_models::nets::build_spec("efficientvit_b0", 1, LABELS).expect("graph");
    let by_name = |n: &str| {
        case.weights
            .iter()
            .find(|t| t.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
            .clone()
    };
    graph
        .params
        .iter()
        .map(|p| {
            let small = by_name(&p.name);
            if small.shape == p.shape {
                return small;
            }
            let shape = p.shape.as_slice();
            match p.name.as_str() {
                "head.in_conv.conv.weight" => pad_rows_cols(&small, shape),
                n if n.starts_with("head.in_conv.norm.") => {
                    let mut t = pad_rows_cols(&small, shape);
                    if n.ends_with("running_var") {
                        t.data[small.data.len()..].fill(1.0);
                    }
                    t
                }
                "head.classifier.0.weight" => {
                    // [80, 64] -> [1280, 1024]: 16 copies of the rows, zero columns.
                    let padded = pad_rows_cols(&small, &[small.shape[0], shape[1]]);
                    let mut data = Vec::with_capacity(shape[0] * shape[1]);
                    for _ in 0..REP {
                        data.extend_from_slice(&padded.data);
                    }
                    NamedTensor {
                        name: p.name.clone(),
                        shape: shape.to_vec(),
                        data,
                    }
                }
                "head.classifier.1.weight" | "head.classifier.1.bias" => NamedTensor {
                    name: p.name.clone(),
                    shape: shape.to_vec(),
                    data: small.data.repeat(REP),
                },
                "head.classifier.4.weight" => {
                    // [7, 80] -> [7, 1280]: each row tiled 16 times, divided by 16.
                    let cols = small.shape[1];
                    let data = small
                        .data
                        .chunks(cols)
                        .flat_map(|row| {
                            std::iter::repeat_n(row, REP)
                                .flatten()
                                .map(|v| v / REP as f32)
                        })
                        .collect();
                    NamedTensor {
                        name: p.name.clone(),
                        shape: shape.to_vec(),
                        data,
                    }
                }
                other => panic!("unexpected shape difference for {other}"),
            }
        })
        .collect()
}

/// Write a checkpoint directory `dir` (card, weights, reference batch).
fn make_checkpoint(dir: &Path) -> Case {
    let case = Case::load(&golden_dir(), "efficientvit_b0_small");
    std::fs::create_dir_all(dir).expect("mkdir");
    card().save(&dir.join("card.json")).expect("card");
    write_tensors(
        &dir.join("weights.safetensors"),
        &embedded_weights(&case),
        None,
    )
    .expect("weights");
    write_tensors(
        &dir.join("reference.safetensors"),
        &[case.input(), case.output()],
        None,
    )
    .expect("reference");
    case
}

/// The `max |…| = X` number of a report line.
fn reported_diff(stdout: &str) -> f32 {
    let after = stdout
        .split("max |onnxruntime - reference| = ")
        .nth(1)
        .unwrap_or_else(|| panic!("no difference in {stdout:?}"));
    after
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable difference in {stdout:?}"))
}

/// Files in `dir` (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn exports_a_checkpoint_and_reports_the_difference() {
    let t = TempDir::new("cli-ok");
    let ckpt = t.path().join("fold0");
    make_checkpoint(&ckpt);
    let out = t.path().join("submission/fold0.onnx");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &out]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    assert!(stdout.contains(&out.display().to_string()), "{stdout}");
    assert!(stdout.contains("bytes"), "{stdout}");
    let diff = reported_diff(&stdout);
    assert!(diff <= 1e-4, "{diff}");
    let bytes = std::fs::read(&out).expect("file written");
    assert!(
        stdout.contains(&format!("({} bytes)", bytes.len())),
        "{stdout}"
    );
    assert_eq!(
        listing(&t.path().join("submission")),
        vec!["fold0.onnx".to_string()],
        "no temporary file may stay behind"
    );

    // The card inside is the checkpoint's.
    let model = birdclef_export::emit::decode(&bytes).expect("decode");
    let inside = birdclef_export::emit::read_card(&model)
        .expect("card")
        .expect("present");
    assert_eq!(inside, Card::load(&ckpt.join("card.json")).expect("card"));
    match onnx_check(&out) {
        Ok(Some(msg)) => println!("{msg}"),
        Ok(None) => println!("SKIPPED onnx.checker: no .env/venv/bin/python"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_reference_the_model_does_not_reproduce_is_refused_and_nothing_is_written() {
    let t = TempDir::new("cli-bad-ref");
    let ckpt = t.path().join("fold3");
    let case = make_checkpoint(&ckpt);
    let mut output = case.output();
    output.data[4] += 0.01;
    write_tensors(
        &ckpt.join("reference.safetensors"),
        &[case.input(), output],
        None,
    )
    .expect("reference");

    let out_dir = t.path().join("sub");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    let out = out_dir.join("fold3.onnx");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &out]);
    let (stdout, stderr) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&ckpt.display().to_string()), "{stderr}");
    assert!(stderr.contains("verification failed"), "{stderr}");
    assert!(stderr.contains("tolerance 1.0e-4"), "{stderr}");
    assert!(
        stderr.contains("1.000e-2") || stderr.contains("9.99"),
        "{stderr}"
    );
    assert!(!out.exists(), "{} must not exist", out.display());
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));

    // An older file at the target is left exactly as it was.
    std::fs::write(&out, b"previous model").expect("write");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&out).expect("read"), b"previous model");
    assert_eq!(listing(&out_dir), vec!["fold3.onnx".to_string()]);

    // A tolerance wide enough for the corruption accepts it.
    let o = run(&[
        &"--checkpoint",
        &ckpt,
        &"--out",
        &out,
        &"--tolerance",
        &"0.02",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    let diff = reported_diff(&stdout);
    assert!((diff - 0.01).abs() < 1e-4, "{diff}");
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let t = TempDir::new("cli-bad");
    let good = t.path().join("good");
    let case = make_checkpoint(&good);
    let out = t.path().join("out.onnx");
    let expect_error = |ckpt: &Path, needles: &[&str]| {
        let o = run(&[&"--checkpoint", &ckpt, &"--out", &out]);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        for n in needles {
            assert!(stderr.contains(n), "expected {n:?} in:\n{stderr}");
        }
        assert!(!out.exists());
        println!("{stderr}");
    };

    // Not a directory at all.
    expect_error(
        &t.path().join("nope"),
        &["nope: no such directory", "card.json"],
    );

    // No card.
    let no_card = t.path().join("no_card");
    copy_dir(&good, &no_card);
    std::fs::remove_file(no_card.join("card.json")).expect("rm");
    expect_error(&no_card, &["no_card/card.json", "No such file"]);

    // Weights of another network: one tensor missing, one mis-shaped, one extra.
    let wrong = t.path().join("wrong_weights");
    copy_dir(&good, &wrong);
    let mut w = embedded_weights(&case);
    w.retain(|t| t.name != "stem.in_conv.conv.weight");
    let fc = w
        .iter_mut()
        .find(|t| t.name == "head.classifier.4.bias")
        .expect("bias");
    fc.shape = vec![1, 7];
    w.push(NamedTensor {
        name: "classifier.weight".into(),
        shape: vec![7, 1280],
        data: vec![0.0; 7 * 1280],
    });
    write_tensors(&wrong.join("weights.safetensors"), &w, None).expect("weights");
    expect_error(
        &wrong,
        &[
            "wrong_weights/weights.safetensors",
            "missing stem.in_conv.conv.weight",
            "head.classifier.4.bias has shape [1, 7]",
            "unexpected classifier.weight",
        ],
    );

    // A card whose labels disagree with the weights' classifier.
    let labels = t.path().join("labels");
    copy_dir(&good, &labels);
    let mut c = card();
    c.labels.push("extra".into());
    c.save(&labels.join("card.json")).expect("card");
    expect_error(
        &labels,
        &["labels/weights.safetensors", "head.classifier.4"],
    );

    // Weights that are not safetensors.
    let garbage = t.path().join("garbage");
    copy_dir(&good, &garbage);
    std::fs::write(garbage.join("weights.safetensors"), b"not safetensors").expect("write");
    expect_error(
        &garbage,
        &["garbage/weights.safetensors", "not a usable safetensors"],
    );

    // No reference batch.
    let no_ref = t.path().join("no_ref");
    copy_dir(&good, &no_ref);
    std::fs::remove_file(no_ref.join("reference.safetensors")).expect("rm");
    expect_error(&no_ref, &["no_ref/reference.safetensors"]);

    // A reference batch of the wrong size for the card.
    let small_ref = t.path().join("small_ref");
    copy_dir(&good, &small_ref);
    let mut input = case.input();
    input.shape = vec![2, 1, 96, 64];
    write_tensors(
        &small_ref.join("reference.safetensors"),
        &[input, case.output()],
        None,
    )
    .expect("reference");
    expect_error(
        &small_ref,
        &["small_ref", "reference batch", "[batch, 1, 64, 96]"],
    );
}

#[test]
fn folds_mode_exports_every_checkpoint_of_a_run() {
    let t = TempDir::new("cli-folds");
    let run_dir = t.path().join("run");
    let case = make_checkpoint(&run_dir.join("fold0"));
    for f in ["fold1", "fold2"] {
        copy_dir(&run_dir.join("fold0"), &run_dir.join(f));
    }
    std::fs::create_dir_all(run_dir.join("logs")).expect("a subdirectory without a card");

    // --checkpoint A --checkpoint B --out-dir D
    let d = t.path().join("by-checkpoint");
    let (a, b) = (run_dir.join("fold0"), run_dir.join("fold2"));
    let o = run(&[&"--checkpoint", &a, &"--checkpoint", &b, &"--out-dir", &d]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert_eq!(listing(&d), ["fold0.onnx", "fold2.onnx"]);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    // --run RUN --out-dir D: every subdirectory with a card.json.
    let d = t.path().join("by-run");
    let o = run(&[&"--run", &run_dir, &"--out-dir", &d]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    println!("{stdout}");
    assert_eq!(listing(&d), ["fold0.onnx", "fold1.onnx", "fold2.onnx"]);

    // One bad fold: the others are still written, the bad one is not, exit 2 naming it.
    let mut output = case.output();
    output.data[0] -= 1.0;
    write_tensors(
        &run_dir.join("fold1/reference.safetensors"),
        &[case.input(), output],
        None,
    )
    .expect("reference");
    let d = t.path().join("one-bad");
    let o = run(&[&"--run", &run_dir, &"--out-dir", &d]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&run_dir.join("fold1").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 3 checkpoints failed"), "{stderr}");
    assert_eq!(listing(&d), ["fold0.onnx", "fold2.onnx"]);

    // A fold that cannot be read: among the others, its error still says which file and why.
    std::fs::remove_file(run_dir.join("fold2/weights.safetensors")).expect("remove weights");
    let d = t.path().join("one-unreadable");
    let o = run(&[&"--run", &run_dir, &"--out-dir", &d]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    let weights = run_dir.join("fold2/weights.safetensors");
    assert!(
        stderr.contains(&format!("{}: No such file", weights.display())),
        "{stderr}"
    );
    assert!(stderr.contains("2 of 3 checkpoints failed"), "{stderr}");
    assert_eq!(listing(&d), ["fold0.onnx"]);
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let t = TempDir::new("cli-usage");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--checkpoint", "a", "--checkpoint", "b", "--out", "x.onnx"],
            "--out-dir",
        ),
        (vec!["--checkpoint", "a"], "--out"),
        (vec!["--run", "r", "--out", "x.onnx"], "--out-dir"),
        (
            vec!["--checkpoint", "a", "--out", "x.onnx", "--tolerance", "-1"],
            "tolerance",
        ),
        (
            vec![
                "--checkpoint",
                "x/fold0",
                "--checkpoint",
                "y/fold0",
                "--out-dir",
                "o",
            ],
            "both",
        ),
    ]
    .into_iter()
    .map(|(a, n)| (a.into_iter().map(String::from).collect(), n))
    .collect();
    for (args, needle) in cases {
        let o = bin()
            .args(&args)
            .current_dir(t.path())
            .output()
            .expect("run");
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let empty = t.path().join("empty-run");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let o = run(&[&"--run", &empty, &"--out-dir", &t.path().join("o")]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr.contains("no subdirectory holds a card.json"),
        "{stderr}"
    );
}

/// The full-size timm golden (when `make_golden.py --full` has run): a real `efficientvit_b0`
/// checkpoint for 224 × 224 nvbird224 input and 182 classes.
#[test]
fn exports_the_full_size_golden_checkpoint_when_present() {
    let dir = common::full_golden_dir();
    if !dir.join("efficientvit_b0_full.json").exists() {
        println!("SKIPPED: no {}/efficientvit_b0_full.json", dir.display());
        return;
    }
    let case = Case::load(&dir, "efficientvit_b0_full");
    let t = TempDir::new("cli-full");
    let ckpt = t.path().join("student-fold0");
    std::fs::create_dir_all(&ckpt).expect("mkdir");
    let mut card = Card::frontend_only("student", FrontendConfig::nvbird224());
    card.architecture = Some("efficientvit_b0".into());
    card.labels = (0..case.num_classes())
        .map(|i| format!("sp{i:03}"))
        .collect();
    card.save(&ckpt.join("card.json")).expect("card");
    write_tensors(&ckpt.join("weights.safetensors"), &case.weights, None).expect("weights");
    write_tensors(
        &ckpt.join("reference.safetensors"),
        &[case.input(), case.output()],
        None,
    )
    .expect("reference");
    let out = t.path().join("student-fold0.onnx");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &out]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    println!("{stdout}");
    assert!(reported_diff(&stdout) <= 1e-4);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let dest: PathBuf = to.join(e.file_name());
        std::fs::copy(e.path(), dest).expect("copy");
    }
}

#[test]
fn a_missing_onnx_runtime_is_named_and_nothing_is_written() {
    let t = TempDir::new("cli-ort");
    let ckpt = t.path().join("fold0");
    make_checkpoint(&ckpt);
    let out_dir = t.path().join("out");
    let out = out_dir.join("fold0.onnx");
    let lib = t.path().join("missing/libonnxruntime.so");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &out, &"--ort-lib", &lib]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("--ort-lib"), "{stderr}");
    assert!(stderr.contains(&lib.display().to_string()), "{stderr}");
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
}

#[test]
fn outputs_are_checked_before_any_export_and_checkpoint_files_never_overwritten() {
    use std::os::unix::fs::FileTypeExt;
    let t = TempDir::new("cli-outputs");
    let ckpt = t.path().join("fold0");
    make_checkpoint(&ckpt);
    // A checkpoint whose weights cannot be read: the output is still the first error.
    let broken = t.path().join("broken");
    copy_dir(&ckpt, &broken);
    std::fs::write(broken.join("weights.safetensors"), b"garbage").expect("write");
    let file = t.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    for (args, needles) in [
        (
            vec![
                "--checkpoint".into(),
                broken.clone(),
                "--out".into(),
                t.path().to_path_buf(),
            ],
            vec!["is a directory"],
        ),
        (
            vec![
                "--checkpoint".into(),
                broken.clone(),
                "--out".into(),
                file.join("x.onnx"),
            ],
            vec!["a-file", "not a directory"],
        ),
        (
            vec![
                "--checkpoint".into(),
                broken.clone(),
                "--out-dir".into(),
                file.clone(),
            ],
            vec!["--out-dir", "a-file", "not a directory"],
        ),
    ] {
        let o = bin().args(&args).output().expect("run");
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: {n:?} in {stderr}");
        }
        assert!(!stderr.contains("safetensors"), "checked first: {stderr}");
    }

    // --out naming a checkpoint file: refused naming both, the file unchanged.
    let weights = ckpt.join("weights.safetensors");
    let before = std::fs::read(&weights).expect("read");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &weights]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert!(stderr.contains("weights.safetensors"), "{stderr}");
    assert_eq!(std::fs::read(&weights).expect("read"), before);

    // Folds mode: one output that cannot be written stops the run before any export.
    let second = t.path().join("fold1");
    copy_dir(&ckpt, &second);
    let out_dir = t.path().join("folds");
    std::fs::create_dir_all(out_dir.join("fold1.onnx")).expect("mkdir");
    let o = run(&[
        &"--checkpoint",
        &ckpt,
        &"--checkpoint",
        &second,
        &"--out-dir",
        &out_dir,
    ]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("fold1.onnx") && stderr.contains("is a directory"),
        "{stderr}"
    );
    assert_eq!(listing(&out_dir), ["fold1.onnx"], "fold0 was not exported");

    // A link stays a link and its target gets the model; /dev/null stays a device.
    let link = t.path().join("link.onnx");
    std::os::unix::fs::symlink("target.onnx", &link).expect("link");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &link]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(std::fs::symlink_metadata(&link)
        .expect("meta")
        .file_type()
        .is_symlink());
    let bytes = std::fs::read(t.path().join("target.onnx")).expect("target");
    birdclef_export::emit::decode(&bytes).expect("an ONNX model");
    let o = run(&[&"--checkpoint", &ckpt, &"--out", &"/dev/null"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(std::fs::metadata("/dev/null")
        .expect("meta")
        .file_type()
        .is_char_device());
}
