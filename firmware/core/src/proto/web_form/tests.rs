//! The upload form driven request by request against a RAM flash: what each case answers, what
//! it logs, and what it leaves in the flash (spec §5's table for the web server).

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

fn image(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    build(&spec, &mut v).unwrap();
    v
}

#[derive(Default)]
struct Recorder {
    sent: Vec<u8>,
    closed: bool,
    lines: Vec<String>,
    progress: Vec<u8>,
    complete: Option<Switched>,
    received: bool,
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
            Event::Received => self.received = true,
            Event::Complete(s) => self.complete = Some(s),
        }
    }
}

/// A device running v1 from ota_0 with its form's server on one connection.
struct Bench {
    update: crate::session::UpdateSlot,
    flash: RamFlash,
    table: PartitionTable,
    session: Session<Server>,
    out: Recorder,
    credentials: Option<Credentials>,
    others_busy: bool,
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
            session: Session::new(Server::new(0)),
            out: Recorder::default(),
            credentials: credentials.map(|(u, p)| Credentials::new(u, p).unwrap()),
            others_busy: false,
        }
    }

    fn slot_size(&self) -> u32 {
        self.table.ota(1).unwrap().size
    }

    /// Runs `f` on the connection's server with a sink writing the bench's flash.
    fn with(&mut self, f: impl FnOnce(&mut Server, &Site<'_>, &mut dyn UpdateSink, &mut Recorder)) {
        let target = Target {
            table: &self.table,
            running: *self.table.ota(0).unwrap(),
            config: OtaConfig::default(),
            update: &self.update,
        };
        let site = Site {
            credentials: self.credentials.as_ref(),
            project: "otahil",
            version: "1.0.0",
            slot_size: self.table.ota(1).unwrap().size,
            others_busy: self.others_busy,
        };
        let out = &mut self.out;
        self.session.with(&mut self.flash, &target, |s, sink| f(s, &site, sink, out));
    }

    fn feed(&mut self, bytes: &[u8], now: u64) {
        self.with(|s, site, sink, out| s.feed(bytes, now, site, sink, out));
    }

    fn close(&mut self) {
        self.with(|s, _, sink, out| s.closed(sink, out));
    }

    fn poll(&mut self, now: u64) {
        self.with(|s, _, sink, out| s.poll(now, sink, out));
    }

    /// The answer's status, headers and body.
    fn answer(&self) -> (u16, String, String) {
        let text = String::from_utf8_lossy(&self.out.sent).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
        let status = head[9..12].parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn otadata(&self) -> Vec<u8> {
        self.flash.data[0x9000..0xB000].to_vec()
    }

    fn slot_1(&self) -> &[u8] {
        let p = self.table.ota(1).unwrap();
        &self.flash.data[p.offset as usize..(p.offset + p.size) as usize]
    }
}

/// A POST of `file` as the form's part `name`, with `auth` as its Authorization header.
fn post(name: &str, file: &[u8], auth: Option<&str>) -> Vec<u8> {
    let mut body = std::format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"v2.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(std::format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let auth = auth.map(|a| std::format!("Authorization: {a}\r\n")).unwrap_or_default();
    let mut req = std::format!(
        "POST /update HTTP/1.1\r\nHost: 10.0.2.15\r\n{auth}Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

/// `admin:admin`, the spec's vector.
const ADMIN: &str = "Basic YWRtaW46YWRtaW4=";

fn send_in_pieces(b: &mut Bench, req: &[u8], piece: usize) {
    for (i, p) in req.chunks(piece).enumerate() {
        b.feed(p, i as u64);
    }
}

#[test]
fn the_declared_size_is_the_slot_less_4_kib_rounded_down() {
    assert_eq!(declared_size(0x1C_0000), 0x1B_F000);
    assert_eq!(declared_size(0x1C_0800), 0x1B_F000);
    assert_eq!(declared_size(0x800), 0);
}

#[test]
fn an_upload_in_any_pieces_switches_the_boot_slot_and_answers_the_exact_success_page() {
    let img = image("2.0.0", 30_000);
    for piece in [1, 7, 1460, 100_000] {
        let mut b = Bench::new(None);
        send_in_pieces(&mut b, &post("firmware", &img, None), piece);
        let (status, head, body) = b.answer();
        assert_eq!((status, body.as_str()), (200, pages::SUCCESS_PAGE), "pieces of {piece}");
        assert!(head.contains("Connection: close"));
        assert!(b.out.closed && b.session.server.reboot_requested() && b.out.received);
        assert_eq!(b.out.complete.map(|s| (s.slot, s.seq)), Some((1, 2)));
        assert_eq!(&b.slot_1()[..img.len()], &img[..]);
        if piece <= 1460 {
            assert_eq!(b.out.progress, [25, 50, 75], "pieces of {piece}");
        }
        let declared = declared_size(b.slot_size());
        assert_eq!(
            b.out.lines,
            [std::format!("upload of `v2.bin` into ota_1 (Update.begin {declared} bytes)")]
        );
    }
}

#[test]
fn the_pages_and_what_is_not_there() {
    let mut b = Bench::new(None);
    b.feed(b"GET /update HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    let (status, head, body) = b.answer();
    assert_eq!((status, body.as_str()), (200, pages::FORM_PAGE));
    assert!(head.contains("Content-Type: text/html"));
    assert!(body.contains("name='firmware'") && body.contains("name='filesystem'"));
    let mut b = Bench::new(None);
    b.feed(b"GET / HTTP/1.1\r\n\r\n", 0);
    assert!(b.answer().2.contains("<span id='version'>1.0.0</span>"));
    let mut b = Bench::new(None);
    b.feed(b"GET /nope HTTP/1.1\r\n\r\n", 0);
    assert_eq!(b.answer().0, 404);
    let mut b = Bench::new(None);
    b.feed(b"DELETE /update HTTP/1.1\r\n\r\n", 0);
    let (status, head, _) = b.answer();
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, POST"));
    let mut b = Bench::new(None);
    b.feed(b"HEAD /update HTTP/1.1\r\n\r\n", 0);
    let (status, head, body) = b.answer();
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(head.contains(&std::format!("Content-Length: {}", pages::FORM_PAGE.len())));
}

#[test]
fn credentials_guard_the_page_and_the_upload_and_a_refused_upload_touches_nothing() {
    let img = image("2.0.0", 5_000);
    for auth in [None, Some("Basic YWRtaW46d3Jvbmc="), Some("Bearer YWRtaW46YWRtaW4=")] {
        let mut b = Bench::new(Some(("admin", "admin")));
        b.feed(b"GET /update HTTP/1.1\r\n\r\n", 0);
        let (status, head, _) = b.answer();
        assert_eq!(status, 401);
        assert!(head.contains("WWW-Authenticate: Basic realm=\"Login Required\""), "{head}");
        let mut b = Bench::new(Some(("admin", "admin")));
        let before = b.flash.data.clone();
        send_in_pieces(&mut b, &post("firmware", &img, auth), 1460);
        let (status, head, _) = b.answer();
        assert_eq!(status, 401, "{auth:?}");
        assert!(head.contains("WWW-Authenticate"));
        assert!(b.flash.data == before, "a refused upload wrote to the flash ({auth:?})");
        assert_eq!(b.out.lines, ["upload: authentication failed (401)"]);
    }
    let mut b = Bench::new(Some(("admin", "admin")));
    send_in_pieces(&mut b, &post("firmware", &img, Some(ADMIN)), 1460);
    assert_eq!(b.answer().2, pages::SUCCESS_PAGE);
}

#[test]
fn a_file_that_is_no_image_is_esp32s_decryption_error_with_status_200() {
    let mut b = Bench::new(None);
    let before = b.otadata();
    let text = vec![b'<'; 10_000];
    send_in_pieces(&mut b, &post("firmware", &text, None), 1460);
    let (status, _, body) = b.answer();
    assert_eq!((status, body.as_str()), (200, "Update error: Decryption error\r\n"));
    assert_eq!(b.otadata(), before);
    assert!(!b.session.server.reboot_requested());
    assert!(b.out.lines[1].starts_with("Update error: Decryption error ("), "{:?}", b.out.lines);
    assert!(b.update.borrow().is_none(), "the update is aborted, not left open");
}

#[test]
fn a_truncated_image_in_a_complete_body_cannot_be_activated() {
    let img = image("2.0.0", 30_000);
    let mut b = Bench::new(None);
    let before = b.otadata();
    send_in_pieces(&mut b, &post("firmware", &img[..img.len() - 100], None), 1460);
    assert_eq!(b.answer().2, "Update error: Could Not Activate The Firmware\r\n");
    assert_eq!(b.otadata(), before);
}

#[test]
fn an_image_larger_than_the_declared_size_is_not_enough_space() {
    let mut b = Bench::new(None);
    let declared = declared_size(b.slot_size()) as usize;
    // Larger than Update.begin's size but within what the body may carry.
    let mut img = image("2.0.0", 1000);
    img.resize(declared + 2048, 0xAB);
    let before = b.otadata();
    send_in_pieces(&mut b, &post("firmware", &img, None), 8192);
    let (status, _, body) = b.answer();
    assert_eq!((status, body.as_str()), (200, "Update error: Not Enough Space\r\n"));
    assert_eq!(b.otadata(), before);
}

#[test]
fn a_body_longer_than_the_slot_can_take_is_refused_before_it_is_read() {
    let mut b = Bench::new(None);
    let before = b.flash.data.clone();
    let head = std::format!(
        "POST /update HTTP/1.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: 1000000000\r\n\r\n--{BOUNDARY}\r\n"
    );
    b.feed(head.as_bytes(), 0);
    let (status, _, body) = b.answer();
    assert_eq!((status, body.as_str()), (413, "Update error: Not Enough Space\r\n"));
    assert!(b.out.closed && b.session.server.is_closed());
    assert!(b.flash.data == before);
}

#[test]
fn the_filesystem_part_has_no_partition_here() {
    let mut b = Bench::new(None);
    let before = b.flash.data.clone();
    send_in_pieces(&mut b, &post("filesystem", &image("2.0.0", 100), None), 1460);
    assert_eq!(b.answer().2, "Update error: Partition Could Not be Found\r\n");
    assert!(b.flash.data == before);
}

#[test]
fn a_disconnect_or_a_stall_mid_upload_aborts_and_the_next_upload_starts_clean() {
    let img = image("2.0.0", 30_000);
    let req = post("firmware", &img, None);
    let mut b = Bench::new(None);
    let before = b.otadata();
    b.feed(&req[..20_000], 0);
    assert!(b.session.server.writing());
    b.close();
    assert!(b.out.sent.is_empty(), "no answer to a client that left");
    assert!(b.out.lines.last().unwrap().starts_with("upload aborted after "), "{:?}", b.out.lines);
    assert!(b.update.borrow().is_none());
    assert_eq!(b.otadata(), before);
    // A stall: the deadline passes.
    let mut b = Bench::new(None);
    b.feed(&req[..20_000], 1000);
    assert_eq!(b.session.server.deadline(), Some(1000 + DATA_TIMEOUT_MS));
    b.poll(1000 + DATA_TIMEOUT_MS - 1);
    assert!(b.session.server.writing());
    b.poll(1000 + DATA_TIMEOUT_MS);
    assert!(b.out.closed && b.update.borrow().is_none());
    assert!(b.out.lines.last().unwrap().ends_with("no data for 5 s"));
    // A new connection's upload over what the first left.
    let mut b2 = Bench { session: Session::new(Server::new(0)), out: Recorder::default(), ..b };
    send_in_pieces(&mut b2, &req, 1460);
    assert_eq!(b2.answer().2, pages::SUCCESS_PAGE);
}

#[test]
fn a_body_that_ends_inside_the_file_aborts_with_the_update_error() {
    let img = image("2.0.0", 30_000);
    let mut req = post("firmware", &img, None);
    // The closing delimiter never comes, though the body is as long as announced.
    let n = req.len();
    req[n - 30..].fill(b'x');
    let mut b = Bench::new(None);
    let before = b.otadata();
    send_in_pieces(&mut b, &req, 1460);
    assert_eq!(b.answer().2, "Update error: Aborted\r\n");
    assert_eq!(b.otadata(), before);
}

#[test]
fn bad_requests_get_their_status_and_the_flash_stays() {
    let cases: &[(&[u8], u16)] = &[
        (b"POST /update HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /update HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"GET /update HTTP/2.0\r\n\r\n", 505),
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /update HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST /update HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 8\r\n\r\n--x--\r\n\r\n", 400),
    ];
    for (req, want) in cases {
        let mut b = Bench::new(None);
        let before = b.flash.data.clone();
        b.feed(req, 0);
        assert_eq!(b.answer().0, *want, "{}", String::from_utf8_lossy(req));
        assert!(b.out.closed);
        assert!(b.flash.data == before);
    }
    // An endless head: 431 once the buffer is full, wherever the bytes stop.
    let mut b = Bench::new(None);
    b.feed(b"GET /update HTTP/1.1\r\n", 0);
    for _ in 0..100 {
        b.feed(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 0);
    }
    assert_eq!(b.answer().0, 431);
}

#[test]
fn an_upload_while_another_path_updates_is_refused_whole() {
    let mut b = Bench::new(None);
    b.others_busy = true;
    let before = b.flash.data.clone();
    send_in_pieces(&mut b, &post("firmware", &image("2.0.0", 100), None), 1460);
    let (status, _, body) = b.answer();
    assert_eq!((status, body.as_str()), (503, "Update error: another update is running\r\n"));
    assert!(b.flash.data == before);
}

#[test]
fn only_the_first_file_is_written() {
    let img = image("2.0.0", 3_000);
    let mut req = post("firmware", &img, None);
    // Append a second file part before the closing delimiter: rebuild the body by hand.
    let body = std::format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"a.bin\"\r\n\r\n"
    );
    let mut bytes = body.into_bytes();
    bytes.extend_from_slice(&img);
    bytes.extend_from_slice(
        std::format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"x\"; filename=\"b.bin\"\r\n\r\nzzz\r\n--{BOUNDARY}--\r\n").as_bytes(),
    );
    req.clear();
    req.extend_from_slice(
        std::format!(
            "POST /update HTTP/1.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(&bytes);
    let mut b = Bench::new(None);
    send_in_pieces(&mut b, &req, 512);
    assert_eq!(b.answer().2, pages::SUCCESS_PAGE);
    assert!(b.out.lines.iter().any(|l| l == "a second file in the upload ignored"), "{:?}", b.out.lines);
    assert_eq!(&b.slot_1()[..img.len()], &img[..]);
}

#[test]
fn settings_are_off_unless_provisioned_and_credentials_need_both_halves() {
    use crate::provision::provisioning_page;
    use crate::testutil::{BASE_SETTINGS, provisioned_flash};
    let (mut flash, table) = provisioned_flash(Some(&provisioning_page(&BASE_SETTINGS, &[]).unwrap()));
    assert_eq!(
        settings::WebFormSettings::load(
            &mut flash,
            &table,
            settings::Pages::Form,
            &mut |_: &crate::log::LogEvent<'_>| {}
        ),
        None
    );
    let on =
        settings::Provision { pages: settings::Pages::Form, user: Some("admin"), password: Some("admin") };
    let (mut flash, table) = provisioned_flash(Some(&provisioning_page(&BASE_SETTINGS, &[&on]).unwrap()));
    let s = settings::WebFormSettings::load(
        &mut flash,
        &table,
        settings::Pages::Form,
        &mut |_: &crate::log::LogEvent<'_>| {},
    )
    .unwrap();
    assert!(s.credentials.unwrap().accept(Some(ADMIN)));
    assert_eq!(
        s.log_line(80).to_string(),
        "web update form on TCP port 80 at /update: credentials set (nvs)"
    );
    let half = settings::Provision { pages: settings::Pages::Form, user: Some("admin"), password: None };
    let (mut flash, table) = provisioned_flash(Some(&provisioning_page(&BASE_SETTINGS, &[&half]).unwrap()));
    let s = settings::WebFormSettings::load(
        &mut flash,
        &table,
        settings::Pages::Form,
        &mut |_: &crate::log::LogEvent<'_>| {},
    )
    .unwrap();
    assert_eq!(s.credentials, None, "a user without a password is no authentication, as in HTTPUpdateServer");
    let long = "x".repeat(65);
    let bad = settings::Provision { pages: settings::Pages::Form, user: Some(&long), password: Some("p") };
    assert!(provisioning_page(&BASE_SETTINGS, &[&bad]).is_err());
}

/// The sweep's script completes on a fresh device and lands the image.
#[test]
fn the_scripted_browser_upload_completes() {
    let mut b = Bench::new(None);
    let img = image("2.0.0", 30_000);
    let target = Target {
        table: &b.table,
        running: *b.table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &b.update,
    };
    let mut received = 0;
    crate::proto::UpdatePath::WebForm.script(&mut b.flash, &target, &img, &mut || received += 1).unwrap();
    assert_eq!(received, 1);
    let p = b.table.ota(1).unwrap();
    assert_eq!(&b.flash.data[p.offset as usize..p.offset as usize + img.len()], &img[..]);
}
