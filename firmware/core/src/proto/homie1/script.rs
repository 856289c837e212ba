//! Homie 1.x scripted, its flash operations in order: the offer's target stored in NVS (the
//! device then restarts into OTA mode; a boot of the same valid image writes nothing), the pull
//! through arduino-esp32's `Update` (`HTTPUpdate`: a 200 with its length and `x-MD5`, read in
//! segments), then the flag cleared before the restart into the new image.

use super::service::Pull;
use super::settings::KEY_HOMIE1_FLAG;
use crate::proto::http_pull::script::{PullOut, download};
use crate::proto::http_pull::{Config, DeviceFacts};
use crate::script::{ScriptError, Text, Upload};
use crate::session::Session;
use core::fmt::Write;
use embedded_storage::nor_flash::NorFlash;

/// Offers and pulls `image` (MD5 `md5_hex`); `on_received` is called when its last byte is
/// written.
pub fn upload<F: NorFlash>(u: Upload<'_, F>) -> Result<(), ScriptError> {
    let Upload { flash, target, image, md5_hex, on_received } = u;
    let nvs = target.table.nvs().copied().ok_or_else(ScriptError::incomplete)?;
    let ns = crate::settings::NAMESPACE;
    let desc = crate::app_desc::of_image(image).ok_or_else(ScriptError::incomplete)?;
    crate::nvs::set_str(flash, &nvs, ns, KEY_HOMIE1_FLAG, desc.version())
        .map_err(|_| ScriptError::new(format_args!("homie1: the OTA-mode flag was not stored")))?;
    let facts = DeviceFacts {
        sta_mac: [0x02, 0, 0, 0, 0, 1],
        ap_mac: [0x02, 0, 0, 0, 0, 2],
        free_space: crate::writer::next_update_partition(target.table, Some(&target.running))
            .map_or(0, |p| p.size),
        sketch_size: image.len() as u32,
        sketch_md5: None,
        sketch_sha256: None,
        chip_size: 4 << 20,
        sdk_version: crate::proto::mqtt_pull::SDK_VERSION,
        version: "",
    };
    let cfg = Config::arduino(facts, "1.0.0");
    let mut session = Session::new(Pull::default());
    let mut out = PullOut::new(image.len() as u64, on_received);
    let md5 = core::str::from_utf8(&md5_hex).unwrap_or("");
    let mut head = Text::<120>::new();
    let _ = write!(head, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-MD5: {md5}\r\n\r\n", image.len());
    session.with(flash, target, |pull, sink| {
        download(&mut pull.0, &cfg, "http://10.0.2.2:8000/ota", head.as_str(), image, sink, &mut out)
    });
    // Whatever the pull gave, OTA mode ends with the flag cleared.
    crate::nvs::erase(flash, &nvs, ns, KEY_HOMIE1_FLAG)
        .map_err(|_| ScriptError::new(format_args!("homie1: the OTA-mode flag was not cleared")))?;
    out.result()
}
