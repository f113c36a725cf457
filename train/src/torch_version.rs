// Shared by build.rs (through `include!`) and the binary (as a module), so it has no `use`
// lines or inner attributes.

/// The libtorch version next to a lib dir: pip's `torch/version.py`
/// (`__version__ = '2.11.0+cu130'`) or the `build-version` file of a libtorch zip.
pub fn libtorch_version(lib_dir: &std::path::Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(
            line.split('=')
                .nth(1)?
                .trim()
                .trim_matches(['\'', '"'])
                .to_string(),
        );
    }
    let text = std::fs::read_to_string(root.join("build-version")).ok()?;
    Some(text.trim().to_string())
}
