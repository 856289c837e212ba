//! The chip firmware on Espressif's QEMU (`-machine esp32c3`) through the qemu backend: boot the
//! merged v1 image, update it to v2 with the harness's client, watch v2 confirm itself on its
//! first boot, then push a self-test-failing image and watch it roll back; check otadata with the
//! inspector. Skipped, with the reason printed, where there is no such QEMU (`ESP_QEMU` or
//! `qemu-system-riscv32` on PATH; `ESP_QEMU_BIOS_DIR` as `-L`) or no firmware build
//! (`cargo xtask firmware`). The firmware's password comes from `OTAHIL_FW_PASSWORD`, as for its
//! build.

use ota_core::proto::esphome::{MAGIC, code};
use otahil::client::{Outcome, Upload, Uploader, upload};
use otahil::dut::{Dut, DutEvent};
use otahil::qemu::{FirmwareBuilds, QemuDut, QemuProgram};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
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
            Some(DutEvent::Rebooted) => log.push("-- rebooted (a new QEMU process) --".into()),
            Some(_) | None => {}
        }
    }
    panic!("no serial line with `{text}` within {timeout:?}; log:\n{}", log.join("\n"));
}

/// QEMU and the firmware builds, or `None` after printing why `test` is skipped.
fn qemu_and_builds(test: &str) -> Option<(QemuProgram, FirmwareBuilds, std::path::PathBuf)> {
    let program = match QemuProgram::locate() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/firmware");
    match FirmwareBuilds::load(&dir) {
        Ok(b) => Some((program, b, dir)),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// The v1 build powered on and serving, with its log so far; `None` when `test` is skipped.
fn v1_serving(test: &str) -> Option<(QemuDut, FirmwareBuilds, Vec<String>)> {
    let (program, builds, dir) = qemu_and_builds(test)?;
    let flash = std::fs::read(dir.join("v1-flash.bin")).unwrap();
    let mut dut = QemuDut::new(program, &flash).unwrap();
    let mut log = Vec::new();
    dut.power_on().unwrap();
    expect(&mut dut, &mut log, "app: running ota_0 (app0): otahil-fw version 1.0.0", Duration::from_secs(60));
    expect(&mut dut, &mut log, "ota: listening on port 3232", Duration::from_secs(20));
    Some((dut, builds, log))
}

#[test]
fn firmware_updates_and_rolls_back_on_qemu() {
    let Some((mut dut, builds, mut log)) = v1_serving("firmware_updates_and_rolls_back_on_qemu") else {
        return;
    };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The forwarded ports stay the same across power cycles.
    let esphome = dut.endpoints().unwrap().get(Uploader::Esphome.port()).unwrap();
    let arduino = dut.endpoints().unwrap().get(Uploader::Arduino.port()).unwrap();
    let send_over = |uploader: Uploader, image: &str| {
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
        let endpoint = if uploader == Uploader::Arduino { arduino } else { esphome };
        let outcome = rt.block_on(upload(uploader, endpoint, &up));
        eprintln!("{image} over {uploader}: {outcome} in {:.2} s", started.elapsed().as_secs_f64());
        outcome
    };
    let send = |image: &str| send_over(Uploader::Esphome, image);
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
    assert!(matches!(send_over(Uploader::Arduino, "v3"), Outcome::Ok { .. }));
    expect(&mut dut, &mut log, "app: running ota_0 (app0): otahil-fw version 3.0.0", Duration::from_secs(60));
    expect(&mut dut, &mut log, "rollback: self-test passed: ota_0 marked VALID", Duration::from_secs(20));
}

/// Connects to the device's ESPHome port and sends the magic bytes.
fn say_magic(addr: std::net::SocketAddr, magic: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("the forwarded port accepts");
    s.write_all(magic).unwrap();
    s
}

/// The device's answer to the magic bytes, within `timeout`: `Ok(bytes)`, or the error (a timeout
/// while the connection waits in the backlog, a reset when nothing listens).
fn answer(s: &mut TcpStream, n: usize, timeout: Duration) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn the_ota_port_keeps_a_backlog_of_one_and_reopens_at_once_on_qemu() {
    let Some((mut dut, _builds, mut log)) =
        v1_serving("the_ota_port_keeps_a_backlog_of_one_and_reopens_at_once_on_qemu")
    else {
        return;
    };
    let addr = dut.endpoints().unwrap().get(Uploader::Esphome.port()).unwrap();
    let hello = vec![code::OK, 2];

    // A holds the session; B waits in the backlog, unanswered but not refused, as behind
    // ESPHome's listen(1); when A goes, B is served.
    let mut a = say_magic(addr, &MAGIC);
    assert_eq!(answer(&mut a, 2, Duration::from_secs(10)).unwrap(), hello);
    let mut b = say_magic(addr, &MAGIC);
    let waiting = answer(&mut b, 2, Duration::from_millis(500)).unwrap_err();
    assert!(
        matches!(waiting.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the second client was not kept waiting: {waiting}"
    );
    drop(a);
    let served = answer(&mut b, 2, Duration::from_secs(10));
    if served.is_err() {
        while let Ok(Some(DutEvent::Serial(line))) = dut.next_event(Duration::from_millis(500)) {
            log.push(line);
        }
    }
    assert_eq!(
        served.as_ref().ok(),
        Some(&hello),
        "the waiting client is not served: {served:?}; log:\n{}",
        log.join("\n")
    );
    drop(b);
    // Right after two sessions closed back to back the device resets a new client for a few ms:
    // most likely both listener sockets still wait in LAST-ACK for slirp's ACK of the device's
    // FIN, so smoltcp has no socket listening, where lwIP's listening PCB would take it. Measured:
    // a client connecting at once after B's close was reset in 5 runs of 5, one 10 ms after was
    // served in 3 of 3. Noted in issue #19; the part below is about closes the device makes
    // first.
    std::thread::sleep(Duration::from_millis(100));

    // Twice in a row the device closes first (wrong magic bytes), so both of its sockets end in
    // TIME-WAIT; smoltcp lets such a socket listen again, and the next client is served at once.
    for _ in 0..2 {
        let mut wrong = say_magic(addr, &[0; 5]);
        let refused = answer(&mut wrong, 1, Duration::from_secs(10));
        if refused.is_err() {
            while let Ok(Some(DutEvent::Serial(line))) = dut.next_event(Duration::from_millis(500)) {
                log.push(line);
            }
        }
        assert_eq!(
            refused.as_ref().ok(),
            Some(&vec![code::ERROR_MAGIC]),
            "wrong magic bytes: {refused:?}; log:\n{}",
            log.join("\n")
        );
        let mut rest = Vec::new();
        wrong.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        wrong.read_to_end(&mut rest).expect("the device closes the connection");
        drop(wrong);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut next = say_magic(addr, &MAGIC);
    let served = answer(&mut next, 2, Duration::from_secs(10));
    assert_eq!(
        served.as_ref().ok(),
        Some(&hello),
        "after two device-first closes: {served:?}; log:\n{}",
        log.join("\n")
    );
}
