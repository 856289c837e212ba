//! Runs the loader on a byte stream (a pseudo-terminal's master side, a serial port, a socket):
//! the thin adapter around the sans-IO [`RomLoader`].

use super::{Exit, Rejected, RomLoader};
use embedded_storage::nor_flash::NorFlash;
use std::io::{ErrorKind, Read, Write};

/// Why serving ended.
#[derive(Debug)]
pub enum Ended {
    /// The loader handed the chip back (FLASH_END, RUN_USER_CODE).
    Exit(Exit),
    /// The host side closed.
    Closed,
    /// `keep_going` said stop.
    Stopped,
}

/// Serves the loader on `port` until it exits, the port closes or `keep_going` returns false
/// (checked whenever a read times out: give the port a read timeout). `rejected` hears every
/// frame the loader refused.
pub fn serve<P: Read + Write, F: NorFlash>(
    port: &mut P,
    loader: &mut RomLoader,
    flash: &mut F,
    mut keep_going: impl FnMut() -> bool,
    mut rejected: impl FnMut(&Rejected),
) -> std::io::Result<Ended> {
    let mut buf = [0u8; 4096];
    loop {
        match port.read(&mut buf) {
            Ok(0) => return Ok(Ended::Closed),
            Ok(n) => {
                let out = loader.receive(&buf[..n], flash);
                out.rejected.iter().for_each(&mut rejected);
                port.write_all(&out.bytes)?;
                port.flush()?;
                if let Some(exit) = out.exit {
                    return Ok(Ended::Exit(exit));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                if !keep_going() {
                    return Ok(Ended::Stopped);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
