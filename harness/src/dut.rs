//! The device under test, whatever runs it. Backends differ only by [`Capabilities`]: a step
//! that needs one a backend lacks is skipped with the reason, never passed silently.

use crate::client::UpdatePath;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DutError {
    #[error("{0}")]
    Start(String),
    #[error("the device process exited: {0}")]
    Exited(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("the device refused `{command}`: {message}")]
    Refused { command: String, message: String },
    #[error("{what} is not supported by the {backend} backend")]
    Unsupported { backend: &'static str, what: &'static str },
    #[error("the emulator's control channel: {0}")]
    Control(#[from] ota_emu::control::ControlError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a backend can do beyond booting, serial and OTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Cut the power exactly after N flash operations / bytes.
    pub exact_power_cut: bool,
    /// Count erase and program operations.
    pub flash_op_counters: bool,
    /// Switch the power off and on (a bench needs a power switch for this).
    pub power_switch: bool,
    /// Report the end of each OTA session (`DutEvent::SessionClosed`); without it the runner
    /// waits for the serial log to go quiet.
    pub session_events: bool,
    /// Read the flash while the app runs, without disturbing it (a probe halting the core, a
    /// paused QEMU). A bench reads through the ROM loader, which resets the chip.
    pub live_flash_read: bool,
    /// Let the device restart by itself into the image it runs and go on from there (a path
    /// that switches modes with a restart, as Homie 1.x into OTA mode). QEMU cannot: its guest
    /// reset is done as a power cycle when the harness reads the announcement, and the guest
    /// runs on in between.
    pub restarts_in_place: bool,
}

/// Where the power is cut during the next operation.
#[derive(Debug, Clone)]
pub enum PowerCut {
    AfterOps {
        count: u64,
        torn_seed: Option<u64>,
    },
    AfterBytes {
        count: u64,
        torn_seed: Option<u64>,
    },
    /// When the device prints a line matching this (a backend with a power switch).
    AtLog(regex::Regex),
}

impl PowerCut {
    /// Whether only a backend that cuts at an exact flash operation can do it.
    pub fn is_exact(&self) -> bool {
        !matches!(self, PowerCut::AtLog(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlashCounters {
    pub erases: u64,
    pub programs: u64,
    pub bytes_programmed: u64,
}

/// A line the device printed, or something the backend observed about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DutEvent {
    Serial(String),
    /// An armed power cut fired (a description of the interrupted operation).
    PowerLost(String),
    /// The device rebooted by itself after an update.
    Rebooted,
    /// The device finished with an OTA connection (its logs for it are out).
    SessionClosed,
    /// A line the device printed while the harness booted it again after reading its flash (a
    /// bench reads through the ROM loader, which resets the chip): kept in the full log, out
    /// of the scenario's own (expectations and the log snapshot).
    ReadBackBoot(String),
}

pub trait Dut {
    fn backend(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Power on (or boot the first time) and wait until the boot is over.
    fn power_on(&mut self) -> Result<(), DutError>;
    fn power_off(&mut self) -> Result<(), DutError>;
    /// A reset: the chip restarts, power stays.
    fn reset(&mut self) -> Result<(), DutError>;
    fn arm_power_cut(&mut self, cut: PowerCut) -> Result<(), DutError>;
    fn disarm_power_cut(&mut self) -> Result<(), DutError>;
    /// Where the device's endpoint for `path` is reachable from here (ESPHome's TCP port,
    /// ArduinoOTA's UDP invitation port), or why this backend has none.
    fn endpoint(&self, path: UpdatePath) -> Result<SocketAddr, String>;
    /// The next event, waiting at most `timeout` (`None`: nothing happened).
    fn next_event(&mut self, timeout: Duration) -> Result<Option<DutEvent>, DutError>;
    /// The whole flash as it is now.
    fn read_flash(&mut self) -> Result<Vec<u8>, DutError>;
    /// The app runs again if reading the flash stopped it (a bench's chip sits in its ROM
    /// loader after a read-back); the boot's lines come as [`DutEvent::ReadBackBoot`]. Called
    /// before a step talks to the device.
    fn resume(&mut self) -> Result<(), DutError> {
        Ok(())
    }
    fn flash_counters(&mut self) -> Result<FlashCounters, DutError>;
    /// Stops the device and frees what the backend holds.
    fn shutdown(&mut self);
}
