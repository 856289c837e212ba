//! The MQTT-triggered pull scripted: the trigger only starts it; what writes is
//! `esp_https_ota` reading a plain 200 with a Content-Length, segment by segment.

use crate::proto::http_pull::script::{PullOut, download};
use crate::proto::http_pull::{Client, Config};
use crate::script::{ScriptError, Text, Upload};
use crate::session::Session;
use core::fmt::Write;
use embedded_storage::nor_flash::NorFlash;

/// Pulls `image`; `on_received` is called when its last byte is written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, on_received, .. } = u;
    let cfg = Config::esp_https_ota("1.0.0");
    let mut session = Session::new(Client::default());
    let mut out = PullOut::new(image.len() as u64, on_received);
    let mut head = Text::<64>::new();
    let _ = write!(head, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", image.len());
    session.with(flash, target, |client, sink| {
        download(client, &cfg, "http://10.0.2.2:8000/fw.bin", head.as_str(), image, sink, &mut out)
    });
    out.result()
}
