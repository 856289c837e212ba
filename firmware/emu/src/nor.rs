//! The one strict NOR flash model: the rules every simulated flash in otahil obeys (the
//! emulator's file-backed flash, the sweep's recorder and copy-on-write overlays, and through
//! them the inspector's dumps and the fuzz targets). What the ESP32-C3's SPI NOR flash and
//! esp-storage 0.10 allow:
//!
//! - every access within the chip (no wrap-around);
//! - reads of whole 4-byte words at 4-byte-aligned addresses (esp-storage's `READ_SIZE`);
//! - programs of whole 4-byte words at aligned addresses (`WRITE_SIZE`); erases of whole 4 KiB
//!   sectors;
//! - a program only clears bits. On the chip a program that asks for a 1 where the flash holds a
//!   0 silently leaves the 0 — a missing erase that corrupts data without a word. The model
//!   refuses such a program instead, so the writer bug it reveals fails the test that hits it.

/// esp-storage 0.10's `READ_SIZE` and `WRITE_SIZE`.
pub const READ_SIZE: usize = 4;
pub const WRITE_SIZE: usize = 4;
pub const SECTOR: usize = 4096;

/// A flash operation the chip would not do as asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum NorViolation {
    #[error("{op} of {len} bytes at {offset:#x} goes past the end of the {capacity}-byte flash")]
    OutOfBounds { op: &'static str, offset: u64, len: u64, capacity: u64 },
    #[error("{op} of {len} bytes at {offset:#x} is not aligned to {align} bytes")]
    NotAligned { op: &'static str, offset: u64, len: u64, align: usize },
    #[error(
        "program at {addr:#x} would raise bits: the flash holds {flash:#04x}, the program asks for {wanted:#04x} (a missing erase)"
    )]
    RaisesBit { addr: u64, flash: u8, wanted: u8 },
}

fn within(op: &'static str, offset: u64, len: u64, capacity: usize) -> Result<(), NorViolation> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity as u64 => Ok(()),
        _ => Err(NorViolation::OutOfBounds { op, offset, len, capacity: capacity as u64 }),
    }
}

fn aligned(op: &'static str, offset: u64, len: u64, align: usize) -> Result<(), NorViolation> {
    if offset.is_multiple_of(align as u64) && len.is_multiple_of(align as u64) {
        Ok(())
    } else {
        Err(NorViolation::NotAligned { op, offset, len, align })
    }
}

/// A read of `len` bytes at `offset` from a flash of `capacity` bytes.
pub fn check_read(offset: u32, len: usize, capacity: usize) -> Result<(), NorViolation> {
    aligned("read", offset as u64, len as u64, READ_SIZE)?;
    within("read", offset as u64, len as u64, capacity)
}

/// An erase of `from..to`.
pub fn check_erase(from: u32, to: u32, capacity: usize) -> Result<(), NorViolation> {
    let len = (to as u64).saturating_sub(from as u64);
    if to < from {
        return Err(NorViolation::NotAligned { op: "erase", offset: from as u64, len: 0, align: SECTOR });
    }
    aligned("erase", from as u64, len, SECTOR)?;
    within("erase", from as u64, len, capacity)
}

/// A program of `bytes` at `offset`, before it touches anything.
pub fn check_program(offset: u32, bytes: &[u8], capacity: usize) -> Result<(), NorViolation> {
    aligned("program", offset as u64, bytes.len() as u64, WRITE_SIZE)?;
    within("program", offset as u64, bytes.len() as u64, capacity)
}

/// Checks that programming `src` over `dst` (which starts at `addr`) raises no bit.
pub fn check_no_raise(dst: &[u8], src: &[u8], addr: u32) -> Result<(), NorViolation> {
    match dst.iter().zip(src).position(|(d, s)| !d & s != 0) {
        None => Ok(()),
        Some(i) => {
            Err(NorViolation::RaisesBit { addr: addr as u64 + i as u64, flash: dst[i], wanted: src[i] })
        }
    }
}

/// Programs `src` over `dst`: bits only clear.
pub fn program_bits(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d &= *s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_alignment() {
        assert_eq!(check_read(0, 4, 8), Ok(()));
        assert!(matches!(check_read(1, 4, 8), Err(NorViolation::NotAligned { op: "read", .. })));
        assert!(matches!(check_read(0, 3, 8), Err(NorViolation::NotAligned { .. })));
        assert!(matches!(check_read(8, 4, 8), Err(NorViolation::OutOfBounds { .. })));
        assert!(matches!(check_read(u32::MAX - 3, 4, 8), Err(NorViolation::OutOfBounds { .. })));
        assert_eq!(check_erase(4096, 8192, 8192), Ok(()));
        assert!(matches!(check_erase(100, 4196, 8192), Err(NorViolation::NotAligned { op: "erase", .. })));
        assert!(matches!(check_erase(8192, 4096, 8192), Err(NorViolation::NotAligned { .. })));
        assert!(matches!(check_erase(4096, 12288, 8192), Err(NorViolation::OutOfBounds { .. })));
        assert!(matches!(check_program(2, &[0; 4], 8), Err(NorViolation::NotAligned { op: "program", .. })));
        assert!(matches!(check_program(4, &[0; 8], 8), Err(NorViolation::OutOfBounds { .. })));
    }

    #[test]
    fn a_program_may_only_clear_bits() {
        assert_eq!(check_no_raise(&[0xFF, 0x0F], &[0x12, 0x0F], 0), Ok(()));
        assert_eq!(
            check_no_raise(&[0xFF, 0x0F], &[0x12, 0x1F], 0x100),
            Err(NorViolation::RaisesBit { addr: 0x101, flash: 0x0F, wanted: 0x1F })
        );
        let mut d = [0xF0u8, 0xFF];
        program_bits(&mut d, &[0x3C, 0x00]);
        assert_eq!(d, [0x30, 0x00]);
    }
}
