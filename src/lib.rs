//! Helpers for the end-to-end tests in `tests/`, which drive the workspace's binaries.
//!
//! The binaries belong to other packages (`birdclef-train`, `birdclef-infer`, ...), so Cargo does
//! not give this package `CARGO_BIN_EXE_*` for them; [`bin`] finds (and builds) them instead.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, PoisonError};

/// Path of the workspace binary `name`, built for the same profile as the running test.
///
/// The test executable lives in `target/<profile>/deps/`, so the binary is looked for in
/// `target/<profile>/`. On the first call for each `name` in a process, this runs
/// `cargo build -p <name> --bin <name>` with that profile and target dir, so a test never runs a
/// stale binary (a no-op build takes about a second). In this workspace every binary has the name
/// of its package. Cross-compiled layouts (`target/<triple>/<profile>`) are not handled.
///
/// # Panics
/// If the build fails or the binary is still missing afterwards: these helpers are for tests.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    let test_exe = std::env::current_exe().expect("path of the running test executable");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps")
        .to_path_buf();
    let path = profile_dir.join(name);

    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if built
        .get_or_insert_with(HashSet::new)
        .insert(name.to_string())
    {
        build(name, &profile_dir);
    }
    assert!(
        path.is_file(),
        "{} is missing after `cargo build -p {name}`",
        path.display()
    );
    path
}

/// `cargo build -p <name> --bin <name>` into the target dir and profile that `profile_dir` implies.
fn build(name: &str, profile_dir: &Path) {
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("profile directory name");
    // The dev profile's directory is called `debug`.
    let profile = if profile == "debug" { "dev" } else { profile };
    let target_dir = profile_dir.parent().expect("target dir");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            name,
            "--bin",
            name,
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
    assert!(status.success(), "`cargo build -p {name}` failed: {status}");
}

thread_local! {
    /// What [`run`] ran on this thread since the last [`scratch_dir`]: printed by [`Scratch`]
    /// when the test fails.
    static RAN: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Run `cmd`, returning (exit code, stdout, stderr). The command and both streams are kept, and
/// printed after the panic message if the test fails (see [`Scratch`]).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run binary");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    RAN.with_borrow_mut(|ran| {
        ran.push(format!(
            "$ {cmd:?}\n--- exit {status}\n--- stdout\n{stdout}--- stderr\n{stderr}"
        ))
    });
    (status.code().unwrap_or(-1), stdout, stderr)
}

/// `../shared/data/<sub>` beside the repository, or `None` (with a printed notice) where it is
/// absent: tests that need real recordings skip there, and say so.
pub fn shared_data(sub: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: {} not found", dir.display());
        None
    }
}

/// A fresh, empty directory under the target dir for one test (`target/test-scratch/NAME-PID`).
pub fn scratch_dir(name: &str) -> Scratch {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    RAN.with_borrow_mut(Vec::clear);
    Scratch(dir)
}

/// A test's scratch directory, used as a [`Path`]. When the test passes it is removed (the
/// pipeline tests alone leave ~1.6 GB). When the test fails it is kept, and the free disk space
/// and the commands [`run`] ran since it was made are printed with their output: after the panic
/// message, so the failure comes first in a long log.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for Scratch {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("\nscratch directory kept: {}", self.0.display());
            // A full disk fails tests at whatever they write last: show the free space.
            if let Ok(df) = Command::new("df").arg("-h").arg(&self.0).output() {
                print!("{}", String::from_utf8_lossy(&df.stdout));
            }
            RAN.with_borrow(|ran| {
                println!("commands this test ran ({}):", ran.len());
                for r in ran {
                    println!("{r}");
                }
            });
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `birdclef-train --device cpu init <init_args> --out CKPT`; asserts it succeeds.
pub fn init(ckpt: &Path, init_args: &[&str]) {
    let (code, _, err) = run(Command::new(bin("birdclef-train"))
        .args(["--device", "cpu", "init"])
        .args(init_args)
        .arg("--out")
        .arg(ckpt));
    assert_eq!(code, 0, "{}: init failed: {err}", ckpt.display());
}

/// [`init`] into `DIR/NAME`, then `birdclef-export` of that checkpoint to `DIR/NAME.onnx`;
/// asserts both succeed. Returns the ONNX path and export's report (stdout, with the verified
/// difference).
pub fn init_and_export(dir: &Path, name: &str, init_args: &[&str]) -> (PathBuf, String) {
    let ckpt = dir.join(name);
    init(&ckpt, init_args);
    let onnx = dir.join(format!("{name}.onnx"));
    let (code, out, err) = run(Command::new(bin("birdclef-export"))
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("--out")
        .arg(&onnx));
    assert_eq!(code, 0, "{name}: export failed: {err}");
    (onnx, out)
}

/// A small synthetic competition with two untrained teachers, for the pseudo-labelling tests.
#[derive(Debug, Clone)]
pub struct PseudoFixture {
    /// The competition directory.
    pub data: PathBuf,
    /// Its `unlabeled_soundscapes/`.
    pub soundscapes: PathBuf,
    /// An efficientvit_b0 checkpoint directory (seed 1).
    pub teacher_a: PathBuf,
    /// `teacher_a` exported to ONNX.
    pub teacher_a_onnx: PathBuf,
    /// A mnasnet_100 checkpoint directory (seed 2).
    pub teacher_b: PathBuf,
}

/// Write [`PseudoFixture`] under `dir`: 4 species, 6 unlabeled soundscapes of 12 s (3 windows
/// each), teachers on a 64-mel, 161-frame input with the competition's labels.
pub fn pseudo_fixture(dir: &Path) -> PseudoFixture {
    use birdclef_models::synth::{write_competition, CompetitionSpec};
    let data = dir.join("data");
    let summary = write_competition(
        &data,
        &CompetitionSpec {
            species: 4,
            recordings_per_species: 3,
            recording_seconds: 4.0,
            unlabeled: 6,
            unlabeled_seconds: 12.0,
            test: 2,
            test_seconds: 10.0,
            seed: 5,
            domain_shift: 0.0,
        },
    )
    .expect("write the synthetic competition");
    let mut card: serde_json::Value =
        serde_json::from_str(birdclef_models::card::NVBIRD224_JSON).expect("built-in card");
    card["name"] = "pseudo-test".into();
    card["labels"] = summary.labels.clone().into();
    card["frontend"]["n_mels"] = 64.into();
    card["frontend"]["hop_length"] = 1000.into();
    card["frontend"]["n_fft"] = 1024.into();
    card["frontend"]["normalize"] = "image_standard".into();
    card["input_shape"] = serde_json::json!([1, 64, 161]);
    let card_path = dir.join("teacher.card.json");
    std::fs::write(&card_path, card.to_string()).expect("write the card");
    let card_arg = card_path.to_string_lossy().into_owned();
    let (teacher_a_onnx, _) = init_and_export(
        dir,
        "teacher_a",
        &[
            "--arch",
            "efficientvit_b0",
            "--card",
            &card_arg,
            "--seed",
            "1",
        ],
    );
    let teacher_b = dir.join("teacher_b");
    init(
        &teacher_b,
        &["--arch", "mnasnet_100", "--seed", "2", "--card", &card_arg],
    );
    PseudoFixture {
        soundscapes: data.join("unlabeled_soundscapes"),
        data,
        teacher_a: dir.join("teacher_a"),
        teacher_a_onnx,
        teacher_b,
    }
}

/// The project's Python (the venv `scripts/setup.sh` makes), for reading HDF5 with h5py.
pub fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".env/venv/bin/python")
}

/// Run `script` with the venv's Python and `args` as `sys.argv[1:]`; its standard output.
/// Panics with Python's standard error when it fails.
pub fn run_python(script: &str, args: &[&Path]) -> Vec<u8> {
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run the venv's python (scripts/setup.sh makes it)");
    assert!(
        out.status.success(),
        "python failed on {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every dataset and attribute of a pseudo-label file, read with h5py, as JSON:
/// `{"attrs": {...}, "<dataset>": {"shape": [...], "values": [...]}, ...}`.
pub fn h5_dump(path: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
import h5py, numpy as np
out = {}
with h5py.File(sys.argv[1], "r") as f:
    out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else np.asarray(v).item()) for k, v in f.attrs.items()}
    for name, d in f.items():
        v = d[()]
        if d.dtype.kind == "O":
            v = [s.decode() if isinstance(s, bytes) else s for s in d.asstr()[()]]
        else:
            v = np.asarray(v, dtype=np.float64).ravel().tolist()
        out[name] = {"shape": list(d.shape), "dtype": str(d.dtype), "values": v}
print(json.dumps(out))
"#;
    serde_json::from_slice(&run_python(script, &[path])).expect("h5py dump is JSON")
}
