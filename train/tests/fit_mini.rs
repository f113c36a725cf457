//! `configs/birdclef-mini.toml` on `../shared/data/birdclef-mini` (ignored by default: it trains
//! for minutes). Run with
//! `cargo test -p birdclef-train --release --test fit_mini -- --ignored --nocapture`.

use std::path::Path;
use std::time::Instant;

use birdclef_train::config::TrainConfig;
use birdclef_train::data::cache::{load_backgrounds, Cache, CacheOptions};
use birdclef_train::data::folds::assign_folds;
use birdclef_train::data::metadata::{load_dataset, DataOptions};
use birdclef_train::training::fit;
use tch::Device;

#[test]
#[ignore = "trains for minutes on ../shared/data/birdclef-mini"]
fn fit_birdclef_mini_config() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../shared/data/birdclef-mini");
    if !root.is_dir() {
        println!("{} is absent; skipped", root.display());
        return;
    }
    let overrides: Vec<String> = std::env::var("FIT_MINI_OVERRIDES")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let cfg = TrainConfig::load(&manifest.join("../configs/birdclef-mini.toml"), &overrides)
        .expect("config");
    let loaded = load_dataset(&root, &DataOptions::default()).expect("dataset");
    let ds = loaded.dataset;
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fit-mini");
    let t = Instant::now();
    let cache = Cache::build_or_open(
        &ds,
        &tmp.join("cache"),
        &CacheOptions {
            seconds: cfg.data.cache_seconds,
            ..CacheOptions::default()
        },
    )
    .expect("cache");
    let backgrounds = load_backgrounds(&root, 60.0, 4).unwrap_or_default();
    println!(
        "{} recordings, {} labels, {} backgrounds; cache in {:.1} s",
        ds.recordings.len(),
        ds.labels.len(),
        backgrounds.len(),
        t.elapsed().as_secs_f64()
    );
    let folds = assign_folds(&ds, cfg.data.n_folds, cfg.run.seed, 2);
    let out = tmp.join("run");
    let _ = std::fs::remove_dir_all(&out);
    let t = Instant::now();
    let s = fit(
        &ds,
        &cache,
        &folds,
        cfg.data.folds[0],
        &cfg,
        &backgrounds,
        &out,
        Device::Cpu,
        false,
    )
    .expect("fit");
    println!(
        "fold {}: {:?} (train recordings, validation windows); best epoch {} = {:.4}; {:.1} s in all",
        cfg.data.folds[0],
        s.sizes,
        s.best.0,
        s.best.1,
        t.elapsed().as_secs_f64()
    );
}
