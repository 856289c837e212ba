//! The board's flash through espflash (as a library) and the chip's ROM serial loader: connect,
//! identify the board, write a merged image in blocks (a block whose MD5 already matches is
//! skipped, every written one verified), and read the flash back through the stub, reading only
//! blocks whose MD5 differs from what the harness last knew (never `read_flash_rom`, whose
//! offset is wrong in espflash 4.7).

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::image_format::Segment;
use espflash::target::{Chip, ProgressCallbacks};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use serialport::UsbPortInfo;
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The unit of skipping and of partial reads: the flash's 64 KiB erase block.
pub const BLOCK: usize = 64 << 10;
/// The stub's read: 4 KiB packets, 64 in flight (espflash's CLI defaults).
const READ_PACKET: u32 = 0x1000;
const READ_IN_FLIGHT: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("cannot open {port}: {source}")]
    Open { port: String, source: serialport::Error },
    #[error("no ROM loader answers on {port}: {source}")]
    Connect { port: String, source: Box<espflash::Error> },
    #[error("the board is a {found}, not an ESP32-C3")]
    WrongChip { found: String },
    #[error("the image is {image} bytes, the board's flash {flash}")]
    SizeMismatch { image: usize, flash: usize },
    #[error("{what}: {source}")]
    Espflash { what: &'static str, source: Box<espflash::Error> },
    #[error("the block at {addr:#x} is not erased after its erase")]
    NotErased { addr: u32 },
    #[error("reading back through a temporary file: {0}")]
    Io(#[from] std::io::Error),
}

fn op(what: &'static str) -> impl FnOnce(espflash::Error) -> FlashError {
    move |e| FlashError::Espflash { what, source: Box::new(e) }
}

/// The port espflash opens, and how the chip gets into its ROM loader.
#[derive(Debug, Clone)]
pub struct FlashPort {
    pub path: PathBuf,
    /// The port's USB identity: its product id picks the reset sequence (0x1001: the chip's own
    /// USB-Serial-JTAG), as in espflash.
    pub usb: UsbPortInfo,
    /// `NoReset` when something else put the chip into download mode (the emulator's control
    /// channel, a strap held by hand); `DefaultReset`/`UsbReset` toggle DTR/RTS.
    pub reset: ResetBeforeOperation,
    /// The rate to switch to after connecting (`None`: stay at 115200, as on a pty).
    pub baud: Option<u32>,
    pub use_stub: bool,
    /// Skip blocks whose MD5 already matches (espflash's skip; off: every block is written).
    pub skip: bool,
    /// The ROM answers the FLASH_END that ends a verified write with "failed to act" (the real
    /// ROM under QEMU): taken as the end of the write.
    pub rom_refuses_flash_end: bool,
}

/// Who the board is, as its ROM reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub chip: String,
    pub mac: String,
    /// major.minor
    pub revision: String,
    pub flash_size: usize,
}

impl Identity {
    /// As JUnit properties and the summary show it.
    pub fn properties(&self) -> Vec<(String, String)> {
        vec![
            ("board.chip".into(), self.chip.clone()),
            ("board.mac".into(), self.mac.clone()),
            ("board.revision".into(), self.revision.clone()),
            ("board.flash_size".into(), format!("{} MiB", self.flash_size >> 20)),
        ]
    }
}

/// An open session with the ROM loader (or the stub it started).
pub struct Session {
    flasher: Flasher,
    port: String,
    rom_refuses_flash_end: bool,
    use_stub: bool,
    skip: bool,
}

impl Session {
    pub fn connect(port: &FlashPort) -> Result<Session, FlashError> {
        let shown = port.path.display().to_string();
        let serial = serialport::new(port.path.to_string_lossy(), 115_200)
            .timeout(Duration::from_secs(3))
            .open_native()
            .map_err(|source| FlashError::Open { port: shown.clone(), source })?;
        // The app is started by the harness (a reset through the board's own means), so the
        // flasher leaves the chip in its loader.
        let conn = Connection::new(
            serial,
            port.usb.clone(),
            ResetAfterOperation::NoResetNoStub,
            port.reset,
            115_200,
        );
        let flasher = Flasher::connect(conn, port.use_stub, true, port.skip, Some(Chip::Esp32c3), port.baud)
            .map_err(|e| match e {
                espflash::Error::ChipMismatch(found, _) => FlashError::WrongChip { found },
                e => FlashError::Connect { port: shown.clone(), source: Box::new(e) },
            })?;
        Ok(Session {
            flasher,
            port: shown,
            rom_refuses_flash_end: port.rom_refuses_flash_end,
            use_stub: port.use_stub,
            skip: port.skip,
        })
    }

    pub fn port(&self) -> &str {
        &self.port
    }

    pub fn identity(&mut self) -> Result<Identity, FlashError> {
        let info = self.flasher.device_info().map_err(op("reading the board's identity"))?;
        Ok(Identity {
            chip: info.chip.to_string(),
            mac: info.mac_address.unwrap_or_else(|| "unknown (secure download mode)".into()),
            revision: info.revision.map(|(a, b)| format!("v{a}.{b}")).unwrap_or_else(|| "unknown".into()),
            flash_size: info.flash_size.size() as usize,
        })
    }

    /// Writes `image` from address 0, block by block; blocks whose MD5 on the chip already
    /// matches are skipped (espflash's skip), every written one is verified. Blocks that are all
    /// 0xFF are erased rather than written: through the ROM that spares sending 64 KiB of 0xFF.
    pub fn write(&mut self, image: &[u8], bar: &ProgressBar) -> Result<WriteReport, FlashError> {
        let started = Instant::now();
        let erased_md5: [u8; 16] = Md5::digest(vec![0xFF; BLOCK]).into();
        let mut data_segments: Vec<Segment<'_>> = Vec::new();
        let (mut erased, mut skipped_erased) = (0, 0);
        for (i, chunk) in image.chunks(BLOCK).enumerate() {
            let addr = (i * BLOCK) as u32;
            if chunk.len() != BLOCK || chunk.iter().any(|&b| b != 0xFF) {
                data_segments.push(Segment { addr, data: Cow::Borrowed(chunk) });
                continue;
            }
            if self.skip {
                let sum = self.flasher.checksum_md5(addr, BLOCK as u32).map_err(op("the flash's MD5"))?;
                if sum.to_be_bytes() == erased_md5 {
                    skipped_erased += 1;
                    continue;
                }
            }
            self.erase_block(addr)?;
            let sum = self.flasher.checksum_md5(addr, BLOCK as u32).map_err(op("the flash's MD5"))?;
            if sum.to_be_bytes() != erased_md5 {
                return Err(FlashError::NotErased { addr });
            }
            erased += 1;
        }
        let mut progress = Progress::new(bar, data_segments.len());
        match self.flasher.write_bins_to_flash(&data_segments, &mut progress) {
            Ok(()) => {}
            // espflash verifies each segment (SPI_FLASH_MD5) before FLASH_END; it keeps its
            // RomError type private, whose Debug form names the command.
            Err(espflash::Error::RomError(e))
                if self.rom_refuses_flash_end && format!("{e:?}").contains("command: FlashEnd") =>
            {
                tracing::debug!("the ROM refused FLASH_END after the verified write: {e}");
            }
            Err(e) => return Err(op("writing the flash")(e)),
        }
        Ok(WriteReport {
            bytes: image.len(),
            written_blocks: progress.written + erased,
            skipped_blocks: progress.skipped + skipped_erased,
            elapsed: started.elapsed(),
            session: started.elapsed(),
        })
    }

    /// Erases one block: the stub's ERASE_REGION, or the ROM's FLASH_BEGIN with no data.
    fn erase_block(&mut self, addr: u32) -> Result<(), FlashError> {
        if self.use_stub {
            return self.flasher.erase_region(addr, BLOCK as u32).map_err(op("erasing a block"));
        }
        let begin = espflash::command::Command::FlashBegin {
            size: BLOCK as u32,
            blocks: 0,
            block_size: 0x400,
            offset: addr,
            supports_encryption: true,
        };
        let timeout = begin.timeout_for_size(BLOCK as u32);
        self.flasher
            .connection()
            .with_timeout(timeout, |c| c.command(begin).map(drop))
            .map_err(op("erasing a block"))
    }

    /// MD5 of each block of the flash, as the chip computes it.
    fn block_md5s(&mut self, len: usize) -> Result<Vec<[u8; 16]>, FlashError> {
        (0..len)
            .step_by(BLOCK)
            .map(|addr| {
                let size = BLOCK.min(len - addr) as u32;
                let sum = self.flasher.checksum_md5(addr as u32, size).map_err(op("the flash's MD5"))?;
                Ok(sum.to_be_bytes())
            })
            .collect()
    }

    /// Brings `known` (what the harness last saw in the flash) up to date: each block whose
    /// MD5 differs is read through the stub. Returns how many bytes were read.
    pub fn read_into(&mut self, known: &mut [u8]) -> Result<usize, FlashError> {
        let sums = self.block_md5s(known.len())?;
        let stale: Vec<usize> = sums
            .iter()
            .enumerate()
            .filter(|(i, sum)| {
                let start = i * BLOCK;
                let end = (start + BLOCK).min(known.len());
                Md5::digest(&known[start..end]).as_slice() != sum.as_slice()
            })
            .map(|(i, _)| i)
            .collect();
        let dir = tempfile::tempdir()?;
        let mut read = 0;
        // Neighbouring stale blocks are read in one go.
        let mut i = 0;
        while i < stale.len() {
            let mut j = i;
            while j + 1 < stale.len() && stale[j + 1] == stale[j] + 1 {
                j += 1;
            }
            let start = stale[i] * BLOCK;
            let end = ((stale[j] + 1) * BLOCK).min(known.len());
            let file = dir.path().join(format!("{start:08x}.bin"));
            self.flasher
                .read_flash(start as u32, (end - start) as u32, READ_PACKET, READ_IN_FLIGHT, file.clone())
                .map_err(op("reading the flash back"))?;
            let data = std::fs::read(&file)?;
            if data.len() != end - start {
                return Err(FlashError::SizeMismatch { image: data.len(), flash: end - start });
            }
            known[start..end].copy_from_slice(&data);
            read += data.len();
            i = j + 1;
        }
        Ok(read)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WriteReport {
    pub bytes: usize,
    pub written_blocks: usize,
    pub skipped_blocks: usize,
    /// Writing and verifying.
    pub elapsed: Duration,
    /// From entering the loader to the end: connecting, identifying, writing, verifying.
    pub session: Duration,
}

/// espflash's per-segment callbacks on one bar over the blocks it writes.
struct Progress<'a> {
    bar: &'a ProgressBar,
    /// Chunks in the segment being written.
    chunks: u64,
    written: usize,
    skipped: usize,
}

impl<'a> Progress<'a> {
    fn new(bar: &'a ProgressBar, blocks: usize) -> Self {
        bar.set_length((blocks * BLOCK) as u64);
        bar.set_position(0);
        bar.set_style(
            ProgressStyle::with_template("flashing {bar:30} {bytes}/{total_bytes} {msg}")
                .expect("static template"),
        );
        Progress { bar, chunks: 1, written: 0, skipped: 0 }
    }

    fn done(&self) -> u64 {
        ((self.written + self.skipped) * BLOCK) as u64
    }
}

impl ProgressCallbacks for Progress<'_> {
    fn init(&mut self, _addr: u32, chunks: usize) {
        self.chunks = chunks.max(1) as u64;
        self.bar.set_position(self.done());
    }
    fn update(&mut self, current: usize) {
        // espflash counts the segment's chunks sent (compressed ones with the stub).
        let part = (current as u64).min(self.chunks) * BLOCK as u64 / self.chunks;
        self.bar.set_position(self.done() + part);
    }
    fn verifying(&mut self) {
        self.bar.set_message("verifying");
    }
    fn finish(&mut self, skipped: bool) {
        if skipped {
            self.skipped += 1;
        } else {
            self.written += 1;
        }
        self.bar.set_position(self.done());
    }
}
