//! One update session, whatever the update path: the protocol's sans-IO state machine and the
//! update it is writing, with the device's flash lent per call. The emulator, the chip firmware
//! and the sweep all hold their sessions as this type, so none of them builds the update sink
//! (or knows how a path's library writes) itself.

use crate::partition::{Partition, PartitionTable};
use crate::proto::{arduino, esphome, http_pull, mqtt_pull};
use crate::update::FlashSink;
use crate::writer::{OtaConfig, OtaUpdate};
use embedded_storage::nor_flash::NorFlash;

/// An update path's state machine.
pub trait Protocol {
    /// How this path writes, given how the app's own writer does (`esp_ota_*`). A path whose
    /// library writes its own way (Arduino's `Update`) says so here; one that runs either
    /// library (the pull agent) answers for the update it runs now.
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        app
    }
}

impl Protocol for esphome::Server<'_> {}

/// `esp_https_ota` writes through the app's `esp_ota_*`; an adapter running the Arduino
/// updater's flavour passes [`arduino::library_writes`] of its config, as `HTTPUpdate` writes
/// through the `Update` library.
impl Protocol for http_pull::Client {}

/// The pull agent writes through `esp_https_ota` (so `esp_ota_*`), or, for an `http_update`,
/// through Arduino's `Update` library.
impl Protocol for mqtt_pull::Agent {
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        match self.library() {
            mqtt_pull::Library::EspHttpsOta => app,
            mqtt_pull::Library::ArduinoHttpUpdate => arduino::library_writes(app),
        }
    }
}

impl Protocol for arduino::Server {
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        arduino::library_writes(app)
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
