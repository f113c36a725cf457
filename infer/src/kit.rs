//! `birdclef-infer kit`: a folder to upload as a Kaggle dataset and run in a notebook with the
//! internet off.
//!
//! The kit holds everything the submission needs and nothing from the machine that made it:
//!
//! ```text
//! KIT/birdclef-infer          this binary
//! KIT/libonnxruntime.so       ONNX Runtime (found beside the binary first)
//! KIT/openvino/               OpenVINO's C library, core, CPU plugin, ONNX frontend and TBB
//! KIT/models/*.onnx           the models, cards inside
//! KIT/run.sh                  scores the test soundscapes into /kaggle/working/submission.csv
//! KIT/notebook-cell.txt       the one notebook cell that copies the kit and runs it
//! ```
//!
//! Kaggle mounts datasets read-only and without the executable bit, so the cell copies the kit to
//! `/kaggle/working` first. The folder is built beside `--out` under a temporary name and renamed
//! into place when complete; an existing `--out` is never replaced.
use std::path::{Path, PathBuf};

use birdclef_models::card::Card;

use crate::engine::Engine;
use crate::model::{check_cards, read_card};
use crate::{openvino_env, ort_env};

/// The OpenVINO files a CPU run of an ONNX model needs (by name prefix), besides nothing else:
/// the C API, the core, the CPU plugin, the ONNX frontend, and TBB with its allocator and hwloc.
pub const OPENVINO_FILES: [&str; 7] = [
    "libopenvino_c.so",
    "libopenvino.so",
    "libopenvino_intel_cpu_plugin.so",
    "libopenvino_onnx_frontend.so",
    "libtbb.so",
    "libtbbmalloc.so",
    "libhwloc.so",
];

/// Why a kit could not be written. Every variant names the file or directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    /// `--out` exists (a kit is never written over anything).
    #[error("{0}: already exists; remove it or choose another --out (a kit is never written over anything)")]
    Exists(PathBuf),
    /// A model file cannot be used (the error names it).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Two models have the same file name (the kit keeps names).
    #[error("{first} and {second} have the same file name; rename one (the kit keeps file names)")]
    SameName {
        /// The first model.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
    /// The models cannot be ensembled.
    #[error(transparent)]
    Ensemble(#[from] crate::model::EnsembleError),
    /// ONNX Runtime was not found.
    #[error(transparent)]
    Ort(#[from] ort_env::OrtError),
    /// OpenVINO was not found, or its directory lacks a file the kit needs.
    #[error(transparent)]
    OpenVino(#[from] openvino_env::OpenVinoError),
    /// An OpenVINO file the kit needs is not in the directory of the library that was found.
    #[error("{dir}: no {name}* beside libopenvino_c.so (an incomplete OpenVINO installation?)")]
    OpenVinoFile {
        /// The directory.
        dir: PathBuf,
        /// The missing file's name prefix.
        name: String,
    },
    /// The operating system refused.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
}

/// What goes into a kit.
#[derive(Debug, Clone)]
pub struct KitOptions {
    /// The models (an ensemble when several).
    pub models: Vec<PathBuf>,
    /// The kit folder to create.
    pub out: PathBuf,
    /// The engine `run.sh` uses.
    pub engine: Engine,
    /// `--time-limit` of `run.sh` (e.g. `80m`), with `--strict`.
    pub time_limit: String,
    /// Further arguments `run.sh` passes (e.g. `--smooth 0.1,0.2,0.4,0.2,0.1`).
    pub extra_args: Vec<String>,
    /// Explicit ONNX Runtime library.
    pub ort_lib: Option<PathBuf>,
    /// Explicit OpenVINO library or directory.
    pub openvino_lib: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct KitReport {
    /// Files in the kit (relative paths), sorted.
    pub files: Vec<PathBuf>,
    /// Their total size in bytes.
    pub bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KitError + '_ {
    move |cause| KitError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The files of OpenVINO's directory `dir` that a kit needs: for each of [`OPENVINO_FILES`], the
/// file names that start with it (versioned names included; `libtbbmalloc_proxy` is not needed).
fn openvino_files(dir: &Path) -> Result<Vec<PathBuf>, KitError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for prefix in OPENVINO_FILES {
        let matching: Vec<&String> = names.iter().filter(|n| n.starts_with(prefix)).collect();
        if matching.is_empty() {
            return Err(KitError::OpenVinoFile {
                dir: dir.to_path_buf(),
                name: prefix.to_string(),
            });
        }
        out.extend(matching.into_iter().map(|n| dir.join(n)));
    }
    Ok(out)
}

/// Quote `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,/=:+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The kit's `run.sh`.
fn run_sh(opts: &KitOptions) -> String {
    let extra: Vec<String> = opts.extra_args.iter().map(|a| shell_quote(a)).collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" {}", extra.join(" "))
    };
    format!(
        r#"#!/bin/sh
# Written by `birdclef-infer kit`. Scores a BirdCLEF test set with the models in models/.
#
#   run.sh [COMPETITION_DIR [OUT.csv]]
#
# COMPETITION_DIR defaults to the only /kaggle/input/birdclef-* directory, OUT.csv to
# /kaggle/working/submission.csv. Where test_soundscapes/ holds no audio (a notebook's save run;
# the hidden test set is mounted only when Kaggle scores it), sample_submission.csv is copied
# to OUT.csv so that the notebook still succeeds.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
comp="${{1:-}}"
if [ -z "$comp" ]; then
  for d in /kaggle/input/birdclef-* /kaggle/input/competitions/birdclef-*; do
    [ -d "$d/test_soundscapes" ] && comp="$d" && break
  done
fi
[ -n "$comp" ] || {{ echo "run.sh: no /kaggle/input/birdclef-*/test_soundscapes; give the competition directory" >&2; exit 2; }}
out="${{2:-/kaggle/working/submission.csv}}"
sample="$comp/sample_submission.csv"
if ! find "$comp/test_soundscapes" -type f | grep -q .; then
  echo "run.sh: $comp/test_soundscapes holds no audio; copying $sample to $out"
  cp "$sample" "$out"
  exit 0
fi
set -- --engine {engine} --models "$here"/models/*.onnx --soundscapes "$comp/test_soundscapes" \
  --out "$out" --time-limit {limit} --strict{extra}
[ -f "$sample" ] && set -- "$@" --sample-submission "$sample"
exec "$here/birdclef-infer" "$@"
"#,
        engine = opts.engine,
        limit = shell_quote(&opts.time_limit),
    )
}

/// The notebook cell (a `%%bash` cell: no Python involved).
fn notebook_cell() -> &'static str {
    "%%bash
# Attach the kit as a dataset (here /kaggle/input/birdclef-kit), internet off, then run this cell.
set -e
rm -rf /kaggle/working/kit
cp -r /kaggle/input/birdclef-kit /kaggle/working/kit
chmod +x /kaggle/working/kit/birdclef-infer /kaggle/working/kit/run.sh
/kaggle/working/kit/run.sh
head -n 3 /kaggle/working/submission.csv
"
}

/// Copy `from` (following links) to `to`, keeping the executable bit.
fn copy(from: &Path, to: &Path) -> Result<u64, KitError> {
    std::fs::copy(from, to).map_err(|cause| KitError::Io {
        path: from.to_path_buf(),
        cause,
    })
}

/// Write the kit; see the module docs.
///
/// # Errors
///
/// [`KitError`] naming the file or directory; nothing is left at `opts.out` on failure.
pub fn write_kit(opts: &KitOptions) -> Result<KitReport, KitError> {
    if opts.out.symlink_metadata().is_ok() {
        return Err(KitError::Exists(opts.out.clone()));
    }
    // Models first: a wrong model is found before any library is looked for.
    let mut cards = Vec::new();
    for (i, m) in opts.models.iter().enumerate() {
        if let Some(first) = opts.models[..i]
            .iter()
            .find(|o| o.file_name() == m.file_name())
        {
            return Err(KitError::SameName {
                first: first.clone(),
                second: m.clone(),
            });
        }
        cards.push(read_card(m)?);
    }
    let named: Vec<(&Path, &Card)> = opts
        .models
        .iter()
        .map(PathBuf::as_path)
        .zip(cards.iter())
        .collect();
    check_cards(&named)?;
    let ort = ort_env::locate(opts.ort_lib.as_deref())?;
    let ov = openvino_env::locate(opts.openvino_lib.as_deref())?;
    let ov_real = std::fs::canonicalize(&ov.path).map_err(io(&ov.path))?;
    let ov_dir = ov_real.parent().unwrap_or(Path::new("."));
    let ov_files = openvino_files(ov_dir)?;
    let exe = std::env::current_exe().map_err(io(Path::new("birdclef-infer")))?;

    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "kit".into());
    let tmp = opts
        .out
        .with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        std::fs::create_dir(tmp.join("models")).map_err(io(&tmp))?;
        std::fs::create_dir(tmp.join("openvino")).map_err(io(&tmp))?;
        copy(&exe, &tmp.join("birdclef-infer"))?;
        copy(&ort.path, &tmp.join(ort_env::BESIDE_LIB))?;
        for f in &ov_files {
            let file_name = f.file_name().unwrap_or_default();
            copy(f, &tmp.join("openvino").join(file_name))?;
        }
        for m in &opts.models {
            copy(
                m,
                &tmp.join("models").join(m.file_name().unwrap_or_default()),
            )?;
        }
        let run = tmp.join("run.sh");
        std::fs::write(&run, run_sh(opts)).map_err(io(&run))?;
        set_executable(&run)?;
        set_executable(&tmp.join("birdclef-infer"))?;
        let cell = tmp.join("notebook-cell.txt");
        std::fs::write(&cell, notebook_cell()).map_err(io(&cell))?;
        // Another process may have made `out` meanwhile: rename never replaces a directory
        // that is not empty, and we checked for anything else above.
        if opts.out.symlink_metadata().is_ok() {
            return Err(KitError::Exists(opts.out.clone()));
        }
        std::fs::rename(&tmp, &opts.out).map_err(io(&opts.out))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let mut files = Vec::new();
    let mut bytes = 0;
    let mut stack = vec![opts.out.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                files.push(p.strip_prefix(&opts.out).unwrap_or(&p).to_path_buf());
            }
        }
    }
    files.sort();
    Ok(KitReport { files, bytes })
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<(), KitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> Result<(), KitError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("0.1,0.2,0.4"), "0.1,0.2,0.4");
        assert_eq!(shell_quote("--smooth"), "--smooth");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn run_sh_passes_engine_limit_and_extra_arguments() {
        let opts = KitOptions {
            models: vec![],
            out: PathBuf::from("kit"),
            engine: Engine::Openvino,
            time_limit: "80m".into(),
            extra_args: vec!["--smooth".into(), "0.2,0.6,0.2".into(), "a b".into()],
            ort_lib: None,
            openvino_lib: None,
        };
        let text = run_sh(&opts);
        assert!(text.starts_with("#!/bin/sh\n"), "{text}");
        assert!(
            text.contains(
                "set -- --engine openvino --models \"$here\"/models/*.onnx --soundscapes \
                 \"$comp/test_soundscapes\" \\\n  --out \"$out\" --time-limit 80m --strict \
                 --smooth 0.2,0.6,0.2 'a b'\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_missing_openvino_file_is_named() {
        let tmp = crate::test_dir::TempDir::new("birdclef-kit-ov");
        let dir = tmp.0.clone();
        for name in [
            "libopenvino_c.so.2640",
            "libopenvino.so.2640",
            "libopenvino_intel_cpu_plugin.so",
            "libtbb.so.12",
            "libtbbmalloc.so.2",
            "libtbbmalloc_proxy.so.2",
            "libhwloc.so.15",
            "libopenvino_intel_gpu_plugin.so",
        ] {
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        let e = openvino_files(&dir).expect_err("no onnx frontend");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no libopenvino_onnx_frontend.so* beside libopenvino_c.so (an incomplete \
                 OpenVINO installation?)",
                dir.display()
            )
        );
        std::fs::write(dir.join("libopenvino_onnx_frontend.so.2640"), b"x").expect("write");
        let names: Vec<String> = openvino_files(&dir)
            .expect("complete")
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
        // `libtbbmalloc_proxy` starts with `libtbbmalloc`, but not with `libtbbmalloc.so`.
        assert_eq!(
            names,
            [
                "libopenvino_c.so.2640",
                "libopenvino.so.2640",
                "libopenvino_intel_cpu_plugin.so",
                "libopenvino_onnx_frontend.so.2640",
                "libtbb.so.12",
                "libtbbmalloc.so.2",
                "libhwloc.so.15",
            ]
        );
    }
}
