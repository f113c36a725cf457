//! Finding and initialising the ONNX Runtime shared library (`ort`'s `load-dynamic` feature).
//!
//! `birdclef-infer` is not linked against ONNX Runtime; it opens `libonnxruntime.so` at run time.
//! [`locate`] decides which file, in this order:
//!
//! 1. `--ort-lib FILE` on the command line;
//! 2. the `ORT_DYLIB_PATH` environment variable (the name `ort` itself uses);
//! 3. `libonnxruntime.so` in the executable's own directory (where `birdclef-infer kit` puts it);
//! 4. the project-local environment made by `scripts/setup.sh`: `.env/libonnxruntime.so` in the
//!    workspace, found by walking up from the executable's directory (so `target/release/…` and a
//!    copied workspace work) and via the workspace this binary was compiled in;
//! 5. as a last resort, the `capi/libonnxruntime.so*` that pip's `onnxruntime` wheel ships, in the
//!    `site-packages` (or Debian's `dist-packages`) of an active virtual environment
//!    (`VIRTUAL_ENV`), of every Python installation whose `bin/python3*` is on `PATH`, and of the
//!    user's `~/.local`. Found by reading directories: Python itself is never run.
//!
//! An explicit choice (1 or 2) that does not exist is an error naming it: we never silently fall
//! through to another library. [`init`] loads the library and creates the process-wide ORT
//! environment once; [`doctor`] describes what was found. Failures are an [`OrtError`]; one that
//! concerns the library file itself wraps a [`LibraryError`] naming it.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// File name of the library in the project-local environment (a symlink made by setup.sh).
const PROJECT_LIB: &str = ".env/libonnxruntime.so";

/// File name of the library beside the executable (where `birdclef-infer kit` puts it).
pub const BESIDE_LIB: &str = "libonnxruntime.so";

/// How the fix is phrased in every "not found" error.
const HOW_TO_FIX: &str = "To fix: run scripts/setup.sh in the workspace (it creates \
.env/libonnxruntime.so), or pass --ort-lib /path/to/libonnxruntime.so.1.31.1, or set \
ORT_DYLIB_PATH to that file (pip's onnxruntime==1.31.1 ships it as \
onnxruntime/capi/libonnxruntime.so.1.31.1).";

/// Why ONNX Runtime could not be found, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrtError {
    /// `--ort-lib` or `ORT_DYLIB_PATH` names nothing; we do not fall through to another library.
    #[error(
        "{via} names {path}, which does not exist. Point it at libonnxruntime.so* (pip's \
         onnxruntime==1.31.1 ships onnxruntime/capi/libonnxruntime.so.1.31.1), or drop it to \
         use .env/libonnxruntime.so made by scripts/setup.sh"
    )]
    Missing {
        /// The rule that named it ([`Source::CliFlag`] or [`Source::EnvVar`]).
        via: Source,
        /// The path it names (absolute).
        path: PathBuf,
    },
    /// `--ort-lib` or `ORT_DYLIB_PATH` names a symbolic link whose target does not exist.
    #[error("{via} names {path}, a symlink whose target does not exist (fix or remove {via})")]
    DanglingLink {
        /// The rule that named it ([`Source::CliFlag`] or [`Source::EnvVar`]).
        via: Source,
        /// The link (absolute).
        path: PathBuf,
    },
    /// No rule of the search order found a library.
    #[error(
        "ONNX Runtime (libonnxruntime.so) not found. Looked at, in order:{}\n{HOW_TO_FIX}",
        numbered(.looked)
    )]
    NotFound {
        /// Each place looked at and what was there, in search order.
        looked: Vec<String>,
    },
    /// A library was found but could not be loaded.
    #[error("ONNX Runtime found via {via} could not be used")]
    Unusable {
        /// The rule that found it.
        via: Source,
        /// Why (it names the file; boxed: it is large, and rare).
        #[source]
        cause: Box<LibraryError>,
    },
    /// [`environment`] was called before a successful [`init`].
    #[error("ONNX Runtime is not initialised: call ort_env::init first")]
    NotInitialised,
}

/// Why one ONNX Runtime library file could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LibraryError {
    /// The file cannot be read.
    #[error("cannot read ONNX Runtime library {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        cause: std::io::Error,
    },
    /// A directory was given.
    #[error(
        "{path} is a directory, not the ONNX Runtime library (pass the libonnxruntime.so* file)"
    )]
    Directory {
        /// The directory.
        path: PathBuf,
    },
    /// The file has no ELF header (checked before the dynamic loader sees it, on Linux).
    #[error(
        "{path} is not a shared library (no ELF header); expected libonnxruntime.so from ONNX \
         Runtime 1.{}",
        ort::MINOR_VERSION
    )]
    NotElf {
        /// The file.
        path: PathBuf,
    },
    /// `ort` could not load it: `dlopen` failed (a library for another architecture, missing
    /// dependencies), no `OrtGetApiBase` symbol, or a runtime older than `ort` needs. The
    /// message includes the loader's own reason, which `ort`'s error keeps out of its message
    /// and does not return as a source.
    #[error("cannot load ONNX Runtime from {path}: {}", load_error_text(.cause))]
    Open {
        /// The file.
        path: PathBuf,
        /// `ort`'s error.
        cause: ort::LoadDynamicError,
    },
    /// The library loaded but its environment could not be created. `ort`'s message (which
    /// already holds any cause it wraps, so it is not also a source).
    #[error("cannot load ONNX Runtime from {path}: {cause}")]
    Environment {
        /// The file.
        path: PathBuf,
        /// `ort`'s error.
        cause: ort::Error,
    },
    /// `ort` panicked while loading it (an `assert!` or `expect` inside `ort`, caught).
    #[error("cannot load ONNX Runtime from {path}")]
    Panicked {
        /// The file.
        path: PathBuf,
        /// The panic.
        #[source]
        panic: Panic,
    },
}

/// A panic inside `ort`, caught (see [`LibraryError::Panicked`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ort panicked: {message}")]
pub struct Panic {
    /// The panic's message (`"unknown panic"` when it carried none).
    pub message: String,
}

/// The places of [`OrtError::NotFound`], one numbered line each.
pub(crate) fn numbered(looked: &[String]) -> String {
    looked
        .iter()
        .enumerate()
        .map(|(i, place)| format!("\n  {}. {place}", i + 1))
        .collect()
}

/// Which rule of the search order found the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--ort-lib FILE`.
    CliFlag,
    /// The `ORT_DYLIB_PATH` environment variable.
    EnvVar,
    /// `libonnxruntime.so` in the executable's own directory (a submission kit).
    BesideExecutable,
    /// `.env/libonnxruntime.so` under a workspace root.
    ProjectEnv {
        /// The workspace root holding `.env/`.
        root: PathBuf,
        /// How that root was found.
        via: RootVia,
    },
    /// The pip `onnxruntime` package of a Python installation.
    Python,
}

/// How a candidate workspace root was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootVia {
    /// An ancestor of the running executable's directory.
    ExecutableAncestor,
    /// The workspace this binary was compiled in (`CARGO_MANIFEST_DIR/..`).
    BuildWorkspace,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CliFlag => f.write_str("--ort-lib"),
            Self::EnvVar => f.write_str("ORT_DYLIB_PATH"),
            Self::BesideExecutable => f.write_str("the executable's directory"),
            Self::ProjectEnv { root, via } => {
                let via = match via {
                    RootVia::ExecutableAncestor => "a parent directory of the executable",
                    RootVia::BuildWorkspace => "the workspace this binary was built in",
                };
                write!(
                    f,
                    "project environment {}/{PROJECT_LIB} ({via})",
                    root.display()
                )
            }
            Self::Python => f.write_str("a Python installation's onnxruntime package"),
        }
    }
}

/// A located ONNX Runtime library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The library file (absolute; may be a symlink).
    pub path: PathBuf,
    /// The rule that found it.
    pub source: Source,
}

/// Find the ONNX Runtime library without loading it; see the module docs for the order.
pub fn locate(cli_path: Option<&Path>) -> Result<Found, OrtError> {
    let env = std::env::var_os("ORT_DYLIB_PATH");
    let roots = project_roots();
    let beside = beside_executable(BESIDE_LIB);
    resolve_with(cli_path, env.as_deref(), beside.as_deref(), &roots, || {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
        python_candidates(&python_prefixes(
            std::env::var_os("PATH").as_deref(),
            venv.as_deref(),
            home.as_deref(),
        ))
    })
}

/// The loaded library and the process-wide environment.
struct Loaded {
    found: Found,
    environment: ort::environment::Environment,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// Locate ONNX Runtime, load it and create the process-wide ORT environment, once.
///
/// Idempotent: later calls return what the first successful call found and ignore `cli_path`
/// (ONNX Runtime cannot be unloaded or swapped within a process). A failed call may be retried.
pub fn init(cli_path: Option<&Path>) -> Result<Found, OrtError> {
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(l) = loaded.as_ref() {
        return Ok(l.found.clone());
    }
    let found = locate(cli_path)?;
    let environment = load(&found.path).map_err(|cause| OrtError::Unusable {
        via: found.source.clone(),
        cause: Box::new(cause),
    })?;
    *loaded = Some(Loaded {
        found: found.clone(),
        environment,
    });
    Ok(found)
}

/// The ORT environment created by [`init`], for `Session::builder(&env)`.
pub fn environment() -> Result<ort::environment::Environment, OrtError> {
    LOADED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|l| l.environment.clone())
        .ok_or(OrtError::NotInitialised)
}

/// Locate ONNX Runtime, initialise it and describe what was found.
pub fn doctor(cli_path: Option<&Path>) -> Result<String, OrtError> {
    let found = init(cli_path)?;
    let resolved = std::fs::canonicalize(&found.path).unwrap_or_else(|_| found.path.clone());
    // `ort` keeps the runtime's full version string (OrtApiBase::GetVersionString) private in
    // rc.15; its public `util::probe` calls it and returns the minor number. The patch number we
    // can only take from the file name (pip ships libonnxruntime.so.1.31.1).
    let probed_minor = catch_panic(|| ort::util::probe(&found.path)).ok().flatten();
    let file_version = version_from_file_name(&resolved);
    let version = describe_version(probed_minor, file_version.as_deref());
    let build_info = catch_panic(|| ort::info().to_string())
        .unwrap_or_else(|p| format!("unavailable ({})", p.message));

    let mut out = String::new();
    let mut row = |label: &str, value: &dyn fmt::Display| {
        out.push_str(&format!("{:<22}{value}\n", format!("{label}:")));
    };
    row("onnxruntime library", &found.path.display());
    if resolved != found.path {
        row("resolves to", &resolved.display());
    }
    row("found via", &found.source);
    row("onnxruntime version", &version);
    row("build info", &build_info);
    row(
        "ort crate needs",
        &format!(
            "onnxruntime >= 1.{} (ort 2.0.0-rc.15, load-dynamic)",
            ort::MINOR_VERSION
        ),
    );
    Ok(out.trim_end().to_string())
}

/// The version line of [`doctor`]: what the library reported, completed by the file name.
fn describe_version(probed_minor: Option<u32>, file_version: Option<&str>) -> String {
    let file_minor = file_version.and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok());
    match (probed_minor, file_version) {
        (Some(m), Some(v)) if file_minor == Some(m) => {
            format!("{v} (the library reports 1.{m}; patch level from the file name)")
        }
        (Some(m), Some(v)) => {
            format!("1.{m}.x (the library reports 1.{m}; the file name says {v} — renamed file?)")
        }
        (Some(m), None) => format!("1.{m}.x (reported by the library)"),
        (None, Some(v)) => format!("{v} (from the file name; the library did not report one)"),
        (None, None) => "unknown".to_string(),
    }
}

/// `1.31.1` from `…/libonnxruntime.so.1.31.1`; `None` when the name carries no numeric version.
fn version_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let (_, version) = name.split_once(".so.")?;
    let numeric = !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    numeric.then(|| version.to_string())
}

/// Load `path` with `ort` and build the environment; every failure becomes an error naming the file.
fn load(path: &Path) -> Result<ort::environment::Environment, LibraryError> {
    check_shared_library(path)?;
    // `ort::init_from` returns errors for the usual failures (dlopen fails — e.g. a text file or a
    // library for another architecture —, no `OrtGetApiBase` symbol, a runtime older than 1.31).
    // It still panics in a few places: an `assert!` when `OrtGetApiBase` returns null, and
    // `setup_api`'s `expect("Failed to initialize ORT API")` when the library reports a suitable
    // version but cannot provide API level 31. Those are caught here and reported as errors.
    let built = catch_panic(|| {
        ort::init_from(path)
            .map_err(|cause| LibraryError::Open {
                path: path.to_path_buf(),
                cause,
            })?
            .with_name("birdclef-infer")
            .with_telemetry(false)
            .build()
            .map_err(|cause| LibraryError::Environment {
                path: path.to_path_buf(),
                cause,
            })
    });
    built.unwrap_or_else(|panic| {
        Err(LibraryError::Panicked {
            path: path.to_path_buf(),
            panic,
        })
    })
}

/// `ort`'s load error with the loader's own reason: its `Display` for a failed `dlopen` says only
/// "dlopen failed" and keeps `dlerror()`'s text (e.g. "invalid ELF header") in the source chain.
fn load_error_text(e: &ort::LoadDynamicError) -> String {
    match e {
        ort::LoadDynamicError::Dlopen { error, .. } => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
        _ => e.to_string(),
    }
}

/// Reject what is certainly not a shared library before handing it to the dynamic loader, with a
/// message that says what the file is.
fn check_shared_library(path: &Path) -> Result<(), LibraryError> {
    let read = |cause| LibraryError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.is_dir() {
        return Err(LibraryError::Directory {
            path: path.to_path_buf(),
        });
    }
    if cfg!(target_os = "linux") {
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(read)?;
        if magic[..n] != *b"\x7fELF" {
            return Err(LibraryError::NotElf {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Run `f`, turning a panic into a [`Panic`] without the default hook printing it to stderr.
///
/// The panic hook is process-global; it is swapped only here, under a lock, and only during
/// start-up (init and doctor), before scoring threads exist.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    static HOOK: Mutex<()> = Mutex::new(());
    let _guard = HOOK.lock().unwrap_or_else(PoisonError::into_inner);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|payload| Panic {
        message: payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string()),
    })
}

/// Candidate workspace roots: ancestors of the executable's directory, then the build workspace.
pub(crate) fn project_roots() -> Vec<(PathBuf, RootVia)> {
    let exe = std::env::current_exe().ok();
    let build = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    roots_from(exe.as_deref(), build)
}

/// Pure part of [`project_roots`], deduplicated, in search order.
fn roots_from(exe: Option<&Path>, build_workspace: Option<PathBuf>) -> Vec<(PathBuf, RootVia)> {
    let mut roots: Vec<(PathBuf, RootVia)> = Vec::new();
    let ancestors = exe
        .and_then(Path::parent)
        .into_iter()
        .flat_map(Path::ancestors)
        .map(|d| (d.to_path_buf(), RootVia::ExecutableAncestor));
    for (dir, via) in ancestors.chain(build_workspace.map(|d| (d, RootVia::BuildWorkspace))) {
        if !roots.iter().any(|(r, _)| *r == dir) {
            roots.push((dir, via));
        }
    }
    roots
}

/// The installation prefixes where a pip package may live, in search order, without duplicates:
/// `VIRTUAL_ENV`, the parent of every `PATH` directory holding a `python3*` executable, and
/// `HOME/.local`.
pub(crate) fn python_prefixes(
    path: Option<&OsStr>,
    venv: Option<&Path>,
    home: Option<&Path>,
) -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = venv.map(Path::to_path_buf).into_iter().collect();
    for dir in path.map(std::env::split_paths).into_iter().flatten() {
        let has_python = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("python3") && e.path().is_file()
            })
        });
        if let (true, Some(prefix)) = (has_python, dir.parent()) {
            prefixes.push(prefix.to_path_buf());
        }
    }
    prefixes.extend(home.map(|h| h.join(".local")));
    let mut seen = std::collections::HashSet::new();
    prefixes.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    prefixes
}

/// The ONNX Runtime libraries of the pip `onnxruntime` packages under `prefixes`
/// (`PREFIX/lib/python3*/{site,dist}-packages/onnxruntime/capi/libonnxruntime.so*`), newest
/// Python first, read from the directories alone. The error is a line of
/// [`OrtError::NotFound`]'s list, so it is text.
fn python_candidates(prefixes: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    pip_libraries(prefixes, "onnxruntime/capi", "libonnxruntime.so")
}

/// The files named `lib*` in `package_dir` of the pip packages under `prefixes`
/// (`PREFIX/lib/python3*/{site,dist}-packages/PACKAGE_DIR/LIB*`), newest Python first, read
/// from the directories alone; the error says where it looked, as one line.
pub(crate) fn pip_libraries(
    prefixes: &[PathBuf],
    package_dir: &str,
    lib: &str,
) -> Result<Vec<PathBuf>, String> {
    fn sorted_entries(dir: &Path, starts_with: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(starts_with))
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }
    let mut libs = Vec::new();
    for prefix in prefixes {
        // python3.9 sorts after python3.11 by name; by version, newest first.
        let mut pythons = sorted_entries(&prefix.join("lib"), "python3");
        pythons.sort_by_key(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            std::cmp::Reverse(
                name.trim_start_matches("python3.")
                    .parse::<u32>()
                    .unwrap_or(0),
            )
        });
        for python in pythons {
            for packages in ["site-packages", "dist-packages"] {
                libs.extend(sorted_entries(
                    &python.join(packages).join(package_dir),
                    lib,
                ));
            }
        }
    }
    if libs.is_empty() {
        let places: Vec<String> = prefixes.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "no lib/python3*/{{site,dist}}-packages/{package_dir}/{lib}* under {}",
            if places.is_empty() {
                "any Python installation (none on PATH)".to_string()
            } else {
                places.join(", ")
            }
        ));
    }
    Ok(libs)
}

/// [`resolve_with`] for a binary with no library beside it.
#[cfg(test)]
fn resolve(
    cli: Option<&Path>,
    env: Option<&OsStr>,
    roots: &[(PathBuf, RootVia)],
    python: impl FnOnce() -> Result<Vec<PathBuf>, String>,
) -> Result<Found, OrtError> {
    resolve_with(cli, env, None, roots, python)
}

/// `NAME` in the running executable's directory (a submission kit ships its libraries there).
pub(crate) fn beside_executable(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(name))
}

/// The search itself, with every outside input passed in, so that it can be tested.
///
/// `env` is the value of `ORT_DYLIB_PATH` (empty counts as unset, as in `ort`); `beside` is
/// [`BESIDE_LIB`] in the executable's directory; `python` is only called when nothing earlier
/// matched.
fn resolve_with(
    cli: Option<&Path>,
    env: Option<&OsStr>,
    beside: Option<&Path>,
    roots: &[(PathBuf, RootVia)],
    python: impl FnOnce() -> Result<Vec<PathBuf>, String>,
) -> Result<Found, OrtError> {
    if let Some(p) = cli {
        return explicit(p, Source::CliFlag);
    }
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        return explicit(Path::new(v), Source::EnvVar);
    }

    let mut looked = vec![
        "--ort-lib: not given".to_string(),
        "ORT_DYLIB_PATH: not set".to_string(),
    ];
    if let Some(candidate) = beside {
        if candidate.is_file() {
            return Ok(Found {
                path: candidate.to_path_buf(),
                source: Source::BesideExecutable,
            });
        }
        looked.push(format!("{}: missing", candidate.display()));
    }
    for (root, via) in roots {
        let candidate = root.join(PROJECT_LIB);
        if candidate.is_file() {
            return Ok(Found {
                path: candidate,
                source: Source::ProjectEnv {
                    root: root.clone(),
                    via: *via,
                },
            });
        }
        looked.push(format!("{}: {}", candidate.display(), absent(&candidate)));
    }
    if let Some(path) = first_pip_file(python(), "onnxruntime", "libonnxruntime.so", &mut looked) {
        return Ok(Found {
            path,
            source: Source::Python,
        });
    }
    Err(OrtError::NotFound { looked })
}

/// What is at a project-environment path that holds no library: a dangling symlink (the venv it
/// pointed into is gone) or nothing.
pub(crate) fn absent(path: &Path) -> &'static str {
    if path.symlink_metadata().is_ok() {
        "a dangling symlink (was the venv removed? re-run scripts/setup.sh)"
    } else {
        "missing"
    }
}

/// The first of pip's `candidates` (the last rule of a library search) that is a file, made
/// absolute; otherwise why none was, added to `looked`. `package` names the pip package, `lib`
/// the library's file name.
pub(crate) fn first_pip_file(
    candidates: Result<Vec<PathBuf>, String>,
    package: &str,
    lib: &str,
    looked: &mut Vec<String>,
) -> Option<PathBuf> {
    match candidates {
        Ok(candidates) => {
            if let Some(p) = candidates.iter().find(|p| p.is_file()) {
                return Some(absolute(p));
            }
            looked.push(format!(
                "pip's {package} package: no {lib}* is a file (found {candidates:?})"
            ));
        }
        Err(e) => looked.push(format!("pip's {package} package: {e}")),
    }
    None
}

/// An explicitly named library must exist; never fall through to another one.
fn explicit(path: &Path, source: Source) -> Result<Found, OrtError> {
    let path = absolute(path);
    if path.symlink_metadata().is_err() {
        return Err(OrtError::Missing { via: source, path });
    }
    if !path.exists() {
        return Err(OrtError::DanglingLink { via: source, path });
    }
    Ok(Found { path, source })
}

/// `path` made absolute against the current directory, so that `ort` does not reinterpret a
/// relative path as relative to the executable.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    fn no_python() -> Result<Vec<PathBuf>, String> {
        Err("no lib/python3*/... under /opt/py".to_string())
    }

    fn python_must_not_run() -> Result<Vec<PathBuf>, String> {
        panic!("python fallback consulted although an earlier rule matched")
    }

    fn root(dir: &Path) -> Vec<(PathBuf, RootVia)> {
        vec![(dir.to_path_buf(), RootVia::ExecutableAncestor)]
    }

    #[test]
    fn cli_flag_wins_over_everything() {
        let t = TempDir::new("birdclef-ort-env");
        let cli = t.file("cli/libonnxruntime.so");
        let env = t.file("env/libonnxruntime.so");
        t.file(PROJECT_LIB);
        let found = resolve(
            Some(&cli),
            Some(env.as_os_str()),
            &root(&t.0),
            python_must_not_run,
        )
        .expect("found");
        assert_eq!(
            found,
            Found {
                path: cli,
                source: Source::CliFlag
            }
        );
    }

    #[test]
    fn missing_cli_path_is_an_error_not_a_fallthrough() {
        let t = TempDir::new("birdclef-ort-env");
        let env = t.file("env/libonnxruntime.so");
        t.file(PROJECT_LIB);
        let missing = t.0.join("nope/libonnxruntime.so");
        let err = resolve(
            Some(&missing),
            Some(env.as_os_str()),
            &root(&t.0),
            python_must_not_run,
        )
        .expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("--ort-lib"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
    }

    #[test]
    fn env_var_wins_over_project_env() {
        let t = TempDir::new("birdclef-ort-env");
        let env = t.file("env/libonnxruntime.so");
        t.file(PROJECT_LIB);
        let found = resolve(
            None,
            Some(env.as_os_str()),
            &root(&t.0),
            python_must_not_run,
        )
        .expect("found");
        assert_eq!(
            found,
            Found {
                path: env,
                source: Source::EnvVar
            }
        );
    }

    #[test]
    fn missing_env_var_path_is_an_error() {
        let t = TempDir::new("birdclef-ort-env");
        t.file(PROJECT_LIB);
        let missing = t.0.join("gone.so");
        let err = resolve(
            None,
            Some(missing.as_os_str()),
            &root(&t.0),
            python_must_not_run,
        )
        .expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("ORT_DYLIB_PATH"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
    }

    #[test]
    fn empty_env_var_counts_as_unset() {
        let t = TempDir::new("birdclef-ort-env");
        let lib = t.file(PROJECT_LIB);
        let found =
            resolve(None, Some(OsStr::new("")), &root(&t.0), python_must_not_run).expect("found");
        assert_eq!(found.path, lib);
    }

    #[test]
    fn project_env_is_found_in_the_first_root_that_has_it() {
        let t = TempDir::new("birdclef-ort-env");
        let lib = t.file(&format!("ws/{PROJECT_LIB}"));
        let roots = vec![
            (t.0.join("ws/target/release"), RootVia::ExecutableAncestor),
            (t.0.join("ws/target"), RootVia::ExecutableAncestor),
            (t.0.join("ws"), RootVia::ExecutableAncestor),
            (t.0.join("other"), RootVia::BuildWorkspace),
        ];
        let found = resolve(None, None, &roots, python_must_not_run).expect("found");
        assert_eq!(
            found,
            Found {
                path: lib,
                source: Source::ProjectEnv {
                    root: t.0.join("ws"),
                    via: RootVia::ExecutableAncestor
                }
            }
        );
    }

    #[test]
    fn library_beside_the_executable_wins_over_project_env_and_missing_one_is_listed() {
        let t = TempDir::new("birdclef-ort-env");
        let beside = t.file(&format!("kit/{BESIDE_LIB}"));
        t.file(PROJECT_LIB);
        let found = resolve_with(None, None, Some(&beside), &root(&t.0), python_must_not_run)
            .expect("found");
        assert_eq!(
            found,
            Found {
                path: beside,
                source: Source::BesideExecutable
            }
        );
        // ORT_DYLIB_PATH still comes first.
        let env = t.file("env/libonnxruntime.so");
        let found = resolve_with(
            None,
            Some(env.as_os_str()),
            Some(&t.0.join("kit").join(BESIDE_LIB)),
            &root(&t.0),
            python_must_not_run,
        )
        .expect("found");
        assert_eq!(found.source, Source::EnvVar);
        // Absent beside the executable: the project env is next, and a failure lists the place.
        let absent = t.0.join("bin").join(BESIDE_LIB);
        let found = resolve_with(None, None, Some(&absent), &root(&t.0), python_must_not_run)
            .expect("found");
        assert!(matches!(found.source, Source::ProjectEnv { .. }));
        let empty = TempDir::new("birdclef-ort-env");
        let err = resolve_with(None, None, Some(&absent), &root(&empty.0), no_python)
            .expect_err("nothing there");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("{}: missing", absent.display())),
            "{msg}"
        );
    }

    #[test]
    fn python_is_the_last_resort() {
        let t = TempDir::new("birdclef-ort-env");
        let lib = t.file("site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1");
        let listed = vec![t.0.join("capi/libonnxruntime.so.gone"), lib.clone()];
        let found = resolve(None, None, &root(&t.0), move || Ok(listed)).expect("found");
        assert_eq!(
            found,
            Found {
                path: lib,
                source: Source::Python
            }
        );
    }

    #[test]
    fn nothing_found_lists_every_place_and_the_fix() {
        let t = TempDir::new("birdclef-ort-env");
        // A dangling symlink in the second root.
        std::fs::create_dir_all(t.0.join("b/.env")).expect("mkdir");
        #[cfg(unix)]
        std::os::unix::fs::symlink(t.0.join("gone"), t.0.join("b").join(PROJECT_LIB))
            .expect("symlink");
        let roots = vec![
            (t.0.join("a"), RootVia::ExecutableAncestor),
            (t.0.join("b"), RootVia::BuildWorkspace),
        ];
        let msg = format!(
            "{:#}",
            resolve(None, None, &roots, no_python).expect_err("none")
        );
        assert!(msg.contains("--ort-lib: not given"), "{msg}");
        assert!(msg.contains("ORT_DYLIB_PATH: not set"), "{msg}");
        assert!(
            msg.contains(&t.0.join("a").join(PROJECT_LIB).display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains(&t.0.join("b").join(PROJECT_LIB).display().to_string()),
            "{msg}"
        );
        #[cfg(unix)]
        assert!(msg.contains("dangling symlink"), "{msg}");
        assert!(
            msg.contains("pip's onnxruntime package: no lib/python3*/... under /opt/py"),
            "{msg}"
        );
        assert!(msg.contains("scripts/setup.sh"), "{msg}");
        assert!(msg.contains("--ort-lib /path"), "{msg}");
    }

    #[test]
    fn pip_packages_are_found_by_reading_directories() {
        let t = TempDir::new("birdclef-ort-env");
        // Two installations on PATH, one without the package; a venv; a directory of PATH
        // without Python; ~/.local with the package for an older Python.
        t.file("usr/bin/python3");
        t.file("opt/conda/bin/python3.11");
        let conda = t.file(
            "opt/conda/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1",
        );
        t.file("tools/bin/ls");
        let venv =
            t.file("venv/lib/python3.12/site-packages/onnxruntime/capi/libonnxruntime.so.1.30.0");
        let old = t.file(
            "home/.local/lib/python3.9/site-packages/onnxruntime/capi/libonnxruntime.so.1.20.0",
        );
        let new = t.file(
            "home/.local/lib/python3.10/dist-packages/onnxruntime/capi/libonnxruntime.so.1.22.0",
        );
        let path = std::env::join_paths([
            t.0.join("usr/bin"),
            t.0.join("tools/bin"),
            t.0.join("opt/conda/bin"),
            t.0.join("usr/bin"),
        ])
        .expect("PATH");
        let prefixes = python_prefixes(
            Some(&path),
            Some(&t.0.join("venv")),
            Some(&t.0.join("home")),
        );
        assert_eq!(
            prefixes,
            [
                t.0.join("venv"),
                t.0.join("usr"),
                t.0.join("opt/conda"),
                t.0.join("home/.local")
            ]
        );
        assert_eq!(
            python_candidates(&prefixes).expect("found"),
            [venv, conda, new, old]
        );

        let err = python_candidates(&prefixes[1..2]).expect_err("none in /usr");
        assert!(
            err.contains(&t.0.join("usr").display().to_string()),
            "{err}"
        );
        let err = python_candidates(&[]).expect_err("no Python");
        assert!(err.contains("none on PATH"), "{err}");

        // The project venv made by scripts/setup.sh has onnxruntime; skip when it is absent.
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.env/venv/bin");
        if !venv.exists() {
            println!("SKIPPED: no {}", venv.display());
            return;
        }
        let found = python_candidates(&python_prefixes(Some(venv.as_os_str()), None, None))
            .expect("the project venv's onnxruntime");
        assert!(found.iter().all(|p| p.is_file()
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))));
    }

    #[test]
    fn roots_walk_up_from_the_executable_then_the_build_workspace() {
        let roots = roots_from(
            Some(Path::new("/ws/target/release/birdclef-infer")),
            Some(PathBuf::from("/ws")),
        );
        let dirs: Vec<_> = roots.iter().map(|(d, _)| d.display().to_string()).collect();
        assert_eq!(dirs, ["/ws/target/release", "/ws/target", "/ws", "/"]);
        assert!(roots.iter().all(|(_, v)| *v == RootVia::ExecutableAncestor));

        let roots = roots_from(Some(Path::new("/usr/bin/x")), Some(PathBuf::from("/ws")));
        assert_eq!(
            roots.last(),
            Some(&(PathBuf::from("/ws"), RootVia::BuildWorkspace))
        );
        assert_eq!(roots_from(None, None), vec![]);
    }

    #[test]
    fn text_file_is_rejected_before_dlopen() {
        let t = TempDir::new("birdclef-ort-env");
        let txt = t.file("libonnxruntime.so");
        let msg = format!("{:#}", check_shared_library(&txt).expect_err("text"));
        assert!(msg.contains(&txt.display().to_string()), "{msg}");
        assert!(msg.contains("not a shared library"), "{msg}");
        let msg = format!("{:#}", check_shared_library(&t.0).expect_err("dir"));
        assert!(msg.contains("directory"), "{msg}");
    }

    #[test]
    fn version_from_file_names() {
        let v = |s: &str| version_from_file_name(Path::new(s));
        assert_eq!(v("/x/libonnxruntime.so.1.31.1").as_deref(), Some("1.31.1"));
        assert_eq!(v("/x/libonnxruntime.so.1"), Some("1".to_string()));
        assert_eq!(v("/x/libonnxruntime.so"), None);
        assert_eq!(v("/x/libonnxruntime.so.bak"), None);
        assert_eq!(v("/x/libonnxruntime.so.1..2"), None);
    }

    #[test]
    fn version_description() {
        assert!(describe_version(Some(31), Some("1.31.1")).starts_with("1.31.1 "));
        assert!(describe_version(Some(31), None).starts_with("1.31.x "));
        assert!(describe_version(Some(31), Some("1.30.0")).starts_with("1.31.x "));
        assert_eq!(describe_version(None, None), "unknown");
    }

    #[test]
    fn errors_can_cross_threads_and_print_each_cause_once() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<OrtError>();
        send_sync::<LibraryError>();

        let e = OrtError::Unusable {
            via: Source::CliFlag,
            cause: Box::new(LibraryError::Panicked {
                path: PathBuf::from("/x/libonnxruntime.so"),
                panic: Panic {
                    message: "boom".into(),
                },
            }),
        };
        assert_eq!(
            crate::error_chain::error_chain(&e),
            "ONNX Runtime found via --ort-lib could not be used: cannot load ONNX Runtime from \
             /x/libonnxruntime.so: ort panicked: boom"
        );
        let t = TempDir::new("birdclef-ort-env");
        let txt = t.file("libonnxruntime.so");
        let e = load(&txt).expect_err("a text file");
        assert!(matches!(e, LibraryError::NotElf { .. }), "{e:?}");
        let e = load(&t.0.join("gone.so")).expect_err("no file");
        let text = crate::error_chain::error_chain(&e);
        assert!(
            text.starts_with("cannot read ONNX Runtime library ")
                && text.contains("gone.so: No such file"),
            "{text}"
        );
    }

    #[test]
    fn panics_become_errors() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let err = catch_panic(|| -> u8 { panic!("boom {}", 1) }).expect_err("panic");
        assert_eq!(err.message, "boom 1");
        assert_eq!(err.to_string(), "ort panicked: boom 1");
    }
}
