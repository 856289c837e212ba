//! The device under test, whatever runs it. Backends differ only by [`Capabilities`]: a step
//! that needs one a backend lacks is skipped with the reason, never passed silently.

pub use ota_core::io::Port;
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

/// The device's ports and where each is reached from the harness: what a backend maps (the
/// emulator's host addresses, QEMU's forwarded ports, a board's address on the lab network).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints(Vec<(Port, SocketAddr)>);

impl Endpoints {
    pub fn new(ports: impl IntoIterator<Item = (Port, SocketAddr)>) -> Self {
        Endpoints(ports.into_iter().collect())
    }

    /// Where the device's `port` is reached.
    pub fn get(&self, port: Port) -> Result<SocketAddr, EndpointError> {
        self.0.iter().find(|(p, _)| *p == port).map(|(_, a)| *a).ok_or_else(|| EndpointError::NoPort {
            port,
            mapped: self.0.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Why the harness cannot reach a port of the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("the device's {port} is not reachable from here (this backend reaches: {mapped})")]
    NoPort { port: Port, mapped: String },
    #[error("no serial line since the last boot matched address_from_log /{0}/")]
    AddressNotLearned(String),
    #[error("address: emulator needs port: emulator")]
    NoStandIn,
    #[error("cannot resolve the board's address {host}: {reason}")]
    Resolve { host: String, reason: String },
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
    /// Where the device's ports are reachable from here, or why this backend cannot say now.
    fn endpoints(&self) -> Result<Endpoints, EndpointError>;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_found_by_transport_and_port_and_a_missing_one_says_what_is_reachable() {
        let table = Endpoints::new([
            (Port::Tcp(3232), "127.0.0.1:40001".parse().unwrap()),
            (Port::Udp(3232), "127.0.0.1:40002".parse().unwrap()),
        ]);
        assert_eq!(table.get(Port::Udp(3232)), Ok("127.0.0.1:40002".parse().unwrap()));
        assert_eq!(table.get(Port::Tcp(3232)), Ok("127.0.0.1:40001".parse().unwrap()));
        let missing = table.get(Port::Tcp(80)).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "the device's tcp:80 is not reachable from here (this backend reaches: tcp:3232, udp:3232)"
        );
    }
}
