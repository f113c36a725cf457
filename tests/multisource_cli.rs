//! Several data sources end to end on ../shared/data/birdclef-mini split into two "years" (the
//! audio is linked, not copied): `fit --extra-data` with configs/multisource.toml keeps only this
//! year's species, drops duplicate Xeno-canto recordings, trains, and lists both sources in the
//! card's provenance. Skipped where ../shared is absent.
use std::path::Path;
use std::process::Command;

use birdclef::{bin, run, scratch_dir, shared_data};

/// A competition directory `dir` with `rows` of birdclef-mini's metadata, its taxonomy less the
/// species of `drop`, and its train_audio and unlabeled_soundscapes linked.
fn year(mini: &Path, dir: &Path, header: &str, rows: &[&str], drop: &[&str]) {
    std::fs::create_dir_all(dir).expect("dir");
    for sub in ["train_audio", "unlabeled_soundscapes"] {
        std::os::unix::fs::symlink(mini.join(sub), dir.join(sub)).expect("link");
    }
    std::fs::write(
        dir.join("train_metadata.csv"),
        format!("{header}\n{}\n", rows.join("\n")),
    )
    .expect("metadata");
    let taxonomy = std::fs::read_to_string(mini.join("taxonomy.csv")).expect("taxonomy");
    let kept: Vec<&str> = taxonomy
        .lines()
        .filter(|l| !drop.iter().any(|d| l.starts_with(&format!("{d},"))))
        .collect();
    std::fs::write(dir.join("taxonomy.csv"), kept.join("\n") + "\n").expect("taxonomy");
}

#[test]
fn a_previous_year_adds_its_recordings_of_this_years_species_once() {
    let Some(mini) = shared_data("birdclef-mini") else {
        return;
    };
    let dir = scratch_dir("multisource");
    let meta = std::fs::read_to_string(mini.join("train_metadata.csv")).expect("metadata");
    let mut lines = meta.lines();
    let header = lines.next().expect("header");
    let rows: Vec<&str> = lines.collect();
    let species = |l: &str| l.split(',').next().unwrap_or("").to_string();
    // Three single-recording species only last year (not this year's), and every second
    // recording of the species with several; last year also repeats two of this year's.
    let drop = ["acccol", "accstr", "actmac"];
    let (mut this, mut last) = (Vec::new(), Vec::new());
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for &r in &rows {
        let s = species(r);
        let n = seen.entry(s.clone()).or_default();
        *n += 1;
        if drop.contains(&s.as_str()) || n.is_multiple_of(2) {
            last.push(r);
        } else {
            this.push(r);
        }
    }
    assert_eq!(last.len(), 3 + 6, "{last:?}");
    last.extend_from_slice(&this[..2]);
    let this_year = dir.join("this");
    let last_year = dir.join("last");
    year(&mini, &this_year, header, &this, &drop);
    year(&mini, &last_year, header, &last, &[]);

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/multisource.toml");
    let out = dir.join("run");
    let mut cmd = Command::new(bin("birdclef-train"));
    cmd.args(["--device", "cpu", "fit", "--data"])
        .arg(&this_year)
        .arg("--extra-data")
        .arg(&last_year)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(&out);
    for o in [
        "model.n_mels=32",
        "model.hop_length=3200",
        "model.n_fft=512",
        "optim.epochs=1",
        "optim.batch_size=4",
        "run.debug_batches=2",
        "data.n_folds=2",
        "data.cache_seconds=10",
    ] {
        cmd.args(["--set", o]);
    }
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    let line = format!(
        "{}: 6 recordings added of 11 rows (3 of other species, 2 duplicate Xeno-canto",
        last_year.display()
    );
    assert!(stderr.contains(&line), "{stderr}");
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("fold0/best/card.json")).expect("card"),
    )
    .expect("json");
    let sources = &card["provenance"]["sources"];
    assert_eq!(
        sources[0]["path"],
        this_year.display().to_string(),
        "{card}"
    );
    assert_eq!(sources[0]["recordings"], this.len(), "{card}");
    assert_eq!(sources[1]["recordings"], 6, "{card}");
    assert_eq!(card["labels"].as_array().expect("labels").len(), 60);
}
