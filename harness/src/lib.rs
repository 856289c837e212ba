//! otahil: plays OTA scenarios against an ESP32-C3 — emulated, on QEMU or on a bench — and
//! checks its serial log and partition state.
//!
//! - [`scenario`]: the YAML model and its strict loader; [`bench`]: the bench file (a board on a
//!   lab bench, for the device backend), loaded as strictly.
//! - [`fixtures`]: the named test images.
//! - [`dut`]: the device-under-test trait; [`backend`]: the backends that make them (emulator,
//!   QEMU), listed once in [`backend::BACKENDS`].
//! - [`paths`]: the update paths, listed once in [`paths::PATHS`]: each reads its own step
//!   options and runs its updates; [`client`]: the uploaders they use, with fault injection.
//! - [`serial`]: log capture, `expect_log`, normalisation.
//! - [`inspect`]: flash dump → partition state.
//! - [`runner`]: steps in order; [`report`]: summary and JUnit; [`html`]: the HTML report;
//!   [`snapshot`]: snapshot files.

pub mod backend;
pub mod bench;
pub mod browser;
pub mod client;
pub mod dut;
pub mod fixtures;
pub mod html;
pub mod inspect;
pub mod partition;
pub mod paths;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod serial;
pub mod services;
pub mod snapshot;
pub mod tripwire;

pub use backend::{emu, qemu};

use std::path::{Path, PathBuf};

/// Whether `dir` is the project's own `scenarios/` (relative to where otahil runs), whose
/// snapshots are the project's and whose reproduction lines need no directory.
pub fn is_project_scenarios(dir: &Path) -> bool {
    std::fs::canonicalize(dir).ok().is_some_and(|d| std::fs::canonicalize("scenarios").ok() == Some(d))
}

/// The scenario files at `path`: the file itself, or a directory's `*.yaml` / `*.yml` files (any
/// case), sorted by name. A directory without any is an error, not an empty run.
pub fn scenario_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        })
        .collect();
    if files.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no scenario files (*.yaml) in {}", path.display()),
        ));
    }
    files.sort();
    Ok(files)
}

/// Scenarios that share a `name` (they would play against the same snapshots): each name with
/// the files that use it.
pub fn duplicate_names(scenarios: &[scenario::Scenario]) -> Vec<(String, Vec<PathBuf>)> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<PathBuf>> = Default::default();
    for s in scenarios {
        by_name.entry(&s.name).or_default().push(s.file.clone());
    }
    by_name.into_iter().filter(|(_, files)| files.len() > 1).map(|(n, f)| (n.to_string(), f)).collect()
}
