//! A Homie OTA server scripted: the firmware message arrives in TCP-segment pieces on the
//! topic that names its MD5; the device's own statuses say how it ended.

use super::{Facts, Ota, Output, Status};
use crate::script::{SEGMENT, ScriptError, Upload};
use crate::session::Session;
use embedded_storage::nor_flash::NorFlash;

/// Pushes `image` (MD5 `md5_hex`); `on_received` is called when its last byte is written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, md5_hex, on_received } = u;
    let mut session = Session::new(Ota::default());
    let mut out = Out { on_received, last: image.len() as u32, final_status: None };
    let md5 = core::str::from_utf8(&md5_hex).unwrap_or("");
    // The running image's MD5 is never the new one's: the server pushes another image.
    let facts = Facts { ota_enabled: true, running_md5: "", others_busy: false };
    let total = image.len() as u32;
    session.with(flash, target, |ota, sink| {
        for (i, piece) in image.chunks(SEGMENT).enumerate() {
            ota.piece(md5, (i * SEGMENT) as u32, total, piece, &facts, sink, &mut out);
        }
    });
    match out.final_status {
        Some(Status::Done) => Ok(()),
        Some(status) => Err(ScriptError::new(format_args!("homie status {status}"))),
        None => Err(ScriptError::incomplete()),
    }
}

/// The receiver's statuses: the last image byte taken, then the final word.
struct Out<'a> {
    on_received: &'a mut dyn FnMut(),
    last: u32,
    final_status: Option<Status>,
}

impl Output for Out<'_> {
    fn status(&mut self, status: Status) {
        match status {
            Status::Progress { written, .. } if written == self.last => (self.on_received)(),
            Status::Accepted | Status::Progress { .. } => {}
            done_or_failed => {
                self.final_status.get_or_insert(done_or_failed);
            }
        }
    }
    fn log(&mut self, _line: &crate::log::LogEvent<'_>) {}
}
