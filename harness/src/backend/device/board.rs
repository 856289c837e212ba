//! One board on the bench while a scenario runs: its chip's state (off, in its ROM loader,
//! running), flashing and read-back through espflash, the app started by a reset, the power
//! switched, the log read by the console thread, and the board's self-restarts after updates.

use super::ENTRY;
use super::console::Console;
use super::flasher::{self, FlashPort, Identity, Session};
use crate::backend::emu::EmuDut;
use crate::bench::{Address, PowerSwitch, ProbeSpec, ResetMethod};
use crate::client::Uploader;
use crate::dut::{Capabilities, Dut, DutError, DutEvent, EndpointError, Endpoints, FlashCounters, PowerCut};
use crate::serial::{announced_reboot, ends_boot};
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use indicatif::ProgressBar;
use std::collections::VecDeque;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// How long a boot may take, from reset to the app serving OTA (or hanging in its self-test).
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the app serves its address line may come (`address_from_log`: Wi-Fi joins).
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the chip is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chip {
    Off,
    /// In its ROM serial loader (download boot mode): flashed or read back, app not running.
    Loader,
    Running,
}

/// What stands on the bench.
pub(super) enum Rig {
    /// The emulator, its UART on a pty; its control channel is the reset line and the power switch.
    StandIn(Box<EmuDut>),
    /// A real board.
    Lab { reset: ResetMethod, power: Option<PowerSwitch> },
}

pub struct BenchDut {
    pub(super) rig: Rig,
    pub(super) console: Console,
    /// The log comes through the flashing port: let go of it while the loader talks.
    pub(super) log_on_flash_port: bool,
    pub(super) flash_port: FlashPort,
    /// Written through this debug probe (probe-rs) instead of the loader; identity and
    /// read-back still come through `flash_port`.
    pub(super) jtag: Option<ProbeSpec>,
    pub(super) chip: Chip,
    /// What the harness last knew to be in the flash (written, or read back).
    pub(super) known: Vec<u8>,
    pub(super) address: Address,
    /// The host the firmware's log line named (`address_from_log`).
    pub(super) learned_host: Option<String>,
    pub(super) esphome_port: u16,
    pub(super) arduino_port: u16,
    pub(super) web_port: u16,
    pub(super) caps: Capabilities,
    pub(super) pending: VecDeque<DutEvent>,
}

#[cfg(feature = "probe-rs")]
fn write_over_jtag(
    probe: &ProbeSpec,
    image: &[u8],
    skip: bool,
    bar: &ProgressBar,
) -> Result<flasher::WriteReport, DutError> {
    super::jtag::write(probe, image, skip, bar).map_err(|e| DutError::Start(e.to_string()))
}

/// The bench file refuses `flash: probe-rs` in a build without it; this is never reached.
#[cfg(not(feature = "probe-rs"))]
fn write_over_jtag(
    _: &ProbeSpec,
    _: &[u8],
    _: bool,
    _: &ProgressBar,
) -> Result<flasher::WriteReport, DutError> {
    Err(DutError::Unsupported {
        backend: ENTRY.name,
        what: "flashing through probe-rs (built without its feature)",
    })
}

fn run_argv(argv: &[String], what: &str) -> Result<(), DutError> {
    let (program, args) = argv.split_first().ok_or_else(|| DutError::Start(format!("{what}: no program")))?;
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| DutError::Start(format!("{what} `{}`: {e}", argv.join(" "))))?;
    if !status.success() {
        return Err(DutError::Refused {
            command: format!("{what} `{}`", argv.join(" ")),
            message: status.to_string(),
        });
    }
    Ok(())
}

impl BenchDut {
    fn standin(&mut self) -> Option<&mut EmuDut> {
        match &mut self.rig {
            Rig::StandIn(e) => Some(e),
            Rig::Lab { .. } => None,
        }
    }

    /// The chip into its ROM loader, the log port handed over to the flasher.
    fn enter_loader(&mut self) -> Result<(), DutError> {
        if self.chip == Chip::Loader {
            return Ok(());
        }
        if self.log_on_flash_port {
            self.console.release();
        }
        if let Some(e) = self.standin() {
            e.download()?;
        }
        // A lab board is reset into its loader by espflash as it connects (DTR/RTS).
        self.chip = Chip::Loader;
        Ok(())
    }

    fn session(&mut self, use_stub: bool) -> Result<Session, DutError> {
        self.enter_loader()?;
        let port = FlashPort { use_stub, ..self.flash_port.clone() };
        Session::connect(&port).map_err(|e| DutError::Start(e.to_string()))
    }

    /// Writes `image` (blocks that match skipped, the rest verified); the chip stays in its loader.
    pub fn flash(
        &mut self,
        image: &[u8],
        bar: &ProgressBar,
    ) -> Result<(Identity, flasher::WriteReport), DutError> {
        let mut session = self.session(self.flash_port.use_stub)?;
        let identity = session.identity().map_err(|e| DutError::Start(e.to_string()))?;
        if image.len() > identity.flash_size {
            return Err(DutError::Start(format!(
                "the scenario's flash is {} MiB, the board's {} MiB",
                image.len() >> 20,
                identity.flash_size >> 20
            )));
        }
        let report = match self.jtag.clone() {
            Some(probe) => {
                // The loader lets go of the port; the probe halts the core and writes.
                drop(session);
                write_over_jtag(&probe, image, self.flash_port.skip, bar)?
            }
            None => session.write(image, bar).map_err(|e| DutError::Start(e.to_string()))?,
        };
        self.known = image.to_vec();
        Ok((identity, report))
    }

    /// Resets the chip into its app (the boot strap released). The log port is taken first so
    /// no boot line is lost.
    fn reset_into_app(&mut self) -> Result<(), DutError> {
        // A cut at a log line is over once the chip runs again: its lines flow again.
        self.console.rearm();
        if self.log_on_flash_port {
            self.console.take();
        }
        let usb = self.flash_port.usb.clone();
        let path = self.flash_port.path.clone();
        match &mut self.rig {
            Rig::StandIn(e) => e.power_on()?,
            Rig::Lab { reset, power } => match reset.clone() {
                ResetMethod::Command(argv) => run_argv(&argv, "reset")?,
                ResetMethod::None => {
                    if power.is_none() {
                        return Err(DutError::Unsupported {
                            backend: ENTRY.name,
                            what: "starting the app on a bench with `reset: none` and no power switch",
                        });
                    }
                    // A power cycle starts it (the switch's off leaves the board off for `settle`).
                    self.switch_power(false)?;
                    self.switch_power(true)?;
                }
                method => {
                    let mut usb = usb;
                    // The product id picks espflash's sequence: 0x1001 is the chip's USB-Serial-JTAG.
                    match method {
                        ResetMethod::UsbJtag => usb.pid = 0x1001,
                        ResetMethod::Classic if usb.pid == 0x1001 => usb.pid = 0,
                        _ => {}
                    }
                    let port = serialport::new(path.to_string_lossy(), 115_200)
                        .open_native()
                        .map_err(|e| DutError::Start(format!("cannot open {}: {e}", path.display())))?;
                    let mut conn = Connection::new(
                        port,
                        usb,
                        ResetAfterOperation::HardReset,
                        ResetBeforeOperation::NoReset,
                        115_200,
                    );
                    conn.reset().map_err(|e| DutError::Start(format!("resetting the board: {e}")))?;
                }
            },
        }
        self.chip = Chip::Running;
        Ok(())
    }

    /// Reads the log until the boot is over; its lines as `Serial`, or as `ReadBackBoot`.
    fn wait_boot(&mut self, read_back: bool) -> Result<(), DutError> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        self.learned_host = None;
        let mut settled_at: Option<Instant> = None;
        loop {
            self.poll_standin()?;
            if self.chip == Chip::Off {
                return Ok(());
            }
            // A board on Wi-Fi may say where it is after it serves: wait a little for that line
            // (`endpoint` explains if it never comes).
            let need_address = matches!(self.address, Address::FromLog(_)) && self.learned_host.is_none();
            if let Some(t) = settled_at
                && (!need_address || t.elapsed() > ADDRESS_TIMEOUT)
            {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DutError::Timeout(BOOT_TIMEOUT, "the board to boot".into()));
            }
            let Some(line) = self.console.next_line(left.min(Duration::from_millis(20))) else { continue };
            self.learn_address(&line);
            if settled_at.is_none() && ends_boot(&line) {
                settled_at = Some(Instant::now());
            }
            self.pending.push_back(if read_back {
                DutEvent::ReadBackBoot(line)
            } else {
                DutEvent::Serial(line)
            });
        }
    }

    fn learn_address(&mut self, line: &str) {
        if let Address::FromLog(re) = &self.address
            && let Some(host) = re.captures(line).and_then(|c| c.get(1))
        {
            self.learned_host = Some(host.as_str().to_string());
        }
    }

    /// The stand-in's control channel: a power cut it fired.
    fn poll_standin(&mut self) -> Result<(), DutError> {
        let Rig::StandIn(e) = &mut self.rig else { return Ok(()) };
        while let Some(ev) = e.next_event(Duration::ZERO)? {
            // Its serial lines (a copy on stdout), reboots and sessions are read from the UART,
            // as on a board.
            if let DutEvent::PowerLost(what) = ev {
                self.chip = Chip::Off;
                self.pending.push_back(DutEvent::PowerLost(what));
            }
        }
        Ok(())
    }

    fn switch_power(&mut self, on: bool) -> Result<(), DutError> {
        if on {
            self.console.rearm();
        }
        match &mut self.rig {
            Rig::StandIn(e) => {
                if on {
                    e.power_on()
                } else {
                    e.power_off()
                }
            }
            Rig::Lab { power: Some(PowerSwitch::Commands { off, on: on_argv, settle }), .. } => {
                if on {
                    run_argv(on_argv, "power on")
                } else {
                    run_argv(off, "power off")?;
                    std::thread::sleep(*settle);
                    Ok(())
                }
            }
            Rig::Lab { .. } => Err(DutError::Unsupported {
                backend: ENTRY.name,
                what: "switching the power (no power switch in the bench file)",
            }),
        }
    }
}

impl Dut for BenchDut {
    fn backend(&self) -> &'static str {
        ENTRY.name
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn power_on(&mut self) -> Result<(), DutError> {
        self.console.rearm();
        if !self.caps.power_switch {
            self.reset_into_app()?;
            return self.wait_boot(false);
        }
        if self.log_on_flash_port {
            self.console.take();
        }
        if self.chip != Chip::Off && matches!(self.rig, Rig::Lab { .. }) {
            self.switch_power(false)?;
        }
        self.switch_power(true)?;
        self.chip = Chip::Running;
        self.wait_boot(false)
    }

    fn power_off(&mut self) -> Result<(), DutError> {
        self.switch_power(false)?;
        self.chip = Chip::Off;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), DutError> {
        match &mut self.rig {
            Rig::StandIn(e) if self.chip == Chip::Running => {
                e.reset()?;
            }
            _ => self.reset_into_app()?,
        }
        self.chip = Chip::Running;
        self.wait_boot(false)
    }

    fn arm_power_cut(&mut self, cut: PowerCut) -> Result<(), DutError> {
        match &mut self.rig {
            Rig::StandIn(e) if self.caps.exact_power_cut => e.arm_power_cut(cut),
            _ => Err(DutError::Unsupported {
                backend: ENTRY.name,
                what: "a power cut at an exact flash operation",
            }),
        }
    }

    fn disarm_power_cut(&mut self) -> Result<(), DutError> {
        match &mut self.rig {
            Rig::StandIn(e) if self.caps.exact_power_cut => e.disarm_power_cut(),
            _ => Ok(()),
        }
    }

    fn endpoints(&self) -> Result<Endpoints, EndpointError> {
        let host = match &self.address {
            Address::Emulator => match &self.rig {
                Rig::StandIn(e) => return e.endpoints(),
                Rig::Lab { .. } => return Err(EndpointError::NoStandIn),
            },
            Address::Fixed(h) => h.clone(),
            Address::FromLog(re) => self
                .learned_host
                .clone()
                .ok_or_else(|| EndpointError::AddressNotLearned(re.as_str().into()))?,
        };
        let ports = [
            (Uploader::Esphome.port(), self.esphome_port),
            (Uploader::Arduino.port(), self.arduino_port),
            (crate::paths::web_form::PORT, self.web_port),
        ];
        let mut table = Vec::new();
        for (device_port, port) in ports {
            let resolve = |reason: String| EndpointError::Resolve { host: host.clone(), reason };
            let addr = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| resolve(e.to_string()))?
                .next()
                .ok_or_else(|| resolve("it has no address".into()))?;
            table.push((device_port, addr));
        }
        Ok(Endpoints::new(table))
    }

    fn next_event(&mut self, timeout: Duration) -> Result<Option<DutEvent>, DutError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            self.poll_standin()?;
            if !self.pending.is_empty() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.console.next_line(left.min(Duration::from_millis(20))) else {
                if left.is_zero() {
                    return Ok(None);
                }
                continue;
            };
            self.learn_address(&line);
            if self.console.tripped_by(&line) {
                // The reader threw the switch at this line (and drops what follows).
                self.chip = Chip::Off;
                self.pending.push_back(DutEvent::PowerLost(format!("at log line `{line}`")));
                return Ok(Some(DutEvent::Serial(line)));
            }
            // The chip restarts by itself after an update and after its boot guard rolls back.
            let Some(after_update) = announced_reboot(&line) else {
                return Ok(Some(DutEvent::Serial(line)));
            };
            self.pending.push_back(DutEvent::Serial(line));
            self.wait_boot(false)?;
            if after_update {
                self.pending.push_back(DutEvent::Rebooted);
            }
        }
    }

    fn read_flash(&mut self) -> Result<Vec<u8>, DutError> {
        let started = Instant::now();
        // Reading is the stub's (READ_FLASH); the ROM's READ_FLASH_SLOW is never used.
        let mut session = self.session(true)?;
        let mut known = std::mem::take(&mut self.known);
        let read = session.read_into(&mut known);
        self.known = known;
        let read = read.map_err(|e| DutError::Start(e.to_string()))?;
        tracing::debug!(bytes = read, ms = started.elapsed().as_secs_f64() * 1e3, "read back");
        Ok(self.known.clone())
    }

    fn resume(&mut self) -> Result<(), DutError> {
        if self.chip != Chip::Loader {
            return Ok(());
        }
        self.reset_into_app()?;
        self.wait_boot(true)
    }

    fn flash_counters(&mut self) -> Result<FlashCounters, DutError> {
        match &mut self.rig {
            Rig::StandIn(e) if self.caps.flash_op_counters => e.flash_counters(),
            _ => Err(DutError::Unsupported { backend: ENTRY.name, what: "flash operation counters" }),
        }
    }

    fn shutdown(&mut self) {
        if let Rig::StandIn(e) = &mut self.rig {
            e.shutdown();
        }
    }
}
