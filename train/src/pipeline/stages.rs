//! Stages that know when they are up to date: each has a key (a hash of its settings and of the
//! keys of the stages it reads) stamped in `OUT/.stamps/<stage>.done` when it finishes, and a
//! `.started` stamp while it runs, so that an interrupted stage with the same key resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use birdclef_models::fsio::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::summary::fmt_value;
use crate::error::TrainError;

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRow {
    /// Stage name.
    pub stage: String,
    /// `ran` or `up to date`.
    pub status: String,
    /// Seconds it took when it ran.
    pub seconds: f64,
    /// What `value` measures.
    pub metric: String,
    /// The stage's number.
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stamp {
    key: String,
    seconds: f64,
    metric: String,
    value: f64,
}

pub(super) fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    crate::hex(&h.finalize()[..16])
}

/// Names, sizes and modification times of a directory's files (a cheap content key).
pub(super) fn dir_identity(dir: &Path) -> String {
    let mut lines: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some(format!(
                        "{}\t{}\t{}",
                        e.file_name().to_string_lossy(),
                        m.len(),
                        crate::modified_ns(&m)
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    lines.sort();
    format!("{}\n{}", dir.display(), lines.join("\n"))
}

/// Runs stages, skipping those that are up to date, and collects the summary rows.
pub(super) struct Runner {
    /// The pipeline's output directory (stamps go to its `.stamps/`).
    pub out: PathBuf,
    /// One row per stage, in order.
    pub rows: Vec<StageRow>,
}

impl Runner {
    fn stamp_path(&self, stage: &str, ext: &str) -> PathBuf {
        self.out.join(".stamps").join(format!("{stage}.{ext}"))
    }

    /// Run `stage` unless its done-stamp has `key` and `outputs_ok`; `run(resume)` returns
    /// (metric name, value).
    pub fn stage(
        &mut self,
        stage: &str,
        key: &str,
        outputs_ok: bool,
        run: impl FnOnce(bool) -> Result<(String, f64), TrainError>,
    ) -> Result<f64, TrainError> {
        let done = self.stamp_path(stage, "done");
        let started = self.stamp_path(stage, "started");
        let stamp: Option<Stamp> = std::fs::read_to_string(&done)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(s) = stamp.filter(|s| s.key == key && outputs_ok) {
            eprintln!("pipeline: {stage}: up to date");
            self.rows.push(StageRow {
                stage: stage.into(),
                status: "up to date".into(),
                seconds: s.seconds,
                metric: s.metric,
                value: s.value,
            });
            return Ok(s.value);
        }
        let _ = std::fs::remove_file(&done);
        let resume = std::fs::read_to_string(&started).is_ok_and(|k| k.trim() == key);
        if let Some(dir) = started.parent() {
            std::fs::create_dir_all(dir).map_err(TrainError::io("creating", dir))?;
        }
        write_atomic(&started, key.as_bytes())?;
        eprintln!(
            "pipeline: {stage}: {}",
            if resume { "resuming" } else { "running" }
        );
        let t0 = Instant::now();
        let (metric, value) = run(resume).map_err(|cause| TrainError::Stage {
            stage: stage.to_string(),
            cause: Box::new(cause),
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let s = Stamp {
            key: key.into(),
            seconds,
            metric: metric.clone(),
            value,
        };
        let text = serde_json::to_string_pretty(&s).map_err(|cause| TrainError::Json {
            what: "writing",
            path: done.clone(),
            cause,
        })?;
        write_atomic(&done, text.as_bytes())?;
        let _ = std::fs::remove_file(&started);
        eprintln!(
            "pipeline: {stage}: {metric} = {} ({seconds:.1} s)",
            fmt_value(value)
        );
        self.rows.push(StageRow {
            stage: stage.into(),
            status: "ran".into(),
            seconds,
            metric,
            value,
        });
        Ok(value)
    }
}
