//! One update session, whatever the update path: the protocol's sans-IO state machine, with the
//! device's flash and its one update in progress lent per call. The emulator, the chip firmware
//! and the sweep all hold their sessions as this type, so none of them builds the update sink
//! (or knows how a path's library writes) itself.

use crate::partition::{Partition, PartitionTable};
use crate::update::FlashSink;
use crate::writer::{OtaConfig, OtaUpdate};
use core::cell::RefCell;
use embedded_storage::nor_flash::NorFlash;

/// The device's update in progress. One for the whole device, whichever path writes it (the
/// app's rule: one update at a time), so its 4 KiB `Update` buffer exists once, not once per
/// path: on the chip every path's copy cost stack the network needed.
pub type UpdateSlot = RefCell<Option<OtaUpdate>>;

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
    /// The update in progress, whichever session writes it.
    pub update: &'a UpdateSlot,
}

pub struct Session<P> {
    pub server: P,
}

impl<P: Protocol> Session<P> {
    pub fn new(server: P) -> Self {
        Session { server }
    }

    /// Runs `f` with the state machine and a sink writing `flash` for it.
    pub fn with<F: NorFlash, R>(
        &mut self,
        flash: &mut F,
        target: &Target<'_>,
        f: impl FnOnce(&mut P, &mut FlashSink<'_, F>) -> R,
    ) -> R {
        let config = self.server.writes(target.config);
        // Sessions are never nested; if one were, it would see no update begun rather than
        // take the other's.
        let mut spare = None;
        let mut held = target.update.try_borrow_mut();
        let update = match &mut held {
            Ok(u) => &mut **u,
            Err(_) => &mut spare,
        };
        let mut sink = FlashSink::new(flash, target.table, target.running, config, update);
        f(&mut self.server, &mut sink)
    }
}
