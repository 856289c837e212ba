//! The portal's upload scripted: `GET /ota/start?mode=fr&hash=<md5>` on one connection, then
//! `POST /ota/upload` with the image as the `file` part on the next, in TCP-segment pieces; the
//! device's events say how it ended.

use super::{Event, Opened, Output, Server, Site};
use crate::proto::web_form::script::BOUNDARY;
use crate::script::{Ending, SEGMENT, ScriptError, Text, Upload};
use crate::session::Session;
use crate::writer::next_update_partition;
use core::fmt::Write;
use embedded_storage::nor_flash::NorFlash;

/// Uploads `image`; `on_received` is called when its last byte is written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, md5_hex, on_received } = u;
    let mut start = Text::<128>::new();
    let _ = write!(
        start,
        "GET /ota/start?mode=fr&hash={} HTTP/1.1\r\nHost: 10.0.2.15\r\n\r\n",
        core::str::from_utf8(&md5_hex).unwrap_or("")
    );
    let mut part_head = Text::<192>::new();
    let _ = write!(
        part_head,
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let mut tail = Text::<96>::new();
    let _ = write!(tail, "\r\n--{BOUNDARY}--\r\n");
    let length = part_head.as_bytes().len() + image.len() + tail.as_bytes().len();
    let mut head = Text::<192>::new();
    let _ = write!(
        head,
        "POST /ota/upload HTTP/1.1\r\nHost: 10.0.2.15\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    let slot = next_update_partition(target.table, Some(&target.running));
    let mut site = Site {
        credentials: None,
        slot_size: slot.map_or(0, |p| p.size),
        running_len: 0,
        others_busy: false,
        opened: None,
    };
    let mut out = Out { on_received, ending: Ending::new(), opened: None };
    Session::new(Server::new(0)).with(flash, target, |server, sink| {
        server.feed(start.as_bytes(), 0, &site, sink, &mut out);
    });
    site.opened = out.opened;
    let mut session = Session::new(Server::new(0));
    session.with(flash, target, |server, sink| {
        server.feed(head.as_bytes(), 0, &site, sink, &mut out);
        server.feed(part_head.as_bytes(), 0, &site, sink, &mut out);
        for piece in image.chunks(SEGMENT) {
            server.feed(piece, 0, &site, sink, &mut out);
        }
        server.feed(tail.as_bytes(), 0, &site, sink, &mut out);
    });
    out.ending.result(|line| ScriptError::new(format_args!("{}", line.as_str())))
}

struct Out<'a> {
    on_received: &'a mut dyn FnMut(),
    ending: Ending<Text<96>>,
    opened: Option<Opened>,
}

impl Output for Out<'_> {
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Received => (self.on_received)(),
            Event::Complete(_) => self.ending.completed(),
            Event::Opened(o) => self.opened = Some(o),
            Event::OpenedTaken | Event::Progress { .. } => {}
            Event::Line(line) => {
                use crate::log::ModuleLine;
                if line.level() != crate::log::Level::Info {
                    let mut text = Text::new();
                    let _ = write!(text, "{line}");
                    self.ending.failed(text);
                }
            }
        }
    }
}
