//! The OTA update writer, with ESP-IDF `esp_ota_*` semantics (spec: ota-ops-and-faults.md).
//!
//! Every flash operation is an erase of one 4 KiB sector or a program of at most one 256-byte
//! page, so a power-cut emulator can stop between any two of them.

use crate::flash::{self, FlashError, PartitionSource};
use crate::image::{ChipInfo, ImageError, ImageInfo, verify_in_partition};
use crate::otadata::{ENTRY_LEN, OtaData, OtaEntry, OtaState};
use crate::partition::{Partition, PartitionTable};
use crate::{PAGE_SIZE, SECTOR_SIZE, align_up};
use core::fmt;
use embedded_storage::nor_flash::NorFlash;

/// When the target slot is erased.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum EraseMode {
    /// `esp_ota_begin(size)`: erase `ALIGN_UP(size, 4 KiB)` before answering (ESPHome's IDF backend).
    Upfront,
    /// `OTA_WITH_SEQUENTIAL_WRITES`: erase each sector just before its first program.
    #[default]
    Sequential,
}

/// A deliberate defect, for proving that otahil's power-cut sweep catches a broken writer.
/// Only in builds with the `test-faults` feature (the emulator's); the chip firmware's writer
/// does not contain it.
#[cfg(feature = "test-faults")]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum WriterFault {
    #[default]
    None,
    /// Switch otadata to the target slot in `begin`, before any of the image is written (and
    /// not again after verification).
    SwitchBeforeWrite,
}

/// How the app side of the update behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OtaConfig {
    pub erase: EraseMode,
    /// App built with rollback support: `set_boot` writes NEW (else UNDEFINED), `begin` refuses
    /// while the running app is PENDING_VERIFY and invalidates the inactive otadata copy.
    pub rollback: bool,
    pub chip: ChipInfo,
    #[cfg(feature = "test-faults")]
    pub fault: WriterFault,
    /// Write as arduino-esp32's `Update` library does instead of `esp_ota_write` (ESPHome,
    /// `esp_https_ota`), which programs every byte at once: bytes are collected in a 4 KiB
    /// buffer ([`UPDATE_BUFFER`]) and reach the flash a whole buffer at a time (or the last,
    /// partial one once the declared size is in), each buffer preceded by `Update`'s lazy erase
    /// (a 64 KiB block at a block boundary with at least a block of the image left, else the
    /// 4 KiB sectors of the image's last block or of an unaligned partition's first), buffers
    /// of only 0xFF not programmed, and the image's first [`WITHHELD_HEAD`] bytes kept in RAM
    /// until `end`, so a partly written slot never holds a valid header. What a cut leaves in
    /// the slot then depends on the bytes received, not on how TCP cut them into reads.
    pub update_library: bool,
}

/// `Update`'s buffer (`SPI_FLASH_SEC_SIZE`).
pub const UPDATE_BUFFER: usize = 4096;
/// `SPI_FLASH_BLOCK_SIZE`: what `Update` erases at once where it can.
const FLASH_BLOCK: u32 = 64 * 1024;

/// A resumed download restarts at a multiple of this (ESP-IDF's example keeps the written
/// length in NVS in KiB, rounded down; shorter than one unit restarts from 0).
pub const RESUME_UNIT: u32 = 1024;

/// How many bytes [`OtaConfig::update_library`] keeps back (`ENCRYPTED_BLOCK_SIZE` in `Update`).
pub const WITHHELD_HEAD: u32 = 16;

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            erase: EraseMode::default(),
            rollback: true,
            chip: ChipInfo::ESP32C3,
            #[cfg(feature = "test-faults")]
            fault: WriterFault::None,
            update_library: false,
        }
    }
}

/// Why an OTA call failed. Each maps to one ESP-IDF error code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OtaError {
    /// No OTA app partition to update (`esp_ota_get_next_update_partition` → NULL).
    NoUpdatePartition,
    /// `ESP_ERR_OTA_PARTITION_CONFLICT`: the target is the running partition.
    PartitionConflict,
    /// `ESP_ERR_OTA_ROLLBACK_INVALID_STATE`: the running app has not confirmed itself.
    RollbackInvalidState,
    /// `ESP_ERR_INVALID_SIZE`: the image does not fit the partition (nothing was erased).
    InvalidSize { size: u32, partition: u32 },
    /// `ESP_ERR_INVALID_SIZE` from a write: the image runs past the partition (or past the size
    /// `Update.begin` was told). How far past depends on how the bytes were chunked, so it is
    /// not reported: the log reads the same on every backend.
    PastEnd { partition: u32 },
    /// `ESP_ERR_OTA_VALIDATE_FAILED` from `esp_ota_write`: first byte is not 0xE9.
    InvalidMagic { found: u8 },
    /// `ESP_ERR_INVALID_ARG` from `esp_ota_end`: nothing was written.
    NothingWritten,
    /// `ESP_ERR_OTA_VALIDATE_FAILED` from `esp_ota_end` / `esp_ota_set_boot_partition`.
    Validate(ImageError),
    /// `ESP_ERR_NOT_FOUND`: no otadata partition.
    NoOtadata,
    /// `ESP_ERR_FLASH_OP_FAIL`.
    Flash(FlashError),
    /// `ESP_ERR_INVALID_ARG`: a write or end with no update begun.
    NotStarted,
    /// `ESP_ERR_INVALID_ARG` from `esp_ota_resume`: not a whole number of [`RESUME_UNIT`]s
    /// inside the slot.
    BadResumeOffset { offset: u32 },
}

impl OtaError {
    /// The `esp_err_t` value ESP-IDF returns for this error.
    pub fn esp_err(&self) -> i32 {
        match self {
            OtaError::NoUpdatePartition | OtaError::NoOtadata => 0x105,
            OtaError::PartitionConflict => 0x1501,
            OtaError::RollbackInvalidState => 0x1506,
            OtaError::InvalidSize { .. } | OtaError::PastEnd { .. } => 0x104,
            OtaError::InvalidMagic { .. } | OtaError::Validate(_) => 0x1503,
            OtaError::NothingWritten | OtaError::NotStarted | OtaError::BadResumeOffset { .. } => 0x102,
            OtaError::Flash(_) => 0x6001,
        }
    }
}

impl fmt::Display for OtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtaError::NoUpdatePartition => f.write_str("no OTA partition to update"),
            OtaError::PartitionConflict => f.write_str("cannot update the running partition"),
            OtaError::RollbackInvalidState => {
                f.write_str("Running app has not confirmed state (ESP_OTA_IMG_PENDING_VERIFY)")
            }
            OtaError::PastEnd { partition } => {
                write!(f, "the image runs past the {partition}-byte partition")
            }
            OtaError::InvalidSize { size, partition } => {
                write!(f, "image of {size} bytes does not fit the {partition}-byte partition")
            }
            OtaError::InvalidMagic { found } => {
                write!(f, "OTA image has invalid magic byte (expected 0xE9, saw 0x{found:02x})")
            }
            OtaError::NothingWritten => f.write_str("nothing was written"),
            OtaError::Validate(e) => write!(f, "New image failed verification: {e}"),
            OtaError::NoOtadata => f.write_str("no otadata partition"),
            OtaError::Flash(e) => e.fmt(f),
            OtaError::NotStarted => f.write_str("no update in progress"),
            OtaError::BadResumeOffset { offset } => write!(f, "cannot resume an update at byte {offset}"),
        }
    }
}

impl From<FlashError> for OtaError {
    fn from(e: FlashError) -> Self {
        OtaError::Flash(e)
    }
}

/// `esp_ota_get_next_update_partition(NULL)`: the first OTA slot after `running`, wrapping.
pub fn next_update_partition(table: &PartitionTable, running: Option<&Partition>) -> Option<Partition> {
    let mut slots = table.partitions().iter().filter(|p| p.ota_slot().is_some());
    let first = *slots.clone().min_by_key(|p| p.subtype)?;
    let Some(running) = running.and_then(|r| r.ota_slot()) else {
        return Some(first);
    };
    Some(
        *slots
            .by_ref()
            .filter(|p| p.ota_slot().unwrap() > running)
            .min_by_key(|p| p.subtype)
            .unwrap_or(&first),
    )
}

/// Number of OTA slots as the app library counts them: ota_0, ota_1, … until the first gap.
pub fn contiguous_ota_count(table: &PartitionTable) -> u8 {
    (0..16).take_while(|n| table.ota(*n).is_some()).count() as u8
}

/// Reads both otadata copies.
pub fn read_otadata<F: NorFlash>(flash: &mut F, otadata: &Partition) -> Result<OtaData, FlashError> {
    let mut a = [0u8; ENTRY_LEN];
    let mut b = [0u8; ENTRY_LEN];
    flash::read(flash, otadata.offset, &mut a)?;
    flash::read(flash, otadata.offset + SECTOR_SIZE, &mut b)?;
    Ok(OtaData::parse(&a, &b))
}

/// Rewrites one otadata copy: erase its sector, then program its 32 bytes.
pub fn write_otadata_copy<F: NorFlash>(
    flash: &mut F,
    otadata: &Partition,
    copy: usize,
    entry: &OtaEntry,
) -> Result<(), FlashError> {
    let sector = otadata.offset + copy as u32 * SECTOR_SIZE;
    flash.erase(sector, sector + SECTOR_SIZE).map_err(FlashError::from_driver)?;
    flash.write(sector, &entry.to_bytes()).map_err(FlashError::from_driver)
}

/// The state of the otadata copy that selects `slot` (`esp_ota_get_state_partition`).
pub fn state_of_slot(data: &OtaData, slot: u8, ota_count: u8) -> Option<(usize, OtaState)> {
    if ota_count == 0 {
        return None;
    }
    let mut found: Option<(usize, u32)> = None;
    for (i, e) in data.entries.iter().enumerate() {
        if e.seq != crate::otadata::SEQ_EMPTY && e.crc_ok() && (e.seq - 1) % ota_count as u32 == slot as u32 {
            // Two copies for the same slot: the newer one speaks for it.
            if found.is_none_or(|(_, seq)| e.seq > seq) {
                found = Some((i, e.seq));
            }
        }
    }
    found.map(|(i, _)| (i, data.entries[i].state))
}

/// An update in progress (`esp_ota_handle_t`).
#[derive(Debug)]
pub struct OtaUpdate {
    target: Partition,
    config: OtaConfig,
    written: u32,
    /// End of the erased prefix of the target, relative to its start.
    erased_to: u32,
    /// The last programmed word, for a write that continues inside it.
    tail: [u8; 8],
    /// The withheld first bytes of the image (`config.update_library`).
    head: [u8; WITHHELD_HEAD as usize],
    /// The size `begin` was given (0: unknown).
    size: u32,
    /// `Update`'s buffer: the last `buffered` of the `written` bytes (`config.update_library`).
    buffer: [u8; UPDATE_BUFFER],
    buffered: usize,
}

impl OtaUpdate {
    /// `esp_ota_begin(target, size)`. `running` is the partition the app runs from.
    pub fn begin<F: NorFlash>(
        flash: &mut F,
        table: &PartitionTable,
        running: &Partition,
        target: &Partition,
        size: u32,
        config: OtaConfig,
    ) -> Result<Self, OtaError> {
        if target.ota_slot().is_none() {
            return Err(OtaError::NoUpdatePartition);
        }
        if target.offset == running.offset {
            return Err(OtaError::PartitionConflict);
        }
        let otadata = table.otadata();
        if config.rollback
            && let (Some(od), Some(slot)) = (otadata, running.ota_slot())
        {
            let data = read_otadata(flash, od)?;
            if let Some((_, OtaState::PendingVerify)) = state_of_slot(&data, slot, table.ota_count()) {
                return Err(OtaError::RollbackInvalidState);
            }
        }
        // The size check comes before any erase: an oversized image must leave flash untouched.
        let needed = size.checked_add(SECTOR_SIZE - 1).map(|v| v & !(SECTOR_SIZE - 1));
        let needed = match needed {
            Some(n) if n <= target.size => n,
            _ => {
                return Err(OtaError::InvalidSize { size, partition: target.size });
            }
        };
        let mut update = OtaUpdate {
            target: *target,
            config,
            written: 0,
            erased_to: 0,
            tail: [0xFF; 8],
            head: [0xFF; WITHHELD_HEAD as usize],
            size,
            buffer: [0xFF; UPDATE_BUFFER],
            buffered: 0,
        };
        if config.erase == EraseMode::Upfront && !config.update_library {
            let len = if size == 0 { target.size } else { needed };
            for s in (0..len).step_by(SECTOR_SIZE as usize) {
                let at = target.offset + s;
                flash.erase(at, at + SECTOR_SIZE).map_err(FlashError::from_driver)?;
            }
            update.erased_to = len;
        }
        if config.rollback
            && let Some(od) = otadata
        {
            invalidate_inactive_copy(flash, table, od, running)?;
        }
        #[cfg(feature = "test-faults")]
        #[cfg(feature = "test-faults")]
        if config.fault == WriterFault::SwitchBeforeWrite {
            switch_boot_slot(flash, table, target, config)?;
        }
        Ok(update)
    }

    /// `esp_ota_resume(target, offset)`: continues an update whose first `offset` bytes are in
    /// `target` already (a download cut short). As in ESP-IDF: no erase (every sector up to
    /// `offset` was erased when first written; the one `offset` starts in is not erased again
    /// unless `offset` is its first byte) and no rollback-state check. `offset` is a multiple of
    /// [`RESUME_UNIT`], at least one unit; an update that withholds its head cannot resume.
    pub fn resume(
        running: &Partition,
        target: &Partition,
        offset: u32,
        config: OtaConfig,
    ) -> Result<Self, OtaError> {
        if target.ota_slot().is_none() {
            return Err(OtaError::NoUpdatePartition);
        }
        if target.offset == running.offset {
            return Err(OtaError::PartitionConflict);
        }
        if offset < RESUME_UNIT
            || !offset.is_multiple_of(RESUME_UNIT)
            || offset > target.size
            || config.update_library
        {
            return Err(OtaError::BadResumeOffset { offset });
        }
        Ok(OtaUpdate {
            target: *target,
            config,
            written: offset,
            erased_to: align_up(offset, SECTOR_SIZE),
            tail: [0xFF; 8],
            head: [0xFF; WITHHELD_HEAD as usize],
            size: 0,
            buffer: [0xFF; UPDATE_BUFFER],
            buffered: 0,
        })
    }

    pub fn target(&self) -> &Partition {
        &self.target
    }

    pub fn written(&self) -> u32 {
        self.written
    }

    /// `esp_ota_write`: appends `data` to the image.
    pub fn write<F: NorFlash>(&mut self, flash: &mut F, data: &[u8]) -> Result<(), OtaError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.written == 0 && data[0] != crate::image::IMAGE_MAGIC {
            return Err(OtaError::InvalidMagic { found: data[0] });
        }
        // `Update.write` checks `len > remaining()` (the size `begin` was told, which the form
        // declares smaller than the slot and ArduinoOTA exactly) before anything reaches
        // `esp_ota_write`: that check first, or which of the two a piece crosses would depend
        // on how the bytes were chunked.
        let end = self.written as u64 + data.len() as u64;
        if self.config.update_library && self.size != 0 && end > self.size as u64 {
            return Err(OtaError::PastEnd { partition: self.size });
        }
        if end > self.target.size as u64 {
            return Err(OtaError::PastEnd { partition: self.target.size });
        }
        if self.config.update_library {
            return self.buffer_write(flash, data);
        }
        let at = self.written;
        self.program(flash, at, data)?;
        self.written += data.len() as u32;
        Ok(())
    }

    /// `Update.write`: into the buffer, which goes to the flash when full or when it holds the
    /// last bytes of the declared size.
    fn buffer_write<F: NorFlash>(&mut self, flash: &mut F, mut data: &[u8]) -> Result<(), OtaError> {
        while !data.is_empty() {
            let n = (UPDATE_BUFFER - self.buffered).min(data.len());
            self.buffer[self.buffered..self.buffered + n].copy_from_slice(&data[..n]);
            self.buffered += n;
            self.written += n as u32;
            data = &data[n..];
            if self.buffered == UPDATE_BUFFER || self.written == self.size {
                self.flush_buffer(flash)?;
            }
        }
        Ok(())
    }

    /// `Update::_writeBuffer`: the lazy erase, then the buffer (the head withheld from the first).
    fn flush_buffer<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), OtaError> {
        let progress = self.written - self.buffered as u32;
        let mut skip = 0;
        if progress == 0 {
            skip = (WITHHELD_HEAD as usize).min(self.buffered);
            self.head[..skip].copy_from_slice(&self.buffer[..skip]);
        }
        let size = if self.size == 0 { self.target.size } else { self.size };
        let offset = self.target.offset + progress;
        let block_erase = size - progress >= FLASH_BLOCK && offset.is_multiple_of(FLASH_BLOCK);
        let first_block_end = (self.target.offset / FLASH_BLOCK + 1) * FLASH_BLOCK;
        let head_sectors = !self.target.offset.is_multiple_of(FLASH_BLOCK) && offset < first_block_end;
        let tail_sectors = offset >= (self.target.offset + size) / FLASH_BLOCK * FLASH_BLOCK;
        let erase = if block_erase { FLASH_BLOCK } else { SECTOR_SIZE };
        if (block_erase || head_sectors || tail_sectors) && progress + erase <= self.target.size {
            flash.erase(offset, offset + erase).map_err(FlashError::from_driver)?;
            self.erased_to = self.erased_to.max(progress + erase);
        }
        let buffer = self.buffer;
        let bytes = &buffer[skip..self.buffered];
        if bytes.iter().any(|&b| b != 0xFF) {
            self.program(flash, progress + skip as u32, bytes)?;
        }
        self.buffered = 0;
        Ok(())
    }

    /// Programs `data` at `at` (relative to the target), erasing sectors on the way up when the
    /// writer erases sequentially. Each program stays within one page; a partial word is padded
    /// with FF and programmed again when the rest arrives (NOR programming only clears bits).
    fn program<F: NorFlash>(&mut self, flash: &mut F, mut at: u32, mut data: &[u8]) -> Result<(), OtaError> {
        let word = F::WRITE_SIZE.max(1) as u32;
        let mut buf = [0xFFu8; PAGE_SIZE as usize + 8];
        while !data.is_empty() {
            let page_end = (at / PAGE_SIZE + 1) * PAGE_SIZE;
            let n = ((page_end - at) as usize).min(data.len());
            let start = at - at % word;
            let end = align_up(at + n as u32, word);
            while self.erased_to < end {
                let sector = self.target.offset + self.erased_to;
                flash.erase(sector, sector + SECTOR_SIZE).map_err(FlashError::from_driver)?;
                self.erased_to += SECTOR_SIZE;
            }
            let span = (end - start) as usize;
            buf[..span].fill(0xFF);
            let skip = (at - start) as usize;
            buf[skip..skip + n].copy_from_slice(&data[..n]);
            if skip > 0 {
                // Keep the bytes of this word that an earlier call already programmed.
                buf[..skip].copy_from_slice(&self.tail[..skip]);
            }
            flash.write(self.target.offset + start, &buf[..span]).map_err(FlashError::from_driver)?;
            let last_word = span - word as usize;
            self.tail[..word as usize].copy_from_slice(&buf[last_word..span]);
            at += n as u32;
            data = &data[n..];
        }
        Ok(())
    }

    /// `esp_ota_end`: verifies the image in the partition (after programming a withheld head).
    pub fn end<F: NorFlash>(mut self, flash: &mut F) -> Result<ImageInfo, OtaError> {
        if self.written == 0 {
            return Err(OtaError::NothingWritten);
        }
        if self.config.update_library {
            if self.buffered > 0 {
                self.flush_buffer(flash)?;
            }
            let n = self.written.min(WITHHELD_HEAD);
            let end = align_up(n, F::WRITE_SIZE.max(1) as u32);
            if self.erased_to == 0 {
                let sector = self.target.offset;
                flash.erase(sector, sector + SECTOR_SIZE).map_err(FlashError::from_driver)?;
                self.erased_to = SECTOR_SIZE;
            }
            let mut head = [0xFFu8; WITHHELD_HEAD as usize];
            head[..n as usize].copy_from_slice(&self.head[..n as usize]);
            flash.write(self.target.offset, &head[..end as usize]).map_err(FlashError::from_driver)?;
        }
        let mut src = PartitionSource::new(flash, &self.target);
        verify_in_partition(&mut src, self.config.chip, self.target.size).map_err(OtaError::Validate)
    }

    /// `esp_ota_abort`: forgets the update. No flash operation: what was written stays.
    pub fn abort(self) {}
}

/// `esp_ota_invalidate_inactive_ota_data_slot`: with rollback, `begin` erases the inactive copy
/// if it is valid and selects a slot other than the running one.
fn invalidate_inactive_copy<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
    otadata: &Partition,
    running: &Partition,
) -> Result<(), OtaError> {
    let data = read_otadata(flash, otadata)?;
    let Some(active) = data.active() else {
        return Ok(());
    };
    let inactive = &data.entries[1 - active];
    let count = table.ota_count() as u32;
    if inactive.seq == crate::otadata::SEQ_EMPTY || !inactive.crc_ok() || count == 0 {
        return Ok(());
    }
    let slot = ((inactive.seq - 1) % count) as u8;
    match table.ota(slot) {
        Some(p) if p.offset != running.offset => {
            let sector = otadata.offset + (1 - active) as u32 * SECTOR_SIZE;
            flash.erase(sector, sector + SECTOR_SIZE).map_err(FlashError::from_driver)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// What `set_boot_partition` wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BootSwitch {
    /// Copy `copy` now holds `entry`.
    Copy { copy: usize, entry: OtaEntry },
    /// The target is the factory app: both otadata sectors were erased.
    Factory,
}

/// `esp_ota_set_boot_partition(target)`: re-verifies the image, then writes the next otadata copy.
pub fn set_boot_partition<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
    target: &Partition,
    config: OtaConfig,
) -> Result<BootSwitch, OtaError> {
    {
        let mut src = PartitionSource::new(flash, target);
        verify_in_partition(&mut src, config.chip, target.size).map_err(OtaError::Validate)?;
    }
    #[cfg(feature = "test-faults")]
    if config.fault == WriterFault::SwitchBeforeWrite {
        // The broken writer switched in `begin` already; report what otadata says now.
        let otadata = table.otadata().ok_or(OtaError::NoOtadata)?;
        let data = read_otadata(flash, otadata)?;
        let copy = data.active().unwrap_or(0);
        return Ok(BootSwitch::Copy { copy, entry: data.entries[copy] });
    }
    switch_boot_slot(flash, table, target, config)
}

/// The otadata half of `esp_ota_set_boot_partition`, without the image check.
fn switch_boot_slot<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
    target: &Partition,
    config: OtaConfig,
) -> Result<BootSwitch, OtaError> {
    let otadata = table.otadata().ok_or(OtaError::NoOtadata)?;
    if target.is_factory() {
        for s in 0..2 {
            let at = otadata.offset + s * SECTOR_SIZE;
            flash.erase(at, at + SECTOR_SIZE).map_err(FlashError::from_driver)?;
        }
        return Ok(BootSwitch::Factory);
    }
    let slot = target.ota_slot().ok_or(OtaError::NoUpdatePartition)?;
    let count = contiguous_ota_count(table);
    if slot >= count {
        return Err(OtaError::NoUpdatePartition);
    }
    let data = read_otadata(flash, otadata)?;
    let (copy, seq) = data.next_for_slot(slot, count);
    let state = if config.rollback { OtaState::New } else { OtaState::Undefined };
    let mut entry = OtaEntry::new(seq, state);
    entry.seq_label = data.entries[copy].seq_label;
    write_otadata_copy(flash, otadata, copy, &entry)?;
    Ok(BootSwitch::Copy { copy, entry })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::ram::{Op, RamFlash};
    use crate::image_builder::{ImageSpec, build};
    use crate::testutil::esphome_4mb_table;
    use std::vec;
    use std::vec::Vec;

    fn image(version: &str, payload: u32) -> Vec<u8> {
        let mut spec = ImageSpec::new("otahil", version);
        spec.payload_len = payload;
        let mut v = vec![0; spec.image_len()];
        build(&spec, &mut v).unwrap();
        v
    }

    fn setup() -> (RamFlash, PartitionTable) {
        let t = esphome_4mb_table();
        let mut f = RamFlash::new(4 << 20);
        let v1 = image("1.0.0", 1000);
        f.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
        let e = OtaEntry::new(1, OtaState::Valid).to_bytes();
        f.data[0x9000..0x9020].copy_from_slice(&e);
        (f, t)
    }

    #[test]
    fn next_partition_wraps() {
        let t = esphome_4mb_table();
        assert_eq!(next_update_partition(&t, t.ota(0)).unwrap().label(), "app1");
        assert_eq!(next_update_partition(&t, t.ota(1)).unwrap().label(), "app0");
        assert_eq!(next_update_partition(&t, None).unwrap().label(), "app0");
        assert_eq!(next_update_partition(&PartitionTable::new(), None), None);
    }

    #[test]
    fn sequential_update_operation_order() {
        let (mut f, t) = setup();
        let running = *t.ota(0).unwrap();
        let target = *t.ota(1).unwrap();
        let v2 = image("2.0.0", 9000);
        let cfg = OtaConfig { rollback: false, ..OtaConfig::default() };
        let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, v2.len() as u32, cfg).unwrap();
        assert!(f.ops.is_empty(), "sequential mode erases nothing in begin");
        for chunk in v2.chunks(256) {
            u.write(&mut f, chunk).unwrap();
        }
        let info = u.end(&mut f).unwrap();
        assert_eq!(info.desc.version(), "2.0.0");
        // Each sector is erased right before the first page that lands in it; pages ascend.
        let mut expected = Vec::new();
        let pages = (v2.len() as u32).div_ceil(256);
        for p in 0..pages {
            let off = p * 256;
            if off % 4096 == 0 {
                expected.push(Op::Erase(0x1D0000 + off));
            }
            let len = (v2.len() as u32 - off).min(256);
            expected.push(Op::Program(0x1D0000 + off, align_up(len, 4)));
        }
        assert_eq!(f.ops, expected);
        assert_eq!(&f.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);

        f.ops.clear();
        let sw = set_boot_partition(&mut f, &t, &target, cfg).unwrap();
        assert_eq!(sw, BootSwitch::Copy { copy: 1, entry: OtaEntry::new(2, OtaState::Undefined) });
        assert_eq!(f.ops, [Op::Erase(0xA000), Op::Program(0xA000, 32)]);
    }

    /// arduino-esp32's `Update`: the head waits in RAM, so a slot cut short has no header; `end`
    /// programs it and the image verifies. Any piece size, down to single bytes.
    #[test]
    fn a_withheld_head_is_programmed_only_at_the_end() {
        let v2 = image("2.0.0", 7001);
        for chunk in [1usize, 5, 16, 17, 1024] {
            let (mut f, t) = setup();
            let (running, target) = (*t.ota(0).unwrap(), *t.ota(1).unwrap());
            let cfg = OtaConfig { rollback: false, update_library: true, ..OtaConfig::default() };
            let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, v2.len() as u32, cfg).unwrap();
            for piece in v2.chunks(chunk) {
                u.write(&mut f, piece).unwrap();
            }
            assert_eq!(&f.data[0x1D0000..0x1D0010], &[0xFF; 16], "chunk {chunk}: head withheld");
            assert_eq!(&f.data[0x1D0010..0x1D0000 + v2.len()], &v2[16..], "chunk {chunk}");
            assert_eq!(u.end(&mut f).unwrap().desc.version(), "2.0.0");
            assert_eq!(&f.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
            assert_eq!(f.ops.last(), Some(&Op::Program(0x1D0000, 16)));
        }
        // A head too short to reach the programmed part: `end` erases its sector first.
        let (mut f, t) = setup();
        let (running, target) = (*t.ota(0).unwrap(), *t.ota(1).unwrap());
        f.data[0x1D0000] = 0x00;
        let cfg = OtaConfig { rollback: false, update_library: true, ..OtaConfig::default() };
        let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, 8, cfg).unwrap();
        u.write(&mut f, &v2[..8]).unwrap();
        // The declared size is in: `Update` writes its buffer, which is all head (erase only).
        assert_eq!(f.ops, [Op::Erase(0x1D0000)]);
        assert!(u.end(&mut f).is_err(), "8 bytes are no image");
        assert_eq!(f.ops[..2], [Op::Erase(0x1D0000), Op::Program(0x1D0000, 8)]);
        assert_eq!(&f.data[0x1D0000..0x1D0008], &v2[..8]);
    }

    /// arduino-esp32's `Update` writes whole 4 KiB buffers: the flash sees the same operations
    /// whatever pieces the bytes came in, and a transfer cut short leaves only the buffers
    /// that filled. Erases are `Update`'s: a 64 KiB block where one starts with a block of
    /// image left, then the sectors of the image's last block.
    #[test]
    fn the_update_library_writes_whole_buffers_whatever_the_pieces() {
        let v2 = image("2.0.0", 150_001);
        let size = v2.len() as u32;
        let cfg = OtaConfig { rollback: false, update_library: true, ..OtaConfig::default() };
        let mut reference: Option<Vec<Op>> = None;
        for chunk in [1usize, 7, 1460, 4096, 5000, 70_000] {
            let (mut f, t) = setup();
            let (running, target) = (*t.ota(0).unwrap(), *t.ota(1).unwrap());
            let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, size, cfg).unwrap();
            for piece in v2.chunks(chunk) {
                u.write(&mut f, piece).unwrap();
            }
            assert_eq!(u.end(&mut f).unwrap().desc.version(), "2.0.0");
            assert_eq!(&f.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
            match &reference {
                None => reference = Some(f.ops.clone()),
                Some(ops) => assert_eq!(&f.ops, ops, "chunk {chunk}"),
            }
        }
        let ops = reference.unwrap();
        // In the order they happen: a 64 KiB block (16 sectors) before the first buffer and
        // another before the 17th, then each of the last block's 5 sectors before its buffer.
        let mut erase_runs: Vec<usize> = Vec::new();
        let mut last_was_erase = false;
        for op in &ops {
            let is_erase = matches!(op, Op::Erase(_));
            match (is_erase, last_was_erase, erase_runs.last_mut()) {
                (true, true, Some(n)) => *n += 1,
                (true, _, _) => erase_runs.push(1),
                _ => {}
            }
            last_was_erase = is_erase;
        }
        assert_eq!(erase_runs, [16, 16, 1, 1, 1, 1, 1]);
        assert_eq!(ops.iter().filter(|op| matches!(op, Op::Erase(_))).count(), 37);
        // Cut after 10,000 bytes: two whole buffers programmed (the head withheld), not a byte more.
        let (mut f, t) = setup();
        let (running, target) = (*t.ota(0).unwrap(), *t.ota(1).unwrap());
        let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, size, cfg).unwrap();
        for piece in v2[..10_000].chunks(1460) {
            u.write(&mut f, piece).unwrap();
        }
        assert_eq!(&f.data[0x1D0000..0x1D0010], &[0xFF; 16]);
        assert_eq!(&f.data[0x1D0010..0x1D2000], &v2[16..8192]);
        assert!(f.data[0x1D2000..0x1D3000].iter().all(|&b| b == 0xFF), "the third buffer is in RAM");
    }

    #[test]
    fn odd_chunks_program_at_once_within_pages() {
        let v2 = image("2.0.0", 7001);
        for chunk in [1usize, 3, 7, 1000, 1024, 5000] {
            let (mut f, t) = setup();
            let running = *t.ota(0).unwrap();
            let target = *t.ota(1).unwrap();
            let cfg = OtaConfig { rollback: false, ..OtaConfig::default() };
            let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, v2.len() as u32, cfg).unwrap();
            let mut sent = 0;
            for piece in v2.chunks(chunk) {
                u.write(&mut f, piece).unwrap();
                sent += piece.len();
                // Everything received so far is in flash already (a disconnect loses nothing).
                assert_eq!(&f.data[0x1D0000..0x1D0000 + sent], &v2[..sent], "chunk {chunk}");
            }
            for op in &f.ops {
                if let Op::Program(at, len) = op {
                    assert_eq!(at / 256, (at + len - 1) / 256, "program crosses a page");
                }
            }
            assert!(u.end(&mut f).is_ok());
        }
    }

    #[test]
    fn upfront_erase_and_rollback_writes() {
        let (mut f, t) = setup();
        // A stale valid copy 1 pointing at ota_1 (not running): begin with rollback erases it.
        f.data[0xA000..0xA020].copy_from_slice(&OtaEntry::new(0x100, OtaState::Invalid).to_bytes());
        let running = *t.ota(0).unwrap();
        let target = *t.ota(1).unwrap();
        let cfg = OtaConfig { erase: EraseMode::Upfront, ..OtaConfig::default() };
        let u = OtaUpdate::begin(&mut f, &t, &running, &target, 10_000, cfg).unwrap();
        assert_eq!(f.ops, [Op::Erase(0x1D0000), Op::Erase(0x1D1000), Op::Erase(0x1D2000), Op::Erase(0xA000)]);
        u.abort();
        assert_eq!(f.ops.len(), 4, "abort performs no flash operation");
    }

    #[test]
    fn oversized_image_performs_zero_erases() {
        let (mut f, t) = setup();
        let running = *t.ota(0).unwrap();
        let target = *t.ota(1).unwrap();
        for erase in [EraseMode::Upfront, EraseMode::Sequential] {
            let cfg = OtaConfig { erase, ..OtaConfig::default() };
            let err = OtaUpdate::begin(&mut f, &t, &running, &target, 0x1C0001, cfg).unwrap_err();
            assert_eq!(err, OtaError::InvalidSize { size: 0x1C0001, partition: 0x1C0000 });
            assert_eq!(err.esp_err(), 0x104);
        }
        assert!(f.ops.is_empty());
    }

    #[test]
    fn begin_refusals() {
        let (mut f, t) = setup();
        let running = *t.ota(0).unwrap();
        let cfg = OtaConfig::default();
        assert_eq!(
            OtaUpdate::begin(&mut f, &t, &running, &running, 100, cfg).unwrap_err(),
            OtaError::PartitionConflict
        );
        let nvs = *t.by_label("nvs").unwrap();
        assert_eq!(
            OtaUpdate::begin(&mut f, &t, &running, &nvs, 100, cfg).unwrap_err(),
            OtaError::NoUpdatePartition
        );
        f.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::PendingVerify).to_bytes());
        let target = *t.ota(1).unwrap();
        assert_eq!(
            OtaUpdate::begin(&mut f, &t, &running, &target, 100, cfg).unwrap_err(),
            OtaError::RollbackInvalidState
        );
        assert!(f.ops.is_empty());
    }

    #[test]
    fn bad_magic_writes_nothing_and_bad_image_fails_end() {
        let (mut f, t) = setup();
        let running = *t.ota(0).unwrap();
        let target = *t.ota(1).unwrap();
        let cfg = OtaConfig { rollback: false, ..OtaConfig::default() };
        let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, 1000, cfg).unwrap();
        assert_eq!(u.write(&mut f, &[0x00, 1, 2]).unwrap_err(), OtaError::InvalidMagic { found: 0 });
        assert!(f.ops.is_empty());

        let mut bad = image("2.0.0", 3000);
        let n = bad.len();
        bad[n - 40] ^= 0xFF; // checksum region
        let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, n as u32, cfg).unwrap();
        u.write(&mut f, &bad).unwrap();
        assert!(matches!(u.end(&mut f).unwrap_err(), OtaError::Validate(_)));

        let u = OtaUpdate::begin(&mut f, &t, &running, &target, 10, cfg).unwrap();
        assert_eq!(u.end(&mut f).unwrap_err(), OtaError::NothingWritten);

        let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, 10, cfg).unwrap();
        u.write(&mut f, &[0xE9]).unwrap();
        let big = vec![0u8; 0x1C0000];
        assert!(matches!(u.write(&mut f, &big).unwrap_err(), OtaError::PastEnd { .. }));
    }

    #[test]
    fn flash_failure_is_reported() {
        let (mut f, t) = setup();
        f.fail_after = Some(0);
        let running = *t.ota(0).unwrap();
        let target = *t.ota(1).unwrap();
        let cfg = OtaConfig { rollback: false, ..OtaConfig::default() };
        let mut u = OtaUpdate::begin(&mut f, &t, &running, &target, 1000, cfg).unwrap();
        let v = image("2.0.0", 1000);
        assert!(matches!(u.write(&mut f, &v).unwrap_err(), OtaError::Flash(_)));
    }

    #[test]
    fn set_boot_to_factory_erases_both_copies() {
        let mut t = PartitionTable::new();
        use crate::partition::{TYPE_APP, TYPE_DATA};
        t.push(Partition::new("otadata", TYPE_DATA, 0, 0x9000, 0x2000, 0)).unwrap();
        t.push(Partition::new("factory", TYPE_APP, 0, 0x10000, 0x100000, 0)).unwrap();
        let mut f = RamFlash::new(4 << 20);
        let v = image("1.0.0", 10);
        f.data[0x10000..0x10000 + v.len()].copy_from_slice(&v);
        let sw = set_boot_partition(&mut f, &t, t.factory().unwrap(), OtaConfig::default()).unwrap();
        assert_eq!(sw, BootSwitch::Factory);
        assert_eq!(f.ops, [Op::Erase(0x9000), Op::Erase(0xA000)]);
        // An unverifiable target is refused before otadata is touched.
        f.ops.clear();
        f.data[0x10000] = 0;
        assert!(matches!(
            set_boot_partition(&mut f, &t, t.factory().unwrap(), OtaConfig::default()),
            Err(OtaError::Validate(_))
        ));
        assert!(f.ops.is_empty());
    }
}
