//! Pseudo-labelling sharded on a real scheduler: a single-node Slurm cluster
//! (scripts/slurm-single-node.sh: Debian's slurm-wlm and munge) runs `birdclef-train
//! pseudo-label --shard auto` as an `sbatch --array` job; the merged shards must equal one
//! unsharded run. Skips, saying why, only where Slurm cannot be installed (no root, no apt).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use birdclef::{bin, h5_dump, pseudo_fixture, run, scratch_dir};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-single-node.sh")
}

/// Stops the daemons this test started, however the test ends.
struct Cluster(PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn pseudo_labelling_as_a_slurm_array_merges_to_the_unsharded_file() {
    let (code, _, err) = run(Command::new("bash").arg(script()).arg("install"));
    if code == 3 {
        println!("skipped: Slurm cannot be installed on this machine: {err}");
        return;
    }
    assert_eq!(code, 0, "installing Slurm failed: {err}");

    let dir = scratch_dir("slurm-pseudo");
    let fx = pseudo_fixture(&dir);
    let full = dir.join("full.h5");
    let train = bin("birdclef-train");
    let (code, _, err) = run(Command::new(&train)
        .args(["--device", "cpu", "pseudo-label", "--teacher"])
        .arg(&fx.teacher_a)
        .arg("--teacher")
        .arg(&fx.teacher_b)
        .arg("--soundscapes")
        .arg(&fx.soundscapes)
        .arg("--out")
        .arg(&full));
    assert_eq!(code, 0, "{err}");

    let state = dir.join("slurm");
    std::fs::create_dir_all(&state).expect("state dir");
    let (code, out, err) = run(Command::new("bash").arg(script()).arg("start").arg(&state));
    let _cluster = Cluster(state.clone());
    assert!(
        code == 0 && out.contains("ready"),
        "Slurm did not start: {err}"
    );

    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).expect("shard dir");
    let job = dir.join("job.sh");
    std::fs::write(
        &job,
        format!(
            "#!/bin/bash\nset -euo pipefail\nexec '{}' --device cpu pseudo-label \
             --teacher '{}' --teacher '{}' --soundscapes '{}' --shard auto \
             --out \"{}/p${{SLURM_ARRAY_TASK_ID}}.h5\"\n",
            train.display(),
            fx.teacher_a.display(),
            fx.teacher_b.display(),
            fx.soundscapes.display(),
            shards.display()
        ),
    )
    .expect("job script");
    let (code, out, err) = run(Command::new("sbatch")
        .arg("--parsable")
        .arg("--array=0-2")
        .arg(format!("--output={}/task-%a.log", shards.display()))
        .arg(&job));
    assert_eq!(code, 0, "sbatch failed: {err}");
    let job_id = out.trim().split(';').next().unwrap_or_default().to_string();
    assert!(!job_id.is_empty(), "sbatch gave no job id: {out}");

    // Finished jobs leave squeue's list (or squeue stops knowing them).
    let start = Instant::now();
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-j", &job_id])
            .output()
            .expect("squeue");
        if !q.status.success() || q.stdout.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the array job did not finish in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let outputs: Vec<PathBuf> = (0..3).map(|k| shards.join(format!("p{k}.h5"))).collect();
    for (k, p) in outputs.iter().enumerate() {
        let log = std::fs::read_to_string(shards.join(format!("task-{k}.log"))).unwrap_or_default();
        assert!(
            p.is_file(),
            "array task {k} wrote no {}:\n{log}",
            p.display()
        );
        assert_eq!(h5_dump(p)["attrs"]["shard"], format!("{k}/3"), "{log}");
    }

    let merged = dir.join("merged.h5");
    let (code, _, err) = run(Command::new(&train)
        .arg("pseudo-merge")
        .arg("--out")
        .arg(&merged)
        .args(&outputs));
    assert_eq!(code, 0, "{err}");
    let (mut a, mut b) = (h5_dump(&merged), h5_dump(&full));
    for v in [&mut a, &mut b] {
        if let Some(attrs) = v["attrs"].as_object_mut() {
            attrs.remove("shard");
        }
    }
    assert_eq!(
        a, b,
        "the merged Slurm shards differ from the unsharded run"
    );
}
