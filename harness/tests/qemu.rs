//! The chip firmware on Espressif's QEMU (`-machine esp32c3`) through the qemu backend: boot the
//! merged v1 image, update it to v2 with the harness's client, watch v2 confirm itself on its
//! first boot, then push a self-test-failing image and watch it roll back; check otadata with the
//! inspector. Skipped, with the reason printed, where there is no such QEMU (`ESP_QEMU` or
//! `qemu-system-riscv32` on PATH; `ESP_QEMU_BIOS_DIR` as `-L`) or no firmware build
//! (`cargo xtask firmware`). The firmware's password comes from `OTAHIL_FW_PASSWORD`, as for its
//! build.

use otahil::client::{Outcome, UpdatePath, Upload, upload};
use otahil::dut::{Dut, DutEvent};
use otahil::qemu::{FirmwareBuilds, QemuDut, QemuProgram};
use std::path::Path;
use std::time::{Duration, Instant};

/// Reads events until a serial line contains `text`; panics with the log so far after `timeout`.
fn expect(dut: &mut QemuDut, log: &mut Vec<String>, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match dut.next_event(left.min(Duration::from_millis(200))).expect("QEMU runs") {
            Some(DutEvent::Serial(line)) => {
                let found = line.contains(text);
                log.push(line);
                if found {
                    return;
                }
            }
            Some(DutEvent::Rebooted) => log.push("-- rebooted (power cycle) --".into()),
            Some(_) | None => {}
        }
    }
    panic!("no serial line with `{text}` within {timeout:?}; log:\n{}", log.join("\n"));
}

#[test]
fn firmware_updates_and_rolls_back_on_qemu() {
    let program = match QemuProgram::locate() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED firmware_updates_and_rolls_back_on_qemu: {why}");
            return;
        }
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/firmware");
    let builds = match FirmwareBuilds::load(&dir) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED firmware_updates_and_rolls_back_on_qemu: {why}");
            return;
        }
    };
    let flash = std::fs::read(dir.join("v1-flash.bin")).unwrap();
    let mut dut = QemuDut::new(program, &flash).unwrap();
    let mut log = Vec::new();
    dut.power_on().unwrap();
    expect(&mut dut, &mut log, "app: running ota_0 (app0): otahil-fw version 1.0.0", Duration::from_secs(60));
    expect(&mut dut, &mut log, "ota: listening on port 3232", Duration::from_secs(20));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The forwarded ports stay the same across power cycles.
    let esphome = dut.endpoint(UpdatePath::Esphome).unwrap();
    let arduino = dut.endpoint(UpdatePath::Arduino).unwrap();
    let send_over = |path: UpdatePath, image: &str| {
        let bytes = builds.app(image).unwrap_or_else(|| panic!("no build of {image}"));
        let up = Upload {
            image: &bytes,
            file_name: image,
            password: builds.password.as_deref(),
            offer_sha256: true,
            declared_size: None,
            md5: None,
            disconnect_after: None,
            send_delay: None,
            timeout: Duration::from_secs(180),
            seed: 1,
            arduino: Default::default(),
        };
        let started = Instant::now();
        let endpoint = if path == UpdatePath::Arduino { arduino } else { esphome };
        let outcome = rt.block_on(upload(path, endpoint, &up));
        eprintln!("{image} over {path}: {outcome} in {:.2} s", started.elapsed().as_secs_f64());
        outcome
    };
    let send = |image: &str| send_over(UpdatePath::Esphome, image);
    assert!(matches!(send("v2"), Outcome::Ok { .. }));
    expect(&mut dut, &mut log, "app: running ota_1 (app1): otahil-fw version 2.0.0", Duration::from_secs(60));
    expect(&mut dut, &mut log, "rollback: self-test passed: ota_1 marked VALID", Duration::from_secs(20));
    expect(&mut dut, &mut log, "ota: listening on port 3232", Duration::from_secs(20));

    assert!(matches!(send("selftest-fail"), Outcome::Ok { .. }));
    expect(
        &mut dut,
        &mut log,
        "app: running ota_0 (app0): otahil-fw version 2.0.0-selftest-fail",
        Duration::from_secs(60),
    );
    expect(
        &mut dut,
        &mut log,
        "rollback: self-test failed: ota_0 marked INVALID, rolling back",
        Duration::from_secs(20),
    );
    expect(&mut dut, &mut log, "app: running ota_1 (app1): otahil-fw version 2.0.0", Duration::from_secs(60));
    expect(&mut dut, &mut log, "ota: listening on port 3232", Duration::from_secs(20));
    dut.power_off().unwrap();

    let state = otahil::inspect::partition_state(&dut.read_flash().unwrap());
    assert!(state.contains("copy0: seq=3 state=INVALID crc=ok (not selectable)"), "{state}");
    assert!(state.contains("copy1: seq=2 state=VALID crc=ok"), "{state}");

    // ArduinoOTA on the same firmware: the invitation through QEMU's forwarded UDP port, the
    // device's back-connection through slirp's gateway to this host.
    dut.power_on().unwrap();
    expect(&mut dut, &mut log, "ota: listening on port 3232", Duration::from_secs(60));
    assert!(matches!(send_over(UpdatePath::Arduino, "v3"), Outcome::Ok { .. }));
    expect(&mut dut, &mut log, "app: running ota_0 (app0): otahil-fw version 3.0.0", Duration::from_secs(60));
    expect(&mut dut, &mut log, "rollback: self-test passed: ota_0 marked VALID", Duration::from_secs(20));
}
