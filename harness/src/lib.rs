//! otahil: plays OTA scenarios against an ESP32-C3 — emulated, on QEMU or on a bench — and
//! checks its serial log and partition state.
//!
//! - [`scenario`]: the YAML model and its strict loader.
//! - [`fixtures`]: the named test images.
//! - [`dut`]: the device-under-test trait; [`backend`]: the backends that make them (emulator,
//!   QEMU), listed once in [`backend::BACKENDS`].
//! - [`client`]: one OTA client per update path, with fault injection.
//! - [`serial`]: log capture, `expect_log`, normalisation.
//! - [`inspect`]: flash dump → partition state.
//! - [`runner`]: steps in order; [`report`]: summary and JUnit; [`snapshot`]: snapshot files.

pub mod backend;
pub mod client;
pub mod dut;
pub mod fixtures;
pub mod inspect;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod serial;
pub mod snapshot;

pub use backend::{emu, qemu};

use std::path::{Path, PathBuf};

/// The `*.yaml` files of a scenario directory, sorted by name.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}
