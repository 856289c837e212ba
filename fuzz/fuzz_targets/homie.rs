//! Homie OTA's receiver under arbitrary firmware messages: topic checksums, sizes, encodings,
//! splits into pieces, corruption and broker losses, writing a real (RAM) flash. Half the
//! messages carry a real image (raw or base64) with its true MD5, so the update can complete.
//! Properties: no panic; no flash operation before `202`; nothing after a message's failure
//! status; `200` only for an image whose MD5 is the topic's; otadata changes only with `200`;
//! nothing outside the target slot and otadata is ever written.
#![no_main]

use device::{BASE, CSV};
use libfuzzer_sys::fuzz_target;
use ota_core::log::LogEvent;
use ota_core::proto::homie::{Facts, Ota, Output, Status};
use ota_core::session::{Session, Target};
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;
use std::sync::LazyLock;

mod device;

/// v2 for the fuzz device (it fits the 0x70000 slots).
static V2: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut spec = ota_core::image_builder::ImageSpec::new("fuzz", "2.0.0");
    spec.payload_len = 3000;
    let mut app = vec![0; spec.image_len()];
    ota_core::image_builder::build(&spec, &mut app).unwrap();
    app
});

fn hex(d: [u8; 16]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
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
    statuses: Vec<Status>,
}

impl Output for Seen {
    fn status(&mut self, status: Status) {
        self.statuses.push(status);
    }
    fn log(&mut self, _: &LogEvent<'_>) {}
}

/// Takes `n` bytes (fewer at the end of the input).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut ops)) = data.split_first() else { return };
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut flash = FileFlash::in_memory(BASE.clone());
    let mut session = Session::new(Ota::default());
    let update = ota_core::session::UpdateSlot::default();
    let target = Target {
        table: &table,
        running: *table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &update,
    };
    let running = hex(md5_of(&BASE[0x10000..0x10000 + 1024]));
    let facts = Facts { ota_enabled: cfg & 1 == 0, running_md5: &running, others_busy: cfg & 2 != 0 };
    let mut done = 0;
    let mut messages = 0;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        messages += 1;
        if messages > 8 {
            break;
        }
        // The message: a real image (raw or base64) with its true MD5, or bytes from the input.
        let (message, md5): (Vec<u8>, String) = match op % 4 {
            0 => (V2.clone(), hex(md5_of(&V2))),
            1 => (base64(&V2), hex(md5_of(&V2))),
            _ => {
                let len = take(&mut ops, 2).iter().fold(0usize, |v, b| v << 8 | *b as usize);
                let body = take(&mut ops, len).to_vec();
                let level = take(&mut ops, 1).first().copied().unwrap_or(0) as usize % 40;
                let md5 = String::from_utf8_lossy(take(&mut ops, level)).into_owned();
                (body, md5)
            }
        };
        let mut message = message;
        // Corruption at an input-chosen byte.
        if op & 0x10 != 0 && !message.is_empty() {
            let at = take(&mut ops, 2).iter().fold(0usize, |v, b| v << 8 | *b as usize) % message.len();
            message[at] ^= take(&mut ops, 1).first().copied().unwrap_or(1) | 1;
        }
        let split = (take(&mut ops, 1).first().copied().unwrap_or(200) as usize).max(1) * 7;
        // A broker loss after this many pieces (0: none).
        let cut = if op & 0x20 != 0 { take(&mut ops, 1).first().copied().unwrap_or(0) as usize } else { 0 };
        let mut seen = Seen::default();
        let ops_before = flash.counters();
        let total = message.len() as u32;
        session.with(&mut flash, &target, |ota, sink| {
            for (i, piece) in message.chunks(split).enumerate() {
                if cut != 0 && i == cut {
                    ota.interrupted(sink, &mut seen);
                    break;
                }
                ota.piece(&md5, (i * split) as u32, total, piece, &facts, sink, &mut seen);
            }
        });
        let touched = flash.counters() != ops_before;
        if !seen.statuses.contains(&Status::Accepted) {
            assert!(!touched, "flash touched before 202: {:?}", seen.statuses);
        }
        if let Some(end) = seen.statuses.iter().position(|s| s.is_failure() || *s == Status::Done) {
            assert_eq!(end, seen.statuses.len() - 1, "statuses after the end: {:?}", seen.statuses);
        }
        if seen.statuses.contains(&Status::Done) {
            assert!(message == *V2 || message == base64(&V2), "200 for what is not the image");
            done += 1;
            break;
        }
    }
    let after = flash.data();
    if done == 0 {
        assert_eq!(&after[0x9000..0xB000], &BASE[0x9000..0xB000], "otadata changed without a 200");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(bytes).into()
}
