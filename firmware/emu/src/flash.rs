//! A NOR flash backed by a file: 4 KiB erase sectors, programming only clears bits (AND),
//! erase sets 0xFF. Every erase and program is counted, and a [`Fault`] can cut the power
//! between two operations or in the middle of one (a torn write, with seeded random bits).
//!
//! The file is written through on every operation, so at any moment — including right after
//! a cut — it holds exactly what the chip's flash would.

use crate::nor::{self, NorViolation};
use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub const SECTOR: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FlashFileError {
    #[error("cannot open flash file {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("flash file {path} is {len} bytes; expected a multiple of 4096 between 1 MiB and 16 MiB")]
    BadSize { path: String, len: u64 },
}

/// When the power goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CutPoint {
    /// After this many further erase/program operations complete.
    AfterOps(u64),
    /// After this many further bytes were programmed (the program that crosses is cut there).
    AfterBytes(u64),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fault {
    pub at: CutPoint,
    /// `Some(seed)`: the interrupted operation is torn (random bits from `seed`);
    /// `None`: it does not happen at all.
    pub torn: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpKind {
    Erase,
    Program,
}

/// Where the power was cut.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PowerLoss {
    /// Index (from 1, over the flash file's whole life in this process) of the interrupted op.
    pub op: u64,
    pub kind: OpKind,
    pub addr: u32,
    pub torn: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Counters {
    pub erases: u64,
    pub programs: u64,
    pub bytes_programmed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlashOpError {
    /// The power was cut: nothing more happens until power-on.
    #[error("the power was lost")]
    PowerLost,
    /// An operation the chip's flash does not do as asked (see [`crate::nor`]).
    #[error(transparent)]
    Violation(#[from] NorViolation),
}

impl NorFlashError for FlashOpError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FlashOpError::PowerLost | FlashOpError::Violation(NorViolation::RaisesBit { .. }) => {
                NorFlashErrorKind::Other
            }
            FlashOpError::Violation(NorViolation::OutOfBounds { .. }) => NorFlashErrorKind::OutOfBounds,
            FlashOpError::Violation(NorViolation::NotAligned { .. }) => NorFlashErrorKind::NotAligned,
        }
    }
}

pub use ota_core::rng::SplitMix;

/// What an erase interrupted half-way leaves in its sector: each bit is erased (1) or keeps its
/// old value, chosen by `seed`.
pub fn torn_erase(sector: &mut [u8], seed: u64) {
    let mut rng = SplitMix(seed);
    for b in sector {
        *b |= rng.byte();
    }
}

/// What a program interrupted half-way leaves: a random subset (from `seed`) of the bits it
/// would clear is cleared.
pub fn torn_program(dst: &mut [u8], src: &[u8], seed: u64) {
    let mut rng = SplitMix(seed);
    for (d, s) in dst.iter_mut().zip(src) {
        *d &= *s | rng.byte();
    }
}

pub struct FileFlash {
    data: Vec<u8>,
    file: Option<File>,
    counters: Counters,
    fault: Option<(Fault, Counters)>,
    lost: Option<PowerLoss>,
    /// Thrown by whoever sees the power go between operations (a cut at a log line): the next
    /// operation does not happen.
    cut_now: Arc<AtomicBool>,
    /// Set while the power is lost (`lost` is some), for whoever prints on the device's behalf
    /// in the middle of an operation sequence: a chip without power says nothing more.
    unpowered: Arc<AtomicBool>,
}

impl FileFlash {
    /// Whether the power is lost now, shared (see [`FileFlash::power_loss`] for what was cut).
    pub fn unpowered_flag(&self) -> Arc<AtomicBool> {
        self.unpowered.clone()
    }

    /// The switch that cuts the power before the next operation (shared with the serial log).
    pub fn cut_switch(&self) -> Arc<AtomicBool> {
        self.cut_now.clone()
    }

    /// Opens an existing flash file (its size is the flash size).
    pub fn open(path: &Path) -> Result<Self, FlashFileError> {
        let name = path.display().to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| FlashFileError::Open { path: name.clone(), source })?;
        let len =
            file.metadata().map_err(|source| FlashFileError::Open { path: name.clone(), source })?.len();
        if len % SECTOR as u64 != 0 || !(1 << 20..=16 << 20).contains(&len) {
            return Err(FlashFileError::BadSize { path: name, len });
        }
        let mut data = Vec::with_capacity(len as usize);
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut data))
            .map_err(|source| FlashFileError::Open { path: name, source })?;
        Ok(FileFlash {
            data,
            file: Some(file),
            counters: Counters::default(),
            fault: None,
            lost: None,
            cut_now: Arc::default(),
            unpowered: Arc::default(),
        })
    }

    /// A flash that lives in memory only (tests, benchmarks).
    pub fn in_memory(data: Vec<u8>) -> Self {
        FileFlash {
            data,
            file: None,
            counters: Counters::default(),
            fault: None,
            lost: None,
            cut_now: Arc::default(),
            unpowered: Arc::default(),
        }
    }

    /// Writes a complete image to `path` (creating or truncating it).
    pub fn create(path: &Path, image: &[u8]) -> std::io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(image)?;
        f.sync_all()
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Arms a power cut, counted from now. Replaces any armed one.
    pub fn arm(&mut self, fault: Fault) {
        self.fault = Some((fault, self.counters));
    }

    pub fn disarm(&mut self) {
        self.fault = None;
    }

    pub fn armed(&self) -> Option<Fault> {
        self.fault.map(|(f, _)| f)
    }

    /// The power loss that stopped the flash, if any.
    pub fn power_loss(&self) -> Option<PowerLoss> {
        self.lost
    }

    /// The cut was noticed and the device powered on again: operations work again.
    pub fn restore_power(&mut self) {
        self.lost = None;
        self.unpowered.store(false, Ordering::Relaxed);
    }

    fn persist(&mut self, from: usize, to: usize) -> Result<(), FlashOpError> {
        if let Some(f) = &self.file {
            // A failing host disk is not a device fault: report it loudly and stop the device.
            if let Err(e) = f.write_all_at(&self.data[from..to], from as u64) {
                eprintln!("ota-emu: writing the flash file failed: {e}");
                return Err(FlashOpError::PowerLost);
            }
        }
        Ok(())
    }

    /// Decides whether the next operation is cut. Returns how many bytes of a program of `len`
    /// bytes still happen before the cut (`None`: no cut).
    fn cut_check(&mut self, kind: OpKind, len: u64) -> Option<u64> {
        if self.cut_now.load(Ordering::Relaxed) {
            return Some(0);
        }
        let (fault, base) = self.fault?;
        match fault.at {
            CutPoint::AfterOps(n) => {
                let done = self.counters.erases + self.counters.programs - base.erases - base.programs;
                (done >= n).then_some(0)
            }
            CutPoint::AfterBytes(n) => {
                let done = self.counters.bytes_programmed - base.bytes_programmed;
                (kind == OpKind::Program && done + len > n).then(|| n.saturating_sub(done))
            }
        }
    }

    fn lose_power(&mut self, kind: OpKind, addr: u32, torn: bool) {
        let op = self.counters.erases + self.counters.programs + 1;
        self.lost = Some(PowerLoss { op, kind, addr, torn });
        self.unpowered.store(true, Ordering::Relaxed);
        self.fault = None;
        self.cut_now.store(false, Ordering::Relaxed);
    }
}

impl ErrorType for FileFlash {
    type Error = FlashOpError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = nor::READ_SIZE;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashOpError> {
        if self.lost.is_some() {
            return Err(FlashOpError::PowerLost);
        }
        nor::check_read(offset, bytes.len(), self.data.len())?;
        let o = offset as usize;
        bytes.copy_from_slice(&self.data[o..o + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = nor::WRITE_SIZE;
    const ERASE_SIZE: usize = SECTOR as usize;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashOpError> {
        if self.lost.is_some() {
            return Err(FlashOpError::PowerLost);
        }
        nor::check_erase(from, to, self.data.len())?;
        for sector in (from..to).step_by(SECTOR as usize) {
            let range = sector as usize..(sector + SECTOR) as usize;
            if self.cut_check(OpKind::Erase, 0).is_some() {
                let torn = self.fault.and_then(|(f, _)| f.torn);
                if let Some(seed) = torn {
                    // An interrupted erase: each bit is erased (1) or keeps its old value.
                    torn_erase(&mut self.data[range.clone()], seed ^ sector as u64);
                    self.persist(range.start, range.end)?;
                }
                self.lose_power(OpKind::Erase, sector, torn.is_some());
                return Err(FlashOpError::PowerLost);
            }
            self.data[range.clone()].fill(0xFF);
            self.counters.erases += 1;
            self.persist(range.start, range.end)?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashOpError> {
        if self.lost.is_some() {
            return Err(FlashOpError::PowerLost);
        }
        nor::check_program(offset, bytes, self.data.len())?;
        let start = offset as usize;
        let end = start + bytes.len();
        nor::check_no_raise(&self.data[start..end], bytes, offset)?;
        if let Some(keep) = self.cut_check(OpKind::Program, bytes.len() as u64) {
            let keep = keep as usize;
            nor::program_bits(&mut self.data[start..start + keep], bytes);
            let torn = self.fault.and_then(|(f, _)| f.torn);
            if let Some(seed) = torn {
                // The rest of the page program lands partly: a random subset of the bits it
                // would clear is cleared.
                torn_program(&mut self.data[start + keep..end], &bytes[keep..], seed ^ offset as u64);
            }
            self.counters.bytes_programmed += keep as u64;
            self.persist(start, end)?;
            self.lose_power(OpKind::Program, offset, torn.is_some());
            return Err(FlashOpError::PowerLost);
        }
        nor::program_bits(&mut self.data[start..end], bytes);
        self.counters.programs += 1;
        self.counters.bytes_programmed += bytes.len() as u64;
        self.persist(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nor_semantics_and_counting() {
        let mut f = FileFlash::in_memory(vec![0xFF; 1 << 20]);
        f.write(0, &[0xF0, 0x0F, 0xFF, 0x00]).unwrap();
        f.write(0, &[0x30, 0x0F, 0x7F, 0x00]).unwrap();
        assert_eq!(&f.data()[..4], &[0x30, 0x0F, 0x7F, 0x00], "a second program clears more bits");
        f.erase(0, 8192).unwrap();
        assert!(f.data()[..8192].iter().all(|&b| b == 0xFF));
        assert_eq!(f.counters(), Counters { erases: 2, programs: 2, bytes_programmed: 8 });
    }

    /// The strict model refuses what the chip would not do as asked, and changes nothing.
    #[test]
    fn the_strict_model_catches_a_raised_bit_and_misaligned_access() {
        let mut f = FileFlash::in_memory(vec![0xFF; 1 << 20]);
        f.write(0, &[0xF0, 0x0F, 0xFF, 0x00]).unwrap();
        // A program without the erase it needs: bit 2 of byte 0 would have to go 0 -> 1.
        assert_eq!(
            f.write(0, &[0x3C, 0xFF, 0xFF, 0xFF]),
            Err(FlashOpError::Violation(NorViolation::RaisesBit { addr: 0, flash: 0xF0, wanted: 0x3C }))
        );
        assert_eq!(&f.data()[..4], &[0xF0, 0x0F, 0xFF, 0x00], "nothing was programmed");
        let misaligned = |r| matches!(r, Err(FlashOpError::Violation(NorViolation::NotAligned { .. })));
        assert!(misaligned(f.erase(1, 4096)));
        assert!(misaligned(f.write(2, &[0; 4])));
        assert!(misaligned(f.write(4, &[0; 3])));
        let mut buf = [0u8; 4];
        assert!(misaligned(f.read(1, &mut buf)), "esp-storage reads whole words");
        assert!(misaligned(f.read(0, &mut buf[..3])));
        assert!(matches!(
            f.write((1 << 20) - 4, &[0; 8]),
            Err(FlashOpError::Violation(NorViolation::OutOfBounds { .. }))
        ));
        // ota-core's reader takes any address and length through whole-word reads.
        let mut odd = [0u8; 3];
        ota_core::flash::read(&mut f, 1, &mut odd).unwrap();
        assert_eq!(odd, [0x0F, 0xFF, 0x00]);
        assert_eq!(f.counters(), Counters { erases: 0, programs: 1, bytes_programmed: 4 });
    }

    #[test]
    fn cut_after_ops_is_atomic_without_torn() {
        let mut f = FileFlash::in_memory(vec![0xFF; 1 << 20]);
        f.arm(Fault { at: CutPoint::AfterOps(1), torn: None });
        f.write(0, &[0; 4]).unwrap();
        assert_eq!(f.write(4, &[0; 4]), Err(FlashOpError::PowerLost));
        assert_eq!(&f.data()[4..8], &[0xFF; 4], "the interrupted program did not happen");
        assert_eq!(f.power_loss(), Some(PowerLoss { op: 2, kind: OpKind::Program, addr: 4, torn: false }));
        assert_eq!(f.erase(0, 4096), Err(FlashOpError::PowerLost), "dead until power-on");
        f.restore_power();
        f.erase(0, 4096).unwrap();
    }

    #[test]
    fn cut_after_bytes_programs_exactly_that_many() {
        let mut f = FileFlash::in_memory(vec![0xFF; 1 << 20]);
        f.arm(Fault { at: CutPoint::AfterBytes(10), torn: None });
        f.write(0, &[0; 8]).unwrap();
        assert_eq!(f.write(8, &[0; 8]), Err(FlashOpError::PowerLost));
        assert_eq!(&f.data()[..12], &[0; 10][..].iter().chain(&[0xFF; 2]).copied().collect::<Vec<_>>()[..]);
        assert_eq!(f.counters().bytes_programmed, 10);
    }

    #[test]
    fn torn_operations_are_seeded() {
        let run = |seed| {
            let mut f = FileFlash::in_memory(vec![0x00; 1 << 20]);
            f.arm(Fault { at: CutPoint::AfterOps(0), torn: Some(seed) });
            assert_eq!(f.erase(0, 4096), Err(FlashOpError::PowerLost));
            f.data()[..4096].to_vec()
        };
        let a = run(1);
        assert_eq!(a, run(1), "same seed, same bits");
        assert_ne!(a, run(2));
        assert!(a.iter().any(|&b| b != 0xFF) && a.iter().any(|&b| b != 0x00), "a torn erase is partial");
    }

    #[test]
    fn file_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        FileFlash::create(&path, &vec![0xFF; 1 << 20]).unwrap();
        let mut f = FileFlash::open(&path).unwrap();
        f.arm(Fault { at: CutPoint::AfterOps(1), torn: None });
        f.write(16, &[1, 2, 3, 4]).unwrap();
        let _ = f.write(20, &[5, 6, 7, 8]);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[16..24], &[1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]);
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(matches!(FileFlash::open(&path), Err(FlashFileError::BadSize { len: 100, .. })));
    }
}
