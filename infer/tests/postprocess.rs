//! Submission columns and writing, shard merging, scoring and detections, on small inputs built
//! here; the scoring checks on ../shared/data/birdclef-mini skip (saying so) where it is absent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use birdclef_infer::detections::{self, Detection, RAVEN_HEADER};
use birdclef_infer::error_chain::error_chain;
use birdclef_infer::postprocess::{self, Ensemble};
use birdclef_infer::score::{self, ScoreError};
use birdclef_infer::shard::{self, Shard, ShardError};
use birdclef_infer::submission::{
    self, column_order, write_submission, ColumnSource, FileRows, SubmissionError, SubmissionWriter,
};
use ndarray::{array, Array2};

/// A fresh, empty directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "birdclef-infer-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read temp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mini() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/birdclef-mini");
    if dir.join("test_solution.csv").is_file() {
        Some(dir)
    } else {
        println!(
            "skipping: {} is absent (the birdclef-mini data set)",
            dir.display()
        );
        None
    }
}

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Deterministic pseudo-random numbers in [0, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `files` files of `windows` 5-s windows each, `species` columns, random probabilities.
fn synthetic_files(files: usize, windows: usize, species: usize, seed: u64) -> Vec<FileRows> {
    let mut rng = Rng(seed | 1);
    (0..files)
        .map(|f| FileRows {
            // Scrambled order and stems that share prefixes and hold underscores.
            stem: format!("soundscape_{}", (f * 7919) % (files * 10) + 1),
            end_seconds: (1..=windows as u64).rev().map(|w| w * 5).collect(),
            probs: Array2::from_shape_fn((windows, species), |_| rng.next()),
        })
        .collect()
}

// ---------------------------------------------------------------- columns

#[test]
fn columns_default_to_the_model_labels() {
    let model = labels(&["b", "a", "c"]);
    let c = column_order(&model, None, None).unwrap();
    assert_eq!(c.names, model);
    assert_eq!(c.model_index, vec![Some(0), Some(1), Some(2)]);
    assert!(c.unknown.is_empty() && c.unused_labels.is_empty());
    assert_eq!(c.source, ColumnSource::ModelLabels);
}

#[test]
fn columns_from_sample_submission_and_taxonomy() {
    let dir = TempDir::new("columns");
    let sample = dir.path("sample_submission.csv");
    std::fs::write(&sample, "row_id,c,a,x\ns_5,0,0,0\n").unwrap();
    let model = labels(&["a", "b", "c"]);
    let c = column_order(&model, Some(&sample), None).unwrap();
    assert_eq!(c.names, labels(&["c", "a", "x"]));
    assert_eq!(c.model_index, vec![Some(2), Some(0), None]);
    assert_eq!(c.unknown, labels(&["x"]));
    assert_eq!(c.unused_labels, labels(&["b"]));
    // [rows × model labels] → [rows × columns], 0 for the unknown species.
    let probs = array![[0.1f32, 0.2, 0.3], [0.4, 0.5, 0.6]];
    let sel = c.select(probs.view()).unwrap();
    assert_eq!(sel, array![[0.3f32, 0.1, 0.0], [0.6, 0.4, 0.0]]);
    assert!(c.select(probs.slice(ndarray::s![.., ..2])).is_err());

    // Taxonomy with quoted commas in other columns.
    let tax = dir.path("taxonomy.csv");
    std::fs::write(
        &tax,
        "species_code,primary_label,common_name\n1,c,\"Bird, Common\"\n2,b,x\n",
    )
    .unwrap();
    let c = column_order(&model, None, Some(&tax)).unwrap();
    assert_eq!(c.names, labels(&["c", "b"]));
    assert_eq!(c.unused_labels, labels(&["a"]));
    assert!(matches!(c.source, ColumnSource::Taxonomy(_)));

    // Errors name the file.
    let e = column_order(&model, Some(&sample), Some(&tax)).unwrap_err();
    assert!(matches!(
        e,
        SubmissionError::ConflictingColumnSources { .. }
    ));
    let bad = dir.path("bad.csv");
    std::fs::write(&bad, "id,a,b\n").unwrap();
    let e = column_order(&model, Some(&bad), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.csv") && e.contains("row_id"), "{e}");
    let e = column_order(&model, None, Some(&bad))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.csv") && e.contains("primary_label"), "{e}");
    let dup = dir.path("dup.csv");
    std::fs::write(&dup, "row_id,a,b,a\n").unwrap();
    let e = column_order(&model, Some(&dup), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dup.csv") && e.contains("twice"), "{e}");
    let missing = dir.path("missing.csv");
    let e = column_order(&model, Some(&missing), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.csv"), "{e}");
    assert!(column_order(&labels(&["a", "a"]), None, None).is_err());
}

#[test]
fn a_column_source_sharing_no_species_with_the_models_is_refused() {
    let dir = TempDir::new("columns-disjoint");
    let model = labels(&["amerob", "barswa", "comcuc"]);
    let sample = dir.path("sample_submission.csv");
    std::fs::write(&sample, "row_id,x1,x2,x3,x4,x5,x6\ns_5,0,0,0,0,0,0\n").unwrap();
    let e = column_order(&model, Some(&sample), None).unwrap_err();
    assert!(matches!(e, SubmissionError::NoCommonSpecies { .. }), "{e}");
    let msg = e.to_string();
    for needle in ["sample_submission.csv", "x1", "x5", "amerob", "comcuc"] {
        assert!(msg.contains(needle), "{needle:?} in {msg}");
    }
    let tax = dir.path("taxonomy.csv");
    std::fs::write(&tax, "primary_label,common_name\nzz,Z bird\n").unwrap();
    let msg = column_order(&model, None, Some(&tax))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("taxonomy.csv") && msg.contains("zz") && msg.contains("barswa"),
        "{msg}"
    );
    // One shared species is enough (the rest get 0, with a warning).
    std::fs::write(&sample, "row_id,x1,barswa\n").unwrap();
    let c = column_order(&model, Some(&sample), None).unwrap();
    assert_eq!(c.unknown, labels(&["x1"]));
}

#[test]
fn columns_of_birdclef_mini() {
    let Some(dir) = mini() else { return };
    let sample = dir.join("sample_submission.csv");
    let tax = dir.join("taxonomy.csv");
    let from_sample = submission::sample_submission_columns(&sample).unwrap();
    let from_tax = submission::taxonomy_labels(&tax).unwrap();
    assert_eq!(from_sample.len(), 63);
    assert_eq!(from_sample, from_tax);
    // A model that knows four of them, plus one the submission lacks.
    let model = labels(&["lipvoc", "crysou", "amafar", "aracaj", "notabird"]);
    let c = column_order(&model, Some(&sample), None).unwrap();
    assert_eq!(c.names, from_sample);
    assert_eq!(c.unknown.len(), 59);
    assert_eq!(c.unused_labels, labels(&["notabird"]));
}

// ---------------------------------------------------------------- writing

#[test]
fn writer_sorts_formats_and_counts_non_finite() {
    let dir = TempDir::new("writer");
    let out = dir.path("submission.csv");
    let cols = labels(&["a", "b"]);
    let files = vec![
        FileRows {
            stem: "s_2".into(),
            end_seconds: vec![10, 5],
            probs: array![[0.25f32, f32::NAN], [1.0, 0.0]],
        },
        FileRows {
            stem: "s_10".into(),
            end_seconds: vec![5],
            probs: array![[0.123_456_79f32, f32::INFINITY]],
        },
    ];
    let report = write_submission(&out, &cols, &files, 3).unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(report.files, 2);
    assert_eq!(report.non_finite, 2);
    let text = std::fs::read_to_string(&out).unwrap();
    // Stems in byte order ("s_10" < "s_2"), windows by end second.
    assert_eq!(
        text,
        "row_id,a,b\ns_10_5,0.123457,0\ns_2_5,1,0\ns_2_10,0.25,0\n"
    );
    assert_eq!(report.bytes, text.len());
    assert_eq!(dir.entries(), vec!["submission.csv"]);
}

#[test]
fn writer_refuses_a_wrong_row_count_before_renaming() {
    let dir = TempDir::new("rowcount");
    let out = dir.path("submission.csv");
    let cols = labels(&["a"]);
    let files = vec![FileRows {
        stem: "x".into(),
        end_seconds: vec![5, 10],
        probs: array![[0.5f32], [0.5]],
    }];
    // Nothing there yet: nothing appears.
    let e = write_submission(&out, &cols, &files, 3).unwrap_err();
    match &e {
        SubmissionError::RowCount { expected, got, .. } => assert_eq!((*expected, *got), (3, 2)),
        other => panic!("unexpected error {other}"),
    }
    assert!(e.to_string().contains("submission.csv"), "{e}");
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
    // An older submission is left as it was.
    std::fs::write(&out, "old").unwrap();
    assert!(write_submission(&out, &cols, &files, 1).is_err());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old");
    assert_eq!(dir.entries(), vec!["submission.csv"]);
    // The right count replaces it.
    write_submission(&out, &cols, &files, 2).unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "row_id,a\nx_5,0.5\nx_10,0.5\n"
    );
}

#[test]
fn writer_rejects_bad_input() {
    let cols = labels(&["a", "b"]);
    let mut w = SubmissionWriter::new(cols.clone()).unwrap();
    let p = array![[0.1f32, 0.2]];
    w.add("f", &[5], p.view()).unwrap();
    assert!(matches!(
        w.add("f", &[5], p.view()),
        Err(SubmissionError::DuplicateStem(_))
    ));
    assert!(w.add("g", &[5, 10], p.view()).is_err()); // rows vs windows
    assert!(w.add("g", &[5], array![[0.1f32]].view()).is_err()); // columns
    assert!(w.add("g,h", &[5], p.view()).is_err());
    assert!(w.add("", &[5], p.view()).is_err());
    let two = array![[0.1f32, 0.2], [0.3, 0.4]];
    assert!(w.add("g", &[5, 5], two.view()).is_err()); // repeated end second
    assert_eq!(w.rows(), 1);
    assert!(SubmissionWriter::new(vec![]).is_err());
    assert!(SubmissionWriter::new(labels(&["a", "a"])).is_err());
    assert!(SubmissionWriter::new(labels(&["row_id"])).is_err());
    assert!(SubmissionWriter::new(labels(&["a,b"])).is_err());
}

#[test]
fn writing_a_full_size_submission_is_fast() {
    // BirdCLEF 2024: ~1,100 soundscapes × 48 windows × 182 species ≈ 52,800 rows.
    let (files, windows, species) = (1100, 48, 182);
    let data = synthetic_files(files, windows, species, 42);
    let cols: Vec<String> = (0..species).map(|i| format!("sp{i:03}")).collect();
    let dir = TempDir::new("speed");
    let out = dir.path("submission.csv");
    let t = Instant::now();
    let report = write_submission(&out, &cols, &data, files * windows).unwrap();
    let parallel = t.elapsed();
    // The same through one thread, file by file.
    let t = Instant::now();
    let mut w = SubmissionWriter::new(cols.clone()).unwrap();
    for f in &data {
        w.add(&f.stem, &f.end_seconds, f.probs.view()).unwrap();
    }
    let serial_out = dir.path("serial.csv");
    w.finish(&serial_out, files * windows).unwrap();
    let serial = t.elapsed();
    println!(
        "submission of {} rows × {species} columns ({:.1} MB): {:.0} ms with rayon, {:.0} ms on one thread",
        report.rows,
        report.bytes as f64 / 1e6,
        parallel.as_secs_f64() * 1e3,
        serial.as_secs_f64() * 1e3
    );
    assert_eq!(report.rows, 52_800);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&serial_out).unwrap()
    );
    // Every value parses back within 6 significant digits.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap().split(',').count(), species + 1);
    let first = lines.next().unwrap();
    let stem = &data.iter().map(|f| f.stem.clone()).min().unwrap();
    assert!(first.starts_with(&format!("{stem}_5,")), "{first}");
    let f = data.iter().find(|f| &f.stem == stem).unwrap();
    for (j, v) in first.split(',').skip(1).enumerate() {
        let want = f.probs[[windows - 1, j]]; // end_seconds are reversed: 5 s is the last row
        let got: f32 = v.parse().unwrap();
        assert!(
            (got - want).abs() <= want.abs() * 5e-6 + 1e-12,
            "{got} vs {want}"
        );
    }
}

// ---------------------------------------------------------------- shards

#[test]
fn merged_shards_equal_the_unsharded_submission() {
    let dir = TempDir::new("merge");
    let cols: Vec<String> = (0..5).map(|i| format!("sp{i}")).collect();
    let data = synthetic_files(13, 4, cols.len(), 7);
    let whole = dir.path("whole.csv");
    write_submission(&whole, &cols, &data, 13 * 4).unwrap();
    let whole_bytes = std::fs::read(&whole).unwrap();

    let paths: Vec<PathBuf> = data
        .iter()
        .map(|f| PathBuf::from(format!("audio/{}.ogg", f.stem)))
        .collect();
    for n in 1..=5 {
        let mut shard_files = Vec::new();
        for k in 0..n {
            let sel = shard::select(&paths, Shard::new(k, n).unwrap());
            let rows: Vec<FileRows> = data
                .iter()
                .zip(&paths)
                .filter(|(_, p)| sel.contains(p))
                .map(|(f, _)| f.clone())
                .collect();
            let count = rows.len() * 4;
            let p = dir.path(&format!("shard{k}of{n}.csv"));
            write_submission(&p, &cols, &rows, count).unwrap();
            shard_files.push(p);
        }
        // Input order must not matter.
        shard_files.reverse();
        let merged = dir.path(&format!("merged{n}.csv"));
        let report = shard::merge(&shard_files, &merged).unwrap();
        assert_eq!(report.rows, 13 * 4);
        assert_eq!(report.inputs, n);
        assert_eq!(
            std::fs::read(&merged).unwrap(),
            whole_bytes,
            "{n} shards merged"
        );
    }
}

#[test]
fn merge_errors_name_the_files() {
    let dir = TempDir::new("merge-errors");
    let a = dir.path("a.csv");
    let b = dir.path("b.csv");
    let c = dir.path("c.csv");
    let d = dir.path("d.csv");
    std::fs::write(&a, "row_id,x,y\nf_5,0.1,0.2\nf_10,0.3,0.4\n").unwrap();
    std::fs::write(&b, "row_id,x,z\ng_5,0.1,0.2\n").unwrap();
    std::fs::write(&c, "row_id,x,y\r\ng_5,0.1,0.2\r\nf_10,0.3,0.4\r\n").unwrap();
    std::fs::write(&d, "row_id,x,y\ng_5,0.1\n").unwrap();
    let out = dir.path("out.csv");

    let e = shard::merge(&[a.clone(), b.clone()], &out).unwrap_err();
    assert!(matches!(e, ShardError::HeaderMismatch { column: 3, .. }));
    let msg = e.to_string();
    assert!(msg.contains("b.csv") && msg.contains("\"z\""), "{msg}");

    let e = shard::merge(&[a.clone(), c.clone()], &out).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("f_10") && msg.contains("a.csv") && msg.contains("c.csv"),
        "{msg}"
    );
    let e = shard::merge(&[a.clone(), d], &out).unwrap_err().to_string();
    assert!(e.contains("d.csv") && e.contains("fields"), "{e}");
    assert!(matches!(shard::merge(&[], &out), Err(ShardError::NoInputs)));
    assert!(!out.exists());

    // CRLF input, numeric end-second order (5 before 10), stems in byte order.
    let e2 = dir.path("e.csv");
    std::fs::write(&e2, "row_id,x,y\r\nf_5,0.1,0.2\r\n").unwrap();
    let f2 = dir.path("f.csv");
    std::fs::write(&f2, "row_id,x,y\nf_10,0.3,0.4\ng_5,1,0\n").unwrap();
    shard::merge(&[f2, e2], &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "row_id,x,y\nf_5,0.1,0.2\nf_10,0.3,0.4\ng_5,1,0\n"
    );
}

#[test]
fn merge_checks_its_output_before_reading_and_never_overwrites_an_input() {
    let dir = TempDir::new("merge-output");
    let a = dir.path("a.csv");
    let b = dir.path("b.csv");
    let a_text = "row_id,x\nf_5,0.1\n";
    std::fs::write(&a, a_text).unwrap();
    std::fs::write(&b, "row_id,x\ng_5,0.2\n").unwrap();
    // -o naming an input (directly or through a link): refused, naming both; the input is kept.
    std::os::unix::fs::symlink("a.csv", dir.path("alias.csv")).unwrap();
    for out in [a.clone(), dir.path("alias.csv")] {
        let e = shard::merge(&[a.clone(), b.clone()], &out).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("a.csv") && msg.contains("refusing"), "{msg}");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), a_text);
    }
    // A missing directory or a directory: refused before the inputs are read (a missing input
    // would otherwise be the error).
    let missing_input = dir.path("missing.csv");
    let e = shard::merge(
        std::slice::from_ref(&missing_input),
        &dir.path("no/out.csv"),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("does not exist") && e.to_string().contains("no"),
        "{e}"
    );
    let e = shard::merge(&[missing_input], &dir.0).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
    assert_eq!(dir.entries(), ["a.csv", "alias.csv", "b.csv"]);
}

#[test]
fn a_directory_given_as_an_input_csv_is_named_as_such() {
    let dir = TempDir::new("dir-inputs");
    let sub = dir.path("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let csv = dir.path("a.csv");
    std::fs::write(&csv, "row_id,x\nf_5,1\nf_10,0\n").unwrap();
    let is_dir = |msg: String| {
        assert!(
            msg.contains("sub") && msg.contains("is a directory, not a CSV file"),
            "{msg}"
        )
    };
    is_dir(score::score(&sub, &csv, 5).unwrap_err().to_string());
    is_dir(score::score(&csv, &sub, 5).unwrap_err().to_string());
    is_dir(
        shard::merge(&[csv.clone(), sub.clone()], &dir.path("out.csv"))
            .unwrap_err()
            .to_string(),
    );
    is_dir(
        column_order(&labels(&["x"]), Some(&sub), None)
            .unwrap_err()
            .to_string(),
    );
    is_dir(
        column_order(&labels(&["x"]), None, Some(&sub))
            .unwrap_err()
            .to_string(),
    );
}

// ---------------------------------------------------------------- scoring

#[test]
fn an_undefined_metric_names_the_solution_and_says_why_once() {
    let dir = TempDir::new("score-empty");
    let sol = dir.path("solution.csv");
    // No species has a positive row: macro ROC-AUC is undefined.
    std::fs::write(&sol, "row_id,a\nr_5,0\nr_10,0\n").unwrap();
    let e = score::score(&sol, &sol, 5).unwrap_err();
    assert!(matches!(e, ScoreError::Metric { .. }), "{e:?}");
    // As a binary's `{:#}` prints it: the solution, then the metric's reason, once.
    let text = error_chain(&e);
    assert!(text.starts_with(&format!("{}: ", sol.display())), "{text}");
    assert_eq!(
        text.matches("no class has a positive row").count(),
        1,
        "{text}"
    );
}

#[test]
fn scoring_small_cases() {
    let dir = TempDir::new("score");
    let sol = dir.path("solution.csv");
    std::fs::write(
        &sol,
        "row_id,a,b,c\nr_5,1,0,0\nr_10,0,1,0\nr_15,0,0,0\nr_20,1,0,0\n",
    )
    .unwrap();
    // a: positives 0.9 and 0.2 against negatives 0.5, 0.1 → pairs (0.9>0.5, 0.9>0.1, 0.2<0.5,
    // 0.2>0.1) → 3/4. b: 0.7 above all three → 1. c has no positive: not scored.
    let sub = dir.path("submission.csv");
    std::fs::write(
        &sub,
        "row_id,c,b,a,extra\nr_20,0,0,0.2,0\nr_15,0,0.1,0.1,0\nr_10,0,0.7,0.5,0\nr_5,0,0,0.9,0\nr_25,0,0,0,0\n",
    )
    .unwrap();
    let r = score::score(&sub, &sol, 5).unwrap();
    assert_eq!(r.rows, 4);
    assert_eq!(r.extra_submission_rows, 1);
    assert_eq!(r.extra_submission_columns, 1);
    assert_eq!(r.scored_species, 2);
    assert_eq!(r.per_species_auc, vec![Some(0.75), Some(1.0), None]);
    assert!((r.macro_roc_auc - 0.875).abs() < 1e-12);
    assert_eq!(r.positives, vec![2, 1, 0]);
    let text = r.to_string();
    assert!(text.ends_with("\nmacro_roc_auc=0.875000"), "{text}");
    let long = format!("{r:#}");
    assert!(long.contains("positives") && long.ends_with("macro_roc_auc=0.875000"));
    println!("{long}");
    // F1 at 0.5: a predicted at r_5 and r_10, hit once of its 2 → 2·1/(2+2) = 0.5; b → 1; c
    // unscored. By argmax (ties to the first column, a): a at r_5, r_15, r_20 → 2·2/(3+2) = 0.8.
    use birdclef_models::metrics::Decision;
    for (d, macro_f1, weighted) in [
        (Decision::Threshold(0.5), 0.75, 2.0 / 3.0),
        (Decision::Argmax, 0.9, 2.6 / 3.0),
    ] {
        let r = score::score_with(&sub, &sol, 5, Some(d)).unwrap();
        let (_, f1) = r.f1.as_ref().expect("f1");
        assert!((f1.macro_f1 - macro_f1).abs() < 1e-12, "{d:?}: {f1:?}");
        assert!((f1.weighted_f1 - weighted).abs() < 1e-12, "{d:?}: {f1:?}");
        let text = format!("{r:#}");
        assert!(
            text.contains("F1 ") && text.ends_with("macro_roc_auc=0.875000"),
            "{text}"
        );
    }
    // Confusion: the rows with a positive (r_5, r_10, r_20) land on the diagonal.
    assert_eq!(
        r.confusion.iter().copied().collect::<Vec<_>>(),
        vec![2, 0, 0, 0, 1, 0, 0, 0, 0]
    );
    let out = dir.path("confusion.csv");
    score::write_confusion(&r, &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "true\\predicted,a,b,c\na,2,0,0\nb,0,1,0\nc,0,0,0\n"
    );

    // Missing rows: count and examples.
    let short = dir.path("short.csv");
    std::fs::write(&short, "row_id,a,b,c\nr_5,0,0,0\n").unwrap();
    let e = score::score(&short, &sol, 5).unwrap_err();
    match &e {
        ScoreError::MissingRows {
            count, examples, ..
        } => {
            assert_eq!(*count, 3);
            assert_eq!(examples, &labels(&["r_10", "r_15", "r_20"]));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(e.to_string().contains("short.csv"));
    // Missing columns.
    let narrow = dir.path("narrow.csv");
    std::fs::write(&narrow, "row_id,a\nr_5,0\nr_10,0\nr_15,0\nr_20,0\n").unwrap();
    let e = score::score(&narrow, &sol, 5).unwrap_err();
    assert!(
        matches!(&e, ScoreError::MissingColumns { missing, .. } if missing == &labels(&["b", "c"]))
    );
    // A value that is not a number names the file, row and column.
    let nan = dir.path("nan.csv");
    std::fs::write(&nan, "row_id,a,b,c\nr_5,x,0,0\n").unwrap();
    let e = score::score(&nan, &sol, 5).unwrap_err().to_string();
    assert!(
        e.contains("nan.csv") && e.contains("r_5") && e.contains("\"a\""),
        "{e}"
    );
    // Duplicated row.
    let dup = dir.path("dup.csv");
    std::fs::write(&dup, "row_id,a,b,c\nr_5,0,0,0\nr_5,0,0,0\n").unwrap();
    assert!(score::score(&dup, &sol, 5)
        .unwrap_err()
        .to_string()
        .contains("twice"));
}

#[test]
fn scoring_birdclef_mini() {
    let Some(dir) = mini() else { return };
    let sol = dir.join("test_solution.csv");
    let perfect = score::score(&sol, &sol, score::DEFAULT_PADDING_FACTOR).unwrap();
    println!("{perfect}");
    assert_eq!(perfect.macro_roc_auc, 1.0);
    assert!((perfect.cmap - 1.0).abs() < 1e-12);
    assert!(perfect.to_string().ends_with("macro_roc_auc=1.000000"));

    // sample_submission.csv is all zeros: a constant submission.
    let constant = score::score(&dir.join("sample_submission.csv"), &sol, 5).unwrap();
    println!("{constant}");
    assert_eq!(constant.macro_roc_auc, 0.5);

    // A random submission through the writer.
    let text = std::fs::read_to_string(&sol).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let cols = header[1..].to_vec();
    let mut rng = Rng(12345);
    let mut w = SubmissionWriter::new(cols.clone()).unwrap();
    let mut by_stem: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for line in lines {
        let id = line.split(',').next().unwrap();
        let (stem, end) = shard::split_row_id(id).unwrap();
        by_stem.entry(stem.to_string()).or_default().push(end);
    }
    let mut rows = 0;
    for (stem, ends) in &by_stem {
        let p = Array2::from_shape_fn((ends.len(), cols.len()), |_| rng.next());
        w.add(stem, ends, p.view()).unwrap();
        rows += ends.len();
    }
    let tmp = TempDir::new("mini-random");
    let random = tmp.path("random.csv");
    w.finish(&random, rows).unwrap();
    let r = score::score(&random, &sol, 5).unwrap();
    println!("{r:#}");
    assert!(
        (0.25..0.75).contains(&r.macro_roc_auc),
        "random submission scored {}",
        r.macro_roc_auc
    );
}

// ---------------------------------------------------------------- detections

#[test]
fn detections_and_raven_tables() {
    let cols = labels(&["a", "b"]);
    let files = vec![
        FileRows {
            stem: "z".into(),
            end_seconds: vec![10, 5],
            probs: array![[0.9f32, 0.1], [0.5, f32::NAN]],
        },
        FileRows {
            stem: "y".into(),
            end_seconds: vec![5],
            probs: array![[0.2f32, 0.3]],
        },
    ];
    let d = detections::detections(&files, &cols, 5.0, 0.5).unwrap();
    let summary: Vec<(String, f64, f64, String, f32)> = d
        .iter()
        .map(|d| {
            (
                d.file.clone(),
                d.start,
                d.end,
                d.species.clone(),
                d.probability,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("z".into(), 0.0, 5.0, "a".into(), 0.5),
            ("z".into(), 5.0, 10.0, "a".into(), 0.9),
        ]
    );
    assert!(detections::detections(&files, &cols[..1], 5.0, 0.5).is_err());
    assert!(detections::detections(&files, &cols, 0.0, 0.5).is_err());
    assert!(detections::detections(&files, &cols, 5.0, f32::NAN).is_err());

    let dir = TempDir::new("detections");
    let csv = dir.path("detections.csv");
    let mut with_comma = d.clone();
    with_comma.push(Detection {
        file: "w".into(),
        start: 0.0,
        end: 5.0,
        species: "odd,name".into(),
        probability: 0.75,
    });
    detections::write_csv(&csv, &with_comma).unwrap();
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        "file,start,end,species,probability\n\
         z,0.000,5.000,a,0.5\n\
         z,5.000,10.000,a,0.9\n\
         w,0.000,5.000,\"odd,name\",0.75\n"
    );

    let raven = dir.path("raven");
    let stems = labels(&["y", "z"]);
    let written = detections::write_raven_tables(&raven, &stems, &d, 90.0, 14000.0).unwrap();
    assert_eq!(
        written,
        vec![
            raven.join("y.selections.txt"),
            raven.join("z.selections.txt")
        ]
    );
    assert_eq!(
        RAVEN_HEADER,
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\tProbability"
    );
    assert_eq!(
        std::fs::read_to_string(&written[0]).unwrap(),
        format!("{RAVEN_HEADER}\n")
    );
    assert_eq!(
        std::fs::read_to_string(&written[1]).unwrap(),
        format!(
            "{RAVEN_HEADER}\n\
             1\tSpectrogram 1\t1\t0.000\t5.000\t90.0\t14000.0\ta\t0.5\n\
             2\tSpectrogram 1\t1\t5.000\t10.000\t90.0\t14000.0\ta\t0.9\n"
        )
    );
    let mut names = std::fs::read_dir(&raven)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    names.sort();
    assert_eq!(names, vec!["y.selections.txt", "z.selections.txt"]);
    assert!(detections::write_raven_tables(&raven, &labels(&["../x"]), &[], 0.0, 1.0).is_err());
    assert!(detections::write_raven_tables(&raven, &stems, &d, 100.0, 50.0).is_err());
}

// ---------------------------------------------------------------- post-processing, end to end

#[test]
fn logits_to_submission() {
    // Two models' logits for one file of 3 windows × 2 species, mean-ensembled, smoothed.
    let mut m1 = array![[0.0f32, 2.0], [0.0, -2.0], [0.0, 0.0]];
    let mut m2 = array![[0.0f32, -2.0], [0.0, 2.0], [0.0, 0.0]];
    postprocess::sigmoid_in_place(&mut m1);
    postprocess::sigmoid_in_place(&mut m2);
    let mut p = postprocess::ensemble(&[m1, m2], Ensemble::Mean).unwrap();
    assert!(p.iter().all(|&v| (v - 0.5).abs() < 1e-6));
    let kernel: postprocess::Kernel = "1,2,1".parse().unwrap();
    postprocess::smooth(&mut p, kernel.weights()).unwrap();
    let dir = TempDir::new("e2e");
    let out = dir.path("submission.csv");
    let files = vec![FileRows {
        stem: "f".into(),
        end_seconds: vec![5, 10, 15],
        probs: p,
    }];
    write_submission(&out, &labels(&["a", "b"]), &files, 3).unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "row_id,a,b\nf_5,0.5,0.5\nf_10,0.5,0.5\nf_15,0.5,0.5\n"
    );
}

// ---------------------------------------------------------------- command-line types

/// The arguments suggested for main.rs parse with these types as they are.
#[derive(clap::Parser, Debug)]
struct Args {
    #[arg(long, default_value = "mean")]
    ensemble: Ensemble,
    #[arg(long, value_name = "W1,W2,...")]
    smooth: Option<postprocess::Kernel>,
    #[arg(long)]
    file_max: Option<postprocess::FileMax>,
    #[arg(long, allow_hyphen_values = true)]
    tta_shifts: Option<postprocess::Shifts>,
    #[arg(long, value_name = "K/N|auto|auto/N")]
    shard: Option<shard::ShardSpec>,
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
}

#[test]
fn command_line_types_parse_with_clap() {
    use clap::Parser;
    let a = Args::try_parse_from([
        "x",
        "--ensemble",
        "geometric",
        "--smooth",
        "0.1,0.2,0.4,0.2,0.1",
        "--shard",
        "1/4",
    ])
    .unwrap();
    assert_eq!(a.ensemble, Ensemble::Geometric);
    assert_eq!(a.smooth.unwrap().weights().len(), 5);
    assert_eq!(
        a.shard,
        Some(shard::ShardSpec::Explicit(Shard { k: 1, n: 4 }))
    );
    assert_eq!(a.threshold, 0.5);
    let e = Args::try_parse_from(["x", "--smooth", "0.5,0.5"]).unwrap_err();
    assert!(e.to_string().contains("odd number"), "{e}");
    let e = Args::try_parse_from(["x", "--shard", "4/4"]).unwrap_err();
    assert!(e.to_string().contains("0-based"), "{e}");
    assert!(Args::try_parse_from(["x", "--ensemble", "median"]).is_err());
    let a = Args::try_parse_from(["x", "--shard", "auto/8"]).unwrap();
    assert_eq!(a.shard, Some(shard::ShardSpec::Auto { n: Some(8) }));
    assert_eq!(a.ensemble, Ensemble::Mean);
    let a = Args::try_parse_from([
        "x",
        "--ensemble",
        "power:3",
        "--file-max",
        "blend:0.5",
        "--tta-shifts",
        "-2.5,2.5",
    ])
    .unwrap();
    assert_eq!(a.ensemble, Ensemble::Power(3.0));
    assert_eq!(a.file_max, Some(postprocess::FileMax::Blend(0.5)));
    assert_eq!(a.tta_shifts.unwrap().seconds(), &[-2.5, 2.5]);
    let e = Args::try_parse_from(["x", "--ensemble", "power:0"]).unwrap_err();
    assert!(e.to_string().contains("exponent"), "{e}");
    let e = Args::try_parse_from(["x", "--file-max", "blend"]).unwrap_err();
    assert!(e.to_string().contains("blend:0.5"), "{e}");
}
