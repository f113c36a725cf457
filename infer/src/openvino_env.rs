//! Finding and loading OpenVINO's C library (the `openvino` crate with `runtime-linking`), the
//! second inference engine beside ONNX Runtime ([`crate::ort_env`]).
//!
//! `birdclef-infer` is not linked against OpenVINO; it opens `libopenvino_c.so*` at run time.
//! OpenVINO then loads its CPU plugin and ONNX frontend from the directory that library is in,
//! so the whole `libs` directory of an OpenVINO installation must stay together. [`locate`]
//! decides which library, in this order:
//!
//! 1. `--openvino-lib FILE|DIR` on the command line;
//! 2. the `OPENVINO_DYLIB_PATH` environment variable (a file or a directory);
//! 3. `openvino/` in the executable's own directory (where `birdclef-infer kit` puts it);
//! 4. the project-local environment made by `scripts/setup.sh`: `.env/openvino/` (a symlink to
//!    pip's `openvino/libs`) in the workspace, found as [`crate::ort_env`] finds `.env/`;
//! 5. as a last resort, the `openvino/libs/libopenvino_c.so*` that pip's `openvino` wheel ships,
//!    in the same Python installations [`crate::ort_env`] reads (never running Python).
//!
//! A directory stands for the `libopenvino_c.so*` in it. An explicit choice (1 or 2) that does not
//! exist is an error naming it: we never fall through to another library. [`init`] loads the
//! library once per process; [`doctor`] describes what was found.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::ort_env::{self, RootVia};

/// The library's file name, up to its version suffix (pip ships `libopenvino_c.so.2640`).
const LIB: &str = "libopenvino_c.so";

/// The directory of the library in the project-local environment (a symlink made by setup.sh).
const PROJECT_DIR: &str = ".env/openvino";

/// The directory beside the executable that holds the libraries (`birdclef-infer kit`).
pub const BESIDE_DIR: &str = "openvino";

/// The environment variable naming the library or its directory.
pub const ENV_VAR: &str = "OPENVINO_DYLIB_PATH";

/// How the fix is phrased in every "not found" error.
const HOW_TO_FIX: &str = "To fix: run scripts/setup.sh in the workspace (it installs pip's \
openvino and links .env/openvino to its libs directory), or pass --openvino-lib with \
openvino/libs (the directory holding libopenvino_c.so.*), or set OPENVINO_DYLIB_PATH to it, or \
use --engine ort.";

/// Why OpenVINO could not be found, loaded or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenVinoError {
    /// `--openvino-lib` or `OPENVINO_DYLIB_PATH` names nothing, or a directory without the
    /// library; we do not fall through to another library.
    #[error("{via} names {path}, {what}. Point it at OpenVINO's libs directory (pip's openvino ships openvino/libs/libopenvino_c.so.*), or drop it to use .env/openvino made by scripts/setup.sh")]
    Missing {
        /// The rule that named it.
        via: Source,
        /// The path it names (absolute).
        path: PathBuf,
        /// What is there instead.
        what: String,
    },
    /// No rule of the search order found a library.
    #[error(
        "OpenVINO (libopenvino_c.so) not found. Looked at, in order:{}\n{HOW_TO_FIX}",
        ort_env::numbered(.looked)
    )]
    NotFound {
        /// Each place looked at and what was there, in search order.
        looked: Vec<String>,
    },
    /// A library was found but could not be loaded or refused to start.
    #[error("OpenVINO found via {via} could not be used: {path}: {message}")]
    Unusable {
        /// The rule that found it.
        via: Source,
        /// The library file.
        path: PathBuf,
        /// What the loader or OpenVINO said.
        message: String,
    },
    /// An OpenVINO call failed after the library was loaded.
    #[error("OpenVINO: {0}")]
    Runtime(String),
}

/// Which rule of the search order found the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--openvino-lib`.
    CliFlag,
    /// The `OPENVINO_DYLIB_PATH` environment variable.
    EnvVar,
    /// `openvino/` in the executable's directory.
    BesideExecutable,
    /// `.env/openvino` under a workspace root.
    ProjectEnv {
        /// The workspace root holding `.env/`.
        root: PathBuf,
    },
    /// The pip `openvino` package of a Python installation.
    Python,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CliFlag => f.write_str("--openvino-lib"),
            Self::EnvVar => f.write_str(ENV_VAR),
            Self::BesideExecutable => write!(f, "{BESIDE_DIR}/ in the executable's directory"),
            Self::ProjectEnv { root } => {
                write!(f, "project environment {}/{PROJECT_DIR}", root.display())
            }
            Self::Python => f.write_str("a Python installation's openvino package"),
        }
    }
}

/// A located OpenVINO C library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The library file (absolute; may be a symlink).
    pub path: PathBuf,
    /// The rule that found it.
    pub source: Source,
}

/// The `libopenvino_c.so*` file in `dir`: the unversioned name when present, else the highest
/// versioned one (by name).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(LIB))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    names
        .iter()
        .find(|p| p.file_name() == Some(OsStr::new(LIB)))
        .or(names.last())
        .cloned()
}

/// Find the library without loading it; see the module docs for the order.
pub fn locate(cli_path: Option<&Path>) -> Result<Found, OpenVinoError> {
    let env = std::env::var_os(ENV_VAR);
    let roots = ort_env::project_roots();
    let beside = ort_env::beside_executable(BESIDE_DIR);
    resolve(cli_path, env.as_deref(), beside.as_deref(), &roots, || {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
        ort_env::pip_libraries(
            &ort_env::python_prefixes(
                std::env::var_os("PATH").as_deref(),
                venv.as_deref(),
                home.as_deref(),
            ),
            "openvino/libs",
            LIB,
        )
    })
}

/// The search itself, with every outside input passed in, so that it can be tested.
fn resolve(
    cli: Option<&Path>,
    env: Option<&OsStr>,
    beside: Option<&Path>,
    roots: &[(PathBuf, RootVia)],
    python: impl FnOnce() -> Result<Vec<PathBuf>, String>,
) -> Result<Found, OpenVinoError> {
    if let Some(p) = cli {
        return explicit(p, Source::CliFlag);
    }
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        return explicit(Path::new(v), Source::EnvVar);
    }
    let mut looked = vec![
        "--openvino-lib: not given".to_string(),
        format!("{ENV_VAR}: not set"),
    ];
    let mut dirs: Vec<(PathBuf, Source)> = beside
        .map(|d| (d.to_path_buf(), Source::BesideExecutable))
        .into_iter()
        .collect();
    dirs.extend(roots.iter().map(|(root, _)| {
        (
            root.join(PROJECT_DIR),
            Source::ProjectEnv { root: root.clone() },
        )
    }));
    for (dir, source) in dirs {
        if let Some(path) = library_in(&dir) {
            return Ok(Found { path, source });
        }
        let state = if dir.is_dir() {
            format!("no {LIB}* in it")
        } else {
            ort_env::absent(&dir).to_string()
        };
        looked.push(format!("{}: {state}", dir.display()));
    }
    if let Some(path) = ort_env::first_pip_file(python(), "openvino", LIB, &mut looked) {
        return Ok(Found {
            path,
            source: Source::Python,
        });
    }
    Err(OpenVinoError::NotFound { looked })
}

/// An explicitly named library (or directory holding it) must exist.
fn explicit(path: &Path, via: Source) -> Result<Found, OpenVinoError> {
    let path = ort_env::absolute(path);
    let missing = |what: &str| OpenVinoError::Missing {
        via: via.clone(),
        path: path.clone(),
        what: what.to_string(),
    };
    if path.is_dir() {
        return library_in(&path)
            .map(|p| Found {
                path: p,
                source: via.clone(),
            })
            .ok_or_else(|| missing(&format!("a directory with no {LIB}* in it")));
    }
    if path.is_file() {
        return Ok(Found {
            path: path.clone(),
            source: via.clone(),
        });
    }
    Err(missing(if path.symlink_metadata().is_ok() {
        "a symlink whose target does not exist"
    } else {
        "which does not exist"
    }))
}

static LOADED: Mutex<Option<Found>> = Mutex::new(None);

/// Locate OpenVINO and load it, once per process.
///
/// Idempotent: later calls return what the first successful call found and ignore `cli_path`
/// (a library cannot be swapped within a process). A failed call may be retried.
pub fn init(cli_path: Option<&Path>) -> Result<Found, OpenVinoError> {
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = loaded.as_ref() {
        return Ok(found.clone());
    }
    let found = locate(cli_path)?;
    load(&found)?;
    *loaded = Some(found.clone());
    Ok(found)
}

/// Whether [`init`] has loaded a library.
pub fn is_loaded() -> bool {
    LOADED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// Load `found` and check that a CPU core starts; every failure names the file.
fn load(found: &Found) -> Result<(), OpenVinoError> {
    let unusable = |message: String| OpenVinoError::Unusable {
        via: found.source.clone(),
        path: found.path.clone(),
        message,
    };
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(&found.path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| unusable(format!("cannot read it: {e}")))?;
    if cfg!(target_os = "linux") && magic[..n] != *b"\x7fELF" {
        return Err(unusable("not a shared library (no ELF header)".into()));
    }
    // OpenVINO finds its plugins and frontends beside the library *as opened*: a symlink to the
    // file (not to its directory) would hide them, so open the real file.
    let real = std::fs::canonicalize(&found.path).unwrap_or_else(|_| found.path.clone());
    // `openvino-sys` parses the library's version with `unwrap`; a foreign library could panic.
    let loaded = ort_env::catch_panic(|| openvino_sys::library::load_from(&real))
        .map_err(|p| unusable(format!("the bindings panicked: {}", p.message)))?;
    loaded.map_err(unusable)?;
    openvino::Core::new().map_err(|e| unusable(format!("cannot start an OpenVINO core: {e}")))?;
    Ok(())
}

/// Locate and load OpenVINO, and describe what was found: the file, the rule, the version and
/// the CPU it will run on.
pub fn doctor(cli_path: Option<&Path>) -> Result<String, OpenVinoError> {
    let found = init(cli_path)?;
    let resolved = std::fs::canonicalize(&found.path).unwrap_or_else(|_| found.path.clone());
    let version = openvino::version();
    let cpu = openvino::Core::new()
        .map_err(|e| OpenVinoError::Runtime(e.to_string()))
        .and_then(|core| {
            core.get_property(
                &openvino::DeviceType::CPU,
                &openvino::PropertyKey::DeviceFullName,
            )
            .map_err(|e| OpenVinoError::Runtime(e.to_string()))
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"));
    let mut out = String::new();
    let mut row = |label: &str, value: &dyn fmt::Display| {
        out.push_str(&format!("{:<22}{value}\n", format!("{label}:")));
    };
    row("openvino library", &found.path.display());
    if resolved != found.path {
        row("resolves to", &resolved.display());
    }
    row("found via", &found.source);
    row("openvino version", &version.build_number);
    row("openvino CPU device", &cpu);
    row(
        "openvino crate needs",
        &"OpenVINO >= 2025.1 (openvino 0.11, runtime linking)",
    );
    Ok(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    fn python_must_not_run() -> Result<Vec<PathBuf>, String> {
        panic!("the Python fallback must not be consulted")
    }

    #[test]
    fn the_search_order_is_flag_env_beside_project_python() {
        let t = TempDir::new("birdclef-ov-env");
        let flag_dir = t.0.join("flag");
        let flagged = t.file("flag/libopenvino_c.so.2640");
        t.file("flag/libopenvino_c.so.2510");
        let beside = t.0.join("kit/openvino");
        let in_kit = t.file("kit/openvino/libopenvino_c.so.2640");
        let root = t.0.join("ws");
        let in_project = t.file("ws/.env/openvino/libopenvino_c.so.2640");
        let roots = vec![(root.clone(), RootVia::BuildWorkspace)];

        // A directory stands for its newest library; the flag beats everything.
        let f = resolve(
            Some(&flag_dir),
            Some(OsStr::new("/nowhere")),
            Some(&beside),
            &roots,
            python_must_not_run,
        )
        .expect("flag");
        assert_eq!((f.path, f.source), (flagged.clone(), Source::CliFlag));
        let f = resolve(
            None,
            Some(flagged.as_os_str()),
            Some(&beside),
            &roots,
            python_must_not_run,
        )
        .expect("env");
        assert_eq!((f.path, f.source), (flagged, Source::EnvVar));
        // An empty variable is unset; the kit's directory comes before the project's.
        let f = resolve(
            None,
            Some(OsStr::new("")),
            Some(&beside),
            &roots,
            python_must_not_run,
        )
        .expect("beside");
        assert_eq!((f.path, f.source), (in_kit, Source::BesideExecutable));
        let f = resolve(None, None, None, &roots, python_must_not_run).expect("project");
        assert_eq!(
            (f.path, f.source),
            (in_project, Source::ProjectEnv { root })
        );
        let pip = t.file("py/lib/python3.11/site-packages/openvino/libs/libopenvino_c.so.2640");
        let listed = vec![pip.clone()];
        let f = resolve(None, None, None, &[], move || Ok(listed)).expect("python");
        assert_eq!((f.path, f.source), (pip, Source::Python));
    }

    #[test]
    fn an_explicit_choice_that_is_wrong_is_an_error_naming_it() {
        let t = TempDir::new("birdclef-ov-env");
        let empty = t.0.join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let e = resolve(Some(&empty), None, None, &[], python_must_not_run).expect_err("empty");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "--openvino-lib names {}, a directory with no libopenvino_c.so* in it",
                empty.display()
            )),
            "{text}"
        );
        let gone = t.0.join("gone.so");
        let e = resolve(None, Some(gone.as_os_str()), None, &[], python_must_not_run)
            .expect_err("gone");
        assert!(
            e.to_string().starts_with(&format!(
                "OPENVINO_DYLIB_PATH names {}, which does not exist",
                gone.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn nothing_found_lists_every_place_in_order() {
        let t = TempDir::new("birdclef-ov-env");
        let beside = t.0.join("kit/openvino");
        std::fs::create_dir_all(&beside).expect("mkdir");
        let roots = vec![(t.0.join("ws"), RootVia::ExecutableAncestor)];
        let e = resolve(None, None, Some(&beside), &roots, || {
            Err(
                "no lib/python3*/{site,dist}-packages/openvino/libs/libopenvino_c.so* under /usr"
                    .into(),
            )
        })
        .expect_err("none");
        let text = e.to_string();
        let expected = format!(
            "OpenVINO (libopenvino_c.so) not found. Looked at, in order:\n  1. --openvino-lib: not given\n  2. OPENVINO_DYLIB_PATH: not set\n  3. {}: no libopenvino_c.so* in it\n  4. {}: missing\n  5. pip's openvino package: no lib/python3*/{{site,dist}}-packages/openvino/libs/libopenvino_c.so* under /usr\n",
            beside.display(),
            t.0.join("ws/.env/openvino").display()
        );
        assert!(text.starts_with(&expected), "{text}");
        assert!(text.ends_with("or use --engine ort."), "{text}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_naming_it() {
        let t = TempDir::new("birdclef-ov-env");
        let fake = t.file("libopenvino_c.so.2640");
        let found = Found {
            path: fake.clone(),
            source: Source::CliFlag,
        };
        let e = load(&found).expect_err("text file");
        assert_eq!(
            e.to_string(),
            format!(
                "OpenVINO found via --openvino-lib could not be used: {}: not a shared library \
                 (no ELF header)",
                fake.display()
            )
        );
    }
}
