//! Train-side forward (tch, in `birdclef-train init`) against the exported ONNX file (ONNX Runtime,
//! in `birdclef-export`'s self-verification) for every architecture, then ONNX's own checker.
use std::process::Command;

use birdclef::{init_and_export, run, scratch_dir};

/// The max difference `birdclef-export` reports: "max |onnxruntime - reference| = 9.83e-7".
fn reported_diff(stdout: &str) -> Option<f64> {
    let rest = stdout.split("max |onnxruntime - reference| = ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn onnx_checker(path: &std::path::Path) -> Option<(i32, String)> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".env/venv/bin/python");
    if !python.exists() {
        println!(
            "skipped onnx.checker: {} not found (run scripts/setup.sh)",
            python.display()
        );
        return None;
    }
    let (code, out, err) = run(Command::new(python).args([
        "-c",
        "import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); print('ok')",
    ])
    .arg(path));
    Some((code, out + &err))
}

#[test]
fn every_architecture_exports_with_matching_outputs() {
    let dir = scratch_dir("init-export");
    for arch in [
        "efficientvit_b0",
        "efficientnet_b0",
        "mnasnet_100",
        "efficientvit_b0+sed",
        "mnasnet_100+sed",
    ] {
        let name = arch.replace('+', "_");
        let (onnx, stdout) = init_and_export(
            &dir,
            &name,
            &["--arch", arch, "--classes", "11", "--seed", "3"],
        );
        let diff = reported_diff(&stdout).unwrap_or_else(|| panic!("{arch}: no diff in {stdout}"));
        println!("{arch:22} max |ORT - tch| = {diff:.2e}");
        assert!(diff <= 1e-4, "{arch}: {diff}");
        if let Some((code, out)) = onnx_checker(&onnx) {
            assert_eq!(code, 0, "{arch}: onnx.checker: {out}");
        }
    }
}
