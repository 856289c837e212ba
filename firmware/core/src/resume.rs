//! Where an interrupted pull had got to, kept in NVS across power cuts so the download can go on
//! with `Range` instead of starting again (ESP-IDF's `ota_resumption`; its example keeps the URL
//! and the written length the same way). Namespace `otahil`, keys [`KEY_URL`] (the URL the
//! trigger named) and [`KEY_AT`] (bytes of the image in the slot, a multiple of
//! [`RESUME_UNIT`]).
//!
//! A record is started (offset erased first, then the URL), advanced (the offset only), and
//! cleared (offset first): a cut anywhere leaves either no record or a URL with an offset that
//! was true for it, never another URL's offset.

use crate::nvs::{self, StoreError, Value};
use crate::partition::Partition;
use crate::settings::NAMESPACE;
use crate::writer::RESUME_UNIT;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

pub const KEY_URL: &str = "resume_url";
pub const KEY_AT: &str = "resume_at";

/// The record, if there is a whole one: the URL (copied into `buf`) and the offset.
pub fn load<'b, F: ReadNorFlash>(
    flash: &mut F,
    part: &Partition,
    buf: &'b mut [u8],
) -> Option<(&'b str, u32)> {
    let mut n = [0u8; 8];
    let Ok(Some(Value::U32(at))) = nvs::get(flash, part, NAMESPACE, KEY_AT, &mut n) else { return None };
    if at < RESUME_UNIT || at % RESUME_UNIT != 0 {
        return None;
    }
    match nvs::get(flash, part, NAMESPACE, KEY_URL, buf) {
        Ok(Some(Value::Str(url))) if !url.is_empty() => Some((url, at)),
        _ => None,
    }
}

/// Starts a record for `url` at `at` bytes.
pub fn start<F: NorFlash>(flash: &mut F, part: &Partition, url: &str, at: u32) -> Result<(), StoreError> {
    nvs::erase(flash, part, NAMESPACE, KEY_AT)?;
    nvs::set_str(flash, part, NAMESPACE, KEY_URL, url)?;
    advance(flash, part, at)
}

/// The download of the recorded URL has `at` bytes in the slot.
pub fn advance<F: NorFlash>(flash: &mut F, part: &Partition, at: u32) -> Result<(), StoreError> {
    nvs::set_u32(flash, part, NAMESPACE, KEY_AT, at - at % RESUME_UNIT)
}

pub fn clear<F: NorFlash>(flash: &mut F, part: &Partition) -> Result<(), StoreError> {
    nvs::erase(flash, part, NAMESPACE, KEY_AT)?;
    nvs::erase(flash, part, NAMESPACE, KEY_URL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::ram::RamFlash;
    use crate::partition::{SUBTYPE_DATA_NVS, TYPE_DATA};

    #[test]
    fn start_advance_clear_and_every_cut_in_between() {
        let part = Partition::new("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, 0, 0x3000, 0);
        let run = |f: &mut RamFlash| -> Result<(), StoreError> {
            start(f, &part, "http://10.0.2.2/a.bin", 4096)?;
            advance(f, &part, 10_000)?;
            start(f, &part, "http://10.0.2.2/b.bin", 2048)?;
            clear(f, &part)
        };
        let mut clean = RamFlash::new(0x3000);
        run(&mut clean).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(load(&mut clean, &part, &mut buf), None);
        for cut in 0..clean.ops.len() {
            let mut f = RamFlash::new(0x3000);
            f.fail_after = Some(cut);
            let _ = run(&mut f);
            f.fail_after = None;
            let got = load(&mut f, &part, &mut buf);
            let ok = matches!(
                got,
                None | Some(("http://10.0.2.2/a.bin", 4096 | 9216)) | Some(("http://10.0.2.2/b.bin", 2048))
            );
            assert!(ok, "cut {cut}: {got:?}");
        }
    }
}
