//! The emulated ESP32-C3: power, the bootloader and the app's boot guard from `ota-core`, the
//! serial log, and the device application (`ota_core::app`) with every update path — all
//! independent of sockets and processes. What the app asks of the network comes out as
//! [`Action`]s for the process's event loop (`crate::serve`) to carry out.

use crate::control::{Counters, DeviceState, Status};
use crate::flash::{FileFlash, PowerLoss, SplitMix};
use ota_core::app::{App, Env};
use ota_core::boot::{BootError, Booted, BootloaderConfig, DirectVerify, PowerOn, power_on};
use ota_core::io::{Entropy, Input, Io, LinkId, Remote};
use ota_core::log::{LogEvent, LogLine, SlotName};
use ota_core::proto::arduino::AuthScheme;
use ota_core::proto::esphome;
use ota_core::service::BuiltIn;
use ota_core::writer::OtaConfig;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A reboot loop longer than this is reported as a brick instead of spinning forever.
const MAX_CONSECUTIVE_BOOTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// The OTA password built in (`None`: no authentication); NVS overrides it at boot, as on
    /// the chip (`ota_core::settings`).
    pub password: Option<Vec<u8>>,
    /// ESPHome OTA protocol version built in (1 or 2); NVS overrides it at boot.
    pub protocol_version: u8,
    /// Offer SHA-256 authentication to clients that support it.
    pub sha256: bool,
    /// The bootloader's `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` (espflash's: off).
    pub bootloader_rollback: bool,
    /// How the app writes updates (erase mode, app-side rollback support).
    pub ota: OtaConfig,
    /// The port the device's OTA server listens on (what its log says; the host side may differ).
    pub device_port: u16,
    /// Seed for nonces (and anything else random on the device).
    pub seed: u64,
    /// ArduinoOTA's password built in (`None`: no authentication); NVS overrides it at boot.
    pub arduino_password: Option<Vec<u8>>,
    /// ArduinoOTA's authentication scheme built in; NVS overrides it at boot.
    pub arduino_auth: AuthScheme,
    /// The station MAC (the pull path's MQTT client id ends with it, as the seed's does).
    pub mac: [u8; 6],
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            password: None,
            protocol_version: 2,
            sha256: true,
            bootloader_rollback: false,
            ota: OtaConfig::default(),
            device_port: esphome::DEFAULT_PORT,
            seed: 0,
            arduino_password: None,
            arduino_auth: AuthScheme::Md5,
            mac: crate::uart::MAC,
        }
    }
}

/// What the device is doing.
pub enum Power {
    Off,
    /// The app runs and serves OTA.
    Running {
        booted: Booted,
        app: Box<App>,
    },
    /// The app's self-test never finishes: no OTA service until a reset.
    Hung {
        booted: Booted,
    },
    /// The bootloader cannot start anything (or reboots forever): the reason.
    Bricked(String),
}

/// Where an outgoing connection goes, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectTo {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

/// What the app asked of the network, in order (`ota_core::io::Io`, owned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Listen {
        listener: LinkId,
        port: u16,
    },
    Bind {
        socket: LinkId,
        port: u16,
    },
    Connect {
        link: LinkId,
        to: ConnectTo,
    },
    Send {
        link: LinkId,
        bytes: Vec<u8>,
    },
    Close {
        link: LinkId,
    },
    Datagram {
        socket: LinkId,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// A client's exchange with a push path ended (the control channel's `session-closed`).
    ExchangeOver,
}

/// What one call into the app gave the transport to do.
#[derive(Debug, Default)]
pub struct Step {
    pub actions: Vec<Action>,
    /// The power went during the call: drop every connection without a word (the actions
    /// from before the cut are dropped with them, as the chip's would be).
    pub power_lost: Option<PowerLoss>,
    /// A client's exchange was open when the power went (it ends with the power).
    pub exchange_cut: bool,
    /// An update completed: flush the links and restart into the new image.
    pub reboot: bool,
}

struct Rng(SplitMix);
impl Entropy for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.0.byte();
        }
    }
}

pub struct Device<W: Write> {
    pub config: DeviceConfig,
    flash: FileFlash,
    flash_size: u32,
    power: Power,
    boot_at: Instant,
    serial: W,
    rng: Rng,
    /// What the app asked for since the transport last took it.
    actions: Vec<Action>,
    cut: LogCut,
}

/// A power cut armed at a log line (`cut at-log`): once the device prints a matching line the
/// power is gone: its UART says nothing more, and its next flash operation does not happen.
#[derive(Debug, Default)]
struct LogCut {
    pattern: Option<regex::Regex>,
    /// The line that matched, until the serve loop has taken it.
    fired: Option<String>,
    /// The flash's switch: thrown with the line, so its next operation does not happen.
    switch: Option<Arc<AtomicBool>>,
}

/// The app's adapter side within the device: lines go to the serial port at once (a cut armed
/// at a line stops the flash operation after it), the rest is recorded for the transport.
/// Nothing is said or asked once the flash has lost power.
struct Recorder<'d, W: Write> {
    actions: &'d mut Vec<Action>,
    serial: &'d mut W,
    boot_at: Instant,
    cut: &'d mut LogCut,
    unpowered: Arc<AtomicBool>,
}

impl<W: Write> Recorder<'_, W> {
    fn push(&mut self, action: Action) {
        if !self.unpowered.load(Ordering::Relaxed) {
            self.actions.push(action);
        }
    }
}

impl<W: Write> Io for Recorder<'_, W> {
    fn listen(&mut self, listener: LinkId, port: u16) {
        self.push(Action::Listen { listener, port });
    }
    fn bind(&mut self, socket: LinkId, port: u16) {
        self.push(Action::Bind { socket, port });
    }
    fn connect(&mut self, link: LinkId, to: Remote<'_>) {
        let to = match to {
            Remote::Addr(a) => ConnectTo::Addr(a),
            Remote::Host { host, port } => ConnectTo::Host { host: host.to_string(), port },
        };
        self.push(Action::Connect { link, to });
    }
    fn send(&mut self, link: LinkId, bytes: &[u8]) {
        // Consecutive sends on one link go out as one write, as a socket buffer joins them.
        if let Some(Action::Send { link: last, bytes: queued }) = self.actions.last_mut()
            && *last == link
        {
            if !self.unpowered.load(Ordering::Relaxed) {
                queued.extend_from_slice(bytes);
            }
            return;
        }
        self.push(Action::Send { link, bytes: bytes.to_vec() });
    }
    fn close(&mut self, link: LinkId) {
        self.push(Action::Close { link });
    }
    fn datagram(&mut self, socket: LinkId, to: SocketAddr, bytes: &[u8]) {
        self.push(Action::Datagram { socket, to, bytes: bytes.to_vec() });
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        if !self.unpowered.load(Ordering::Relaxed) {
            print_line(self.serial, self.boot_at, line, self.cut);
        }
    }
    fn exchange_over(&mut self) {
        self.push(Action::ExchangeOver);
    }
}

impl<W: Write> Device<W> {
    pub fn new(config: DeviceConfig, flash: FileFlash, serial: W) -> Self {
        let flash_size = flash.data().len() as u32;
        let rng = Rng(SplitMix(config.seed));
        Device {
            config,
            flash,
            flash_size,
            power: Power::Off,
            boot_at: Instant::now(),
            serial,
            rng,
            actions: Vec::new(),
            cut: LogCut::default(),
        }
    }

    pub fn power(&self) -> &Power {
        &self.power
    }

    pub fn flash(&self) -> &FileFlash {
        &self.flash
    }

    pub fn flash_mut(&mut self) -> &mut FileFlash {
        &mut self.flash
    }

    pub fn serial(&mut self) -> &mut W {
        &mut self.serial
    }

    /// Whether the app is up and serving OTA.
    pub fn serving(&self) -> bool {
        matches!(self.power, Power::Running { .. })
    }

    fn log(&mut self, event: &LogEvent<'_>) {
        print_line(&mut self.serial, self.boot_at, event, &mut self.cut);
        let _ = self.serial.flush();
    }

    /// Cuts the power when the device prints a line matching `pattern` (`None`: disarms).
    pub fn arm_log_cut(&mut self, pattern: Option<regex::Regex>) {
        let switch = self.flash.cut_switch();
        switch.store(false, Ordering::Relaxed);
        self.cut = LogCut { pattern, fired: None, switch: Some(switch) };
    }

    /// The line an armed log cut fired at, once: the power is gone from that line on. If a
    /// flash operation came after it, that operation was cut (`Flash::power_loss`); if none
    /// did, the caller switches the device off.
    pub fn take_log_cut(&mut self) -> Option<String> {
        let line = self.cut.fired.take()?;
        // Not taken by an operation: the caller switches the device off instead.
        self.flash.cut_switch().store(false, Ordering::Relaxed);
        Some(line)
    }

    /// Cuts the power now (between flash operations).
    pub fn power_off(&mut self) {
        self.power = Power::Off;
        self.actions.clear();
    }

    /// Powers on: bootloader, boot guard, app — rebooting as the guard asks. The app's first
    /// requests (its listeners, its broker) wait in [`Device::take_step`].
    pub fn power_on(&mut self) {
        self.flash.restore_power();
        self.boot_at = Instant::now();
        self.actions.clear();
        let cfg = BootloaderConfig {
            rollback: self.config.bootloader_rollback,
            chip: self.config.ota.chip,
            flash_size: self.flash_size,
        };
        let outcome = {
            let boot_at = &mut self.boot_at;
            let serial = &mut self.serial;
            let cut = &mut self.cut;
            let mut sink = |e: &LogEvent<'_>| {
                if let LogEvent::BootStart = e {
                    // Every boot restarts the chip's millisecond clock.
                    *boot_at = Instant::now();
                }
                print_line(serial, *boot_at, e, cut);
            };
            power_on(&mut self.flash, cfg, &mut DirectVerify, &mut sink, MAX_CONSECUTIVE_BOOTS)
        };
        let _ = self.serial.flush();
        self.power = match outcome {
            _ if self.flash.power_loss().is_some() => Power::Off,
            PowerOn::Running { table, booted } => {
                let built_in = BuiltIn {
                    ota_password: self.config.password.as_deref(),
                    ota_protocol: self.config.protocol_version,
                    ota_sha256: self.config.sha256,
                    ota_port: self.config.device_port,
                    arduino_password: self.config.arduino_password.as_deref(),
                    arduino_auth: self.config.arduino_auth,
                    mac: self.config.mac,
                };
                let app = {
                    let (boot_at, serial, cut) = (self.boot_at, &mut self.serial, &mut self.cut);
                    let mut log = |e: &LogEvent<'_>| print_line(serial, boot_at, e, cut);
                    App::boot(
                        &mut self.flash,
                        table,
                        &booted,
                        self.config.ota,
                        &built_in,
                        &mut log,
                        &mut self.rng,
                    )
                };
                self.power = Power::Running { booted, app: Box::new(app) };
                self.call(|app, env| app.start(env));
                return;
            }
            PowerOn::Hung { booted, .. } => Power::Hung { booted },
            PowerOn::Failed(BootError::Table(e)) => Power::Bricked(format!("partition table invalid: {e}")),
            PowerOn::Failed(BootError::NoBootableApp) => Power::Bricked("no bootable app".into()),
            PowerOn::Failed(BootError::Flash(e)) | PowerOn::Flash(e) => {
                Power::Bricked(format!("flash failed during boot: {e}"))
            }
            PowerOn::BootLoop(n) => {
                Power::Bricked(format!("reboot loop: {n} boots without reaching the app"))
            }
        };
    }

    /// A reset (watchdog, reset button, `esp_restart`): power stays, the chip restarts.
    pub fn reset(&mut self) {
        self.power_off();
        self.power_on();
    }

    /// Milliseconds since this boot (the app's clock).
    fn now_ms(&self) -> u64 {
        self.boot_at.elapsed().as_millis() as u64
    }

    /// Runs `f` on the app (if it runs) with the device's flash, clock and randomness; what it
    /// asked for is added to the actions.
    fn call<R>(&mut self, f: impl FnOnce(&mut App, &mut Env<'_, FileFlash>) -> R) -> Option<R> {
        let now_ms = self.now_ms();
        let Device { power, flash, serial, boot_at, cut, rng, actions, .. } = self;
        let Power::Running { app, .. } = power else { return None };
        let unpowered = flash.unpowered_flag();
        let mut io = Recorder { actions, serial, boot_at: *boot_at, cut, unpowered };
        let out = f(app, &mut Env { flash, now_ms, rng, io: &mut io });
        let _ = self.serial.flush();
        Some(out)
    }

    /// What the app asked for since the last step (after a power-on, its listeners and first
    /// connections), and whether the power went or a restart is due.
    pub fn take_step(&mut self) -> Step {
        let exchange_open = self.app().is_some_and(|a| a.in_exchange::<FileFlash>());
        let reboot = self.app().is_some_and(|a| a.reboot_requested::<FileFlash>());
        if let Some(loss) = self.flash.power_loss() {
            self.power_off();
            return Step { power_lost: Some(loss), exchange_cut: exchange_open, ..Step::default() };
        }
        Step { actions: std::mem::take(&mut self.actions), reboot, ..Step::default() }
    }

    /// A client's exchange with a push path is open (a power cut or a reset ends it).
    pub fn exchange_open(&self) -> bool {
        self.app().is_some_and(|a| a.in_exchange::<FileFlash>())
    }

    fn app(&self) -> Option<&App> {
        match &self.power {
            Power::Running { app, .. } => Some(app),
            _ => None,
        }
    }

    /// Something happened to one of the app's links.
    pub fn input(&mut self, input: Input<'_>) -> Step {
        let exchange_open = self.app().is_some_and(|a| a.in_exchange::<FileFlash>());
        self.call(|app, env| app.input(input, env));
        let mut step = self.take_step();
        step.exchange_cut |= exchange_open && step.power_lost.is_some();
        step
    }

    /// Time passed: the app looks at its timers.
    pub fn poll(&mut self) -> Step {
        let exchange_open = self.app().is_some_and(|a| a.in_exchange::<FileFlash>());
        self.call(|app, env| app.poll(env));
        let mut step = self.take_step();
        step.exchange_cut |= exchange_open && step.power_lost.is_some();
        step
    }

    /// A connection waits on `listener`: the link it becomes, or `None` to leave it waiting.
    pub fn accept(&mut self, listener: LinkId) -> (Option<LinkId>, Step) {
        let link = self.call(|app, env| app.accept(listener, env)).flatten();
        (link, self.take_step())
    }

    /// When the app next has something to do without input, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let ms = self.app()?.deadline::<FileFlash>(self.now_ms())?;
        Some(self.boot_at + Duration::from_millis(ms))
    }

    /// After a completed update: log and restart into the new image.
    pub fn reboot_after_update(&mut self) {
        // A path that restarts for its own reason (a mode switch) logged it already.
        if !self.app().is_some_and(|a| a.reboot_announced::<FileFlash>()) {
            self.log(&LogEvent::OtaRebooting);
        }
        self.reset();
    }

    /// How the device is, for the control channel.
    pub fn status(&self) -> Status {
        let c = self.flash.counters();
        let counters =
            Counters { erases: c.erases, programs: c.programs, bytes_programmed: c.bytes_programmed };
        let state = match &self.power {
            Power::Off => DeviceState::Off,
            Power::Running { booted, .. } | Power::Hung { booted } => {
                let slot = SlotName(booted.index).to_string();
                let version = booted.image.desc.version().to_string();
                let project = booted.image.desc.project_name().to_string();
                if self.serving() {
                    DeviceState::Running { slot, version, project }
                } else {
                    DeviceState::Hung { slot, version, project }
                }
            }
            Power::Bricked(why) => DeviceState::Bricked { reason: why.clone() },
        };
        Status { state, counters }
    }
}

/// One serial line, stamped in milliseconds since `boot_at` (the chip's clock restarts at each
/// boot). The serial port is a pipe to whoever watches; if it is gone the device still runs.
fn print_line<W: Write>(serial: &mut W, boot_at: Instant, event: &LogEvent<'_>, cut: &mut LogCut) {
    if cut.fired.is_some() {
        // The power went at an earlier line: the UART is silent.
        return;
    }
    let ms = boot_at.elapsed().as_millis() as u32;
    let line = LogLine { ms, event }.to_string();
    let _ = writeln!(serial, "{line}");
    if cut.pattern.as_ref().is_some_and(|p| p.is_match(&line)) {
        cut.pattern = None;
        cut.fired = Some(line);
        if let Some(s) = &cut.switch {
            s.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::{CutPoint, Fault};
    use ota_core::image_builder::{ImageSpec, build};

    fn app(version: &str) -> Vec<u8> {
        let mut spec = ImageSpec::new("otahil-fw", version);
        spec.payload_len = 5000;
        let mut v = vec![0; spec.image_len()];
        build(&spec, &mut v).unwrap();
        v
    }

    fn flash() -> Vec<u8> {
        let csv =
            "otadata, data, ota, , 0x2000\napp0, app, ota_0, , 0x100000\napp1, app, ota_1, , 0x100000\n";
        let table = ota_core::partition_csv::parse_csv(csv).unwrap();
        crate::mkflash::merged_image(&table, &app("1.0.0"), 4 << 20).unwrap()
    }

    fn serial(d: &Device<Vec<u8>>) -> String {
        String::from_utf8(d.serial.clone()).unwrap()
    }

    /// The chip reads its OTA settings from NVS at boot; so does the emulated device, and
    /// provisioned values beat the ones it was started with.
    #[test]
    fn provisioned_settings_override_the_built_in_ones() {
        let csv = "nvs, data, nvs, 0x9000, 0x5000\notadata, data, ota, , 0x2000\n\
                   app0, app, ota_0, 0x10000, 0x100000\napp1, app, ota_1, , 0x100000\n";
        let table = ota_core::partition_csv::parse_csv(csv).unwrap();
        let mut image = crate::mkflash::merged_image(&table, &app("1.0.0"), 4 << 20).unwrap();
        crate::mkflash::provision_settings(
            &mut image,
            &table,
            &ota_core::provision::Provision { ota_password: Some("hunter2"), protocol: 1, wifi: None },
            &[],
        )
        .unwrap();
        let mut d = Device::new(config_with(b"built-in"), FileFlash::in_memory(image), Vec::new());
        d.power_on();
        assert!(serial(&d).contains("config: OTA password set (nvs), protocol 1 (nvs)"), "{}", serial(&d));
        use esphome::code::{AUTH_OK, HEADER_OK as FEATURES_ACK, OK, REQUEST_AUTH};
        // The session's server answers with them: protocol 1, and a challenge for the password.
        assert_eq!(esphome_greeting(&mut d)[..4], [OK, 1, FEATURES_ACK, REQUEST_AUTH]);
        // Nothing provisioned: the values the device was started with.
        let mut d = Device::new(config_with(b"built-in"), FileFlash::in_memory(flash()), Vec::new());
        d.power_on();
        assert!(serial(&d).contains("config: OTA password set (built in), protocol 2 (built in)"));
        assert_eq!(esphome_greeting(&mut d)[..4], [OK, 2, FEATURES_ACK, REQUEST_AUTH]);
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(flash()), Vec::new());
        d.power_on();
        assert_eq!(esphome_greeting(&mut d), [OK, 2, FEATURES_ACK, AUTH_OK]);
    }

    /// The listener the app asked for on the ESPHome port.
    fn esphome_listener(step: &Step) -> LinkId {
        step.actions
            .iter()
            .find_map(|a| match a {
                Action::Listen { listener, port: esphome::DEFAULT_PORT } => Some(*listener),
                _ => None,
            })
            .expect("the app listens on the ESPHome port")
    }

    /// What a fresh ESPHome session answers to the magic and a features byte without SHA-256.
    fn esphome_greeting(d: &mut Device<Vec<u8>>) -> Vec<u8> {
        let listener = esphome_listener(&d.take_step());
        let (link, _) = d.accept(listener);
        let link = link.expect("an idle device takes the client");
        let mut sent = Vec::new();
        for bytes in [&esphome::MAGIC[..], &[0u8][..]] {
            for a in d.input(Input::Data(link, bytes)).actions {
                if let Action::Send { link: to, bytes } = a {
                    assert_eq!(to, link);
                    sent.extend(bytes);
                }
            }
        }
        sent
    }

    fn config_with(password: &[u8]) -> DeviceConfig {
        DeviceConfig { password: Some(password.to_vec()), ..DeviceConfig::default() }
    }

    #[test]
    fn boots_and_reports_status() {
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(flash()), Vec::new());
        assert!(matches!(d.power(), Power::Off));
        let listener = LinkId { path: 0, local: 0 };
        assert!(d.accept(listener).0.is_none(), "nothing serves OTA while off");
        d.power_on();
        assert!(d.serving());
        assert!(
            d.status().to_string().starts_with("power=on state=running slot=ota_0 version=1.0.0"),
            "{}",
            d.status()
        );
        let log = serial(&d);
        assert!(log.contains("boot: No factory image, trying OTA 0"), "{log}");
        assert!(log.contains("ota: listening on port 3232"), "{log}");
    }

    #[test]
    fn a_broken_table_or_no_app_is_a_brick_not_a_panic() {
        let mut f = flash();
        f[0x8000] = 0;
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(f), Vec::new());
        d.power_on();
        assert!(
            matches!(d.power(), Power::Bricked(why) if why.contains("partition table invalid")),
            "{}",
            d.status()
        );
        let mut f = flash();
        f[0x10000] = 0xFF;
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(f), Vec::new());
        d.power_on();
        assert!(matches!(d.power(), Power::Bricked(why) if why == "no bootable app"));
        assert!(serial(&d).contains("E (0) boot: No bootable app partitions in the partition table"));
    }

    /// `cut at-log`: the line is the last thing the device says, and the flash operation that
    /// would come next does not happen; with none coming, the cut is taken once, by the caller.
    #[test]
    fn a_cut_at_a_log_line_silences_the_uart_and_stops_the_next_flash_operation() {
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(flash()), Vec::new());
        d.arm_log_cut(Some(regex::Regex::new(r"boot: Loaded app").unwrap()));
        d.power_on();
        let log = serial(&d);
        assert!(log.trim_end().ends_with("boot: Loaded app from partition at offset 0x10000"), "{log}");
        // The first boot then writes otadata copy 0: that erase is the one cut.
        assert!(matches!(d.power(), Power::Off), "{}", d.status());
        let loss = d.flash().power_loss().expect("the next operation was cut");
        assert_eq!(loss.kind, crate::flash::OpKind::Erase);
        assert!(d.take_log_cut().is_some_and(|l| l.contains("Loaded app")));
        assert_eq!(d.take_log_cut(), None, "taken once");
        // Armed at a line after which no flash operation comes: nothing is cut by the device;
        // the line is reported and the flash left disarmed for the caller to switch off.
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(flash()), Vec::new());
        d.power_on();
        let listener = esphome_listener(&d.take_step());
        d.arm_log_cut(Some(regex::Regex::new(r"client connected").unwrap()));
        assert!(d.accept(listener).0.is_some());
        assert!(d.take_log_cut().is_some_and(|l| l.contains("client connected")));
        assert!(d.flash().power_loss().is_none());
        assert!(!d.flash().cut_switch().load(std::sync::atomic::Ordering::Relaxed), "left open");
    }

    #[test]
    fn a_cut_during_boot_leaves_the_device_off() {
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(flash()), Vec::new());
        // The first boot writes otadata copy 0 (erase, program): cut the erase.
        d.flash_mut().arm(Fault { at: CutPoint::AfterOps(0), torn: None });
        d.power_on();
        assert!(matches!(d.power(), Power::Off));
        assert!(d.flash().power_loss().is_some());
        d.power_on();
        assert!(d.serving(), "{}", d.status());
    }
}
