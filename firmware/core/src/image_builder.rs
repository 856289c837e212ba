//! Builds valid ESP32-C3 app images (and deliberately broken ones, by editing the result).
//!
//! The layout is what esptool writes for a small app: a DROM segment at 0x3C000020 that starts
//! with the app descriptor (so file offset ≡ load address mod 64 KiB), then a small IRAM
//! segment; 0x00 padding, the checksum byte, the appended SHA-256.

use crate::app_desc::AppDesc;
use crate::image::{
    CHECKSUM_SEED, CHIP_ID_ESP32C3, HEADER_LEN, IMAGE_MAGIC, ImageHeader, SEGMENT_HEADER_LEN,
};
use crate::selftest::SelfTest;
use sha2::{Digest, Sha256};

const DROM_ADDR: u32 = 0x3C00_0020;
const IRAM_ADDR: u32 = 0x4038_0000;
/// Four `nop`s (`addi x0, x0, 0` = 0x00000013): the IRAM segment's "code".
const IRAM_CODE: [u8; 16] = [0x13, 0, 0, 0, 0x13, 0, 0, 0, 0x13, 0, 0, 0, 0x13, 0, 0, 0];

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct ImageSpec<'a> {
    pub project: &'a str,
    pub version: &'a str,
    pub idf_ver: &'a str,
    /// Extra DROM bytes after the descriptor (pseudo-random from `seed`), rounded up to 4.
    pub payload_len: u32,
    pub seed: u64,
    pub self_test: SelfTest,
    pub chip_id: u16,
    pub secure_version: u32,
}

impl<'a> ImageSpec<'a> {
    pub fn new(project: &'a str, version: &'a str) -> Self {
        ImageSpec {
            project,
            version,
            idf_ver: "v5.5.5",
            payload_len: 0,
            seed: 0,
            self_test: SelfTest::Pass,
            chip_id: CHIP_ID_ESP32C3,
            secure_version: 0,
        }
    }

    fn drom_len(&self) -> u32 {
        let marker = self.self_test.marker().map_or(0, |m| m.len() as u32);
        crate::align_up(256 + marker + self.payload_len, 4)
    }

    /// Length of the image [`build`] writes.
    pub fn image_len(&self) -> usize {
        let body = HEADER_LEN + 2 * SEGMENT_HEADER_LEN + self.drom_len() + IRAM_CODE.len() as u32;
        (crate::align_up(body + 1, 16) + 32) as usize
    }
}

/// `out` is shorter than [`ImageSpec::image_len`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BufferTooSmall {
    pub needed: usize,
}

/// Writes the image for `spec` into `out`; returns its length.
pub fn build(spec: &ImageSpec<'_>, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let total = spec.image_len();
    if out.len() < total {
        return Err(BufferTooSmall { needed: total });
    }
    let out = &mut out[..total];
    out.fill(0);
    let header = ImageHeader {
        magic: IMAGE_MAGIC,
        segment_count: 2,
        spi_mode: 2,          // DIO
        spi_speed_size: 0x20, // 4 MB, 40 MHz
        entry_addr: IRAM_ADDR,
        wp_pin: 0xEE,
        spi_pin_drv: [0; 3],
        chip_id: spec.chip_id,
        min_chip_rev: 3,
        min_chip_rev_full: 3,
        max_chip_rev_full: 199,
        reserved: [0; 4],
        hash_appended: 1,
    };
    out[..HEADER_LEN as usize].copy_from_slice(&header.to_bytes());
    let mut pos = HEADER_LEN as usize;
    let drom_len = spec.drom_len() as usize;
    out[pos..pos + 4].copy_from_slice(&DROM_ADDR.to_le_bytes());
    out[pos + 4..pos + 8].copy_from_slice(&(drom_len as u32).to_le_bytes());
    pos += 8;
    let mut desc = AppDesc::new(spec.project, spec.version, spec.idf_ver);
    desc.secure_version = spec.secure_version;
    out[pos..pos + 256].copy_from_slice(&desc.to_bytes());
    let mut p = pos + 256;
    if let Some(marker) = spec.self_test.marker() {
        out[p..p + marker.len()].copy_from_slice(&marker);
        p += marker.len();
    }
    let mut rng = crate::rng::SplitMix(spec.seed);
    for chunk in out[p..pos + drom_len].chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let mut checksum = CHECKSUM_SEED;
    for &b in &out[pos..pos + drom_len] {
        checksum ^= b;
    }
    pos += drom_len;
    out[pos..pos + 4].copy_from_slice(&IRAM_ADDR.to_le_bytes());
    out[pos + 4..pos + 8].copy_from_slice(&(IRAM_CODE.len() as u32).to_le_bytes());
    pos += 8;
    out[pos..pos + IRAM_CODE.len()].copy_from_slice(&IRAM_CODE);
    for &b in &IRAM_CODE {
        checksum ^= b;
    }
    pos += IRAM_CODE.len();
    let checksum_at = crate::align_up(pos as u32 + 1, 16) as usize - 1;
    out[checksum_at] = checksum;
    let digest: [u8; 32] = Sha256::digest(&out[..=checksum_at]).into();
    out[checksum_at + 1..checksum_at + 33].copy_from_slice(&digest);
    Ok(total)
}

/// Recomputes the checksum byte and appended SHA-256 of an image edited in place (for fixtures
/// that must be *well-formed* yet wrong in one field, e.g. another chip id).
pub fn reseal(image: &mut [u8]) -> Option<()> {
    let header = ImageHeader::parse(image.get(..HEADER_LEN as usize)?.try_into().ok()?);
    let mut pos = HEADER_LEN as usize;
    let mut checksum = CHECKSUM_SEED;
    for _ in 0..header.segment_count {
        let len = u32::from_le_bytes(image.get(pos + 4..pos + 8)?.try_into().ok()?) as usize;
        pos += 8;
        for &b in image.get(pos..pos + len)? {
            checksum ^= b;
        }
        pos += len;
    }
    let checksum_at = crate::align_up(pos as u32 + 1, 16) as usize - 1;
    *image.get_mut(checksum_at)? = checksum;
    if header.hash_appended == 1 {
        let digest: [u8; 32] = Sha256::digest(image.get(..=checksum_at)?).into();
        image.get_mut(checksum_at + 1..checksum_at + 33)?.copy_from_slice(&digest);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ChipInfo, ImageError, verify, verify_in_partition};
    use std::vec;
    use std::vec::Vec;

    fn built(spec: &ImageSpec<'_>) -> Vec<u8> {
        let mut v = vec![0u8; spec.image_len()];
        build(spec, &mut v).unwrap();
        v
    }

    #[test]
    fn reproduces_the_spec_example() {
        // esp-idf-flash-formats.md "Worked example", accepted by esptool image-info.
        let img = built(&ImageSpec::new("demo", "1.2.3"));
        assert_eq!(img.len(), 352);
        assert_eq!(
            &img[0..16],
            &[0xe9, 0x02, 0x02, 0x20, 0x00, 0x00, 0x38, 0x40, 0xee, 0, 0, 0, 0x05, 0x00, 0x03, 0x03]
        );
        assert_eq!(&img[16..32], &[0x00, 0xc7, 0, 0, 0, 0, 0, 0x01, 0x20, 0, 0, 0x3c, 0x00, 0x01, 0, 0]);
        assert_eq!(&img[0x120..0x130], &[0, 0, 0x38, 0x40, 0x10, 0, 0, 0, 0x13, 0, 0, 0, 0x13, 0, 0, 0]);
        // The spec's hexdump elides descriptor bytes 0x36..0x11F, and its checksum (0x1a) and hash
        // imply non-zero fields there that it does not list, so those two bytes cannot be
        // compared; everything the dump shows is.
        assert_eq!(&img[0x20..0x24], &[0x32, 0x54, 0xcd, 0xab]);
        assert_eq!(&img[0x30..0x36], b"1.2.3\0");
        assert_eq!(&img[0x130..0x13F], &[0x13, 0, 0, 0, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let info = verify(&mut img.as_slice(), ChipInfo::ESP32C3).unwrap();
        assert_eq!(info.len, 352);
        assert_eq!(info.desc.version(), "1.2.3");
        assert_eq!(info.desc.project_name(), "demo");
    }

    #[test]
    fn payload_and_seed_change_the_image_deterministically() {
        let mut spec = ImageSpec::new("otahil", "1.0.0");
        spec.payload_len = 100_001;
        spec.seed = 7;
        let a = built(&spec);
        assert_eq!(a, built(&spec));
        spec.seed = 8;
        assert_ne!(a, built(&spec));
        assert!(verify(&mut a.as_slice(), ChipInfo::ESP32C3).is_ok());
        assert_eq!(a.len(), spec.image_len());
        let mut small = [0u8; 10];
        assert_eq!(build(&spec, &mut small), Err(BufferTooSmall { needed: spec.image_len() }));
    }

    #[test]
    fn self_test_marker_is_found() {
        for st in [SelfTest::Pass, SelfTest::Fail, SelfTest::Hang] {
            let mut spec = ImageSpec::new("otahil", "1.0.0");
            spec.self_test = st;
            spec.payload_len = 3000;
            let img = built(&spec);
            assert_eq!(SelfTest::declared_by(&mut img.as_slice(), img.len() as u32), Ok(st));
        }
    }

    #[test]
    fn every_validation_failure_reason() {
        let chip = ChipInfo::ESP32C3;
        let mut spec = ImageSpec::new("otahil", "1.0.0");
        spec.payload_len = 5000;
        let good = built(&spec);
        let check = |img: &[u8]| verify(&mut &img[..], chip).unwrap_err();

        assert_eq!(check(&[]), ImageError::Truncated { needed: 24, available: 0 });
        assert_eq!(
            check(&good[..180]),
            ImageError::SegmentPastEnd { segment: 0, end: 32 + 5256, available: 180 }
        );
        assert_eq!(check(&good[..20]), ImageError::Truncated { needed: 24, available: 20 });
        let cut = good.len() - 40;
        assert!(
            matches!(check(&good[..cut]), ImageError::Truncated { available, .. } if available == cut as u32)
        );
        let cut = good.len() - 1; // the appended hash is one byte short
        assert_eq!(
            check(&good[..cut]),
            ImageError::Truncated { needed: good.len() as u32, available: cut as u32 }
        );

        let mut bad = good.clone();
        bad[0] = 0xFF;
        assert_eq!(check(&bad), ImageError::InvalidMagic { found: 0xFF });

        let mut bad = good.clone();
        bad[13] = 0xFE; // esp-idf's own test sets byte 13 to 0xFE
        assert_eq!(check(&bad), ImageError::ChipIdMismatch { expected: 5, found: 0xFE05 });

        let mut bad = good.clone();
        bad[15] = 5; // min_chip_rev_full v0.5 on a v0.4 chip
        assert_eq!(check(&bad), ImageError::ChipRevTooLow { required: 5, found: 4 });
        let mut bad = good.clone();
        bad[17] = 2;
        bad[18] = 0;
        assert_eq!(check(&bad), ImageError::ChipRevTooHigh { allowed: 2, found: 4 });

        let mut bad = good.clone();
        bad[1] = 17;
        assert_eq!(check(&bad), ImageError::SegmentCount { count: 17 });

        let mut bad = good.clone();
        bad[28] = bad[28].wrapping_add(1); // seg0 length no longer a multiple of 4
        assert!(matches!(check(&bad), ImageError::SegmentLength { segment: 0, .. }));

        let mut bad = good.clone();
        bad[30] = 0x10; // seg0 length 0x10_xxxx: past the end
        assert!(matches!(check(&bad), ImageError::SegmentPastEnd { segment: 0, .. }));

        let mut bad = good.clone();
        bad[24] = 0x40; // DROM load address 0x3C000040 vs file offset 0x20
        assert_eq!(
            check(&bad),
            ImageError::SegmentAlignment { segment: 0, load_addr: 0x3C00_0040, file_offset: 0x20 }
        );

        let mut bad = good.clone();
        let checksum_at = good.len() - 33;
        bad[checksum_at] ^= 0x01;
        assert_eq!(
            check(&bad),
            ImageError::Checksum { calculated: good[checksum_at], read: good[checksum_at] ^ 1 }
        );

        let mut bad = good.clone();
        bad[2000] ^= 0x55;
        bad[2001] ^= 0x55; // checksum unchanged (XOR cancels), hash catches it
        assert_eq!(check(&bad), ImageError::Hash);

        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 0x80;
        assert_eq!(check(&bad), ImageError::Hash);

        let mut bad = good.clone();
        bad[0x20] = 0x00;
        reseal(&mut bad).unwrap();
        assert_eq!(check(&bad), ImageError::AppDescMagic { found: 0xABCD_5400 });

        assert_eq!(
            verify_in_partition(&mut good.as_slice(), chip, 4096).unwrap_err(),
            ImageError::TooBig { image_len: good.len() as u32, partition_len: 4096 }
        );

        // Every reason has a distinct kind and a message.
        for e in [ImageError::Hash, ImageError::Read] {
            assert!(!std::format!("{e}").is_empty());
        }
    }

    #[test]
    fn reseal_makes_an_edited_image_verify_again() {
        let mut img = built(&ImageSpec::new("otahil", "1.0.0"));
        img[0x30] = b'9';
        assert!(verify(&mut img.as_slice(), ChipInfo::ESP32C3).is_err());
        reseal(&mut img).unwrap();
        assert_eq!(verify(&mut img.as_slice(), ChipInfo::ESP32C3).unwrap().desc.version(), "9.0.0");
    }
}
