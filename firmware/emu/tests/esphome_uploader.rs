//! ESPHome's own uploader (`esphome.espota2`, what `esphome upload` runs) against `ota-emu`:
//! a wrong password is refused and nothing is written, the right one updates the device, which
//! restarts into v2 (docs/own-tools.md). Skipped, saying why, without python3 and the `esphome`
//! package (`python3 -m pip install --no-deps esphome`: espota2 needs nothing else).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{Emulator, make_flash};

/// The installed ESPHome's version, if `esphome.espota2` imports.
fn esphome_version() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import esphome.espota2, esphome.const; print(esphome.const.__version__)"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs espota2's `run_ota` as `esphome upload` does; its exit code (0: success).
fn upload(port: u16, password: &str, image: &Path) -> i32 {
    let script = "import sys, logging\n\
                  from pathlib import Path\n\
                  from esphome.espota2 import run_ota\n\
                  logging.basicConfig(level=logging.INFO)\n\
                  code, _ = run_ota('127.0.0.1', int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))\n\
                  sys.exit(code)\n";
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), password])
        .arg(image)
        .output()
        .expect("python3 runs");
    eprintln!("espota2: {}", String::from_utf8_lossy(&out.stderr).trim());
    out.status.code().unwrap_or(-1)
}

#[test]
fn esphomes_uploader_updates_the_emulated_device() {
    let Some(version) = esphome_version() else {
        eprintln!(
            "SKIP ESPHome's uploader: it needs python3 and the esphome package (python3 -m pip install --no-deps esphome)"
        );
        return;
    };
    eprintln!("ESPHome {version}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let flash = dir.path().join("flash.bin");
    let made = make_flash(&flash, &["--password", "secret"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let emu = Emulator::start(&flash, &[]);
    let ready = emu.expect("ready ");
    let port: u16 = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tcp:3232="))
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no TCP port on the ready line: {ready}"));
    emu.expect("ota: listening on port 3232");
    let v2 = root.join("fixtures/firmware/v2.bin");

    assert_eq!(upload(port, "wrong", &v2), 1, "a wrong password fails the upload");
    emu.expect("Auth failed");
    assert!(
        emu.wait_for("Starting update", Duration::from_millis(300)).is_none(),
        "nothing is written after a refused authentication"
    );

    assert_eq!(upload(port, "secret", &v2), 0, "the right password updates");
    emu.expect("update complete: boot set to ota_1");
    emu.expect("app: running ota_1 (app1): otahil-fw version 2.0.0");
    emu.expect("rollback: self-test passed: ota_1 marked VALID");
}
