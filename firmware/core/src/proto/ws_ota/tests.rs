//! The page's socket driven frame by frame against a RAM flash, as a browser's script drives it:
//! what the device answers (byte for byte), what it logs, and what it leaves in the flash.

use super::*;
use crate::flash::ram::RamFlash;
use crate::image_builder::{ImageSpec, build};
use crate::otadata::{OtaEntry, OtaState};
use crate::partition::PartitionTable;
use crate::proto::http_server::websocket::{Frame, apply_mask, frame_head};
use crate::session::{Session, Target};
use crate::testutil::esphome_4mb_table;
use crate::writer::OtaConfig;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

const MASK: [u8; 4] = [9, 8, 7, 6];
const HANDSHAKE: &str = "GET /ota/ws HTTP/1.1\r\nHost: device\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn image(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    build(&spec, &mut v).unwrap();
    v
}

fn masked(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; 14];
    let mut v = frame_head(true, opcode, payload.len() as u64, Some(MASK), &mut head).to_vec();
    let mut body = payload.to_vec();
    apply_mask(&mut body, MASK, 0);
    v.extend_from_slice(&body);
    v
}

fn text(s: &str) -> Vec<u8> {
    masked(Opcode::Text, s.as_bytes())
}

#[derive(Default)]
struct Recorder {
    sent: Vec<u8>,
    closed: bool,
    lines: Vec<String>,
    started: bool,
    released: bool,
    complete: bool,
    rollback: Option<bool>,
    restart: bool,
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
            Event::Started => self.started = true,
            Event::Released => self.released = true,
            Event::Complete(_) => self.complete = true,
            Event::ProcessRollback(b) => self.rollback = Some(b),
            Event::Restart => self.restart = true,
            Event::Progress { .. } | Event::Received => {}
        }
    }
}

impl Recorder {
    /// The frames the device sent after its `101` head: (opcode, payload as text).
    fn frames(&self) -> Vec<(Opcode, String)> {
        let text = String::from_utf8_lossy(&self.sent);
        let Some(at) = text.find("\r\n\r\n") else { return Vec::new() };
        let mut reader = websocket::FrameReader::new(false);
        let mut frames = Vec::new();
        let mut payload = Vec::new();
        reader
            .feed(&self.sent[at + 4..], &mut |e| match e {
                FrameEvent::Start(_) => payload.clear(),
                FrameEvent::Payload(p) => payload.extend_from_slice(p),
                FrameEvent::End(Frame { opcode, .. }) => {
                    frames.push((opcode, String::from_utf8_lossy(&payload).into_owned()))
                }
            })
            .unwrap();
        frames
    }

    fn texts(&self) -> Vec<String> {
        self.frames().into_iter().filter(|(o, _)| *o == Opcode::Text).map(|(_, t)| t).collect()
    }
}

/// A device running v1 from ota_0, and one connection to it.
struct Bench {
    update: crate::session::UpdateSlot,
    flash: RamFlash,
    table: PartitionTable,
    session: Session<Server>,
    site: Site,
    out: Recorder,
}

impl Bench {
    fn new() -> Self {
        let table = esphome_4mb_table();
        let mut flash = RamFlash::new(4 << 20);
        let v1 = image("1.0.0", 100);
        flash.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
        flash.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::Valid).to_bytes());
        let site = Site {
            slot_size: table.ota(1).unwrap().size,
            others_busy: false,
            pending: false,
            running: SlotName(BootIndex::Ota(0)),
        };
        Bench {
            update: Default::default(),
            flash,
            table,
            session: Session::new(Server::new(0)),
            site,
            out: Recorder::default(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let target = Target {
            table: &self.table,
            running: *self.table.ota(0).unwrap(),
            config: OtaConfig::default(),
            update: &self.update,
        };
        let (site, out) = (self.site, &mut self.out);
        self.session.with(&mut self.flash, &target, |s, sink| s.feed(bytes, 0, &site, sink, out));
    }

    fn close(&mut self) {
        let target = Target {
            table: &self.table,
            running: *self.table.ota(0).unwrap(),
            config: OtaConfig::default(),
            update: &self.update,
        };
        let out = &mut self.out;
        self.session.with(&mut self.flash, &target, |s, sink| s.closed(sink, out));
    }

    fn open(&mut self) {
        self.feed(HANDSHAKE.as_bytes());
        let head = String::from_utf8_lossy(&self.out.sent).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    }

    /// Answers every `otaGetChunk` with what the page would send, chunk sizes from `sizes`
    /// (cycled; `None`: as asked).
    fn upload(&mut self, file: &[u8], size: Option<usize>) {
        self.feed(&text(&std::format!(r#"{{"name":"otaSize","value":{}}}"#, file.len())));
        let mut answered = 0;
        loop {
            let texts = self.out.texts();
            let asks: Vec<u32> = texts
                .iter()
                .filter_map(|t| {
                    let (cmd, v) = parse_message(t).ok()?;
                    (cmd == "otaGetChunk").then(|| v.unwrap().parse().unwrap())
                })
                .collect();
            let Some(&offset) = asks.get(answered) else { return };
            answered += 1;
            let offset = offset as usize;
            let n = size.unwrap_or(CHUNK_SIZE as usize);
            let end = (offset + n).min(file.len());
            self.feed(&masked(Opcode::Binary, &file[offset..end]));
            if self.out.closed {
                return;
            }
        }
    }

    fn boot_copy(&self) -> OtaEntry {
        OtaEntry::parse(self.flash.data[0xA000..0xA020].try_into().unwrap())
    }
}

#[test]
fn an_upload_is_asked_for_chunk_by_chunk_and_ends_with_ota_end() {
    let mut b = Bench::new();
    b.open();
    let v2 = image("2.0.0", 20_000);
    b.upload(&v2, None);
    let texts = b.out.texts();
    assert_eq!(texts[0], r#"{"name":"otaSetChunkSize","value":8192}"#);
    assert_eq!(texts[1], r#"{"name":"otaGetChunk","value":0}"#);
    // The original's spacing: a space each side of later offsets.
    assert_eq!(texts[2], r#"{"name":"otaGetChunk","value": 8192 }"#);
    assert_eq!(texts[3], r#"{"name":"otaGetChunk","value": 16384 }"#);
    assert_eq!(texts.last().unwrap(), r#"{"name":"otaEnd","value":"OK" }"#);
    assert!(b.out.started && b.out.released && b.out.complete && !b.out.closed);
    assert_eq!(b.boot_copy().seq, 2);
    assert_eq!(&b.flash.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
    assert!(
        b.out.lines.iter().any(|l| l.starts_with("otaSize ") && l.ends_with("asking for 8192-byte chunks"))
    );
    // Whole slot erased first (esp_ota_begin(OTA_SIZE_UNKNOWN)).
    assert!(b.out.lines.iter().any(|l| l == "OTA END OK: waiting for the page's restart"));
}

#[test]
fn chunks_of_other_sizes_are_taken_as_they_come() {
    let mut b = Bench::new();
    b.open();
    let v2 = image("2.0.0", 20_000);
    b.upload(&v2, Some(1000));
    assert!(b.out.complete, "{:?}", b.out.lines);
    assert_eq!(b.out.texts().iter().filter(|t| t.contains("otaGetChunk")).count(), v2.len().div_ceil(1000));
}

#[test]
fn the_specs_spacing_and_sizes_are_refused_where_the_original_breaks() {
    // otaSize 0 and non-numbers: the socket stays.
    let mut b = Bench::new();
    b.open();
    b.feed(&text(r#"{"name":"otaSize","value":0}"#));
    b.feed(&text(r#"{"name":"otaSize","value":"abc"}"#));
    assert_eq!(b.out.texts(), [r#"{"name":"otaError","value":"Error ota size = 0"}"#; 2]);
    assert!(!b.out.closed);
    // Larger than the slot: refused before any erase, the socket closes.
    let ops = b.flash.ops.len();
    b.feed(&text(r#"{"name":"otaSize","value":99999999}"#));
    assert_eq!(b.out.texts().last().unwrap(), r#"{"name":"otaError","value":"Error start ota"}"#);
    assert!(b.out.closed);
    assert_eq!(b.flash.ops.len(), ops);
}

#[test]
fn bad_chunks_close_the_update_and_leave_the_boot_slot() {
    let v2 = image("2.0.0", 20_000);
    // A first chunk too short for the headers.
    let mut b = Bench::new();
    b.open();
    b.upload(&v2, Some(288));
    assert_eq!(b.out.texts().last().unwrap(), r#"{"name":"otaError","value":"Error write ota"}"#);
    assert!(b.out.closed && b.out.released && !b.out.complete);
    assert!(b.out.lines.iter().any(|l| l.starts_with("Received package is not fit len")));
    // A chunk past the declared size.
    let mut b = Bench::new();
    b.open();
    b.feed(&text(r#"{"name":"otaSize","value":500}"#));
    b.feed(&masked(Opcode::Binary, &v2[..501]));
    assert_eq!(b.out.texts().last().unwrap(), r#"{"name":"otaError","value":"Error write ota"}"#);
    assert!(b.out.lines.iter().any(|l| l.contains("runs past the declared 500 bytes")));
    // Not an image.
    let mut b = Bench::new();
    b.open();
    b.upload(&vec![0x42; 20_000], None);
    assert_eq!(b.out.texts().last().unwrap(), r#"{"name":"otaError","value":"Error write ota"}"#);
    // A truncated image: written whole, refused at the end.
    let mut b = Bench::new();
    b.open();
    b.upload(&v2[..v2.len() - 100], None);
    assert_eq!(b.out.texts().last().unwrap(), r#"{"name":"otaError","value":"Error end ota"}"#);
    assert_eq!(b.boot_copy().seq, u32::MAX, "otadata copy 1 untouched");
}

#[test]
fn cancel_closes_the_update_and_the_socket_stays_for_the_next() {
    let mut b = Bench::new();
    b.open();
    let v2 = image("2.0.0", 20_000);
    b.feed(&text(&std::format!(r#"{{"name":"otaSize","value":{}}}"#, v2.len())));
    b.feed(&masked(Opcode::Binary, &v2[..8192]));
    b.feed(&text(r#"{"name":"otaCancel","value":""}"#));
    assert_eq!(b.out.texts().last().unwrap(), r#"{"name":"otaCancel","value":"Cancel command"}"#);
    assert!(b.out.released && !b.out.closed);
    assert!(b.out.lines.iter().any(|l| l == "otaCancel after 8192 bytes: update closed"));
    // A late chunk is ignored, then a new upload goes through.
    b.feed(&masked(Opcode::Binary, &v2[8192..9000]));
    assert!(b.out.lines.last().unwrap().ends_with("without otaSize: ignored"));
    // The next upload's answers, read from a fresh record (past a stand-in head).
    b.out = Recorder { sent: b"HTTP/1.1 101 x\r\n\r\n".to_vec(), ..Recorder::default() };
    b.upload(&v2, None);
    assert!(b.out.complete, "{:?}", b.out.lines);
}

#[test]
fn a_disconnect_mid_update_closes_it() {
    let mut b = Bench::new();
    b.open();
    let v2 = image("2.0.0", 20_000);
    b.feed(&text(&std::format!(r#"{{"name":"otaSize","value":{}}}"#, v2.len())));
    b.feed(&masked(Opcode::Binary, &v2[..8192]));
    b.close();
    assert!(b.out.released);
    assert!(b.out.lines.iter().any(|l| l == "update aborted after 8192 bytes: the client disconnected"));
}

#[test]
fn messages_the_original_overflows_or_crashes_on_are_answered() {
    let mut b = Bench::new();
    b.open();
    let long = std::format!(r#"{{"name":"otaSize","value":"{}"}}"#, "9".repeat(200));
    for bad in [long.as_str(), "", "{}", r#"{"a":"b","c":"d","e":"f"}"#, "not json", r#"{"name":"x\"y"}"#] {
        b.feed(&text(bad));
    }
    assert_eq!(b.out.texts(), [r#"{"name":"otaError","value":"Error json str"}"#; 6]);
    assert!(!b.out.closed);
    // A ping is answered; an unmasked frame closes with 1002.
    b.feed(&masked(Opcode::Ping, b"hi"));
    assert_eq!(b.out.frames().last().unwrap(), &(Opcode::Pong, "hi".to_string()));
    b.feed(&[0x81, 0x01, b'x']);
    assert!(b.out.closed);
    assert_eq!(b.out.frames().last().unwrap(), &(Opcode::Close, "\u{3}\u{fffd}".to_string()));
}

#[test]
fn a_pending_image_is_offered_for_confirmation_and_the_answers_are_events() {
    let mut b = Bench::new();
    b.site.pending = true;
    b.open();
    assert_eq!(b.out.texts(), [r#"{"name":"otaCheckRollback","value":"true" }"#]);
    b.feed(&text(r#"{"name":"otaProcessRollback","value":"false"}"#));
    assert_eq!(b.out.rollback, Some(false));
    b.feed(&text(r#"{"name":"otaProcessRollback","value":"true"}"#));
    assert_eq!(b.out.rollback, Some(true));
    b.feed(&text(r#"{"name":"otaRestartEsp","value":""}"#));
    assert!(b.out.restart);
}

#[test]
fn the_page_and_other_requests() {
    let mut b = Bench::new();
    b.feed(b"GET /ota HTTP/1.1\r\nHost: d\r\n\r\n");
    let answer = String::from_utf8(b.out.sent.clone()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"));
    assert!(answer.len() <= crate::proto::http_server::ANSWER_MAX, "{} bytes", answer.len());
    assert!(b.out.closed);
    let mut b = Bench::new();
    b.feed(b"GET /ota/ws HTTP/1.1\r\nHost: d\r\n\r\n");
    assert!(String::from_utf8_lossy(&b.out.sent).starts_with("HTTP/1.1 400 "));
    let mut b = Bench::new();
    b.feed(b"GET /update HTTP/1.1\r\nHost: d\r\n\r\n");
    assert!(String::from_utf8_lossy(&b.out.sent).starts_with("HTTP/1.1 404 "));
}

#[test]
fn messages_parse_as_the_original_reads_them() {
    assert_eq!(parse_message(r#"{"name":"otaSize","value":20480}"#), Ok(("otaSize", Some("20480"))));
    assert_eq!(parse_message(r#" { "x" : "otaCancel" } "#), Ok(("otaCancel", None)));
    assert_eq!(
        parse_message(r#"{"name":"otaProcessRollback","value":true}"#),
        Ok(("otaProcessRollback", Some("true")))
    );
    assert!(parse_message(r#"{"name":"a",}"#).is_err());
    assert!(parse_message(r#"{"name" "a"}"#).is_err());
    assert!(parse_message(r#"["a"]"#).is_err());
}
