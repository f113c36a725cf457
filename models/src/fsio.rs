//! Output files and directories, the one place every binary writes through.
//!
//! Three rules, for every writer of every binary:
//!
//! - **Checked before the work.** [`check_output_file`] and [`check_output_dir`] say whether a path
//!   can be written (its directory exists, it is not a directory, or not a file) before hours of
//!   scoring or training are spent on a result that could not be kept.
//! - **Written atomically.** [`write_atomic`] and [`AtomicFile`] fill a temporary sibling and rename
//!   it into place, so a reader never sees half a file; [`write_dir_atomic`] does the same for a
//!   directory (a checkpoint).
//! - **Never replacing what a path names when it is not a regular file.** A symbolic link is
//!   followed and its target written (the link stays a link); a device, FIFO or socket
//!   (`/dev/null`, `/dev/stdout`, a named pipe) is written directly, never renamed over.
//!
//! [`refuse_overwriting`] refuses an output that is one of the run's inputs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why an output path cannot be written. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The directory the file would go in does not exist.
    #[error("{path}: the directory {dir} does not exist")]
    NoDirectory {
        /// The output path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// What should be the file's directory is something else.
    #[error("{path}: {dir} is not a directory")]
    ParentNotDirectory {
        /// The output path.
        path: PathBuf,
        /// What should be its directory.
        dir: PathBuf,
    },
    /// A file output names a directory.
    #[error("{path}: is a directory, not a file")]
    IsDirectory {
        /// The output path.
        path: PathBuf,
    },
    /// A directory output names something that is not a directory.
    #[error("{path}: exists and is not a directory")]
    NotDirectory {
        /// The output path.
        path: PathBuf,
    },
    /// Symbolic links that never end in a real path.
    #[error("{path}: too many levels of symbolic links")]
    LinkLoop {
        /// The output path.
        path: PathBuf,
    },
    /// The output is one of the run's inputs.
    #[error("{output}: is the same file as the input {input}; refusing to overwrite it")]
    IsInput {
        /// The output path.
        output: PathBuf,
        /// The input it names.
        input: PathBuf,
    },
    /// The operating system refused.
    #[error("{path}: {cause}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause (part of the message, so not also a `source`: `{:#}` would repeat it).
        cause: std::io::Error,
    },
}

impl OutputError {
    /// The output path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::NoDirectory { path, .. }
            | Self::ParentNotDirectory { path, .. }
            | Self::IsDirectory { path }
            | Self::NotDirectory { path }
            | Self::LinkLoop { path }
            | Self::Io { path, .. } => path,
            Self::IsInput { output, .. } => output,
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |cause| Self::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// Where an output path's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A regular file, or nothing yet: written to a sibling temporary file and renamed onto this
    /// path (symbolic links already followed).
    File(PathBuf),
    /// A character or block device, FIFO or socket: written directly, never renamed over.
    Special(PathBuf),
}

impl Target {
    /// The path the bytes finally land at.
    pub fn path(&self) -> &Path {
        match self {
            Self::File(p) | Self::Special(p) => p,
        }
    }
}

/// The directory a path is in (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Follow `path` through symbolic links (each relative to the link's own directory) to the path
/// that is not a link: an existing file, directory or special file, or a name that does not exist
/// yet (a dangling link's target).
pub fn follow_links(path: &Path) -> Result<PathBuf, OutputError> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).map_err(OutputError::io(&p))?;
                p = if to.is_absolute() {
                    to
                } else {
                    parent_of(&p).join(to)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(OutputError::LinkLoop {
        path: path.to_path_buf(),
    })
}

/// What `path` names as an output file, without writing anything: the regular file (or new name)
/// its links lead to, or a special file. Errors when it is a directory or its directory is
/// missing.
pub fn resolve_output(path: &Path) -> Result<Target, OutputError> {
    let real = follow_links(path)?;
    match std::fs::metadata(&real) {
        Ok(m) if m.is_dir() => Err(OutputError::IsDirectory {
            path: path.to_path_buf(),
        }),
        Ok(m) if m.is_file() => Ok(Target::File(real)),
        Ok(m) => {
            let t = m.file_type();
            if t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket() {
                Ok(Target::Special(real))
            } else {
                Ok(Target::File(real))
            }
        }
        Err(_) => {
            let dir = parent_of(&real);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(Target::File(real)),
                Ok(_) => Err(OutputError::ParentNotDirectory {
                    path: path.to_path_buf(),
                    dir,
                }),
                Err(_) => Err(OutputError::NoDirectory {
                    path: path.to_path_buf(),
                    dir,
                }),
            }
        }
    }
}

/// Check, before any work, that `path` can be written as an output file: what
/// [`resolve_output`] checks, and for a regular file that a file can be created in its directory
/// (a probe file is created and removed).
pub fn check_output_file(path: &Path) -> Result<Target, OutputError> {
    let target = resolve_output(path)?;
    if let Target::File(real) = &target {
        let probe = temp_sibling(real, "probe");
        File::create(&probe).map_err(|cause| OutputError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let _ = std::fs::remove_file(&probe);
    }
    Ok(target)
}

/// Check, before any work, that `path` can be an output directory: an existing directory (links
/// followed), or a name whose parent directory exists (it is created later, by the writer).
pub fn check_output_dir(path: &Path) -> Result<(), OutputError> {
    let real = follow_links(path)?;
    match std::fs::metadata(&real) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(OutputError::NotDirectory {
            path: path.to_path_buf(),
        }),
        Err(_) => {
            // Missing directories are created with their parents; the first existing ancestor
            // must be a directory.
            let mut a = parent_of(&real);
            loop {
                match std::fs::metadata(&a) {
                    Ok(m) if m.is_dir() => return Ok(()),
                    Ok(_) => {
                        return Err(OutputError::ParentNotDirectory {
                            path: path.to_path_buf(),
                            dir: a,
                        })
                    }
                    Err(_) => match a.parent() {
                        Some(p) if !p.as_os_str().is_empty() => a = p.to_path_buf(),
                        _ => return Ok(()),
                    },
                }
            }
        }
    }
}

/// Whether `a` and `b` name the same existing file (same device and inode, links followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuse an `output` that names one of `inputs` (links followed), naming both. Special files
/// (`/dev/null` read and written) are not refused.
pub fn refuse_overwriting<'a>(
    output: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<(), OutputError> {
    let Ok(meta) = std::fs::metadata(output) else {
        return Ok(());
    };
    if !meta.is_file() && !meta.is_dir() {
        return Ok(());
    }
    for input in inputs {
        if same_file(output, input) {
            return Err(OutputError::IsInput {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Refuse an output directory `dir` that is, or holds, one of `inputs`: a checkpoint directory
/// written over the checkpoint it reads.
pub fn refuse_dir_holding<'a>(
    dir: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<(), OutputError> {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    for input in inputs {
        if let Ok(i) = std::fs::canonicalize(input) {
            if i == real || i.starts_with(&real) {
                return Err(OutputError::IsInput {
                    output: dir.to_path_buf(),
                    input: input.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// A fresh sibling name `.<name>.<tag>-<pid>-<n>` beside `path`.
fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    parent_of(path).join(format!(
        ".{name}.{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// An output file being written: fill [`path`](Self::path) (any writer that takes a path: HDF5,
/// an image encoder, a verifier), then [`commit`](Self::commit). Dropped uncommitted, the
/// temporary file is removed and the destination is untouched.
#[derive(Debug)]
pub struct AtomicFile {
    target: Target,
    tmp: PathBuf,
    done: bool,
}

impl AtomicFile {
    /// Start writing `path`; fails as [`resolve_output`] does. For a regular file the temporary
    /// file is a sibling of the link-resolved path (same file system, so the rename is atomic);
    /// for a special file it is in the system's temporary directory, and `commit` copies it. The
    /// temporary name ends in the destination's extension.
    pub fn new(path: &Path) -> Result<Self, OutputError> {
        let target = resolve_output(path)?;
        let beside = match &target {
            Target::File(real) => real.clone(),
            Target::Special(real) => std::env::temp_dir().join(
                real.file_name()
                    .unwrap_or_else(|| std::ffi::OsStr::new("out")),
            ),
        };
        // The extension is kept, for writers that choose a format by it (image encoders).
        let mut tmp = temp_sibling(&beside, "tmp").into_os_string();
        if let Some(ext) = beside.extension() {
            tmp.push(".");
            tmp.push(ext);
        }
        let tmp = PathBuf::from(tmp);
        Ok(Self {
            target,
            tmp,
            done: false,
        })
    }

    /// The temporary path to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Where the bytes go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Put the written temporary file in place: fsync and rename onto a regular file, or copy
    /// into a special file.
    pub fn commit(mut self) -> Result<(), OutputError> {
        self.done = true;
        let result = match &self.target {
            Target::File(real) => File::open(&self.tmp)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(&self.tmp, real))
                .map_err(OutputError::io(real)),
            Target::Special(real) => std::fs::read(&self.tmp)
                .and_then(|bytes| write_special(real, &bytes))
                .map_err(OutputError::io(real)),
        };
        if result.is_err() || matches!(self.target, Target::Special(_)) {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn write_special(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(bytes)?;
    f.flush()
}

/// Write `bytes` to `path` atomically (see the module documentation: links followed, special
/// files written directly). Errors name the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    match resolve_output(path)? {
        Target::Special(real) => write_special(&real, bytes).map_err(OutputError::io(path)),
        Target::File(_) => {
            let file = AtomicFile::new(path)?;
            std::fs::write(file.path(), bytes).map_err(OutputError::io(path))?;
            file.commit()
        }
    }
}

/// The name prefix an existing `<name>` directory is moved aside to while it is replaced
/// (`.<name>.old-<pid>`); a process killed at that moment leaves it behind, and a resumed run can
/// look for it.
pub fn aside_prefix(name: &str) -> String {
    format!(".{name}.old-")
}

/// A fresh, empty temporary directory beside `out` (`.<name>.<tag>-<pid>-<n>`, links in `out`
/// followed); `out`'s parent must exist.
pub fn temp_dir_beside(out: &Path, tag: &str) -> Result<PathBuf, OutputError> {
    let real = follow_links(out)?;
    let tmp = temp_sibling(&real, tag);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(OutputError::io(&tmp))?;
    Ok(tmp)
}

/// Remove temporary directories beside `out` (`.<name>.<tag>-<pid>-<n>`) left by processes that
/// are no longer running; returns how many were removed. Those of live processes, and any whose
/// process cannot be checked (no `/proc`), are kept.
pub fn remove_stale_temps(out: &Path, tag: &str) -> usize {
    let Ok(real) = follow_links(out) else {
        return 0;
    };
    let Some(name) = real.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return 0;
    };
    let prefix = format!(".{name}.{tag}-");
    let Ok(entries) = std::fs::read_dir(parent_of(&real)) else {
        return 0;
    };
    let proc_fs = Path::new("/proc/self").exists();
    let mut removed = 0;
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if proc_fs && !alive && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Move the filled directory `tmp` to `out` (links in `out` followed, so a linked run directory
/// stays a link). An existing `out` is moved aside first and deleted after the rename; if the
/// rename fails, it is put back. Refuses an `out` that exists and is not a directory.
pub fn replace_dir(tmp: &Path, out: &Path) -> Result<(), OutputError> {
    let real = follow_links(out)?;
    match std::fs::symlink_metadata(&real) {
        Err(_) => return std::fs::rename(tmp, &real).map_err(OutputError::io(out)),
        Ok(m) if !m.is_dir() => {
            return Err(OutputError::NotDirectory {
                path: out.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let old = parent_of(&real).join(format!("{}{}", aside_prefix(&name), std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(&real, &old).map_err(OutputError::io(out))?;
    if let Err(e) = std::fs::rename(tmp, &real) {
        let _ = std::fs::rename(&old, &real);
        return Err(OutputError::io(out)(e));
    }
    std::fs::remove_dir_all(&old).map_err(OutputError::io(&old))
}

/// Write a directory atomically: `write` fills a temporary sibling, which then replaces `dest`
/// ([`replace_dir`]). On an error the temporary directory is removed and `dest` is untouched.
pub fn write_dir_atomic<E: From<OutputError>>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_dir_beside(dest, "tmp")?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    replace_dir(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        E::from(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fsio-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_link_stays_a_link_and_its_target_is_written() {
        let d = scratch("link");
        std::fs::write(d.join("real.csv"), "old").expect("real");
        std::os::unix::fs::symlink("real.csv", d.join("link.csv")).expect("link");
        write_atomic(&d.join("link.csv"), b"new").expect("write");
        assert!(std::fs::symlink_metadata(d.join("link.csv"))
            .expect("meta")
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(d.join("real.csv")).expect("r"),
            "new"
        );
        // A dangling link creates its target.
        std::os::unix::fs::symlink("sub/new.csv", d.join("dangling.csv")).expect("link");
        let err = write_atomic(&d.join("dangling.csv"), b"x").expect_err("no sub/");
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::create_dir(d.join("sub")).expect("sub");
        write_atomic(&d.join("dangling.csv"), b"x").expect("write");
        assert_eq!(std::fs::read(d.join("sub/new.csv")).expect("r"), b"x");
        assert_eq!(
            names(&d),
            ["dangling.csv", "link.csv", "real.csv", "sub"],
            "no temporary file is left"
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn special_files_are_written_in_place() {
        let null = Path::new("/dev/null");
        assert_eq!(
            resolve_output(null).expect("null"),
            Target::Special(null.into())
        );
        write_atomic(null, b"discarded").expect("write /dev/null");
        assert!(std::fs::metadata(null)
            .expect("meta")
            .file_type()
            .is_char_device());
        let f = AtomicFile::new(null).expect("atomic");
        std::fs::write(f.path(), b"x").expect("tmp");
        let tmp = f.path().to_path_buf();
        f.commit().expect("commit");
        assert!(!tmp.exists(), "the temporary copy is removed");
        if Path::new("/dev/full").exists() {
            let err = write_atomic(Path::new("/dev/full"), b"x").expect_err("full");
            assert!(err.to_string().starts_with("/dev/full"), "{err}");
        }
    }

    #[test]
    fn bad_outputs_are_named_before_any_work() {
        let d = scratch("check");
        let e = check_output_file(&d.join("missing/out.csv")).expect_err("missing dir");
        assert!(matches!(e, OutputError::NoDirectory { .. }), "{e}");
        let e = check_output_file(&d).expect_err("a directory");
        assert!(matches!(e, OutputError::IsDirectory { .. }), "{e}");
        std::fs::write(d.join("file"), "x").expect("file");
        let e = check_output_file(&d.join("file/out.csv")).expect_err("file as dir");
        assert!(matches!(e, OutputError::ParentNotDirectory { .. }), "{e}");
        let e = check_output_dir(&d.join("file")).expect_err("file");
        assert!(matches!(e, OutputError::NotDirectory { .. }), "{e}");
        check_output_dir(&d.join("a/b/c")).expect("created later");
        check_output_file(&d.join("out.csv")).expect("fine");
        assert_eq!(names(&d), ["file"], "the probe is removed");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn inputs_are_not_overwritten() {
        let d = scratch("input");
        std::fs::write(d.join("model.onnx"), "m").expect("model");
        std::os::unix::fs::symlink("model.onnx", d.join("alias")).expect("link");
        let e = refuse_overwriting(&d.join("alias"), [d.join("model.onnx").as_path()])
            .expect_err("same file");
        assert!(e.to_string().contains("model.onnx"), "{e}");
        refuse_overwriting(&d.join("new.csv"), [d.join("model.onnx").as_path()]).expect("new");
        refuse_overwriting(Path::new("/dev/null"), [Path::new("/dev/null")]).expect("special");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn directories_are_replaced_whole_and_links_kept() {
        let d = scratch("dir");
        let out = d.join("ckpt");
        for content in ["first", "second"] {
            write_dir_atomic::<OutputError>(&out, |tmp| {
                std::fs::write(tmp.join("f"), content).map_err(OutputError::io(tmp))
            })
            .expect("replace");
            assert_eq!(std::fs::read_to_string(out.join("f")).expect("r"), content);
        }
        assert_eq!(names(&d), ["ckpt"]);
        std::fs::create_dir(d.join("real")).expect("real");
        std::os::unix::fs::symlink("real", d.join("linked")).expect("link");
        write_dir_atomic::<OutputError>(&d.join("linked"), |tmp| {
            std::fs::write(tmp.join("f"), "via link").map_err(OutputError::io(tmp))
        })
        .expect("through the link");
        assert!(std::fs::symlink_metadata(d.join("linked"))
            .expect("meta")
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(d.join("real/f")).expect("r"),
            "via link"
        );
        std::fs::write(d.join("plain"), "x").expect("plain");
        let e = write_dir_atomic::<OutputError>(&d.join("plain"), |_| Ok(())).expect_err("file");
        assert!(matches!(e, OutputError::NotDirectory { .. }), "{e}");
        assert_eq!(names(&d), ["ckpt", "linked", "plain", "real"]);
        std::fs::remove_dir_all(&d).ok();
    }
}
