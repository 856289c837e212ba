//! Whole ESPHome sessions driven byte by byte against a RAM flash.

use super::*;
use crate::flash::ram::RamFlash;
use crate::image_builder::{ImageSpec, build};
use crate::otadata::{OtaEntry, OtaState};
use crate::partition::PartitionTable;
use crate::testutil::esphome_4mb_table;
use crate::writer::OtaConfig;
use std::string::String;
use std::vec;
use std::vec::Vec;

struct Fixed(Vec<u8>);
impl NonceSource for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.copy_from_slice(&self.0[..buf.len()]);
    }
}

#[derive(Default)]
struct Recorder {
    sent: Vec<u8>,
    events: Vec<Event>,
}
impl Output for Recorder {
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn event(&mut self, e: Event) {
        self.events.push(e);
    }
}

fn hex_of(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len() * 2];
    crate::hex::encode_lower(bytes, &mut out);
    out
}

fn md5_hex(data: &[u8]) -> Vec<u8> {
    let d: [u8; 16] = Md5::digest(data).into();
    hex_of(&d)
}

fn image(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    build(&spec, &mut v).unwrap();
    v
}

fn device() -> (RamFlash, PartitionTable) {
    let t = esphome_4mb_table();
    let mut f = RamFlash::new(4 << 20);
    let v1 = image("1.0.0", 100);
    f.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
    f.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::Valid).to_bytes());
    (f, t)
}

const RNG_MD5: [u8; 4] = [0x78, 0x56, 0x34, 0x12]; // random_uint32() = 0x12345678

/// What a client sends for a whole session, answering the MD5 challenge for `password`.
fn client_stream(
    features: u8,
    password: Option<&str>,
    nonce: &[u8],
    size: u32,
    md5: &[u8],
    data: &[u8],
) -> Vec<u8> {
    let mut s = MAGIC.to_vec();
    s.push(features);
    if let Some(pw) = password {
        let cnonce = b"d310cb367d993fb6fb584b198a2fd72c";
        s.extend_from_slice(cnonce);
        let mut h = Md5::new();
        h.update(pw.as_bytes());
        h.update(nonce);
        h.update(cnonce);
        s.extend_from_slice(&hex_of(&h.finalize()));
    }
    s.extend_from_slice(&size.to_be_bytes());
    s.extend_from_slice(md5);
    s.extend_from_slice(data);
    s.push(0x00);
    s
}

struct Run {
    out: Recorder,
    flash: RamFlash,
    closed: bool,
    reboot: bool,
}

fn run(config: ServerConfig<'_>, stream: &[u8], chunk: usize, eof: bool) -> Run {
    let (mut flash, table) = device();
    let running = *table.ota(0).unwrap();
    let mut out = Recorder::default();
    let mut rng = Fixed(RNG_MD5.to_vec());
    let mut server = Server::new(config);
    {
        let mut pending = None;
        let mut backend =
            crate::update::FlashSink::new(&mut flash, &table, running, OtaConfig::default(), &mut pending);
        for piece in stream.chunks(chunk) {
            server.feed(piece, &mut backend, &mut rng, &mut out);
        }
        if eof {
            server.on_disconnect(false, &mut backend, &mut out);
        }
    }
    Run { out, flash, closed: server.is_closed(), reboot: server.reboot_requested() }
}

const NONCE_MD5: &[u8] = b"25d55ad283aa400af464c76d713c07ad"; // md5("12345678"), spec vector

fn expected_reply(version: u8, password: bool, size: u32) -> Vec<u8> {
    let mut r = vec![0x00, version, 0x40];
    if password {
        r.push(0x01);
        r.extend_from_slice(NONCE_MD5);
        r.push(0x41);
    } else {
        r.push(0x41);
    }
    r.extend_from_slice(&[0x42, 0x43]);
    if version == 2 {
        r.extend(core::iter::repeat_n(0x47, size.div_ceil(CHUNK_SIZE) as usize));
    }
    r.extend_from_slice(&[0x44, 0x45]);
    r
}

fn cfg(password: Option<&str>, version: u8) -> ServerConfig<'_> {
    ServerConfig { password: password.map(str::as_bytes), version, sha256: true }
}

#[test]
fn spec_md5_auth_vector() {
    // random_uint32()=0x12345678, cnonce md5("0.5"): result 5b0cb460f936cb702c5291276398393a.
    let mut h = Md5::new();
    h.update(b"otapass");
    h.update(NONCE_MD5);
    h.update(b"d310cb367d993fb6fb584b198a2fd72c");
    assert_eq!(hex_of(&h.finalize()), b"5b0cb460f936cb702c5291276398393a");
}

#[test]
fn successful_sessions_v1_and_v2_byte_by_byte() {
    let img = image("2.0.0", 20_000);
    for version in [1u8, 2] {
        for password in [None, Some("otapass")] {
            let stream = client_stream(0x01, password, NONCE_MD5, img.len() as u32, &md5_hex(&img), &img);
            let r = run(cfg(password, version), &stream, 1, false);
            assert_eq!(
                r.out.sent,
                expected_reply(version, password.is_some(), img.len() as u32),
                "v{version} {password:?}"
            );
            assert!(r.closed && r.reboot);
            assert_eq!(&r.flash.data[0x1D0000..0x1D0000 + img.len()], &img[..]);
            let switched = Switched { slot: 1, seq: 2, state: OtaState::New };
            assert_eq!(r.out.events.last(), Some(&Event::Complete(switched)));
            assert!(r.out.events.contains(&Event::CompressionDeclined));
            assert_eq!(
                OtaEntry::parse(r.flash.data[0xA000..0xA020].try_into().unwrap()),
                OtaEntry::new(2, OtaState::New)
            );
        }
    }
}

#[test]
fn chunk_acks_follow_8192_boundaries_whatever_the_read_size() {
    let img = image("2.0.0", 16_000); // just over 16384 with header → 3 acks
    let stream = client_stream(0, None, &[], img.len() as u32, &md5_hex(&img), &img);
    for chunk in [1, 7, 1000, 8192, 100_000] {
        let r = run(cfg(None, 2), &stream, chunk, false);
        assert_eq!(r.out.sent, expected_reply(2, false, img.len() as u32), "chunk {chunk}");
    }
}

#[test]
fn wrong_password_leaves_flash_untouched() {
    let img = image("2.0.0", 100);
    let stream = client_stream(0, Some("nope"), NONCE_MD5, img.len() as u32, &md5_hex(&img), &img);
    let r = run(cfg(Some("otapass"), 2), &stream, 1, false);
    let mut want = vec![0x00, 0x02, 0x40, 0x01];
    want.extend_from_slice(NONCE_MD5);
    want.push(0x82);
    assert_eq!(r.out.sent, want);
    assert!(r.out.events.contains(&Event::AuthFailed));
    assert!(r.flash.ops.is_empty(), "no flash operation after a wrong password");
    assert!(r.closed && !r.reboot);
}

#[test]
fn missing_password_is_an_eof_during_auth() {
    let r = run(cfg(Some("otapass"), 2), &[&MAGIC[..], &[0x01]].concat(), 1, true);
    assert_eq!(*r.out.sent.last().unwrap(), 0xFF);
    assert_eq!(r.out.events.last(), Some(&Event::AuthMissing));
    assert!(r.flash.ops.is_empty());
}

#[test]
fn sha256_auth_when_the_client_offers_it() {
    // Spec vector: nonce from seed bytes 00..07, cnonce "ab"*32.
    let (mut flash, table) = device();
    let running = *table.ota(0).unwrap();
    let mut pending = None;
    let mut backend =
        crate::update::FlashSink::new(&mut flash, &table, running, OtaConfig::default(), &mut pending);
    let mut rng = Fixed((0u8..8).collect());
    let mut out = Recorder::default();
    let mut server = Server::new(cfg(Some("otapass"), 2));
    server.feed(&[&MAGIC[..], &[0x03]].concat(), &mut backend, &mut rng, &mut out);
    let nonce = b"8a851ff82ee7048ad09ec3847f1ddf44944104d2cbd17ef4e3db22c6785a0d45";
    assert_eq!(out.sent[..4], [0x00, 0x02, 0x40, 0x02]);
    assert_eq!(&out.sent[4..], nonce);
    let mut answer = [b'a', b'b'].repeat(32);
    answer.extend_from_slice(b"72b47bfd1c4bb931f110263c998eaa322e8eb3febf39a9e7e28a8665a6b37fda");
    server.feed(&answer, &mut backend, &mut rng, &mut out);
    assert_eq!(*out.sent.last().unwrap(), 0x41);
    assert!(out.events.contains(&Event::AuthOk));
}

#[test]
fn md5_mismatch_is_8b_after_receive_ok() {
    let img = image("2.0.0", 9000);
    let stream = client_stream(0, None, &[], img.len() as u32, &md5_hex(b"other"), &img);
    let r = run(cfg(None, 2), &stream, 333, false);
    let n = r.out.sent.len();
    assert_eq!(&r.out.sent[n - 2..], &[0x44, 0x8B]);
    assert!(r.out.events.contains(&Event::Md5Mismatch));
    // Received bytes stay in the slot; otadata is untouched.
    assert_eq!(&r.flash.data[0x1D0000..0x1D0000 + img.len()], &img[..]);
    assert!(r.flash.data[0xA000..0xA020].iter().all(|&b| b == 0xFF));
    assert!(!r.reboot);
}

#[test]
fn oversized_image_is_89_with_zero_erases() {
    let size = 0x1C0001u32;
    let mut s = MAGIC.to_vec();
    s.push(0);
    s.extend_from_slice(&size.to_be_bytes());
    let r = run(cfg(None, 2), &s, 1, false);
    assert_eq!(r.out.sent, [0x00, 0x02, 0x40, 0x41, 0x89]);
    assert!(matches!(
        r.out.events.last(),
        Some(Event::Failed(Rejection { code: 0x89, error: OtaError::InvalidSize { .. } }))
    ));
    assert!(r.flash.ops.is_empty());
}

#[test]
fn truncated_stream_sends_00_and_keeps_the_old_boot() {
    let img = image("2.0.0", 30_000);
    let stream = client_stream(0, None, &[], img.len() as u32, &md5_hex(&img), &img);
    let cut = 5 + 1 + 4 + 32 + 10_000;
    let r = run(cfg(None, 2), &stream[..cut], 512, true);
    assert_eq!(*r.out.sent.last().unwrap(), 0x00);
    assert_eq!(
        r.out.events.last(),
        Some(&Event::Interrupted { received: 10_000, size: img.len() as u32, timeout: false, code: 0x00 })
    );
    assert!(r.flash.data[0xA000..0xA020].iter().all(|&b| b == 0xFF), "otadata untouched");
    // Before begin(), an interrupted session answers 0xFF.
    let r = run(cfg(None, 2), &stream[..8], 1, true);
    assert_eq!(*r.out.sent.last().unwrap(), 0xFF);
}

#[test]
fn invalid_image_is_84_and_bad_first_byte_is_80() {
    let mut img = image("2.0.0", 5000);
    let n = img.len();
    img[n - 33] ^= 0x01; // checksum byte
    let stream = client_stream(0, None, &[], n as u32, &md5_hex(&img), &img);
    let r = run(cfg(None, 2), &stream, 4096, false);
    assert_eq!(&r.out.sent[r.out.sent.len() - 2..], &[0x44, 0x84]);
    let failed = r.out.events.iter().find_map(|e| match e {
        Event::Failed(Rejection { error: OtaError::Validate(reason), .. }) => Some(*reason),
        _ => None,
    });
    assert!(matches!(failed, Some(crate::image::ImageError::Checksum { .. })));
    assert!(r.flash.data[0xA000..0xA020].iter().all(|&b| b == 0xFF));

    let junk = vec![0x00u8; 9000];
    let stream = client_stream(0, None, &[], junk.len() as u32, &md5_hex(&junk), &junk);
    let r = run(cfg(None, 2), &stream, 1, false);
    assert_eq!(*r.out.sent.last().unwrap(), 0x80);
    assert!(r.flash.ops.is_empty(), "sequential erase: nothing erased before the magic check");
}

#[test]
fn wrong_protocol_magic_is_80() {
    let r = run(cfg(None, 2), &[0x6C, 0x26, 0xF7, 0x5C, 0x46, 0x01], 1, false);
    assert_eq!(r.out.sent, [0x80]);
    assert!(r.closed);
}

#[test]
fn progress_log_lines_are_quarterly() {
    let size = 100 * CHUNK_SIZE;
    let lines: Vec<String> = (1..=100)
        .filter_map(|i| Event::Progress { received: i * CHUNK_SIZE, size }.log_event())
        .map(|e| std::format!("{e}"))
        .collect();
    assert_eq!(lines, ["progress 25%", "progress 50%", "progress 75%"]);
}

#[test]
fn code_names_round_trip() {
    for (c, n) in CODE_NAMES {
        assert_eq!(code_by_name(n), Some(*c));
        assert_eq!(code_name(*c), Some(*n));
    }
    assert_eq!(code_name(0x50), None);
}

/// ESPHome's timeouts: 20 s for the whole handshake however the bytes trickle, then 90 s without
/// data; a silent client in the data phase gets 0xFF.
#[test]
fn a_trickling_client_gets_twenty_seconds_for_the_handshake_and_then_ninety_without_data() {
    let (mut flash, table) = device();
    let running = *table.ota(0).unwrap();
    let mut server = Server::new(cfg(None, 2));
    let mut out = Recorder::default();
    let mut rng = Fixed(RNG_MD5.to_vec());
    let mut pending = None;
    let mut sink =
        crate::update::FlashSink::new(&mut flash, &table, running, OtaConfig::default(), &mut pending);
    // One byte every 4 s keeps no session alive past 20 s of handshake.
    server.feed(&MAGIC[..1], &mut sink, &mut rng, &mut out);
    assert!(!server.expired(16_000, 4_000));
    assert!(server.expired(HANDSHAKE_TIMEOUT_MS, 4_000), "the handshake has 20 s in all");
    // Authenticated (no password): size, MD5, data each get 90 s of silence.
    let img = image("2.0.0", 20_000);
    server.feed(&MAGIC[1..], &mut sink, &mut rng, &mut out);
    server.feed(&[0], &mut sink, &mut rng, &mut out);
    assert!(!server.expired(60_000, 89_999), "past the handshake the total does not count");
    server.feed(&(img.len() as u32).to_be_bytes(), &mut sink, &mut rng, &mut out);
    server.feed(&md5_hex(&img), &mut sink, &mut rng, &mut out);
    server.feed(&img[..8192], &mut sink, &mut rng, &mut out);
    assert!(server.in_data_phase());
    assert!(!server.expired(600_000, 89_999));
    assert!(server.expired(600_000, DATA_TIMEOUT_MS));
    out.sent.clear();
    server.on_disconnect(true, &mut sink, &mut out);
    assert_eq!(out.sent, [code::ERROR_UNKNOWN], "the data loop answers 0xFF");
    assert!(server.is_closed() && !server.expired(u64::MAX, u64::MAX));
}
