//! The batch pipeline alone: determinism, shapes, targets, and its throughput (printed).

use birdclef_models::rng::Rng;
use std::path::PathBuf;
use std::time::Instant;

use birdclef_models::frontend::Frontend;
use birdclef_models::synth;
use birdclef_train::config::TrainConfig;
use birdclef_train::data::batch::BatchBuilder;
use birdclef_train::data::{Dataset, MemoryStore, Recording, Segments};
use birdclef_train::training::resolve_frontend;

fn dataset(n: usize, seconds: f64) -> (Dataset, MemoryStore) {
    let species = synth::species(4);
    let mut recordings = Vec::new();
    let mut segs = Vec::new();
    for i in 0..n {
        let (audio, _) = synth::soundscape(
            seconds,
            32_000,
            &species[i % 4..i % 4 + 1],
            6,
            &mut Rng::new(i as u64),
        );
        let tail = audio[audio.len() / 2..].to_vec();
        recordings.push(Recording {
            filename: format!("r{i}.ogg"),
            path: PathBuf::from(format!("r{i}.ogg")),
            primary: i % 4,
            secondary: if i % 2 == 0 {
                vec![(i + 1) % 4]
            } else {
                vec![]
            },
            positives: Vec::new(),
            rating: None,
            group: None,
        });
        segs.push(Segments { head: audio, tail });
    }
    let ds = Dataset {
        root: PathBuf::from("/synthetic"),
        labels: species.iter().map(|s| s.label.clone()).collect(),
        sources: Vec::new(),
        recordings,
    };
    (ds, MemoryStore(segs))
}

fn cfg(extra: &[&str]) -> TrainConfig {
    let o: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml("", "test", &o).expect("config")
}

#[test]
fn fit_batches_are_deterministic_with_targets() {
    let (ds, store) = dataset(12, 9.0);
    let c = cfg(&[
        "model.n_mels=64",
        "model.hop_length=1600",
        "model.n_fft=1024",
        "loss.label_smoothing=0.1",
        "loss.secondary_weight=0.5",
        "augment.mixup_prob=0.0",
    ]);
    let (f, _) = resolve_frontend(&c).expect("frontend");
    let fe = Frontend::new(f).expect("frontend");
    let bgs = vec![synth::background(32_000 * 3, 0.05, &mut Rng::new(5))];
    let b = BatchBuilder::new(&ds, &store, fe, c.augment.clone(), c.loss.clone(), &bgs, 3);
    let order: Vec<usize> = (0..12).collect();
    let x1 = b.build(&order, 6, 0, 1).expect("batch");
    let x2 = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool")
        .install(|| b.build(&order, 6, 0, 1).expect("batch"));
    assert_eq!(
        x1, x2,
        "same seed, epoch and position must give the same batch"
    );
    let x3 = b.build(&order, 6, 1, 1).expect("batch");
    assert_ne!(x1.x, x3.x, "another epoch gives other crops");
    assert_eq!(x1.shape, [6, 1, 64, 101]);
    assert!(x1.x.iter().all(|v| v.is_finite()));
    // Sample 0 of batch 1 is recording 6: primary 2 (0.9), secondary 3 (0.45), others 0.1/4.
    let y = &x1.y[0..4];
    assert!(
        (y[2] - 0.9).abs() < 1e-6 && (y[3] - 0.45).abs() < 1e-6,
        "{y:?}"
    );
    assert!(
        (y[0] - 0.025).abs() < 1e-6 && (y[1] - 0.025).abs() < 1e-6,
        "{y:?}"
    );

    // Masked secondaries get loss weight 0; additive mixup takes the max of the targets.
    let c = cfg(&[
        "loss.secondary_mask=true",
        "augment.mixup_prob=1.0",
        "model.n_mels=64",
        "model.hop_length=1600",
        "model.n_fft=1024",
    ]);
    let (f, _) = resolve_frontend(&c).expect("frontend");
    let b = BatchBuilder::new(
        &ds,
        &store,
        Frontend::new(f).expect("fe"),
        c.augment.clone(),
        c.loss.clone(),
        &[],
        3,
    );
    let (_, w) = b.targets(0);
    assert_eq!(w, vec![1.0, 0.0, 1.0, 1.0]);
    let batch = b.build(&order, 12, 0, 0).expect("batch");
    for i in 0..12 {
        let y = &batch.y[i * 4..i * 4 + 4];
        assert!(y.iter().filter(|&&v| v == 1.0).count() >= 1, "{y:?}");
    }
}

#[test]
fn fit_batch_pipeline_throughput() {
    let (ds, store) = dataset(32, 30.0);
    let c = TrainConfig::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/birdclef-mini.toml"),
        &[],
    )
    .expect("config");
    let (f, _) = resolve_frontend(&c).expect("frontend");
    let shape = f.input_shape();
    let bgs = vec![synth::background(32_000 * 10, 0.05, &mut Rng::new(5))];
    let b = BatchBuilder::new(
        &ds,
        &store,
        Frontend::new(f).expect("fe"),
        c.augment.clone(),
        c.loss.clone(),
        &bgs,
        1,
    );
    let order: Vec<usize> = (0..32).cycle().take(128).collect();
    let _ = b.build(&order, 16, 0, 0).expect("warm-up");
    let t = Instant::now();
    for i in 0..8 {
        b.build(&order, 16, 1, i).expect("batch");
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "batch pipeline (configs/birdclef-mini.toml, input {shape:?}, {} rayon threads): {:.1} samples/s",
        rayon::current_num_threads(),
        128.0 / s
    );
}
