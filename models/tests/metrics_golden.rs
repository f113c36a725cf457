//! Checks `birdclef_models::metrics` against golden values computed with scikit-learn.
//!
//! The cases live in `tests/golden/metrics/cases.json`, written by `make_golden.py` next to it
//! (see the README there). Every value must agree to 1e-12, and every expected error must come
//! back as the matching `MetricError` variant.

use std::path::PathBuf;

use birdclef_models::metrics::{
    confusion_matrix, f1_scores, macro_roc_auc, macro_roc_auc_with_labels, padded_cmap, Decision,
    MetricError, DEFAULT_PADDING_FACTOR,
};
use ndarray::Array2;
use serde::Deserialize;

const TOLERANCE: f64 = 1e-12;

#[derive(Deserialize)]
struct Golden {
    numpy: String,
    sklearn: String,
    paddings: Vec<usize>,
    f1_thresholds: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    rows: usize,
    classes: usize,
    labels: Vec<String>,
    solution: Vec<Vec<f64>>,
    submission: Vec<Vec<f64>>,
    roc_auc: RocAucExpected,
    padded_cmap: std::collections::BTreeMap<String, CmapExpected>,
    /// Per threshold (and `argmax`); `None` where no class has a positive.
    f1: std::collections::BTreeMap<String, Option<F1Expected>>,
    confusion: Vec<Vec<u64>>,
}

#[derive(Deserialize)]
struct F1Expected {
    #[serde(rename = "macro")]
    macro_: f64,
    weighted: f64,
    per_class: Vec<Option<f64>>,
}

#[derive(Deserialize)]
struct RocAucExpected {
    #[serde(rename = "macro")]
    macro_: Option<f64>,
    per_class: Vec<Option<f64>>,
    error: Option<ExpectedError>,
}

#[derive(Deserialize)]
struct CmapExpected {
    #[serde(rename = "macro")]
    macro_: f64,
    per_class: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ExpectedError {
    NoScoredClasses,
    NoNegatives { class: usize, name: String },
}

fn load() -> Golden {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics/cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

fn matrix(name: &str, rows: &[Vec<f64>], n_rows: usize, n_cols: usize) -> Array2<f64> {
    assert_eq!(rows.len(), n_rows, "{name}: row count");
    let flat: Vec<f64> = rows
        .iter()
        .inspect(|r| assert_eq!(r.len(), n_cols, "{name}: column count"))
        .flatten()
        .copied()
        .collect();
    Array2::from_shape_vec((n_rows, n_cols), flat)
        .unwrap_or_else(|e| panic!("{name}: bad matrix: {e}"))
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{what}: got {got:.17}, scikit-learn says {want:.17} (diff {:e})",
        (got - want).abs()
    );
}

#[test]
fn golden_file_is_complete() {
    let golden = load();
    eprintln!(
        "golden cases: {} (numpy {}, scikit-learn {})",
        golden.cases.len(),
        golden.numpy,
        golden.sklearn
    );
    assert!(golden.cases.len() >= 12);
    assert!(golden.paddings.contains(&DEFAULT_PADDING_FACTOR));
    assert!(golden.paddings.contains(&1));
    assert!(golden
        .cases
        .iter()
        .any(|c| matches!(c.roc_auc.error, Some(ExpectedError::NoNegatives { .. }))));
}

#[test]
fn macro_roc_auc_matches_sklearn() {
    for case in load().cases {
        let sol = matrix(&case.name, &case.solution, case.rows, case.classes);
        let sub = matrix(&case.name, &case.submission, case.rows, case.classes);
        let labelled = macro_roc_auc_with_labels(sol.view(), sub.view(), &case.labels);
        let plain = macro_roc_auc(sol.view(), sub.view());
        match (&case.roc_auc.error, labelled, plain) {
            (None, Ok(report), Ok(plain)) => {
                assert_eq!(report, plain, "{}: labels change the result", case.name);
                let want = case
                    .roc_auc
                    .macro_
                    .unwrap_or_else(|| panic!("{}: no expected macro", case.name));
                assert_close(&format!("{} macro", case.name), report.macro_auc, want);
                assert_eq!(report.per_class.len(), case.classes, "{}", case.name);
                for (k, (got, want)) in report
                    .per_class
                    .iter()
                    .zip(&case.roc_auc.per_class)
                    .enumerate()
                {
                    match (got, want) {
                        (Some(g), Some(w)) => {
                            assert_close(&format!("{} class {k}", case.name), *g, *w);
                        }
                        (None, None) => {}
                        _ => panic!("{} class {k}: got {got:?}, want {want:?}", case.name),
                    }
                }
                let scored = case.roc_auc.per_class.iter().flatten().count();
                assert_eq!(report.scored_classes, scored, "{}", case.name);
            }
            (Some(ExpectedError::NoScoredClasses), Err(a), Err(b)) => {
                assert_eq!(
                    a,
                    MetricError::NoScoredClasses { metric: "ROC-AUC" },
                    "{}",
                    case.name
                );
                assert_eq!(
                    b,
                    MetricError::NoScoredClasses { metric: "ROC-AUC" },
                    "{}",
                    case.name
                );
            }
            (Some(ExpectedError::NoNegatives { class, name }), Err(a), Err(b)) => {
                assert_eq!(
                    a,
                    MetricError::NoNegatives {
                        class: *class,
                        name: Some(name.clone())
                    },
                    "{}",
                    case.name
                );
                assert_eq!(
                    b,
                    MetricError::NoNegatives {
                        class: *class,
                        name: None
                    },
                    "{}",
                    case.name
                );
            }
            (want, got, _) => panic!(
                "{}: expected {}, got {got:?}",
                case.name,
                match want {
                    None => "a value".to_owned(),
                    Some(ExpectedError::NoScoredClasses) => "NoScoredClasses".to_owned(),
                    Some(ExpectedError::NoNegatives { class, .. }) =>
                        format!("NoNegatives for class {class}"),
                }
            ),
        }
    }
}

#[test]
fn padded_cmap_matches_sklearn() {
    let golden = load();
    for case in golden.cases {
        let sol = matrix(&case.name, &case.solution, case.rows, case.classes);
        let sub = matrix(&case.name, &case.submission, case.rows, case.classes);
        for &padding in &golden.paddings {
            let want = case
                .padded_cmap
                .get(&padding.to_string())
                .unwrap_or_else(|| panic!("{}: no padding {padding}", case.name));
            let got = padded_cmap(sol.view(), sub.view(), padding)
                .unwrap_or_else(|e| panic!("{} padding {padding}: {e}", case.name));
            assert_eq!(got.padding_factor, padding);
            let what = format!("{} padding {padding}", case.name);
            assert_close(&format!("{what} macro"), got.cmap, want.macro_);
            assert_eq!(got.per_class.len(), want.per_class.len(), "{what}");
            for (k, (g, w)) in got.per_class.iter().zip(&want.per_class).enumerate() {
                assert_close(&format!("{what} class {k}"), *g, *w);
            }
        }
    }
}

#[test]
fn f32_path_matches_for_f32_exact_scores() {
    let golden = load();
    let case = golden
        .cases
        .iter()
        .find(|c| c.name == "float32_grid")
        .unwrap_or_else(|| panic!("float32_grid case missing"));
    let sol = matrix(&case.name, &case.solution, case.rows, case.classes);
    let sub = matrix(&case.name, &case.submission, case.rows, case.classes);
    let sol_u8 = sol.mapv(|v| u8::from(v == 1.0));
    #[allow(clippy::cast_possible_truncation)]
    let sub_f32 = sub.mapv(|v| v as f32);
    assert_eq!(sub_f32.mapv(f64::from), sub, "grid is not exact in f32");

    let r = macro_roc_auc(sol_u8.view(), sub_f32.view())
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let want = case.roc_auc.macro_.unwrap_or_else(|| panic!("no macro"));
    assert_close("float32_grid macro (f32)", r.macro_auc, want);
    let c = padded_cmap(sol_u8.view(), sub_f32.view(), DEFAULT_PADDING_FACTOR)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let want = case
        .padded_cmap
        .get("5")
        .unwrap_or_else(|| panic!("no padding 5"))
        .macro_;
    assert_close("float32_grid padded cmAP (f32)", c.cmap, want);
}

#[test]
fn f1_and_confusion_match_sklearn() {
    let golden = load();
    assert_eq!(golden.f1_thresholds.len(), 2);
    for case in golden.cases {
        let sol = matrix("solution", &case.solution, case.rows, case.classes);
        let sub = matrix("submission", &case.submission, case.rows, case.classes);
        let mut decisions: Vec<(String, Decision)> = golden
            .f1_thresholds
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    Decision::Threshold(t.parse().expect("threshold")),
                )
            })
            .collect();
        decisions.push(("argmax".into(), Decision::Argmax));
        for (key, decision) in decisions {
            let want = case.f1.get(&key).expect("f1 case");
            let got = f1_scores(sol.view(), sub.view(), decision);
            match (want, got) {
                (Some(w), Ok(g)) => {
                    let what = format!("{} {key}", case.name);
                    assert_close(&format!("{what} macro F1"), g.macro_f1, w.macro_);
                    assert_close(&format!("{what} weighted F1"), g.weighted_f1, w.weighted);
                    assert_eq!(g.per_class.len(), w.per_class.len());
                    for (c, (a, b)) in g.per_class.iter().zip(&w.per_class).enumerate() {
                        match (a, b) {
                            (Some(a), Some(b)) => {
                                assert_close(&format!("{what} class {c}"), *a, *b)
                            }
                            (None, None) => {}
                            _ => panic!("{what} class {c}: {a:?} vs {b:?}"),
                        }
                    }
                }
                (None, Err(e)) => {
                    assert_eq!(
                        e,
                        MetricError::NoScoredClasses { metric: "F1" },
                        "{}",
                        case.name
                    )
                }
                (w, g) => panic!("{} {key}: expected {:?}, got {g:?}", case.name, w.is_some()),
            }
        }
        // Truth: the first positive of each row that has one.
        let rows: Vec<usize> = (0..case.rows)
            .filter(|&r| case.solution[r].contains(&1.0))
            .collect();
        let truth: Vec<usize> = rows
            .iter()
            .map(|&r| {
                case.solution[r]
                    .iter()
                    .position(|&v| v == 1.0)
                    .expect("a positive")
            })
            .collect();
        let scored = sub.select(ndarray::Axis(0), &rows);
        let m = if rows.is_empty() {
            Array2::zeros((case.classes, case.classes))
        } else {
            confusion_matrix(&truth, scored.view()).expect("confusion")
        };
        let want: Vec<u64> = case.confusion.iter().flatten().copied().collect();
        assert_eq!(
            m.iter().copied().collect::<Vec<_>>(),
            want,
            "{} confusion",
            case.name
        );
    }
}
