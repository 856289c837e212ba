//! The emulator process as a bench sees a board: `ota-emu run --uart-pty` puts UART0 on a
//! pseudo-terminal; `download` on the control channel stands for the strapping pins a pty cannot
//! drive; the real espflash library then flashes v2 through the ROM loader on that pty, and once
//! the strap is released (power-on) the chip boots what was flashed, its log on the same pty.

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::target::{Chip, DefaultProgressCallback};
use serialport::{SerialPort, UsbPortInfo};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{Emulator, PREFIX, v1_board};

/// espflash on a pty, as the bench drives it: no USB identity, no DTR/RTS, no reset.
fn pty_connection(port: serialport::TTYPort) -> Connection {
    let info = UsbPortInfo {
        vid: 0,
        pid: 0,
        serial_number: None,
        manufacturer: None,
        product: None,
        interface: None,
    };
    Connection::new(port, info, ResetAfterOperation::NoResetNoStub, ResetBeforeOperation::NoReset, 115_200)
}

/// Reads the pty until a line contains `text`; returns what was read.
fn read_until(port: &mut impl Read, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        match port.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading the UART: {e}"),
        }
        let text_so_far = String::from_utf8_lossy(&got);
        if text_so_far.contains(text) {
            return text_so_far.into_owned();
        }
    }
    panic!("no `{text}` on the UART; it carried:\n{}", String::from_utf8_lossy(&got));
}

#[test]
fn espflash_flashes_the_emulator_in_download_mode_and_it_boots_the_new_image() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let flash = v1_board(dir.path());
    let csv = root.join("fixtures/partitions/esphome-4mb.csv");
    let table = ota_core::partition_csv::parse_csv(&std::fs::read_to_string(&csv).unwrap()).unwrap();
    let app0 = table.by_label("app0").expect("app0").offset;

    let mut emu = Emulator::start(&flash, &["--uart-pty"]);
    let ready = emu.expect("ready ");
    let uart =
        ready.split_whitespace().find_map(|w| w.strip_prefix("uart=")).expect("a uart path").to_string();
    emu.expect("app: running ota_0 (app0): otahil-fw version 1.0.0");
    emu.command("download");
    let ok = emu.expect(&format!("{PREFIX}ok download"));
    assert!(ok.contains("power=off"), "the app does not run in download mode: {ok}");

    let port = serialport::new(&uart, 115_200).open_native().expect("the UART's pty opens");
    let conn = pty_connection(port);
    let mut f =
        Flasher::connect(conn, false, true, false, Some(Chip::Esp32c3), None).expect("espflash connects");
    let v2 = std::fs::read(root.join("fixtures/firmware/v2.bin")).unwrap();
    f.write_bin_to_flash(app0, &v2, &mut DefaultProgressCallback).expect("v2 written and verified");

    // espflash ends a ROM write with FLASH_END "reboot": a system reset, which keeps the boot
    // strap latched in download mode, so the ROM loader answers again (a board's auto-reset
    // circuit releases the strap with the next EN pulse). Powering on boots what was flashed.
    let mut port = f.into_connection().into_serial();
    emu.command("status");
    let status = emu.expect(&format!("{PREFIX}ok status"));
    assert!(status.contains("power=off"), "still in the loader after espflash's reboot: {status}");
    port.set_timeout(Duration::from_millis(100)).unwrap();
    emu.command("power-on");
    let on = emu.expect(&format!("{PREFIX}ok power-on"));
    assert!(on.contains("version=2.0.0"), "{on}");
    let log = read_until(&mut port, "ota: listening on port");
    assert!(log.contains("app: running ota_0 (app0): otahil-fw version 2.0.0"), "v2 booted:\n{log}");
}

/// A reboot asked of the loader (FLASH_END with 0, as esptool's `--after no-reset` sends it to
/// the stub) re-reads the boot strap, still held in download mode: the ROM loader answers
/// again, and the app does not start. esptool then connects for its next command.
#[test]
fn a_reboot_asked_of_the_loader_comes_back_to_the_loader_while_the_strap_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let flash = v1_board(dir.path());
    let mut emu = Emulator::start(&flash, &["--uart-pty"]);
    let ready = emu.expect("ready ");
    let uart =
        ready.split_whitespace().find_map(|w| w.strip_prefix("uart=")).expect("a uart path").to_string();
    emu.command("download");
    emu.expect(&format!("{PREFIX}ok download"));

    let mut port = serialport::new(&uart, 115_200).timeout(Duration::from_millis(100)).open_native().unwrap();
    let _ = read_frames(&mut port, Duration::from_millis(100)); // the boot log from before
    // As esptool's soft reset: FLASH_BEGIN of nothing (size, blocks, block size, offset,
    // encrypted), then FLASH_END (0x04) with 0: reboot.
    let request = |op: u8, words: &[u32]| {
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut frame = vec![0x00, op];
        frame.extend_from_slice(&(data.len() as u16).to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&data);
        ota_emu::rom_loader::slip::encode(&frame)
    };
    port.write_all(&request(0x02, &[0, 0, 0x400, 0, 0])).unwrap();
    let begun = read_frames(&mut port, Duration::from_millis(300));
    // Response: C0, direction 1, op, size u16, value u32, then status and error bytes.
    assert_eq!(begun.get(..3), Some(&[0xC0, 0x01, 0x02][..]), "FLASH_BEGIN answered: {begun:02x?}");
    assert_eq!(begun.get(9..11), Some(&[0u8, 0][..]), "FLASH_BEGIN accepted: {begun:02x?}");
    port.write_all(&request(0x04, &[0])).unwrap();
    let ended = read_frames(&mut port, Duration::from_millis(300));
    assert_eq!(ended.get(..3), Some(&[0xC0, 0x01, 0x04][..]), "FLASH_END answered: {ended:02x?}");
    assert_eq!(ended.get(9..11), Some(&[0u8, 0][..]), "FLASH_END accepted: {ended:02x?}");

    let conn = pty_connection(port);
    let mut f = Flasher::connect(conn, false, true, false, Some(Chip::Esp32c3), None)
        .expect("the ROM loader answers after the reboot");
    assert_eq!(f.device_info().unwrap().mac_address.as_deref(), Some("02:07:7a:c3:00:01"));
    emu.command("status");
    let status = emu.expect(&format!("{PREFIX}ok status"));
    assert!(status.contains("power=off"), "the app did not start: {status}");
}

/// Whatever the pty carries for `wait`.
fn read_frames(port: &mut impl Read, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if let Ok(n) = port.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    got
}
