//! The page's upload scripted: the socket opened (`GET /ota/ws` with an upgrade), `otaSize`,
//! then the image in the chunks the device asks for, each a masked binary frame, fed in
//! TCP-segment pieces; the device's events say how it ended.

use super::{CHUNK_SIZE, Event, Output, Server, Site};
use crate::proto::http_server::websocket::{Opcode, apply_mask, frame_head};
use crate::script::{Ending, SEGMENT, ScriptError, Text, Upload};
use crate::session::Session;
use crate::slot::{BootIndex, SlotName};
use crate::writer::next_update_partition;
use core::fmt::Write;
use embedded_storage::nor_flash::NorFlash;

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// Uploads `image`; `on_received` is called when its last byte is written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, on_received, .. } = u;
    let handshake = "GET /ota/ws HTTP/1.1\r\nHost: 10.0.2.15\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut size = Text::<64>::new();
    let _ = write!(size, "{{\"name\":\"otaSize\",\"value\":{}}}", image.len());
    let slot = next_update_partition(target.table, Some(&target.running));
    let site = Site {
        slot_size: slot.map_or(0, |p| p.size),
        others_busy: false,
        pending: false,
        running: SlotName(BootIndex::of(&target.running).unwrap_or(BootIndex::Factory)),
    };
    let mut out = Out { on_received, ending: Ending::new() };
    Session::new(Server::new(0)).with(flash, target, |server, sink| {
        server.feed(handshake.as_bytes(), 0, &site, sink, &mut out);
        let mut head = [0u8; 14];
        let mut text = [0u8; 64];
        let n = size.as_bytes().len();
        text[..n].copy_from_slice(size.as_bytes());
        apply_mask(&mut text[..n], MASK, 0);
        server.feed(
            frame_head(true, Opcode::Text, n as u64, Some(MASK), &mut head),
            0,
            &site,
            sink,
            &mut out,
        );
        server.feed(&text[..n], 0, &site, sink, &mut out);
        for chunk in image.chunks(CHUNK_SIZE as usize) {
            server.feed(
                frame_head(true, Opcode::Binary, chunk.len() as u64, Some(MASK), &mut head),
                0,
                &site,
                sink,
                &mut out,
            );
            let mut at = 0u64;
            for piece in chunk.chunks(SEGMENT) {
                let mut masked = [0u8; SEGMENT];
                masked[..piece.len()].copy_from_slice(piece);
                apply_mask(&mut masked[..piece.len()], MASK, at);
                at += piece.len() as u64;
                server.feed(&masked[..piece.len()], 0, &site, sink, &mut out);
            }
        }
    });
    out.ending.result(|line| ScriptError::new(format_args!("{}", line.as_str())))
}

struct Out<'a> {
    on_received: &'a mut dyn FnMut(),
    ending: Ending<Text<96>>,
}

impl Output for Out<'_> {
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Received => (self.on_received)(),
            Event::Complete(_) => self.ending.completed(),
            Event::Line(line) => {
                use crate::log::ModuleLine;
                if line.level() != crate::log::Level::Info {
                    let mut text = Text::new();
                    let _ = write!(text, "{line}");
                    self.ending.failed(text);
                }
            }
            _ => {}
        }
    }
}
