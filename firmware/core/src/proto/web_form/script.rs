//! A browser's upload scripted: `POST /update` with the image as the `firmware` file of a
//! `multipart/form-data` body, in TCP-segment pieces; the device's events say how it ended.

use super::{Event, Output, Server, Site};
use crate::script::{Ending, SEGMENT, ScriptError, Text, Upload};
use crate::session::Session;
use crate::writer::next_update_partition;
use core::fmt::Write;
use embedded_storage::nor_flash::NorFlash;

/// The boundary a scripted browser picks (Chromium's form: `----WebKitFormBoundary` and 16
/// characters).
pub const BOUNDARY: &str = "----WebKitFormBoundaryotahilSweep01";

/// Uploads `image`; `on_received` is called when its last byte is written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, on_received, .. } = u;
    let mut part_head = Text::<192>::new();
    let _ = write!(
        part_head,
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"image.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let mut tail = Text::<96>::new();
    let _ = write!(tail, "\r\n--{BOUNDARY}--\r\n");
    let length = part_head.as_bytes().len() + image.len() + tail.as_bytes().len();
    let mut head = Text::<192>::new();
    let _ = write!(
        head,
        "POST /update HTTP/1.1\r\nHost: 10.0.2.15\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    let slot = next_update_partition(target.table, Some(&target.running));
    let site = Site {
        credentials: None,
        project: "",
        version: "",
        slot_size: slot.map_or(0, |p| p.size),
        others_busy: false,
    };
    let mut session = Session::new(Server::new(0));
    let mut out = Out { on_received, ending: Ending::new() };
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
    /// The first failure, as its log line's text.
    ending: Ending<Text<96>>,
}

impl Output for Out<'_> {
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Received => (self.on_received)(),
            Event::Complete(_) => self.ending.completed(),
            Event::Progress { .. } => {}
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
