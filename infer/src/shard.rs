//! Sharding a run over several machines or array-job tasks, and merging their submissions.
//!
//! A [`Shard`] `K/N` (0-based `K < N`) takes every `N`-th file of the input, starting at `K`,
//! after sorting the files by name ([`select`]), so that shards `0/N … N−1/N` partition the set
//! and each file is scored exactly once. In an array job the shard can come from the scheduler
//! ([`ShardSpec::Auto`], resolved with [`ShardEnv`]): Slurm's `SLURM_ARRAY_TASK_ID` and
//! `SLURM_ARRAY_TASK_COUNT`, or a Kubernetes indexed job's `JOB_COMPLETION_INDEX` (Kubernetes
//! does not export the number of completions, so give it as `auto/N`).
//!
//! [`merge`] joins the shards' CSVs into the submission one unsharded run would have written,
//! byte for byte: same header, rows sorted by file stem then window end second, written
//! atomically.
//!
//! Rank ensembling (`--ensemble rank`) ranks the rows of one run: shards rank separately, so
//! their merged result differs from an unsharded rank ensemble.

use crate::files::FileError;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Why a shard could not be parsed or resolved, or shards could not be merged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// A shard specification is not `K/N`, `auto` or `auto/N`, or `K ≥ N`, or `N = 0`.
    #[error("invalid shard {spec:?}: {reason}")]
    Invalid {
        /// The specification as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// `auto` was asked for but the environment does not say which shard this is.
    #[error("cannot determine the shard from the environment: {0}")]
    Environment(String),
    /// A shard's header differs from the first shard's.
    #[error(
        "{path}: its header differs from that of {first} (first difference at column {column}: \
         {got:?} instead of {expected:?}); shards of one submission must have the same columns"
    )]
    HeaderMismatch {
        /// The shard whose header differs.
        path: PathBuf,
        /// The first shard.
        first: PathBuf,
        /// The first differing column (1-based).
        column: usize,
        /// That column in the first shard (empty when missing).
        expected: String,
        /// That column in `path` (empty when missing).
        got: String,
    },
    /// The same row id appears twice.
    #[error("row id {row_id:?} appears in both {first} and {second}")]
    DuplicateRow {
        /// The repeated row id.
        row_id: String,
        /// Where it was seen first.
        first: PathBuf,
        /// Where it was seen again (may be the same file).
        second: PathBuf,
    },
    /// No input file was given to [`merge`].
    #[error("no shard files to merge")]
    NoInputs,
    /// Reading, parsing or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Shard `k` of `n` (0-based, `k < n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    /// This shard's index, `0 ≤ k < n`.
    pub k: usize,
    /// Number of shards, at least 1.
    pub n: usize,
}

impl Shard {
    /// The one shard of an unsharded run, `0/1`.
    pub const WHOLE: Shard = Shard { k: 0, n: 1 };

    /// Shard `k` of `n`.
    ///
    /// # Errors
    ///
    /// [`ShardError::Invalid`] when `n = 0` or `k ≥ n`.
    pub fn new(k: usize, n: usize) -> Result<Self, ShardError> {
        let spec = format!("{k}/{n}");
        check(k, n, &spec)
    }

    /// Whether file number `index` (in [`select`]'s sorted order) belongs to this shard.
    pub fn contains(&self, index: usize) -> bool {
        index % self.n == self.k
    }
}

fn check(k: usize, n: usize, spec: &str) -> Result<Shard, ShardError> {
    if n == 0 {
        return Err(ShardError::Invalid {
            spec: spec.to_string(),
            reason: "the number of shards N must be at least 1".into(),
        });
    }
    if k >= n {
        return Err(ShardError::Invalid {
            spec: spec.to_string(),
            reason: format!(
                "the shard index K is 0-based and must be below N: use 0/{n} … {}/{n}",
                n - 1
            ),
        });
    }
    Ok(Shard { k, n })
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    /// Parse `K/N`, e.g. `0/4` … `3/4`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ShardError::Invalid {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let (k, n) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| invalid("expected K/N, e.g. 0/4 for the first of four shards"))?;
        let k: usize = k
            .trim()
            .parse()
            .map_err(|_| invalid("K is not a non-negative integer (expected K/N, e.g. 0/4)"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| invalid("N is not a positive integer (expected K/N, e.g. 0/4)"))?;
        check(k, n, s)
    }
}

/// A shard as given on the command line: explicit, or from the scheduler's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    /// `K/N`.
    Explicit(Shard),
    /// `auto` or `auto/N`: from `SLURM_ARRAY_TASK_*` or `JOB_COMPLETION_INDEX`; `n` is required
    /// for Kubernetes and, for Slurm, must agree with `SLURM_ARRAY_TASK_COUNT`.
    Auto {
        /// The number of shards, when given.
        n: Option<usize>,
    },
}

impl FromStr for ShardSpec {
    type Err = ShardError;

    /// Parse `K/N`, `auto` or `auto/N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(ShardSpec::Auto { n: None });
        }
        if let Some((k, n)) = t.split_once('/') {
            if k.trim().eq_ignore_ascii_case("auto") {
                let n: usize = n.trim().parse().map_err(|_| ShardError::Invalid {
                    spec: s.to_string(),
                    reason: "N is not a positive integer (expected auto/N, e.g. auto/8)".into(),
                })?;
                if n == 0 {
                    return Err(ShardError::Invalid {
                        spec: s.to_string(),
                        reason: "the number of shards N must be at least 1".into(),
                    });
                }
                return Ok(ShardSpec::Auto { n: Some(n) });
            }
        }
        s.parse().map(ShardSpec::Explicit).map_err(|e| match e {
            ShardError::Invalid { spec, reason } => ShardError::Invalid {
                spec,
                reason: format!("{reason}; or auto / auto/N to read it from Slurm or Kubernetes"),
            },
            other => other,
        })
    }
}

impl ShardSpec {
    /// The shard this process is: the explicit one, or the one the environment names.
    ///
    /// # Errors
    ///
    /// As [`ShardEnv::shard`].
    pub fn resolve(&self, env: &ShardEnv) -> Result<Shard, ShardError> {
        match *self {
            ShardSpec::Explicit(s) => Ok(s),
            ShardSpec::Auto { n } => env.shard(n),
        }
    }
}

/// The scheduler variables that name an array task, as strings (`None` when unset). Build it
/// with [`ShardEnv::from_process_env`], or by hand in tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardEnv {
    /// `SLURM_ARRAY_TASK_ID`: this task's array index.
    pub slurm_array_task_id: Option<String>,
    /// `SLURM_ARRAY_TASK_COUNT`: the number of tasks in the array.
    pub slurm_array_task_count: Option<String>,
    /// `SLURM_ARRAY_TASK_MIN`: the lowest array index (`--array=1-4` starts at 1).
    pub slurm_array_task_min: Option<String>,
    /// `SLURM_ARRAY_TASK_STEP`: the step between indices (`--array=0-12:4`).
    pub slurm_array_task_step: Option<String>,
    /// `JOB_COMPLETION_INDEX`: a Kubernetes indexed job's 0-based completion index.
    pub job_completion_index: Option<String>,
}

impl ShardEnv {
    /// Read the variables from this process's environment.
    pub fn from_process_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        ShardEnv {
            slurm_array_task_id: get("SLURM_ARRAY_TASK_ID"),
            slurm_array_task_count: get("SLURM_ARRAY_TASK_COUNT"),
            slurm_array_task_min: get("SLURM_ARRAY_TASK_MIN"),
            slurm_array_task_step: get("SLURM_ARRAY_TASK_STEP"),
            job_completion_index: get("JOB_COMPLETION_INDEX"),
        }
    }

    /// The shard these variables name. `n` is the number of shards given as `auto/N` (needed
    /// for Kubernetes; checked against `SLURM_ARRAY_TASK_COUNT` for Slurm).
    ///
    /// Slurm: `K = (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP` (min 0
    /// and step 1 when unset), `N = SLURM_ARRAY_TASK_COUNT`; so `--array=0-3`, `--array=1-4`
    /// and `--array=0-12:4` each give shards 0/4 … 3/4. An array given as an irregular list
    /// (`--array=1,5,6`) does not map onto shards: use `--shard K/N` there.
    /// Kubernetes: `K = JOB_COMPLETION_INDEX`, `N` from `auto/N`.
    ///
    /// # Errors
    ///
    /// [`ShardError::Environment`] when neither scheduler's variables are set, both are, a value
    /// is not an integer, `SLURM_ARRAY_TASK_COUNT` is missing or disagrees with `n`, or the
    /// resulting `K` is not below `N`.
    pub fn shard(&self, n: Option<usize>) -> Result<Shard, ShardError> {
        let env_err = |m: String| ShardError::Environment(m);
        let int = |name: &str, v: &str| -> Result<usize, ShardError> {
            v.trim()
                .parse::<usize>()
                .map_err(|_| env_err(format!("{name}={v:?} is not a non-negative integer")))
        };
        match (&self.slurm_array_task_id, &self.job_completion_index) {
            (Some(_), Some(_)) => Err(env_err(
                "both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set; give --shard K/N"
                    .into(),
            )),
            (None, None) => Err(env_err(
                "neither SLURM_ARRAY_TASK_ID (Slurm array job) nor JOB_COMPLETION_INDEX \
                 (Kubernetes indexed job) is set; give --shard K/N"
                    .into(),
            )),
            (Some(id), None) => {
                let id = int("SLURM_ARRAY_TASK_ID", id)?;
                let count = match &self.slurm_array_task_count {
                    Some(c) => int("SLURM_ARRAY_TASK_COUNT", c)?,
                    None => {
                        return Err(env_err(
                            "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into(),
                        ))
                    }
                };
                if let Some(n) = n {
                    if n != count {
                        return Err(env_err(format!(
                            "auto/{n} disagrees with SLURM_ARRAY_TASK_COUNT={count}"
                        )));
                    }
                }
                let min = match &self.slurm_array_task_min {
                    Some(m) => int("SLURM_ARRAY_TASK_MIN", m)?,
                    None => 0,
                };
                let step = match &self.slurm_array_task_step {
                    Some(s) => int("SLURM_ARRAY_TASK_STEP", s)?.max(1),
                    None => 1,
                };
                if id < min || !(id - min).is_multiple_of(step) {
                    return Err(env_err(format!(
                        "SLURM_ARRAY_TASK_ID={id} is not MIN {min} plus a multiple of STEP {step}"
                    )));
                }
                let k = (id - min) / step;
                check(k, count, &format!("{k}/{count}")).map_err(|_| {
                    env_err(format!(
                        "SLURM_ARRAY_TASK_ID={id} (min {min}, step {step}) gives shard {k}, \
                         not below SLURM_ARRAY_TASK_COUNT={count}; for an array given as a \
                         list, use --shard K/N"
                    ))
                })
            }
            (None, Some(index)) => {
                let k = int("JOB_COMPLETION_INDEX", index)?;
                let n = n.ok_or_else(|| {
                    env_err(format!(
                        "JOB_COMPLETION_INDEX={k} is set but Kubernetes does not export the \
                         number of completions: give --shard auto/N"
                    ))
                })?;
                check(k, n, &format!("{k}/{n}")).map_err(|_| {
                    env_err(format!(
                        "JOB_COMPLETION_INDEX={k} is not below the {n} shards of auto/{n}"
                    ))
                })
            }
        }
    }
}

/// The files of `shard`: sort by file name (then full path, for equal names), keep those whose
/// position `i` has `i % n == k`. The selections of `0/N … N−1/N` are disjoint and together hold
/// every file once (a path given twice appears twice).
pub fn select(files: &[PathBuf], shard: Shard) -> Vec<PathBuf> {
    let mut sorted: Vec<&PathBuf> = files.iter().collect();
    sorted.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then_with(|| a.cmp(b)));
    sorted
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shard.contains(*i))
        .map(|(_, p)| p.clone())
        .collect()
}

/// What [`merge`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeReport {
    /// Shard files read.
    pub inputs: usize,
    /// Data rows written.
    pub rows: usize,
}

/// The sort key of a row id `<stem>_<end second>`: (stem, end second).
pub fn split_row_id(row_id: &str) -> Option<(&str, u64)> {
    let (stem, end) = row_id.rsplit_once('_')?;
    if stem.is_empty() || end.is_empty() || !end.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem, end.parse().ok()?))
}

/// Join shard submissions into one, exactly as an unsharded run writes it.
///
/// Every input must have the same header (the first that differs is an error naming it).
/// Rows are copied verbatim (line endings normalised to `\n`) and sorted by file stem, then by
/// the numeric window end second of the row id; a row id seen twice is an error naming both
/// files. The output is checked before any input is read (its directory exists, it is not a
/// directory, it is none of the inputs) and written atomically. The inputs are the files
/// birdclef-infer writes: plain, unquoted fields.
///
/// # Errors
///
/// [`ShardError::NoInputs`], [`FileError::Output`] for an output that cannot be written or is an
/// input, [`FileError::Io`], [`FileError::Format`] (empty file, a row id
/// not of the form `<stem>_<integer>`, a row with the wrong number of fields),
/// [`ShardError::HeaderMismatch`], [`ShardError::DuplicateRow`].
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<MergeReport, ShardError> {
    let first_path = inputs.first().ok_or(ShardError::NoInputs)?;
    // Before anything is read: the output can be written and is none of the inputs.
    let output_err = |e| ShardError::from(FileError::from(e));
    birdclef_models::fsio::check_output_file(out).map_err(output_err)?;
    birdclef_models::fsio::refuse_overwriting(out, inputs.iter().map(PathBuf::as_path))
        .map_err(output_err)?;
    let texts: Vec<String> = inputs
        .iter()
        .map(|p| crate::files::read_input(p).map_err(ShardError::from))
        .collect::<Result<_, _>>()?;

    let mut header: Option<&str> = None;
    // (stem, end second, line, input index)
    let mut rows: Vec<(&str, u64, &str, usize)> = Vec::new();
    for (index, (path, text)) in inputs.iter().zip(&texts).enumerate() {
        let fmt_err = |reason: String| {
            ShardError::from(FileError::Format {
                path: path.clone(),
                reason,
            })
        };
        let mut lines = text.lines();
        let this_header = lines
            .next()
            .map(|h| h.trim_start_matches('\u{feff}'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| fmt_err("empty file: no header".into()))?;
        match header {
            None => {
                if !this_header.starts_with("row_id,") {
                    return Err(fmt_err(format!(
                        "the header does not start with row_id: {:?}",
                        truncate(this_header)
                    )));
                }
                header = Some(this_header);
            }
            Some(h) if h != this_header => {
                let a: Vec<&str> = h.split(',').collect();
                let b: Vec<&str> = this_header.split(',').collect();
                let column = (0..a.len().max(b.len()))
                    .find(|&i| a.get(i) != b.get(i))
                    .unwrap_or(0);
                return Err(ShardError::HeaderMismatch {
                    path: path.clone(),
                    first: first_path.clone(),
                    column: column + 1,
                    expected: a.get(column).unwrap_or(&"").to_string(),
                    got: b.get(column).unwrap_or(&"").to_string(),
                });
            }
            Some(_) => {}
        }
        let fields = this_header.split(',').count();
        for (n, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            let line_no = n + 2;
            let id = line.split(',').next().unwrap_or("");
            let (stem, end) = split_row_id(id).ok_or_else(|| {
                fmt_err(format!(
                    "line {line_no}: row id {id:?} is not <file stem>_<window end second>"
                ))
            })?;
            let got = line.split(',').count();
            if got != fields {
                return Err(fmt_err(format!(
                    "line {line_no}: {got} fields but the header has {fields}"
                )));
            }
            rows.push((stem, end, line, index));
        }
    }
    let header = header.unwrap_or("row_id");

    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.3.cmp(&b.3)));
    // Sorting puts equal ids next to each other; the full id decides (a_05 and a_5 differ).
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id = r.2.split(',').next().unwrap_or("");
        if let Some(&first) = seen.get(id) {
            return Err(ShardError::DuplicateRow {
                row_id: id.to_string(),
                first: inputs[first].clone(),
                second: inputs[r.3].clone(),
            });
        }
        seen.insert(id, r.3);
    }

    let size: usize = header.len() + 1 + rows.iter().map(|r| r.2.len() + 1).sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(header.as_bytes());
    bytes.push(b'\n');
    for r in &rows {
        bytes.extend_from_slice(r.2.as_bytes());
        bytes.push(b'\n');
    }
    birdclef_models::fsio::write_atomic(out, &bytes)
        .map_err(|e| ShardError::from(FileError::from(e)))?;
    Ok(MergeReport {
        inputs: inputs.len(),
        rows: rows.len(),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_shards() {
        assert_eq!("0/4".parse::<Shard>().unwrap(), Shard { k: 0, n: 4 });
        assert_eq!(" 3 / 4 ".parse::<Shard>().unwrap(), Shard { k: 3, n: 4 });
        assert_eq!("0/1".parse::<Shard>().unwrap(), Shard::WHOLE);
        for bad in ["4/4", "1/0", "0/0", "-1/4", "a/4", "1", "1/2/3", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let e = "4/4".parse::<Shard>().unwrap_err().to_string();
        assert!(e.contains("0-based") && e.contains("3/4"), "{e}");
        assert_eq!(Shard::new(2, 5).unwrap().to_string(), "2/5");
        assert!(Shard::new(5, 5).is_err());
    }

    #[test]
    fn parse_specs() {
        assert_eq!(
            "auto".parse::<ShardSpec>().unwrap(),
            ShardSpec::Auto { n: None }
        );
        assert_eq!(
            "auto/8".parse::<ShardSpec>().unwrap(),
            ShardSpec::Auto { n: Some(8) }
        );
        assert_eq!(
            "1/8".parse::<ShardSpec>().unwrap(),
            ShardSpec::Explicit(Shard { k: 1, n: 8 })
        );
        assert!("auto/0".parse::<ShardSpec>().is_err());
        assert!("auto/x".parse::<ShardSpec>().is_err());
        assert!("8/8"
            .parse::<ShardSpec>()
            .unwrap_err()
            .to_string()
            .contains("auto"));
    }

    fn env(pairs: &[(&str, &str)]) -> ShardEnv {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        ShardEnv {
            slurm_array_task_id: get("SLURM_ARRAY_TASK_ID"),
            slurm_array_task_count: get("SLURM_ARRAY_TASK_COUNT"),
            slurm_array_task_min: get("SLURM_ARRAY_TASK_MIN"),
            slurm_array_task_step: get("SLURM_ARRAY_TASK_STEP"),
            job_completion_index: get("JOB_COMPLETION_INDEX"),
        }
    }

    #[test]
    fn shards_from_environment() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(slurm.shard(None).unwrap(), Shard { k: 2, n: 4 });
        assert_eq!(slurm.shard(Some(4)).unwrap(), Shard { k: 2, n: 4 });
        assert!(slurm.shard(Some(5)).is_err());
        // --array=1-4
        let one_based = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]);
        assert_eq!(one_based.shard(None).unwrap(), Shard { k: 3, n: 4 });
        // --array=0-12:4
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
        ]);
        assert_eq!(stepped.shard(None).unwrap(), Shard { k: 2, n: 4 });
        // Irregular list --array=1,5,9 with count 3: id 9 → k 8 ≥ 3.
        let list = env(&[
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]);
        assert!(list
            .shard(None)
            .unwrap_err()
            .to_string()
            .contains("--shard K/N"));
        assert!(env(&[("SLURM_ARRAY_TASK_ID", "1")]).shard(None).is_err());
        assert!(env(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "2")
        ])
        .shard(None)
        .is_err());

        let k8s = env(&[("JOB_COMPLETION_INDEX", "5")]);
        assert_eq!(k8s.shard(Some(8)).unwrap(), Shard { k: 5, n: 8 });
        assert!(k8s.shard(None).unwrap_err().to_string().contains("auto/N"));
        assert!(k8s.shard(Some(5)).is_err());

        assert!(ShardEnv::default().shard(Some(4)).is_err());
        let both = env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("JOB_COMPLETION_INDEX", "0"),
        ]);
        assert!(both.shard(None).is_err());

        let spec: ShardSpec = "auto/8".parse().unwrap();
        assert_eq!(spec.resolve(&k8s).unwrap(), Shard { k: 5, n: 8 });
        let spec: ShardSpec = "1/2".parse().unwrap();
        assert_eq!(
            spec.resolve(&ShardEnv::default()).unwrap(),
            Shard { k: 1, n: 2 }
        );
    }

    #[test]
    fn selection_partitions_the_files() {
        for total in [0usize, 1, 2, 5, 17, 100] {
            // Names in scrambled order, in two directories.
            let files: Vec<PathBuf> = (0..total)
                .map(|i| {
                    let j = (i * 7919) % total.max(1);
                    PathBuf::from(format!("dir{}/f{j:04}.ogg", j % 2))
                })
                .collect();
            for n in 1..=7 {
                let mut union = Vec::new();
                for k in 0..n {
                    let shard = Shard::new(k, n).unwrap();
                    let sel = select(&files, shard);
                    assert_eq!(sel, select(&files, shard), "deterministic");
                    let expected = (0..total).filter(|i| i % n == k).count();
                    assert_eq!(sel.len(), expected);
                    union.extend(sel);
                }
                union.sort();
                let mut all = files.clone();
                all.sort();
                assert_eq!(union, all, "total {total}, n {n}");
            }
        }
        let files = vec![
            PathBuf::from("b/z.ogg"),
            PathBuf::from("a/y.ogg"),
            PathBuf::from("c/x.ogg"),
        ];
        assert_eq!(
            select(&files, Shard { k: 0, n: 2 }),
            vec![PathBuf::from("c/x.ogg"), PathBuf::from("b/z.ogg")]
        );
    }

    #[test]
    fn row_id_keys() {
        assert_eq!(
            split_row_id("soundscape_XC1_5"),
            Some(("soundscape_XC1", 5))
        );
        assert_eq!(split_row_id("a_240"), Some(("a", 240)));
        assert_eq!(split_row_id("a_"), None);
        assert_eq!(split_row_id("_5"), None);
        assert_eq!(split_row_id("a_5s"), None);
        assert_eq!(split_row_id("a5"), None);
    }
}
