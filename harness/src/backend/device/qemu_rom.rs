//! QEMU as a bench's board (`port: qemu`): Espressif's QEMU booted in download boot mode
//! (`esp32c3.gpio` strap_mode 0x02) runs the chip's real ROM serial loader on a pseudo-terminal,
//! which the bench's espflash path writes through; the scenario then runs on the same flash
//! file in flash boot mode (the qemu backend's guest).

use crate::backend::qemu::{QemuProgram, terminate};
use crate::dut::DutError;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long QEMU may take to name its pty, and its ROM to start.
const PTY_TIMEOUT: Duration = Duration::from_secs(20);
/// What the ESP32-C3 ROM prints once its serial loader listens (`wait uart0 download` from the
/// C3's ROM of 2021-02-07; `waiting for download` from other Espressif ROMs).
const ROM_READY: [&str; 2] = ["wait uart0 download", "waiting for download"];

/// A QEMU in download boot mode; stopped (its flash written back) when dropped.
pub struct DownloadMode {
    child: Child,
    pub pty: PathBuf,
}

impl DownloadMode {
    pub fn start(program: &QemuProgram, flash: &Path) -> Result<DownloadMode, DutError> {
        let mut cmd = Command::new(&program.program);
        if let Some(bios) = &program.bios_dir {
            cmd.arg("-L").arg(bios);
        }
        let mut child = cmd
            .args(["-display", "none", "-monitor", "none", "-machine", "esp32c3"])
            .args([
                "-global",
                "driver=esp32c3.gpio,property=strap_mode,value=0x02",
                "-serial",
                "pty",
                "-drive",
            ])
            .arg(format!("file={},if=mtd,format=raw", flash.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DutError::Start(format!("cannot start {}: {e}", program.program.display())))?;
        // QEMU names the pty on one of its outputs: "char device redirected to /dev/pts/N (label serial0)".
        let (tx, rx) = std::sync::mpsc::channel();
        for out in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut mode = DownloadMode { child, pty: PathBuf::new() };
        loop {
            let Ok(line) = rx.recv_timeout(PTY_TIMEOUT) else {
                return Err(DutError::Timeout(PTY_TIMEOUT, "QEMU to name its UART's pty".into()));
            };
            if let Some(rest) = line.strip_prefix("char device redirected to ")
                && let Some(path) = rest.split_whitespace().next()
            {
                mode.pty = PathBuf::from(path);
                break;
            }
        }
        mode.wait_for_rom()?;
        Ok(mode)
    }

    /// Waits until the ROM says it waits for a download: a SYNC sent while it still starts is
    /// answered, but the commands after it are not (seen on every run that followed another
    /// scenario quickly).
    fn wait_for_rom(&self) -> Result<(), DutError> {
        let mut port = serialport::new(self.pty.to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(50))
            .open_native()
            .map_err(|e| DutError::Start(format!("cannot open QEMU's pty {}: {e}", self.pty.display())))?;
        let deadline = std::time::Instant::now() + PTY_TIMEOUT;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = std::io::Read::read(&mut port, &mut buf) {
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if ROM_READY.iter().any(|r| text.contains(r)) {
                    return Ok(());
                }
            }
        }
        Err(DutError::Timeout(
            PTY_TIMEOUT,
            format!("the ROM's `{}` (it printed {:?})", ROM_READY[0], String::from_utf8_lossy(&seen)),
        ))
    }
}

impl Drop for DownloadMode {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}
