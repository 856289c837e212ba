//! One update session, whatever the update path: the protocol's sans-IO state machine and the
//! update it is writing, with the device's flash lent per call. The emulator, the chip firmware
//! and the sweep all hold their sessions as this type, so none of them builds the update sink
//! (or knows how a path's library writes) itself.

use crate::partition::{Partition, PartitionTable};
use crate::update::FlashSink;
use crate::writer::{OtaConfig, OtaUpdate};
use embedded_storage::nor_flash::NorFlash;

/// An update path's state machine.
pub trait Protocol {
    /// How this path writes, given how the app's own writer does (`esp_ota_*`). A path whose
    /// library writes its own way (Arduino's `Update`) says so here; one that runs either
    /// library (the pull agent) answers for the update it runs now. Each path implements this
    /// trait in its own module, so this one knows none of them.
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        app
    }
}

/// Where a device's updates go, apart from the flash itself.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub table: &'a PartitionTable,
    /// The partition the app runs from.
    pub running: Partition,
    /// How the app's writer works.
    pub config: OtaConfig,
}

pub struct Session<P> {
    pub server: P,
    update: Option<OtaUpdate>,
}

impl<P: Protocol> Session<P> {
    pub fn new(server: P) -> Self {
        Session { server, update: None }
    }

    /// Runs `f` with the state machine and a sink writing `flash` for it.
    pub fn with<F: NorFlash, R>(
        &mut self,
        flash: &mut F,
        target: &Target<'_>,
        f: impl FnOnce(&mut P, &mut FlashSink<'_, F>) -> R,
    ) -> R {
        let mut sink = FlashSink::new(
            flash,
            target.table,
            target.running,
            self.server.writes(target.config),
            &mut self.update,
        );
        f(&mut self.server, &mut sink)
    }

    /// Whether an update is begun and not finished or aborted.
    pub fn writing(&self) -> bool {
        self.update.is_some()
    }
}
