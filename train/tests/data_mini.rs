//! Training data on the real `../shared/data/birdclef-mini` (63 species, 73 Ogg Vorbis recordings)
//! when it is present: metadata, folds and the HDF5 cache (build timing printed, reopen without
//! decoding, rebuild after truncation). Skipped with a message when the data is absent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use birdclef_train::data::cache::{load_backgrounds, Cache, CacheOptions};
use birdclef_train::data::folds::{assign_folds, ALWAYS_TRAIN};
use birdclef_train::data::metadata::{load_dataset, DataOptions};
use birdclef_train::data::AudioStore;

fn mini() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/birdclef-mini");
    if root.join("train_metadata.csv").is_file() {
        Some(root)
    } else {
        eprintln!("SKIPPED: {} is not present", root.display());
        None
    }
}

#[test]
fn mini_metadata_and_folds() {
    let Some(root) = mini() else { return };
    let loaded = load_dataset(&root, &DataOptions::default()).unwrap();
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let ds = loaded.dataset;
    assert_eq!(ds.labels.len(), 63);
    assert_eq!(ds.recordings.len(), 73);
    assert!(ds.recordings.iter().all(|r| r.path.is_file()));
    let mut per_class: HashMap<usize, usize> = HashMap::new();
    for r in &ds.recordings {
        *per_class.entry(r.primary).or_default() += 1;
    }
    for min_count in [1, 2] {
        let folds = assign_folds(&ds, 5, 42, min_count);
        assert_eq!(folds.len(), 73);
        assert_eq!(folds, assign_folds(&ds, 5, 42, min_count));
        for (r, &f) in ds.recordings.iter().zip(&folds) {
            if per_class[&r.primary] < min_count {
                assert_eq!(f, ALWAYS_TRAIN);
            } else {
                assert!(f < 5);
            }
        }
        let sizes: Vec<usize> = (0..5)
            .map(|k| folds.iter().filter(|&&f| f == k).count())
            .collect();
        let always = folds.iter().filter(|&&f| f == ALWAYS_TRAIN).count();
        eprintln!("min_count_for_val={min_count}: fold sizes {sizes:?}, always-train {always}");
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }
    // The `author` column (empty in mini) as groups: each recording is its own group.
    let grouped = load_dataset(
        &root,
        &DataOptions {
            group_column: Some("author".into()),
            ..DataOptions::default()
        },
    )
    .unwrap()
    .dataset;
    let folds = assign_folds(&grouped, 5, 42, 1);
    assert!(folds.iter().all(|&f| f < 5));
}

#[test]
fn mini_cache_build_reopen_and_rebuild() {
    let Some(root) = mini() else { return };
    let ds = load_dataset(&root, &DataOptions::default())
        .unwrap()
        .dataset;
    let dir = std::env::temp_dir().join(format!("birdclef-data-mini-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = CacheOptions {
        seconds: 30.0,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        skip_bad: false,
    };
    let t = Instant::now();
    let cache = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    let build = t.elapsed();
    let bytes = std::fs::metadata(cache.path()).unwrap().len();
    eprintln!(
        "birdclef-mini cache: {} recordings decoded with {} threads in {:.2} s, {:.1} MB at {}",
        cache.decoded(),
        opts.threads,
        build.as_secs_f64(),
        bytes as f64 / 1e6,
        cache.path().display()
    );
    assert_eq!(cache.decoded(), 73);
    assert_eq!(cache.len(), 73);
    let seg = cache.segments(0).unwrap();
    assert!(!seg.head.is_empty() && seg.head.len() <= 960_000);
    let path = cache.path().to_path_buf();
    drop(cache);

    let t = Instant::now();
    let again = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    let reopen = t.elapsed();
    eprintln!(
        "birdclef-mini cache: reopened in {:.1} ms",
        reopen.as_secs_f64() * 1e3
    );
    assert_eq!(again.decoded(), 0);
    assert!(
        reopen.as_secs_f64() < 0.1 * build.as_secs_f64().max(1.0),
        "{reopen:?}"
    );
    let t = Instant::now();
    let mut samples = 0;
    for i in 0..again.len() {
        let s = again.segments(i).unwrap();
        samples += s.head.len() + s.tail.len();
    }
    eprintln!(
        "birdclef-mini cache: read all 73 recordings ({samples} samples) in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(again);

    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 4096).unwrap();
    drop(f);
    let rebuilt = Cache::build_or_open(&ds, &dir, &opts).unwrap();
    assert_eq!(rebuilt.decoded(), 73, "a truncated cache is rebuilt");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    drop(rebuilt);

    let bg = load_backgrounds(&root, 10.0, 4).unwrap();
    assert_eq!(bg.len(), 4);
    assert!(bg.iter().all(|b| !b.is_empty() && b.len() <= 320_000));
    std::fs::remove_dir_all(&dir).unwrap();
}
