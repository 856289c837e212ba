//! The CRC that guards an otadata entry.
//!
//! ESP-IDF calls `esp_rom_crc32_le(0xFFFFFFFF, &ota_seq, 4)`. The ROM routine inverts the seed
//! before and the result after, so the register effectively starts at 0 — this is *not* the
//! common CRC-32 (which starts at 0xFFFFFFFF). Equivalent to python's `zlib.crc32(data, 0xFFFFFFFF)`.

const POLY_REFLECTED: u32 = 0xEDB8_8320;

/// `esp_rom_crc32_le(seed, data)` as the ESP32 ROM computes it.
pub const fn esp_rom_crc32_le(seed: u32, data: &[u8]) -> u32 {
    let mut crc = !seed;
    let mut i = 0;
    while i < data.len() {
        crc ^= data[i] as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLY_REFLECTED } else { crc >> 1 };
            bit += 1;
        }
        i += 1;
    }
    !crc
}

/// The CRC stored in an otadata entry for `ota_seq`.
pub const fn otadata_crc(ota_seq: u32) -> u32 {
    esp_rom_crc32_le(0xFFFF_FFFF, &ota_seq.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vectors() {
        // shared/spec/esp-idf-flash-formats.md, "CRC" table.
        assert_eq!(otadata_crc(1), 0x4743_989A);
        assert_eq!(otadata_crc(2), 0x55F6_3774);
        assert_eq!(otadata_crc(3), 0xED4A_5011);
        assert_eq!(otadata_crc(4), 0x709D_68A8);
        assert_eq!(otadata_crc(16), 0xAFE6_A860);
    }

    #[test]
    fn differs_from_standard_crc32() {
        // Standard CRC-32 of LE 1 is 0x99F8B879: the ROM variant must not produce it.
        assert_eq!(esp_rom_crc32_le(0, &1u32.to_le_bytes()), 0x99F8_B879);
        assert_ne!(otadata_crc(1), 0x99F8_B879);
    }
}
