//! The device's MQTT-triggered HTTP(S) pull (`ota_core::proto::mqtt_pull`) on the emulated
//! chip: its settings from NVS, its agent and update, and what the transport must do for it.

use super::{Device, Power, print_line};
use crate::flash::PowerLoss;
use ota_core::log::LogEvent;
use ota_core::proto::http_pull::{ConnectError, Endpoint};
use ota_core::proto::mqtt_pull::settings::MqttSettings;
use ota_core::proto::mqtt_pull::{Agent, Link, Output, RunningFacts, Settings};
use ota_core::session::{Session, Target};
use std::io::Write;
use std::net::SocketAddr;

/// A boot's pull service: what NVS configured and the agent.
pub(super) struct PullService {
    session: Session<Agent>,
    conf: PullConf,
    started: bool,
}

/// What the agent is lent on each call.
struct PullConf {
    settings: MqttSettings,
    client_id: String,
    version: String,
    facts: RunningFacts,
}

impl PullService {
    /// The service of a boot whose settings name a broker (`None`: the path is off).
    /// `seed` keys the https handshakes' randomness (the emulator's seed: runs repeat).
    pub(super) fn new(settings: MqttSettings, facts: RunningFacts, version: &str, seed: u64) -> Option<Self> {
        settings.broker?;
        let client_id = ota_core::proto::mqtt_pull::client_id(facts.mac, &mut [0; 13]).to_string();
        let mut agent = Agent::default();
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(b"tls-seed");
        agent.set_tls_key(key);
        Some(PullService {
            session: Session::new(agent),
            conf: PullConf { settings, client_id, version: version.to_string(), facts },
            started: false,
        })
    }
}

impl PullConf {
    fn settings(&self) -> Option<Settings<'_>> {
        Settings::from_nvs(&self.settings, &self.client_id, &self.version, &self.facts)
    }
}

/// What happened to the pull's connections, or that time passed.
#[derive(Clone, Copy, Debug)]
pub enum PullInput<'a> {
    BrokerConnected,
    BrokerConnectFailed,
    BrokerData(&'a [u8]),
    BrokerClosed,
    ServerConnected,
    ServerConnectFailed(ConnectError),
    ServerData(&'a [u8]),
    ServerClosed,
    Poll,
}

/// Where the firmware server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// What the transport does for the pull after one input, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PullStep {
    pub connect_broker: Option<SocketAddr>,
    pub connect_server: Option<ServerAddr>,
    pub to_broker: Vec<u8>,
    pub to_server: Vec<u8>,
    pub close_broker: bool,
    pub close_server: bool,
    /// The pull completed: restart into the new image (once the bytes above are out).
    pub reboot: bool,
    /// The power went during the step: drop everything without a word.
    pub power_lost: Option<PowerLoss>,
}

/// The step being built, and the serial port the agent's lines go to as they come.
struct Collect<'d, W: Write> {
    step: PullStep,
    serial: &'d mut W,
    boot_at: std::time::Instant,
    cut: &'d mut super::LogCut,
    /// Set once the flash lost power during the step: nothing is printed from then on.
    unpowered: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<W: Write> Output for Collect<'_, W> {
    fn connect_broker(&mut self, to: SocketAddr) {
        self.step.connect_broker = Some(to);
    }
    fn connect_server(&mut self, to: Endpoint<'_>) {
        self.step.connect_server = Some(ServerAddr { host: to.host.to_string(), port: to.port, tls: to.tls });
    }
    fn send(&mut self, link: Link, bytes: &[u8]) {
        match link {
            Link::Broker => self.step.to_broker.extend_from_slice(bytes),
            Link::Server => self.step.to_server.extend_from_slice(bytes),
        }
    }
    fn close(&mut self, link: Link) {
        match link {
            Link::Broker => self.step.close_broker = true,
            Link::Server => self.step.close_server = true,
        }
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        if !self.unpowered.load(std::sync::atomic::Ordering::Relaxed) {
            print_line(self.serial, self.boot_at, line, self.cut);
        }
    }
}

impl<W: Write> Device<W> {
    /// When the pull path has something to do without input, in ms since boot (0: its first
    /// connection is still to be made).
    pub(super) fn pull_deadline_ms(&self) -> Option<u64> {
        let p = self.pull.as_ref()?;
        if !p.started {
            return Some(0);
        }
        let s = p.conf.settings()?;
        p.session.server.deadline(&s)
    }

    /// Whether the pull path has something to do without input (its first connection, a
    /// back-off, a stalled download).
    pub fn pull_due(&self) -> bool {
        let Some(p) = &self.pull else { return false };
        if !p.started {
            return true;
        }
        let Some(s) = p.conf.settings() else { return false };
        p.session.server.deadline(&s).is_some_and(|d| self.now_ms() >= d)
    }

    /// Whether a pull is writing (another update path waits).
    pub fn pull_busy(&self) -> bool {
        self.pull.as_ref().is_some_and(|p| p.session.server.pulling())
    }

    /// Something for the pull path. `other_update`: an ESPHome session is writing (ArduinoOTA's
    /// is known here), so a trigger is refused as busy.
    pub fn pull_input(&mut self, input: PullInput<'_>, other_update: bool) -> PullStep {
        let other_update = other_update || self.arduino_busy();
        let now = self.now_ms();
        let Device { power, pull, flash, serial, boot_at, cut, config, .. } = self;
        let Power::Running { table, booted, .. } = power else { return PullStep::default() };
        let Some(service) = pull.as_mut() else { return PullStep::default() };
        let target = Target { table, running: booted.partition, config: config.ota };
        let unpowered = flash.unpowered_flag();
        let mut out = Collect { step: PullStep::default(), serial, boot_at: *boot_at, cut, unpowered };
        let first = !service.started;
        service.started = true;
        let Some(settings) = service.conf.settings() else { return PullStep::default() };
        let session = &mut service.session;
        session.with(flash, &target, |agent, sink| {
            if first {
                agent.start(&settings, &mut out);
            }
            match input {
                PullInput::BrokerConnected => agent.broker_connected(&settings, now, &mut out),
                PullInput::BrokerConnectFailed => agent.broker_connect_failed(now, &mut out),
                PullInput::BrokerData(bytes) => {
                    agent.broker_data(&settings, bytes, now, other_update, sink, &mut out)
                }
                PullInput::BrokerClosed => agent.broker_closed(now, &mut out),
                PullInput::ServerConnected => agent.server_connected(&settings, now, sink, &mut out),
                PullInput::ServerConnectFailed(why) => {
                    agent.server_connect_failed(&settings, why, now, sink, &mut out)
                }
                PullInput::ServerData(bytes) => agent.server_data(&settings, bytes, now, sink, &mut out),
                PullInput::ServerClosed => agent.server_closed(&settings, now, sink, &mut out),
                PullInput::Poll if first => {}
                PullInput::Poll => agent.poll(&settings, now, sink, &mut out),
            }
        });
        let reboot = session.server.reboot_requested();
        let mut step = out.step;
        let _ = self.serial.flush();
        if let Some(loss) = self.flash.power_loss() {
            self.power_off();
            return PullStep { power_lost: Some(loss), ..PullStep::default() };
        }
        step.reboot = reboot;
        step
    }
}
