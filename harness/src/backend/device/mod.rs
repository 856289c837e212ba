//! The device backend: one ESP32-C3 on a lab bench, described by a bench file
//! (`crate::bench`). Before each scenario the harness flashes the scenario's merged image
//! (bootloader, partition table, app, provisioned NVS) through espflash and the chip's ROM
//! loader, skipping blocks that already match; it reads the UART log on its own thread, starts
//! the app by a reset, switches the power through the bench's switch, and reads the flash back
//! through the flasher stub for the inspector.
//!
//! `port: emulator` puts the host emulator in the board's place, its UART on a pseudo-terminal
//! and its control channel standing in for the reset line and the power switch, so this code
//! runs on every CI run; a real board and the stand-in differ only in `board::Rig`.
//! `port: qemu` puts Espressif's QEMU there: flashed through the chip's real ROM loader in
//! download boot mode (`qemu_rom`), then the scenario on that flash as on the qemu backend.
//!
//! Reading the flash through the ROM loader resets the chip, so after a read-back the chip
//! waits in its loader; the next step that talks to the device boots it again
//! ([`Dut::resume`]), and that boot's lines stay out of the scenario's log.

mod board;
pub mod console;
pub mod flasher;
#[cfg(feature = "probe-rs")]
mod jtag;
pub mod ports;
pub mod qemu_rom;

use crate::bench::{Bench, PortSpec, PowerSwitch, ResetMethod};
use crate::dut::{Capabilities, Dut, DutError};
use board::{BenchDut, Chip, Rig};
use console::Console;
use espflash::connection::ResetBeforeOperation;
use flasher::{FlashPort, Identity, Session};
use indicatif::ProgressBar;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use super::BackendError;
use super::emu::{EmuDut, EmuProgram, EmuSetup};
use super::qemu::{FirmwareBuilds, QemuDut, QemuProgram};

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
    firmware: super::FirmwareSource::Bench,
    // What the board needs is in its bench file (`otahil check --bench`).
    preflight: || Ok(()),
    make: |options| {
        let Some(file) = &options.bench else {
            return Err(super::BackendError::NoBench);
        };
        let bench = crate::bench::load(file)?;
        DeviceBackend::new(bench, &options.firmware).map(|b| Box::new(b) as Box<dyn super::Backend>)
    },
};

impl DeviceBackend {
    /// The last scenario's flashing: blocks written and skipped, and how long it took.
    pub fn last_write(&self) -> Option<flasher::WriteReport> {
        *self.last_write.lock().expect("not poisoned")
    }

    pub fn new(bench: Bench, firmware: &std::path::Path) -> Result<Self, BackendError> {
        Self::with_emulator(bench, firmware, None)
    }

    /// As [`DeviceBackend::new`], with the stand-in emulator given (tests run the one cargo built).
    pub fn with_emulator(
        bench: Bench,
        firmware: &std::path::Path,
        emulator: Option<EmuProgram>,
    ) -> Result<Self, BackendError> {
        let standin = bench.port == PortSpec::Emulator;
        let mut qemu = None;
        let (firmware, emu, standin_flash) = if bench.port == PortSpec::Qemu {
            qemu = Some(QemuProgram::locate().map_err(BackendError::QemuBoard)?);
            let builds = FirmwareBuilds::load(firmware).map_err(BackendError::QemuBoard)?;
            (Firmware::Builds(builds), None, Some(tempfile::tempdir()?))
        } else if standin {
            let emu = match emulator {
                Some(e) => e,
                None => EmuProgram::locate()?,
            };
            (Firmware::Fixtures, Some(emu), Some(tempfile::tempdir()?))
        } else {
            let builds =
                FirmwareBuilds::load_any(firmware).map_err(|e| BackendError::unusable(ENTRY.name, e))?;
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
        context: &super::StartContext,
        image: &[u8],
    ) -> Result<BenchDut, DutError> {
        let b = &self.bench;
        let (rig, flash_port, console, log_on_flash_port) = match (&self.emu, &self.standin_flash) {
            (Some(program), Some(dir)) => {
                let file = board_flash_file(dir.path(), image.len())?;
                let wifi = b.wifi.as_ref().map(|w| (w.ssid.as_str(), w.password.as_str()));
                let mut setup =
                    EmuSetup::for_scenario(s, context, wifi).map_err(|e| DutError::Start(e.to_string()))?;
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
        let jtag = if b.flash == crate::bench::FlashMethod::ProbeRs { b.probe.clone() } else { None };
        let mut dut = BenchDut {
            jtag,
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
            web_port: b.web_port,
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
        let file = board_flash_file(dir.path(), image.len())?;
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

/// A stand-in board's flash file in `dir`, kept from one scenario to the next; a board of
/// another flash size is another board: it starts erased.
fn board_flash_file(dir: &std::path::Path, len: usize) -> std::io::Result<std::path::PathBuf> {
    let file = dir.join("board-flash.bin");
    if std::fs::metadata(&file).map(|m| m.len() as usize).ok() != Some(len) {
        std::fs::write(&file, vec![0xFF; len])?;
    }
    Ok(file)
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

    fn ota_image(&self, image: &crate::scenario::Image) -> Result<Vec<u8>, super::SkipReason> {
        match &self.firmware {
            Firmware::Fixtures => Ok(image.bytes.clone()),
            Firmware::Builds(b) => b.ota_image(image),
        }
    }

    /// The emulator standing in for the board runs on this machine; QEMU in its place reaches
    /// the host through slirp's gateway, as on the qemu backend. A board reaches the harness
    /// over its network, at the bench file's `harness_address`.
    fn host_address(&self) -> Result<std::net::IpAddr, BackendError> {
        match &self.firmware {
            Firmware::Fixtures => Ok(std::net::Ipv4Addr::LOCALHOST.into()),
            Firmware::Builds(_) if self.qemu.is_some() => Ok(super::qemu::SLIRP_GATEWAY.into()),
            Firmware::Builds(_) => self.bench.harness_address.ok_or(BackendError::NoHarnessAddress),
        }
    }

    fn start(
        &self,
        s: &crate::scenario::Scenario,
        context: &super::StartContext,
    ) -> Result<Box<dyn Dut>, super::StartError> {
        let image = match &self.firmware {
            Firmware::Fixtures => {
                let wifi = self.bench.wifi.as_ref().map(|w| (w.ssid.as_str(), w.password.as_str()));
                super::device_flash(s, &s.device.firmware.bytes, wifi, context)?.0
            }
            Firmware::Builds(builds) => {
                let app = builds.ota_image(&s.device.firmware)?;
                let wifi = self.bench.wifi.as_ref().map(|w| (w.ssid.as_str(), w.password.as_str()));
                let (mut image, provisioned) = super::device_flash(s, &app, wifi, context)?;
                if let Some(why) = builds.unfit_for(s, provisioned) {
                    return Err(why.into());
                }
                image[..builds.bootloader.len()].copy_from_slice(&builds.bootloader);
                image
            }
        };
        if let Some(program) = &self.qemu {
            return self
                .qemu_board(program, &image)
                .map(|d| Box::new(d) as Box<dyn Dut>)
                .map_err(|error| BackendError::Bench { bench: self.bench.name.clone(), error }.into());
        }
        self.board_for(s, context, &image)
            .map(|d| Box::new(d) as Box<dyn Dut>)
            .map_err(|error| BackendError::Bench { bench: self.bench.name.clone(), error }.into())
    }

    fn snapshots_compare(&self) -> Result<(), super::NotTheFixtures> {
        match &self.firmware {
            Firmware::Fixtures => Ok(()),
            Firmware::Builds(b) if b.matches_fixtures => Ok(()),
            Firmware::Builds(_) => Err(super::NotTheFixtures("a Wi-Fi or configured build")),
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
