//! Tests that read real recordings from `../shared/data` skip (printing "skipped") where it is
//! absent, so the project's tests also run on a machine without it. A skip must not hide in a
//! green CI run: `.ci/run` sets `BIRDCLEF_REQUIRE_SHARED=1`, and then this test fails when any of
//! the folders those tests read is missing.

use std::path::Path;

/// The folders of `../shared/data` that tests read.
const FOLDERS: [&str; 3] = ["birdclef-mini", "formats", "bench_soundscapes"];

#[test]
fn shared_data_is_present_where_it_is_required() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let missing: Vec<&str> = FOLDERS
        .iter()
        .copied()
        .filter(|f| !root.join(f).is_dir())
        .collect();
    let required = std::env::var("BIRDCLEF_REQUIRE_SHARED").is_ok_and(|v| v == "1");
    if missing.is_empty() {
        return;
    }
    let msg = format!(
        "{} lacks {}: the tests that need them were skipped",
        root.display(),
        missing.join(", ")
    );
    assert!(!required, "{msg} (BIRDCLEF_REQUIRE_SHARED=1)");
    println!("skipped: {msg}");
}
