//! Homie OTA as the device serves it: an MQTT session with the broker NVS names (the path is
//! off without one), the device's attributes published when it is up (`$homie`, `$name`,
//! `$fw/name`, `$fw/version`, `$fw/checksum`, `$implementation/ota/enabled`, `$state` with the
//! last will `lost`), and the firmware messages handed to the receiver ([`Ota`]) piece by piece.

use super::settings::HomieSettings;
use super::{BASE_TOPIC, CONVENTION, FIRMWARE_TOPIC, Facts, HomieLine, Ota, Output, STATUS_TOPIC, Status};
use crate::app_desc::AppDesc;
use crate::io::{Input, Remote};
use crate::log::{LogEvent, LogSink};
use crate::proto::mqtt::client::{self, Client, Event};
use crate::proto::mqtt::packet::{QoS, Will};
use crate::running::RunningFacts;
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::Session;
use crate::update::UpdateSink;
use core::net::SocketAddr;
use embedded_storage::nor_flash::NorFlash;

const BROKER: u8 = 0;
/// AsyncMqttClient's keep-alive.
const KEEP_ALIVE_S: u16 = 15;
/// The largest packet the session takes whole: acknowledgements and small messages. The
/// firmware message streams through, so the session needs no room for it.
const PACKET: usize = 1024;
/// `homie/` + a 32-character id + `/`.
const PREFIX_MAX: usize = BASE_TOPIC.len() + super::settings::MAX_ID_LEN + 1;
const TOPIC_MAX: usize = PREFIX_MAX + 40;

/// Homie's receiver writes through arduino-esp32's `Update` library.
impl crate::session::Protocol for Ota {
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
    fn new(prefix: &str, suffix: &str) -> Topic {
        let mut bytes = [0u8; TOPIC_MAX];
        let len = (prefix.len() + suffix.len()).min(TOPIC_MAX);
        bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
        bytes[prefix.len()..len].copy_from_slice(&suffix.as_bytes()[..len - prefix.len()]);
        Topic { bytes, len }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

pub struct Service {
    client: Client<PACKET>,
    session: Session<Ota>,
    settings: HomieSettings,
    running: AppDesc,
    /// `$fw/checksum`: the running image's MD5 in lowercase hex.
    running_md5: [u8; 32],
    prefix: Topic,
    /// `<prefix>$implementation/ota/firmware/+`.
    filter: Topic,
    /// `<prefix>$state`, the last will's topic.
    state: Topic,
}

/// The session's settings, borrowed from the service.
fn config<'s>(
    settings: &'s HomieSettings,
    broker: SocketAddr,
    filter: &'s Topic,
    state: &'s Topic,
) -> client::Config<'s> {
    client::Config {
        broker,
        client_id: settings.id.as_str(),
        username: None,
        password: None,
        keep_alive_s: KEEP_ALIVE_S,
        command_topic: filter.as_str(),
        will: Some(Will { topic: state.as_str(), message: b"lost", qos: QoS::AtLeastOnce, retain: true }),
        stream_large: true,
    }
}

/// Statuses the receiver asked for while the client held the bytes; published after.
#[derive(Default)]
struct Statuses {
    queue: [Option<Status>; 4],
}

impl Statuses {
    fn push(&mut self, s: Status) {
        match self.queue.iter_mut().find(|q| q.is_none()) {
            Some(free) => *free = Some(s),
            // Never more than three a piece; the last word wins if that changes.
            None => self.queue[3] = Some(s),
        }
    }
}

/// The client's requests go to the broker link; its events to the receiver and the log.
struct Handler<'a, 'c, S> {
    io: &'a mut PathIo<'c>,
    ota: &'a mut Ota,
    sink: &'a mut S,
    facts: Facts<'a>,
    prefix_len: usize,
    statuses: &'a mut Statuses,
    ready: bool,
}

struct Report<'a, 'c> {
    io: &'a mut PathIo<'c>,
    statuses: &'a mut Statuses,
}

impl Output for Report<'_, '_> {
    fn status(&mut self, status: Status) {
        self.statuses.push(status);
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        self.io.log(line);
    }
}

impl<S: UpdateSink> client::Output for Handler<'_, '_, S> {
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
        let mut report = Report { io: &mut *self.io, statuses: &mut *self.statuses };
        match event {
            Event::Ready => self.ready = true,
            Event::Message { topic, payload, .. } => {
                if let Some(md5) = firmware_level(topic, self.prefix_len) {
                    let total = payload.len() as u32;
                    self.ota.piece(md5, 0, total, payload, &self.facts, self.sink, &mut report);
                }
            }
            Event::Piece { topic, offset, total, piece, .. } => {
                if let Some(md5) = firmware_level(topic, self.prefix_len) {
                    self.ota.piece(md5, offset, total, piece, &self.facts, self.sink, &mut report);
                }
            }
            Event::Lost { why, retry_in_ms } => {
                self.ota.interrupted(self.sink, &mut report);
                report.io.log(&LogEvent::Module(&HomieLine::Lost { why, retry_in_ms }));
            }
            Event::Connecting { .. } | Event::Dropped { .. } | Event::Published { .. } => {}
        }
    }
}

/// The `<md5>` level of a firmware topic under the device's prefix (`None`: another topic).
fn firmware_level(topic: &str, prefix_len: usize) -> Option<&str> {
    topic.get(prefix_len..)?.strip_prefix(FIRMWARE_TOPIC)
}

/// Publishes through the client outside a packet's handling.
struct Publish<'a, 'c>(&'a mut PathIo<'c>);

impl client::Output for Publish<'_, '_> {
    fn connect(&mut self, to: SocketAddr) {
        self.0.connect(BROKER, Remote::Addr(to));
    }
    fn send(&mut self, bytes: &[u8]) {
        self.0.send(BROKER, bytes);
    }
    fn close(&mut self) {
        self.0.close(BROKER);
    }
    fn event(&mut self, _: Event<'_>) {}
}

impl Service {
    /// Runs `f` with the client, its settings and an output that feeds the receiver; then
    /// publishes what the receiver and the session asked for.
    fn call<F: NorFlash>(
        &mut self,
        cx: &mut Cx<'_, F>,
        f: impl FnOnce(
            &mut Client<PACKET>,
            &client::Config<'_>,
            &mut Handler<'_, '_, crate::update::FlashSink<'_, F>>,
        ),
    ) {
        let Some(broker) = self.settings.broker else { return };
        let Service { client, session, settings, running_md5, prefix, filter, state, .. } = self;
        let cfg = config(settings, broker, filter, state);
        let mut statuses = Statuses::default();
        let running_md5 = core::str::from_utf8(running_md5).unwrap_or("");
        let facts = Facts { ota_enabled: settings.ota_enabled, running_md5, others_busy: cx.others_busy };
        let ready = {
            let Cx { flash, target, io, .. } = cx;
            session.with(*flash, target, |ota, sink| {
                let mut out = Handler {
                    io,
                    ota,
                    sink,
                    facts,
                    prefix_len: prefix.len,
                    statuses: &mut statuses,
                    ready: false,
                };
                f(client, &cfg, &mut out);
                out.ready
            })
        };
        let now = cx.now_ms;
        if ready {
            self.announce(now, &mut Publish(&mut cx.io));
            cx.io.log(&LogEvent::Module(&HomieLine::Ready { id: self.settings.id.as_str() }));
        }
        let out = &mut Publish(&mut cx.io);
        let mut over = false;
        for status in statuses.queue.into_iter().flatten() {
            let mut text = [0u8; 48];
            let text = fmt_into(&mut text, status);
            let topic = Topic::new(self.prefix.as_str(), STATUS_TOPIC);
            // QoS 0 and retained, as Homie publishes it; a status lost with the connection is
            // what Homie's is too.
            let _ = self.client.publish(topic.as_str(), text, QoS::AtMostOnce, true, now, out);
            over |= status.is_final();
        }
        if over {
            // The message's handling is over: its log lines are out.
            cx.io.exchange_over();
        }
    }

    /// The device's attributes, once the session is up.
    fn announce(&mut self, now: u64, out: &mut Publish<'_, '_>) {
        let md5 = core::str::from_utf8(&self.running_md5).unwrap_or("");
        let enabled = if self.settings.ota_enabled { "true" } else { "false" };
        let attributes: [(&str, &str); 8] = [
            ("$homie", CONVENTION),
            ("$name", self.settings.id.as_str()),
            ("$fw/name", self.running.project_name()),
            ("$fw/version", self.running.version()),
            ("$fw/checksum", md5),
            ("$implementation", "esp32"),
            ("$implementation/ota/enabled", enabled),
            ("$state", "ready"),
        ];
        for (suffix, value) in attributes {
            let topic = Topic::new(self.prefix.as_str(), suffix);
            let _ = self.client.publish(topic.as_str(), value.as_bytes(), QoS::AtLeastOnce, true, now, out);
        }
    }
}

/// `status` as text in `buf`.
fn fmt_into(buf: &mut [u8; 48], status: Status) -> &[u8] {
    struct W<'b> {
        buf: &'b mut [u8; 48],
        len: usize,
    }
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut w = W { buf, len: 0 };
    let _ = core::fmt::write(&mut w, format_args!("{status}"));
    let len = w.len;
    &buf[..len]
}

impl<F: NorFlash> PathService<F> for Service {
    fn boot(b: &mut Boot<'_, F>) -> Option<Self> {
        let log = &mut *b.log;
        let settings =
            HomieSettings::new(b.built_in.mac).load(b.flash, b.table, &mut |e: &LogEvent<'_>| log.log(e));
        b.log.log(&LogEvent::Module(&settings.log_line()));
        settings.broker?;
        // The image was just verified from this flash; a read that fails is a flash the boot
        // would have failed on already.
        let facts = RunningFacts::read(b.flash, b.table, b.booted, b.built_in.mac).ok()?;
        let mut running_md5 = [0u8; 32];
        crate::hex::encode_lower(&facts.sketch_md5, &mut running_md5);
        let prefix = Topic::new(BASE_TOPIC, settings.id.as_str());
        let prefix = Topic::new(prefix.as_str(), "/");
        let filter = Topic::new(prefix.as_str(), FIRMWARE_TOPIC);
        let filter = Topic::new(filter.as_str(), "+");
        let state = Topic::new(prefix.as_str(), "$state");
        Some(Service {
            client: Client::default(),
            session: Session::new(Ota::default()),
            settings,
            running: b.booted.image.desc,
            running_md5,
            prefix,
            filter,
            state,
        })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        self.call(cx, |client, cfg, out| client.start(cfg, out));
    }

    fn input(&mut self, input: Input<'_>, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        match input {
            Input::Connected(_) => self.call(cx, |client, cfg, out| client.connected(cfg, now, out)),
            Input::ConnectFailed(..) => self.call(cx, |client, _, out| client.connect_failed(now, out)),
            Input::Closed(_) => {
                cx.io.close(BROKER);
                self.call(cx, |client, _, out| client.closed(now, out));
            }
            Input::Data(_, mut bytes) => {
                // One packet (or one piece of a large one) at a time: its statuses go out
                // before the next is read.
                while !bytes.is_empty() {
                    let mut used = bytes.len();
                    self.call(cx, |client, cfg, out| used = client.data_packet(cfg, bytes, now, out));
                    bytes = &bytes[used.max(1).min(bytes.len())..];
                }
            }
            Input::Datagram { .. } => {}
        }
    }

    fn poll(&mut self, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        self.call(cx, |client, cfg, out| client.poll(cfg, now, out));
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        let broker = self.settings.broker?;
        self.client.deadline(&config(&self.settings, broker, &self.filter, &self.state))
    }

    fn busy(&self) -> bool {
        self.session.server.writing()
    }

    fn reboot_requested(&self) -> bool {
        self.session.server.reboot_requested()
    }
}
