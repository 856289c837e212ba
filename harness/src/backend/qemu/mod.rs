//! The qemu backend: the chip firmware (`cargo xtask firmware`) on Espressif's QEMU
//! `-machine esp32c3`, one process per power-on, UART on its stdout, OTA through slirp's
//! `hostfwd` on a free loopback port, the flash a file that persists across power cycles.
//!
//! A guest reset ends the QEMU process and a new one starts on the same flash file (see
//! [`guest`]): the QEMU fork tested keeps stale translated code across an in-process reset into
//! a different image and hangs.

mod guest;
mod nudge;

use guest::STOP_TIMEOUT;

use super::SkipReason;
use crate::client::Uploader;
use crate::dut::{
    Capabilities, Dut, DutError, DutEvent, EndpointError, Endpoints, FlashCounters, Port, PowerCut,
};
use crate::serial::{announced_reboot, ends_boot};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Where QEMU is: `ESP_QEMU` or `qemu-system-riscv32` on PATH, with `ESP_QEMU_BIOS_DIR` as `-L`.
#[derive(Debug, Clone)]
pub struct QemuProgram {
    pub program: PathBuf,
    pub bios_dir: Option<PathBuf>,
}

/// Why the qemu backend cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum QemuSetupError {
    #[error("no QEMU ({program}: {source}); set ESP_QEMU to Espressif's qemu-system-riscv32")]
    NoQemu { program: String, source: std::io::Error },
    #[error("{program} has no esp32c3 machine (Espressif's fork is needed)")]
    NoEsp32c3 { program: String },
    #[error("no firmware builds in {dir} ({source}): run `cargo xtask firmware`")]
    NoBuilds { dir: String, source: std::io::Error },
    #[error(
        "{dir} holds Wi-Fi builds for boards (`cargo xtask firmware --wifi`); QEMU needs the default build (`cargo xtask firmware`, target/firmware)"
    )]
    WifiBuilds { dir: String },
    #[error("{path}: {source}")]
    Unreadable { path: String, source: std::io::Error },
    #[error("{path} is {len} bytes, too short to hold the bootloader")]
    ShortImage { path: String, len: usize },
}

impl QemuProgram {
    /// Finds a QEMU with the esp32c3 machine, or says why there is none.
    pub fn locate() -> Result<Self, QemuSetupError> {
        let program: PathBuf =
            std::env::var_os("ESP_QEMU").map(PathBuf::from).unwrap_or_else(|| "qemu-system-riscv32".into());
        let shown = program.display().to_string();
        let out = Command::new(&program)
            .args(["-machine", "help"])
            .output()
            .map_err(|source| QemuSetupError::NoQemu { program: shown.clone(), source })?;
        if !String::from_utf8_lossy(&out.stdout).contains("esp32c3") {
            return Err(QemuSetupError::NoEsp32c3 { program: shown });
        }
        Ok(QemuProgram { program, bios_dir: std::env::var_os("ESP_QEMU_BIOS_DIR").map(PathBuf::from) })
    }
}

/// The firmware builds the backend runs: `target/firmware/` from `cargo xtask firmware`.
#[derive(Debug, Clone)]
pub struct FirmwareBuilds {
    pub dir: PathBuf,
    /// The password and protocol the builds were made with (`build.txt`).
    pub password: Option<String>,
    pub protocol: u8,
    /// The ESP-IDF bootloader espflash put at 0x0 (from `v1-flash.bin`).
    pub bootloader: Vec<u8>,
    /// The builds are the committed fixture images (a default build): snapshots compare.
    pub matches_fixtures: bool,
    /// How the builds reach the network (`qemu-ethernet`, or `wifi` for boards).
    pub link: String,
}

impl FirmwareBuilds {
    /// Builds QEMU can run (no Wi-Fi builds: QEMU has no radio).
    pub fn load(dir: &Path) -> Result<Self, QemuSetupError> {
        let builds = Self::load_any(dir)?;
        if builds.link == "wifi" {
            return Err(QemuSetupError::WifiBuilds { dir: dir.display().to_string() });
        }
        Ok(builds)
    }

    /// Builds of any kind (a board on a bench takes Wi-Fi builds).
    pub fn load_any(dir: &Path) -> Result<Self, QemuSetupError> {
        let shown = dir.display().to_string();
        let manifest = std::fs::read_to_string(dir.join("build.txt"))
            .map_err(|source| QemuSetupError::NoBuilds { dir: shown.clone(), source })?;
        let field =
            |k: &str| manifest.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).unwrap_or("");
        let merged_path = dir.join("v1-flash.bin");
        let merged = std::fs::read(&merged_path).map_err(|source| QemuSetupError::Unreadable {
            path: merged_path.display().to_string(),
            source,
        })?;
        if merged.len() < 0x8000 {
            let path = merged_path.display().to_string();
            return Err(QemuSetupError::ShortImage { path, len: merged.len() });
        }
        let matches_fixtures = ["v1", "v2", "v3", "selftest-fail", "selftest-hang"].iter().all(|name| {
            std::fs::read(dir.join(format!("{name}.bin"))).ok()
                == crate::fixtures::find(name).map(|f| f.bytes())
        });
        Ok(FirmwareBuilds {
            matches_fixtures,
            dir: dir.to_path_buf(),
            password: Some(field("password")).filter(|p| !p.is_empty()).map(str::to_string),
            protocol: field("protocol").parse().unwrap_or(2),
            bootloader: merged[..0x8000].to_vec(),
            link: field("link").to_string(),
        })
    }

    /// The firmware build of a named fixture (or the same defect applied to the v2 build);
    /// files as they are.
    pub fn ota_image(&self, image: &crate::scenario::Image) -> Result<Vec<u8>, SkipReason> {
        if crate::fixtures::find(&image.name).is_none() {
            return Ok(image.bytes.clone());
        }
        if let Some(app) = self.app(&image.name) {
            return Ok(app);
        }
        let v2 = self.app("v2").ok_or_else(|| SkipReason::NoBuild("v2".into()))?;
        if let Some(d) = crate::fixtures::derived_from_v2(&image.name, &v2) {
            return Ok(d);
        }
        match image.name.as_str() {
            // Neither depends on the firmware's code: the same bytes on every backend.
            "oversized" | "not-an-image" => Ok(image.bytes.clone()),
            other => Err(SkipReason::NoBuild(other.into())),
        }
    }

    /// Why a chip running these builds cannot play `s`, if it cannot (what the scenario's
    /// device needs that was fixed when the firmware was built).
    pub fn unfit_for(&self, s: &crate::scenario::Scenario, provisioned: bool) -> Option<SkipReason> {
        let d = &s.device;
        if !provisioned && d.password != self.password {
            return Some(SkipReason::BuiltPassword {
                built: self.password.clone(),
                wanted: d.password.clone(),
            });
        }
        if !provisioned && d.protocol != self.protocol {
            return Some(SkipReason::BuiltProtocol { built: self.protocol, wanted: d.protocol });
        }
        if d.bootloader_rollback {
            return Some(SkipReason::NoBootloaderRollback);
        }
        if d.erase != crate::scenario::EraseSpec::Sequential || d.writer_fault.is_some() {
            return Some(SkipReason::FixedWriter);
        }
        None
    }

    /// The app image built for fixture `name`, if there is one.
    pub fn app(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(format!("{name}.bin"))).ok()
    }
}

pub struct QemuDut {
    program: QemuProgram,
    flash: PathBuf,
    /// The guest's ports and the host's loopback ports forwarded to them.
    forwards: Vec<(Port, u16)>,
    /// QEMU while the chip is powered (a process per boot).
    guest: Option<guest::PowerOn>,
    /// Keeps QEMU's main loop looking at slirp's sockets while `guest` runs.
    nudger: Option<nudge::Nudger>,
    lines: Option<Receiver<String>>,
    pending: std::collections::VecDeque<DutEvent>,
    /// A power cut armed at a log line: the reader stops QEMU when the line comes.
    trip: std::sync::Arc<crate::tripwire::Tripwire>,
    /// The backend the reports name (`device` when QEMU plays a bench's board).
    backend: &'static str,
    _dir: tempfile::TempDir,
}

/// The guest's ports the host reaches: those the chip firmware's update paths listen on.
const FORWARDED: [Port; 3] =
    [Uploader::Esphome.port(), Uploader::Arduino.port(), crate::paths::web_form::PORT];

/// slirp's gateway: the guest reaches the host's loopback through it.
pub const SLIRP_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 2);
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long QEMU gets to answer a QMP command.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

impl QemuDut {
    pub fn new(program: QemuProgram, flash_image: &[u8]) -> Result<Self, DutError> {
        if ![2usize << 20, 4 << 20, 8 << 20, 16 << 20].contains(&flash_image.len()) {
            return Err(DutError::Start("QEMU takes only 2, 4, 8 or 16 MiB flash images".into()));
        }
        let dir = tempfile::tempdir()?;
        let flash = dir.path().join("flash.bin");
        std::fs::write(&flash, flash_image)?;
        Self::with_dir(program, flash, dir)
    }

    /// A guest on an existing flash file: a bench's board (reported as `backend`), flashed
    /// through QEMU's ROM loader.
    pub fn on_file(program: QemuProgram, flash: PathBuf, backend: &'static str) -> Result<Self, DutError> {
        let mut dut = Self::with_dir(program, flash, tempfile::tempdir()?)?;
        dut.backend = backend;
        Ok(dut)
    }

    fn with_dir(program: QemuProgram, flash: PathBuf, dir: tempfile::TempDir) -> Result<Self, DutError> {
        let forwards = FORWARDED
            .iter()
            .map(|&guest| {
                let host = match guest {
                    Port::Tcp(_) => TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
                    Port::Udp(_) => std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port(),
                };
                Ok((guest, host))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(QemuDut {
            program,
            flash,
            forwards,
            guest: None,
            nudger: None,
            lines: None,
            pending: Default::default(),
            trip: Default::default(),
            backend: ENTRY.name,
            _dir: dir,
        })
    }

    fn spawn(&mut self) -> Result<(), DutError> {
        let program = self.program.clone();
        let qmp = self._dir.path().join("qmp.sock");
        let flash = self.flash.clone();
        // The guest reaches the host (the uploader's back-connection, the broker) through
        // slirp's gateway, 10.0.2.2.
        let nic = self.forwards.iter().fold("user,model=open_eth".to_string(), |mut nic, (guest, host)| {
            let (transport, guest) = match guest {
                Port::Tcp(p) => ("tcp", p),
                Port::Udp(p) => ("udp", p),
            };
            nic.push_str(&format!(",hostfwd={transport}:127.0.0.1:{host}-:{guest}"));
            nic
        });
        let socket = qmp.clone();
        let launch: guest::Launch = Box::new(move || {
            let _ = std::fs::remove_file(&socket);
            let mut cmd = Command::new(&program.program);
            if let Some(dir) = &program.bios_dir {
                cmd.arg("-L").arg(dir);
            }
            // With a QMP socket QEMU no longer puts the UART on stdio by itself: say so.
            cmd.args(["-serial", "mon:stdio"]).args(nudge::qemu_args(&socket));
            cmd.args(["-nographic", "-no-reboot", "-machine", "esp32c3", "-drive"])
                .arg(format!("file={},if=mtd,format=raw", flash.display()))
                .args(["-nic", &nic])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        });
        let (tx, rx) = channel();
        self.trip.clear_fired();
        let guest = guest::PowerOn::start(launch, self.trip.clone(), tx)
            .map_err(|e| DutError::Start(format!("cannot start {}: {e}", self.program.program.display())))?;
        self.guest = Some(guest);
        self.nudger = Some(nudge::Nudger::start(qmp));
        self.lines = Some(rx);
        Ok(())
    }

    /// Stops QEMU the way a power cut stops a chip: what the guest has written stays written.
    /// QEMU's SPI flash model writes the backing file asynchronously, so a SIGKILL can lose
    /// writes the guest already completed (seen under load: an otadata entry the boot guard wrote
    /// just before rebooting was gone). SIGTERM makes QEMU drain its I/O and exit; SIGKILL only if
    /// it does not within `STOP_TIMEOUT`.
    fn kill(&mut self) {
        self.nudger = None;
        if let Some(mut g) = self.guest.take() {
            let t = Instant::now();
            g.stop(STOP_TIMEOUT);
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "qemu stopped");
        }
        self.lines = None;
    }

    /// Powers on and waits until the app serves OTA, hangs in its self-test or halts.
    fn boot(&mut self) -> Result<(), DutError> {
        self.spawn()?;
        // A power cut at one of its lines is reported with them.
        self.settle()?;
        Ok(())
    }

    /// Takes the lines of a boot until the app serves OTA, hangs in its self-test or halts
    /// (`true`), or a power cut armed at one of them stops QEMU (`false`). A reboot on the way
    /// (the guard rolling back) is the guest's: the next process boots on.
    fn settle(&mut self) -> Result<bool, DutError> {
        let started = Instant::now();
        let deadline = started + BOOT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.read_line(left)? else {
                return Err(DutError::Timeout(BOOT_TIMEOUT, "the firmware to boot".into()));
            };
            let Some(line) = self.unless_tripped(line) else { return Ok(false) };
            let settled = ends_boot(&line);
            self.pending.push_back(DutEvent::Serial(line));
            if settled {
                tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "qemu: booted");
                return Ok(true);
            }
        }
    }

    /// `line`, unless it is the one a power cut was armed at: then the power is off (the reader
    /// has sent QEMU SIGTERM, it writes the flash back and exits) and the line and the loss are
    /// pending.
    fn unless_tripped(&mut self, line: String) -> Option<String> {
        if !self.trip.take_if_tripped_by(&line) {
            return Some(line);
        }
        self.kill();
        let lost = DutEvent::PowerLost(format!("at log line `{line}`"));
        self.pending.push_back(DutEvent::Serial(line));
        self.pending.push_back(lost);
        None
    }

    fn read_line(&mut self, timeout: Duration) -> Result<Option<String>, DutError> {
        let Some(rx) = &self.lines else { return Ok(None) };
        match rx.recv_timeout(timeout) {
            Ok(l) => Ok(Some(l)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(DutError::Exited("QEMU ended by itself (not a guest reset)".into()))
            }
        }
    }
}

impl Dut for QemuDut {
    fn backend(&self) -> &'static str {
        self.backend
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            exact_power_cut: false,
            flash_op_counters: false,
            power_switch: true,
            session_events: false,
            live_flash_read: true,
        }
    }

    fn power_on(&mut self) -> Result<(), DutError> {
        self.kill();
        self.boot()
    }

    fn power_off(&mut self) -> Result<(), DutError> {
        self.kill();
        Ok(())
    }

    fn reset(&mut self) -> Result<(), DutError> {
        self.kill();
        self.boot()
    }

    fn arm_power_cut(&mut self, cut: PowerCut) -> Result<(), DutError> {
        match cut {
            PowerCut::AtLog(re) => {
                self.trip.arm(re);
                Ok(())
            }
            _ => Err(DutError::Unsupported {
                backend: self.backend,
                what: "a power cut at an exact flash operation",
            }),
        }
    }

    fn disarm_power_cut(&mut self) -> Result<(), DutError> {
        self.trip.disarm();
        Ok(())
    }

    fn endpoints(&self) -> Result<Endpoints, EndpointError> {
        Ok(Endpoints::new(
            self.forwards.iter().map(|&(guest, host)| (guest, SocketAddr::from(([127, 0, 0, 1], host)))),
        ))
    }

    fn next_event(&mut self, timeout: Duration) -> Result<Option<DutEvent>, DutError> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(Some(e));
        }
        let Some(line) = self.read_line(timeout)? else { return Ok(None) };
        let Some(line) = self.unless_tripped(line) else { return Ok(self.pending.pop_front()) };
        let Some(after_update) = announced_reboot(&line) else { return Ok(Some(DutEvent::Serial(line))) };
        // The guest restarts by itself (its reset ends the process, the next one boots). The
        // boot's lines are taken as one, as after a power-on (a snapshot after `running ota_1`
        // sees the self-test's verdict, as on the emulator); an update's restart is reported
        // once it has settled.
        self.pending.push_back(DutEvent::Serial(line));
        if self.settle()? && after_update {
            self.pending.push_back(DutEvent::Rebooted);
        }
        Ok(self.pending.pop_front())
    }

    /// QEMU writes the guest's flash to its file asynchronously: a read while the guest runs can
    /// miss writes the guest already completed (seen under load: an otadata entry still erased in
    /// the file). QMP `stop` drains QEMU's I/O, so the guest is paused while its file is read, as
    /// a probe halts a chip; `cont` resumes it.
    fn read_flash(&mut self) -> Result<Vec<u8>, DutError> {
        let (Some(guest), Some(nudger)) = (self.guest.as_ref(), self.nudger.as_ref()) else {
            return Ok(std::fs::read(&self.flash)?);
        };
        let qmp = |command: &'static str| {
            nudger.execute(command, QMP_TIMEOUT).map_err(|e| DutError::Refused {
                command: format!("QMP {command} (to read the flash of a running guest)"),
                message: e.to_string(),
            })
        };
        // No process starts or ends meanwhile; between two (a guest reset), the last one has
        // written its flash back.
        guest.with_process(|running| match running {
            None => Ok(std::fs::read(&self.flash)?),
            Some(_) => {
                qmp("stop")?;
                let data = std::fs::read(&self.flash);
                qmp("cont")?;
                Ok(data?)
            }
        })
    }

    fn flash_counters(&mut self) -> Result<FlashCounters, DutError> {
        Err(DutError::Unsupported { backend: self.backend, what: "flash operation counters" })
    }

    fn shutdown(&mut self) {
        self.kill();
    }
}

impl Drop for QemuDut {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn terminate(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
        // SAFETY: `kill` with a pid this process spawned and has not reaped yet (no reuse).
        if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            tracing::warn!("QEMU did not exit {STOP_TIMEOUT:?} after SIGTERM; killing it");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The chip firmware's builds on Espressif's QEMU.
pub struct QemuBackend {
    pub program: QemuProgram,
    pub builds: FirmwareBuilds,
}

pub const ENTRY: super::BackendEntry = super::BackendEntry {
    name: "qemu",
    about: "the chip firmware (cargo xtask firmware) on Espressif's QEMU (ESP_QEMU or PATH)",
    firmware: super::FirmwareSource::Qemu,
    preflight: || {
        QemuProgram::locate().map(drop).map_err(|why| super::BackendError::unusable(ENTRY.name, why))
    },
    make: |options| {
        let unusable = |why| super::BackendError::unusable(ENTRY.name, why);
        let program = QemuProgram::locate().map_err(unusable)?;
        let builds = FirmwareBuilds::load(&options.firmware).map_err(unusable)?;
        Ok(Box::new(QemuBackend { program, builds }))
    },
};

impl super::Backend for QemuBackend {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn ota_image(&self, image: &crate::scenario::Image) -> Result<Vec<u8>, SkipReason> {
        self.builds.ota_image(image)
    }

    fn start(
        &self,
        s: &crate::scenario::Scenario,
        context: &super::StartContext,
    ) -> Result<Box<dyn Dut>, super::StartError> {
        let d = &s.device;
        let builds = &self.builds;
        let app = self.ota_image(&d.firmware)?;
        let (mut flash_image, provisioned) = super::device_flash(s, &app, None, context)?;
        if let Some(why) = builds.unfit_for(s, provisioned) {
            return Err(why.into());
        }
        flash_image[..builds.bootloader.len()].copy_from_slice(&builds.bootloader);
        let mut dut = QemuDut::new(self.program.clone(), &flash_image).map_err(super::BackendError::from)?;
        dut.power_off().map_err(super::BackendError::from)?;
        Ok(Box::new(dut))
    }

    fn host_address(&self) -> Result<std::net::IpAddr, super::BackendError> {
        Ok(SLIRP_GATEWAY.into())
    }

    fn snapshots_compare(&self) -> Result<(), super::NotTheFixtures> {
        match self.builds.matches_fixtures {
            true => Ok(()),
            false => Err(super::NotTheFixtures("a configured build: OTAHIL_FW_*")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builds_dir(manifest: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build.txt"), manifest).unwrap();
        std::fs::write(dir.path().join("v1-flash.bin"), vec![0xFF; 4 << 20]).unwrap();
        dir
    }

    #[test]
    fn build_manifests_are_read_and_wifi_builds_refused() {
        let dir = builds_dir("link=qemu-ethernet\npassword=hunter2\nprotocol=1\n");
        let b = FirmwareBuilds::load(dir.path()).unwrap();
        assert_eq!((b.password.as_deref(), b.protocol, b.bootloader.len()), (Some("hunter2"), 1, 0x8000));
        assert!(!b.matches_fixtures, "no images in the directory");
        let dir = builds_dir("link=wifi\npassword=\nprotocol=2\n");
        let e = FirmwareBuilds::load(dir.path()).unwrap_err();
        assert!(matches!(e, QemuSetupError::WifiBuilds { .. }), "{e}");
        assert!(e.to_string().contains("Wi-Fi builds for boards"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = FirmwareBuilds::load(empty.path()).unwrap_err();
        assert!(matches!(e, QemuSetupError::NoBuilds { .. }), "{e}");
        assert!(e.to_string().contains("run `cargo xtask firmware`"), "{e}");
    }

    #[test]
    fn flash_images_qemu_cannot_take_are_refused() {
        let program = QemuProgram { program: "qemu-system-riscv32".into(), bios_dir: None };
        let e = QemuDut::new(program, &[0xFF; 3 << 20]).err().expect("3 MiB is refused");
        assert!(e.to_string().contains("2, 4, 8 or 16 MiB"), "{e}");
    }
}
