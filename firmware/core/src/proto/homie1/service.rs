//! Homie 1.x as the device serves it. Normal mode: an MQTT session with the broker NVS names
//! (the path is off without one), `$online`/`$fwname`/`$fwversion` published, `$ota` heard
//! when OTA is enabled; an offer of another version is flagged in NVS and the device restarts.
//! OTA mode (the flag found at boot): no MQTT, one pull from the OTA server with the Arduino
//! updater, then the flag cleared and a restart, whatever the pull gave.

use super::settings::{Homie1Settings, KEY_HOMIE1_FLAG};
use super::{BASE_TOPIC, Homie1Line, OTA_TOPIC, Offer, Version, offer, version_header};
use crate::app_desc::AppDesc;
use crate::io::{ConnectFailure, Input, Remote};
use crate::log::{LogEvent, LogSink};
use crate::proto::http_pull::{self, ConnectError, Endpoint};
use crate::proto::mqtt::client::{self, Client, Event};
use crate::proto::mqtt::packet::{QoS, Will};
use crate::running::RunningFacts;
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::{Protocol, Session};
use core::net::SocketAddr;
use embedded_storage::nor_flash::NorFlash;

const BROKER: u8 = 0;
const SERVER: u8 = 1;
/// AsyncMqttClient's keep-alive.
const KEEP_ALIVE_S: u16 = 15;
/// The session's packets: acknowledgements and `$ota` offers of at most a few dozen bytes.
const PACKET: usize = 256;
/// `devices/` + a 32-character id + `/$fwversion`.
const TOPIC_MAX: usize = BASE_TOPIC.len() + crate::proto::homie::settings::MAX_ID_LEN + 16;

/// The pull writes through arduino-esp32's `Update` library (`HTTPUpdate`).
#[derive(Default)]
pub struct Pull(pub http_pull::Client);

impl Protocol for Pull {
    fn writes(&self, app: crate::writer::OtaConfig) -> crate::writer::OtaConfig {
        crate::proto::arduino::library_writes(app)
    }
}

/// A topic under the device's prefix, in a fixed buffer.
#[derive(Clone, Copy)]
struct Topic {
    bytes: [u8; TOPIC_MAX],
    len: usize,
}

impl Topic {
    fn new(id: &str, suffix: &str) -> Topic {
        let mut bytes = [0u8; TOPIC_MAX];
        let mut len = 0;
        for part in [BASE_TOPIC, id, "/", suffix] {
            let n = part.len().min(TOPIC_MAX - len);
            bytes[len..len + n].copy_from_slice(&part.as_bytes()[..n]);
            len += n;
        }
        Topic { bytes, len }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Normal,
    /// Pulling `target`; `done` once the pull ended.
    Ota {
        target: Version,
        done: bool,
    },
}

/// What the NVS flag must become after a call (the flash is the session's during it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FlagChange {
    Store(Version),
    Clear,
}

pub struct Service {
    settings: Homie1Settings,
    running: AppDesc,
    facts: RunningFacts,
    mode: Mode,
    client: Client<PACKET>,
    session: Session<Pull>,
    /// `devices/<id>/$ota` (empty with OTA off: nothing is subscribed), `…/$online`.
    ota_topic: Topic,
    online: Topic,
    /// `id=name=have=want` for the pull's `x-ESP32-version`.
    header: [u8; 96],
    header_len: usize,
    /// The pull's last quarter logged.
    quarter: u8,
    reboot: bool,
}

/// The MQTT client's requests go to the broker link; what it hears is kept for after the call.
struct MqttOut<'a, 'c> {
    io: &'a mut PathIo<'c>,
    ready: bool,
    offered: Option<Offer>,
    running: &'a str,
    ota_topic: &'a str,
}

impl client::Output for MqttOut<'_, '_> {
    fn connect(&mut self, to: SocketAddr) {
        self.io.connect(BROKER, Remote::Addr(to));
    }
    fn send(&mut self, bytes: &[u8]) {
        self.io.send(BROKER, bytes);
    }
    fn close(&mut self) {
        self.io.close(BROKER);
    }
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Ready => self.ready = true,
            Event::Message { topic, payload, .. } if topic == self.ota_topic => {
                self.offered = Some(offer(payload, self.running));
            }
            Event::Lost { why, retry_in_ms } => {
                self.io.log(&LogEvent::Module(&Homie1Line::Lost { why, retry_in_ms }))
            }
            _ => {}
        }
    }
}

/// The pull's requests go to the server link; its end is kept for after the call.
struct PullOut<'a, 'c> {
    io: &'a mut PathIo<'c>,
    ended: bool,
    /// The last quarter of the image logged.
    quarter: &'a mut u8,
}

impl http_pull::Output for PullOut<'_, '_> {
    fn connect(&mut self, to: Endpoint<'_>) {
        self.io.connect(SERVER, Remote::Host { host: to.host, port: to.port });
    }
    fn send(&mut self, bytes: &[u8]) {
        self.io.send(SERVER, bytes);
    }
    fn close(&mut self) {
        self.io.close(SERVER);
    }
    fn event(&mut self, event: http_pull::Event<'_>) {
        use http_pull::Event as E;
        match event {
            E::Begin { size, slot } => {
                let slot = crate::slot::SlotName(crate::slot::BootIndex::Ota(slot));
                if let Some(size) = size {
                    self.io.log(&LogEvent::OtaStarting { size, slot });
                }
            }
            E::Progress { received, total: Some(total) } if received < total => {
                let quarter = (received * 4 / total.max(1)) as u8;
                if quarter > *self.quarter {
                    *self.quarter = quarter;
                    self.io.log(&LogEvent::OtaProgress { percent: quarter * 25 });
                }
            }
            E::NoUpdate => {
                self.io.log(&LogEvent::Module(&Homie1Line::NoUpdates));
                self.ended = true;
            }
            E::Failed(e) => {
                self.io.log(&LogEvent::Module(&Homie1Line::Failed(e)));
                self.ended = true;
            }
            E::Complete(switched) => {
                self.io.log(&LogEvent::OtaComplete {
                    slot: crate::slot::SlotName(crate::slot::BootIndex::Ota(switched.slot)),
                    seq: switched.seq,
                    state: switched.state,
                });
                self.io.log(&LogEvent::Module(&Homie1Line::Success));
                self.ended = true;
            }
            _ => {}
        }
    }
}

/// The MQTT session's settings, borrowed from the service's fields.
fn mqtt_config<'s>(
    settings: &'s Homie1Settings,
    ota_topic: &'s Topic,
    online: &'s Topic,
) -> Option<client::Config<'s>> {
    Some(client::Config {
        broker: settings.broker?,
        client_id: settings.id.as_str(),
        username: None,
        password: None,
        keep_alive_s: KEEP_ALIVE_S,
        command_topic: if settings.ota_enabled { ota_topic.as_str() } else { "" },
        will: Some(Will { topic: online.as_str(), message: b"false", qos: QoS::AtLeastOnce, retain: true }),
        stream_large: false,
    })
}

/// The Arduino updater's settings for the OTA-mode pull.
fn pull_config<'s>(f: &RunningFacts, running: &'s AppDesc, header: &'s [u8]) -> http_pull::Config<'s> {
    let mut ap_mac = f.mac;
    ap_mac[5] = ap_mac[5].wrapping_add(1);
    let facts = http_pull::DeviceFacts {
        sta_mac: f.mac,
        ap_mac,
        free_space: f.free_space,
        sketch_size: f.sketch_size,
        sketch_md5: Some(f.sketch_md5),
        sketch_sha256: Some(f.sketch_sha256),
        chip_size: f.chip_size,
        sdk_version: crate::proto::mqtt_pull::SDK_VERSION,
        version: core::str::from_utf8(header).unwrap_or(""),
    };
    http_pull::Config::arduino(facts, running.version())
}

impl Service {
    /// Runs `f` with the MQTT client and its settings, then acts on what it heard.
    fn mqtt<F: NorFlash>(
        &mut self,
        cx: &mut Cx<'_, F>,
        f: impl FnOnce(&mut Client<PACKET>, &client::Config<'_>, &mut MqttOut<'_, '_>),
    ) {
        let (ready, offered) = {
            let Service { settings, running, client, ota_topic, online, .. } = self;
            let Some(cfg) = mqtt_config(settings, ota_topic, online) else { return };
            let mut out = MqttOut {
                io: &mut cx.io,
                ready: false,
                offered: None,
                running: running.version(),
                ota_topic: ota_topic.as_str(),
            };
            f(client, &cfg, &mut out);
            (out.ready, out.offered)
        };
        if ready {
            self.announce(cx);
        }
        match offered {
            None | Some(Offer::Same) => {}
            Some(Offer::TooLong) => cx.io.log(&LogEvent::Module(&Homie1Line::TooLong)),
            Some(Offer::Update(version)) if cx.others_busy => {
                cx.io.log(&LogEvent::Module(&Homie1Line::Busy { version: version.as_str() }))
            }
            Some(Offer::Update(version)) if !self.reboot => {
                cx.io.log(&LogEvent::Module(&Homie1Line::Available { version: version.as_str() }));
                self.change_flag(FlagChange::Store(version), cx);
            }
            Some(Offer::Update(_)) => {}
        }
    }

    /// `$online`, `$fwname` and `$fwversion`, retained, once the session is up.
    fn announce<F: NorFlash>(&mut self, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        let Service { settings, running, client, .. } = self;
        let id = settings.id;
        let attributes: [(&str, &str); 3] =
            [("$online", "true"), ("$fwname", running.project_name()), ("$fwversion", running.version())];
        let mut out = MqttOut { io: &mut cx.io, ready: false, offered: None, running: "", ota_topic: "" };
        for (suffix, value) in attributes {
            let topic = Topic::new(id.as_str(), suffix);
            let _ = client.publish(topic.as_str(), value.as_bytes(), QoS::AtLeastOnce, true, now, &mut out);
        }
        cx.io.log(&LogEvent::Module(&Homie1Line::Ready { id: id.as_str() }));
    }

    /// Stores or clears the OTA-mode flag, then restarts (into OTA mode, or back to normal).
    fn change_flag<F: NorFlash>(&mut self, change: FlagChange, cx: &mut Cx<'_, F>) {
        let Some(part) = cx.target.table.nvs().copied() else {
            let e = crate::nvs::StoreError::NoPartition;
            cx.io.log(&LogEvent::Module(&Homie1Line::FlagNotStored(e)));
            return;
        };
        let ns = crate::settings::NAMESPACE;
        match change {
            FlagChange::Store(version) => {
                match crate::nvs::set_str(cx.flash, &part, ns, KEY_HOMIE1_FLAG, version.as_str()) {
                    Ok(()) => {
                        cx.io.log(&LogEvent::Module(&Homie1Line::RebootingIntoOta));
                        self.reboot = true;
                    }
                    Err(e) => cx.io.log(&LogEvent::Module(&Homie1Line::FlagNotStored(e))),
                }
            }
            FlagChange::Clear => {
                if let Err(e) = crate::nvs::erase(cx.flash, &part, ns, KEY_HOMIE1_FLAG) {
                    cx.io.log(&LogEvent::Module(&Homie1Line::FlagNotCleared(e)));
                }
                cx.io.log(&LogEvent::Module(&Homie1Line::RebootingIntoNormal));
                self.reboot = true;
            }
        }
    }

    /// Runs `f` with the pull and its settings (the flash lent as the update's sink), then
    /// ends OTA mode if the pull ended.
    fn pull<F: NorFlash>(
        &mut self,
        cx: &mut Cx<'_, F>,
        f: impl FnOnce(
            &mut http_pull::Client,
            &http_pull::Config<'_>,
            &mut crate::update::FlashSink<'_, F>,
            &mut PullOut<'_, '_>,
        ),
    ) {
        let Mode::Ota { done: false, .. } = self.mode else { return };
        let ended = {
            let Service { session, facts, running, header, header_len, quarter, .. } = self;
            let cfg = pull_config(facts, running, &header[..*header_len]);
            let Cx { flash, target, io, .. } = cx;
            let mut ended = false;
            session.with(*flash, target, |pull, sink| {
                let mut out = PullOut { io, ended: false, quarter };
                f(&mut pull.0, &cfg, sink, &mut out);
                ended = out.ended;
            });
            ended
        };
        if ended {
            if let Mode::Ota { done, .. } = &mut self.mode {
                *done = true;
            }
            self.change_flag(FlagChange::Clear, cx);
        }
    }
}

impl<F: NorFlash> PathService<F> for Service {
    fn boot(b: &mut Boot<'_, F>) -> Option<Self> {
        let log = &mut *b.log;
        let settings =
            Homie1Settings::load(b.flash, b.table, b.built_in.mac, &mut |e: &LogEvent<'_>| log.log(e));
        b.log.log(&LogEvent::Module(&settings.log_line()));
        settings.broker?;
        let facts = RunningFacts::read(b.flash, b.table, b.booted, b.built_in.mac).ok()?;
        let running = b.booted.image.desc;
        let id = settings.id;
        let mut header = [0u8; 96];
        let mut header_len = 0;
        let mode = match settings.flag {
            Some(target) => {
                b.log.log(&LogEvent::Module(&Homie1Line::OtaMode { target: target.as_str() }));
                header_len = version_header(
                    &mut header,
                    id.as_str(),
                    running.project_name(),
                    running.version(),
                    target.as_str(),
                )
                .len();
                Mode::Ota { target, done: false }
            }
            None => Mode::Normal,
        };
        Some(Service {
            settings,
            running,
            facts,
            mode,
            client: Client::default(),
            session: Session::new(Pull(http_pull::Client::default())),
            ota_topic: Topic::new(id.as_str(), OTA_TOPIC),
            online: Topic::new(id.as_str(), "$online"),
            header,
            header_len,
            quarter: 0,
            reboot: false,
        })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        match self.mode {
            Mode::Normal => self.mqtt(cx, |client, cfg, out| client.start(cfg, out)),
            Mode::Ota { .. } => {
                let url = self.settings.url();
                let mut buf = [0u8; super::settings::MAX_URL_LEN];
                buf[..url.len()].copy_from_slice(url.as_bytes());
                let len = url.len();
                self.pull(cx, |pull, _, _, out| {
                    pull.start(core::str::from_utf8(&buf[..len]).unwrap_or(""), out);
                });
            }
        }
    }

    fn input(&mut self, input: Input<'_>, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        match input {
            Input::Connected(l) if l.local == BROKER => {
                self.mqtt(cx, |c, cfg, out| c.connected(cfg, now, out))
            }
            Input::ConnectFailed(l, _) if l.local == BROKER => {
                self.mqtt(cx, |c, _, out| c.connect_failed(now, out))
            }
            Input::Data(l, bytes) if l.local == BROKER => {
                self.mqtt(cx, |c, cfg, out| c.data(cfg, bytes, now, out))
            }
            Input::Closed(l) if l.local == BROKER => {
                cx.io.close(BROKER);
                self.mqtt(cx, |c, _, out| c.closed(now, out));
            }
            Input::Connected(_) => self.pull(cx, |p, cfg, _, out| p.connected(cfg, now, out)),
            Input::ConnectFailed(_, why) => {
                let why = match why {
                    ConnectFailure::Dns => ConnectError::Dns,
                    ConnectFailure::Refused => ConnectError::Refused,
                    ConnectFailure::Timeout => ConnectError::Timeout,
                };
                self.pull(cx, |p, _, sink, out| p.connect_failed(why, sink, out));
            }
            Input::Data(_, bytes) => self.pull(cx, |p, cfg, sink, out| p.data(cfg, bytes, now, sink, out)),
            Input::Closed(_) => {
                cx.io.close(SERVER);
                self.pull(cx, |p, cfg, sink, out| p.closed(cfg, sink, out));
            }
            Input::Datagram { .. } => {}
        }
    }

    fn poll(&mut self, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        match self.mode {
            Mode::Normal => self.mqtt(cx, |c, cfg, out| c.poll(cfg, now, out)),
            Mode::Ota { .. } => self.pull(cx, |p, cfg, sink, out| p.poll(cfg, now, sink, out)),
        }
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        match self.mode {
            Mode::Normal => {
                self.client.deadline(&mqtt_config(&self.settings, &self.ota_topic, &self.online)?)
            }
            Mode::Ota { done: false, .. } => self.session.server.0.deadline(&pull_config(
                &self.facts,
                &self.running,
                &self.header[..self.header_len],
            )),
            Mode::Ota { done: true, .. } => None,
        }
    }

    /// OTA mode is one pull: nothing else updates meanwhile.
    fn busy(&self) -> bool {
        matches!(self.mode, Mode::Ota { done: false, .. })
    }

    fn reboot_requested(&self) -> bool {
        self.reboot
    }

    /// Homie says why it restarts: into OTA mode, or back into normal mode.
    fn reboot_announced(&self) -> bool {
        true
    }
}
