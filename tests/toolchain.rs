//! End-to-end checks of the toolchain: libtorch linking in `birdclef-train`, ONNX Runtime discovery
//! in `birdclef-infer`. They run the real binaries, as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

use birdclef::{bin, run};

/// The value of the `label:` row of a doctor report.
fn field<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label)?.strip_prefix(':'))
        .map(str::trim)
}

/// `birdclef-train doctor` with `LD_LIBRARY_PATH` unset, so only the build's rpath can help.
fn train_doctor() -> (i32, String, String) {
    run(Command::new(bin("birdclef-train"))
        .arg("doctor")
        .env_remove("LD_LIBRARY_PATH"))
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error:\n{stderr}"
    );
}

/// A unique scratch file path for this test process.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("birdclef-toolchain-{}-{name}", std::process::id()))
}

#[test]
fn train_doctor_runs_without_ld_library_path() {
    let (code, out, err) = train_doctor();
    assert_eq!(code, 0, "doctor failed:\n{err}");
    let available = field(&out, "cuda available").expect("cuda available row");
    assert!(["true", "false"].contains(&available), "{out}");
    assert!(field(&out, "cuda device count").is_some(), "{out}");
    assert!(field(&out, "cudnn available").is_some(), "{out}");
    assert!(
        field(&out, "device").is_some_and(|d| d.contains("requested auto")),
        "{out}"
    );
    assert!(
        err.contains("using device"),
        "doctor must log the device:\n{err}"
    );
}

#[test]
fn train_links_libtorch_cuda_via_rpath() {
    let (code, out, _) = train_doctor();
    assert_eq!(code, 0);
    let built = field(&out, "libtorch built against").expect("libtorch row");
    let lib_dir = Path::new(built.split_once(" in ").expect("'<version> in <dir>'").1);
    if !lib_dir.join("libtorch_cuda.so").exists() {
        println!(
            "SKIPPED libtorch_cuda assertion: {} has no libtorch_cuda.so (CPU-only libtorch)",
            lib_dir.display()
        );
        return;
    }
    let (code, ldd, err) = run(Command::new("ldd")
        .arg(bin("birdclef-train"))
        .env_remove("LD_LIBRARY_PATH"));
    assert_eq!(code, 0, "ldd failed: {err}");
    // The rpath names the lib dir as torch-sys saw it (maybe through a symlink); compare resolved.
    let lib_dir = std::fs::canonicalize(lib_dir).expect("libtorch lib dir");
    for lib in ["libtorch_cuda.so", "libtorch_cpu.so", "libc10.so"] {
        let line = ldd
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{lib} =>")))
            .unwrap_or_else(|| panic!("{lib} not linked:\n{ldd}"));
        let resolved = line
            .split("=>")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("resolved path");
        assert_ne!(resolved, "not", "{lib} not found: {line}");
        let resolved = std::fs::canonicalize(resolved).expect("resolved library exists");
        assert!(
            resolved.starts_with(&lib_dir),
            "{lib} resolved to {} instead of the rpath {}",
            resolved.display(),
            lib_dir.display()
        );
    }
    // And libtorch_cuda is really loaded at run time (not only listed).
    let loaded = field(&out, "libtorch_cuda").expect("libtorch_cuda row");
    assert_ne!(loaded, "not loaded", "{out}");
}

#[test]
fn train_device_cuda_fails_loudly_without_cuda() {
    let (_, out, _) = train_doctor();
    if field(&out, "cuda available") == Some("true") {
        println!("SKIPPED: CUDA is available here, so --device cuda must succeed");
        let (code, _, err) =
            run(Command::new(bin("birdclef-train")).args(["--device", "cuda", "doctor"]));
        assert_eq!(code, 0, "{err}");
        return;
    }
    let (code, _, err) = run(Command::new(bin("birdclef-train"))
        .args(["--device", "cuda", "doctor"])
        .env_remove("LD_LIBRARY_PATH"));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("CUDA is not available"), "{err}");
    assert_no_panic(&err);
}

#[test]
fn train_rejects_unknown_device() {
    let (code, _, err) =
        run(Command::new(bin("birdclef-train")).args(["--device", "tpu", "doctor"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn infer_doctor_finds_onnxruntime_1_31() {
    let (code, out, err) = run(Command::new(bin("birdclef-infer"))
        .arg("doctor")
        .env_remove("ORT_DYLIB_PATH"));
    assert_eq!(code, 0, "doctor failed:\n{err}");
    let version = field(&out, "onnxruntime version").expect("version row");
    assert!(
        version.starts_with("1.31."),
        "expected ONNX Runtime 1.31.x, got {version}"
    );
    assert!(field(&out, "found via").is_some(), "{out}");
    let lib = field(&out, "onnxruntime library").expect("library row");
    assert!(Path::new(lib).exists(), "{lib}");
}

#[test]
fn infer_missing_ort_lib_names_the_path() {
    let (code, _, err) =
        run(Command::new(bin("birdclef-infer")).args(["--ort-lib", "/nonexistent", "doctor"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent"), "{err}");
    assert_no_panic(&err);
}

#[test]
fn infer_missing_ort_dylib_path_is_not_ignored() {
    let (code, _, err) = run(Command::new(bin("birdclef-infer"))
        .arg("doctor")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}

#[test]
fn infer_text_file_as_ort_lib_fails_cleanly() {
    let file = scratch("libonnxruntime.so");
    std::fs::write(&file, "this is not a shared library\n").expect("write scratch file");
    let (code, _, err) = run(Command::new(bin("birdclef-infer"))
        .arg("--ort-lib")
        .arg(&file)
        .arg("doctor"));
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert_no_panic(&err);
}

#[test]
fn infer_other_shared_library_as_ort_lib_fails_cleanly() {
    // A real ELF shared library that is not ONNX Runtime: passes the header check, then dlopen
    // succeeds and the OrtGetApiBase lookup must fail with an error.
    let candidates = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib64/libm.so.6",
    ];
    let Some(libm) = candidates.iter().map(Path::new).find(|p| p.exists()) else {
        println!("SKIPPED: no libm.so.6 in {candidates:?}");
        return;
    };
    let (code, _, err) = run(Command::new(bin("birdclef-infer"))
        .arg("--ort-lib")
        .arg(libm)
        .arg("doctor"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("OrtGetApiBase"), "{err}");
    assert_no_panic(&err);
}
