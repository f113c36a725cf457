//! Annotated soundscapes as training data (`data::annotated`): where each window is cut, which
//! labels it carries, where negatives may come from, and that no group is in two splits. The
//! audio is a ramp (sample i has the value i / 2^21, exact in f32), so a window's first sample
//! says where it was cut. Then birdclef-mini's own train_annotations.csv, when ../shared is there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use birdclef_models::audio::write_wav_f32;
use birdclef_train::config::TrainConfig;
use birdclef_train::data::annotated::{load_annotated, split_csv, Annotated};
use birdclef_train::data::folds::{ALWAYS_TRAIN, HELD_OUT};
use birdclef_train::data::{AudioStore, NO_LABEL};

const SR: usize = 32_000;
const SCALE: f32 = (1u32 << 21) as f32;

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("birdclef-annotated-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("audio")).expect("mkdir");
    dir
}

/// Four 20-s ramp soundscapes and a table: a point and an overlapping stretch in a.wav, points at
/// both ends of a.wav and b.wav, a rare label in d.wav; groups g1..g4.
fn setup(dir: &Path) -> PathBuf {
    let ramp: Vec<f32> = (0..20 * SR).map(|i| i as f32 / SCALE).collect();
    for f in ["a", "b", "c", "d"] {
        write_wav_f32(&dir.join(format!("audio/{f}.wav")), &ramp, SR as u32).expect("wav");
    }
    let table = dir.join("table.csv");
    std::fs::write(
        &table,
        "filename,start,end,label,group\n\
         a.wav,5.0,,sp1,g1\n\
         a.wav,6.0,6.5,sp2,g1\n\
         a.wav,0.5,,sp1,g1\n\
         b.wav,19.5,19.5,sp2,g2\n\
         b.wav,10,,sp3,g2\n\
         c.wav,10,,sp1,g3\n\
         c.wav,12,14,sp3,g3\n\
         d.wav,2,,rare,g4\n\
         d.wav,15,,sp2,g4\n",
    )
    .expect("table");
    table
}

fn config(extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = [
        "annotations.min_count=2",
        "annotations.jitter_seconds=0.5",
        "data.n_folds=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_toml("", "test", &o).expect("config")
}

fn load(dir: &Path, table: &Path, cfg: &TrainConfig) -> Annotated {
    load_annotated(table, &dir.join("audio"), cfg, 3.0, 3.0, &dir.join("cache")).expect("load")
}

/// The first sample of audio cut from a ramp: where it was cut.
fn position(audio: &[f32]) -> usize {
    (audio[0] * SCALE).round() as usize
}

#[test]
fn windows_are_cut_around_annotations_with_their_overlapping_labels() {
    let dir = scratch("windows");
    let table = setup(&dir);
    let a = load(&dir, &table, &config(&[]));
    let ds = &a.dataset;
    assert_eq!(ds.labels, ["sp1", "sp2", "sp3"]);
    assert_eq!(a.dropped, [("rare".to_string(), 1)]);
    assert_eq!(
        ds.recordings.len(),
        8,
        "8 annotations of kept labels, no negatives"
    );
    let by_name: BTreeMap<&str, usize> = ds
        .recordings
        .iter()
        .enumerate()
        .map(|(i, r)| (r.filename.as_str(), i))
        .collect();
    let w = 3 * SR;
    let j = SR / 2;
    // (window, primary, other positives, centred window start, training context start and length)
    let cases = [
        // A point at 5 s: [3.5, 6.5]; sp2's stretch 6.0-6.5 overlaps it.
        (
            "a.wav@5.000s",
            0,
            vec![1],
            5 * SR - w / 2,
            5 * SR - w / 2 - j,
            w + 2 * j,
        ),
        // The stretch 6.0-6.5, centred at 6.25: [4.75, 7.75] holds the point at 5 s.
        (
            "a.wav@6.250s",
            1,
            vec![0],
            6 * SR + SR / 4 - w / 2,
            6 * SR + SR / 4 - w / 2 - j,
            w + 2 * j,
        ),
        // At 0.5 s the window is shifted into the file, and the context clipped at its start.
        ("a.wav@0.500s", 0, vec![], 0, 0, w + j),
        // At 19.5 s of 20: the window is the last 3 s, the context clipped at the end.
        ("b.wav@19.500s", 1, vec![], 17 * SR, 17 * SR - j, 3 * SR + j),
        // A 2-s stretch: the context covers it with the jitter on both sides of the window.
        (
            "c.wav@13.000s",
            2,
            vec![],
            13 * SR - w / 2,
            13 * SR - w / 2 - j,
            w + 2 * j,
        ),
    ];
    for (name, primary, positives, val_start, start, len) in cases {
        let i = by_name[name];
        let r = &ds.recordings[i];
        assert_eq!((r.primary, &r.positives), (primary, &positives), "{name}");
        let val = a.store.validation_audio(i).expect("val audio");
        assert_eq!(
            (position(&val), val.len()),
            (val_start, w),
            "{name} validation window"
        );
        let head = a.store.segments(i).expect("segments").head;
        assert_eq!(
            (position(&head), head.len()),
            (start, len),
            "{name} training context"
        );
    }
    // d.wav keeps its sp2 window; the rare label's annotation is gone.
    assert!(by_name.contains_key("d.wav@15.000s") && !by_name.contains_key("d.wav@2.000s"));
    // Every window of a file is in its file's fold, and each group is in one fold.
    let fold_of_file: BTreeMap<&str, usize> =
        a.files.iter().map(|f| (f.file.as_str(), f.split)).collect();
    for (r, &f) in ds.recordings.iter().zip(&a.folds) {
        let file = r.filename.split('@').next().expect("file");
        assert_eq!(f, fold_of_file[file], "{}", r.filename);
        let group = format!("g{}", 1 + "abcd".find(&file[..1]).expect("a to d"));
        assert_eq!(r.group.as_ref(), Some(&group), "{}", r.filename);
    }
    let folds: BTreeSet<usize> = a.folds.iter().copied().collect();
    assert_eq!(folds, BTreeSet::from([0, 1]), "both folds have windows");
    // With a 6-s context the labels are those of the 3-s window, the audio the 6 s around it.
    let c = load_annotated(
        &table,
        &dir.join("audio"),
        &config(&[]),
        3.0,
        6.0,
        &dir.join("cache"),
    )
    .expect("context");
    for (name, val_start) in [("a.wav@5.000s", 2 * SR), ("b.wav@19.500s", 14 * SR)] {
        let i = by_name[name];
        assert_eq!(c.dataset.recordings[i], ds.recordings[i], "{name}");
        let val = c.store.validation_audio(i).expect("val");
        assert_eq!((position(&val), val.len()), (val_start, 6 * SR), "{name}");
    }
    assert!(c.store.validation_is_one_input());
    let csv = split_csv(&a.files, birdclef_train::config::SplitMode::Folds);
    assert!(csv.starts_with("file,group,split\na.wav,g1,"), "{csv}");
    assert_eq!(csv.lines().count(), 5);
}

#[test]
fn negatives_touch_no_annotation_and_stay_in_their_split() {
    let dir = scratch("negatives");
    let table = setup(&dir);
    let a = load(&dir, &table, &config(&["annotations.negatives=2.0"]));
    let ds = &a.dataset;
    let negatives: Vec<usize> = (0..ds.recordings.len())
        .filter(|&i| ds.recordings[i].primary == NO_LABEL)
        .collect();
    assert_eq!(negatives.len(), 16, "2 per annotated window");
    let annotated: usize = a.per_split.iter().map(|c| c.0).sum();
    assert_eq!(annotated, 8);
    // Every annotation, of kept and dropped labels, in samples.
    let marks: Vec<(&str, usize, usize)> = vec![
        ("a", 5 * SR, 5 * SR),
        ("a", 6 * SR, 6 * SR + SR / 2),
        ("a", SR / 2, SR / 2),
        ("b", 19 * SR + SR / 2, 19 * SR + SR / 2),
        ("b", 10 * SR, 10 * SR),
        ("c", 10 * SR, 10 * SR),
        ("c", 12 * SR, 14 * SR),
        ("d", 2 * SR, 2 * SR),
        ("d", 15 * SR, 15 * SR),
    ];
    let split_of_file: BTreeMap<String, usize> =
        a.files.iter().map(|f| (f.file.clone(), f.split)).collect();
    let annotated_splits: BTreeSet<usize> = (0..ds.recordings.len())
        .filter(|&i| ds.recordings[i].primary != NO_LABEL)
        .map(|i| a.folds[i])
        .collect();
    for &i in &negatives {
        let r = &ds.recordings[i];
        assert!(r.positives.is_empty() && r.secondary.is_empty());
        let file = r.filename.split('@').next().expect("file");
        let head = a.store.segments(i).expect("segments").head;
        let (s, e) = (position(&head), position(&head) + head.len());
        assert_eq!(head.len(), 4 * SR, "window + twice the jitter");
        assert!(e <= 20 * SR, "{}", r.filename);
        for (f, ms, me) in &marks {
            if format!("{f}.wav") == file {
                assert!(
                    e <= *ms || s > *me,
                    "{} [{s}, {e}) touches [{ms}, {me}]",
                    r.filename
                );
            }
        }
        let val = a.store.validation_audio(i).expect("val");
        assert_eq!(position(&val), s + SR / 2);
        assert_eq!(
            a.folds[i], split_of_file[file],
            "a negative is in its file's split"
        );
        assert!(annotated_splits.contains(&a.folds[i]));
    }
    // Seeded: the same negatives again.
    let again = load(&dir, &table, &config(&["annotations.negatives=2.0"]));
    assert_eq!(again.store.windows(), a.store.windows());
}

#[test]
fn ratio_splits_hold_out_a_test_split_and_problems_are_named() {
    let dir = scratch("ratios");
    let table = setup(&dir);
    let a = load(
        &dir,
        &table,
        &config(&[
            "annotations.split=\"ratios\"",
            "annotations.ratios=[0.5, 0.25, 0.25]",
        ]),
    );
    let marks: BTreeSet<usize> = a.folds.iter().copied().collect();
    assert_eq!(
        marks,
        BTreeSet::from([0, ALWAYS_TRAIN, HELD_OUT]),
        "{:?}",
        a.folds
    );
    let groups_per_split: BTreeMap<usize, BTreeSet<String>> =
        a.files.iter().fold(BTreeMap::new(), |mut m, f| {
            m.entry(f.split).or_default().insert(f.group.clone());
            m
        });
    let all: Vec<&String> = groups_per_split.values().flatten().collect();
    assert_eq!(
        all.len(),
        all.iter().collect::<BTreeSet<_>>().len(),
        "no group in two splits"
    );
    let csv = split_csv(&a.files, birdclef_train::config::SplitMode::Ratios);
    for s in ["train", "val", "test"] {
        assert!(csv.contains(&format!(",{s}\n")), "{csv}");
    }

    // A label list fixes the order and drops the labels it does not have.
    let labels = dir.join("taxonomy.csv");
    std::fs::write(
        &labels,
        "primary_label,common_name\nsp3,c\nsp1,a\nother,o\n",
    )
    .expect("tax");
    let lab = format!("annotations.labels={:?}", labels.display().to_string());
    let b = load(&dir, &table, &config(&[&lab]));
    assert_eq!(b.dataset.labels, ["sp3", "sp1", "other"]);
    assert!(b.dataset.recordings.iter().all(|r| r.primary < 2));
    assert!(
        b.warnings
            .iter()
            .any(|w| w.contains("not in") && w.contains("sp2")),
        "{:?}",
        b.warnings
    );

    // Too few groups for the folds, a missing file, a bad row: each said, naming the file.
    let err = |cfg: &TrainConfig, table: &Path| {
        let e = load_annotated(table, &dir.join("audio"), cfg, 3.0, 3.0, &dir.join("cache"))
            .err()
            .expect("an error");
        format!("{e}")
    };
    let msg = err(&config(&["data.n_folds=5"]), &table);
    assert!(
        msg.contains("table.csv") && msg.contains("has no group"),
        "{msg}"
    );
    let missing = dir.join("missing.csv");
    std::fs::write(&missing, "filename,start,end,label\nnothere.wav,1,2,sp1\n").expect("csv");
    let msg = err(&config(&["annotations.min_count=1"]), &missing);
    assert!(
        msg.contains("nothere.wav") && msg.contains("no such audio file"),
        "{msg}"
    );
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "filename,start,end,label\na.wav,x,2,sp1\n").expect("csv");
    let msg = err(&config(&[]), &bad);
    assert!(msg.contains("bad.csv:2"), "{msg}");
}

#[test]
fn birdclef_mini_train_annotations() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/birdclef-mini");
    let table = root.join("train_annotations.csv");
    if !table.is_file() {
        assert!(
            std::env::var_os("BIRDCLEF_REQUIRE_SHARED").is_none(),
            "{} is required",
            table.display()
        );
        eprintln!("SKIPPED: {} is not present", table.display());
        return;
    }
    let dir = scratch("mini");
    let cfg = TrainConfig::from_toml(
        "",
        "mini",
        &[
            "annotations.start_column=offset_s".into(),
            "annotations.duration_column=duration_s".into(),
            "annotations.label_column=primary_label".into(),
            "annotations.split=\"ratios\"".into(),
        ],
    )
    .expect("config");
    let a = load_annotated(
        &table,
        &root.join("train_audio"),
        &cfg,
        5.0,
        5.0,
        &dir.join("cache"),
    )
    .expect("mini");
    assert_eq!(a.dataset.recordings.len(), 411);
    assert_eq!(a.dataset.labels, ["amafar", "aracaj", "crysou", "lipvoc"]);
    assert_eq!(a.files.len(), 14);
    // Each window holds sound, and each split has windows.
    for i in (0..a.store.len()).step_by(37) {
        let v = a.store.validation_audio(i).expect("audio");
        assert_eq!(v.len(), 5 * SR);
        assert!(v.iter().any(|x| x.abs() > 1e-4), "window {i} is silent");
    }
    let counts: Vec<usize> = a.per_split.iter().map(|c| c.0).collect();
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 411);
}
