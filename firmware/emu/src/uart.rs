//! The emulated chip's UART0 on a pseudo-terminal (`ota-emu run --uart-pty`), as a board's
//! USB-UART bridge appears to a bench: the serial log comes out of it in flash boot mode, and in
//! download boot mode (`download` on the control channel; a pty has no DTR/RTS to strap the chip)
//! the ROM serial loader answers on it until a flasher ends its session.

use crate::flash::FileFlash;
use crate::rom_loader::{Exit, Rejected, RomLoader};
use serialport::{SerialPort, TTYPort};
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

/// The MAC the emulated chip reports to a flasher (locally administered).
pub const MAC: [u8; 6] = [0x02, 0x07, 0x7a, 0xc3, 0x00, 0x01];
/// How long an answer to the flasher may wait for the host to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Uart {
    /// The master side, for the loader.
    port: TTYPort,
    /// The side a bench opens, kept open here so the master never reads end-of-file.
    slave: TTYPort,
    loader: Option<RomLoader>,
}

/// A copy of the master side for the serial log: writes never wait (a UART nobody listens to
/// loses bytes, it does not stop the chip).
pub struct LogPort(TTYPort);

impl Write for LogPort {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Ok(buf.len()),
            other => other,
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Uart {
    pub fn open() -> std::io::Result<(Uart, LogPort)> {
        let (mut port, slave) = TTYPort::pair().map_err(std::io::Error::other)?;
        port.set_timeout(Duration::ZERO).map_err(std::io::Error::other)?;
        let mut log = port.try_clone_native().map_err(std::io::Error::other)?;
        log.set_timeout(Duration::ZERO).map_err(std::io::Error::other)?;
        Ok((Uart { port, slave, loader: None }, LogPort(log)))
    }

    /// The path a bench opens.
    pub fn path(&self) -> Option<String> {
        self.slave.name()
    }

    /// Download boot mode: the ROM loader takes the UART.
    pub fn enter_download(&mut self, flash_size: usize) {
        self.loader = Some(RomLoader::new(MAC, flash_size));
    }

    /// The chip boots from flash: the loader lets go of the UART.
    pub fn leave_download(&mut self) {
        self.loader = None;
    }

    pub fn downloading(&self) -> bool {
        self.loader.is_some()
    }

    /// The master side's descriptor, for the process's event loop to wait on.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.port.as_raw_fd()
    }

    /// Takes what the host sent: the loader's input in download mode, ignored otherwise (the
    /// app reads no UART input). Returns whether bytes came, and how the loader exited, if it did.
    pub fn poll(
        &mut self,
        flash: &mut FileFlash,
        mut rejected: impl FnMut(&Rejected),
    ) -> std::io::Result<(bool, Option<Exit>)> {
        let mut buf = [0u8; 4096];
        let n = match self.port.read(&mut buf) {
            Ok(0) => return Ok((false, None)),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                return Ok((false, None));
            }
            Err(e) => return Err(e),
        };
        let Some(loader) = self.loader.as_mut() else { return Ok((true, None)) };
        let out = loader.receive(&buf[..n], flash);
        out.rejected.iter().for_each(&mut rejected);
        self.port.set_timeout(WRITE_TIMEOUT).map_err(std::io::Error::other)?;
        let written = self.port.write_all(&out.bytes);
        self.port.set_timeout(Duration::ZERO).map_err(std::io::Error::other)?;
        written?;
        if out.exit.is_some() {
            self.loader = None;
        }
        Ok((true, out.exit))
    }
}
