//! The `ota-emu` process as the tests drive it: started with `run`, its stdout read on a
//! thread, control commands on stdin, stopped (and, if it does not stop, killed) when dropped.

#![allow(dead_code)] // each test file uses a part of it

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

pub const PREFIX: &str = "#otahil ";

pub struct Emulator {
    pub child: Child,
    stdin: ChildStdin,
    stdout: Receiver<String>,
}

impl Emulator {
    /// `ota-emu run` on `flash`, OTA ports on free loopback ports, with `extra` arguments.
    pub fn start(flash: &Path, extra: &[&str]) -> Emulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
            .args(["run", "--listen", "127.0.0.1:0", "--arduino-listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--flash")
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

    /// The first stdout line containing `text` within `wait`, or `None`.
    pub fn wait_for(&self, text: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        while let Ok(line) = self.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(text) {
                return Some(line);
            }
        }
        None
    }

    /// The first stdout line containing `text` within 30 s; panics without one.
    pub fn expect(&self, text: &str) -> String {
        self.wait_for(text, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no line with `{text}` from the emulator within 30 s"))
    }

    pub fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ota-emu make-flash` of v1 into `flash` (the default 4 MiB layout), with `extra` flags.
pub fn make_flash(flash: &Path, extra: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new(env!("CARGO_BIN_EXE_ota-emu"))
        .args(["make-flash", "--partitions"])
        .arg(root.join("fixtures/partitions/esphome-4mb.csv"))
        .arg("--app")
        .arg(root.join("fixtures/firmware/v1.bin"))
        .arg("--out")
        .arg(flash)
        .args(extra)
        .output()
        .unwrap()
}

/// A 4 MiB flash in `dir` with v1 in app0 (`ota-emu make-flash`, as a factory would).
pub fn v1_board(dir: &Path) -> std::path::PathBuf {
    let flash = dir.join("flash.bin");
    let made = make_flash(&flash, &[]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    flash
}
