//! The ESP-IDF seed's update path as one agent: the device keeps an MQTT session to its broker,
//! a JSON trigger on the command topic starts an `esp_https_ota` pull of the URL it names, and
//! every step of the pull is published on the state topic (our schema, [`mqtt::status`]) and
//! logged. Two connections (broker, firmware server), both outputs of this state machine; the
//! adapter owns the sockets and the clock and lends the flash per call ([`crate::session`]).
//!
//! Rules taken from the seed (mqtt-https-pull.md §1): one update at a time (a trigger while one
//! runs is refused with a log line and a `failed`/`busy` status, the running pull goes on); a bad
//! trigger is a log line and no request; after a completed pull the device restarts, after a
//! failed one it keeps running its image. A trigger without a usable URL is refused with a log line
//! and a `failed`/`bad_trigger` status (the seed only logs it).

mod lines;
mod secure;
pub mod service;
pub mod settings;
pub use lines::{MqttLine, PullLine};
#[cfg(test)]
mod tests;

use crate::log::LogEvent;
use crate::proto::http_pull::{self, ConnectError, Endpoint};
use crate::proto::mqtt::client;
use crate::proto::mqtt::command::{self, Command, CommandError, MAX_URL};
use crate::proto::mqtt::packet::{QoS, Will};
use crate::proto::mqtt::status::{State, Status};
use crate::slot::SlotName;
use crate::update::UpdateSink;
use crate::url::Url;
use core::net::SocketAddr;

/// Progress is published every this many bytes when the length is not known.
pub const PROGRESS_STEP_UNSIZED: u64 = 64 * 1024;
/// A status message always fits this (the version and the error name are short).
const STATUS_MAX: usize = 192;

/// The agent's settings, lent per call.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    pub broker: SocketAddr,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub keep_alive_s: u16,
    pub command_topic: &'a str,
    pub state_topic: &'a str,
    /// How an `ota_trigger` pull runs; its `running_version` is also the status messages' `fw`.
    pub pull: http_pull::Config<'a>,
    /// How an `http_update` pull runs (the Arduino updater's flavour, with the device's facts).
    pub arduino_pull: http_pull::Config<'a>,
    /// The CA (DER) https servers must chain to; empty: https pulls fail.
    pub ca_der: &'a [u8],
    /// The device's clock for certificate dates; `None`: dates are not checked.
    pub clock_unix: Option<u64>,
}

pub use crate::running::RunningFacts;

/// `ESP.getSdkVersion()` of arduino-esp32 3.3 (ESP-IDF 5.5).
pub const SDK_VERSION: &str = "v5.5.1";
/// The keep-alive the device asks the broker for (ESP-IDF's MQTT client default).
pub const KEEP_ALIVE_S: u16 = 120;

/// The device's MQTT client id: `otahil_` and the last three bytes of its MAC (the seed's is
/// `domator_<device id>`).
pub fn client_id(mac: [u8; 6], buf: &mut [u8; 13]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[..7].copy_from_slice(b"otahil_");
    for (i, b) in mac[3..].iter().enumerate() {
        buf[7 + 2 * i] = HEX[(b >> 4) as usize];
        buf[8 + 2 * i] = HEX[(b & 15) as usize];
    }
    core::str::from_utf8(&buf[..]).unwrap_or("otahil")
}

impl<'a> Settings<'a> {
    /// The agent's settings from what NVS configured (`None`: no broker, the path is off).
    pub fn from_nvs(
        m: &'a settings::MqttSettings,
        client_id: &'a str,
        version: &'a str,
        facts: &RunningFacts,
    ) -> Option<Self> {
        let mut pull = http_pull::Config::esp_https_ota(version);
        pull.version_check = m.version_check;
        pull.timeout_ms = u64::from(m.timeout_s) * 1000;
        // ESP-IDF retries a silent body forever; three read timeouts in a row end it here.
        pull.stall_limit_ms = 3 * pull.timeout_ms;
        pull.resume = m.resume;
        let mut ap_mac = facts.mac;
        ap_mac[5] = ap_mac[5].wrapping_add(1);
        let device = http_pull::DeviceFacts {
            sta_mac: facts.mac,
            ap_mac,
            free_space: facts.free_space,
            sketch_size: facts.sketch_size,
            sketch_md5: Some(facts.sketch_md5),
            sketch_sha256: Some(facts.sketch_sha256),
            chip_size: facts.chip_size,
            sdk_version: SDK_VERSION,
            version,
        };
        Some(Settings {
            broker: m.broker?,
            client_id,
            username: None,
            password: None,
            keep_alive_s: KEEP_ALIVE_S,
            command_topic: m.command_topic.as_str(),
            state_topic: m.state_topic.as_str(),
            pull,
            arduino_pull: http_pull::Config::arduino(device, version),
            ca_der: m.ca_der(),
            clock_unix: m.clock_unix,
        })
    }

    fn pull_for(&self, library: Library) -> &http_pull::Config<'a> {
        match library {
            Library::EspHttpsOta => &self.pull,
            Library::ArduinoHttpUpdate => &self.arduino_pull,
        }
    }
}

/// Which library pulls: the trigger's type says.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Library {
    /// ESP-IDF's `esp_https_ota` (`ota_trigger`).
    #[default]
    EspHttpsOta,
    /// arduino-esp32's `HTTPUpdate` (`http_update`).
    ArduinoHttpUpdate,
}

/// Which of the agent's two connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Link {
    Broker,
    Server,
}

/// What the agent does to the world.
pub trait Output {
    fn connect_broker(&mut self, to: SocketAddr);
    fn connect_server(&mut self, to: Endpoint<'_>);
    fn send(&mut self, link: Link, bytes: &[u8]);
    /// Close the connection once what was sent is out.
    fn close(&mut self, link: Link);
    fn log(&mut self, line: &LogEvent<'_>);
}

pub struct Agent {
    mqtt: client::Client,
    pull: http_pull::Client,
    will: [u8; STATUS_MAX],
    will_len: usize,
    /// How far the pull under way has come, for its status messages.
    progress_mark: Progress,
    /// The library of the pull under way (or the last one).
    library: Library,
    /// TLS between the firmware server's connection and the pull.
    secure: secure::Secure,
    /// The first broker session since boot has come up (a download cut short by the restart
    /// is resumed then, once).
    booted: bool,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            mqtt: client::Client::default(),
            pull: http_pull::Client::default(),
            will: [0; STATUS_MAX],
            will_len: 0,
            progress_mark: Progress::default(),
            library: Library::EspHttpsOta,
            secure: secure::Secure::default(),
            booted: false,
        }
    }
}

/// The broker's side of the agent's output.
struct BrokerOut<'o, O: Output>(&'o mut O);

impl<O: Output> client::Output for BrokerOut<'_, O> {
    fn connect(&mut self, to: SocketAddr) {
        self.0.connect_broker(to);
    }
    fn send(&mut self, bytes: &[u8]) {
        self.0.send(Link::Broker, bytes);
    }
    fn close(&mut self) {
        self.0.close(Link::Broker);
    }
    fn event(&mut self, event: client::Event<'_>) {
        // Messages are handled by the agent (it needs the pull); the rest is logged here.
        match event {
            client::Event::Ready => {}
            client::Event::Lost { why, retry_in_ms } => {
                self.0.log(&LogEvent::Module(&MqttLine::Lost { why, retry_in_ms }))
            }
            client::Event::Dropped { len } => self.0.log(&LogEvent::Module(&MqttLine::Dropped { len })),
            // The pull asks for no streaming: a large message comes as `Dropped`.
            client::Event::Connecting { .. }
            | client::Event::Message { .. }
            | client::Event::Piece { .. }
            | client::Event::Published { .. } => {}
        }
    }
}

/// What one packet from the broker brought for the agent.
// The URL is held inline: no heap in `no_std`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy)]
enum Taken {
    Ready,
    Trigger {
        url: [u8; MAX_URL],
        len: usize,
        truncated: bool,
        library: Library,
    },
    /// An `ota_trigger` without a usable URL: refused before any request.
    BadTrigger,
}

/// Collects the MQTT client's events for the agent from one packet: a command topic's message
/// parsed on the spot (the payload lives in the decoder only during the call), acted on as soon
/// as the packet is decoded, before the next one.
struct Inbox<'o, 'b, O: Output> {
    out: BrokerOut<'o, O>,
    command_topic: &'b str,
    taken: Option<Taken>,
}

impl<O: Output> Inbox<'_, '_, O> {
    fn push(&mut self, t: Taken) {
        // One packet is one event at most (CONNACK/SUBACK or one PUBLISH).
        debug_assert!(self.taken.is_none(), "one event per packet");
        self.taken = Some(t);
    }
}

impl<O: Output> client::Output for Inbox<'_, '_, O> {
    fn connect(&mut self, to: SocketAddr) {
        self.out.connect(to);
    }
    fn send(&mut self, bytes: &[u8]) {
        self.out.send(bytes);
    }
    fn close(&mut self) {
        self.out.close();
    }
    fn event(&mut self, event: client::Event<'_>) {
        match event {
            client::Event::Ready => {
                self.out.0.log(&LogEvent::Module(&MqttLine::Ready { command_topic: self.command_topic }));
                self.push(Taken::Ready);
            }
            client::Event::Message { topic, payload, .. } => {
                if !crate::proto::mqtt::packet::topic_matches(self.command_topic, topic) {
                    return;
                }
                let mut buf = [0u8; MAX_URL];
                match command::parse(payload, &mut buf) {
                    Ok(Command::OtaTrigger { url, truncated }) => {
                        self.push(trigger(url, truncated, Library::EspHttpsOta));
                    }
                    Ok(Command::HttpUpdate { url, truncated }) => {
                        self.push(trigger(url, truncated, Library::ArduinoHttpUpdate));
                    }
                    Ok(Command::Other(kind)) => {
                        self.out.0.log(&LogEvent::Module(&MqttLine::CommandOther(kind)))
                    }
                    Err(why) => {
                        self.out.0.log(&LogEvent::Module(&MqttLine::CommandIgnored(why)));
                        if matches!(why, CommandError::MissingUrl | CommandError::BadUrl) {
                            self.push(Taken::BadTrigger);
                        }
                    }
                }
            }
            other => self.out.event(other),
        }
    }
}

fn trigger(url: &str, truncated: bool, library: Library) -> Taken {
    let len = url.len();
    let mut kept = [0u8; MAX_URL];
    kept[..len].copy_from_slice(url.as_bytes());
    Taken::Trigger { url: kept, len, truncated, library }
}

/// The pull's side of the agent's output: its events become log lines and status messages.
struct PullOut<'o, O: Output> {
    out: &'o mut O,
    secure: &'o mut secure::Secure,
    mqtt: &'o mut client::Client,
    settings: &'o Settings<'o>,
    now_ms: u64,
    progress_mark: &'o mut Progress,
}

/// The pull's progress as its status messages report it.
#[derive(Default, Clone, Copy)]
struct Progress {
    /// The last reported step: a quarter of a known length, or a multiple of the unsized step.
    mark: u64,
    /// Image bytes received so far, and the length the server announced.
    received: u64,
    total: Option<u64>,
}

impl<O: Output> PullOut<'_, O> {
    fn status(&mut self, state: State, bytes: u64, total: Option<u64>, error: Option<(&str, i32)>) {
        publish_status(self.mqtt, self.settings, self.now_ms, self.out, state, bytes, total, error);
    }
}

impl<O: Output> http_pull::Output for PullOut<'_, O> {
    fn connect(&mut self, to: Endpoint<'_>) {
        self.secure.connect(to, self.out);
    }
    fn send(&mut self, bytes: &[u8]) {
        self.secure.send(bytes, self.out);
    }
    fn close(&mut self) {
        self.secure.close(self.out);
    }
    fn event(&mut self, event: http_pull::Event<'_>) {
        use http_pull::Event as E;
        match event {
            E::Requesting { url, redirects } => {
                // The path only: hosts and ports differ from backend to backend, logs must not.
                let path = Url::parse(url).map(|u| u.target).unwrap_or("");
                self.out.log(&LogEvent::Module(&PullLine::Requesting { path, redirects }));
            }
            E::Status { code } => self.out.log(&LogEvent::Module(&PullLine::Status { code })),
            E::Redirected { .. } => {}
            E::ImageAccepted { version } => {
                self.out.log(&LogEvent::Module(&PullLine::ImageAccepted { version }))
            }
            E::Begin { size, slot } => {
                *self.progress_mark = Progress { mark: 0, received: 0, total: size.map(u64::from) };
                let slot = SlotName(crate::slot::BootIndex::Ota(slot));
                match size {
                    Some(size) => self.out.log(&LogEvent::OtaStarting { size, slot }),
                    None => self.out.log(&LogEvent::Module(&PullLine::StartingUnsized { slot })),
                }
                self.status(State::Downloading, 0, size.map(u64::from), None);
            }
            E::Progress { received, total } => {
                self.progress_mark.received = received;
                self.progress_mark.total = total;
                // The log's quarters stop before the end, as every path's do ("update complete"
                // follows); the status reaches the whole length, so a fleet sees 100 %.
                let mark = match total {
                    Some(t) => received.min(t) * 4 / t.max(1),
                    None => received / PROGRESS_STEP_UNSIZED,
                };
                if mark > self.progress_mark.mark {
                    self.progress_mark.mark = mark;
                    if total.is_some() && mark < 4 {
                        self.out.log(&LogEvent::OtaProgress { percent: (mark * 25) as u8 });
                    }
                    self.status(State::Downloading, received, total, None);
                }
            }
            E::Resumed { at, size, slot } => {
                let mark = match size {
                    Some(t) => u64::from(at) * 4 / u64::from(t.max(1)),
                    None => u64::from(at) / PROGRESS_STEP_UNSIZED,
                };
                *self.progress_mark = Progress { mark, received: u64::from(at), total: size.map(u64::from) };
                let slot = SlotName(crate::slot::BootIndex::Ota(slot));
                self.out.log(&LogEvent::Module(&PullLine::Resumed { at, size, slot }));
                self.status(State::Downloading, u64::from(at), size.map(u64::from), None);
            }
            E::RangeIgnored { status } => self.out.log(&LogEvent::Module(&PullLine::RangeIgnored { status })),
            E::ResumeNotSaved(e) => self.out.log(&LogEvent::Module(&PullLine::ResumeNotSaved(e))),
            E::NoUpdate => {
                self.out.log(&LogEvent::Module(&PullLine::NoUpdate));
                self.status(State::NoUpdate, 0, None, None);
            }
            E::Failed(e) => {
                self.out.log(&LogEvent::Module(&PullLine::Failed(e)));
                // Where it stopped: a fleet tells a cut-off download from a refused one.
                let Progress { received, total, .. } = *self.progress_mark;
                self.status(State::Failed, received, total, Some((e.name(), e.code())));
            }
            E::Complete(s) => {
                let slot = SlotName(crate::slot::BootIndex::Ota(s.slot));
                self.out.log(&LogEvent::OtaComplete { slot, seq: s.seq, state: s.state });
                // The whole image is written: an unsized download's length is what came.
                let Progress { received, total, .. } = *self.progress_mark;
                self.status(State::Done, received, Some(total.unwrap_or(received)), None);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn publish_status<O: Output>(
    mqtt: &mut client::Client,
    settings: &Settings<'_>,
    now_ms: u64,
    out: &mut O,
    state: State,
    bytes: u64,
    total: Option<u64>,
    error: Option<(&str, i32)>,
) {
    let status = Status { state, bytes, total, error, fw: settings.pull.running_version };
    let mut buf = [0u8; STATUS_MAX];
    let Ok(len) = status.encode(&mut buf) else { return };
    // Progress may be lost (QoS 0); the states a fleet acts on are acknowledged.
    let (qos, retain) = match state {
        State::Downloading => (QoS::AtMostOnce, false),
        State::Online => (QoS::AtLeastOnce, true),
        _ => (QoS::AtLeastOnce, false),
    };
    // Not connected: the status is lost, as the seed's `esp_mqtt_client_publish` loses it; the
    // pull does not wait for the broker.
    let _ = mqtt.publish(settings.state_topic, &buf[..len], qos, retain, now_ms, &mut BrokerOut(out));
}

fn mqtt_config<'s>(s: &Settings<'s>, will: &'s [u8]) -> client::Config<'s> {
    client::Config {
        broker: s.broker,
        client_id: s.client_id,
        username: s.username,
        password: s.password,
        keep_alive_s: s.keep_alive_s,
        command_topic: s.command_topic,
        will: Some(Will { topic: s.state_topic, message: will, qos: QoS::AtLeastOnce, retain: true }),
        stream_large: false,
    }
}

impl Agent {
    /// The library of the pull under way (or the last one).
    pub fn library(&self) -> Library {
        self.library
    }

    /// Whether a pull is under way.
    pub fn pulling(&self) -> bool {
        self.pull.is_busy()
    }

    /// A pull completed: once its connection is closed the device restarts.
    pub fn reboot_requested(&self) -> bool {
        self.pull.reboot_requested()
    }

    /// Whether the session with the broker is up.
    pub fn broker_ready(&self) -> bool {
        self.mqtt.is_ready()
    }

    /// When [`Agent::poll`] next has something to do.
    pub fn deadline(&self, s: &Settings<'_>) -> Option<u64> {
        let cfg = mqtt_config(s, &self.will[..self.will_len]);
        let pull = s.pull_for(self.library);
        #[cfg(feature = "tls")]
        let handshake = self.secure.handshake_deadline(pull.timeout_ms);
        #[cfg(not(feature = "tls"))]
        let handshake = None;
        [self.mqtt.deadline(&cfg), self.pull.deadline(pull), handshake].into_iter().flatten().min()
    }

    /// The app is up: connect to the broker.
    pub fn start<O: Output>(&mut self, s: &Settings<'_>, out: &mut O) {
        let will =
            Status { state: State::Offline, bytes: 0, total: None, error: None, fw: s.pull.running_version };
        self.will_len = will.encode(&mut self.will).unwrap_or(0);
        let Agent { mqtt, will, will_len, .. } = self;
        mqtt.start(&mqtt_config(s, &will[..*will_len]), &mut BrokerOut(out));
    }

    pub fn broker_connected<O: Output>(&mut self, s: &Settings<'_>, now_ms: u64, out: &mut O) {
        let Agent { mqtt, will, will_len, .. } = self;
        mqtt.connected(&mqtt_config(s, &will[..*will_len]), now_ms, &mut BrokerOut(out));
    }

    pub fn broker_connect_failed<O: Output>(&mut self, now_ms: u64, out: &mut O) {
        self.mqtt.connect_failed(now_ms, &mut BrokerOut(out));
    }

    /// The broker went away. A running pull goes on: its status is lost until the session is back.
    pub fn broker_closed<O: Output>(&mut self, now_ms: u64, out: &mut O) {
        self.mqtt.closed(now_ms, &mut BrokerOut(out));
    }

    /// Bytes from the broker: acknowledgements, pings, commands, each message acted on before
    /// the next is decoded, so how TCP grouped them changes nothing.
    /// `other_update`: another update path is writing (a trigger is then refused as busy).
    #[allow(clippy::too_many_arguments)]
    pub fn broker_data<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        mut bytes: &[u8],
        now_ms: u64,
        other_update: bool,
        sink: &mut S,
        out: &mut O,
    ) {
        while !bytes.is_empty() {
            let (used, taken) = {
                let Agent { mqtt, will, will_len, .. } = self;
                let mut inbox = Inbox { out: BrokerOut(out), command_topic: s.command_topic, taken: None };
                let used = mqtt.data_packet(&mqtt_config(s, &will[..*will_len]), bytes, now_ms, &mut inbox);
                (used, inbox.taken)
            };
            bytes = &bytes[used..];
            if let Some(t) = taken {
                self.act(s, t, now_ms, other_update, sink, out);
            }
        }
    }

    /// What one message asks for, done.
    fn act<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        taken: Taken,
        now_ms: u64,
        other_update: bool,
        sink: &mut S,
        out: &mut O,
    ) {
        match taken {
            Taken::Ready => {
                publish_status(&mut self.mqtt, s, now_ms, out, State::Online, 0, None, None);
                if !self.booted {
                    self.booted = true;
                    if !other_update {
                        self.resume_after_restart(s, now_ms, sink, out);
                    }
                }
            }
            Taken::Trigger { url, len, truncated, library } => {
                let url = core::str::from_utf8(&url[..len]).unwrap_or("");
                if other_update {
                    self.refuse_busy(s, now_ms, out);
                } else {
                    self.trigger(s, url, truncated, library, now_ms, sink, out);
                }
            }
            Taken::BadTrigger => {
                // ESP_ERR_INVALID_ARG: what `esp_https_ota` says of a config without a URL.
                let error = Some(("bad_trigger", 0x102));
                publish_status(&mut self.mqtt, s, now_ms, out, State::Failed, 0, None, error);
            }
        }
    }

    fn refuse_busy<O: Output>(&mut self, s: &Settings<'_>, now_ms: u64, out: &mut O) {
        out.log(&LogEvent::Module(&PullLine::Busy));
        publish_status(&mut self.mqtt, s, now_ms, out, State::Failed, 0, None, Some(("busy", -1)));
    }

    #[allow(clippy::too_many_arguments)]
    fn trigger<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        url: &str,
        truncated: bool,
        library: Library,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        if self.pull.is_busy() {
            self.refuse_busy(s, now_ms, out);
            return;
        }
        out.log(&LogEvent::Module(&PullLine::Triggered {
            truncated,
            arduino: library == Library::ArduinoHttpUpdate,
        }));
        // The same URL as a download cut short goes on where it stopped; another one makes
        // the bytes in the slot useless.
        let mut from = 0;
        if library == Library::EspHttpsOta && s.pull.resume {
            let mut buf = [0u8; MAX_URL];
            match sink.resume_record(&mut buf) {
                Some((recorded, at)) if recorded == url => from = at,
                Some(_) => {
                    let _ = sink.clear_resume_record();
                }
                None => {}
            }
        }
        self.begin_pull(s, url, from, library, now_ms, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_pull<O: Output>(
        &mut self,
        s: &Settings<'_>,
        url: &str,
        from: u32,
        library: Library,
        now_ms: u64,
        out: &mut O,
    ) {
        self.library = library;
        if from > 0 {
            let path = Url::parse(url).map(|u| u.target).unwrap_or("");
            out.log(&LogEvent::Module(&PullLine::Resuming { path, at: from }));
        }
        publish_status(&mut self.mqtt, s, now_ms, out, State::Started, 0, None, None);
        self.progress_mark = Progress::default();
        let Agent { mqtt, pull, progress_mark, secure, .. } = self;
        pull.start_at(url, from, &mut PullOut { out, secure, mqtt, settings: s, now_ms, progress_mark });
    }

    /// At the first broker session after boot: a download the restart cut short goes on
    /// (ESP-IDF's example resumes at boot the same way), if the device resumes at all.
    fn resume_after_restart<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        if !s.pull.resume || self.pull.is_busy() {
            return;
        }
        let mut buf = [0u8; MAX_URL];
        let Some((url, at)) = sink.resume_record(&mut buf) else { return };
        self.begin_pull(s, url, at, Library::EspHttpsOta, now_ms, out);
    }

    /// The firmware server's TCP connection is up (for https the handshake starts first).
    pub fn server_connected<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        #[cfg(feature = "tls")]
        {
            let trust = crate::tls::Trust { ca_der: s.ca_der, now_unix: s.clock_unix };
            match self.secure.tcp_connected(trust, now_ms, out) {
                Ok(true) => return,
                Ok(false) => {}
                Err(why) => {
                    // The pull client closes the connection.
                    self.server_connect_failed(s, ConnectError::Tls(why), now_ms, sink, out);
                    return;
                }
            }
        }
        #[cfg(not(feature = "tls"))]
        let _ = sink;
        self.pull_connected(s, now_ms, out);
    }

    fn pull_connected<O: Output>(&mut self, s: &Settings<'_>, now_ms: u64, out: &mut O) {
        let cfg = s.pull_for(self.library);
        let Agent { mqtt, pull, progress_mark, secure, .. } = self;
        pull.connected(cfg, now_ms, &mut PullOut { out, secure, mqtt, settings: s, now_ms, progress_mark });
    }

    pub fn server_connect_failed<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        why: ConnectError,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        let Agent { mqtt, pull, progress_mark, secure, .. } = self;
        pull.connect_failed(
            why,
            sink,
            &mut PullOut { out, secure, mqtt, settings: s, now_ms, progress_mark },
        );
    }

    pub fn server_data<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        bytes: &[u8],
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        #[cfg(feature = "tls")]
        if self.secure.active() {
            let found = self.secure.received(Some(bytes), out);
            self.through_tls(s, found, now_ms, sink, out);
            return;
        }
        self.pull_data(s, bytes, now_ms, sink, out);
    }

    fn pull_data<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        bytes: &[u8],
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        let cfg = s.pull_for(self.library);
        let Agent { mqtt, pull, progress_mark, secure, .. } = self;
        pull.data(
            cfg,
            bytes,
            now_ms,
            sink,
            &mut PullOut { out, secure, mqtt, settings: s, now_ms, progress_mark },
        );
    }

    /// What came through the TLS layer, handed to the pull client in order.
    #[cfg(feature = "tls")]
    fn through_tls<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        found: secure::ForPull,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        if let Some(why) = found.refused {
            self.server_connect_failed(s, ConnectError::Tls(why), now_ms, sink, out);
            return;
        }
        if found.connected {
            self.pull_connected(s, now_ms, out);
            // The request, queued piece by piece, goes out as one write.
            self.secure.flush(out);
        }
        if !found.plaintext.is_empty() {
            self.pull_data(s, &found.plaintext, now_ms, sink, out);
        }
        if found.ended {
            self.pull_closed(s, now_ms, sink, out);
        }
    }

    pub fn server_closed<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        #[cfg(feature = "tls")]
        if self.secure.active() {
            let found = self.secure.received(None, out);
            self.through_tls(s, found, now_ms, sink, out);
            return;
        }
        self.pull_closed(s, now_ms, sink, out);
    }

    fn pull_closed<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        let cfg = s.pull_for(self.library);
        let Agent { mqtt, pull, progress_mark, secure, .. } = self;
        pull.closed(cfg, sink, &mut PullOut { out, secure, mqtt, settings: s, now_ms, progress_mark });
    }

    /// Time passed: the broker's timers, the TLS handshake's and the pull's.
    pub fn poll<S: UpdateSink, O: Output>(
        &mut self,
        s: &Settings<'_>,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        #[cfg(feature = "tls")]
        if self.secure.handshake_deadline(s.pull_for(self.library).timeout_ms).is_some_and(|d| now_ms >= d) {
            self.server_connect_failed(s, ConnectError::Timeout, now_ms, sink, out);
        }
        let cfg = s.pull_for(self.library);
        let Agent { mqtt, pull, progress_mark, will, will_len, secure, .. } = self;
        mqtt.poll(&mqtt_config(s, &will[..*will_len]), now_ms, &mut BrokerOut(out));
        pull.poll(cfg, now_ms, sink, &mut PullOut { out, secure, mqtt, settings: s, now_ms, progress_mark });
    }

    /// Keys the randomness of the https handshakes (the chip: its RNG; the emulator: its seed).
    pub fn set_tls_key(&mut self, key: [u8; 32]) {
        self.secure.set_key(key);
    }

    /// The device goes down cleanly (a restart after an update): DISCONNECT, so no will.
    pub fn stop<O: Output>(&mut self, out: &mut O) {
        self.mqtt.stop(&mut BrokerOut(out));
    }
}

/// The pull agent writes through `esp_https_ota` (so `esp_ota_*`), or, for an `http_update`,
/// through Arduino's `Update` library.
impl crate::session::Protocol for Agent {
    fn writes(&self, app: crate::writer::OtaConfig) -> crate::writer::OtaConfig {
        match self.library() {
            Library::EspHttpsOta => app,
            Library::ArduinoHttpUpdate => crate::proto::arduino::library_writes(app),
        }
    }
}

/// The `err` names the pull agent publishes itself, before any pull: a trigger it cannot take,
/// one while a pull runs (a pull's own are [`crate::proto::http_pull::PullError::NAMES`]).
pub const AGENT_ERRORS: [&str; 2] = ["bad_trigger", "busy"];

pub mod script;
