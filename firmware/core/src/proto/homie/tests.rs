//! Homie OTA's receiver driven piece by piece against a RAM flash: the statuses a server sees,
//! what is written, and what is never written.

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

fn image(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    build(&spec, &mut v).unwrap();
    v
}

fn md5_hex(bytes: &[u8]) -> String {
    let d: [u8; 16] = Md5::digest(bytes).into();
    let mut out = [0u8; 32];
    crate::hex::encode_lower(&d, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

fn base64(bytes: &[u8]) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(A[(n >> 18) as usize & 63]);
        out.push(A[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 { A[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if c.len() > 2 { A[n as usize & 63] } else { b'=' });
    }
    out
}

#[derive(Default)]
struct Seen {
    statuses: Vec<String>,
    lines: Vec<String>,
}

impl Output for Seen {
    fn status(&mut self, status: Status) {
        self.statuses.push(status.to_string());
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        self.lines.push(crate::log::LogLine { ms: 0, event: line }.to_string());
    }
}

/// A device running v1 from ota_0 and its Homie receiver.
struct Bench {
    update: crate::session::UpdateSlot,
    flash: RamFlash,
    table: PartitionTable,
    session: Session<Ota>,
    running_md5: String,
    enabled: bool,
    busy: bool,
}

impl Bench {
    fn new() -> Self {
        let table = esphome_4mb_table();
        let mut flash = RamFlash::new(4 << 20);
        let v1 = image("1.0.0", 100);
        flash.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
        flash.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::Valid).to_bytes());
        Bench {
            update: Default::default(),
            flash,
            table,
            session: Session::new(Ota::default()),
            running_md5: md5_hex(&v1),
            enabled: true,
            busy: false,
        }
    }

    /// Sends `message` on `…/firmware/<md5>` in pieces of `split` bytes.
    fn send(&mut self, md5: &str, message: &[u8], split: usize) -> Seen {
        self.send_part(md5, message, message.len(), split)
    }

    /// Sends the first `upto` bytes of `message` only (the rest never comes).
    fn send_part(&mut self, md5: &str, message: &[u8], upto: usize, split: usize) -> Seen {
        let target = Target {
            table: &self.table,
            running: *self.table.ota(0).unwrap(),
            config: OtaConfig::default(),
            update: &self.update,
        };
        let facts =
            Facts { ota_enabled: self.enabled, running_md5: &self.running_md5, others_busy: self.busy };
        let mut seen = Seen::default();
        let total = message.len() as u32;
        for (i, piece) in message[..upto].chunks(split.max(1)).enumerate() {
            let offset = (i * split) as u32;
            self.session.with(&mut self.flash, &target, |ota, sink| {
                ota.piece(md5, offset, total, piece, &facts, sink, &mut seen)
            });
        }
        seen
    }

    fn boot_copy(&self) -> Vec<u8> {
        self.flash.data[0x9000..0xB000].to_vec()
    }
}

#[test]
fn a_raw_image_is_written_as_it_comes_at_any_split() {
    let v2 = image("2.0.0", 20_000);
    for split in [1, 7, 1460, 4096, v2.len()] {
        let mut b = Bench::new();
        let seen = b.send(&md5_hex(&v2), &v2, split);
        assert_eq!(seen.statuses.first().map(String::as_str), Some("202"), "split {split}");
        assert_eq!(
            seen.statuses.last().map(String::as_str),
            Some("200"),
            "split {split}: {:?}",
            seen.statuses
        );
        let progress: Vec<&String> = seen.statuses.iter().filter(|s| s.starts_with("206 ")).collect();
        assert_eq!(progress.len(), v2.len().div_ceil(split), "one 206 per piece");
        assert_eq!(progress.last().unwrap().as_str(), std::format!("206 {0}/{0}", v2.len()));
        assert!(b.session.server.reboot_requested());
        assert_eq!(&b.flash.data[0x1D0000..0x1D0000 + v2.len()], &v2[..], "split {split}");
        assert!(seen.lines.iter().any(|l| l.contains("Starting update of")), "{:?}", seen.lines);
    }
}

#[test]
fn a_base64_image_is_decoded_as_it_comes() {
    let v2 = image("2.0.0", 20_001);
    let text = base64(&v2);
    assert!(text.starts_with(b"6Q"), "base64 of 0xE9 starts 6Q");
    for split in [1, 3, 1000, text.len()] {
        let mut b = Bench::new();
        let seen = b.send(&md5_hex(&v2), &text, split);
        assert_eq!(seen.statuses.last().map(String::as_str), Some("200"), "split {split}: {:?}", seen.lines);
        // The last progress names the image's true size once the pads are known.
        let last_progress = seen.statuses.iter().rev().find(|s| s.starts_with("206 ")).unwrap();
        assert_eq!(last_progress.as_str(), std::format!("206 {0}/{0}", v2.len()));
        assert_eq!(&b.flash.data[0x1D0000..0x1D0000 + v2.len()], &v2[..]);
    }
}

#[test]
fn refusals_write_nothing_and_say_why() {
    let v2 = image("2.0.0", 5000);
    let md5 = md5_hex(&v2);
    let mut cases: Vec<(&str, Bench, String, Vec<u8>, &str)> = Vec::new();
    let mut disabled = Bench::new();
    disabled.enabled = false;
    cases.push(("disabled", disabled, md5.clone(), v2.clone(), "403"));
    cases.push(("not an md5", Bench::new(), "abc".into(), v2.clone(), "400 BAD_CHECKSUM"));
    cases.push(("not hex", Bench::new(), "g".repeat(32), v2.clone(), "400 BAD_CHECKSUM"));
    let running = Bench::new();
    let running_md5 = running.running_md5.clone();
    cases.push(("installed", running, running_md5, v2.clone(), "304"));
    cases.push(("not firmware", Bench::new(), md5.clone(), b"hello world!".to_vec(), "400 BAD_CHECKSUM"));
    let mut bad_len = base64(&v2);
    bad_len.pop();
    cases.push(("base64 of a bad length", Bench::new(), md5.clone(), bad_len, "400 BAD_CHECKSUM"));
    let mut busy = Bench::new();
    busy.busy = true;
    cases.push(("another update runs", busy, md5.clone(), v2.clone(), "500 INTERNAL_ERROR 0"));
    let mut huge = image("2.0.0", 0x1C0000);
    huge.truncate(0x1C0000 + 16);
    cases.push(("larger than the slot", Bench::new(), md5_hex(&huge), huge, "400 BAD_CHECKSUM"));
    for (name, mut b, md5, message, want) in cases {
        let before = b.flash.data.clone();
        let seen = b.send(&md5, &message, 1024);
        assert_eq!(seen.statuses.last().map(String::as_str), Some(want), "{name}: {:?}", seen.lines);
        assert!(b.flash.data == before && b.flash.ops.is_empty(), "{name}: the flash was touched");
        assert!(!b.session.server.writing() && !b.session.server.reboot_requested(), "{name}");
    }
}

#[test]
fn what_does_not_verify_never_switches_the_boot_slot() {
    let v2 = image("2.0.0", 5000);
    // The topic's MD5 is another image's: checked here, unlike the cores.
    let mut b = Bench::new();
    let before = b.boot_copy();
    let seen = b.send(&md5_hex(b"another image"), &v2, 700);
    assert_eq!(seen.statuses.last().map(String::as_str), Some("400 BAD_CHECKSUM"));
    assert!(seen.lines.iter().any(|l| l.contains("MD5 is not the topic's")), "{:?}", seen.lines);
    assert_eq!(b.boot_copy(), before);
    // A corrupted payload under a good header, with its own MD5 in the topic: verification fails.
    let mut bad = v2.clone();
    bad[3000] ^= 0xFF;
    let mut b = Bench::new();
    let seen = b.send(&md5_hex(&bad), &bad, 700);
    assert_eq!(seen.statuses.last().map(String::as_str), Some("400 BAD_CHECKSUM"), "{:?}", seen.lines);
    assert_eq!(b.boot_copy(), before);
    // `=` in the middle of base64.
    let mut text = base64(&v2);
    text[100] = b'=';
    let mut b = Bench::new();
    let seen = b.send(&md5_hex(&v2), &text, 64);
    assert_eq!(seen.statuses.last().map(String::as_str), Some("400 BAD_CHECKSUM"));
    assert!(!b.session.server.writing());
    assert_eq!(b.boot_copy(), before);
}

#[test]
fn a_transfer_cut_by_the_broker_does_not_block_the_next() {
    let v2 = image("2.0.0", 20_000);
    let md5 = md5_hex(&v2);
    let mut b = Bench::new();
    let seen = b.send_part(&md5, &v2, 9000, 1000);
    assert!(b.session.server.writing() && seen.statuses.last().unwrap().starts_with("206 9000/"));
    let target = Target {
        table: &b.table,
        running: *b.table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &b.update,
    };
    let mut seen = Seen::default();
    b.session.with(&mut b.flash, &target, |ota, sink| ota.interrupted(sink, &mut seen));
    assert!(seen.lines[0].contains("OTA interrupted after 9000 of 20"), "{:?}", seen.lines);
    assert!(!b.session.server.writing());
    let seen = b.send(&md5, &v2, 1000);
    assert_eq!(seen.statuses.last().map(String::as_str), Some("200"), "{:?}", seen.lines);
}

/// The spec's vectors for the magic bytes, and the chip firmware's fixtures carry them with
/// the image's own name and version (what `homie-ota` reads when the image is uploaded).
#[test]
fn firmware_markers_frame_the_name_and_version() {
    let name: [u8; 23] = framed(NAME_LEFT, "awesome-light", NAME_RIGHT);
    assert_eq!(
        name[..],
        [
            0xbf, 0x84, 0xe4, 0x13, 0x54, 0x61, 0x77, 0x65, 0x73, 0x6f, 0x6d, 0x65, 0x2d, 0x6c, 0x69, 0x67,
            0x68, 0x74, 0x93, 0x44, 0x6b, 0xa7, 0x75
        ]
    );
    let version: [u8; 15] = framed(VERSION_LEFT, "1.0.0", VERSION_RIGHT);
    assert_eq!(
        version[..],
        [0x6a, 0x3f, 0x3e, 0x0e, 0xe1, 0x31, 0x2e, 0x30, 0x2e, 0x30, 0xb0, 0x30, 0x48, 0xd4, 0x1a]
    );
    assert_eq!(find_framed(&version, &VERSION_LEFT, &VERSION_RIGHT), Some(&b"1.0.0"[..]));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/firmware/");
    for (file, want) in [("v1.bin", "1.0.0"), ("v2.bin", "2.0.0")] {
        let image = std::fs::read(std::format!("{dir}{file}")).unwrap();
        let info = crate::image::verify(&mut &image[..], crate::image::ChipInfo::ESP32C3).unwrap();
        assert_eq!(info.desc.version(), want);
        assert_eq!(find_framed(&image, &VERSION_LEFT, &VERSION_RIGHT), Some(want.as_bytes()), "{file}");
        assert_eq!(find_framed(&image, &NAME_LEFT, &NAME_RIGHT), Some(&b"otahil-fw"[..]), "{file}");
        assert!(image.windows(SIGNATURE.len()).any(|w| w == SIGNATURE), "{file}");
    }
}

#[test]
fn every_status_reads_back_as_itself() {
    let all = [
        Status::Accepted,
        Status::Progress { written: 1460, total: 395_408 },
        Status::Done,
        Status::NotModified,
        Status::Disabled,
        Status::BadChecksum,
        Status::NotEnoughSpace,
        Status::FlashError,
        Status::Internal(0),
        Status::Internal(9),
    ];
    for s in all {
        assert_eq!(Status::parse(&s.to_string()), Some(s), "{s}");
        assert_eq!(s.is_final(), !matches!(s, Status::Accepted | Status::Progress { .. }));
    }
    for text in
        ["", "206", "206 1", "206 a/b", "400", "400 BAD_FIRMWARE_X", "500 INTERNAL_ERROR", "200 ", "ok"]
    {
        assert_eq!(Status::parse(text), None, "{text:?}");
    }
}
