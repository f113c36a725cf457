//! Link libtorch_cuda into `birdclef-train` and give the binary an rpath to libtorch.
//!
//! torch-sys links only `torch_cpu`, `torch` and `c10`, and the binary is linked with
//! `--as-needed`, so `libtorch_cuda.so` — which nothing references by symbol, it registers the CUDA
//! backend from static initialisers — is dropped and `tch::Cuda::is_available()` is false even on
//! a GPU machine. Here we force it in with `--no-as-needed` (only when the libtorch we build against
//! has it; a CPU-only libtorch does not) and add an rpath to the libtorch lib dir, so the binary runs
//! without `LD_LIBRARY_PATH`. On another machine, `LD_LIBRARY_PATH` pointing at that machine's
//! `torch/lib` takes precedence over this rpath (it is emitted as DT_RUNPATH).
//!
//! torch-sys has `links = "tch"` and prints `cargo:libtorch_lib=<dir>`, which Cargo passes to the
//! build scripts of crates that depend on torch-sys *directly* as `DEP_TCH_LIBTORCH_LIB`.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/torch_version.rs");
    // These select which libtorch torch-sys builds against. When they change, torch-sys re-runs,
    // and so does this script; listing them keeps that explicit. (DEP_* variables are set by Cargo
    // itself and cannot be watched with rerun-if-env-changed.)
    for var in [
        "LIBTORCH",
        "LIBTORCH_LIB",
        "LIBTORCH_INCLUDE",
        "LIBTORCH_USE_PYTORCH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        // `cargo::error` fails the build with this message (no panic backtrace).
        println!(
            "cargo::error=DEP_TCH_LIBTORCH_LIB is not set: torch-sys did not report its libtorch lib \
             dir. birdclef-train must depend on torch-sys directly (train/Cargo.toml), and torch-sys \
             must find libtorch (LIBTORCH, set by .cargo/config.toml to .env/libtorch; run \
             scripts/setup.sh first)."
        );
        return;
    };
    let lib_dir = PathBuf::from(lib_dir);
    // For `birdclef-train doctor`: what this binary was built against.
    println!(
        "cargo::rustc-env=BIRDCLEF_LIBTORCH_LIB={}",
        lib_dir.display()
    );
    println!(
        "cargo::rustc-env=BIRDCLEF_LIBTORCH_VERSION={}",
        libtorch_version(&lib_dir).unwrap_or_else(|| "unknown".to_string())
    );
    let lock =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../Cargo.lock");
    println!("cargo::rerun-if-changed={}", lock.display());
    println!(
        "cargo::rustc-env=BIRDCLEF_TCH_VERSION={}",
        locked_version(&lock, "tch").unwrap_or_else(|| "unknown".to_string())
    );
    // Re-link when libtorch_cuda.so appears or disappears (a directory is checked by the mtimes
    // of its files).
    println!("cargo::rerun-if-changed={}", lib_dir.display());

    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        // The flags below are GNU ld flags; other platforms keep torch-sys's defaults.
        return;
    }

    println!("cargo::rustc-link-arg=-Wl,-rpath={}", lib_dir.display());
    let cuda = lib_dir.join("libtorch_cuda.so");
    if cuda.exists() {
        println!("cargo::rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo::rustc-link-arg=-ltorch_cuda");
        println!("cargo::rustc-link-arg=-Wl,--as-needed");
    } else {
        println!(
            "cargo::warning=no libtorch_cuda.so in {}: birdclef-train will be CPU-only",
            lib_dir.display()
        );
    }
}

include!("src/torch_version.rs");

/// The version of package `name` in the workspace's Cargo.lock.
fn locked_version(lock: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(lock).ok()?;
    let wanted = format!("name = \"{name}\"");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(version.trim_matches('"').to_string());
        }
    }
    None
}
