//! `birdclef-train pipeline`: the embedded default (a synthesised competition) end to end, then
//! again with nothing to do, then with one inference setting changed (only the stages after it
//! run); and a reduced birdclef-mini pipeline (two folds) on real recordings: every stage runs,
//! the teachers' training loss falls and the scores are probabilities (a single run's test score
//! on 49 windows is noise; see the test).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use birdclef::{bin, run, scratch_dir, shared_data};

/// The two pipelines train one at a time: each already uses every core (libtorch's threads and
/// the batch builders), and running both at once oversubscribes the CPU many times over.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `summary.csv` as stage -> (status, metric, value).
fn summary(out: &Path) -> BTreeMap<String, (String, String, f64)> {
    let text = std::fs::read_to_string(out.join("summary.csv")).expect("summary.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("stage,status,seconds,metric,value"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{l}");
            let value: f64 = f[4].parse().expect("value");
            (
                f[0].to_string(),
                (f[1].to_string(), f[3].to_string(), value),
            )
        })
        .collect()
}

/// `birdclef-train pipeline [--config CONFIG] --out OUT`; asserts it succeeds.
fn pipeline(config: Option<&Path>, out: &Path) {
    let mut cmd = Command::new(bin("birdclef-train"));
    cmd.args(["--device", "cpu", "pipeline"]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let (code, _, err) = run(cmd.arg("--out").arg(out));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_default_pipeline_runs_then_skips_what_is_up_to_date() {
    let _serial = serial();
    let dir = scratch_dir("pipeline-default");
    let out = dir.join("out");
    let (code, stdout, err) = run(Command::new(bin("birdclef-train"))
        .args(["--device", "cpu", "pipeline", "--out"])
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    let s = summary(&out);
    let stages: Vec<&str> = s.keys().map(String::as_str).collect();
    for stage in [
        "data",
        "teachers",
        "teachers-eval",
        "pseudo-label",
        "baseline",
        "baseline-eval",
        "students",
        "export",
        "infer",
        "score",
    ] {
        assert_eq!(s[stage].0, "ran", "{stage}: {stages:?}");
    }
    assert!(stdout.contains("test macro ROC-AUC"), "{stdout}");
    for f in ["fold0.onnx", "fold1.onnx"] {
        assert!(out.join("submission").join(f).is_file(), "{f}");
    }
    // 4 test soundscapes of 30 s: 24 rows.
    assert_eq!(s["infer"].2, 24.0);
    assert!(s["export"].2 <= 1e-4, "export check {}", s["export"].2);
    let student = s["score"].2;
    assert!(
        student > 0.7,
        "the distilled students score {student} on the synthetic test set"
    );
    assert!(
        s["teachers-eval"].2 > 0.6,
        "teachers {}",
        s["teachers-eval"].2
    );

    // Again: nothing to do.
    pipeline(None, &out);
    let again = summary(&out);
    assert!(again.values().all(|r| r.0 == "up to date"), "{again:?}");
    assert_eq!(again["score"].2, student);

    // A smoothing kernel: training and pseudo-labels are kept, evaluation reruns.
    let config = dir.join("smooth.pipeline.toml");
    let text = format!(
        "{}\n[infer]\nsmooth = [0.25, 0.5, 0.25]\n",
        include_str!("../configs/synthetic.pipeline.toml")
    );
    std::fs::write(&config, text).expect("config");
    pipeline(Some(&config), &out);
    let smoothed = summary(&out);
    for stage in [
        "data",
        "teachers",
        "pseudo-label",
        "baseline",
        "students",
        "export",
    ] {
        assert_eq!(smoothed[stage].0, "up to date", "{stage}");
    }
    for stage in ["teachers-eval", "baseline-eval", "infer", "score"] {
        assert_eq!(smoothed[stage].0, "ran", "{stage}");
    }
}

#[test]
fn a_reduced_birdclef_mini_pipeline_runs_every_stage_on_real_data_and_teachers_learn() {
    let Some(mini) = shared_data("birdclef-mini") else {
        return;
    };
    let _serial = serial();
    let dir = scratch_dir("pipeline-mini");
    let fit_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/birdclef-mini.toml");
    let config = dir.join("mini-reduced.pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\ndir = {:?}\n\n[teacher]\nconfig = {:?}\nset = [\"data.folds=[0, 1]\"]\n\n\
             [student]\nconfig = {:?}\nset = [\"data.folds=[0, 1]\", \"run.seed=7\"]\n\n\
             [student.train.distill]\npseudo_fraction = 0.25\n\n\
             [report]\nteachers = true\nbaseline = false\n",
            mini.display().to_string(),
            fit_config.display().to_string(),
            fit_config.display().to_string()
        ),
    )
    .expect("config");
    let out = dir.join("out");
    pipeline(Some(&config), &out);
    let s = summary(&out);
    println!("{s:#?}");
    let teacher = s["teachers-eval"].2;
    let student = s["score"].2;
    assert!(s["pseudo-label"].2 > 400.0, "{}", s["pseudo-label"].2);
    // birdclef-mini's test set is 49 windows of 4 species, so one run's score says little: fold 0
    // students of four seeds scored 0.52, 0.57, 0.72 and 0.75; a teacher ensemble of folds 0-1
    // scored 0.800 and 0.570 for two seeds, and 0.635 and 0.517 for the same seeds once the time
    // shift became the documented +-T. A threshold on one run would test the seed, not the code,
    // so this test asserts that real data goes through every stage and gives sane scores; the
    // comparison of variants over seeds is a benchmark (bench/README.md).
    for (stage, value) in [("teachers-eval", teacher), ("score", student)] {
        assert!(
            (0.0..=1.0).contains(&value),
            "{stage}: test macro ROC-AUC {value} is not a probability"
        );
    }
    for stage in ["teachers", "pseudo-label", "students", "export", "infer"] {
        assert_eq!(s[stage].0, "ran", "{stage}");
    }
    // What is not noise: each teacher fold's training loss falls over its epochs.
    for fold in 0..2 {
        let path = out.join(format!("teachers/fold{fold}/history.csv"));
        let text = std::fs::read_to_string(&path).expect("history.csv");
        let losses: Vec<f64> = text
            .lines()
            .skip(1)
            .map(|l| {
                l.split(',')
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .expect("train_loss")
            })
            .collect();
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        assert!(
            last < 0.8 * first,
            "{}: train_loss {first} -> {last}",
            path.display()
        );
    }
}

#[test]
fn noisy_student_rounds_relabel_with_the_last_students_and_skip_when_up_to_date() {
    let _serial = serial();
    let dir = scratch_dir("pipeline-rounds");
    let config = dir.join("rounds.pipeline.toml");
    // A tiny shifted competition, one fold, one-epoch debug training: the stages' wiring is
    // under test here, not the scores.
    let train = "[model]\narch = \"efficientvit_b0\"\nn_mels = 32\nhop_length = 1600\n\
                 n_fft = 1024\n[optim]\nepochs = 1\nbatch_size = 8\n[data]\nn_folds = 2\n\
                 folds = [0]\ncache_seconds = 6.0\n[run]\ndebug_batches = 2\n";
    std::fs::write(dir.join("fit.toml"), train).expect("fit config");
    std::fs::write(
        &config,
        "[data]\nsynthetic = true\n[data.synth]\nspecies = 3\nrecordings_per_species = 4\n\
         recording_seconds = 4.0\nunlabeled = 3\nunlabeled_seconds = 10.0\ntest = 2\n\
         test_seconds = 10.0\ndomain_shift = 0.5\n\
         [teacher]\nconfig = \"fit.toml\"\n[student]\nconfig = \"fit.toml\"\n\
         [student.train.distill]\npseudo_fraction = 0.0\nmix_prob = 1.0\nsampler = \"weighted\"\n\
         kd_weight = 0.5\n[student.train.model]\ndrop_path_rate = 0.1\n\
         [rounds]\ncount = 2\n[[rounds.round]]\ndistill = { power = 1.5 }\n\
         [[rounds.round]]\ndistill = { power = 2.0, floor = 0.05 }\n[report]\nteachers = false\n",
    )
    .expect("config");
    let out = dir.join("out");
    pipeline(Some(&config), &out);
    let s = summary(&out);
    for stage in [
        "data",
        "teachers",
        "pseudo-label",
        "students",
        "students-eval",
        "pseudo-label-r2",
        "students-r2",
        "export",
        "infer",
        "score",
    ] {
        assert_eq!(
            s.get(stage).map(|r| r.0.as_str()),
            Some("ran"),
            "{stage}: {s:?}"
        );
    }
    assert!(
        !s.contains_key("students-r2-eval"),
        "the last round is the submission"
    );
    assert_eq!(
        s["pseudo-label"].2, s["pseudo-label-r2"].2,
        "the same windows, relabelled"
    );
    // Round 2 was labelled by round 1's students and learnt live from them; each round has its
    // own settings.
    let r2 = std::fs::read_to_string(out.join("students-r2/fold0/config.toml")).expect("config");
    assert!(
        r2.contains("power = 2.0") && r2.contains("floor = 0.05"),
        "{r2}"
    );
    assert!(
        r2.contains(&out.join("students").display().to_string()),
        "{r2}"
    );
    let r1 = std::fs::read_to_string(out.join("students/fold0/config.toml")).expect("config");
    assert!(r1.contains("power = 1.5") && r1.contains(&out.join("teachers").display().to_string()));
    assert!(out.join("submission/fold0.onnx").is_file());

    pipeline(Some(&config), &out);
    let again = summary(&out);
    assert!(again.values().all(|r| r.0 == "up to date"), "{again:?}");
}
