//! ESPHome's uploader scripted (`espota2.py`): magic, features, size, MD5, the image in 1 KiB
//! writes, the final OK; authentication off.

use super::{Event, MAGIC, NonceSource, Output, Server, ServerConfig, code};
use crate::script::{Ending, NoNonce, PIECE, ScriptError, Upload};
use crate::session::Session;
use embedded_storage::nor_flash::NorFlash;

impl NonceSource for NoNonce {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
    }
}

/// Uploads `image` (MD5 `md5_hex`); `on_received` is called when its last byte is written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, md5_hex, on_received } = u;
    let config = ServerConfig { password: None, version: 2, sha256: true };
    let mut session = Session::new(Server::new(config));
    let mut out = Out { on_received, ending: Ending::new() };
    let mut feed = |bytes: &[u8], out: &mut Out<'_>| {
        session.with(flash, target, |server, sink| server.feed(bytes, sink, &mut NoNonce, out))
    };
    feed(&MAGIC, &mut out);
    feed(&[0], &mut out);
    feed(&(image.len() as u32).to_be_bytes(), &mut out);
    feed(&md5_hex, &mut out);
    for piece in image.chunks(PIECE) {
        feed(piece, &mut out);
    }
    feed(&[code::OK], &mut out);
    out.ending.result(|e| match e.log_event() {
        Some(line) => ScriptError::new(format_args!("{line}")),
        None => ScriptError::new(format_args!("Esphome({e:?})")),
    })
}

struct Out<'a> {
    on_received: &'a mut dyn FnMut(),
    ending: Ending<Event>,
}

impl Output for Out<'_> {
    fn send(&mut self, _bytes: &[u8]) {}
    fn event(&mut self, event: Event) {
        use Event::*;
        match event {
            Received { .. } => (self.on_received)(),
            Complete(_) => self.ending.completed(),
            MagicMismatch | AuthFailed | AuthMissing | Md5Mismatch | Failed(_) | Interrupted { .. } => {
                self.ending.failed(event)
            }
            _ => {}
        }
    }
}
