//! Binary size: the release build as cargo leaves it, and stripped (as
//! `cargo lambda build` and most deployments ship it).

use std::path::Path;
use std::process::Command;

use integration_tests::bin_path;

#[derive(Debug)]
pub(crate) struct BinarySize {
    pub(crate) name: &'static str,
    pub(crate) unstripped: u64,
    /// `None` if `strip` is not installed.
    pub(crate) stripped: Option<u64>,
}

pub(crate) fn binary_sizes() -> Vec<BinarySize> {
    ["orders", "orders-axum", "bench-contender"].into_iter().map(binary_size).collect()
}

fn binary_size(name: &'static str) -> BinarySize {
    let path = bin_path(name);
    let unstripped = size(&path).expect("size of a built binary");
    let dir = tempfile::tempdir().expect("temp dir for stripping");
    let copy = dir.path().join(name);
    std::fs::copy(&path, &copy).expect("copy the binary to strip it");
    let stripped = Command::new("strip").arg(&copy).status().ok().filter(|s| s.success()).and_then(|_| size(&copy));
    BinarySize { name, unstripped, stripped }
}

fn size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}
