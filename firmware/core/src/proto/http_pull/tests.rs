//! Pulls driven response byte by response byte against a RAM flash: the happy paths of both
//! flavours, every server fault the spec lists, and the promise that flash is untouched until
//! the image's header checks out and the boot slot moves only for a verified image.

use super::response::{Body, BodyError, Framing, HeadError, HeadReader, Md5Header};
use super::*;
use crate::flash::ram::{Op, RamFlash};
use crate::image_builder::{ImageSpec, build};
use crate::otadata::{OtaEntry, OtaState};
use crate::partition::PartitionTable;
use crate::testutil::esphome_4mb_table;
use crate::update::FlashSink;
use crate::writer::{OtaConfig, OtaUpdate};
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
struct Rec {
    connects: Vec<String>,
    sent: Vec<u8>,
    closes: usize,
    events: Vec<String>,
}

impl Output for Rec {
    fn connect(&mut self, to: Endpoint<'_>) {
        self.connects.push(format!("{}:{}{}", to.host, to.port, if to.tls { " tls" } else { "" }));
    }
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.closes += 1;
    }
    fn event(&mut self, e: Event<'_>) {
        // Progress is too chatty to compare; its last value is checked where it matters.
        if !matches!(e, Event::Progress { .. }) {
            self.events.push(format!("{e:?}"));
        }
    }
}

/// A device running v1 from ota_0, pulling.
struct Device {
    flash: RamFlash,
    table: PartitionTable,
    update: Option<OtaUpdate>,
    client: Client,
    out: Rec,
    now: u64,
}

impl Device {
    fn new() -> Self {
        let mut flash = RamFlash::new(4 << 20);
        let v1 = image("1.0.0", 100);
        flash.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
        flash.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::Valid).to_bytes());
        flash.ops.clear();
        Device {
            flash,
            table: esphome_4mb_table(),
            update: None,
            client: Client::default(),
            out: Rec::default(),
            now: 0,
        }
    }

    fn sink(&mut self) -> (FlashSink<'_, RamFlash>, &mut Client, &mut Rec) {
        let running = *self.table.ota(0).unwrap();
        let sink =
            FlashSink::new(&mut self.flash, &self.table, running, OtaConfig::default(), &mut self.update);
        (sink, &mut self.client, &mut self.out)
    }

    /// Starts a pull of `url` and answers the connection.
    fn start(&mut self, cfg: &Config<'_>, url: &str) {
        self.client.start(url, &mut self.out);
        self.client.connected(cfg, self.now, &mut self.out);
    }

    /// The server's bytes, in pieces of `step`.
    fn respond(&mut self, cfg: &Config<'_>, bytes: &[u8], step: usize) {
        let now = self.now;
        for piece in bytes.chunks(step.max(1)) {
            let (mut sink, client, out) = self.sink();
            client.data(cfg, piece, now, &mut sink, out);
        }
    }

    fn close(&mut self, cfg: &Config<'_>) {
        let (mut sink, client, out) = self.sink();
        client.closed(cfg, &mut sink, out);
    }

    fn poll(&mut self, cfg: &Config<'_>, now: u64) {
        self.now = now;
        let (mut sink, client, out) = self.sink();
        client.poll(cfg, now, &mut sink, out);
    }

    fn last(&self) -> &str {
        self.out.events.last().map(String::as_str).unwrap_or("")
    }

    fn otadata_untouched(&self) -> bool {
        !self.flash.ops.iter().any(|op| match *op {
            Op::Erase(a) | Op::Program(a, _) => (0x9000..0xB000).contains(&a),
        })
    }
}

fn ok_head(len: usize) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes()
}

fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in body.chunks(size) {
        out.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: y\r\n\r\n");
    out
}

#[test]
fn esp_https_ota_request_is_what_esp_http_client_sends() {
    let cfg = Config::esp_https_ota("1.0.0");
    let mut d = Device::new();
    d.start(&cfg, "http://10.0.2.2:8070/fw/v2.bin?x=1");
    assert_eq!(d.out.connects, ["10.0.2.2:8070"]);
    assert_eq!(
        String::from_utf8(d.out.sent.clone()).unwrap(),
        "GET /fw/v2.bin?x=1 HTTP/1.1\r\nUser-Agent: ESP32 HTTP Client/1.0\r\nHost: 10.0.2.2:8070\r\n\r\n"
    );
    let mut d = Device::new();
    d.start(&cfg, "https://ota.example.com/v2.bin");
    assert_eq!(d.out.connects, ["ota.example.com:443 tls"]);
    assert!(String::from_utf8(d.out.sent.clone()).unwrap().contains("\r\nHost: ota.example.com\r\n"));
}

#[test]
fn a_pull_with_content_length_writes_verifies_and_switches() {
    let cfg = Config::esp_https_ota("1.0.0");
    let v2 = image("2.0.0", 40_000);
    for step in [1, 7, 1460, usize::MAX] {
        let mut d = Device::new();
        d.start(&cfg, "http://h/v2.bin");
        let mut resp = ok_head(v2.len());
        resp.extend_from_slice(&v2);
        d.respond(&cfg, &resp, step);
        assert!(d.last().starts_with("Complete(Switched { slot: 1"), "step {step}: {:?}", d.out.events);
        assert!(d.client.reboot_requested());
        assert_eq!(&d.flash.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
        assert_eq!(
            d.out.events[..3],
            [
                "Requesting { url: \"http://h/v2.bin\", redirects: 0 }",
                "Status { code: 200 }",
                "ImageAccepted { version: \"\" }"
            ]
        );
    }
}

#[test]
fn chunked_and_close_delimited_bodies_complete_too() {
    let cfg = Config::esp_https_ota("1.0.0");
    let v2 = image("2.0.0", 20_000);
    let mut d = Device::new();
    d.start(&cfg, "http://h/v2.bin");
    d.respond(&cfg, &chunked(&v2, 3000), 11);
    assert!(d.last().starts_with("Complete("), "{:?}", d.out.events);
    assert!(d.out.events.contains(&"Begin { size: None, slot: 1 }".to_string()));
    let mut d = Device::new();
    d.start(&cfg, "http://h/v2.bin");
    let mut resp = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 4096);
    assert!(!d.last().starts_with("Complete("));
    d.close(&cfg);
    assert!(d.last().starts_with("Complete("), "{:?}", d.out.events);
}

#[test]
fn statuses_that_are_no_image_leave_flash_alone() {
    let cfg = Config::esp_https_ota("1.0.0");
    let cases: [(&str, PullError, i32); 6] = [
        ("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", PullError::Status(404), -1),
        ("HTTP/1.1 403 Forbidden\r\n\r\n", PullError::Status(403), -1),
        ("HTTP/1.1 500 Oops\r\n\r\n", PullError::Status(500), -1),
        ("HTTP/1.1 304 Not Modified\r\n\r\n", PullError::NotModified, 0x7009),
        ("HTTP/1.1 302 Found\r\n\r\n", PullError::RedirectWithoutLocation, -1),
        ("HTTX/1.1 200 OK\r\n\r\n", PullError::Head(HeadError::StatusLine), 0x7004),
    ];
    for (resp, want, code) in cases {
        let mut d = Device::new();
        d.start(&cfg, "http://h/v2.bin");
        d.respond(&cfg, resp.as_bytes(), 5);
        assert_eq!(d.last(), format!("Failed({want:?})"));
        assert_eq!(want.code(), code);
        assert!(d.flash.ops.is_empty(), "{resp}: {:?}", d.flash.ops);
        assert_eq!(d.out.closes, 1);
    }
}

#[test]
fn redirects_are_followed_bounded_and_never_downgraded() {
    let cfg = Config::esp_https_ota("1.0.0");
    let v2 = image("2.0.0", 1000);
    let mut d = Device::new();
    d.start(&cfg, "http://h:8080/a");
    d.respond(&cfg, b"HTTP/1.1 302 Found\r\nLocation: /b\r\nContent-Length: 3\r\n\r\nabc", 100);
    assert_eq!(d.out.connects, ["h:8080", "h:8080"]);
    assert!(d.out.events.contains(&"Redirected { to: \"http://h:8080/b\" }".to_string()));
    d.out.sent.clear();
    d.client.connected(&cfg, 0, &mut d.out);
    assert!(String::from_utf8(d.out.sent.clone()).unwrap().starts_with("GET /b HTTP/1.1\r\n"));
    let mut resp = ok_head(v2.len());
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 512);
    assert!(d.last().starts_with("Complete("));
    // A loop stops after the limit.
    let mut d = Device::new();
    d.start(&cfg, "http://h/loop");
    for _ in 0..=MAX_REDIRECTS {
        d.respond(&cfg, b"HTTP/1.1 301 Moved\r\nLocation: http://h/loop\r\n\r\n", 64);
        d.client.connected(&cfg, 0, &mut d.out);
    }
    assert_eq!(d.last(), "Failed(TooManyRedirects)");
    assert_eq!(d.out.connects.len(), MAX_REDIRECTS as usize + 1);
    // https may not go to http.
    let mut d = Device::new();
    d.start(&cfg, "https://h/a");
    d.respond(&cfg, b"HTTP/1.1 307 Temporary\r\nLocation: http://h/a\r\n\r\n", 64);
    assert_eq!(d.last(), "Failed(RedirectDowngrade)");
    assert_eq!(PullError::RedirectDowngrade.code(), 0x700D);
}

#[test]
fn the_header_is_checked_before_anything_is_written() {
    let cfg = Config::esp_https_ota("1.0.0");
    let html = b"<!DOCTYPE html><html><head><title>x</title></head><body>".repeat(40);
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    let mut resp = ok_head(html.len());
    resp.extend_from_slice(&html);
    d.respond(&cfg, &resp, 100);
    // The spec's vector: an HTML page gives `found 27757` (bytes 6D 6C).
    assert_eq!(d.last(), "Failed(ChipId { found: 27757 })");
    assert!(d.flash.ops.is_empty());
    let mut wrong_chip = image("2.0.0", 4000);
    wrong_chip[12] = 0x09;
    let mut bad_magic = image("2.0.0", 4000);
    bad_magic[0] = 0xE8;
    let short = image("2.0.0", 0);
    for (img, want) in [
        (wrong_chip, "Failed(ChipId { found: 9 })"),
        (bad_magic, "Failed(Ota(InvalidMagic { found: 232 }))"),
        (short, "Failed(ImageTooShort { received: 352 })"),
    ] {
        let mut d = Device::new();
        d.start(&cfg, "http://h/");
        let mut resp = ok_head(img.len());
        resp.extend_from_slice(&img);
        d.respond(&cfg, &resp, 333);
        assert_eq!(d.last(), want);
        assert!(d.flash.ops.is_empty(), "{want}: {:?}", d.flash.ops);
    }
}

#[test]
fn versions_are_compared_when_the_device_asks() {
    let v1 = image("1.0.0", 2000);
    let v0 = image("0.9.0", 2000);
    let v2 = image("2.0.0", 2000);
    let mut cfg = Config::esp_https_ota("1.0.0");
    cfg.version_check = VersionCheck::RefuseDowngrade;
    for (img, want) in [(&v1, "Failed(SameVersion)"), (&v0, "Failed(Downgrade)")] {
        let mut d = Device::new();
        d.start(&cfg, "http://h/");
        let mut resp = ok_head(img.len());
        resp.extend_from_slice(img);
        d.respond(&cfg, &resp, 700);
        assert_eq!(d.last(), want);
        assert!(d.flash.ops.is_empty());
    }
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    let mut resp = ok_head(v2.len());
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 700);
    assert!(d.out.events.contains(&"ImageAccepted { version: \"2.0.0\" }".to_string()));
    assert!(d.last().starts_with("Complete("));
    assert!(numeric_version("v1.10.0") > numeric_version("1.9.9"));
    assert_eq!(numeric_version("nightly"), None);
}

#[test]
fn truncation_stalls_and_silent_servers_fail_without_switching() {
    let cfg = Config::esp_https_ota("1.0.0");
    let v2 = image("2.0.0", 30_000);
    // FIN before Content-Length.
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    let mut resp = ok_head(v2.len());
    resp.extend_from_slice(&v2[..20_000]);
    d.respond(&cfg, &resp, 1460);
    d.close(&cfg);
    assert!(d.last().starts_with("Failed(Truncated { received: 20000 })"), "{}", d.last());
    assert!(d.otadata_untouched());
    // A close-delimited body cut short downloads "completely", then fails verification.
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    let mut resp = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
    resp.extend_from_slice(&v2[..20_000]);
    d.respond(&cfg, &resp, 1460);
    d.close(&cfg);
    assert!(d.last().starts_with("Failed(Ota(Validate("), "{}", d.last());
    assert!(d.otadata_untouched());
    // A body that stalls past the limit.
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    let mut resp = ok_head(v2.len());
    resp.extend_from_slice(&v2[..5000]);
    d.respond(&cfg, &resp, 1460);
    assert_eq!(d.client.deadline(&cfg), Some(cfg.stall_limit_ms));
    d.poll(&cfg, cfg.stall_limit_ms - 1);
    assert!(d.client.is_busy());
    d.poll(&cfg, cfg.stall_limit_ms);
    assert_eq!(d.last(), "Failed(Stalled { received: 5000 })");
    assert!(d.otadata_untouched());
    // No head within the timeout.
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    d.respond(&cfg, b"HTTP/1.1 200 OK\r\n", 100);
    d.poll(&cfg, DEFAULT_TIMEOUT_MS);
    assert_eq!(d.last(), "Failed(HeadTimeout)");
    assert_eq!(PullError::HeadTimeout.code(), -0x7007);
    // A corrupted byte in the image: downloaded, then refused by the verification.
    let mut bad = v2.clone();
    bad[20_000] ^= 0xFF;
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    let mut resp = ok_head(bad.len());
    resp.extend_from_slice(&bad);
    d.respond(&cfg, &resp, 1460);
    assert!(d.last().starts_with("Failed(Ota(Validate("), "{}", d.last());
    assert!(d.otadata_untouched());
}

#[test]
fn an_image_larger_than_the_slot_is_refused_before_any_erase() {
    let cfg = Config::esp_https_ota("1.0.0");
    let v2 = image("2.0.0", 2000);
    let mut d = Device::new();
    d.start(&cfg, "http://h/");
    // Claims 2 MiB: more than the 1.75 MiB slot.
    let mut resp = ok_head(2 << 20);
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 1460);
    assert_eq!(d.last(), "Failed(Ota(InvalidSize { size: 2097152, partition: 1835008 }))");
    assert!(d.flash.ops.is_empty());
}

#[test]
fn connect_failures_say_why() {
    let cfg = Config::esp_https_ota("1.0.0");
    let mut d = Device::new();
    d.client.start("https://h/", &mut d.out);
    let (mut sink, client, out) = d.sink();
    client.connect_failed(ConnectError::Tls(TlsFailure::UnknownIssuer), &mut sink, out);
    assert_eq!(d.last(), "Failed(Connect(Tls(UnknownIssuer)))");
    assert_eq!(PullError::Connect(ConnectError::Refused).code(), 0x7002);
    let mut d = Device::new();
    d.client.start("ftp://h/", &mut d.out);
    assert_eq!(d.last(), "Failed(BadUrl(Scheme))");
    let _ = cfg;
}

fn facts() -> DeviceFacts<'static> {
    DeviceFacts {
        sta_mac: [0x02, 0x07, 0x7A, 0xC3, 0x00, 0x01],
        ap_mac: [0x02, 0x07, 0x7A, 0xC3, 0x00, 0x02],
        free_space: 0x1C0000,
        sketch_size: 181_232,
        sketch_md5: Some([0xAB; 16]),
        sketch_sha256: Some([0x5C; 32]),
        chip_size: 4 << 20,
        sdk_version: "v5.5.5",
        version: "1.0.0",
    }
}

fn md5_hex(b: &[u8]) -> String {
    let d: [u8; 16] = Md5::digest(b).into();
    let mut out = [0u8; 32];
    crate::hex::encode_lower(&d, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn the_arduino_updater_sends_its_headers_and_checks_x_md5() {
    let cfg = Config::arduino(facts(), "1.0.0");
    let v2 = image("2.0.0", 30_000);
    let mut d = Device::new();
    d.start(&cfg, "http://10.0.2.2:8070/update");
    assert_eq!(
        String::from_utf8(d.out.sent.clone()).unwrap(),
        "GET /update HTTP/1.0\r\nHost: 10.0.2.2:8070\r\nUser-Agent: ESP32-http-Update\r\nConnection: close\r\n\
         Cache-Control: no-cache\r\nx-ESP32-STA-MAC: 02:07:7A:C3:00:01\r\nx-ESP32-AP-MAC: 02:07:7A:C3:00:02\r\n\
         x-ESP32-free-space: 1835008\r\nx-ESP32-sketch-size: 181232\r\n\
         x-ESP32-sketch-md5: abababababababababababababababab\r\n\
         x-ESP32-sketch-sha256: 5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C\r\n\
         x-ESP32-chip-size: 4194304\r\n\
         x-ESP32-sdk-version: v5.5.5\r\nx-ESP32-mode: sketch\r\nx-ESP32-version: 1.0.0\r\n\r\n"
    );
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-MD5: {}\r\n\r\n",
        v2.len(),
        md5_hex(&v2).to_uppercase()
    )
    .into_bytes();
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 1460);
    assert!(d.last().starts_with("Complete("), "{:?}", d.out.events);
    // 304: no update, nothing written, not an error.
    let mut d = Device::new();
    d.start(&cfg, "http://h/update");
    d.respond(&cfg, b"HTTP/1.1 304 Not Modified\r\n\r\n", 10);
    assert_eq!(d.last(), "NoUpdate");
    assert!(d.flash.ops.is_empty());
    // A wrong x-MD5 fails only after the download, and the boot slot stays.
    let mut d = Device::new();
    d.start(&cfg, "http://h/update");
    let mut resp =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-MD5: {}\r\n\r\n", v2.len(), md5_hex(b"other"))
            .into_bytes();
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 1460);
    assert_eq!(d.last(), "Failed(Update(Md5))");
    assert!(d.otadata_untouched());
    assert_eq!(PullError::Update(UpdateError::Md5).code(), 7);
}

#[test]
fn the_arduino_updaters_refusals_have_its_codes() {
    let cfg = Config::arduino(facts(), "1.0.0");
    let cases: [(&str, PullError, i32); 6] = [
        ("HTTP/1.1 200 OK\r\n\r\n\u{e9}", PullError::NoSize, -101),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 9000000\r\n\r\n",
            PullError::TooLessSpace { length: 9_000_000 },
            -100,
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nx-MD5: 123\r\n\r\n", PullError::FaultyMd5, -105),
        ("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nPK\x03\x04", PullError::BinHeader { found: 80 }, -106),
        ("HTTP/1.1 404 Not Found\r\n\r\n", PullError::Status(404), -1),
        // Redirects are not followed by default: "Wrong HTTP Code".
        ("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", PullError::Status(302), -1),
    ];
    for (resp, want, code) in cases {
        let mut d = Device::new();
        d.start(&cfg, "http://h/update");
        d.respond(&cfg, resp.as_bytes(), 3);
        assert_eq!(d.last(), format!("Failed({want:?})"), "{resp:?}");
        assert_eq!(want.code(), code);
        assert!(d.flash.ops.is_empty());
    }
}

#[test]
fn heads_and_bodies_are_framed_as_http_says() {
    let mut r = HeadReader::default();
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nx-md5: 00112233445566778899AABBCCDDEEFF\r\n\r\nrest";
    let (used, h) = r.feed(head);
    assert_eq!(used, head.len() - 4);
    let h = h.unwrap().unwrap();
    assert_eq!((h.status, h.chunked, h.content_length), (200, true, None));
    assert_eq!(
        h.md5,
        Md5Header::Valid([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF
        ])
    );
    let bad: [(&[u8], HeadError); 4] = [
        (b"HTTP/1.1 20 OK\r\n\r\n", HeadError::StatusLine),
        (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", HeadError::Header),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", HeadError::Header),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", HeadError::Encoding),
    ];
    for (text, want) in bad {
        assert_eq!(HeadReader::default().feed(text).1.unwrap().unwrap_err(), want);
    }
    let long = vec![b'a'; response::MAX_HEAD + 10];
    assert_eq!(HeadReader::default().feed(&long).1.unwrap().unwrap_err(), HeadError::TooLong);
    // Chunked bodies: sizes, extensions, trailers; malformed ones refused.
    let mut b = Body::new(Framing::Chunked);
    let mut got = Vec::new();
    let input = b"3\r\nabc\r\nA;x=y\r\n0123456789\r\n0\r\n\r\nnext";
    let used = b.feed(input, |d| got.extend_from_slice(d)).unwrap();
    assert_eq!(got, b"abc0123456789");
    assert!(b.complete());
    assert_eq!(used, input.len() - 4);
    for bad in [&b"zz\r\n"[..], b"3\r\nabcXY", b"\r\n", b"FFFFFFFFFF\r\n"] {
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.feed(bad, |_| {}), Err(BodyError::Chunk), "{bad:?}");
    }
}

/// The resume record in the device's NVS, if there is one.
fn resume_record(d: &mut Device) -> Option<(String, u32)> {
    let nvs = *d.table.nvs().unwrap();
    let mut buf = [0u8; 256];
    crate::resume::load(&mut d.flash, &nvs, &mut buf).map(|(url, at)| (url.to_string(), at))
}

/// The same flash after a power cycle: a new client, no update in progress.
fn rebooted(d: Device) -> Device {
    Device { client: Client::default(), update: None, out: Rec::default(), now: 0, ..d }
}

fn partial_head(first: usize, total: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{}/{total}\r\nContent-Length: {}\r\n\r\n",
        total - 1,
        total - first
    )
    .into_bytes()
}

/// v2 cut at byte 20,000 with resumption on: the record says where a resume starts.
fn cut_pull(cfg: &Config<'_>, v2: &[u8], step: usize) -> Device {
    let mut d = Device::new();
    d.start(cfg, "http://h/v2.bin");
    let mut resp = ok_head(v2.len());
    resp.extend_from_slice(&v2[..20_000]);
    d.respond(cfg, &resp, step);
    d.close(cfg);
    assert!(d.last().starts_with("Failed(Truncated"), "{}", d.last());
    d
}

#[test]
fn a_cut_pull_resumes_with_range_where_its_record_says() {
    let mut cfg = Config::esp_https_ota("1.0.0");
    cfg.resume = true;
    let v2 = image("2.0.0", 40_000);
    // However TCP cut the body, the checkpoint is the last whole 4 KiB: 16384.
    for step in [1, 1000, 1460, usize::MAX] {
        let d = cut_pull(&cfg, &v2, step);
        let mut d = rebooted(d);
        assert_eq!(resume_record(&mut d), Some(("http://h/v2.bin".to_string(), 16384)), "step {step}");
        let ops_before = d.flash.ops.len();
        d.client.start_at("http://h/v2.bin", 16384, &mut d.out);
        d.client.connected(&cfg, 0, &mut d.out);
        let request = String::from_utf8(d.out.sent.clone()).unwrap();
        assert!(request.contains("\r\nRange: bytes=16384-\r\n"), "{request}");
        let mut resp = partial_head(16384, v2.len());
        resp.extend_from_slice(&v2[16384..]);
        d.respond(&cfg, &resp, step);
        assert!(d.out.events.iter().any(|e| e.starts_with("Resumed { at: 16384")), "{:?}", d.out.events);
        assert!(d.last().starts_with("Complete(Switched { slot: 1"), "step {step}: {:?}", d.out.events);
        assert_eq!(&d.flash.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
        // Nothing below the record was erased again.
        let erased_low = d.flash.ops[ops_before..]
            .iter()
            .any(|op| matches!(*op, Op::Erase(a) if (0x1D0000..0x1D0000 + 16384).contains(&a)));
        assert!(!erased_low);
        assert_eq!(resume_record(&mut d), None, "the record goes before the boot switch");
    }
}

#[test]
fn servers_that_do_not_honour_range_restart_or_fail_the_resume() {
    let mut cfg = Config::esp_https_ota("1.0.0");
    cfg.resume = true;
    let v2 = image("2.0.0", 40_000);
    // 200: the whole image, written from byte 0.
    let mut d = rebooted(cut_pull(&cfg, &v2, 1460));
    d.client.start_at("http://h/v2.bin", 16384, &mut d.out);
    d.client.connected(&cfg, 0, &mut d.out);
    let mut resp = ok_head(v2.len());
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 1460);
    assert!(d.out.events.contains(&"RangeIgnored { status: 200 }".to_string()), "{:?}", d.out.events);
    assert!(d.last().starts_with("Complete(Switched { slot: 1"), "{:?}", d.out.events);
    assert_eq!(&d.flash.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
    // 416: asked again without Range.
    let mut d = rebooted(cut_pull(&cfg, &v2, 1460));
    d.client.start_at("http://h/v2.bin", 16384, &mut d.out);
    d.client.connected(&cfg, 0, &mut d.out);
    d.respond(
        &cfg,
        b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */40000\r\nContent-Length: 0\r\n\r\n",
        1460,
    );
    assert!(d.out.events.contains(&"RangeIgnored { status: 416 }".to_string()), "{:?}", d.out.events);
    assert_eq!(resume_record(&mut d), None);
    let again = d.out.events.iter().filter(|e| e.starts_with("Requesting")).count();
    assert_eq!(again, 2, "{:?}", d.out.events);
    // A 206 that starts elsewhere: refused before a byte is written, the slot untouched.
    let mut d = rebooted(cut_pull(&cfg, &v2, 1460));
    d.client.start_at("http://h/v2.bin", 16384, &mut d.out);
    d.client.connected(&cfg, 0, &mut d.out);
    let slot_before = d.flash.data[0x1D0000..0x1D0000 + 0x10000].to_vec();
    let mut resp = partial_head(0, v2.len());
    resp.extend_from_slice(&v2);
    d.respond(&cfg, &resp, 1460);
    assert_eq!(d.last(), "Failed(BadRange { first: 0 })");
    assert_eq!(PullError::BadRange { first: 0 }.name(), "bad_range");
    assert_eq!(&d.flash.data[0x1D0000..0x1D0000 + 0x10000], &slot_before[..]);
    assert!(d.otadata_untouched());
}

#[test]
fn without_resumption_no_record_is_kept_and_no_range_is_asked() {
    let cfg = Config::esp_https_ota("1.0.0");
    let v2 = image("2.0.0", 40_000);
    let mut d = cut_pull(&cfg, &v2, 1460);
    assert_eq!(resume_record(&mut d), None);
    assert!(!String::from_utf8(d.out.sent.clone()).unwrap().contains("Range:"));
}

#[test]
fn every_error_name_is_listed_once() {
    use crate::image::ImageError;
    use crate::proto::arduino::UpdateError;
    use crate::url::UrlError;
    let all = [
        PullError::BadUrl(UrlError::Scheme),
        PullError::Connect(ConnectError::Tls(TlsFailure::WrongName)),
        PullError::Connect(ConnectError::Refused),
        PullError::HeadTimeout,
        PullError::ClosedInHead,
        PullError::Head(HeadError::StatusLine),
        PullError::Status(404),
        PullError::NotModified,
        PullError::RedirectWithoutLocation,
        PullError::RedirectDowngrade,
        PullError::TooManyRedirects,
        PullError::ChipId { found: 0 },
        PullError::ImageTooShort { received: 0 },
        PullError::AppDesc,
        PullError::SameVersion,
        PullError::Downgrade,
        PullError::Truncated { received: 0 },
        PullError::Stalled { received: 0 },
        PullError::Body(BodyError::Chunk),
        PullError::Ota(crate::writer::OtaError::InvalidSize { size: 0, partition: 0 }),
        PullError::Ota(crate::writer::OtaError::InvalidMagic { found: 0 }),
        PullError::Ota(crate::writer::OtaError::Validate(ImageError::InvalidMagic { found: 0 })),
        PullError::Ota(crate::writer::OtaError::NoUpdatePartition),
        PullError::TooLessSpace { length: 0 },
        PullError::NoSize,
        PullError::FaultyMd5,
        PullError::BinHeader { found: 0 },
        PullError::Update(UpdateError::Md5),
        PullError::Update(UpdateError::Write),
        PullError::BadRange { first: 0 },
    ];
    let names: Vec<&str> = all.iter().map(|e| e.name()).collect();
    assert_eq!(names, PullError::NAMES, "one of each, in NAMES' order");
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
    assert!(crate::proto::mqtt_pull::AGENT_ERRORS.iter().all(|a| !names.contains(a)));
}
