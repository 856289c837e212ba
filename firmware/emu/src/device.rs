//! The emulated ESP32-C3: power, the bootloader and the app's boot guard from `ota-core`, the
//! serial log, ESPHome OTA sessions and ArduinoOTA — all independent of sockets and processes.

use crate::control::{Counters, DeviceState, Status};
use crate::flash::{FileFlash, PowerLoss, SplitMix};
use ota_core::boot::{BootError, Booted, BootloaderConfig, DirectVerify, PowerOn, power_on};
use ota_core::log::{LogEvent, LogLine, SlotName};
use ota_core::partition::PartitionTable;
use ota_core::proto::arduino::settings::ArduinoSettings;
use ota_core::proto::arduino::{self, AuthScheme};
use ota_core::proto::esphome::settings::OtaSettings;
use ota_core::proto::esphome::{self, Event, NonceSource, Output, Server, ServerConfig};
use ota_core::proto::mqtt_pull::settings::MqttSettings;
use ota_core::session::{Session, Target};
use ota_core::writer::OtaConfig;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

mod pull;
pub use pull::{PullInput, PullStep, ServerAddr};

/// A reboot loop longer than this is reported as a brick instead of spinning forever.
const MAX_CONSECUTIVE_BOOTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// The OTA password built in (`None`: no authentication); NVS overrides it at boot, as on
    /// the chip (`ota_core::settings`).
    pub password: Option<&'static [u8]>,
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
#[derive(Clone, Debug)]
pub enum Power {
    Off,
    /// The app runs and serves OTA.
    Running {
        table: Box<PartitionTable>,
        booted: Booted,
        /// What this boot's OTA server answers with (built-in settings after NVS overrides).
        server: ServerConfig<'static>,
    },
    /// The app's self-test never finishes: no OTA service until a reset.
    Hung {
        booted: Booted,
    },
    /// The bootloader cannot start anything (or reboots forever): the reason.
    Bricked(String),
}

/// How a session step ended for the transport.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionStep {
    /// Send these bytes, keep the connection.
    Continue(Vec<u8>),
    /// Send these bytes, then close the connection.
    Close { reply: Vec<u8>, reboot: bool },
    /// The power went during the step: drop the connection without a word.
    PowerLost(PowerLoss),
}

struct Rng(SplitMix);
impl NonceSource for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.0.byte();
        }
    }
}

#[derive(Default)]
struct Collect {
    sent: Vec<u8>,
    events: Vec<Event>,
}
impl Output for Collect {
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn event(&mut self, e: Event) {
        self.events.push(e);
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
    /// This boot's ArduinoOTA service (while the app runs) and the update it is writing.
    arduino: Option<Session<arduino::Server>>,
    /// This boot's MQTT-triggered pull (when NVS names a broker).
    pull: Option<pull::PullService>,
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
    switch: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
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
            arduino: None,
            pull: None,
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
        switch.store(false, std::sync::atomic::Ordering::Relaxed);
        self.cut = LogCut { pattern, fired: None, switch: Some(switch) };
    }

    /// The line an armed log cut fired at, once: the power is gone from that line on. If a
    /// flash operation came after it, that operation was cut (`Flash::power_loss`); if none
    /// did, the caller switches the device off.
    pub fn take_log_cut(&mut self) -> Option<String> {
        let line = self.cut.fired.take()?;
        // Not taken by an operation: the caller switches the device off instead.
        self.flash.cut_switch().store(false, std::sync::atomic::Ordering::Relaxed);
        Some(line)
    }

    /// Cuts the power now (between flash operations).
    pub fn power_off(&mut self) {
        self.power = Power::Off;
        self.arduino = None;
        self.pull = None;
    }

    /// Powers on: bootloader, boot guard, app — rebooting as the guard asks.
    pub fn power_on(&mut self) {
        self.flash.restore_power();
        self.boot_at = Instant::now();
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
                let built_in = OtaSettings::built_in(self.config.password, self.config.protocol_version);
                let settings = {
                    let (boot_at, serial, cut) = (self.boot_at, &mut self.serial, &mut self.cut);
                    built_in.load(&mut self.flash, &table, &mut |e: &LogEvent<'_>| {
                        print_line(serial, boot_at, e, cut)
                    })
                };
                self.log(&LogEvent::Module(&settings.log_line()));
                let server = ServerConfig {
                    password: settings.password().map(interned),
                    version: settings.protocol,
                    sha256: self.config.sha256,
                };
                let built_in = ArduinoSettings::built_in(
                    self.config.arduino_password.as_deref(),
                    self.config.arduino_auth,
                );
                let arduino_settings = {
                    let (boot_at, serial, cut) = (self.boot_at, &mut self.serial, &mut self.cut);
                    built_in.load(&mut self.flash, &table, &mut |e: &LogEvent<'_>| {
                        print_line(serial, boot_at, e, cut)
                    })
                };
                self.log(&LogEvent::Module(&arduino_settings.log_line(arduino::DEFAULT_PORT)));
                self.arduino = Some(Session::new(arduino::Server::new(arduino_settings.config())));
                let mqtt_settings = {
                    let (boot_at, serial, cut) = (self.boot_at, &mut self.serial, &mut self.cut);
                    MqttSettings::default().load(&mut self.flash, &table, &mut |e: &LogEvent<'_>| {
                        print_line(serial, boot_at, e, cut)
                    })
                };
                self.log(&LogEvent::Module(&mqtt_settings.log_line()));
                if let Some(line) = mqtt_settings.tls_log_line() {
                    self.log(&LogEvent::Module(&line));
                }
                // Only a device with a broker has the pull path (and reads its own image for it).
                self.pull = match mqtt_settings.broker {
                    Some(_) => {
                        // The image was just verified from this flash; a read that fails is a
                        // flash the boot would have failed on already.
                        let facts = ota_core::proto::mqtt_pull::RunningFacts::read(
                            &mut self.flash,
                            &table,
                            &booted,
                            self.config.mac,
                        );
                        facts.ok().and_then(|f| {
                            pull::PullService::new(
                                mqtt_settings,
                                f,
                                booted.image.desc.version(),
                                self.config.seed,
                            )
                        })
                    }
                    None => None,
                };
                self.log(&LogEvent::OtaListening { port: self.config.device_port });
                Power::Running { table: Box::new(table), booted, server }
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

    /// Milliseconds since this boot (the clock ArduinoOTA's timeouts run on).
    fn now_ms(&self) -> u64 {
        self.boot_at.elapsed().as_millis() as u64
    }

    /// Whether an ArduinoOTA update is under way (another update path must wait).
    pub fn arduino_busy(&self) -> bool {
        self.arduino.as_ref().is_some_and(|a| a.server.is_busy())
    }

    /// When the device next has something to do without input (an ArduinoOTA timer; the pull
    /// path's first connection, back-off, keep-alive or stall), if ever: how long the process
    /// may sleep when no socket and no command wakes it.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        let arduino = self.arduino.as_ref().and_then(|a| a.server.deadline());
        let ms = [arduino, self.pull_deadline_ms()].into_iter().flatten().min()?;
        Some(self.boot_at + std::time::Duration::from_millis(ms))
    }

    /// Whether ArduinoOTA has a timer that has run out (the transport then sends `Poll`).
    pub fn arduino_due(&self) -> bool {
        let deadline = self.arduino.as_ref().and_then(|a| a.server.deadline());
        deadline.is_some_and(|d| self.now_ms() >= d)
    }

    /// Something for ArduinoOTA: a datagram on its port, news of its back-connection, or time.
    /// `other_update_running`: an ESPHome session is writing, so no invitation is taken.
    pub fn arduino_input(&mut self, input: ArduinoInput<'_>, other_update_running: bool) -> ArduinoStep {
        let now = self.now_ms();
        let Power::Running { table, booted, .. } = &self.power else { return ArduinoStep::default() };
        let (table, running) = (table.as_ref().clone(), booted.partition);
        let Some(session) = self.arduino.as_mut() else { return ArduinoStep::default() };
        let target = Target { table: &table, running, config: self.config.ota };
        let mut out = ArduinoOut::default();
        let rng = &mut self.rng;
        session.with(&mut self.flash, &target, |server, sink| match input {
            ArduinoInput::Datagram { from, bytes } => {
                server.datagram(from, bytes, other_update_running, sink, &mut ArduinoRng(rng), &mut out)
            }
            ArduinoInput::Connected => server.connected(now),
            ArduinoInput::ConnectFailed => server.connect_failed(sink, &mut out),
            ArduinoInput::Data(bytes) => server.data(bytes, now, sink, &mut out),
            ArduinoInput::Closed => server.closed(sink, &mut out),
            ArduinoInput::Poll => server.poll(now, sink, &mut out),
        });
        let reboot = session.server.reboot_requested();
        let mut step = out.step;
        if let Some(loss) = self.flash.power_loss() {
            self.power_off();
            return ArduinoStep { power_lost: Some(loss), exchange_over: true, ..ArduinoStep::default() };
        }
        for e in &out.events {
            e.log(&mut |line: &LogEvent<'_>| self.log(line));
        }
        step.exchange_over = out.events.iter().any(ends_exchange);
        step.reboot = reboot && step.close;
        step
    }

    /// A new OTA connection: its session state, if the app serves OTA.
    pub fn accept(&mut self) -> Option<OtaSession> {
        if !self.serving() {
            return None;
        }
        let Power::Running { server, .. } = &self.power else { return None };
        let session = Session::new(Server::new(*server));
        self.log(&LogEvent::OtaClientConnected);
        Some(OtaSession(session))
    }

    /// Bytes from the client (`Some`), its disconnect (`None`), or a read timeout.
    pub fn session_input(&mut self, session: &mut OtaSession, input: SessionInput<'_>) -> SessionStep {
        let OtaSession(session) = session;
        let Power::Running { table, booted, .. } = &self.power else {
            return SessionStep::Close { reply: Vec::new(), reboot: false };
        };
        let (table, running) = (table.as_ref().clone(), booted.partition);
        let target = Target { table: &table, running, config: self.config.ota };
        let mut out = Collect::default();
        let rng = &mut self.rng;
        session.with(&mut self.flash, &target, |server, sink| match input {
            SessionInput::Data(bytes) => server.feed(bytes, sink, rng, &mut out),
            SessionInput::Closed => server.on_disconnect(false, sink, &mut out),
            SessionInput::TimedOut => server.on_disconnect(true, sink, &mut out),
        });
        let server = &session.server;
        if let Some(loss) = self.flash.power_loss() {
            self.power = Power::Off;
            return SessionStep::PowerLost(loss);
        }
        for line in out.events.iter().filter_map(Event::log_event) {
            self.log(&line);
        }
        if server.is_closed() {
            let reboot = server.reboot_requested();
            SessionStep::Close { reply: out.sent, reboot }
        } else {
            SessionStep::Continue(out.sent)
        }
    }

    /// After a completed update: log and restart into the new image.
    pub fn reboot_after_update(&mut self) {
        self.log(&LogEvent::OtaRebooting);
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
            s.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// `password` with a `'static` life for the sessions of a boot. Interned, so a device that
/// boots thousands of times keeps one copy per distinct password.
fn interned(password: &[u8]) -> &'static [u8] {
    static SEEN: Mutex<Vec<&'static [u8]>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = seen.iter().find(|known| **known == password) {
        return known;
    }
    let leaked: &'static [u8] = Box::leak(password.into());
    seen.push(leaked);
    leaked
}

/// What happened to ArduinoOTA's sockets, or that time passed.
#[derive(Clone, Copy, Debug)]
pub enum ArduinoInput<'a> {
    Datagram { from: SocketAddr, bytes: &'a [u8] },
    Connected,
    ConnectFailed,
    Data(&'a [u8]),
    Closed,
    Poll,
}

/// What the transport does for ArduinoOTA after one input, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ArduinoStep {
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
    /// Open the back-connection (then report `Connected` or `ConnectFailed`).
    pub connect: Option<SocketAddr>,
    /// Bytes for the back-connection.
    pub send: Vec<u8>,
    /// Close the back-connection after `send` (then report `Closed`).
    pub close: bool,
    /// The exchange ended (refused, failed or complete): its log lines are out.
    pub exchange_over: bool,
    /// Reboot into the new image once the connection is closed.
    pub reboot: bool,
    /// The power went during the step: drop everything without a word.
    pub power_lost: Option<PowerLoss>,
}

#[derive(Default)]
struct ArduinoOut {
    step: ArduinoStep,
    events: Vec<arduino::Event>,
}

impl arduino::Output for ArduinoOut {
    fn datagram(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.step.datagrams.push((to, bytes.to_vec()));
    }
    fn connect(&mut self, to: SocketAddr) {
        self.step.connect = Some(to);
    }
    fn send(&mut self, bytes: &[u8]) {
        self.step.send.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.step.close = true;
    }
    fn event(&mut self, event: arduino::Event) {
        self.events.push(event);
    }
}

struct ArduinoRng<'a>(&'a mut Rng);
impl arduino::NonceSource for ArduinoRng<'_> {
    fn fill(&mut self, buf: &mut [u8]) {
        NonceSource::fill(self.0, buf);
    }
}

/// Whether `event` ends an ArduinoOTA exchange (a refused invitation during a transfer does not).
fn ends_exchange(event: &arduino::Event) -> bool {
    use arduino::Event::*;
    !matches!(event, Busy | AuthRequested | Begin { .. } | Progress { .. } | Received { .. })
}

/// One ESPHome OTA connection's state: the protocol server and the update it is writing.
pub struct OtaSession(Session<Server<'static>>);

impl OtaSession {
    /// When the client's time may next run out: the handshake's limit from the accepted
    /// connection, then the data phase's from the last byte (ESPHome's rules decide, at that
    /// moment, through [`OtaSession::expired`]).
    pub fn deadline(
        &self,
        accepted: std::time::Instant,
        last_input: std::time::Instant,
    ) -> Option<std::time::Instant> {
        use ota_core::proto::esphome::{DATA_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS};
        let now = std::time::Instant::now();
        let handshake = accepted + std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
        let data = last_input + std::time::Duration::from_millis(DATA_TIMEOUT_MS);
        // A limit that has passed without expiring the session does not apply to it.
        [handshake, data].into_iter().filter(|&t| t > now).min()
    }

    /// Whether the client has had its time (ESPHome's rules: `esphome::Server::expired`).
    pub fn expired(&self, since_accept: std::time::Duration, since_input: std::time::Duration) -> bool {
        self.0.server.expired(since_accept.as_millis() as u64, since_input.as_millis() as u64)
    }
}

/// What the transport saw.
#[derive(Clone, Copy, Debug)]
pub enum SessionInput<'a> {
    Data(&'a [u8]),
    Closed,
    TimedOut,
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
            &ota_core::provision::Provision {
                ota_password: Some("hunter2"),
                protocol: 1,
                wifi: None,
                arduino: None,
                mqtt: None,
            },
        )
        .unwrap();
        let mut d = Device::new(config_with(b"built-in"), FileFlash::in_memory(image), Vec::new());
        d.power_on();
        assert!(serial(&d).contains("config: OTA password set (nvs), protocol 1 (nvs)"), "{}", serial(&d));
        let Power::Running { server, .. } = d.power() else { panic!("not running: {}", d.status()) };
        assert_eq!((server.password, server.version), (Some(&b"hunter2"[..]), 1));
        // Nothing provisioned: the values the device was started with.
        let mut d = Device::new(config_with(b"built-in"), FileFlash::in_memory(flash()), Vec::new());
        d.power_on();
        assert!(serial(&d).contains("config: OTA password set (built in), protocol 2 (built in)"));
        let Power::Running { server, .. } = d.power() else { panic!("not running: {}", d.status()) };
        assert_eq!(server.password, Some(&b"built-in"[..]));
    }

    fn config_with(password: &'static [u8]) -> DeviceConfig {
        DeviceConfig { password: Some(password), ..DeviceConfig::default() }
    }

    #[test]
    fn boots_and_reports_status() {
        let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(flash()), Vec::new());
        assert!(matches!(d.power(), Power::Off));
        assert!(d.accept().is_none(), "nothing serves OTA while off");
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
        d.arm_log_cut(Some(regex::Regex::new(r"client connected").unwrap()));
        assert!(d.accept().is_some());
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
