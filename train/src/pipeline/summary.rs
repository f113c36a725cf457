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

/// Summary rows by stage (for tests and callers that want one number).
pub fn by_stage(rows: &[StageRow]) -> BTreeMap<&str, &StageRow> {
    rows.iter().map(|r| (r.stage.as_str(), r)).collect()
}
