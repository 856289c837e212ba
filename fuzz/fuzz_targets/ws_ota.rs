//! The WebSocket OTA page's server under arbitrary bytes in arbitrary pieces, with disconnects
//! and time, writing a real (RAM) flash; half the inputs behind a well-formed upgrade, and some
//! of those with a well-formed `otaSize` and arbitrary bytes masked into binary frames, so the
//! writer is reached. Properties: no panic; the device's bytes are a `101` head then well-formed
//! unmasked frames (or one HTTP answer); every text frame it sends is the page's JSON with a
//! command the page knows; otadata changes only with a completed update, and only after an
//! `otaEnd`; nothing outside the target slot and otadata is ever written.
#![no_main]

use device::{BASE, CSV};
use libfuzzer_sys::fuzz_target;
use ota_core::proto::http_server::websocket::{FrameEvent, FrameReader, Opcode, apply_mask, frame_head};
use ota_core::proto::ws_ota::{Event, Output, Server, Site, parse_message};
use ota_core::session::{Session, Target, UpdateSlot};
use ota_core::slot::{BootIndex, SlotName};
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;

mod device;

const HANDSHAKE: &[u8] = b"GET /ota/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[derive(Default)]
struct Out {
    sent: Vec<u8>,
    complete: bool,
}

impl Output for Out {
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {}
    fn event(&mut self, e: Event<'_>) {
        if let Event::Complete(_) = e {
            self.complete = true;
        }
    }
}

fn masked(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; 14];
    let mut v = frame_head(true, opcode, payload.len() as u64, Some([7, 1, 7, 1]), &mut head).to_vec();
    let mut body = payload.to_vec();
    apply_mask(&mut body, [7, 1, 7, 1], 0);
    v.extend_from_slice(&body);
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut ops)) = data.split_first() else { return };
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut flash = FileFlash::in_memory(BASE.clone());
    let update = UpdateSlot::default();
    let target = Target {
        table: &table,
        running: *table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &update,
    };
    let site = Site {
        slot_size: table.ota(1).unwrap().size,
        others_busy: cfg & 2 != 0,
        pending: cfg & 16 != 0,
        running: SlotName(BootIndex::Ota(0)),
    };
    let mut prefix = Vec::new();
    if cfg & 1 != 0 {
        prefix.extend_from_slice(HANDSHAKE);
        if cfg & 4 != 0 {
            let size = (u32::from(cfg >> 5) + 1) * 4096;
            prefix.extend(masked(Opcode::Text, format!(r#"{{"name":"otaSize","value":{size}}}"#).as_bytes()));
        }
    }
    let mut out = Out::default();
    let mut now = 0u64;
    let mut session = Session::new(Server::new(now));
    session.with(&mut flash, &target, |server, sink| {
        server.feed(&prefix, now, &site, sink, &mut out);
        while let Some((&op, rest)) = ops.split_first() {
            ops = rest;
            match op % 8 {
                0 => break,
                1 => {
                    now += 1000 * (op as u64 >> 3);
                    server.poll(now, sink, &mut out);
                }
                // The rest of a piece as a masked binary frame (a chunk of the image).
                2 if cfg & 8 != 0 => {
                    let n = ((op as usize >> 3) * 331 + 1).min(ops.len());
                    let (bytes, rest) = ops.split_at(n);
                    ops = rest;
                    server.feed(&masked(Opcode::Binary, bytes), now, &site, sink, &mut out);
                }
                _ => {
                    let n = ((op as usize >> 3) * 97 + 1).min(ops.len());
                    let (bytes, rest) = ops.split_at(n);
                    ops = rest;
                    server.feed(bytes, now, &site, sink, &mut out);
                }
            }
            if server.is_closed() {
                break;
            }
        }
        server.closed(sink, &mut out);
    });
    // What the device sent: an HTTP answer, or the upgrade and well-formed frames after it.
    let mut ended = false;
    if out.sent.starts_with(b"HTTP/1.1 101 ") {
        let at = out.sent.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole 101 head") + 4;
        let mut reader = FrameReader::new(false);
        let (mut payload, mut opcode) = (Vec::new(), Opcode::Text);
        let mut texts = Vec::new();
        reader
            .feed(&out.sent[at..], &mut |e| match e {
                FrameEvent::Start(f) => {
                    payload.clear();
                    opcode = f.opcode;
                }
                FrameEvent::Payload(p) => payload.extend_from_slice(p),
                FrameEvent::End(_) => {
                    if opcode == Opcode::Text {
                        texts.push(String::from_utf8(payload.clone()).expect("UTF-8 text"))
                    }
                }
            })
            .expect("the device's frames are well-formed");
        for t in &texts {
            let (name, _) = parse_message(t).expect("the page's JSON");
            assert!(
                ["otaCheckRollback", "otaSetChunkSize", "otaGetChunk", "otaEnd", "otaError", "otaCancel"]
                    .contains(&name),
                "a command the page does not know: {t}"
            );
            ended |= name == "otaEnd";
        }
    } else if !out.sent.is_empty() {
        assert_eq!(device::http_answers(&out.sent), 1, "one HTTP answer");
    }
    let after = flash.data();
    if !out.complete {
        assert_eq!(
            &after[0x9000..0xB000],
            &BASE[0x9000..0xB000],
            "otadata changed without a completed update"
        );
    } else {
        assert!(ended, "an update completed without otaEnd");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});
