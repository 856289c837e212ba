//! The app driven through its I/O vocabulary alone, as an adapter drives it: the registry, the
//! ESPHome timeout on the app's clock, one update at a time across paths.

use super::*;
use crate::boot::{BootloaderConfig, DirectVerify, PowerOn, power_on};
use crate::flash::ram::RamFlash;
use crate::image_builder::{ImageSpec, build};
use crate::io::Remote;
use crate::log::LogEvent;
use crate::proto::{arduino, esphome};
use crate::testutil::esphome_4mb_table;
use core::net::SocketAddr;
use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

/// What the app asked for, one line per request.
#[derive(Default)]
struct Recorded {
    requests: Vec<String>,
    lines: Vec<String>,
}

impl Io for Recorded {
    fn listen(&mut self, l: LinkId, port: u16) {
        self.requests.push(format!("listen {}.{} {port}", l.path, l.local));
    }
    fn bind(&mut self, l: LinkId, port: u16) {
        self.requests.push(format!("bind {}.{} {port}", l.path, l.local));
    }
    fn connect(&mut self, l: LinkId, to: Remote<'_>) {
        self.requests.push(format!("connect {}.{} {to:?}", l.path, l.local));
    }
    fn send(&mut self, l: LinkId, bytes: &[u8]) {
        self.requests.push(format!("send {}.{} {bytes:?}", l.path, l.local));
    }
    fn close(&mut self, l: LinkId) {
        self.requests.push(format!("close {}.{}", l.path, l.local));
    }
    fn datagram(&mut self, l: LinkId, to: SocketAddr, bytes: &[u8]) {
        self.requests.push(format!(
            "datagram {}.{} {to} {}",
            l.path,
            l.local,
            String::from_utf8_lossy(bytes)
        ));
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        self.lines.push(crate::log::LogLine { ms: 0, event: line }.to_string());
    }
    fn exchange_over(&mut self) {
        self.requests.push("exchange over".into());
    }
}

struct Zeros;
impl Entropy for Zeros {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
    }
}

fn booted_device() -> (RamFlash, App, Vec<String>) {
    booted_with(None)
}

/// A device running v1 from ota_0, its nvs partition holding `provisioned` (if any), booted.
fn booted_with(provisioned: Option<&[&dyn crate::provision::PathProvision]>) -> (RamFlash, App, Vec<String>) {
    let mut flash = RamFlash::new(4 << 20);
    let t = esphome_4mb_table().to_bytes(true);
    flash.data[0x8000..0x8000 + t.len()].copy_from_slice(&t);
    let mut spec = ImageSpec::new("otahil", "1.0.0");
    spec.payload_len = 2000;
    let mut image = vec![0; spec.image_len()];
    build(&spec, &mut image).unwrap();
    flash.data[0x10000..0x10000 + image.len()].copy_from_slice(&image);
    if let Some(paths) = provisioned {
        let page = crate::provision::provisioning_page(&crate::testutil::BASE_SETTINGS, paths).unwrap();
        flash.data[0x390000..0x390000 + page.len()].copy_from_slice(&page);
    }
    let (app, lines) = boot_app(&mut flash);
    (flash, app, lines)
}

/// Powers the device on: bootloader, boot guard, the app booted from its settings.
fn boot_app(flash: &mut RamFlash) -> (App, Vec<String>) {
    let mut lines = Vec::new();
    let mut log = |e: &LogEvent<'_>| lines.push(crate::log::LogLine { ms: 0, event: e }.to_string());
    let config =
        BootloaderConfig { rollback: false, chip: crate::image::ChipInfo::ESP32C3, flash_size: 4 << 20 };
    let PowerOn::Running { table, booted } = power_on(flash, config, &mut DirectVerify, &mut log, 4) else {
        panic!("the device does not boot")
    };
    let built_in = BuiltIn {
        ota_password: None,
        ota_protocol: 2,
        ota_sha256: true,
        ota_port: esphome::DEFAULT_PORT,
        arduino_password: None,
        arduino_auth: arduino::AuthScheme::Md5,
        mac: [2, 0, 0, 0, 0, 1],
    };
    let app = App::boot(flash, table, &booted, OtaConfig::default(), &built_in, &mut log, &mut Zeros);
    (app, lines)
}

fn env<'e>(
    flash: &'e mut RamFlash,
    now_ms: u64,
    io: &'e mut Recorded,
    rng: &'e mut Zeros,
) -> Env<'e, RamFlash> {
    Env { flash, now_ms, rng, io }
}

const ESPHOME_LISTENER: LinkId = LinkId { path: 0, local: 0 };
const ARDUINO_SOCKET: LinkId = LinkId { path: 1, local: 0 };
const UPLOADER: SocketAddr = SocketAddr::new(core::net::IpAddr::V4(core::net::Ipv4Addr::LOCALHOST), 40000);

#[test]
fn every_path_boots_from_its_settings_and_opens_links_named_by_its_index() {
    let (mut flash, mut app, lines) = booted_device();
    assert_eq!(
        PATHS,
        ["esphome", "arduino", "mqtt_pull", "homie", "homie1", "web_form", "elegant_ota", "ws_ota"]
    );
    assert!(
        lines.iter().any(|l| l.contains("config: OTA password none (built in), protocol 2 (built in)")),
        "{lines:?}"
    );
    assert!(app.serves::<RamFlash>("esphome") && app.serves::<RamFlash>("arduino"));
    assert!(!app.serves::<RamFlash>("mqtt_pull"), "no broker in NVS: the pull is off");
    assert!(!app.serves::<RamFlash>("homie"), "no broker in NVS: Homie is off");
    assert!(!app.serves::<RamFlash>("homie1"), "no broker in NVS: Homie 1.x is off");
    assert!(!app.serves::<RamFlash>("web_form"), "not provisioned: no web server");
    assert!(!app.serves::<RamFlash>("elegant_ota"), "not provisioned: no web server");
    assert!(!app.serves::<RamFlash>("ws_ota"), "not provisioned: no web server");
    let (mut io, mut rng) = (Recorded::default(), Zeros);
    app.start(&mut env(&mut flash, 0, &mut io, &mut rng));
    assert_eq!(io.requests, ["listen 0.0 3232", "bind 1.0 3232"]);
    assert_eq!(io.lines, ["I (0) ota: listening on port 3232"]);
    assert_eq!(app.deadline::<RamFlash>(0), None, "an idle device has nothing to wake up for");
}

#[test]
fn a_silent_esphome_client_is_timed_out_on_the_apps_clock() {
    let (mut flash, mut app, _) = booted_device();
    let (mut io, mut rng) = (Recorded::default(), Zeros);
    let client = app.accept(ESPHOME_LISTENER, &mut env(&mut flash, 1000, &mut io, &mut rng)).expect("taken");
    assert_eq!(client, LinkId { path: 0, local: 1 });
    assert!(app.busy::<RamFlash>() && app.in_exchange::<RamFlash>());
    let limit = 1000 + esphome::HANDSHAKE_TIMEOUT_MS;
    assert_eq!(app.deadline::<RamFlash>(1000), Some(limit));
    let mut io = Recorded::default();
    app.poll(&mut env(&mut flash, limit - 1, &mut io, &mut rng));
    assert!(io.requests.is_empty(), "not yet: {:?}", io.requests);
    app.poll(&mut env(&mut flash, limit, &mut io, &mut rng));
    assert_eq!(io.requests, ["send 0.1 [255]", "close 0.1", "exchange over"]);
    assert_eq!(io.lines, ["W (0) ota: timed out waiting for the client"]);
    assert!(!app.busy::<RamFlash>());
    assert_eq!(app.deadline::<RamFlash>(limit), None);
}

#[test]
fn one_update_at_a_time_whichever_path_holds_the_device() {
    let (mut flash, mut app, _) = booted_device();
    let mut rng = Zeros;
    // An ArduinoOTA invitation is taken: the device connects back to the uploader.
    let mut io = Recorded::default();
    let invitation = b"0 40000 1000 0123456789abcdef0123456789abcdef\n";
    let input = Input::Datagram { socket: ARDUINO_SOCKET, from: UPLOADER, bytes: invitation };
    app.input(input, &mut env(&mut flash, 0, &mut io, &mut rng));
    assert_eq!(io.requests[0], "datagram 1.0 127.0.0.1:40000 OK");
    assert!(io.requests[1].starts_with("connect 1.1 Addr(127.0.0.1:40000)"), "{:?}", io.requests);
    // Meanwhile an ESPHome client waits: the app leaves it waiting.
    assert_eq!(app.accept(ESPHOME_LISTENER, &mut env(&mut flash, 10, &mut io, &mut rng)), None);
    // The uploader cannot be reached: the exchange ends, and the ESPHome client is taken.
    let mut io = Recorded::default();
    let failed = Input::ConnectFailed(LinkId { path: 1, local: 1 }, crate::io::ConnectFailure::Refused);
    app.input(failed, &mut env(&mut flash, 20, &mut io, &mut rng));
    assert!(io.requests.contains(&"exchange over".to_string()), "{:?}", io.requests);
    let client = app.accept(ESPHOME_LISTENER, &mut env(&mut flash, 30, &mut io, &mut rng));
    assert_eq!(client, Some(LinkId { path: 0, local: 1 }));
    // And while it is held, an invitation is refused as busy.
    let mut io = Recorded::default();
    app.input(input, &mut env(&mut flash, 40, &mut io, &mut rng));
    assert!(io.requests.iter().all(|r| !r.starts_with("connect")), "{:?}", io.requests);
    assert_eq!(io.lines, ["W (0) arduino: invitation ignored: an update is already running"]);
}

/// The bytes the app sent on each link, and whether it asked for a connection.
#[derive(Default)]
struct Wire {
    sent: std::collections::BTreeMap<(u8, u8), Vec<u8>>,
    connects: Vec<String>,
    lines: Vec<String>,
}

impl Io for Wire {
    fn listen(&mut self, _: LinkId, _: u16) {}
    fn bind(&mut self, _: LinkId, _: u16) {}
    fn connect(&mut self, l: LinkId, to: Remote<'_>) {
        self.connects.push(format!("{}.{} {to:?}", l.path, l.local));
    }
    fn send(&mut self, l: LinkId, bytes: &[u8]) {
        self.sent.entry((l.path, l.local)).or_default().extend_from_slice(bytes);
    }
    fn close(&mut self, _: LinkId) {}
    fn datagram(&mut self, _: LinkId, _: SocketAddr, _: &[u8]) {}
    fn log(&mut self, line: &LogEvent<'_>) {
        self.lines.push(crate::log::LogLine { ms: 0, event: line }.to_string());
    }
    fn exchange_over(&mut self) {}
}

/// What a broker reads from the device's bytes: each PUBLISH as `topic payload`, and the
/// PUBACKs' ids.
fn broker_reads(bytes: &[u8]) -> (Vec<String>, Vec<u16>) {
    use crate::proto::mqtt::packet::{Incoming, decode};
    let (mut publishes, mut acks, mut rest) = (Vec::new(), Vec::new(), bytes);
    while !rest.is_empty() {
        let (first, mut len, mut n) = (rest[0], 0usize, 1);
        loop {
            let b = rest[n];
            len |= ((b & 0x7F) as usize) << (7 * (n - 1));
            n += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let body = &rest[n..n + len];
        match first >> 4 {
            3 => {
                // decode() reads packets from a broker; the device's PUBLISH has the same layout.
                if let Ok(Incoming::Publish { topic, payload, .. }) = decode(first, body) {
                    publishes.push(format!("{topic} {}", String::from_utf8_lossy(payload)));
                }
            }
            4 => acks.push(u16::from_be_bytes([body[0], body[1]])),
            _ => {}
        }
        rest = &rest[n + len..];
    }
    (publishes, acks)
}

/// A Homie 3 push through the app alone: the session comes up, the attributes are published,
/// the image comes as one large QoS 1 message in TCP-sized pieces, the statuses go out between
/// the pieces, the message is acknowledged after its last piece, and the app asks for a restart.
#[test]
fn a_homie_push_through_the_app() {
    use crate::proto::mqtt::packet::{self, QoS};
    let homie =
        crate::proto::homie::settings::Provision { broker: "127.0.0.1:1883", id: Some("dev1"), ota: true };
    let (mut flash, mut app, lines) = booted_with(Some(&[&homie]));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Homie device dev1 on broker 127.0.0.1:1883 (nvs), OTA enabled (nvs)")),
        "{lines:?}"
    );
    assert!(app.serves::<RamFlash>("homie"));
    let broker = LinkId { path: 3, local: 0 };
    let (mut io, mut rng) = (Wire::default(), Zeros);
    app.start(&mut env_wire(&mut flash, 0, &mut io, &mut rng));
    assert_eq!(io.connects, ["3.0 Addr(127.0.0.1:1883)"]);
    app.input(Input::Connected(broker), &mut env_wire(&mut flash, 1, &mut io, &mut rng));
    // CONNACK, then the SUBACK of the firmware filter (packet id 1).
    app.input(
        Input::Data(broker, &[0x20, 2, 0, 0, 0x90, 3, 0, 1, 1]),
        &mut env_wire(&mut flash, 2, &mut io, &mut rng),
    );
    let (publishes, _) = broker_reads(&io.sent[&(3, 0)]);
    assert!(publishes.contains(&"homie/dev1/$state ready".to_string()), "{publishes:?}");
    assert!(publishes.contains(&"homie/dev1/$implementation/ota/enabled true".to_string()));
    let checksum = "homie/dev1/$fw/checksum ";
    assert!(
        publishes.iter().any(|p| p.starts_with(checksum) && p.len() == checksum.len() + 32),
        "{publishes:?}"
    );
    // The firmware: v2 as one QoS 1 message, given in 1460-byte segments.
    let mut spec = ImageSpec::new("otahil", "2.0.0");
    spec.payload_len = 30_000;
    let mut v2 = vec![0; spec.image_len()];
    build(&spec, &mut v2).unwrap();
    let md5: [u8; 16] = md5::Digest::finalize(<md5::Md5 as md5::Digest>::new_with_prefix(&v2)).into();
    let mut hex = [0u8; 32];
    crate::hex::encode_lower(&md5, &mut hex);
    let topic = format!("homie/dev1/$implementation/ota/firmware/{}", core::str::from_utf8(&hex).unwrap());
    let mut message = Vec::new();
    packet::publish(&mut message, &topic, &v2, QoS::AtLeastOnce, false, 7).unwrap();
    let mut io = Wire::default();
    for (i, segment) in message.chunks(1460).enumerate() {
        app.input(Input::Data(broker, segment), &mut env_wire(&mut flash, 10 + i as u64, &mut io, &mut rng));
    }
    let (publishes, acks) = broker_reads(&io.sent[&(3, 0)]);
    let statuses: Vec<&str> =
        publishes.iter().filter_map(|p| p.strip_prefix("homie/dev1/$implementation/ota/status ")).collect();
    assert_eq!(statuses.first(), Some(&"202"));
    assert_eq!(statuses.last(), Some(&"200"), "{:?}", io.lines);
    assert!(statuses.len() > 10, "a 206 per piece: {statuses:?}");
    assert_eq!(acks, [7], "acknowledged once, after the last piece");
    assert!(app.reboot_requested::<RamFlash>());
    assert_eq!(&flash.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
}

fn env_wire<'e>(
    flash: &'e mut RamFlash,
    now_ms: u64,
    io: &'e mut Wire,
    rng: &'e mut Zeros,
) -> Env<'e, RamFlash> {
    Env { flash, now_ms, rng, io }
}

/// The upload form, provisioned, listens on port 80; a page view holds nothing, so an ESPHome
/// client is taken meanwhile, while an upload being written makes the others wait.
#[test]
fn the_web_form_listens_when_provisioned_and_only_an_upload_holds_the_device() {
    let form = crate::proto::web_form::settings::Provision::default();
    let (mut flash, mut app, lines) = booted_with(Some(&[&form]));
    assert!(app.serves::<RamFlash>("web_form"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("config: web update form on TCP port 80 at /update: credentials none")),
        "{lines:?}"
    );
    let web = PATHS.iter().position(|p| *p == "web_form").unwrap() as u8;
    let (mut io, mut rng) = (Recorded::default(), Zeros);
    app.start(&mut env(&mut flash, 0, &mut io, &mut rng));
    assert!(io.requests.contains(&std::format!("listen {web}.0 80")), "{:?}", io.requests);
    let listener = LinkId { path: web, local: 0 };
    let client = app.accept(listener, &mut env(&mut flash, 0, &mut io, &mut rng)).expect("taken");
    assert!(!app.busy::<RamFlash>(), "a connection that has not begun an upload holds nothing");
    let head = "POST /update HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n";
    let part = "--b\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"f.bin\"\r\n\r\n";
    let mut io = Recorded::default();
    app.input(Input::Data(client, head.as_bytes()), &mut env(&mut flash, 1, &mut io, &mut rng));
    app.input(Input::Data(client, part.as_bytes()), &mut env(&mut flash, 2, &mut io, &mut rng));
    app.input(Input::Data(client, &[0xE9; 100]), &mut env(&mut flash, 3, &mut io, &mut rng));
    assert!(app.busy::<RamFlash>(), "an upload being written holds the device");
    assert_eq!(app.accept(ESPHOME_LISTENER, &mut env(&mut flash, 4, &mut io, &mut rng)), None);
    app.input(Input::Closed(client), &mut env(&mut flash, 5, &mut io, &mut rng));
    assert!(!app.busy::<RamFlash>());
    assert!(io.requests.contains(&"exchange over".to_string()), "{:?}", io.requests);
    assert!(io.lines.iter().any(|l| l.contains("web: upload aborted after")), "{:?}", io.lines);
}

#[test]
fn the_web_setting_picks_one_page_set_for_port_80() {
    use crate::proto::web_form::settings::{Pages, Provision};
    for (pages, on, off) in [
        (Pages::Form, "web_form", "ws_ota"),
        (Pages::ElegantOta, "elegant_ota", "web_form"),
        (Pages::WsOta, "ws_ota", "elegant_ota"),
    ] {
        let web = Provision { pages, user: None, password: None };
        let (mut flash, mut app, lines) = booted_with(Some(&[&web]));
        assert!(app.serves::<RamFlash>(on) && !app.serves::<RamFlash>(off), "{pages:?}");
        assert_eq!(lines.iter().filter(|l| l.contains("on TCP port 80")).count(), 1, "{lines:?}");
        let (mut io, mut rng) = (Recorded::default(), Zeros);
        app.start(&mut env(&mut flash, 0, &mut io, &mut rng));
        assert_eq!(io.requests.iter().filter(|r| r.ends_with(" 80")).count(), 1, "{:?}", io.requests);
    }
}

/// The WebSocket page's whole life on a device whose new images wait for the page: upload,
/// restart, the new image PENDING_VERIFY and offered, rolled back from the page; then again,
/// kept.
#[test]
fn the_websocket_page_uploads_then_confirms_or_rolls_back() {
    use crate::boot::Confirm;
    use crate::proto::http_server::websocket::{Opcode, apply_mask, frame_head};
    let ws = crate::proto::ws_ota::settings::Provision { confirm: Confirm::App };
    let (mut flash, mut app, lines) = booted_with(Some(&[&ws]));
    assert!(lines.iter().any(|l| l.ends_with("new images confirmed by the page")), "{lines:?}");
    let ws_path = PATHS.iter().position(|p| *p == "ws_ota").unwrap() as u8;
    let listener = LinkId { path: ws_path, local: 0 };
    let frame = |op: Opcode, payload: &[u8]| {
        let mut head = [0u8; 14];
        let mut v = frame_head(true, op, payload.len() as u64, Some([1, 2, 3, 4]), &mut head).to_vec();
        let mut body = payload.to_vec();
        apply_mask(&mut body, [1, 2, 3, 4], 0);
        v.extend_from_slice(&body);
        v
    };
    let handshake = "GET /ota/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut spec = ImageSpec::new("otahil", "2.0.0");
    spec.payload_len = 10_000;
    let mut v2 = vec![0; spec.image_len()];
    build(&spec, &mut v2).unwrap();
    for keep in [false, true] {
        let (mut io, mut rng) = (Recorded::default(), Zeros);
        app.start(&mut env(&mut flash, 0, &mut io, &mut rng));
        let client = app.accept(listener, &mut env(&mut flash, 1, &mut io, &mut rng)).unwrap();
        app.input(Input::Data(client, handshake.as_bytes()), &mut env(&mut flash, 2, &mut io, &mut rng));
        let size = std::format!(r#"{{"name":"otaSize","value":{}}}"#, v2.len());
        app.input(
            Input::Data(client, &frame(Opcode::Text, size.as_bytes())),
            &mut env(&mut flash, 3, &mut io, &mut rng),
        );
        assert!(app.busy::<RamFlash>(), "the page's update holds the device");
        for chunk in v2.chunks(8192) {
            app.input(
                Input::Data(client, &frame(Opcode::Binary, chunk)),
                &mut env(&mut flash, 4, &mut io, &mut rng),
            );
        }
        assert!(!app.busy::<RamFlash>());
        assert!(!app.reboot_requested::<RamFlash>(), "the page restarts the device, not the upload");
        let restart = br#"{"name":"otaRestartEsp","value":""}"#;
        app.input(
            Input::Data(client, &frame(Opcode::Text, restart)),
            &mut env(&mut flash, 5, &mut io, &mut rng),
        );
        assert!(app.reboot_requested::<RamFlash>() && app.reboot_announced::<RamFlash>());
        assert!(
            io.lines.iter().any(|l| l.contains("ws_ota: Rebooting into the boot partition")),
            "{:?}",
            io.lines
        );
        // The new image boots, waits for its page.
        let (mut next, lines) = boot_app(&mut flash);
        assert!(lines.iter().any(|l| l.contains("running ota_1")), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("ota_1 stays PENDING_VERIFY until the app confirms it")),
            "{lines:?}"
        );
        let mut io = Recorded::default();
        next.start(&mut env(&mut flash, 0, &mut io, &mut rng));
        let client = next.accept(listener, &mut env(&mut flash, 1, &mut io, &mut rng)).unwrap();
        next.input(Input::Data(client, handshake.as_bytes()), &mut env(&mut flash, 2, &mut io, &mut rng));
        assert!(
            io.lines.iter().any(|l| l.contains("ota_1 is PENDING_VERIFY: otaCheckRollback sent")),
            "{:?}",
            io.lines
        );
        let answer = std::format!(r#"{{"name":"otaProcessRollback","value":"{}"}}"#, !keep);
        next.input(
            Input::Data(client, &frame(Opcode::Text, answer.as_bytes())),
            &mut env(&mut flash, 3, &mut io, &mut rng),
        );
        if keep {
            assert!(
                io.lines.iter().any(|l| l.contains("otaProcessRollback false: ota_1 marked VALID")),
                "{:?}",
                io.lines
            );
            assert!(!next.reboot_requested::<RamFlash>());
            let (_, lines) = boot_app(&mut flash);
            assert!(lines.iter().any(|l| l.contains("running ota_1")), "kept: {lines:?}");
        } else {
            assert!(
                io.lines.iter().any(|l| l.contains("otaProcessRollback true: ota_1 marked INVALID")),
                "{:?}",
                io.lines
            );
            assert!(io.lines.iter().any(|l| l.ends_with("rollback: Rebooting...")), "{:?}", io.lines);
            assert!(next.reboot_requested::<RamFlash>());
            let (back, lines) = boot_app(&mut flash);
            assert!(lines.iter().any(|l| l.contains("running ota_0")), "rolled back: {lines:?}");
            app = back;
        }
    }
}
