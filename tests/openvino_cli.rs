//! `birdclef-infer --engine openvino`: the same ONNX files and cards as ONNX Runtime, the same
//! probabilities within 1e-4 for a five-model ensemble, on real soundscapes where ../shared is
//! present (synthesised ones otherwise), and clear errors when OpenVINO is not where it is said
//! to be.
use std::path::{Path, PathBuf};
use std::process::Command;

use birdclef::{bin, init_and_export, run, scratch_dir, shared_data};
use birdclef_models::audio::write_wav_f32;
use birdclef_models::card::Card;
use birdclef_models::frontend::FrontendConfig;
use birdclef_models::rng::Rng;
use birdclef_models::synth;

/// The submission's rows: row id and values.
fn rows(path: &Path) -> Vec<(String, Vec<f64>)> {
    std::fs::read_to_string(path)
        .expect("csv")
        .lines()
        .skip(1)
        .map(|l| {
            let mut parts = l.split(',');
            let id = parts.next().expect("row id").to_string();
            (id, parts.map(|v| v.parse().expect("number")).collect())
        })
        .collect()
}

/// Audio to score: two real 4-min soundscapes when ../shared is there, else two synthesised.
fn soundscapes(dir: &Path) -> Vec<PathBuf> {
    if let Some(bench) = shared_data("bench_soundscapes") {
        return ["soundscape_bench00.ogg", "soundscape_bench05.ogg"]
            .iter()
            .map(|n| bench.join(n))
            .collect();
    }
    (0..2)
        .map(|i| {
            let (x, _) =
                synth::soundscape(60.0, 32_000, &synth::species(5), 6, &mut Rng::new(40 + i));
            let path = dir.join(format!("synth{i}.wav"));
            write_wav_f32(&path, &x, 32_000).expect("wav");
            path
        })
        .collect()
}

fn score(models: &[PathBuf], audio: &[PathBuf], out: &Path, extra: &[&str]) -> String {
    let (code, stdout, err) = run(Command::new(bin("birdclef-infer"))
        .arg("--models")
        .args(models)
        .arg("--soundscapes")
        .args(audio)
        .arg("--out")
        .arg(out)
        .args(extra));
    assert_eq!(code, 0, "{extra:?}: {err}");
    stdout
}

#[test]
fn openvino_scores_a_five_model_ensemble_as_onnx_runtime_does() {
    let dir = scratch_dir("ov-parity");
    // A 128-mel card (kefir128, 5 labels): real frontends, models small enough for CI.
    let mut card = Card::frontend_only("kefir128", FrontendConfig::kefir128());
    card.labels = ["amerob", "barswa", "comcuc", "eurjay", "houspa"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let card_path = dir.join("card.json");
    card.save(&card_path).expect("card");
    let card_arg = card_path.to_string_lossy().to_string();
    // Five "folds" of three families, one with the SED head, each with its own random weights
    // and BatchNorm statistics.
    let archs = [
        "efficientvit_b0",
        "efficientnet_b0",
        "mnasnet_100+sed",
        "efficientvit_b0",
        "mnasnet_100",
    ];
    let models: Vec<PathBuf> = archs
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            let seed = (i + 1).to_string();
            init_and_export(
                &dir,
                &format!("fold{i}"),
                &["--arch", arch, "--seed", &seed, "--card", &card_arg],
            )
            .0
        })
        .collect();
    let audio = soundscapes(&dir);
    let ort_csv = dir.join("ort.csv");
    let ov_csv = dir.join("openvino.csv");
    score(&models, &audio, &ort_csv, &[]);
    let report = score(&models, &audio, &ov_csv, &["--engine", "openvino"]);
    assert!(report.starts_with("wrote "), "{report}");
    let (a, b) = (rows(&ort_csv), rows(&ov_csv));
    assert!(a.len() >= 24, "{} rows", a.len());
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    let mut spread = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        for (p, q) in x.1.iter().zip(&y.1) {
            worst = worst.max((p - q).abs());
            spread = (spread.0.min(*p), spread.1.max(*p));
        }
    }
    println!(
        "{} rows, probabilities {:.4}..{:.4}, OpenVINO vs ONNX Runtime max |diff| {worst:.2e}",
        a.len(),
        spread.0,
        spread.1
    );
    assert!(
        worst <= 1e-4,
        "OpenVINO differs from ONNX Runtime by {worst}"
    );
    // The comparison is not vacuous: the probabilities move between windows and species.
    assert!(spread.1 - spread.0 > 1e-3, "{spread:?}");

    // Two OpenVINO threads per model and an odd batch size change nothing beyond rounding: the
    // model is compiled for batches of 5, and a file's 12 or 48 windows end in a short batch,
    // padded.
    let ov2 = dir.join("openvino-2.csv");
    score(
        &models[..1],
        &audio[..1],
        &ov2,
        &[
            "--engine",
            "openvino",
            "--model-threads",
            "2",
            "--batch-size",
            "5",
        ],
    );
    let ort1 = dir.join("ort-1.csv");
    score(&models[..1], &audio[..1], &ort1, &[]);
    for (x, y) in rows(&ov2).iter().zip(&rows(&ort1)) {
        assert_eq!(x.0, y.0);
        let d = x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs());
        assert!(d.fold(0.0, f64::max) <= 1e-4, "{}", x.0);
    }
}

#[test]
fn openvino_that_is_not_there_is_a_clear_error_and_writes_nothing() {
    let dir = scratch_dir("ov-missing");
    let audio = dir.join("a.wav");
    let (x, _) = synth::soundscape(5.0, 32_000, &synth::species(2), 1, &mut Rng::new(1));
    write_wav_f32(&audio, &x, 32_000).expect("wav");
    let model = dir.join("m.onnx");
    std::fs::write(&model, b"not read before the engine loads").expect("write");
    let out = dir.join("sub.csv");
    let gone = dir.join("no-openvino");
    let (code, _, err) = run(Command::new(bin("birdclef-infer"))
        .args(["--engine", "openvino", "--openvino-lib"])
        .arg(&gone)
        .arg("--models")
        .arg(&model)
        .arg("--soundscapes")
        .arg(&audio)
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "--openvino-lib names {}, which does not exist",
            gone.display()
        )),
        "{err}"
    );
    assert!(!out.exists());

    // A text file as the library: refused before the loader sees it.
    let fake = dir.join("libopenvino_c.so.2640");
    std::fs::write(&fake, b"text").expect("write");
    let (code, _, err) = run(Command::new(bin("birdclef-infer"))
        .env("OPENVINO_DYLIB_PATH", &dir)
        .args(["--engine", "openvino", "--models"])
        .arg(&model)
        .arg("--soundscapes")
        .arg(&audio)
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "OpenVINO found via OPENVINO_DYLIB_PATH could not be used: {}: not a shared library",
            fake.display()
        )),
        "{err}"
    );

    // doctor lists both engines.
    let (code, out, err) = run(Command::new(bin("birdclef-infer")).arg("doctor"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("onnxruntime version:"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("openvino version:") && l.contains("2026.4")),
        "{out}"
    );
}

/// The newest `GLIBC_2.N` version any dynamic symbol of the ELF file `path` needs (`objdump -T`),
/// as N; `None` when it needs none.
fn newest_glibc(path: &Path) -> Option<u32> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(path)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success(), "objdump -T {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_2."))
        .filter_map(|v| v.split('.').next()?.parse().ok())
        .max()
}

#[test]
fn the_kit_runs_alone_with_an_empty_environment_and_writes_the_same_submission() {
    let dir = scratch_dir("kit");
    let card = dir.join("card.json");
    let mut c = Card::frontend_only("kefir128", FrontendConfig::kefir128());
    c.labels = ["amerob", "barswa", "comcuc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    c.save(&card).expect("card");
    let card_arg = card.to_string_lossy().to_string();
    let models: Vec<PathBuf> = (0..2)
        .map(|i| {
            let seed = (i + 1).to_string();
            init_and_export(
                &dir,
                &format!("fold{i}"),
                &[
                    "--arch",
                    "mnasnet_100",
                    "--seed",
                    &seed,
                    "--card",
                    &card_arg,
                ],
            )
            .0
        })
        .collect();
    let comp = dir.join("birdclef-2026");
    let test = comp.join("test_soundscapes");
    std::fs::create_dir_all(&test).expect("mkdir");
    let sample = comp.join("sample_submission.csv");
    std::fs::write(&sample, "row_id,comcuc,amerob,barswa\nx_5,0,0,0\n").expect("sample");

    let kit = dir.join("kit");
    let make = |out: &Path| {
        run(Command::new(bin("birdclef-infer"))
            .arg("kit")
            .arg("--models")
            .args(&models)
            .arg("--out")
            .arg(out)
            .args(["--time-limit", "80m", "--", "--smooth", "0.2,0.6,0.2"]))
    };
    let (code, out, err) = make(&kit);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("wrote "), "{out}");
    // Never written over: a second kit to the same place is refused and changes nothing.
    let (code, _, err) = make(&kit);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");

    // Every binary and library of the kit runs on glibc 2.35 (Kaggle's Ubuntu 22.04).
    let mut elves = 0;
    let mut stack = vec![kit.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read kit").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let head = std::fs::read(&p).expect("read");
            if head.starts_with(b"\x7fELF") {
                elves += 1;
                let n = newest_glibc(&p);
                assert!(
                    n.is_none_or(|n| n <= 35),
                    "{} needs GLIBC_2.{n:?}",
                    p.display()
                );
            }
        }
    }
    assert!(elves >= 9, "{elves} ELF files in the kit");

    // Copied elsewhere (as the notebook copies it to /kaggle/working) and run with nothing
    // from this machine's environment: no Python, no project, no variables.
    let copy = dir.join("working/kit");
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&kit)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let alone = |args: &[&Path]| {
        let mut cmd = Command::new(copy.join("run.sh"));
        cmd.env_clear().env("PATH", "/usr/bin:/bin").args(args);
        run(&mut cmd)
    };
    // A save run: no test audio, the sample submission stands in.
    let kit_csv = dir.join("kit.csv");
    let (code, out, err) = alone(&[&comp, &kit_csv]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(&kit_csv).expect("copied"),
        std::fs::read(&sample).expect("sample")
    );
    std::fs::remove_file(&kit_csv).expect("rm");
    for (i, audio) in soundscapes(&dir).iter().enumerate() {
        std::fs::copy(
            audio,
            test.join(format!(
                "s{i}.{}",
                audio.extension().expect("ext").to_string_lossy()
            )),
        )
        .expect("copy audio");
    }
    let (code, out, err) = alone(&[&comp, &kit_csv]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, doctor, err) = {
        let mut cmd = Command::new(copy.join("birdclef-infer"));
        cmd.env_clear().env("PATH", "/usr/bin:/bin").arg("doctor");
        run(&mut cmd)
    };
    assert_eq!(code, 0, "{err}");
    assert!(
        doctor.contains("found via:            the executable's directory")
            && doctor.contains("found via:            openvino/ in the executable's directory"),
        "{doctor}"
    );

    // The same submission as a normal run of the project's binary with the same options.
    let normal = dir.join("normal.csv");
    score(
        &models,
        std::slice::from_ref(&test),
        &normal,
        &[
            "--engine",
            "openvino",
            "--smooth",
            "0.2,0.6,0.2",
            "--sample-submission",
            &sample.to_string_lossy(),
        ],
    );
    let (kit_text, normal_text) = (
        std::fs::read_to_string(&kit_csv).expect("kit csv"),
        std::fs::read_to_string(&normal).expect("normal csv"),
    );
    assert!(
        kit_text.starts_with("row_id,comcuc,amerob,barswa\n"),
        "{kit_text}"
    );
    assert_eq!(kit_text, normal_text);
}
