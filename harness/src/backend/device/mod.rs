//! The device backend: one ESP32-C3 on a lab bench, described by a bench file
//! (`crate::bench`). Before each scenario the harness flashes the scenario's merged image
//! (bootloader, partition table, app, provisioned NVS) through espflash and the chip's ROM
//! loader, skipping blocks that already match; it reads the UART log on its own thread, starts
//! the app by a reset, switches the power through the bench's switch, and reads the flash back
//! through the flasher stub for the inspector.
//!
//! `port: emulator` puts the host emulator in the board's place, its UART on a pseudo-terminal
//! and its control channel standing in for the reset line and the power switch, so this code
//! runs on every CI run; a real board and the stand-in differ only in [`Rig`].
//!
//! Reading the flash through the ROM loader resets the chip, so after a read-back the chip
//! waits in its loader; the next step that talks to the device boots it again
//! ([`Dut::resume`]), and that boot's lines stay out of the scenario's log.

pub mod console;
pub mod flasher;
pub mod ports;
pub mod qemu_rom;

use crate::bench::{Address, Bench, PortSpec, PowerSwitch, ResetMethod};
use crate::client::UpdatePath;
use crate::dut::{Capabilities, Dut, DutError, DutEvent, FlashCounters, PowerCut};
use console::Console;
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use flasher::{FlashPort, Identity, Session};
use indicatif::ProgressBar;
use ota_core::log::Milestone;
use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::emu::{EmuDut, EmuProgram, EmuSetup};
use super::qemu::{FirmwareBuilds, QemuDut, QemuProgram};

/// How long a boot may take, from reset to the app serving OTA (or hanging in its self-test).
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the app serves its address line may come (`address_from_log`: Wi-Fi joins).
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the chip is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chip {
    Off,
    /// In its ROM serial loader (download boot mode): flashed or read back, app not running.
    Loader,
    Running,
}

/// What stands on the bench.
enum Rig {
    /// The emulator, its UART on a pty; its control channel is the reset line and the power switch.
    StandIn(Box<EmuDut>),
    /// A real board.
    Lab { reset: ResetMethod, power: Option<PowerSwitch> },
}

pub struct BenchDut {
    rig: Rig,
    console: Console,
    /// The log comes through the flashing port: let go of it while the loader talks.
    log_on_flash_port: bool,
    flash_port: FlashPort,
    chip: Chip,
    /// What the harness last knew to be in the flash (written, or read back).
    known: Vec<u8>,
    address: Address,
    /// The host the firmware's log line named (`address_from_log`).
    learned_host: Option<String>,
    esphome_port: u16,
    arduino_port: u16,
    caps: Capabilities,
    pending: VecDeque<DutEvent>,
}

/// Whether `line` ends a boot: the app serves OTA, hangs in its self-test, or halts.
fn settles_boot(line: &str) -> bool {
    matches!(Milestone::of(line), Some(Milestone::Serving | Milestone::SelfTestHung | Milestone::Halted))
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
        let report = session.write(image, bar).map_err(|e| DutError::Start(e.to_string()))?;
        self.known = image.to_vec();
        Ok((identity, report))
    }

    /// Resets the chip into its app (the boot strap released). The log port is taken first so
    /// no boot line is lost.
    fn reset_into_app(&mut self) -> Result<(), DutError> {
        if self.log_on_flash_port {
            self.console.take();
        }
        let usb = self.flash_port.usb.clone();
        let path = self.flash_port.path.clone();
        match &mut self.rig {
            Rig::StandIn(e) => e.power_on()?,
            Rig::Lab { reset, power } => match reset.clone() {
                ResetMethod::Command(argv) => run_argv(&argv, "reset")?,
                ResetMethod::None => match power.clone() {
                    Some(PowerSwitch::Commands { off, on, settle }) => {
                        run_argv(&off, "power off")?;
                        std::thread::sleep(settle);
                        run_argv(&on, "power on")?;
                    }
                    _ => {
                        return Err(DutError::Unsupported {
                            backend: ENTRY.name,
                            what: "starting the app on a bench with `reset: none` and no power switch",
                        });
                    }
                },
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
            if settled_at.is_none() && settles_boot(&line) {
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

    fn endpoint(&self, path: UpdatePath) -> Result<SocketAddr, String> {
        let port = match path {
            UpdatePath::Esphome => self.esphome_port,
            UpdatePath::Arduino => self.arduino_port,
        };
        let host = match &self.address {
            Address::Emulator => match &self.rig {
                Rig::StandIn(e) => return e.endpoint(path),
                Rig::Lab { .. } => return Err("address: emulator needs port: emulator".into()),
            },
            Address::Fixed(h) => h.clone(),
            Address::FromLog(re) => self.learned_host.clone().ok_or_else(|| {
                format!("no serial line since the last boot matched address_from_log /{}/", re.as_str())
            })?,
        };
        (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))
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
            let announced = matches!(
                Milestone::of(&line),
                Some(Milestone::RebootIntoUpdate | Milestone::RebootForRollback)
            );
            let after_update = Milestone::of(&line) == Some(Milestone::RebootIntoUpdate);
            if !announced {
                return Ok(Some(DutEvent::Serial(line)));
            }
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

/// The firmware a board runs: the fixture images (the stand-in runs them as they are), or the
/// builds of `cargo xtask firmware` (a board).
enum Firmware {
    Fixtures,
    Builds(FirmwareBuilds),
}

/// One board, for every scenario of a run.
pub struct DeviceBackend {
    bench: Bench,
    firmware: Firmware,
    emu: Option<EmuProgram>,
    /// The stand-in's flash file, kept from one scenario to the next as a board keeps its flash.
    standin_flash: Option<tempfile::TempDir>,
    /// `port: qemu`: the QEMU that plays the board.
    qemu: Option<QemuProgram>,
    identity: Mutex<Option<Identity>>,
    last_write: Mutex<Option<flasher::WriteReport>>,
    /// Show a progress bar while flashing (`otahil flash`; a run shows its own).
    pub progress: bool,
    /// Write every block, even those whose MD5 already matches (`otahil flash --no-skip`).
    pub rewrite_all: bool,
}

pub const ENTRY: super::BackendEntry = super::BackendEntry {
    name: "device",
    about: "an ESP32-C3 on a lab bench, flashed with espflash (--bench FILE; fixtures/bench.emu.yaml puts the emulator in its place)",
    make: |options| {
        let Some(file) = &options.bench else {
            return Err(
                "the device backend needs --bench FILE (fixtures/bench.example.yaml documents one)".into()
            );
        };
        let bench = crate::bench::load(file).map_err(|e| e.to_string())?;
        DeviceBackend::new(bench, &options.firmware).map(|b| Box::new(b) as Box<dyn super::Backend>)
    },
};

impl DeviceBackend {
    /// The last scenario's flashing: blocks written and skipped, and how long it took.
    pub fn last_write(&self) -> Option<flasher::WriteReport> {
        *self.last_write.lock().expect("not poisoned")
    }

    pub fn new(bench: Bench, firmware: &std::path::Path) -> Result<Self, String> {
        Self::with_emulator(bench, firmware, None)
    }

    /// As [`DeviceBackend::new`], with the stand-in emulator given (tests run the one cargo built).
    pub fn with_emulator(
        bench: Bench,
        firmware: &std::path::Path,
        emulator: Option<EmuProgram>,
    ) -> Result<Self, String> {
        let standin = bench.port == PortSpec::Emulator;
        let mut qemu = None;
        let (firmware, emu, standin_flash) = if bench.port == PortSpec::Qemu {
            qemu = Some(QemuProgram::locate().map_err(|e| format!("cannot use QEMU as the board: {e}"))?);
            let builds =
                FirmwareBuilds::load(firmware).map_err(|e| format!("cannot use QEMU as the board: {e}"))?;
            (Firmware::Builds(builds), None, Some(tempfile::tempdir().map_err(|e| e.to_string())?))
        } else if standin {
            let emu = match emulator {
                Some(e) => e,
                None => EmuProgram::locate().map_err(|e| e.to_string())?,
            };
            (Firmware::Fixtures, Some(emu), Some(tempfile::tempdir().map_err(|e| e.to_string())?))
        } else {
            let builds = FirmwareBuilds::load_any(firmware)
                .map_err(|e| format!("cannot use the device backend: {e}"))?;
            (Firmware::Builds(builds), None, None)
        };
        Ok(DeviceBackend {
            bench,
            firmware,
            emu,
            standin_flash,
            qemu,
            identity: Mutex::new(None),
            last_write: Mutex::new(None),
            progress: false,
            rewrite_all: false,
        })
    }

    fn capabilities(&self) -> Capabilities {
        let emulated_switch = self.bench.power == Some(PowerSwitch::Emulator);
        Capabilities {
            exact_power_cut: emulated_switch,
            flash_op_counters: emulated_switch,
            power_switch: self.bench.power.is_some(),
            session_events: false,
            live_flash_read: false,
        }
    }

    /// The board for `s`: flashed with `image`, its chip left in its loader (off for the scenario).
    fn board_for(
        &self,
        s: &crate::scenario::Scenario,
        options: &crate::runner::RunOptions,
        image: &[u8],
    ) -> Result<BenchDut, DutError> {
        let b = &self.bench;
        let (rig, flash_port, console, log_on_flash_port) = match (&self.emu, &self.standin_flash) {
            (Some(program), Some(dir)) => {
                let file = dir.path().join("board-flash.bin");
                // A board of another flash size is another board: it starts erased.
                if std::fs::metadata(&file).map(|m| m.len() as usize).ok() != Some(image.len()) {
                    std::fs::write(&file, vec![0xFF; image.len()])?;
                }
                let wifi = b.wifi.as_ref().map(|w| (w.ssid.as_str(), w.password.as_str()));
                let mut setup = EmuSetup::for_scenario(s, options, wifi)
                    .map_err(|e| DutError::Start(format!("{e:?}")))?;
                setup.flash_file = Some(file);
                setup.uart_pty = true;
                let emu = EmuDut::start(program, &setup)?;
                let pty = emu.uart_path().expect("started with a UART pty").to_path_buf();
                let port = FlashPort {
                    path: pty.clone(),
                    usb: ports::not_usb(),
                    reset: ResetBeforeOperation::NoReset,
                    baud: None,
                    use_stub: b.flash == crate::bench::FlashMethod::Espflash,
                    skip: !self.rewrite_all,
                    rom_refuses_flash_end: false,
                };
                (Rig::StandIn(Box::new(emu)), port, Console::open(pty, b.baud), true)
            }
            _ => {
                let found = ports::find(&b.port, |f| probe_mac(f, b.flash_baud))
                    .map_err(|e| DutError::Start(format!("bench {}: {e}", b.name)))?;
                let reset = match b.reset {
                    ResetMethod::None => ResetBeforeOperation::NoReset,
                    ResetMethod::UsbJtag => ResetBeforeOperation::UsbReset,
                    _ => ResetBeforeOperation::DefaultReset,
                };
                let port = FlashPort {
                    path: found.path.clone(),
                    usb: found.usb,
                    reset,
                    baud: Some(b.flash_baud),
                    use_stub: b.flash == crate::bench::FlashMethod::Espflash,
                    skip: !self.rewrite_all,
                    rom_refuses_flash_end: false,
                };
                let log = b.log_port.clone().unwrap_or_else(|| found.path.clone());
                let shared = b.log_port.is_none();
                let rig = Rig::Lab { reset: b.reset.clone(), power: b.power.clone() };
                (rig, port, Console::open(log, b.baud), shared)
            }
        };
        if log_on_flash_port {
            // The loader has the port until the app is started.
            console.release();
        }
        let mut dut = BenchDut {
            rig,
            console,
            log_on_flash_port,
            flash_port,
            chip: Chip::Off,
            known: Vec::new(),
            address: b.address.clone(),
            learned_host: None,
            esphome_port: b.esphome_port,
            arduino_port: b.arduino_port,
            caps: self.capabilities(),
            pending: VecDeque::new(),
        };
        let bar = if self.progress { ProgressBar::new(image.len() as u64) } else { ProgressBar::hidden() };
        let started = Instant::now();
        let (identity, mut report) = dut.flash(image, &bar)?;
        report.session = started.elapsed();
        bar.finish_and_clear();
        *self.last_write.lock().expect("not poisoned") = Some(report);
        tracing::info!(
            blocks_written = report.written_blocks,
            blocks_skipped = report.skipped_blocks,
            ms = report.elapsed.as_secs_f64() * 1e3,
            "flashed {}",
            s.name
        );
        *self.identity.lock().expect("not poisoned") = Some(identity);
        Ok(dut)
    }
}

impl DeviceBackend {
    /// QEMU as the board: its flash written through the real ROM loader in download boot mode
    /// (blocks that match skipped, the rest verified), then the guest on that flash, powered off.
    fn qemu_board(&self, program: &QemuProgram, image: &[u8]) -> Result<QemuDut, DutError> {
        let dir = self.standin_flash.as_ref().expect("QEMU boards keep their flash in a temp dir");
        let file = dir.path().join("board-flash.bin");
        if std::fs::metadata(&file).map(|m| m.len() as usize).ok() != Some(image.len()) {
            std::fs::write(&file, vec![0xFF; image.len()])?;
        }
        let started = Instant::now();
        let attempt = || -> Result<(Identity, flasher::WriteReport), DutError> {
            let mode = qemu_rom::DownloadMode::start(program, &file)?;
            let port = FlashPort {
                path: mode.pty.clone(),
                usb: ports::not_usb(),
                reset: ResetBeforeOperation::NoReset,
                // The ROM's CHANGE_BAUDRATE loses the link under QEMU; its UART runs at 115200.
                baud: None,
                use_stub: false,
                skip: !self.rewrite_all,
                rom_refuses_flash_end: true,
            };
            let mut session = Session::connect(&port).map_err(|e| DutError::Start(e.to_string()))?;
            let identity = session.identity().map_err(|e| DutError::Start(e.to_string()))?;
            let bar =
                if self.progress { ProgressBar::new(image.len() as u64) } else { ProgressBar::hidden() };
            let report = session.write(image, &bar).map_err(|e| DutError::Start(e.to_string()))?;
            bar.finish_and_clear();
            drop(session);
            // SIGTERM: QEMU writes the flash back before it exits.
            drop(mode);
            Ok((identity, report))
        };
        // One link failure in about thirty flashings through QEMU's ROM (a command's answer
        // missed): the second attempt writes only the blocks that still differ.
        let (identity, mut report) = match attempt() {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!("flashing through QEMU's ROM failed ({e}); once more");
                attempt()?
            }
        };
        report.session = started.elapsed();
        tracing::info!(
            blocks_written = report.written_blocks,
            blocks_skipped = report.skipped_blocks,
            ms = report.session.as_secs_f64() * 1e3,
            "flashed through QEMU's ROM"
        );
        *self.last_write.lock().expect("not poisoned") = Some(report);
        *self.identity.lock().expect("not poisoned") = Some(identity);
        let mut dut = QemuDut::on_file(program.clone(), file, ENTRY.name)?;
        dut.power_off()?;
        Ok(dut)
    }
}

/// The MAC of the chip on `port`, asked through its ROM loader (this resets the board).
fn probe_mac(port: &ports::Found, baud: u32) -> Option<[u8; 6]> {
    let fp = FlashPort {
        path: port.path.clone(),
        usb: port.usb.clone(),
        reset: ResetBeforeOperation::DefaultReset,
        baud: Some(baud),
        use_stub: false,
        skip: true,
        rom_refuses_flash_end: false,
    };
    let mac = Session::connect(&fp).ok()?.identity().ok()?.mac;
    let bytes: Vec<u8> = mac.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    bytes.try_into().ok()
}

impl super::Backend for DeviceBackend {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn ota_image(&self, image: &crate::scenario::Image) -> Result<Vec<u8>, String> {
        match &self.firmware {
            Firmware::Fixtures => Ok(image.bytes.clone()),
            Firmware::Builds(b) => b.ota_image(image),
        }
    }

    fn start(
        &self,
        s: &crate::scenario::Scenario,
        options: &crate::runner::RunOptions,
    ) -> Result<Box<dyn Dut>, super::StartError> {
        use super::StartError;
        let image = match &self.firmware {
            Firmware::Fixtures => {
                let wifi = self.bench.wifi.as_ref().map(|w| (w.ssid.as_str(), w.password.as_str()));
                super::device_flash(s, &s.device.firmware.bytes, wifi)?.0
            }
            Firmware::Builds(builds) => {
                let app = builds.ota_image(&s.device.firmware).map_err(StartError::Skip)?;
                let wifi = self.bench.wifi.as_ref().map(|w| (w.ssid.as_str(), w.password.as_str()));
                let (mut image, provisioned) = super::device_flash(s, &app, wifi)?;
                if let Some(why) = builds.unfit_for(s, provisioned) {
                    return Err(StartError::Skip(why));
                }
                image[..builds.bootloader.len()].copy_from_slice(&builds.bootloader);
                image
            }
        };
        if let Some(program) = &self.qemu {
            return self
                .qemu_board(program, &image)
                .map(|d| Box::new(d) as Box<dyn Dut>)
                .map_err(|e| StartError::Fail(format!("bench {}: {e}", self.bench.name)));
        }
        self.board_for(s, options, &image)
            .map(|d| Box::new(d) as Box<dyn Dut>)
            .map_err(|e| StartError::Fail(format!("bench {}: {e}", self.bench.name)))
    }

    fn snapshots_compare(&self) -> Result<(), String> {
        match &self.firmware {
            Firmware::Fixtures => Ok(()),
            Firmware::Builds(b) if b.matches_fixtures => Ok(()),
            Firmware::Builds(_) => {
                Err("the firmware builds are not the fixture images (a Wi-Fi or configured build)".into())
            }
        }
    }

    fn board(&self) -> Vec<(String, String)> {
        let mut props = vec![("board.bench".to_string(), self.bench.name.clone())];
        if let Some(id) = self.identity.lock().expect("not poisoned").as_ref() {
            props.extend(id.properties());
        }
        props
    }
}
