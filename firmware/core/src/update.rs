//! The update sink every update path writes through: begin / write / end / abort, with
//! `esp_ota_*` semantics and protocol-neutral errors ([`OtaError`]). Each protocol maps an
//! `OtaError` to its own codes and texts inside its module (`proto::*`), so adding an update path
//! never touches the writer.

use crate::nvs::StoreError;
use crate::otadata::OtaState;
use crate::partition::{Partition, PartitionTable};
use crate::resume;
use crate::writer::{BootSwitch, OtaConfig, OtaError, OtaUpdate, next_update_partition, set_boot_partition};
use embedded_storage::nor_flash::NorFlash;

/// What `end` switched the boot slot to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Switched {
    pub slot: u8,
    pub seq: u32,
    pub state: OtaState,
}

/// Where an update goes. One update at a time; `begin` again forgets the previous one.
pub trait UpdateSink {
    /// Prepares an update of `size` bytes (checked against the target before any erase);
    /// returns the target OTA slot.
    fn begin(&mut self, size: u32) -> Result<u8, OtaError>;
    /// Appends image bytes.
    fn write(&mut self, data: &[u8]) -> Result<(), OtaError>;
    /// Verifies the image in its slot and switches the boot slot to it.
    fn end(&mut self) -> Result<Switched, OtaError>;
    /// Forgets the update; flash stays as it is.
    fn abort(&mut self);
    /// `esp_ota_resume`: continues an update of the slot `begin` would pick, whose first
    /// `offset` bytes are written already; returns the slot. A sink that cannot says so.
    fn resume(&mut self, offset: u32) -> Result<u8, OtaError> {
        Err(OtaError::BadResumeOffset { offset })
    }
    /// The resume record ([`crate::resume`]): the URL (copied into `buf`) and offset of a
    /// download that was cut short, if the sink keeps one.
    fn resume_record<'b>(&mut self, buf: &'b mut [u8]) -> Option<(&'b str, u32)> {
        let _ = buf;
        None
    }
    /// Starts the record for `url` at `at` bytes.
    fn start_resume_record(&mut self, url: &str, at: u32) -> Result<(), StoreError> {
        let _ = (url, at);
        Err(StoreError::NoPartition)
    }
    /// The recorded download has `at` bytes in the slot.
    fn advance_resume_record(&mut self, at: u32) -> Result<(), StoreError> {
        let _ = at;
        Err(StoreError::NoPartition)
    }
    /// Forgets the record.
    fn clear_resume_record(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Writes the inactive OTA slot of a `NorFlash`, as `esp_ota_begin/write/end` and
/// `esp_ota_set_boot_partition` do. Borrows everything per call, so an adapter can hold the
/// flash elsewhere between reads; the update in progress lives in `update`, which the adapter
/// keeps with the session.
pub struct FlashSink<'a, F> {
    flash: &'a mut F,
    table: &'a PartitionTable,
    running: Partition,
    config: OtaConfig,
    update: &'a mut Option<OtaUpdate>,
}

impl<'a, F: NorFlash> FlashSink<'a, F> {
    /// `running` is the partition the app booted from; `update` is the session's update state
    /// (`None` when the session starts).
    pub fn new(
        flash: &'a mut F,
        table: &'a PartitionTable,
        running: Partition,
        config: OtaConfig,
        update: &'a mut Option<OtaUpdate>,
    ) -> Self {
        FlashSink { flash, table, running, config, update }
    }
}

impl<F: NorFlash> UpdateSink for FlashSink<'_, F> {
    fn begin(&mut self, size: u32) -> Result<u8, OtaError> {
        let target =
            next_update_partition(self.table, Some(&self.running)).ok_or(OtaError::NoUpdatePartition)?;
        let update = OtaUpdate::begin(self.flash, self.table, &self.running, &target, size, self.config)?;
        self.update.replace(update);
        Ok(target.ota_slot().unwrap_or(0))
    }

    fn write(&mut self, data: &[u8]) -> Result<(), OtaError> {
        let update = self.update.as_mut().ok_or(OtaError::NotStarted)?;
        update.write(self.flash, data)
    }

    fn end(&mut self) -> Result<Switched, OtaError> {
        let update = self.update.take().ok_or(OtaError::NotStarted)?;
        let target = *update.target();
        update.end(self.flash)?;
        match set_boot_partition(self.flash, self.table, &target, self.config)? {
            BootSwitch::Copy { entry, .. } => {
                Ok(Switched { slot: target.ota_slot().unwrap_or(0), seq: entry.seq, state: entry.state })
            }
            // `target` is an OTA slot, so this cannot happen; say so rather than panic.
            BootSwitch::Factory => Err(OtaError::NoUpdatePartition),
        }
    }

    fn abort(&mut self) {
        if let Some(u) = self.update.take() {
            u.abort();
        }
    }

    fn resume(&mut self, offset: u32) -> Result<u8, OtaError> {
        let target =
            next_update_partition(self.table, Some(&self.running)).ok_or(OtaError::NoUpdatePartition)?;
        let update = OtaUpdate::resume(&self.running, &target, offset, self.config)?;
        self.update.replace(update);
        Ok(target.ota_slot().unwrap_or(0))
    }

    fn resume_record<'b>(&mut self, buf: &'b mut [u8]) -> Option<(&'b str, u32)> {
        resume::load(self.flash, self.table.nvs()?, buf)
    }

    fn start_resume_record(&mut self, url: &str, at: u32) -> Result<(), StoreError> {
        resume::start(self.flash, self.table.nvs().ok_or(StoreError::NoPartition)?, url, at)
    }

    fn advance_resume_record(&mut self, at: u32) -> Result<(), StoreError> {
        resume::advance(self.flash, self.table.nvs().ok_or(StoreError::NoPartition)?, at)
    }

    fn clear_resume_record(&mut self) -> Result<(), StoreError> {
        match self.table.nvs() {
            Some(part) => resume::clear(self.flash, part),
            None => Ok(()),
        }
    }
}
