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

/// How long QEMU may take to name its pty.
const PTY_TIMEOUT: Duration = Duration::from_secs(20);

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
                return Ok(mode);
            }
        }
    }
}

impl Drop for DownloadMode {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}
