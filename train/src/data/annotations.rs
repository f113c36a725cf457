//! Annotation tables of soundscapes (the Kenya setup): which species calls where in which file.
//!
//! Two layouts are read, told apart by their header:
//! - **CSV** (comma-separated): one row per annotation with a file name (relative to the audio
//!   directory), a start in seconds, an end (empty or equal to the start for a point annotation)
//!   or a duration, a label and optionally a group (time and place of the recording). The
//!   column names are configurable ([`AnnotationColumns`]): birdclef-mini's
//!   `train_annotations.csv` is `filename,primary_label,offset_s,duration_s`
//!   ([`AnnotationColumns::birdclef_mini`]).
//! - **Raven selection tables** (tab-separated, `Begin Time (s)` and `End Time (s)` columns, the
//!   species in a configurable column): the file is the `Begin File` column when there is one,
//!   else the table's own name up to `.selections.txt` (and a `.Table.N` before it), without an
//!   extension.
//!
//! Every problem in a table is reported at once, each with its `file:line`; then
//! [`min_count_filter`] drops rare classes and [`split_groups`] splits train/val/test by group,
//! stratified by species, with no group in two splits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use birdclef_models::rng::Rng;
use serde::{Deserialize, Serialize};

use super::DataError;

/// One annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The audio file, relative to the audio directory (for a Raven table without a
    /// `Begin File` column: the table's recording stem, without an extension).
    pub file: String,
    /// Start in seconds.
    pub start: f64,
    /// End in seconds (equal to `start` for a point annotation).
    pub end: f64,
    /// The species.
    pub label: String,
    /// The group (time and place); the file when the table has no group column.
    pub group: String,
}

impl Annotation {
    /// Whether it marks an instant rather than a stretch.
    pub fn is_point(&self) -> bool {
        self.end <= self.start
    }
}

/// The column names of an annotation table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnotationColumns {
    /// File name column (CSV). Default `filename`.
    pub filename: String,
    /// Start column in seconds (CSV). Default `start`.
    pub start: String,
    /// End column in seconds (CSV; empty or equal to the start: a point). Default `end`.
    pub end: String,
    /// Duration column in seconds, used instead of `end` when set (CSV). Default none.
    pub duration: Option<String>,
    /// Label column (CSV). Default `label`.
    pub label: String,
    /// Group column, optional in the table (CSV and Raven). Default `group`.
    pub group: String,
    /// Species column of a Raven selection table. Default `Species`.
    pub raven_species: String,
}

impl Default for AnnotationColumns {
    fn default() -> Self {
        Self {
            filename: "filename".into(),
            start: "start".into(),
            end: "end".into(),
            duration: None,
            label: "label".into(),
            group: "group".into(),
            raven_species: "Species".into(),
        }
    }
}

impl AnnotationColumns {
    /// birdclef-mini's `train_annotations.csv`: `filename,primary_label,offset_s,duration_s`.
    pub fn birdclef_mini() -> Self {
        Self {
            start: "offset_s".into(),
            duration: Some("duration_s".into()),
            label: "primary_label".into(),
            ..Self::default()
        }
    }
}

const RAVEN_BEGIN: &str = "Begin Time (s)";
const RAVEN_END: &str = "End Time (s)";
const RAVEN_FILE: &str = "Begin File";

/// The recording a Raven table without a `Begin File` column describes: its name up to
/// `.selections.txt`, less a `.Table.N` and any extension before that.
fn raven_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stem = name
        .strip_suffix(".selections.txt")
        .or_else(|| name.strip_suffix(".txt"))
        .unwrap_or(&name)
        .to_string();
    if let Some(pos) = stem.rfind(".Table.") {
        if stem[pos + ".Table.".len()..]
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            stem.truncate(pos);
        }
    }
    if let Some(pos) = stem.rfind('.') {
        let ext = &stem[pos + 1..];
        if ["wav", "flac", "ogg", "mp3", "WAV", "FLAC"].contains(&ext) {
            stem.truncate(pos);
        }
    }
    stem
}

/// Read an annotation table (CSV or Raven selection table, see the module documentation).
///
/// # Errors
///
/// [`DataError::Io`] when it cannot be read; [`DataError::Invalid`] listing every problem with
/// its `file:line`: a missing column, a start or end that is not a finite number ≥ 0, an end
/// before its start, an empty label or file name, or a table without annotations.
pub fn read_annotations(
    path: &Path,
    cols: &AnnotationColumns,
) -> Result<Vec<Annotation>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|cause| DataError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let invalid = |problems: Vec<String>| DataError::Invalid {
        root: path.to_path_buf(),
        problems,
    };
    let first = text.lines().next().unwrap_or("");
    let raven = first.contains('\t') && first.contains(RAVEN_BEGIN);
    let delimiter = if raven { b'\t' } else { b',' };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text.as_bytes());
    let at = |line: u64| format!("{}:{line}", path.display());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| invalid(vec![format!("{}: {e}", at(1))]))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let find = |name: &str| header.iter().position(|h| h == name);
    let mut problems = Vec::new();
    let mut need = |name: &str| {
        let i = find(name);
        if i.is_none() {
            problems.push(format!(
                "{}: no column {name:?} (columns: {})",
                at(1),
                header.join(", ")
            ));
        }
        i
    };
    let (file_col, start_col, end_col, label_col) = if raven {
        (
            find(RAVEN_FILE),
            need(RAVEN_BEGIN),
            need(RAVEN_END),
            need(&cols.raven_species),
        )
    } else {
        let end = match &cols.duration {
            Some(d) => need(d),
            None => need(&cols.end),
        };
        (
            need(&cols.filename),
            need(&cols.start),
            end,
            need(&cols.label),
        )
    };
    let group_col = find(&cols.group);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let (start_col, end_col, label_col) = (
        start_col.unwrap_or(0),
        end_col.unwrap_or(0),
        label_col.unwrap_or(0),
    );
    let stem = raven.then(|| raven_stem(path));
    let mut out = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let number = |i: usize, what: &str, problems: &mut Vec<String>| -> Option<f64> {
            match field(i).parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
                _ => {
                    problems.push(format!(
                        "{}: {what} {:?} is not a number of seconds ≥ 0",
                        at(line),
                        field(i)
                    ));
                    None
                }
            }
        };
        let start = number(start_col, "start", &mut problems);
        let end = if !raven && cols.duration.is_none() && field(end_col).is_empty() {
            start
        } else {
            let what = if cols.duration.is_some() && !raven {
                "duration"
            } else {
                "end"
            };
            number(end_col, what, &mut problems).map(|v| {
                if cols.duration.is_some() && !raven {
                    start.unwrap_or(0.0) + v
                } else {
                    v
                }
            })
        };
        let label = field(label_col).to_string();
        if label.is_empty() {
            problems.push(format!("{}: empty label", at(line)));
        }
        let file = match (&stem, file_col) {
            (_, Some(c)) => field(c).to_string(),
            (Some(s), None) => s.clone(),
            (None, None) => String::new(),
        };
        if file.is_empty() {
            problems.push(format!("{}: empty file name", at(line)));
        }
        let (Some(start), Some(end)) = (start, end) else {
            continue;
        };
        if end < start {
            problems.push(format!(
                "{}: ends at {end} s, before its start at {start} s",
                at(line)
            ));
            continue;
        }
        let group = group_col
            .map(|g| field(g).to_string())
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| file.clone());
        out.push(Annotation {
            file,
            start,
            end,
            label,
            group,
        });
    }
    if out.is_empty() && problems.is_empty() {
        problems.push(format!("{}: no annotations", path.display()));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(invalid(problems))
    }
}

/// The annotations of labels with at least `min` of them, and the labels dropped with their
/// counts.
pub fn min_count_filter(
    annotations: Vec<Annotation>,
    min: usize,
) -> (Vec<Annotation>, Vec<(String, usize)>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &annotations {
        *counts.entry(a.label.as_str()).or_default() += 1;
    }
    let dropped: Vec<(String, usize)> = counts
        .iter()
        .filter(|(_, &n)| n < min)
        .map(|(l, &n)| (l.to_string(), n))
        .collect();
    let drop: BTreeSet<String> = dropped.iter().map(|(l, _)| l.clone()).collect();
    let kept = annotations
        .into_iter()
        .filter(|a| !drop.contains(&a.label))
        .collect();
    (kept, dropped)
}

/// Assign every group to a split (0, 1, … in the order of `ratios`, e.g. train/val/test
/// `[0.7, 0.15, 0.15]`) by iterative stratification (Sechidis et al. 2011) over groups: take the
/// species with the fewest annotations left unassigned; give each group that has it (in a seeded
/// random order) to the split that still wants most of that species' annotations (then most
/// annotations overall, then the earlier split); repeat. A split with a zero ratio gets nothing
/// and a group is in one split only. Returns the split of each group.
pub fn split_groups(
    annotations: &[Annotation],
    ratios: &[f64],
    seed: u64,
) -> BTreeMap<String, usize> {
    let labels: BTreeSet<&str> = annotations.iter().map(|a| a.label.as_str()).collect();
    let index: BTreeMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let k = labels.len();
    let mut by_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for a in annotations {
        by_group
            .entry(a.group.as_str())
            .or_insert_with(|| vec![0; k])[index[a.label.as_str()]] += 1;
    }
    let mut groups: Vec<(&str, Vec<usize>)> = by_group.into_iter().collect();
    Rng::new(seed).shuffle(&mut groups);
    let sum: f64 = ratios
        .iter()
        .filter(|r| **r > 0.0)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let share: Vec<f64> = ratios.iter().map(|r| r.max(0.0) / sum).collect();
    let mut left = vec![0usize; k];
    for (_, c) in &groups {
        for (l, n) in left.iter_mut().zip(c) {
            *l += n;
        }
    }
    let total: usize = left.iter().sum();
    // What each split still wants, per species and in all.
    let mut wants: Vec<Vec<f64>> = share
        .iter()
        .map(|sh| left.iter().map(|&t| sh * t as f64).collect())
        .collect();
    let mut wants_all: Vec<f64> = share.iter().map(|sh| sh * total as f64).collect();
    let mut out = BTreeMap::new();
    let mut assigned = vec![false; groups.len()];
    while let Some(j) = (0..k)
        .filter(|&j| left[j] > 0)
        .min_by_key(|&j| (left[j], j))
    {
        for (gi, (g, counts)) in groups.iter().enumerate() {
            if assigned[gi] || counts[j] == 0 {
                continue;
            }
            let best = (0..share.len())
                .filter(|&s| share[s] > 0.0)
                .max_by(|&a, &b| {
                    wants[a][j]
                        .total_cmp(&wants[b][j])
                        .then(wants_all[a].total_cmp(&wants_all[b]))
                        .then(b.cmp(&a))
                })
                .unwrap_or(0);
            for (l, &n) in counts.iter().enumerate() {
                wants[best][l] -= n as f64;
                left[l] -= n;
            }
            wants_all[best] -= counts.iter().sum::<usize>() as f64;
            assigned[gi] = true;
            out.insert(g.to_string(), best);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    /// A fresh directory for test `name`.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("birdclef-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn csv_with_points_stretches_and_groups() {
        let dir = scratch("annotations-csv");
        let p = write(
            &dir,
            "a.csv",
            "filename,start,end,label,group\n\
             s1.wav,1.5,,bird_a,g1\n\
             s1.wav,2.0,4.0,bird_b,g1\n\
             \n\
             s2.wav,3,3,bird_a,\n",
        );
        let a = read_annotations(&p, &AnnotationColumns::default()).expect("read");
        assert_eq!(a.len(), 3);
        assert!(a[0].is_point() && a[0].start == 1.5 && a[0].group == "g1");
        assert_eq!((a[1].start, a[1].end), (2.0, 4.0));
        assert!(!a[1].is_point());
        assert!(a[2].is_point());
        assert_eq!(a[2].group, "s2.wav", "no group: the file");
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let dir = scratch("annotations-bad");
        let p = write(
            &dir,
            "bad.csv",
            "filename,start,end,label\ns1.wav,x,,a\ns1.wav,5,4,a\n,1,2,\ns1.wav,-1,2,a\n",
        );
        let e = read_annotations(&p, &AnnotationColumns::default())
            .expect_err("bad")
            .to_string();
        for want in [
            "bad.csv:2: start \"x\" is not a number",
            "bad.csv:3: ends at 4 s, before its start at 5 s",
            "bad.csv:4: empty label",
            "bad.csv:4: empty file name",
            "bad.csv:5: start \"-1\"",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        let p = write(&dir, "cols.csv", "file,begin,label\nx,1,a\n");
        let e = read_annotations(&p, &AnnotationColumns::default())
            .expect_err("columns")
            .to_string();
        assert!(e.contains("cols.csv:1: no column \"filename\""), "{e}");
        assert!(e.contains("no column \"start\""), "{e}");
    }

    #[test]
    fn birdclef_mini_layout_uses_a_duration_column() {
        let dir = scratch("annotations-mini");
        let p = write(
            &dir,
            "train_annotations.csv",
            "filename,primary_label,offset_s,duration_s\ncrysou/XC1.ogg,crysou,22.047,5.000\n",
        );
        let a = read_annotations(&p, &AnnotationColumns::birdclef_mini()).expect("read");
        assert_eq!(a[0].label, "crysou");
        assert!((a[0].end - 27.047).abs() < 1e-9);
        // The real file, where ../shared is present.
        let real = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/birdclef-mini/train_annotations.csv");
        if real.is_file() {
            let a = read_annotations(&real, &AnnotationColumns::birdclef_mini()).expect("real");
            assert_eq!(a.len(), 411);
            assert!(a.iter().all(|x| x.end > x.start));
        }
    }

    #[test]
    fn raven_tables_read_with_or_without_a_file_column() {
        let dir = scratch("annotations-raven");
        let p = write(
            &dir,
            "KEN_001.wav.Table.1.selections.txt",
            "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n\
             1\tSpectrogram 1\t1\t0.5\t1.25\t500\t8000\tcomrav\n\
             2\tSpectrogram 1\t1\t3\t3\t500\t8000\thoucro\n",
        );
        let a = read_annotations(&p, &AnnotationColumns::default()).expect("raven");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].file, "KEN_001");
        assert_eq!(
            (a[0].start, a[0].end, a[0].label.as_str()),
            (0.5, 1.25, "comrav")
        );
        assert!(a[1].is_point());
        let p = write(
            &dir,
            "t.selections.txt",
            "Selection\tBegin Time (s)\tEnd Time (s)\tBegin File\tSpecies\n1\t1\t2\tx/y.flac\ta\n",
        );
        let a = read_annotations(&p, &AnnotationColumns::default()).expect("raven");
        assert_eq!(a[0].file, "x/y.flac");
        let p = write(
            &dir,
            "u.selections.txt",
            "Selection\tBegin Time (s)\tEnd Time (s)\tLabel\n1\t1\t2\ta\n",
        );
        let e = read_annotations(&p, &AnnotationColumns::default()).expect_err("no species");
        assert!(e.to_string().contains("no column \"Species\""), "{e}");
    }

    fn ann(file: &str, label: &str, group: &str) -> Annotation {
        Annotation {
            file: file.into(),
            start: 0.0,
            end: 0.0,
            label: label.into(),
            group: group.into(),
        }
    }

    #[test]
    fn rare_classes_are_filtered() {
        let a = vec![ann("f", "a", "g"), ann("f", "a", "g"), ann("f", "b", "g")];
        let (kept, dropped) = min_count_filter(a, 2);
        assert_eq!(kept.len(), 2);
        assert_eq!(dropped, vec![("b".to_string(), 1)]);
    }

    /// 40 groups, 6 species of very different frequency: no group in two splits, every split
    /// near its share of annotations, and species with at least 3 groups in every split.
    #[test]
    fn groups_split_by_ratio_stratified_and_never_shared() {
        let mut rng = Rng::new(5);
        let mut a = Vec::new();
        for g in 0..40 {
            for s in 0..6usize {
                // Species s is in about 1/(s+1) of the groups, 1-10 calls each.
                if rng.uniform() < 1.0 / (s as f64 + 1.0) {
                    for _ in 0..1 + rng.below(10) {
                        a.push(ann(
                            &format!("r{g}.wav"),
                            &format!("sp{s}"),
                            &format!("g{g}"),
                        ));
                    }
                }
            }
        }
        let ratios = [0.6, 0.2, 0.2];
        for seed in 1..=5 {
            let split = split_groups(&a, &ratios, seed);
            assert_eq!(split.len(), 40);
            // One split per group, by construction of the map; every annotation of a group is in it.
            let mut per_split = [0usize; 3];
            let mut species_in: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); 6];
            for x in &a {
                let s = split[&x.group];
                per_split[s] += 1;
                species_in[x.label[2..].parse::<usize>().expect("sp")].insert(s);
            }
            let n = a.len() as f64;
            for (s, r) in ratios.iter().enumerate() {
                let got = per_split[s] as f64 / n;
                assert!(
                    (got - r).abs() < 0.08,
                    "seed {seed}, split {s}: {got:.3} of annotations, want {r}"
                );
            }
            for (s, splits) in species_in.iter().enumerate() {
                let groups: BTreeSet<&str> = a
                    .iter()
                    .filter(|x| x.label == format!("sp{s}"))
                    .map(|x| x.group.as_str())
                    .collect();
                if groups.len() >= 3 {
                    assert_eq!(
                        splits.len(),
                        3,
                        "sp{s} in {} groups: splits {splits:?}",
                        groups.len()
                    );
                }
            }
        }
        let split = split_groups(&a, &ratios, 1);
        // The same seed gives the same split; a zero ratio gets nothing.
        assert_eq!(split_groups(&a, &ratios, 1), split);
        assert!(split_groups(&a, &[0.5, 0.0, 0.5], 1)
            .values()
            .all(|&s| s != 1));
    }
}
