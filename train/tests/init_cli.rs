//! `birdclef-train init`, driven as a user would: the checkpoint it writes opens with
//! `Checkpoint::open`, its reference batch reproduces, timm weights import, bad input exits 2
//! naming the file and leaving nothing behind, and a seed makes it reproducible.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use birdclef_models::card::Card;
use birdclef_models::checkpoint::{read_tensors, write_tensors, Checkpoint, NamedTensor};
use birdclef_models::nets;
use birdclef_train::model::net::{self, Net};
use tch::Device;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_birdclef-train"));
    c.args(["--device", "cpu"]);
    c
}

fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("run birdclef-train");
    eprintln!(
        "birdclef-train {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("init_cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The reference output stored in `dir` vs a fresh forward of the weights loaded from `dir`.
fn reference_reproduces(dir: &Path) -> f32 {
    let ckpt = Checkpoint::open(dir).expect("checkpoint opens");
    let (input, output) = ckpt.reference().expect("reference");
    let model = Net::from_checkpoint(dir, Device::Cpu).expect("net from checkpoint");
    let x = net::tensor_from(&input.data, &input.shape, Device::Cpu).expect("x");
    let y = tch::no_grad(|| model.f_forward(&x, false)).expect("forward");
    assert_eq!(
        y.size(),
        output.shape.iter().map(|&d| d as i64).collect::<Vec<_>>()
    );
    max_abs_diff(&net::to_vec_f32(&y).expect("y"), &output.data)
}

/// Nothing but `keep` in `dir` (no output, no temporary directory).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "left behind in {}", dir.display());
}

#[test]
fn fresh_init_writes_a_checkpoint_that_reproduces_its_reference() {
    let dir = scratch("fresh");
    let out = dir.join("runs/student/init");
    let o = run(&[
        "init",
        "--arch",
        "efficientvit_b0",
        "--classes",
        "5",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success());
    let ckpt = Checkpoint::open(&out).expect("open");
    assert_eq!(ckpt.card.architecture.as_deref(), Some("efficientvit_b0"));
    assert_eq!(
        ckpt.card.labels,
        ["class0", "class1", "class2", "class3", "class4"]
    );
    assert_eq!(ckpt.card.input_shape, [1, 224, 224]);
    assert_eq!(ckpt.card.frontend.n_mels, 224);
    let notes = ckpt.card.provenance.notes.clone().unwrap_or_default();
    assert!(
        notes.contains("fresh initialisation with seed 0"),
        "{notes}"
    );
    let (input, output) = ckpt.reference().expect("reference");
    assert_eq!(input.shape, [2, 1, 224, 224]);
    assert_eq!(output.shape, [2, 5]);
    // A realistic log-mel batch, not constants, standardised per image by the default card.
    let (lo, hi) = input
        .data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(hi - lo > 3.0, "range {lo}..{hi}");
    for image in input.data.chunks(224 * 224) {
        let mean = image.iter().map(|&v| f64::from(v)).sum::<f64>() / image.len() as f64;
        let var = image
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / image.len() as f64;
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "mean {mean}, var {var}"
        );
    }
    let diff = reference_reproduces(&out);
    println!("fresh efficientvit_b0: reference vs reloaded forward, max diff {diff:e}");
    assert!(diff <= 1e-6, "{diff}");
    only(
        &out,
        &["card.json", "reference.safetensors", "weights.safetensors"],
    );
    only(out.parent().expect("parent"), &["init"]);
}

#[test]
fn sed_head_and_card_labels() {
    let dir = scratch("sed");
    let mut card: Card = Card::nvbird224();
    card.labels = vec!["asbfly".into(), "ashdro1".into(), "ashpri1".into()];
    let card_path = dir.join("labels.card.json");
    card.save(&card_path).expect("save card");
    let out = dir.join("ckpt");
    let o = run(&[
        "init",
        "--arch",
        "mnasnet_100+sed",
        "--card",
        s(&card_path),
        "--in-chans",
        "3",
        "--seed",
        "4",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success());
    let ckpt = Checkpoint::open(&out).expect("open");
    assert_eq!(ckpt.card.labels, card.labels);
    assert_eq!(ckpt.card.input_shape, [3, 224, 224]);
    assert_eq!(ckpt.card.frontend.channels, 3);
    assert!(ckpt.graph.param("sed.att.weight").is_some());
    let diff = reference_reproduces(&out);
    assert!(diff <= 1e-6, "{diff}");

    // --classes must agree with the card's labels.
    let out2 = dir.join("ckpt2");
    let o = run(&[
        "init",
        "--arch",
        "mnasnet_100",
        "--card",
        s(&card_path),
        "--classes",
        "4",
        "--out",
        s(&out2),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("labels.card.json, which has 3 labels"));
    assert!(!out2.exists());
}

/// A timm-style RGB state dict with 1000 classes (our names are timm's keys, checked in
/// timm_parity.rs) plus `num_batches_tracked` entries, imported into 1 channel and 6 classes.
#[test]
fn timm_weights_import_sums_rgb_and_keeps_a_fresh_classifier() {
    let dir = scratch("timm");
    let graph = nets::build_spec("mnasnet_100", 3, 1000).expect("graph");
    let rgb = Net::new(graph, Device::Cpu, 99).expect("rgb net");
    let mut tensors = rgb.tensors().expect("tensors");
    tensors.push(NamedTensor {
        name: "bn1.num_batches_tracked".into(),
        shape: vec![],
        data: vec![0.0],
    });
    let timm_file = dir.join("mnasnet_100.timm.safetensors");
    write_tensors(&timm_file, &tensors, None).expect("write timm file");

    let out = dir.join("teacher");
    let o = run(&[
        "init",
        "--arch",
        "mnasnet_100",
        "--classes",
        "6",
        "--in-chans",
        "1",
        "--timm-weights",
        s(&timm_file),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("warning: classifier parameters left at their fresh initialisation: classifier.weight (1000 classes in the file, 6 here), classifier.bias"),
        "{err}"
    );
    let ckpt = Checkpoint::open(&out).expect("open");
    let get = |ts: &[NamedTensor], name: &str| -> NamedTensor {
        ts.iter()
            .find(|t| t.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}"))
    };
    let stem_rgb = get(&tensors, "conv_stem.weight");
    let stem = get(&ckpt.weights, "conv_stem.weight");
    assert_eq!(stem.shape, [32, 1, 3, 3]);
    for o in 0..32 {
        for j in 0..9 {
            let want: f32 = (0..3).map(|c| stem_rgb.data[(o * 3 + c) * 9 + j]).sum();
            assert_eq!(stem.data[o * 9 + j], want);
        }
    }
    for name in [
        "blocks.3.1.conv_dw.weight",
        "bn2.running_var",
        "conv_head.weight",
    ] {
        assert_eq!(get(&ckpt.weights, name), get(&tensors, name), "{name}");
    }
    assert_eq!(get(&ckpt.weights, "classifier.weight").shape, [6, 1280]);
    let notes = ckpt.card.provenance.notes.clone().unwrap_or_default();
    assert!(
        notes.contains("mnasnet_100.timm.safetensors (sha256 "),
        "{notes}"
    );
    assert!(
        notes.contains("conv_stem.weight adapted from 3 to 1 channel(s) (summed over RGB)"),
        "{notes}"
    );
    assert!(reference_reproduces(&out) <= 1e-6);
}

#[test]
fn bad_input_exits_2_naming_the_problem_and_leaves_nothing() {
    let dir = scratch("bad");
    let out = dir.join("new/ckpt");

    let o = run(&[
        "init",
        "--arch",
        "resnet50",
        "--classes",
        "3",
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("resnet50"), "{err}");
    assert!(
        err.contains("efficientvit_b0, efficientnet_b0, mnasnet_100"),
        "{err}"
    );

    let o = run(&[
        "init",
        "--arch",
        "efficientvit_b0+crnn",
        "--classes",
        "3",
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown head"));

    // Not a safetensors file.
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a tensor file").expect("write");
    let o = run(&[
        "init",
        "--arch",
        "efficientvit_b0",
        "--classes",
        "3",
        "--timm-weights",
        s(&garbage),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("garbage.safetensors"), "{}", stderr(&o));

    // Weights of another architecture: every problem listed, the file named.
    let other = dir.join("mnasnet.safetensors");
    let m = Net::new(
        nets::build_spec("mnasnet_100", 1, 3).expect("graph"),
        Device::Cpu,
        0,
    )
    .expect("net");
    m.save_weights(&other).expect("save");
    let o = run(&[
        "init",
        "--arch",
        "efficientnet_b0",
        "--classes",
        "3",
        "--timm-weights",
        s(&other),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("mnasnet.safetensors"), "{err}");
    assert!(
        err.contains("missing blocks.1.0.se.conv_reduce.weight"),
        "{err}"
    );
    assert!(
        err.contains("unexpected blocks.6.0.conv_pw.weight") || err.contains("has shape"),
        "{err}"
    );

    // A missing weights file and a missing card.
    let o = run(&[
        "init",
        "--arch",
        "efficientvit_b0",
        "--classes",
        "3",
        "--timm-weights",
        s(&dir.join("absent.safetensors")),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("absent.safetensors"));
    let o = run(&[
        "init",
        "--arch",
        "efficientvit_b0",
        "--card",
        s(&dir.join("absent.card.json")),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("absent.card.json"));

    // No labels anywhere and no --classes.
    let o = run(&["init", "--arch", "efficientvit_b0", "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--classes is required"));

    // None of the failures left an output, a temporary directory or the new parent behind.
    only(&dir, &["garbage.safetensors", "mnasnet.safetensors"]);
}

#[test]
fn existing_output_is_refused_unless_forced() {
    let dir = scratch("exists");
    let out = dir.join("ckpt");
    std::fs::create_dir_all(&out).expect("dir");
    std::fs::write(out.join("notes.txt"), "keep me").expect("write");
    let args = [
        "init",
        "--arch",
        "efficientvit_b0",
        "--classes",
        "2",
        "--out",
        s(&out),
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("ckpt") && err.contains("--force"), "{err}");
    only(&out, &["notes.txt"]);

    let mut forced = args.to_vec();
    forced.push("--force");
    let o = run(&forced);
    assert!(o.status.success());
    only(
        &out,
        &["card.json", "reference.safetensors", "weights.safetensors"],
    );
    only(&dir, &["ckpt"]);

    // An existing empty directory is fine without --force.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).expect("dir");
    let o = run(&[
        "init",
        "--arch",
        "mnasnet_100",
        "--classes",
        "2",
        "--out",
        s(&empty),
    ]);
    assert!(o.status.success());
    assert!(Checkpoint::open(&empty).is_ok());

    // A regular file where a parent directory should be: refused as such.
    std::fs::write(dir.join("plain"), "x").expect("file");
    let o = run(&[
        "init",
        "--arch",
        "mnasnet_100",
        "--classes",
        "2",
        "--out",
        s(&dir.join("plain/ckpt")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("plain/ckpt") && err.contains("is not a directory"),
        "{err}"
    );

    // --force must not replace the directory that holds the card it reads.
    let card = empty.join("card.json");
    let before = std::fs::read(&card).expect("card");
    let o = run(&[
        "init",
        "--arch",
        "mnasnet_100",
        "--card",
        s(&card),
        "--out",
        s(&empty),
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("empty/card.json") && err.contains("refusing to overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&card).expect("card"),
        before,
        "the card is kept"
    );
}

#[test]
fn same_seed_same_checkpoint_other_seed_other_weights() {
    let dir = scratch("seed");
    let mk = |name: &str, seed: &str| {
        let out = dir.join(name);
        let o = run(&[
            "init",
            "--arch",
            "efficientnet_b0",
            "--classes",
            "4",
            "--seed",
            seed,
            "--out",
            s(&out),
        ]);
        assert!(o.status.success());
        out
    };
    let a = mk("a", "11");
    let b = mk("b", "11");
    let c = mk("c", "12");
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).expect("read");
    assert_eq!(
        bytes(&a, "weights.safetensors"),
        bytes(&b, "weights.safetensors")
    );
    assert_eq!(
        bytes(&a, "reference.safetensors"),
        bytes(&b, "reference.safetensors")
    );
    assert_eq!(bytes(&a, "card.json"), bytes(&b, "card.json"));
    let wa = read_tensors(&a.join("weights.safetensors")).expect("a");
    let wc = read_tensors(&c.join("weights.safetensors")).expect("c");
    let differ = wa.iter().zip(&wc).filter(|(x, y)| x != y).count();
    assert!(differ > 100, "only {differ} tensors differ");
    // BatchNorm statistics come from seeded synthetic audio: real variances, not the fresh 1s.
    let rv = |w: &[NamedTensor]| {
        w.iter()
            .find(|t| t.name == "bn1.running_var")
            .map(|t| t.data.clone())
            .unwrap_or_default()
    };
    assert!(!rv(&wa).is_empty());
    assert!(rv(&wa).iter().all(|&v| v > 0.0 && v.is_finite()));
    assert!(
        rv(&wa).iter().any(|&v| (v - 1.0).abs() > 1e-3),
        "not calibrated"
    );
    assert_ne!(rv(&wa), rv(&wc));
}

#[test]
fn help_shows_an_example() {
    let o = bin().args(["init", "--help"]).output().expect("run");
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Examples:"), "{text}");
    assert!(
        text.contains("birdclef-train init --arch efficientvit_b0 --classes 182 --out"),
        "{text}"
    );
    assert!(text.contains("--timm-weights"), "{text}");
    let o = bin().arg("--help").output().expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("birdclef-train init --arch"));
}
