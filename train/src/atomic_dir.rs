//! Directories written all at once: filled under a temporary name beside the target, then
//! renamed into place, so a reader (or a resumed run) never sees half a checkpoint. Used by
//! `init` and by every checkpoint `fit` writes.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn parent_and_name(out: &Path) -> std::io::Result<(PathBuf, String)> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path has no directory name",
            )
        })?
        .to_string_lossy()
        .to_string();
    Ok((parent, name))
}

/// The name prefix an existing `<name>` directory is moved aside to while it is replaced
/// (`.<name>.old-<pid>`); a run killed at that moment leaves it behind, and `fit --resume`
/// looks for it.
pub fn aside_prefix(name: &str) -> String {
    format!(".{name}.old-")
}

/// A fresh, empty temporary directory beside `out` (`.<name>.<tag>-<pid>-<n>`); `out`'s parent
/// must exist.
pub fn temp_dir_beside(out: &Path, tag: &str) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let (parent, name) = parent_and_name(out)?;
    let tmp = parent.join(format!(
        ".{name}.{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    Ok(tmp)
}

/// Remove temporary directories beside `out` (`.<name>.<tag>-<pid>-<n>`) left by processes that
/// are no longer running (a killed run); returns how many were removed. Directories of live
/// processes, and any whose process cannot be checked (no `/proc`), are kept.
pub fn remove_stale_temps(out: &Path, tag: &str) -> usize {
    let Ok((parent, name)) = parent_and_name(out) else {
        return 0;
    };
    let prefix = format!(".{name}.{tag}-");
    let Ok(entries) = std::fs::read_dir(&parent) else {
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

/// Move the filled `tmp` to `out`. An existing `out` is moved aside first and deleted after the
/// rename; if the rename fails, it is put back.
pub fn replace_dir(tmp: &Path, out: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(out).is_err() {
        return std::fs::rename(tmp, out);
    }
    let (parent, name) = parent_and_name(out)?;
    let old = parent.join(format!("{}{}", aside_prefix(&name), std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(out, &old)?;
    if let Err(e) = std::fs::rename(tmp, out) {
        let _ = std::fs::rename(&old, out);
        return Err(e);
    }
    std::fs::remove_dir_all(&old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_an_existing_directory_and_leaves_nothing_beside_it() {
        let root = std::env::temp_dir().join(format!("atomic-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root");
        let out = root.join("ckpt");
        for content in ["first", "second"] {
            let tmp = temp_dir_beside(&out, "tmp").expect("tmp");
            std::fs::write(tmp.join("f"), content).expect("write");
            replace_dir(&tmp, &out).expect("replace");
            assert_eq!(
                std::fs::read_to_string(out.join("f")).expect("read"),
                content
            );
        }
        let names: Vec<_> = std::fs::read_dir(&root)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ckpt")]);
        std::fs::remove_dir_all(&root).ok();
    }
}
