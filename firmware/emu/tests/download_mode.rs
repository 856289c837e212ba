//! The emulator process as a bench sees a board: `ota-emu run --uart-pty` puts UART0 on a
//! pseudo-terminal; `download` on the control channel stands for the strapping pins a pty cannot
//! drive; the real espflash library then flashes v2 through the ROM loader on that pty, and when
//! it ends the session the chip boots what was flashed, its log on the same pty.

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::target::{Chip, DefaultProgressCallback};
use serialport::{SerialPort, UsbPortInfo};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const PREFIX: &str = "#otahil ";

struct Emulator {
    child: Child,
    stdin: ChildStdin,
    stdout: Receiver<String>,
}

impl Emulator {
    fn start(flash: &Path) -> Emulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--arduino-listen",
                "127.0.0.1:0",
                "--uart-pty",
                "--flash",
            ])
            .arg(flash)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ota-emu starts");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, stdout) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Emulator { child, stdin, stdout }
    }

    /// Waits for a stdout line containing `text`; returns it.
    fn expect(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(text) {
                return line;
            }
            seen.push(line);
        }
        panic!("no line with `{text}` from the emulator; it said:\n{}", seen.join("\n"));
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
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
    let flash = dir.path().join("flash.bin");
    let csv = root.join("fixtures/partitions/esphome-4mb.csv");
    let made = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
        .args(["make-flash", "--partitions"])
        .arg(&csv)
        .arg("--app")
        .arg(root.join("fixtures/firmware/v1.bin"))
        .arg("--out")
        .arg(&flash)
        .status()
        .unwrap();
    assert!(made.success());
    let table = ota_core::partition_csv::parse_csv(&std::fs::read_to_string(&csv).unwrap()).unwrap();
    let app0 = table.by_label("app0").expect("app0").offset;

    let mut emu = Emulator::start(&flash);
    let ready = emu.expect("ready ");
    let uart =
        ready.split_whitespace().find_map(|w| w.strip_prefix("uart=")).expect("a uart path").to_string();
    emu.expect("app: running ota_0 (app0): otahil-fw version 1.0.0");
    emu.command("download");
    let ok = emu.expect(&format!("{PREFIX}ok download"));
    assert!(ok.contains("power=off"), "the app does not run in download mode: {ok}");

    let port = serialport::new(&uart, 115_200).open_native().expect("the UART's pty opens");
    let info = UsbPortInfo { vid: 0, pid: 0, serial_number: None, manufacturer: None, product: None };
    let conn = Connection::new(
        port,
        info,
        ResetAfterOperation::NoResetNoStub,
        ResetBeforeOperation::NoReset,
        115_200,
    );
    let mut f =
        Flasher::connect(conn, false, true, false, Some(Chip::Esp32c3), None).expect("espflash connects");
    let v2 = std::fs::read(root.join("fixtures/firmware/v2.bin")).unwrap();
    f.write_bin_to_flash(app0, &v2, &mut DefaultProgressCallback).expect("v2 written and verified");

    // FLASH_END ended the ROM session: the chip boots from flash, and says so on both channels.
    let rebooted = emu.expect(&format!("{PREFIX}event rebooted"));
    assert!(rebooted.contains("version=2.0.0"), "{rebooted}");
    let mut port = f.into_connection().into_serial();
    port.set_timeout(Duration::from_millis(100)).unwrap();
    let log = read_until(&mut port, "app: running ota_0 (app0): otahil-fw version 2.0.0");
    assert!(log.contains("ota: listening on port"), "the app serves OTA after the boot:\n{log}");
}
