//! The agent between a scripted broker and a scripted firmware server, writing a RAM flash
//! through the same session type the emulator and the chip use.

use super::*;
use crate::flash::ram::{Op, RamFlash};
use crate::image_builder::{ImageSpec, build};
use crate::log::LogLine;
use crate::otadata::{OtaEntry, OtaState};
use crate::partition::PartitionTable;
use crate::session::{Session, Target};
use crate::testutil::esphome_4mb_table;
use crate::writer::OtaConfig;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

fn image(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    build(&spec, &mut v).unwrap();
    v
}

#[derive(Default)]
struct World {
    broker_connects: usize,
    servers: Vec<String>,
    to_broker: Vec<u8>,
    to_server: Vec<u8>,
    closed: Vec<Link>,
    log: Vec<String>,
}

impl Output for World {
    fn connect_broker(&mut self, _to: SocketAddr) {
        self.broker_connects += 1;
    }
    fn connect_server(&mut self, to: Endpoint<'_>) {
        self.servers.push(format!("{}:{}{}", to.host, to.port, if to.tls { " tls" } else { "" }));
    }
    fn send(&mut self, link: Link, bytes: &[u8]) {
        match link {
            Link::Broker => self.to_broker.extend_from_slice(bytes),
            Link::Server => self.to_server.extend_from_slice(bytes),
        }
    }
    fn close(&mut self, link: Link) {
        self.closed.push(link);
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        self.log.push(LogLine { ms: 0, event: line }.to_string());
    }
}

impl World {
    /// The status messages published so far (JSON payloads on the state topic), then forgotten.
    fn statuses(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        let mut d = crate::proto::mqtt::packet::Decoder::<4096>::default();
        let bytes = core::mem::take(&mut self.to_broker);
        let mut rest = &bytes[..];
        // The device's packets, read with the broker-side view of the same framing.
        while !rest.is_empty() {
            let header = rest[0];
            let (len, used) = remaining_length(&rest[1..]);
            let packet = &rest[1 + used..1 + used + len];
            if header >> 4 == 3 {
                let topic_len = u16::from_be_bytes([packet[0], packet[1]]) as usize;
                let topic = core::str::from_utf8(&packet[2..2 + topic_len]).unwrap();
                let qos = (header >> 1) & 3;
                let body = &packet[2 + topic_len + if qos > 0 { 2 } else { 0 }..];
                assert_eq!(topic, "/switch/state/root");
                found.push(String::from_utf8(body.to_vec()).unwrap());
            }
            rest = &rest[1 + used + len..];
        }
        let _ = &mut d;
        found
    }
}

fn remaining_length(b: &[u8]) -> (usize, usize) {
    let (mut value, mut shift) = (0usize, 0);
    for (i, byte) in b.iter().enumerate() {
        value |= ((byte & 0x7F) as usize) << shift;
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
        shift += 7;
    }
    panic!("unterminated remaining length");
}

/// A PUBLISH from the broker at QoS 0.
fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    let mut p = vec![0x30];
    let mut n = body.len();
    loop {
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(&body);
    p
}

fn trigger(url: &str) -> Vec<u8> {
    publish("/switch/cmd/root", format!(r#"{{"type":"ota_trigger","url":"{url}"}}"#).as_bytes())
}

const CONNACK: [u8; 4] = [0x20, 2, 0, 0];
const SUBACK: [u8; 5] = [0x90, 3, 0, 1, 1];

struct Device {
    update: crate::session::UpdateSlot,
    flash: RamFlash,
    table: PartitionTable,
    session: Session<Agent>,
    world: World,
    now: u64,
    /// The device resumes cut downloads (`pull_resume`).
    resume: bool,
}

fn settings() -> Settings<'static> {
    Settings {
        broker: "127.0.0.1:1883".parse().unwrap(),
        client_id: "otahil-test",
        username: None,
        password: None,
        keep_alive_s: 60,
        command_topic: crate::proto::mqtt::DEFAULT_COMMAND_TOPIC,
        state_topic: crate::proto::mqtt::DEFAULT_STATE_TOPIC,
        pull: http_pull::Config::esp_https_ota("1.0.0"),
        arduino_pull: http_pull::Config::arduino(
            http_pull::DeviceFacts {
                sta_mac: [2, 0, 0, 0, 0, 1],
                ap_mac: [2, 0, 0, 0, 0, 2],
                free_space: 0x1c0000,
                sketch_size: 5000,
                sketch_md5: None,
                sketch_sha256: None,
                chip_size: 4 << 20,
                sdk_version: "v5.5.1",
                version: "1.0.0",
            },
            "1.0.0",
        ),
        ca_der: &[],
        clock_unix: None,
    }
}

impl Device {
    /// Running v1 from ota_0, its MQTT session up.
    fn online() -> Self {
        let mut flash = RamFlash::new(4 << 20);
        let v1 = image("1.0.0", 100);
        flash.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
        flash.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::Valid).to_bytes());
        flash.ops.clear();
        Self::boot(flash, false)
    }

    /// A device on `flash` that has just booted and reached the broker.
    fn boot(flash: RamFlash, resume: bool) -> Self {
        let mut d = Device {
            update: Default::default(),
            flash,
            table: esphome_4mb_table(),
            session: Session::new(Agent::default()),
            world: World::default(),
            now: 0,
            resume,
        };
        let s = d.settings();
        d.session.server.start(&s, &mut d.world);
        assert_eq!(d.world.broker_connects, 1);
        d.session.server.broker_connected(&s, 0, &mut d.world);
        assert_eq!(d.world.to_broker[0], 0x10, "CONNECT first");
        d.world.to_broker.clear();
        d.broker(&[&CONNACK[..], &SUBACK[..]].concat());
        assert!(d.session.server.broker_ready());
        let online = d.world.statuses();
        assert_eq!(online[0], r#"{"state":"online","bytes":0,"total":-1,"err":"","fw":"1.0.0"}"#);
        d
    }

    fn settings(&self) -> Settings<'static> {
        let mut s = settings();
        s.pull.resume = self.resume;
        s
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(&mut Agent, &mut crate::update::FlashSink<'_, RamFlash>, &mut World) -> R,
    ) -> R {
        let running = *self.table.ota(0).unwrap();
        let target =
            Target { table: &self.table, running, config: OtaConfig::default(), update: &self.update };
        let world = &mut self.world;
        self.session.with(&mut self.flash, &target, |agent, sink| f(agent, sink, world))
    }

    fn broker(&mut self, bytes: &[u8]) {
        let (now, s) = (self.now, self.settings());
        self.with(|a, sink, w| a.broker_data(&s, bytes, now, false, sink, w));
    }

    fn server_up(&mut self) {
        let (now, s) = (self.now, self.settings());
        self.with(|a, sink, w| a.server_connected(&s, now, sink, w));
    }

    fn server(&mut self, bytes: &[u8], step: usize) {
        let (now, s) = (self.now, self.settings());
        for piece in bytes.chunks(step) {
            self.with(|a, sink, w| a.server_data(&s, piece, now, sink, w));
        }
    }

    fn server_closed(&mut self) {
        let (now, s) = (self.now, self.settings());
        self.with(|a, sink, w| a.server_closed(&s, now, sink, w));
    }

    fn otadata_untouched(&self) -> bool {
        !self.flash.ops.iter().any(|op| match *op {
            Op::Erase(a) | Op::Program(a, _) => (0x9000..0xB000).contains(&a),
        })
    }
}

fn response(body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn a_trigger_pulls_writes_switches_and_reports_each_step() {
    let mut d = Device::online();
    d.broker(&trigger("http://10.0.2.2:8070/fw/v2.bin"));
    assert_eq!(d.world.servers, ["10.0.2.2:8070"]);
    d.server_up();
    assert!(d.world.to_server.starts_with(b"GET /fw/v2.bin HTTP/1.1\r\n"));
    let v2 = image("2.0.0", 50_000);
    d.server(&response(&v2), 1460);
    assert!(d.session.server.reboot_requested());
    let log = d.world.log.join("\n");
    let expected = [
        "I (0) mqtt: connected, subscribed to /switch/cmd/root",
        "I (0) pull: OTA trigger received",
        "I (0) pull: GET /fw/v2.bin",
        "I (0) pull: HTTP status 200",
        "I (0) pull: image header checked",
        &format!("I (0) ota: Starting update of {} bytes into ota_1", v2.len()),
        "I (0) ota: progress 25%",
        "I (0) ota: progress 50%",
        "I (0) ota: progress 75%",
    ];
    for (got, want) in d.world.log.iter().zip(expected) {
        assert_eq!(got, want, "{log}");
    }
    assert!(
        d.world.log.last().unwrap().starts_with("I (0) ota: update complete: boot set to ota_1"),
        "{log}"
    );
    let statuses = d.world.statuses();
    let n = v2.len();
    assert_eq!(statuses[0], r#"{"state":"started","bytes":0,"total":-1,"err":"","fw":"1.0.0"}"#);
    assert_eq!(
        statuses[1],
        format!(r#"{{"state":"downloading","bytes":0,"total":{n},"err":"","fw":"1.0.0"}}"#)
    );
    // A status at each quarter, the last at the whole length; `done` says what was written.
    assert_eq!(statuses.len(), 7, "{statuses:?}");
    let bytes =
        |s: &str| s.split(r#""bytes":"#).nth(1).and_then(|r| r.split(',').next()?.parse::<usize>().ok());
    let quarters: Vec<usize> = statuses[2..6].iter().map(|s| bytes(s).unwrap() * 4 / n).collect();
    assert_eq!(quarters, [1, 2, 3, 4], "{statuses:?}");
    assert_eq!(
        statuses[5],
        format!(r#"{{"state":"downloading","bytes":{n},"total":{n},"err":"","fw":"1.0.0"}}"#)
    );
    assert_eq!(statuses[6], format!(r#"{{"state":"done","bytes":{n},"total":{n},"err":"","fw":"1.0.0"}}"#));
    let slot = d.table.ota(1).unwrap().offset as usize;
    assert!(d.flash.data[slot..slot + n] == v2[..], "the image is in ota_1");
    assert!(!d.otadata_untouched());
}

#[test]
fn bad_triggers_are_log_lines_and_no_request() {
    let mut d = Device::online();
    d.world.log.clear();
    for payload in [
        &b"U"[..],
        br#"{"type":"ota_trigger""#,
        br#"{"url":"http://h/x"}"#,
        br#"{"type":"reboot"}"#,
        br#"{"type":"ota_trigger"}"#,
        br#"{"type":"connections","list":[]}"#,
    ] {
        d.broker(&publish("/switch/cmd/root", payload));
    }
    // Another topic is not a command.
    d.broker(&trigger("http://h/x").iter().map(|&b| if b == b'c' { b'k' } else { b }).collect::<Vec<_>>());
    d.broker(&trigger("ftp://h/x"));
    assert!(d.world.servers.is_empty());
    let log = d.world.log.join("\n");
    assert_eq!(d.world.log.len(), 7, "{log}");
    assert!(d.world.log[0].starts_with("W (0) mqtt: command ignored: "), "{log}");
    assert!(d.world.log[5].contains("'connections' command: not handled"), "{log}");
    assert!(log.ends_with("W (0) mqtt: command ignored: url is not http(s)://host/…"), "{log}");
    // The two refused triggers (no URL, an ftp URL) say so on the state topic; the rest is not
    // for the pull path.
    let statuses = d.world.statuses();
    assert_eq!(
        statuses,
        [r#"{"state":"failed","bytes":0,"total":-1,"err":"bad_trigger","code":258,"fw":"1.0.0"}"#; 2]
    );
    assert!(d.flash.ops.is_empty(), "nothing touched the flash");
}

#[test]
fn one_update_at_a_time() {
    let mut d = Device::online();
    // Two triggers in one read: the second finds the first's pull running.
    d.broker(&[trigger("http://a/1.bin"), trigger("http://b/2.bin"), trigger("http://c/3.bin")].concat());
    assert_eq!(d.world.servers, ["a:80"]);
    let busy = d.world.log.iter().filter(|l| l.contains("ignored: an update is already running")).count();
    assert_eq!(busy, 2, "{:?}", d.world.log);
    d.server_up();
    let v2 = image("2.0.0", 20_000);
    d.server(&response(&v2)[..5000], 1000);
    // A trigger during the download.
    d.broker(&trigger("http://d/4.bin"));
    assert_eq!(d.world.servers, ["a:80"]);
    let statuses = d.world.statuses();
    assert!(statuses.iter().filter(|s| s.contains(r#""err":"busy""#)).count() == 3, "{statuses:?}");
    d.server(&response(&v2)[5000..], 1000);
    assert!(d.session.server.reboot_requested());
}

/// How TCP groups the broker's messages must not decide what the device does: each message is
/// its own event (mosquitto sends queued messages in one segment).
#[test]
fn every_message_counts_whatever_segment_brought_it() {
    let bad = publish("/switch/cmd/root", br#"{"type":"ota_trigger"}"#);
    let mut one_segment = Vec::new();
    for _ in 0..6 {
        one_segment.extend_from_slice(&bad);
    }
    one_segment.extend_from_slice(&trigger("http://a/1.bin"));
    one_segment.extend_from_slice(&bad);
    let mut together = Device::online();
    together.broker(&one_segment);
    let mut apart = Device::online();
    for piece in [&bad[..], &bad, &bad, &bad, &bad, &bad, &trigger("http://a/1.bin"), &bad] {
        apart.broker(piece);
    }
    for d in [&mut together, &mut apart] {
        assert_eq!(d.world.servers, ["a:80"], "the valid trigger pulls: {:?}", d.world.log);
        let statuses = d.world.statuses();
        let bad_triggers = statuses.iter().filter(|s| s.contains(r#""err":"bad_trigger""#)).count();
        assert_eq!(bad_triggers, 7, "{statuses:?}");
        assert!(!d.world.log.iter().any(|l| l.contains("already running")), "{:?}", d.world.log);
    }
    assert_eq!(together.world.log, apart.world.log);
}

#[test]
fn a_broker_gone_mid_download_does_not_stop_the_pull() {
    let mut d = Device::online();
    d.broker(&trigger("http://a/v2.bin"));
    d.server_up();
    let v2 = image("2.0.0", 20_000);
    let r = response(&v2);
    d.server(&r[..3000], 1000);
    d.now = 500;
    d.with(|a, _, w| a.broker_closed(500, w));
    assert!(
        d.world
            .log
            .iter()
            .any(|l| l == "W (0) mqtt: connection lost (connection closed), retrying in 1000 ms")
    );
    d.world.statuses();
    d.server(&r[3000..], 1000);
    assert!(d.session.server.reboot_requested());
    assert!(d.world.statuses().is_empty(), "no broker: the status is lost, not queued");
    // The broker is back after the back-off.
    d.with(|a, sink, w| a.poll(&settings(), 1500, sink, w));
    assert_eq!(d.world.broker_connects, 2);
}

#[test]
fn a_failed_pull_reports_why_and_leaves_the_device_as_it_was() {
    let mut d = Device::online();
    d.broker(&trigger("http://a/missing.bin"));
    d.server_up();
    d.server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 100);
    assert!(
        d.world.log.iter().any(|l| l == "E (0) pull: OTA update failed: http_status (-1): HTTP status 404")
    );
    assert!(
        d.world
            .statuses()
            .last()
            .unwrap()
            .contains(r#""state":"failed","bytes":0,"total":-1,"err":"http_status","code":-1"#)
    );
    assert!(d.flash.ops.is_empty());
    assert!(!d.session.server.pulling());
    // A truncated body: written, aborted, the boot slot unmoved.
    d.broker(&trigger("http://a/v2.bin"));
    d.server_up();
    let v2 = image("2.0.0", 20_000);
    d.server(&response(&v2)[..9000], 1460);
    d.server_closed();
    assert!(d.world.log.last().unwrap().contains("truncated"), "{:?}", d.world.log);
    // The failure says how far the download came.
    let failed = d.world.statuses().pop().unwrap();
    let body = 9000 - (response(&v2).len() - v2.len());
    let want = format!(r#""state":"failed","bytes":{body},"total":{},"err":"#, v2.len());
    assert!(failed.contains(&want), "{failed}");
    assert!(d.otadata_untouched());
    assert!(!d.session.server.reboot_requested());
}

/// `http_update` runs the Arduino updater: HTTP/1.0 with its headers, 304 is `no_update`, and
/// it writes as `Update` does (the first 16 bytes withheld until the end).
#[test]
fn an_http_update_runs_the_arduino_updater() {
    let mut d = Device::online();
    d.broker(&publish("/switch/cmd/root", br#"{"type":"http_update","url":"http://a/v2.bin"}"#));
    assert_eq!(d.session.server.library(), Library::ArduinoHttpUpdate);
    d.server_up();
    let request = String::from_utf8(d.world.to_server.clone()).unwrap();
    assert!(request.starts_with("GET /v2.bin HTTP/1.0\r\n"), "{request}");
    assert!(request.contains("x-ESP32-STA-MAC: 02:00:00:00:00:01\r\n"), "{request}");
    d.server(b"HTTP/1.0 304 Not Modified\r\n\r\n", 100);
    d.server_closed();
    assert!(d.world.log.iter().any(|l| l == "I (0) pull: no update (304)"), "{:?}", d.world.log);
    assert!(d.world.statuses().last().unwrap().starts_with(r#"{"state":"no_update""#));
    assert!(d.flash.ops.is_empty());
    // A 200: written with the head withheld until the end, then switched.
    d.broker(&publish("/switch/cmd/root", br#"{"type":"http_update","url":"http://a/v2.bin"}"#));
    d.server_up();
    let v2 = image("2.0.0", 20_000);
    let slot = d.table.ota(1).unwrap().offset as usize;
    let r = response(&v2);
    d.server(&r[..r.len() - 10], 1460);
    assert!(d.flash.data[slot..slot + 16].iter().all(|b| *b == 0xFF), "head withheld while writing");
    d.server(&r[r.len() - 10..], 1460);
    assert!(d.session.server.reboot_requested());
    assert!(d.flash.data[slot..slot + v2.len()] == v2[..]);
}

/// The agent's https pulls against rustls's server, bytes moved in TCP-sized pieces.
#[cfg(feature = "tls")]
mod https {
    use super::*;
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
    use std::boxed::Box;
    use std::io::{Read, Write};
    use std::sync::Arc;

    fn pki() -> (Vec<u8>, rustls::ServerConnection) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_der = ca.self_signed(&ca_key).unwrap().der().to_vec();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names.push(SanType::IpAddress("10.0.2.2".parse().unwrap()));
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
        (ca_der, rustls::ServerConnection::new(Arc::new(config)).unwrap())
    }

    impl Device {
        fn with_settings(
            &mut self,
            s: &Settings<'_>,
            f: impl FnOnce(&mut Agent, &mut crate::update::FlashSink<'_, RamFlash>, &mut World, &Settings<'_>),
        ) {
            let running = *self.table.ota(0).unwrap();
            let target =
                Target { table: &self.table, running, config: OtaConfig::default(), update: &self.update };
            let world = &mut self.world;
            self.session.with(&mut self.flash, &target, |agent, sink| f(agent, sink, world, s));
        }

        /// Moves bytes between the device and the server until neither has any.
        fn tls_exchange(&mut self, s: &Settings<'_>, server: &mut rustls::ServerConnection, piece: usize) {
            for _ in 0..10_000 {
                let to_server = core::mem::take(&mut self.world.to_server);
                let mut moved = !to_server.is_empty();
                if moved {
                    server.read_tls(&mut &to_server[..]).unwrap();
                    server.process_new_packets().unwrap();
                }
                let mut to_device = Vec::new();
                while server.wants_write() {
                    server.write_tls(&mut to_device).unwrap();
                }
                for p in to_device.chunks(piece) {
                    moved = true;
                    self.with_settings(s, |a, sink, w, s| a.server_data(s, p, 0, sink, w));
                }
                if !moved {
                    return;
                }
            }
        }
    }

    #[test]
    fn an_https_trigger_pulls_through_a_verified_session() {
        let (ca_der, mut server) = pki();
        let ca: &'static [u8] = Box::leak(ca_der.into_boxed_slice());
        let s = Settings { ca_der: ca, ..settings() };
        let mut d = Device::online();
        d.broker(&trigger("https://10.0.2.2:8443/fw/v2.bin"));
        assert_eq!(d.world.servers, ["10.0.2.2:8443"], "plain TCP: the agent runs TLS itself");
        d.with_settings(&s, |a, sink, w, s| a.server_connected(s, 0, sink, w));
        assert_eq!(d.world.to_server[0], 0x16, "a TLS handshake record, not the request");
        d.tls_exchange(&s, &mut server, 1460);
        let mut request = vec![0u8; 512];
        let n = server.reader().read(&mut request).unwrap();
        assert!(
            request[..n].starts_with(b"GET /fw/v2.bin HTTP/1.1\r\n"),
            "{:?}",
            String::from_utf8_lossy(&request[..n])
        );
        let v2 = image("2.0.0", 50_000);
        server.writer().write_all(&response(&v2)).unwrap();
        d.tls_exchange(&s, &mut server, 1460);
        assert!(d.session.server.reboot_requested(), "{}", d.world.log.join("\n"));
        assert_eq!(&d.flash.data[0x1d0000..0x1d0000 + v2.len()], &v2[..]);
    }

    #[test]
    fn a_server_that_never_answers_the_handshake_times_out() {
        let (ca_der, _server) = pki();
        let ca: &'static [u8] = Box::leak(ca_der.into_boxed_slice());
        let s = Settings { ca_der: ca, ..settings() };
        let mut d = Device::online();
        d.broker(&trigger("https://10.0.2.2:8443/fw/v2.bin"));
        d.world.statuses();
        d.with_settings(&s, |a, sink, w, s| a.server_connected(s, 0, sink, w));
        let timeout = s.pull.timeout_ms;
        assert_eq!(d.session.server.deadline(&s), Some(timeout), "the handshake has the connect timeout");
        d.with_settings(&s, |a, sink, w, s| a.poll(s, timeout - 1, sink, w));
        assert!(d.session.server.pulling());
        d.with_settings(&s, |a, sink, w, s| a.poll(s, timeout, sink, w));
        assert!(!d.session.server.pulling());
        let failed = d.world.statuses();
        assert!(failed.iter().any(|f| f.contains(r#""err":"connect_failed""#)), "{failed:?}");
        assert_eq!(d.world.closed, [Link::Server]);
        assert!(d.otadata_untouched());
    }

    #[test]
    fn https_without_a_ca_fails_before_any_byte_is_sent() {
        let mut d = Device::online();
        d.broker(&trigger("https://10.0.2.2:8443/fw/v2.bin"));
        d.world.statuses();
        d.server_up();
        assert!(d.world.to_server.is_empty());
        assert_eq!(d.world.closed, [Link::Server]);
        let failed = d.world.statuses();
        assert!(failed[0].contains(r#""err":"tls_failed""#), "{failed:?}");
        assert!(d.otadata_untouched());
    }
}

/// With `pull_resume` set: a cut download goes on with `Range` when the same URL comes again,
/// and by itself at the first broker session after a restart; another URL drops the record.
#[test]
fn cut_downloads_resume_on_the_same_trigger_and_after_a_restart() {
    let v2 = image("2.0.0", 40_000);
    let cut = |d: &mut Device| {
        d.broker(&trigger("http://a/v2.bin"));
        d.server_up();
        d.server(&response(&v2)[..20_000], 1460);
        d.server_closed();
        assert!(d.world.log.last().unwrap().contains("truncated"), "{:?}", d.world.log);
    };
    let partial = |from: usize| {
        let mut r = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\n\r\n",
            v2.len() - 1,
            v2.len(),
            v2.len() - from
        )
        .into_bytes();
        r.extend_from_slice(&v2[from..]);
        r
    };
    let mut online = Device::online();
    online.resume = true;
    // The same URL again, without a restart.
    let mut d = online;
    cut(&mut d);
    d.world.to_server.clear();
    d.world.log.clear();
    d.broker(&trigger("http://a/v2.bin"));
    d.server_up();
    let request = String::from_utf8(d.world.to_server.clone()).unwrap();
    assert!(request.contains("\r\nRange: bytes=16384-\r\n"), "{request}");
    d.server(&partial(16384), 1460);
    assert!(d.session.server.reboot_requested(), "{:?}", d.world.log);
    assert_eq!(d.world.log[1], "I (0) pull: resuming /v2.bin from byte 16384");
    assert!(
        d.world.log.iter().any(|l| l.starts_with("I (0) pull: Resuming update of 40")),
        "{:?}",
        d.world.log
    );
    let slot = d.table.ota(1).unwrap().offset as usize;
    assert!(d.flash.data[slot..slot + v2.len()] == v2[..]);

    // A restart after the cut: the agent asks for the rest as soon as the broker is there.
    let mut d = Device::online();
    d.resume = true;
    cut(&mut d);
    let mut d = Device::boot(d.flash, true);
    assert_eq!(d.world.servers, ["a:80"], "{:?}", d.world.log);
    assert!(d.world.log.contains(&"I (0) pull: resuming /v2.bin from byte 16384".to_string()));
    d.server_up();
    assert!(String::from_utf8(d.world.to_server.clone()).unwrap().contains("Range: bytes=16384-"));
    d.server(&partial(16384), 1000);
    assert!(d.session.server.reboot_requested(), "{:?}", d.world.log);
    assert!(d.flash.data[slot..slot + v2.len()] == v2[..]);

    // Another URL after the cut: downloaded whole, the record dropped; a restart resumes nothing.
    let mut d = Device::online();
    d.resume = true;
    cut(&mut d);
    d.world.to_server.clear();
    d.broker(&trigger("http://a/v3.bin"));
    d.server_up();
    assert!(!String::from_utf8(d.world.to_server.clone()).unwrap().contains("Range:"));
    d.with(|_, sink, _| assert_eq!(sink.resume_record(&mut [0u8; 64]), None));
    // Without the setting, a restart ignores a record.
    let mut d = Device::online();
    d.resume = true;
    cut(&mut d);
    let d = Device::boot(d.flash, false);
    assert!(d.world.servers.is_empty(), "{:?}", d.world.log);
}

mod provisioning {
    use super::settings::{self, *};
    use crate::log::LogEvent;
    use crate::nvs;
    use crate::provision::{ProvisionError, SettingProblem, provisioning_page};
    use crate::settings::NAMESPACE;
    use crate::testutil::BASE_SETTINGS as BASE;
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn mqtt(page: Option<&[u8]>) -> (MqttSettings, Vec<String>) {
        let (mut flash, table) = crate::testutil::provisioned_flash(page);
        let mut lines = Vec::new();
        let s = MqttSettings::default()
            .load(&mut flash, &table, &mut |e: &LogEvent<'_>| lines.push(format!("{e}")));
        (s, lines)
    }

    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
    MIIBXzCCAQWgAwIBAgIUX7Ui1kC5ak+3Um4a5E0rEZ9gKecwCgYIKoZIzj0EAwIw
    GTEXMBUGA1UEAwwOb3RhaGlsIHRlc3QgQ0EwIBcNNzUwMTAxMDAwMDAwWhgPNDA5
    NjAxMDEwMDAwMDBaMBkxFzAVBgNVBAMMDm90YWhpbCB0ZXN0IENBMFkwEwYHKoZI
    zj0CAQYIKoZIzj0DAQcDQgAEUTXLz0Q2O6sC4hTk2lUHrV3nyEfXWQ8tgSx+5pR1
    vSpm0KY/gUMWo4iQpH7DbvV4wuvQDkxXp4zZpb3cNaZRa6MjMCEwDwYDVR0TAQH/
    BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZIzj0EAwIDSAAwRQIgVdGTMZDu
    sGZ3ZpK5nGtPCB0AI3BhbvoWrRG7Ft2W6KYCIQCWmP3uZVVnY9kB/7x1QY9l0Vnx
    Z8O+2bCrbqW4zJmD3g==
    -----END CERTIFICATE-----
    ";

    #[test]
    fn the_pull_ca_and_clock_are_provisioned_and_read_back() {
        let m = settings::Provision {
            broker: "10.0.2.2",
            ca_pem: Some(TEST_CA_PEM),
            clock_unix: Some(1_796_000_000),
            ..settings::Provision::default()
        };
        let page = provisioning_page(&BASE, &[&m]).unwrap();
        let (s, lines) = mqtt(Some(&page));
        assert!(lines.is_empty(), "{lines:?}");
        let mut der = [0u8; MAX_CA_DER];
        let n = crate::pem::decode_certificate(TEST_CA_PEM, &mut der).unwrap();
        assert_eq!(s.ca_der(), &der[..n]);
        assert_eq!(s.clock_unix, Some(1_796_000_000));
        assert_eq!(
            format!("{}", s.tls_log_line().unwrap()),
            "https trusts the CA set (nvs); certificate dates checked (clock set)"
        );
        let bad = settings::Provision {
            broker: "10.0.2.2",
            ca_pem: Some("not a certificate"),
            ..settings::Provision::default()
        };
        assert_eq!(
            provisioning_page(&BASE, &[&bad]),
            Err(ProvisionError::setting(
                "pull CA",
                SettingProblem::Certificate(crate::pem::PemError::NoCertificate)
            ))
        );
    }

    #[test]
    fn the_pull_path_is_off_until_a_broker_is_provisioned() {
        let (s, lines) = mqtt(None);
        assert_eq!(s.broker, None);
        assert!(lines.is_empty());
        assert_eq!(format!("{}", s.log_line()), "MQTT off: no broker configured");
        let page = provisioning_page(
            &BASE,
            &[&settings::Provision {
                broker: "10.0.2.2",
                command_topic: Some("/fleet/cmd"),
                state_topic: None,
                version_check: 1,
                timeout_s: Some(2),
                ..settings::Provision::default()
            }],
        )
        .unwrap();
        let (s, lines) = mqtt(Some(&page));
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(s.broker, Some("10.0.2.2:1883".parse().unwrap()), "the seed's default port");
        assert_eq!((s.command_topic.as_str(), s.state_topic.as_str()), ("/fleet/cmd", "/switch/state/root"));
        assert_eq!(s.version_check, crate::proto::http_pull::VersionCheck::SkipSame);
        assert_eq!(s.timeout_s, 2);
        let zero =
            settings::Provision { broker: "1.2.3.4", timeout_s: Some(0), ..settings::Provision::default() };
        let page = provisioning_page(&BASE, &[&zero]);
        assert_eq!(page.map(|_| ()).unwrap_err().to_string(), "pull timeout 0: expected 1 to 255 seconds");
        assert_eq!(
            format!("{}", s.log_line()),
            "MQTT broker set (nvs), commands on /fleet/cmd, status on /switch/state/root"
        );
        assert_eq!(parse_broker("[::1]:1884"), Some("[::1]:1884".parse().unwrap()));
        assert_eq!(parse_broker("[::1]"), Some("[::1]:1883".parse().unwrap()));
    }

    #[test]
    fn unusable_pull_settings_are_refused_or_skipped() {
        let bad = |m: settings::Provision<'static>| provisioning_page(&BASE, &[&m]);
        assert_eq!(
            bad(settings::Provision { broker: "broker.local", ..settings::Provision::default() }),
            Err(ProvisionError::setting(
                "MQTT broker",
                SettingProblem::Malformed { expected: "ip:port or ip (no host names)" }
            ))
        );
        let wild = settings::Provision {
            broker: "1.2.3.4",
            command_topic: Some("/a/#"),
            ..settings::Provision::default()
        };
        assert_eq!(
            bad(wild).unwrap_err().to_string(),
            "MQTT topic: expected a topic name without wildcards or NUL"
        );
        let vc =
            settings::Provision { broker: "1.2.3.4", version_check: 3, ..settings::Provision::default() };
        assert_eq!(bad(vc).unwrap_err().to_string(), "version check 3: expected 0, 1 or 2");
        // Written by another tool: the device logs and keeps its defaults.
        let mut b = nvs::PageBuilder::new(0);
        let ns = b.namespace(NAMESPACE).unwrap();
        b.str(ns, KEY_MQTT_BROKER, "mqtt.example.com").unwrap();
        b.str(ns, KEY_MQTT_CMD_TOPIC, "a/+/b").unwrap();
        b.u8(ns, KEY_PULL_VERSION_CHECK, 9).unwrap();
        let (s, lines) = mqtt(Some(&b.finish()));
        assert_eq!(s, MqttSettings::default());
        assert_eq!(
            lines,
            [
                "ignoring nvs otahil/mqtt_broker: not ip:port",
                "ignoring nvs otahil/mqtt_cmd_topic: not a topic of 1 to 64 bytes without wildcards",
                "ignoring nvs otahil/pull_vcheck: version check 9 is not 0, 1 or 2",
            ]
        );
    }
}
