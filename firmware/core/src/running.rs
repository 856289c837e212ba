//! What the running device knows about itself: its MAC and its image's size, MD5 and SHA-256
//! (client ids, the Arduino updater's `x-ESP32-*` headers, Homie's `$fw/checksum`), read once
//! per boot.

/// What the running device knows about itself (arduino-esp32's `ESP` class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunningFacts {
    /// The station MAC (the soft-AP's is one more, as `esp_read_mac` derives it).
    pub mac: [u8; 6],
    /// `ESP.getFreeSketchSpace()`: the next OTA slot's size.
    pub free_space: u32,
    /// `ESP.getSketchSize()`: the running image's length.
    pub sketch_size: u32,
    /// `ESP.getSketchMD5()`.
    pub sketch_md5: [u8; 16],
    /// `esp_partition_get_sha256` of the running partition (arduino-esp32's `getSketchSHA256`).
    pub sketch_sha256: [u8; 32],
    /// `ESP.getFlashChipSize()`.
    pub chip_size: u32,
}

impl RunningFacts {
    /// The facts of the app `booted` runs, read from its flash (the image's MD5 in 1 KiB reads).
    pub fn read<F: embedded_storage::nor_flash::ReadNorFlash>(
        flash: &mut F,
        table: &crate::partition::PartitionTable,
        booted: &crate::boot::Booted,
        mac: [u8; 6],
    ) -> Result<Self, F::Error> {
        use md5::{Digest, Md5};
        let len = booted.image.len;
        let mut md5 = Md5::new();
        let mut buf = [0u8; 1024];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u32);
            flash.read(booted.partition.offset + at, &mut buf[..n as usize])?;
            md5.update(&buf[..n as usize]);
            at += n;
        }
        let next = crate::writer::next_update_partition(table, Some(&booted.partition));
        Ok(RunningFacts {
            mac,
            free_space: next.map_or(0, |p| p.size),
            sketch_size: len,
            sketch_md5: md5.finalize().into(),
            sketch_sha256: booted.image.partition_sha256,
            chip_size: flash.capacity() as u32,
        })
    }
}
