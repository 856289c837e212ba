//! Every whole-image digest a stored snapshot names is the digest of a committed firmware fixture.
//!
//! Rebuilding the fixtures changes their digests, and `otahil run` rewrites only the snapshots of
//! the scenarios it plays: a scenario skipped in that run (one with browser steps, in a build
//! without the `browser` feature) would keep the old digests and fail later, in the one CI stage
//! that plays it. This catches that in the plain test run, with the file and line to fix.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

fn fixture_digests(root: &Path) -> BTreeMap<String, String> {
    let dir = root.join("fixtures/firmware");
    let mut digests = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            let bytes = std::fs::read(&path).unwrap();
            let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            digests.insert(hex, path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    digests
}

#[test]
fn every_image_digest_in_a_snapshot_is_a_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = fixture_digests(&root);
    assert!(fixtures.len() >= 3, "fixtures/firmware holds the images (found {})", fixtures.len());
    let dir = root.join("harness/tests/snapshots");
    let mut checked = 0;
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "snap") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            // `head_sha256` (a torn or partial image's first bytes) is left out by the prefix.
            let Some(hex) = line.trim_start().strip_prefix("sha256: ") else { continue };
            checked += 1;
            if !fixtures.contains_key(hex.trim()) {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                stale.push(format!("{name}:{}: {hex}", n + 1));
            }
        }
    }
    assert!(checked > 50, "the snapshots name image digests (found {checked})");
    assert!(
        stale.is_empty(),
        "snapshot lines naming no image in fixtures/firmware (rebuilt fixtures, and a scenario that \
         was not replayed?); fixtures are {fixtures:?}:\n{}",
        stale.join("\n")
    );
}
