//! Training data on a synthesised BirdCLEF-layout directory: metadata (labels, secondary label
//! strings, every problem listed at once, the per-species cap), folds (stratified, grouped, rare
//! classes kept in training) and the HDF5 cache (build, reopen without decoding, rebuild on a new
//! parameter, a changed file, truncation or a missing completion mark; bad recordings).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use birdclef_models::audio::{decode_file, write_wav_f32};
use birdclef_models::rng::Rng;
use birdclef_models::synth;
use birdclef_train::data::cache::{load_backgrounds, Cache, CacheOptions};
use birdclef_train::data::folds::{assign_folds, split, ALWAYS_TRAIN};
use birdclef_train::data::metadata::{load_dataset, CapOrder, DataError, DataOptions};
use birdclef_train::data::{AudioStore, Dataset};

/// Recordings per label of the synthetic competition: two rare classes at the end.
const COUNTS: [usize; 6] = [9, 7, 6, 5, 2, 1];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("birdclef-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("write the synthetic competition");
    dir
}

/// A tiny competition: taxonomy.csv, train_metadata.csv (with an `author` group column and
/// secondary labels, one unknown), train_audio/<label>/*.wav at mixed sample rates and lengths,
/// unlabeled_soundscapes/*.wav.
fn make_competition(root: &Path) {
    let species = synth::species(COUNTS.len());
    let mut rng = Rng::new(7);
    let mut taxonomy = String::from("primary_label,scientific_name\n");
    for sp in &species {
        taxonomy.push_str(&format!("{},Avis {}\n", sp.label, sp.label));
    }
    std::fs::write(root.join("taxonomy.csv"), taxonomy).expect("write the synthetic competition");
    let mut meta = String::from("primary_label,secondary_labels,type,author,rating,filename\n");
    for (li, sp) in species.iter().enumerate() {
        let dir = root.join("train_audio").join(&sp.label);
        std::fs::create_dir_all(&dir).expect("write the synthetic competition");
        for j in 0..COUNTS[li] {
            let rate = [32_000u32, 22_050, 44_100][j % 3];
            let seconds = 1.0 + (j % 4) as f64; // 1-4 s
            let n = (seconds * f64::from(rate)) as usize;
            let mut audio = synth::background(n, 0.01, &mut rng);
            synth::add_call(&mut audio, rate, n / 4, sp, 0.5);
            let name = format!("XC{}{:02}.wav", 100 + li, j);
            write_wav_f32(&dir.join(&name), &audio, rate).expect("write the synthetic competition");
            let secondary = match j % 3 {
                0 => "[]".to_string(),
                1 => format!(
                    "['{}', 'zzzunknown']",
                    species[(li + 1) % species.len()].label
                ),
                _ => format!("['{}']", species[(li + 2) % species.len()].label),
            };
            // Authors: groups of up to three recordings of one label, plus a shared author.
            let author = if j == 0 {
                "Shared Recordist".to_string()
            } else {
                format!("A{li}-{}", j / 3)
            };
            let rating = if j == 1 {
                String::new()
            } else {
                format!("{}", 5.0 - (j % 5) as f64 * 0.5)
            };
            meta.push_str(&format!(
                "{},\"{}\",\"['song']\",{},{},{}/{}\n",
                sp.label, secondary, author, rating, sp.label, name
            ));
        }
    }
    std::fs::write(root.join("train_metadata.csv"), meta).expect("write the synthetic competition");
    let bg = root.join("unlabeled_soundscapes");
    std::fs::create_dir_all(&bg).expect("write the synthetic competition");
    for i in 0..3 {
        let audio = synth::background(32_000 * 3, 0.05, &mut rng);
        write_wav_f32(&bg.join(format!("soundscape_{i}.wav")), &audio, 32_000)
            .expect("write the synthetic competition");
    }
}

fn total() -> usize {
    COUNTS.iter().sum()
}

fn grouped() -> DataOptions {
    DataOptions {
        group_column: Some("author".into()),
        ..DataOptions::default()
    }
}

#[test]
fn loads_labels_recordings_and_secondary_labels() {
    let root = scratch("load");
    make_competition(&root);
    let loaded = load_dataset(&root, &DataOptions::default()).unwrap();
    let ds = &loaded.dataset;
    assert_eq!(ds.labels.len(), COUNTS.len());
    assert_eq!(ds.labels[0], "synbird0");
    assert_eq!(ds.recordings.len(), total());
    let r1 = &ds.recordings[1]; // synbird0, j = 1: ['synbird1', 'zzzunknown'], no rating
    assert_eq!(r1.filename, "synbird0/XC10001.wav");
    assert_eq!(r1.primary, 0);
    assert_eq!(r1.secondary, vec![1]);
    assert_eq!(r1.rating, None);
    assert_eq!(r1.group, None, "no group column configured");
    assert!(r1.path.is_file());
    assert_eq!(ds.recordings[2].secondary, vec![2]);
    assert_eq!(ds.recordings[0].rating, Some(5.0));
    // One unknown secondary label per j % 3 == 1 row.
    let unknown: usize = COUNTS
        .iter()
        .map(|&c| (0..c).filter(|j| j % 3 == 1).count())
        .sum();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].contains(&format!("{unknown} secondary label(s)"))
            && loaded.warnings[0].contains("zzzunknown"),
        "{}",
        loaded.warnings[0]
    );
    let g = load_dataset(&root, &grouped()).unwrap().dataset;
    assert_eq!(g.recordings[0].group.as_deref(), Some("Shared Recordist"));

    // Without taxonomy.csv the label order comes from sample_submission.csv's header.
    std::fs::remove_file(root.join("taxonomy.csv")).unwrap();
    let header: Vec<String> = ds.labels.iter().rev().cloned().collect();
    std::fs::write(
        root.join("sample_submission.csv"),
        format!(
            "row_id,{}\nx_5,{}\n",
            header.join(","),
            vec!["0"; header.len()].join(",")
        ),
    )
    .unwrap();
    let from_sub = load_dataset(&root, &DataOptions::default())
        .unwrap()
        .dataset;
    assert_eq!(from_sub.labels, header);
    assert_eq!(from_sub.recordings[0].primary, COUNTS.len() - 1);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn every_problem_is_listed_with_its_line() {
    let root = scratch("problems");
    make_competition(&root);
    let meta = root.join("train_metadata.csv");
    let mut text = std::fs::read_to_string(&meta).unwrap();
    // Line numbers: the header is line 1, the first appended row is total() + 2.
    let first = total() + 2;
    text.push_str("synbird0,[],x,A,3,synbird0/missing1.wav\n");
    text.push_str("nosuchbird,[],x,A,3,synbird0/XC10000.wav\n");
    text.push_str("synbird1,'not a list',x,A,3,synbird1/XC10100.wav\n");
    text.push_str("synbird1,[],x\n");
    text.push_str("synbird2,[],x,A,three,synbird2/XC10200.wav\n");
    text.push_str("synbird2,[],x,A,4,synbird2/missing2.wav\n");
    std::fs::write(&meta, text).unwrap();
    let err = load_dataset(&root, &DataOptions::default()).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    let DataError::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert!(
        msg.contains(&format!(":{first}: audio file")) && msg.contains("missing1.wav"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            ":{}: unknown primary label `nosuchbird`",
            first + 1
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(":{}: malformed secondary_labels", first + 2)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(":{}: malformed row", first + 3)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(":{}: rating `three`", first + 4)),
        "{msg}"
    );
    assert!(msg.contains("missing2.wav"), "{msg}");

    // A missing group column is named too.
    let err = load_dataset(
        &root,
        &DataOptions {
            group_column: Some("site".into()),
            ..DataOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no `site` column"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cap_keeps_the_best_rated_deterministically() {
    let root = scratch("cap");
    make_competition(&root);
    let all = load_dataset(&root, &DataOptions::default())
        .unwrap()
        .dataset;
    let opts = DataOptions {
        cap_per_species: Some(3),
        cap_order: CapOrder::BestRated,
        ..DataOptions::default()
    };
    let capped = load_dataset(&root, &opts).unwrap();
    let again = load_dataset(&root, &opts).unwrap();
    assert_eq!(capped, again);
    let ds = &capped.dataset;
    let expected: usize = COUNTS.iter().map(|&c| c.min(3)).sum();
    assert_eq!(ds.recordings.len(), expected);
    for label in 0..COUNTS.len() {
        let mut pool: Vec<_> = all
            .recordings
            .iter()
            .filter(|r| r.primary == label)
            .collect();
        pool.sort_by(|a, b| {
            let k = |r: &&birdclef_train::data::Recording| r.rating.unwrap_or(f32::NEG_INFINITY);
            k(b).total_cmp(&k(a)).then(a.filename.cmp(&b.filename))
        });
        let want: HashSet<&str> = pool.iter().take(3).map(|r| r.filename.as_str()).collect();
        let got: HashSet<&str> = ds
            .recordings
            .iter()
            .filter(|r| r.primary == label)
            .map(|r| r.filename.as_str())
            .collect();
        assert_eq!(got, want, "label {label}");
    }
    // Every label has one unrated recording (j = 1): kept only where the label has at most 3.
    assert!(ds
        .recordings
        .iter()
        .all(|r| r.rating.is_some() || COUNTS[r.primary] <= 3));
    let by_name = load_dataset(
        &root,
        &DataOptions {
            cap_per_species: Some(2),
            cap_order: CapOrder::Filename,
            ..DataOptions::default()
        },
    )
    .unwrap()
    .dataset;
    assert_eq!(by_name.recordings[0].filename, "synbird0/XC10000.wav");
    assert_eq!(by_name.recordings[1].filename, "synbird0/XC10001.wav");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The properties every fold assignment must have.
fn check_folds(ds: &Dataset, folds: &[usize], k: usize, min_count: usize, grouped: bool) {
    assert_eq!(folds.len(), ds.recordings.len(), "every recording assigned");
    let mut per_class: HashMap<usize, usize> = HashMap::new();
    for r in &ds.recordings {
        *per_class.entry(r.primary).or_default() += 1;
    }
    for (r, &f) in ds.recordings.iter().zip(folds) {
        assert!(f < k || f == ALWAYS_TRAIN, "fold {f}");
        if per_class[&r.primary] < min_count {
            assert_eq!(f, ALWAYS_TRAIN, "rare class {} in validation", r.primary);
        }
    }
    if grouped {
        let mut group_fold: HashMap<&str, usize> = HashMap::new();
        for (r, &f) in ds.recordings.iter().zip(folds) {
            if let Some(g) = r.group.as_deref() {
                assert_eq!(*group_fold.entry(g).or_insert(f), f, "group {g} split");
            }
        }
    } else {
        for (&label, &count) in &per_class {
            if count < min_count {
                continue;
            }
            let mut in_fold = vec![0usize; k];
            for (r, &f) in ds.recordings.iter().zip(folds) {
                if r.primary == label {
                    in_fold[f] += 1;
                }
            }
            let (lo, hi) = (
                in_fold.iter().min().expect("k > 0"),
                in_fold.iter().max().expect("k > 0"),
            );
            assert!(hi - lo <= 1, "label {label}: {in_fold:?}");
        }
    }
    for fold in 0..k {
        let (train, val) = split(folds, fold);
        assert_eq!(train.len() + val.len(), folds.len());
        assert!(val.iter().all(|&i| folds[i] == fold));
    }
}

#[test]
fn folds_are_stratified_grouped_and_keep_rare_classes_in_training() {
    let root = scratch("folds");
    make_competition(&root);
    let ds = load_dataset(&root, &DataOptions::default())
        .unwrap()
        .dataset;
    for k in [2, 3, 5] {
        for seed in 0..20 {
            let folds = assign_folds(&ds, k, seed, 3);
            check_folds(&ds, &folds, k, 3, false);
            assert_eq!(folds, assign_folds(&ds, k, seed, 3), "deterministic");
        }
    }
    let folds = assign_folds(&ds, 3, 1, 3);
    let rare = folds.iter().filter(|&&f| f == ALWAYS_TRAIN).count();
    assert_eq!(rare, 3, "the classes with 2 and 1 recordings");
    // Totals balanced within 1 without groups.
    let sizes: Vec<usize> = (0..3)
        .map(|f| folds.iter().filter(|&&x| x == f).count())
        .collect();
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
    assert_ne!(
        assign_folds(&ds, 3, 1, 3),
        assign_folds(&ds, 3, 2, 3),
        "the seed matters"
    );

    let g = load_dataset(&root, &grouped()).unwrap().dataset;
    for seed in 0..20 {
        let folds = assign_folds(&g, 3, seed, 3);
        check_folds(&g, &folds, 3, 3, true);
        // "Shared Recordist" has the first recording of every label, rare ones included: the whole
        // group trains always.
        for (r, &f) in g.recordings.iter().zip(&folds) {
            if r.group.as_deref() == Some("Shared Recordist") {
                assert_eq!(f, ALWAYS_TRAIN);
            }
        }
        assert!(folds.contains(&0) && folds.contains(&2));
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cache_builds_reopens_and_rebuilds() {
    let root = scratch("cache");
    make_competition(&root);
    let ds = load_dataset(&root, &DataOptions::default())
        .unwrap()
        .dataset;
    let dir = root.join("cache");
    let opts = CacheOptions {
        seconds: 2.0,
        threads: 2,
        skip_bad: false,
    };
    let t = Instant::now();
    let cache = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    eprintln!("built {} in {:?}", cache.path().display(), t.elapsed());
    assert_eq!(cache.decoded(), total());
    assert_eq!(cache.len(), total());
    assert!(cache.skipped().is_empty());
    assert_eq!(cache.key().len(), 64);
    assert_eq!(
        cache.path().file_name().unwrap().to_str().unwrap(),
        format!("audio-{}.h5", &cache.key()[..16])
    );
    let n = 64_000;
    for (i, r) in ds.recordings.iter().enumerate() {
        let full = decode_file(&r.path).unwrap().samples;
        let seg = cache.segments(i).unwrap();
        if full.len() <= n {
            assert_eq!(seg.head, full, "{}", r.filename);
            assert!(seg.tail.is_empty());
        } else {
            assert_eq!(seg.head, full[..n], "{}", r.filename);
            assert_eq!(seg.tail, full[full.len() - n..], "{}", r.filename);
        }
    }
    assert!(cache.segments(total()).is_err());
    let path = cache.path().to_path_buf();
    let key = cache.key().to_string();
    drop(cache);
    // Nothing left behind but the cache itself.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Reopen: no decoding, fast, same data.
    let t = Instant::now();
    let again = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    let reopen = t.elapsed();
    eprintln!("reopened in {reopen:?}");
    assert_eq!(again.decoded(), 0);
    assert_eq!(again.path(), path);
    assert!(reopen.as_secs_f64() < 1.0, "{reopen:?}");
    assert_eq!(
        again.segments(3).unwrap().head.len(),
        decode_file(&ds.recordings[3].path)
            .unwrap()
            .samples
            .len()
            .min(n)
    );
    drop(again);

    // Readable by any HDF5 reader: the layout the module documents.
    {
        let f = hdf5::File::open(&path).unwrap();
        assert_eq!(f.attr("complete").unwrap().read_scalar::<u8>().unwrap(), 1);
        assert_eq!(
            f.attr("format_version")
                .unwrap()
                .read_scalar::<u32>()
                .unwrap(),
            1
        );
        assert_eq!(
            f.attr("seconds").unwrap().read_scalar::<f64>().unwrap(),
            2.0
        );
        assert_eq!(f.dataset("files").unwrap().shape(), vec![total()]);
        assert_eq!(
            f.dataset("head_offsets").unwrap().shape(),
            vec![total() + 1]
        );
    }

    // A changed parameter: a new file.
    let other = Cache::build_or_open(
        &ds,
        &dir,
        &CacheOptions {
            seconds: 1.5,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_ne!(other.path(), path);
    assert_eq!(other.decoded(), total());
    assert_eq!(
        other.segments(2).unwrap().head.len(),
        48_000,
        "a 3-s recording"
    );
    drop(other);

    // A file that is missing its completion mark is rebuilt.
    {
        let f = hdf5::File::open_rw(&path).unwrap();
        f.delete_attr("complete").unwrap();
    }
    let rebuilt = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    assert_eq!(rebuilt.decoded(), total(), "no completion mark: rebuilt");
    assert_eq!(rebuilt.key(), key);
    drop(rebuilt);

    // A truncated file is rebuilt.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let rebuilt = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    assert_eq!(rebuilt.decoded(), total(), "truncated: rebuilt");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    drop(rebuilt);

    // Garbage under the cache's name is rebuilt.
    std::fs::write(&path, b"not an HDF5 file").unwrap();
    assert_eq!(
        Cache::build_or_open(&ds, &dir, &opts).unwrap().decoded(),
        total()
    );

    // A changed audio file changes the key.
    let r0 = &ds.recordings[0];
    let audio = decode_file(&r0.path).unwrap().samples;
    write_wav_f32(&r0.path, &audio[..audio.len() / 2], 32_000).unwrap();
    let changed = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    assert_ne!(changed.key(), key);
    assert_eq!(
        changed.segments(0).unwrap().head.len(),
        (audio.len() / 2).min(n)
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_recordings_fail_the_build_or_are_skipped() {
    let root = scratch("bad");
    make_competition(&root);
    let ds = load_dataset(&root, &DataOptions::default())
        .unwrap()
        .dataset;
    let bad = [3usize, 11];
    std::fs::write(&ds.recordings[bad[0]].path, b"RIFF garbage, not a wav").unwrap();
    std::fs::write(&ds.recordings[bad[1]].path, b"").unwrap();
    let dir = root.join("cache");
    let opts = CacheOptions {
        seconds: 2.0,
        threads: 2,
        skip_bad: false,
    };
    let err = Cache::build_or_open(&ds, &dir, &opts).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(err, DataError::Decode { ref failures } if failures.len() == 2),
        "{err:?}"
    );
    for &i in &bad {
        assert!(msg.contains(&ds.recordings[i].filename), "{msg}");
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no file left behind"
    );

    let skip = CacheOptions {
        skip_bad: true,
        ..opts.clone()
    };
    let cache = Cache::build_or_open(&ds, &dir, &skip).unwrap();
    let skipped: Vec<usize> = cache.skipped().into_iter().map(|(i, _)| i).collect();
    assert_eq!(skipped, bad);
    assert!(cache.segments(bad[0]).is_err());
    assert!(!cache.segments(0).unwrap().head.is_empty());
    drop(cache);
    // Reopened with skip_bad: the same skipped list; without: the same failure, from the file.
    assert_eq!(
        Cache::build_or_open(&ds, &dir, &skip)
            .unwrap()
            .skipped()
            .len(),
        2
    );
    let err = Cache::build_or_open(&ds, &dir, &opts).unwrap_err();
    assert!(
        matches!(err, DataError::Decode { ref failures } if failures.len() == 2),
        "{err:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn backgrounds_are_cut_and_counted() {
    let root = scratch("bg");
    make_competition(&root);
    let bg = load_backgrounds(&root, 2.0, 2).unwrap();
    assert_eq!(bg.len(), 2);
    assert!(bg.iter().all(|b| b.len() == 64_000));
    let all = load_backgrounds(&root, 10.0, 100).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|b| b.len() == 96_000));
    std::fs::write(root.join("unlabeled_soundscapes/broken.wav"), b"nope").unwrap();
    let err = load_backgrounds(&root, 1.0, 100).unwrap_err();
    assert!(err.to_string().contains("broken.wav"), "{err}");
    assert!(load_backgrounds(&root.join("nowhere"), 1.0, 1).is_err());
    // A length of 0 s is refused as such, not as a soundscape with no samples.
    for seconds in [0.0, -1.0, f64::NAN] {
        let err = load_backgrounds(&root, seconds, 2).unwrap_err().to_string();
        assert!(
            err.contains("positive number of seconds") && !err.contains("no audio samples"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_empty_dataset_gives_an_empty_cache() {
    let root = scratch("empty");
    let ds = Dataset {
        root: root.clone(),
        labels: vec!["a".into()],
        sources: Vec::new(),
        recordings: Vec::new(),
    };
    let opts = CacheOptions {
        seconds: 1.0,
        threads: 1,
        skip_bad: false,
    };
    let cache = Cache::build_or_open(&ds, &root, &opts).unwrap();
    assert!(cache.is_empty());
    drop(cache);
    assert_eq!(
        Cache::build_or_open(&ds, &root, &opts).unwrap().decoded(),
        0
    );
    let bad = CacheOptions {
        seconds: 0.0,
        ..opts
    };
    assert!(Cache::build_or_open(&ds, &root, &bad).is_err());
    // A cache file that cannot be written (a link into a missing directory): the error names it
    // once.
    let file = Cache::build_or_open(&ds, &root, &opts)
        .unwrap()
        .path()
        .to_path_buf();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(root.join("missing/cache.h5"), &file).unwrap();
    let err = Cache::build_or_open(&ds, &root, &opts)
        .unwrap_err()
        .to_string();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(err.matches(name.as_str()).count(), 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
