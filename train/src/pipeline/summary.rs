//! `OUT/summary.csv` and the table printed at the end of a pipeline: one row per stage.

use std::collections::BTreeMap;
use std::path::Path;

use super::stages::StageRow;
use crate::error::TrainError;

/// Write `summary.csv` atomically.
pub fn write_summary(path: &Path, rows: &[StageRow]) -> Result<(), TrainError> {
    let mut text = String::from("stage,status,seconds,metric,value\n");
    for row in rows {
        text.push_str(&format!(
            "{},{},{:.2},{},{}\n",
            row.stage, row.status, row.seconds, row.metric, row.value
        ));
    }
    Ok(birdclef_models::fsio::write_atomic(path, text.as_bytes())?)
}

/// A metric for people: 4 decimals, or 3 significant digits when it is tiny (export differences).
pub(super) fn fmt_value(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// The summary as an aligned text table.
pub fn format_summary(rows: &[StageRow]) -> String {
    let mut out = format!(
        "{:<14} {:<11} {:>9}  {:<30} {:>10}\n",
        "stage", "status", "seconds", "metric", "value"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<14} {:<11} {:>9.1}  {:<30} {:>10}\n",
            r.stage,
            r.status,
            r.seconds,
            r.metric,
            fmt_value(r.value)
        ));
    }
    out
}

/// The test scores side by side, in one line: the teachers, the students without pseudo-labels
/// and the distilled students of every round (`None` when nothing was scored).
pub fn comparison(rows: &[StageRow]) -> Option<String> {
    let mut parts = Vec::new();
    let mut round = 0;
    for r in rows {
        let name = match r.stage.as_str() {
            "teachers-eval" => "teachers".to_string(),
            "baseline-eval" => "students without pseudo-labels".to_string(),
            "score" => {
                round += 1;
                if round > 1 || rows.iter().any(|r| r.stage == "students-eval") {
                    format!("distilled students, round {round} (the submission)")
                } else {
                    "distilled students (the submission)".to_string()
                }
            }
            s if s.starts_with("students") && s.ends_with("-eval") => {
                round += 1;
                format!("distilled students, round {round}")
            }
            _ => continue,
        };
        parts.push(format!("{name} {:.4}", r.value));
    }
    (!parts.is_empty()).then(|| format!("test macro ROC-AUC: {}", parts.join(" | ")))
}

/// Summary rows by stage (for tests and callers that want one number).
pub fn by_stage(rows: &[StageRow]) -> BTreeMap<&str, &StageRow> {
    rows.iter().map(|r| (r.stage.as_str(), r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stage: &str, value: f64) -> StageRow {
        StageRow {
            stage: stage.into(),
            status: "ran".into(),
            seconds: 1.0,
            metric: "test macro ROC-AUC".into(),
            value,
        }
    }

    #[test]
    fn the_scores_side_by_side() {
        let rows = [
            row("teachers", 0.9),
            row("teachers-eval", 0.7),
            row("baseline-eval", 0.8),
            row("students-eval", 0.81),
            row("students-r2-eval", 0.82),
            row("score", 0.83),
        ];
        assert_eq!(
            comparison(&rows).expect("scores"),
            "test macro ROC-AUC: teachers 0.7000 | students without pseudo-labels 0.8000 | \
             distilled students, round 1 0.8100 | distilled students, round 2 0.8200 | \
             distilled students, round 3 (the submission) 0.8300"
        );
        let one = [row("baseline-eval", 0.8), row("score", 0.85)];
        assert!(comparison(&one)
            .expect("scores")
            .ends_with("distilled students (the submission) 0.8500"));
        assert_eq!(comparison(&[row("teachers", 0.9)]), None);
    }
}
