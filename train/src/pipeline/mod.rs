//! `birdclef-train pipeline`: teachers → pseudo-labels → students → export → inference → score,
//! from one TOML file, skipping stages whose outputs are up to date.
//!
//! # Stages and outputs (all under the output directory `OUT`)
//!
//! | stage | output | metric |
//! | --- | --- | --- |
//! | `data` (synthetic only) | `data/`: the embedded default competition | training files |
//! | `teachers` | `teachers/fold<N>/` | mean best validation macro ROC-AUC |
//! | `teachers-eval` | `teachers-onnx/`, `scores/teachers.csv` | test macro ROC-AUC of the ensemble |
//! | `baseline` | `baseline/fold<N>/`: students without pseudo-labels | mean best validation AUC |
//! | `baseline-eval` | `baseline-onnx/`, `scores/baseline.csv` | test macro ROC-AUC |
//! | `pseudo-label` | `pseudo.h5`: the teachers' labels of the unlabeled soundscapes | windows labelled |
//! | `students` | `students/fold<N>/`: distilled with pseudo-labels | mean best validation AUC |
//! | `students-eval` | with `[rounds] count` > 1: `students-onnx/`, `scores/students.csv` | test macro ROC-AUC |
//! | `pseudo-label-r<K>` | round K ≥ 2: `pseudo-r<K>.h5`, labelled by round K − 1's students | windows labelled |
//! | `students-r<K>` | `students-r<K>/fold<N>/` (and `students-r<K>-eval` but for the last round) | mean best validation AUC |
//! | `export` | `submission/fold<N>.onnx`: the last round's students, the submission | largest ONNX − libtorch diff |
//! | `infer` | `scores/students.csv` | rows |
//! | `score` | | test macro ROC-AUC of the student ensemble |
//!
//! The `-eval` stages and `baseline` run when `[report]` asks for them; scoring needs the test
//! soundscapes and solution. `OUT/summary.csv` has one row per stage:
//! `stage,status,seconds,metric,value` (status `ran` or `up to date`; an up-to-date stage shows
//! the seconds and metric of the run that made its outputs).
//!
//! # Up to date
//!
//! Each stage has a key: a hash of its settings and of the keys of the stages it reads. A
//! finished stage writes `OUT/.stamps/<stage>.done` (key, seconds, metric); the next run skips it
//! when the key matches and its outputs are there. A stage that was interrupted is resumed
//! (training from each fold's `last/`, pseudo-labelling from its parts) when its key matches,
//! and started afresh otherwise.

use std::path::{Path, PathBuf};

use birdclef_export::export::{export_checkpoint, ExportOptions};
use birdclef_infer::postprocess::{Ensemble, Kernel};
use birdclef_infer::predict::{predict, PredictOptions};
use birdclef_infer::runner::{RunnerConfig, DEFAULT_BATCH_SIZE};
use birdclef_infer::score::score;
use birdclef_models::fsio;
use birdclef_models::metrics::DEFAULT_PADDING_FACTOR;
use birdclef_models::synth::write_competition;
use tch::Device;

use crate::config::TrainConfig;
use crate::error::TrainError;

mod config;
mod stages;
mod summary;

use crate::pseudo::{pseudo_label, PseudoLabelOptions};
use crate::training::runs::{any_fold_started, fold_dir, train_folds, RunOptions};
pub use config::{
    resolve_round, resolve_train, DataSection, InferSection, ModelSection, PipelineConfig,
    PseudoSection, ReportSection, RoundsSection, DEFAULT_CONFIG,
};
pub use stages::StageRow;
use stages::{dir_identity, hash, Runner};
pub use summary::{by_stage, comparison, format_summary, write_summary};

/// Options of [`run_pipeline`] besides the configuration.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The output directory.
    pub out: PathBuf,
    /// Directory relative paths of the configuration are resolved against.
    pub base_dir: PathBuf,
    /// Training and pseudo-labelling device.
    pub device: Device,
    /// ONNX Runtime library (export checks, inference).
    pub ort_lib: Option<PathBuf>,
}

/// Check, before any work, that every output the pipeline writes under `out` can be written:
/// `out` itself, the stages' directories (and their fold directories) and files.
fn check_outputs(
    out: &Path,
    teacher: &TrainConfig,
    student: &TrainConfig,
    rounds: usize,
) -> Result<(), TrainError> {
    let what = "the pipeline's output directory (--out)";
    let bad = |cause| TrainError::BadOutput { what, cause };
    fsio::check_output_dir(out).map_err(bad)?;
    let mut dirs: Vec<PathBuf> = [
        "data",
        "teachers",
        "teachers-onnx",
        "baseline",
        "baseline-onnx",
        "students",
        "submission",
        "scores",
        ".stamps",
        ".cache",
        "pseudo.h5.parts",
    ]
    .iter()
    .map(|d| out.join(d))
    .collect();
    let mut runs = vec![
        ("teachers".to_string(), teacher),
        ("baseline".into(), student),
    ];
    for round in 1..=rounds {
        let sfx = round_suffix(round);
        runs.push((format!("students{sfx}"), student));
        dirs.push(out.join(format!("students{sfx}-onnx")));
        dirs.push(out.join(format!("pseudo{sfx}.h5.parts")));
    }
    for (run, cfg) in &runs {
        dirs.push(out.join(run));
        dirs.extend(cfg.data.folds.iter().map(|&f| fold_dir(&out.join(run), f)));
    }
    for d in &dirs {
        fsio::check_output_dir(d).map_err(bad)?;
    }
    let mut files: Vec<String> = ["summary.csv", "scores/teachers.csv", "scores/baseline.csv"]
        .iter()
        .map(|f| f.to_string())
        .collect();
    for round in 1..=rounds {
        let sfx = round_suffix(round);
        files.push(format!("pseudo{sfx}.h5"));
        files.push(format!("scores/students{sfx}.csv"));
    }
    for f in &files {
        let path = out.join(f);
        // Files in directories the pipeline has not made yet cannot be in the way.
        if path.parent().is_some_and(Path::is_dir) {
            fsio::check_output_file(&path).map_err(bad)?;
        }
    }
    Ok(())
}

/// What round `round` (from 1) adds to its stages' and files' names: nothing for the first.
fn round_suffix(round: usize) -> String {
    if round == 1 {
        String::new()
    } else {
        format!("-r{round}")
    }
}

/// Remove a directory unless resuming into it.
fn fresh_dir(dir: &Path, resume: bool) -> Result<(), TrainError> {
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir).map_err(TrainError::io("removing", dir))?;
    }
    Ok(())
}

fn train_stage(
    data: &Path,
    out: &Path,
    cfg: &TrainConfig,
    pseudo: Option<(&Path, &Path)>,
    opts: &PipelineOptions,
    resume: bool,
) -> Result<(String, f64), TrainError> {
    fresh_dir(out, resume)?;
    // A stage stopped before any fold had started (while the cache was built) has nothing to
    // resume: it starts afresh.
    let run = RunOptions {
        resume: resume && any_fold_started(out, &cfg.data.folds),
        cache_dir: Some(opts.out.join(".cache")),
        pseudo: pseudo.map(|p| p.0.to_path_buf()),
        soundscapes: pseudo.map(|p| p.1.to_path_buf()),
        device: opts.device,
        ..RunOptions::new(data, out)
    };
    let folds = train_folds(&run, cfg)?;
    let best: Vec<f64> = folds.iter().map(|(_, s)| s.best.1).collect();
    let mean = best.iter().sum::<f64>() / best.len().max(1) as f64;
    Ok((format!("mean best {}", cfg.run.best_metric.name()), mean))
}

fn folds_ok(dir: &Path, cfg: &TrainConfig) -> bool {
    cfg.data.folds.iter().all(|f| {
        dir.join(format!("fold{f}/best"))
            .join(birdclef_models::checkpoint::WEIGHTS_FILE)
            .is_file()
    })
}

/// Export each fold's best checkpoint of `run_dir` into `onnx_dir/fold<N>.onnx` (replacing the
/// directory); returns the files and the largest scaled difference.
fn export_folds(
    run_dir: &Path,
    onnx_dir: &Path,
    cfg: &TrainConfig,
    opts: &PipelineOptions,
) -> Result<(Vec<PathBuf>, f64), TrainError> {
    fresh_dir(onnx_dir, false)?;
    std::fs::create_dir_all(onnx_dir).map_err(TrainError::io("creating", onnx_dir))?;
    let mut files = Vec::new();
    let mut worst = 0.0f64;
    for f in &cfg.data.folds {
        let out = onnx_dir.join(format!("fold{f}.onnx"));
        let e = export_checkpoint(
            &run_dir.join(format!("fold{f}/best")),
            &out,
            &ExportOptions {
                ort_lib: opts.ort_lib.clone(),
                ..ExportOptions::default()
            },
        )?;
        worst = worst.max(f64::from(e.scaled_diff));
        files.push(out);
    }
    Ok((files, worst))
}

/// Infer the test soundscapes with `models` into `csv`; returns rows written.
fn infer_test(
    models: &[PathBuf],
    soundscapes: &Path,
    csv: &Path,
    smooth: Option<&Vec<f32>>,
    opts: &PipelineOptions,
) -> Result<usize, TrainError> {
    if let Some(dir) = csv.parent() {
        std::fs::create_dir_all(dir).map_err(TrainError::io("creating", dir))?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let s = predict(&PredictOptions {
        models: models.to_vec(),
        soundscapes: vec![soundscapes.to_path_buf()],
        out: csv.to_path_buf(),
        sample_submission: None,
        taxonomy: None,
        ensemble: Ensemble::Mean,
        smooth: smooth
            .map(|k| Kernel::new(k.clone()))
            .transpose()
            .map_err(TrainError::Smooth)?,
        file_max: None,
        shard: None,
        detections: None,
        raven_dir: None,
        threshold: 0.5,
        run: RunnerConfig {
            workers: cores,
            batch_size: DEFAULT_BATCH_SIZE,
            time_limit: None,
            strict: false,
            progress: false,
            tta_shifts: Vec::new(),
        },
        engine: birdclef_infer::engine::Engine::Ort,
        model_threads: 1,
        ort_lib: opts.ort_lib.clone(),
        openvino_lib: None,
    })
    .map_err(Box::new)?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    if !s.failures.is_empty() {
        return Err(unreadable(&s.failures));
    }
    Ok(s.rows)
}

/// The error for test soundscapes that could not be read: each failure's reason as it is (it
/// names the file).
fn unreadable(failures: &[(PathBuf, birdclef_infer::runner::Failure)]) -> TrainError {
    TrainError::TestSoundscapes {
        reasons: failures.iter().map(|(_, f)| f.reason.clone()).collect(),
    }
}

fn test_auc(csv: &Path, solution: &Path) -> Result<f64, TrainError> {
    Ok(score(csv, solution, DEFAULT_PADDING_FACTOR)?.macro_roc_auc)
}

/// Run the pipeline; returns the summary rows (also written to `OUT/summary.csv`).
pub fn run_pipeline(
    cfg: &PipelineConfig,
    opts: &PipelineOptions,
) -> Result<Vec<StageRow>, TrainError> {
    let out = &opts.out;
    cfg.validate()?;
    let teacher = resolve_train(&cfg.teacher, &opts.base_dir, "teacher")?;
    let student = resolve_round(cfg, 1, &opts.base_dir)?;
    check_outputs(out, &teacher, &student, cfg.rounds.count)?;
    std::fs::create_dir_all(out).map_err(TrainError::io("creating", out))?;
    let mut r = Runner {
        out: opts.out.clone(),
        rows: Vec::new(),
    };

    let data = if cfg.data.synthetic {
        let dir = out.join("data");
        let spec = cfg.data.synth.clone().unwrap_or_default();
        let key = hash(&["data", &format!("{spec:?}")]);
        let ok = dir.join("train_metadata.csv").is_file();
        r.stage("data", &key, ok, |_| {
            fresh_dir(&dir, false)?;
            let s = write_competition(&dir, &spec)?;
            Ok(("training files".into(), s.train_files as f64))
        })?;
        dir
    } else {
        let dir = cfg.data.dir.as_ref().ok_or(TrainError::PipelineKey {
            key: "[data]",
            reason: "needs dir = \"...\" or synthetic = true",
        })?;
        let dir = opts.base_dir.join(dir);
        if !dir.join("train_metadata.csv").is_file() {
            return Err(TrainError::NotCompetition { dir });
        }
        dir
    };
    let data_key = hash(&[
        &dir_identity(&data),
        &dir_identity(&data.join("train_audio")),
    ]);
    let test_dir = data.join(&cfg.data.test_soundscapes);
    let solution = data.join(&cfg.data.test_solution);
    let can_score = test_dir.is_dir() && solution.is_file();
    if !can_score {
        eprintln!(
            "pipeline: no {} or {}: the test stages are skipped",
            test_dir.display(),
            solution.display()
        );
    }
    let unlabeled = data.join(&cfg.data.unlabeled);
    let smooth = cfg.infer.smooth.as_ref();
    let smooth_key = format!("{smooth:?}");

    // Teachers.
    let teachers_dir = out.join("teachers");
    let t_key = hash(&["teachers", &data_key, &teacher.to_toml()]);
    let ok = folds_ok(&teachers_dir, &teacher);
    r.stage("teachers", &t_key, ok, |resume| {
        train_stage(&data, &teachers_dir, &teacher, None, opts, resume)
    })?;
    if cfg.report.teachers && can_score {
        let key = hash(&["teachers-eval", &t_key, &smooth_key]);
        let csv = out.join("scores/teachers.csv");
        r.stage("teachers-eval", &key, csv.is_file(), |_| {
            let (models, _) =
                export_folds(&teachers_dir, &out.join("teachers-onnx"), &teacher, opts)?;
            infer_test(&models, &test_dir, &csv, smooth, opts)?;
            Ok(("test macro ROC-AUC".into(), test_auc(&csv, &solution)?))
        })?;
    }

    // Students without pseudo-labels, for comparison.
    if cfg.report.baseline {
        let dir = out.join("baseline");
        // Without pseudo-labels and teachers: the [distill] keys are all off.
        let mut plain = student.clone();
        plain.distill = Default::default();
        let key = hash(&["baseline", &data_key, &plain.to_toml()]);
        let ok = folds_ok(&dir, &plain);
        r.stage("baseline", &key, ok, |resume| {
            train_stage(&data, &dir, &plain, None, opts, resume)
        })?;
        if can_score {
            let key = hash(&["baseline-eval", &key, &smooth_key]);
            let csv = out.join("scores/baseline.csv");
            r.stage("baseline-eval", &key, csv.is_file(), |_| {
                let (models, _) = export_folds(&dir, &out.join("baseline-onnx"), &plain, opts)?;
                infer_test(&models, &test_dir, &csv, smooth, opts)?;
                Ok(("test macro ROC-AUC".into(), test_auc(&csv, &solution)?))
            })?;
        }
    }

    // Students, round by round: round 1 learns from the teachers' pseudo-labels, round k + 1
    // from those of round k's students (noisy student); with distill.kd_weight above 0 they
    // also learn live from the models that labelled their round.
    let mut labeller = teachers_dir.clone();
    let mut labeller_key = t_key.clone();
    let mut student = student;
    let mut students_dir = out.join("students");
    let mut s_key = String::new();
    for round in 1..=cfg.rounds.count {
        let sfx = round_suffix(round);
        student = resolve_round(cfg, round, &opts.base_dir)?;
        if student.distill.kd_weight > 0.0 && student.distill.kd_teachers.is_empty() {
            student.distill.kd_teachers = vec![labeller.clone()];
        }
        let pseudo = out.join(format!("pseudo{sfx}.h5"));
        let p_key = hash(&[
            "pseudo",
            &labeller_key,
            &dir_identity(&unlabeled),
            &cfg.pseudo.batch_size.to_string(),
        ]);
        r.stage(
            &format!("pseudo-label{sfx}"),
            &p_key,
            pseudo.is_file(),
            |_| {
                let s = pseudo_label(&PseudoLabelOptions {
                    teachers: vec![labeller.clone()],
                    soundscapes: vec![unlabeled.clone()],
                    out: pseudo.clone(),
                    shard: None,
                    batch_size: cfg.pseudo.batch_size,
                    device: opts.device,
                    threads: 0,
                    ort_lib: opts.ort_lib.clone(),
                })?;
                // Each reason names its file.
                for (_, why) in &s.failed {
                    eprintln!("warning: {why} (no pseudo-labels)");
                }
                Ok(("windows".into(), s.windows as f64))
            },
        )?;
        students_dir = out.join(format!("students{sfx}"));
        s_key = hash(&["students", &data_key, &p_key, &student.to_toml()]);
        let ok = folds_ok(&students_dir, &student);
        r.stage(&format!("students{sfx}"), &s_key, ok, |resume| {
            train_stage(
                &data,
                &students_dir,
                &student,
                Some((&pseudo, &unlabeled)),
                opts,
                resume,
            )
        })?;
        // Every round but the last is scored on its own (the last one is the submission).
        if round < cfg.rounds.count && can_score {
            let key = hash(&["students-eval", &s_key, &smooth_key]);
            let csv = out.join(format!("scores/students{sfx}.csv"));
            r.stage(&format!("students{sfx}-eval"), &key, csv.is_file(), |_| {
                let onnx = out.join(format!("students{sfx}-onnx"));
                let (models, _) = export_folds(&students_dir, &onnx, &student, opts)?;
                infer_test(&models, &test_dir, &csv, smooth, opts)?;
                Ok(("test macro ROC-AUC".into(), test_auc(&csv, &solution)?))
            })?;
        }
        labeller = students_dir.clone();
        labeller_key = s_key.clone();
    }

    let submission = out.join("submission");
    let e_key = hash(&["export", &s_key]);
    let exported: Vec<PathBuf> = student
        .data
        .folds
        .iter()
        .map(|f| submission.join(format!("fold{f}.onnx")))
        .collect();
    let ok = exported.iter().all(|p| p.is_file());
    r.stage("export", &e_key, ok, |_| {
        let (_, worst) = export_folds(&students_dir, &submission, &student, opts)?;
        Ok(("max scaled |ONNX - libtorch|".into(), worst))
    })?;
    if can_score {
        let csv = out.join("scores/students.csv");
        let i_key = hash(&["infer", &e_key, &smooth_key, &dir_identity(&test_dir)]);
        r.stage("infer", &i_key, csv.is_file(), |_| {
            let rows = infer_test(&exported, &test_dir, &csv, smooth, opts)?;
            Ok(("rows".into(), rows as f64))
        })?;
        let key = hash(&["score", &i_key, &dir_identity(&data)]);
        r.stage("score", &key, true, |_| {
            Ok(("test macro ROC-AUC".into(), test_auc(&csv, &solution)?))
        })?;
    }
    write_summary(&out.join("summary.csv"), &r.rows)?;
    Ok(r.rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_merge_over_the_base_config() {
        let dir = std::env::temp_dir().join(format!("birdclef-pipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("base.toml"),
            "[optim]\nepochs = 7\nlr = 1e-3\n[data]\nfolds = [0]\n",
        )
        .expect("write");
        let cfg = PipelineConfig::from_toml(
            "[teacher]\nconfig = \"base.toml\"\nset = [\"optim.lr=5e-4\"]\n\
             [teacher.train.data]\nfolds = [0, 1]\n",
            "test",
        )
        .expect("parse");
        let t = resolve_train(&cfg.teacher, &dir, "teacher").expect("resolve");
        assert_eq!(t.optim.epochs, 7);
        assert_eq!(t.optim.lr, 5e-4);
        assert_eq!(t.data.folds, vec![0, 1]);
        // Unknown keys are refused, in the pipeline file and in the training sections.
        assert!(PipelineConfig::from_toml("[teacher]\nepochs = 3\n", "test").is_err());
        let bad =
            PipelineConfig::from_toml("[student.train.optim]\nepoks = 3\n", "test").expect("parse");
        assert!(resolve_train(&bad.student, &dir, "student").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unreadable_test_soundscapes_are_each_named_once() {
        use birdclef_infer::runner::Failure;
        let failures = vec![
            (
                PathBuf::from("test/a.ogg"),
                Failure {
                    reason: "test/a.ogg: file is empty (0 bytes)".into(),
                    decoded_windows: 0,
                },
            ),
            (
                PathBuf::from("test/b.ogg"),
                Failure {
                    reason: "test/b.ogg: corrupt audio data after 5.00 s: bad packet".into(),
                    decoded_windows: 1,
                },
            ),
        ];
        let msg = unreadable(&failures).to_string();
        assert_eq!(
            msg,
            "2 test soundscape(s) could not be read: test/a.ogg: file is empty (0 bytes); \
             test/b.ogg: corrupt audio data after 5.00 s: bad packet"
        );
    }

    #[test]
    fn a_zero_pseudo_batch_size_is_refused_when_the_file_is_read() {
        let err = PipelineConfig::from_toml("[pseudo]\nbatch_size = 0\n", "p.toml")
            .expect_err("batch_size 0");
        assert!(
            matches!(
                &err,
                TrainError::PipelineFile { origin, cause }
                    if origin == "p.toml"
                        && matches!(**cause, TrainError::PipelineKey { key: "[pseudo] batch_size", .. })
            ),
            "{err:?}"
        );
        assert_eq!(
            crate::error::report(&err),
            "p.toml: [pseudo] batch_size must be at least 1"
        );
        PipelineConfig::from_toml("[pseudo]\nbatch_size = 1\n", "p.toml").expect("1 is fine");
    }

    #[test]
    fn outputs_in_the_way_are_refused_before_any_stage_runs() {
        let dir = std::env::temp_dir().join(format!("birdclef-pipe-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("pseudo.h5")).expect("dir");
        let cfg = PipelineConfig::from_toml(DEFAULT_CONFIG, "default").expect("parse");
        let mut opts = PipelineOptions {
            out: out.clone(),
            base_dir: PathBuf::from("."),
            device: Device::Cpu,
            ort_lib: None,
        };
        // pseudo.h5 is written after the teachers are trained: refused before them.
        let msg = crate::error::report(&run_pipeline(&cfg, &opts).expect_err("a directory"));
        assert!(
            msg.contains("pseudo.h5") && msg.contains("is a directory"),
            "{msg}"
        );
        assert!(!out.join("data").exists(), "no stage ran");
        // A fold directory that is a file.
        std::fs::remove_dir(out.join("pseudo.h5")).expect("rmdir");
        std::fs::create_dir_all(out.join("students")).expect("dir");
        std::fs::write(out.join("students/fold0"), "x").expect("file");
        let msg = crate::error::report(&run_pipeline(&cfg, &opts).expect_err("a file"));
        assert!(
            msg.contains("students/fold0") && msg.contains("not a directory"),
            "{msg}"
        );
        assert!(!out.join("data").exists(), "no stage ran");
        // --out itself a regular file.
        std::fs::write(dir.join("plain"), "x").expect("file");
        opts.out = dir.join("plain");
        let msg = crate::error::report(&run_pipeline(&cfg, &opts).expect_err("a file"));
        assert!(
            msg.contains("plain") && msg.contains("not a directory"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_embedded_default_parses() {
        let cfg = PipelineConfig::from_toml(DEFAULT_CONFIG, "default").expect("parse");
        assert!(cfg.data.synthetic);
        resolve_train(&cfg.teacher, Path::new("."), "teacher").expect("teacher");
        resolve_train(&cfg.student, Path::new("."), "student").expect("student");
    }
}
