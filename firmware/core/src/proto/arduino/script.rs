//! ArduinoOTA's uploader scripted (`espota.py`): the invitation datagram, the back-connection,
//! the image in 1 KiB writes, the close; authentication off.

use super::{Config, Event, NonceSource, Output, Server};
use crate::script::{Ending, NoNonce, PIECE, ScriptError, Text, Upload};
use crate::session::Session;
use core::fmt::Write;
use core::net::SocketAddr;
use embedded_storage::nor_flash::NorFlash;

impl NonceSource for NoNonce {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
    }
}

/// Uploads `image` (MD5 `md5_hex`); `on_received` is called when its last byte is written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, md5_hex, on_received } = u;
    let mut session = Session::new(Server::new(Config::default()));
    let mut out = Out { on_received, ending: Ending::new() };
    let host = SocketAddr::from(([127, 0, 0, 1], 40000));
    let mut invitation = Text::<64>::new();
    let md5 = core::str::from_utf8(&md5_hex).unwrap_or("");
    let _ = writeln!(invitation, "0 40001 {} {md5}", image.len());
    session.with(flash, target, |server, sink| {
        server.datagram(host, invitation.as_bytes(), false, sink, &mut NoNonce, &mut out);
        server.connected(0);
        for piece in image.chunks(PIECE) {
            server.data(piece, 0, sink, &mut out);
        }
        server.closed(sink, &mut out);
    });
    out.ending.result(|e| {
        let mut error = None;
        e.log(&mut |l: &crate::log::LogEvent<'_>| {
            error.get_or_insert(ScriptError::new(format_args!("{l}")));
        });
        error.unwrap_or_else(|| ScriptError::new(format_args!("Arduino({e:?})")))
    })
}

struct Out<'a> {
    on_received: &'a mut dyn FnMut(),
    ending: Ending<Event>,
}

impl Output for Out<'_> {
    fn datagram(&mut self, _to: SocketAddr, _bytes: &[u8]) {}
    fn connect(&mut self, _to: SocketAddr) {}
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, event: Event) {
        use Event::*;
        match event {
            Received { .. } => (self.on_received)(),
            Complete(_) => self.ending.completed(),
            AuthRequested | Begin { .. } | Progress { .. } => {}
            _ => self.ending.failed(event),
        }
    }
}
