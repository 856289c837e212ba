//! The [`Backend`] that writes the inactive OTA slot of a `NorFlash`, as ESPHome's ESP-IDF
//! backend does with `esp_ota_begin/write/end` and `esp_ota_set_boot_partition`.

use super::{Backend, BackendError, Switched, begin_error_code, end_error_code, write_error_code};
use crate::partition::{Partition, PartitionTable};
use crate::writer::{BootSwitch, OtaConfig, OtaError, OtaUpdate, next_update_partition, set_boot_partition};
use embedded_storage::nor_flash::NorFlash;

/// Borrows everything per call of the server, so an adapter can hold the flash elsewhere between
/// reads; the update in progress lives in `update`, which the adapter keeps with the session.
pub struct FlashBackend<'a, F> {
    flash: &'a mut F,
    table: &'a PartitionTable,
    running: Partition,
    config: OtaConfig,
    update: &'a mut Option<OtaUpdate>,
}

impl<'a, F: NorFlash> FlashBackend<'a, F> {
    /// `running` is the partition the app booted from; `update` is the session's update state
    /// (`None` when the session starts).
    pub fn new(
        flash: &'a mut F,
        table: &'a PartitionTable,
        running: Partition,
        config: OtaConfig,
        update: &'a mut Option<OtaUpdate>,
    ) -> Self {
        FlashBackend { flash, table, running, config, update }
    }
}

fn err(code: u8, detail: OtaError) -> BackendError {
    BackendError { code, detail: Some(detail) }
}

impl<F: NorFlash> Backend for FlashBackend<'_, F> {
    fn begin(&mut self, size: u32) -> Result<u8, BackendError> {
        let Some(target) = next_update_partition(self.table, Some(&self.running)) else {
            return Err(err(begin_error_code(&OtaError::NoUpdatePartition), OtaError::NoUpdatePartition));
        };
        let update = OtaUpdate::begin(self.flash, self.table, &self.running, &target, size, self.config)
            .map_err(|e| err(begin_error_code(&e), e))?;
        self.update.replace(update);
        Ok(target.ota_slot().unwrap_or(0))
    }

    fn write(&mut self, data: &[u8]) -> Result<(), BackendError> {
        let Some(update) = self.update.as_mut() else {
            return Err(BackendError { code: super::code::ERROR_UNKNOWN, detail: None });
        };
        update.write(self.flash, data).map_err(|e| err(write_error_code(&e), e))
    }

    fn end(&mut self) -> Result<Switched, BackendError> {
        let Some(update) = self.update.take() else {
            return Err(BackendError { code: super::code::ERROR_UNKNOWN, detail: None });
        };
        let target = *update.target();
        update.end(self.flash).map_err(|e| err(end_error_code(&e), e))?;
        match set_boot_partition(self.flash, self.table, &target, self.config)
            .map_err(|e| err(end_error_code(&e), e))?
        {
            BootSwitch::Copy { entry, .. } => {
                Ok(Switched { slot: target.ota_slot().unwrap_or(0), seq: entry.seq, state: entry.state })
            }
            BootSwitch::Factory => Err(BackendError { code: super::code::ERROR_UNKNOWN, detail: None }),
        }
    }

    fn abort(&mut self) {
        if let Some(u) = self.update.take() {
            u.abort();
        }
    }
}
