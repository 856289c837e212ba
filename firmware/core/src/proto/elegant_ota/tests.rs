//! The portal driven request by request, each request on its own connection as a browser's
//! `fetch` and `XMLHttpRequest` make them, against a RAM flash: what each answers, what it logs,
//! and what it leaves in the flash.

use super::*;
use crate::flash::ram::RamFlash;
use crate::image_builder::{ImageSpec, build};
use crate::otadata::{OtaEntry, OtaState};
use crate::partition::PartitionTable;
use crate::session::{Session, Target};
use crate::testutil::esphome_4mb_table;
use crate::writer::OtaConfig;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

const BOUNDARY: &str = "----WebKitFormBoundaryT3st";
/// `admin:admin`.
const ADMIN: &str = "Basic YWRtaW46YWRtaW4=";

fn image(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    build(&spec, &mut v).unwrap();
    v
}

fn md5_hex(bytes: &[u8]) -> String {
    let m = crate::script::md5_hex(bytes);
    String::from_utf8(m.to_vec()).unwrap()
}

#[derive(Default)]
struct Recorder {
    sent: Vec<u8>,
    closed: bool,
    lines: Vec<String>,
    progress: Vec<u8>,
    complete: Option<Switched>,
    opened: Option<Option<Opened>>,
}

impl Output for Recorder {
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.closed = true;
    }
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Line(l) => self.lines.push(l.to_string()),
            Event::Progress { percent } => self.progress.push(percent),
            Event::Complete(s) => self.complete = Some(s),
            Event::Opened(o) => self.opened = Some(Some(o)),
            Event::OpenedTaken => self.opened = Some(None),
            Event::Received => {}
        }
    }
}

/// A device running v1 from ota_0; the update a start opened is carried between requests as
/// the service carries it.
struct Bench {
    update: crate::session::UpdateSlot,
    flash: RamFlash,
    table: PartitionTable,
    credentials: Option<Credentials>,
    opened: Option<Opened>,
    lines: Vec<String>,
}

/// One request's answer.
struct Answer {
    status: u16,
    head: String,
    body: String,
    reboot: bool,
    progress: Vec<u8>,
    complete: Option<Switched>,
}

impl Bench {
    fn new(credentials: Option<(&str, &str)>) -> Self {
        let table = esphome_4mb_table();
        let mut flash = RamFlash::new(4 << 20);
        let v1 = image("1.0.0", 100);
        flash.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
        flash.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::Valid).to_bytes());
        Bench {
            update: Default::default(),
            flash,
            table,
            credentials: credentials.map(|(u, p)| Credentials::new(u, p).unwrap()),
            opened: None,
            lines: Vec::new(),
        }
    }

    /// One connection: `request` in pieces of `piece` bytes, then (if `cut`) a disconnect.
    fn request_with(&mut self, request: &[u8], piece: usize, cut: bool) -> Option<Answer> {
        let target = Target {
            table: &self.table,
            running: *self.table.ota(0).unwrap(),
            config: OtaConfig::default(),
            update: &self.update,
        };
        let site = Site {
            credentials: self.credentials.as_ref(),
            slot_size: self.table.ota(1).unwrap().size,
            running_len: 4096,
            others_busy: false,
            opened: self.opened,
        };
        let mut out = Recorder::default();
        let mut session = Session::new(Server::new(0));
        session.with(&mut self.flash, &target, |s, sink| {
            for p in request.chunks(piece) {
                s.feed(p, 0, &site, sink, &mut out);
            }
            if cut {
                s.closed(sink, &mut out);
            }
        });
        if let Some(o) = out.opened {
            self.opened = o;
        }
        self.lines.extend(out.lines.iter().cloned());
        let text = String::from_utf8_lossy(&out.sent).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        assert!(out.closed, "every answer closes its connection");
        Some(Answer {
            status: head[9..12].parse().unwrap(),
            head: head.to_string(),
            body: body.to_string(),
            reboot: session.server.reboot_requested(),
            progress: out.progress,
            complete: out.complete,
        })
    }

    fn request(&mut self, request: &[u8]) -> Answer {
        self.request_with(request, 1460, false).expect("an answer")
    }

    fn start(&mut self, query: &str, auth: Option<&str>) -> Answer {
        let auth = auth.map(|a| std::format!("Authorization: {a}\r\n")).unwrap_or_default();
        self.request(std::format!("GET /ota/start?{query} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes())
    }

    fn otadata(&self) -> Vec<u8> {
        self.flash.data[0x9000..0xB000].to_vec()
    }

    fn slot_1(&self) -> &[u8] {
        let p = self.table.ota(1).unwrap();
        &self.flash.data[p.offset as usize..(p.offset + p.size) as usize]
    }

    fn update_open(&self) -> bool {
        self.update.borrow().is_some()
    }
}

fn upload(file: &[u8], auth: Option<&str>) -> Vec<u8> {
    let mut body = std::format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v2.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(std::format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let auth = auth.map(|a| std::format!("Authorization: {a}\r\n")).unwrap_or_default();
    let mut req = std::format!(
        "POST /ota/upload HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[test]
fn start_then_upload_switches_the_boot_slot_and_asks_for_the_restart() {
    let img = image("2.0.0", 30_000);
    for piece in [1, 1460, 1 << 20] {
        let mut b = Bench::new(None);
        let a = b.start(&std::format!("mode=fr&hash={}", md5_hex(&img)), None);
        assert_eq!((a.status, a.body.as_str()), (200, "OK"));
        assert!(b.update_open() && b.opened.is_some_and(|o| o.md5.is_some()));
        let a = b.request_with(&upload(&img, None), piece, false).unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "OK"), "pieces of {piece}");
        assert_eq!(a.head.matches("Connection: close").count(), 1);
        assert!(a.reboot);
        assert_eq!(a.complete.map(|s| (s.slot, s.seq)), Some((1, 2)));
        assert_eq!(&b.slot_1()[..img.len()], &img[..]);
        assert_eq!(b.opened, None);
        if piece == 1460 {
            assert_eq!(a.progress, [25, 50, 75]);
        }
        assert_eq!(
            b.lines,
            [
                std::format!(
                    "OTA started: ota_1, Update.begin {} bytes, MD5 given",
                    b.table.ota(1).unwrap().size
                ),
                "upload of `v2.bin`".into(),
                "update complete: rebooting in 2 s".into(),
            ]
        );
    }
}

#[test]
fn a_bad_hash_is_refused_before_the_slot_opens_so_the_next_start_works() {
    let img = image("2.0.0", 30_000);
    let mut b = Bench::new(None);
    for hash in ["0123", "zz23456789abcdef0123456789abcdef", &std::format!("{}0", md5_hex(&img))] {
        let a = b.start(&std::format!("mode=fr&hash={hash}"), None);
        assert_eq!((a.status, a.body.as_str()), (400, pages::BAD_HASH), "{hash}");
        assert!(!b.update_open() && b.opened.is_none(), "{hash}: nothing may stay open");
    }
    // The original's bug: the slot stayed open and every later start was refused.
    let a = b.start(&std::format!("hash={}", md5_hex(&img).to_uppercase()), None);
    assert_eq!(a.status, 200);
    assert_eq!(b.request(&upload(&img, None)).status, 200);
}

#[test]
fn a_digest_that_does_not_match_fails_the_upload_and_keeps_the_boot_slot() {
    let img = image("2.0.0", 30_000);
    let mut b = Bench::new(None);
    let before = b.otadata();
    b.start(&std::format!("hash={}", md5_hex(b"something else")), None);
    let a = b.request(&upload(&img, None));
    assert_eq!((a.status, a.body.as_str(), a.reboot), (400, "MD5 Check Failed", false));
    assert_eq!(b.otadata(), before);
    assert!(!b.update_open());
    // No hash at all: nothing to check, the image is.
    b.start("mode=fr", None);
    assert_eq!(b.request(&upload(&img, None)).status, 200);
}

#[test]
fn refusals_leave_the_flash_untouched() {
    let img = image("2.0.0", 30_000);
    let mut b = Bench::new(None);
    let before = b.otadata();
    // No start: the original answers OK and restarts into the old image.
    let a = b.request(&upload(&img, None));
    assert_eq!((a.status, a.reboot), (400, false));
    assert_eq!(a.body, pages::NOT_STARTED);
    // The filesystem: this device has no such partition.
    let a = b.start("mode=fs", None);
    assert_eq!((a.status, a.body.as_str()), (400, "Partition Could Not be Found"));
    // Not an image.
    b.start("mode=fr", None);
    let a = b.request(&upload(&vec![0x42; 10_000], None));
    assert_eq!((a.status, a.body.as_str()), (400, "Decryption error"));
    // Larger than the slot, by its head alone.
    b.start("mode=fr", None);
    let big = std::format!(
        "POST /ota/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: 1000000000\r\n\r\n"
    );
    assert_eq!(b.request(big.as_bytes()).status, 413);
    assert_eq!(b.otadata(), before);
    assert!(b.slot_1().iter().all(|&x| x == 0xFF) || b.slot_1()[0] != 0xE9);
}

#[test]
fn credentials_guard_every_route_but_the_metadata() {
    let img = image("2.0.0", 30_000);
    let mut b = Bench::new(Some(("admin", "admin")));
    for route in ["/update", "/ota/start?mode=fr"] {
        let a = b.request(std::format!("GET {route} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(a.status, 401, "{route}");
        assert!(a.head.contains("WWW-Authenticate: Basic realm=\"Login Required\""));
    }
    assert!(!b.update_open());
    let a = b.request(b"GET /ota/metadata HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(a.status, 200);
    assert_eq!(b.start("mode=fr", Some(ADMIN)).status, 200);
    // An upload without them is read and dropped: the original writes its chunks anyway.
    let a = b.request(&upload(&img, None));
    assert_eq!(a.status, 401);
    assert!(b.slot_1().iter().take(img.len()).all(|&x| x == 0xFF));
    assert_eq!(b.request(&upload(&img, Some(ADMIN))).status, 200);
}

#[test]
fn the_page_and_the_metadata() {
    let mut b = Bench::new(None);
    let a = b.request(b"GET /update HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((a.status, a.body.as_str()), (200, pages::PAGE));
    let whole = a.head.len() + 4 + a.body.len();
    assert!(whole <= crate::proto::http_server::ANSWER_MAX, "the portal's answer is {whole} bytes");
    let a = b.request(b"GET /ota/metadata HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(a.head.contains("Content-Type: application/json"));
    let size = b.table.ota(1).unwrap().size;
    assert_eq!(
        a.body,
        std::format!("{{\"hw\":\"ESP32-C3\",\"ar\":true,\"fwa\":{size},\"fsa\":0,\"fwu\":4096}}")
    );
    assert_eq!(b.request(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").status, 404);
    assert_eq!(b.request(b"POST /ota/start HTTP/1.1\r\nHost: x\r\n\r\n").status, 405);
}

#[test]
fn a_second_start_replaces_the_first_and_a_cut_upload_closes_the_update() {
    let img = image("2.0.0", 30_000);
    let mut b = Bench::new(None);
    let before = b.otadata();
    b.start("mode=fr", None);
    assert_eq!(b.start("mode=fr", None).status, 200);
    assert!(b.lines.iter().any(|l| l == "a new start closes the update the last one opened"));
    let req = upload(&img, None);
    assert!(b.request_with(&req[..req.len() / 2], 1460, true).is_none(), "no answer to a cut request");
    assert!(b.lines.last().unwrap().starts_with("upload aborted after"));
    assert!(!b.update_open() && b.opened.is_none());
    assert_eq!(b.otadata(), before);
    b.start("mode=fr", None);
    assert_eq!(b.request(&upload(&img, None)).status, 200);
}

#[test]
fn md5_digests_parse_in_either_case_and_only_whole() {
    assert_eq!(parse_md5("000102030405060708090a0b0c0d0e0F"), Some(core::array::from_fn(|i| i as u8)));
    assert_eq!(parse_md5("00010203"), None);
    assert_eq!(parse_md5("g0010203040506070809000000000000"), None);
}
