//! The named fixture images and partition tables scenarios refer to, built deterministically
//! with `ota-core`'s image builder. `cargo xtask fixtures` writes them to `fixtures/images/`;
//! scenarios use them by name without needing those files.

use ota_core::image::CHIP_ID_ESP32C3;
use ota_core::image_builder::{ImageSpec, build, reseal};
use ota_core::selftest::SelfTest;

/// The project name every fixture app carries.
pub const PROJECT: &str = "otahil-fw";

/// The default partition layout: ESPHome's 4 MB ESP-IDF table (two 1.75 MiB OTA slots).
pub const DEFAULT_PARTITIONS_CSV: &str = include_str!("../../fixtures/partitions/esphome-4mb.csv");

/// A fixture: its name, what it is for, and how to make it.
pub struct Fixture {
    pub name: &'static str,
    pub about: &'static str,
    make: fn() -> Vec<u8>,
}

impl Fixture {
    pub fn bytes(&self) -> Vec<u8> {
        (self.make)()
    }
}

fn app(version: &str, seed: u64, self_test: SelfTest, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new(PROJECT, version);
    spec.payload_len = payload;
    spec.seed = seed;
    spec.self_test = self_test;
    let mut out = vec![0u8; spec.image_len()];
    build(&spec, &mut out).expect("buffer sized by image_len");
    out
}

// The named apps are the chip firmware itself (`cargo xtask firmware`, reproducible, checked
// against these files on every build), so the emulator and QEMU run the same bytes and take the
// same snapshots.
fn v1() -> Vec<u8> {
    include_bytes!("../../fixtures/firmware/v1.bin").to_vec()
}
fn v2() -> Vec<u8> {
    include_bytes!("../../fixtures/firmware/v2.bin").to_vec()
}
fn v2_1mib() -> Vec<u8> {
    app("2.0.0-1mib", 7, SelfTest::Pass, 1024 * 1024)
}
fn v3() -> Vec<u8> {
    include_bytes!("../../fixtures/firmware/v3.bin").to_vec()
}
fn selftest_fail() -> Vec<u8> {
    include_bytes!("../../fixtures/firmware/selftest-fail.bin").to_vec()
}
fn selftest_hang() -> Vec<u8> {
    include_bytes!("../../fixtures/firmware/selftest-hang.bin").to_vec()
}
fn oversized() -> Vec<u8> {
    // One sector more than an app slot of the default layout (0x1C0000).
    app("9.9.9-oversized", 6, SelfTest::Pass, 0x1C0000 + 4096)
}
/// The fixtures that are v2 with one defect, as functions of v2, so that a backend running other
/// v2 bytes (the firmware build on QEMU) gets the same defect.
pub fn derived_from_v2(name: &str, v2: &[u8]) -> Option<Vec<u8>> {
    let mut v = v2.to_vec();
    match name {
        "truncated" => v.truncate(v.len() / 2),
        "corrupt-checksum" => {
            let at = v.len() - 33;
            v[at] ^= 0xFF;
        }
        "wrong-chip" => {
            // esp-idf's own test sets byte 13 to 0xFE; resealed, so only the chip id is wrong.
            v[12..14].copy_from_slice(&(CHIP_ID_ESP32C3 | 0xFE00).to_le_bytes());
            reseal(&mut v)?;
        }
        "header-cut" => v.truncate(180),
        _ => return None,
    }
    Some(v)
}

fn truncated() -> Vec<u8> {
    derived_from_v2("truncated", &v2()).expect("known name")
}
fn corrupt_checksum() -> Vec<u8> {
    derived_from_v2("corrupt-checksum", &v2()).expect("known name")
}
fn wrong_chip() -> Vec<u8> {
    derived_from_v2("wrong-chip", &v2()).expect("known name")
}
fn header_cut() -> Vec<u8> {
    derived_from_v2("header-cut", &v2()).expect("known name")
}
fn not_an_image() -> Vec<u8> {
    (0..64 * 1024u32).map(|i| (i % 251) as u8).collect()
}

pub const FIXTURES: &[Fixture] = &[
    Fixture { name: "v1", about: "the chip firmware, version 1.0.0", make: v1 },
    Fixture { name: "v2", about: "the chip firmware, version 2.0.0", make: v2 },
    Fixture {
        name: "v2-1mib",
        about: "a built app 2.0.0 with 1 MiB of data (the sweep's image; emulator only)",
        make: v2_1mib,
    },
    Fixture { name: "v3", about: "the chip firmware, version 3.0.0", make: v3 },
    Fixture {
        name: "selftest-fail",
        about: "the chip firmware whose self-test fails on its first boot",
        make: selftest_fail,
    },
    Fixture {
        name: "selftest-hang",
        about: "the chip firmware whose self-test never finishes",
        make: selftest_hang,
    },
    Fixture {
        name: "oversized",
        about: "valid image one sector larger than the default app slot",
        make: oversized,
    },
    Fixture { name: "truncated", about: "the first half of v2", make: truncated },
    Fixture { name: "corrupt-checksum", about: "v2 with its checksum byte flipped", make: corrupt_checksum },
    Fixture { name: "wrong-chip", about: "v2 built for chip id 0xFE05 (resealed)", make: wrong_chip },
    Fixture { name: "header-cut", about: "v2 cut at 180 bytes", make: header_cut },
    Fixture { name: "not-an-image", about: "64 KiB that do not start with 0xE9", make: not_an_image },
];

pub fn find(name: &str) -> Option<&'static Fixture> {
    FIXTURES.iter().find(|f| f.name == name)
}

pub fn names() -> String {
    FIXTURES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::image::{ChipInfo, ImageError, verify};

    fn check(name: &str) -> Result<String, ImageError> {
        let bytes = find(name).unwrap().bytes();
        verify(&mut bytes.as_slice(), ChipInfo::ESP32C3).map(|i| i.desc.version().to_string())
    }

    #[test]
    fn fixtures_are_what_they_say() {
        assert_eq!(check("v1").unwrap(), "1.0.0");
        assert_eq!(check("v3").unwrap(), "3.0.0");
        assert!(find("oversized").unwrap().bytes().len() > 0x1C0000);
        assert!(matches!(check("truncated"), Err(ImageError::SegmentPastEnd { .. })));
        assert!(matches!(check("corrupt-checksum"), Err(ImageError::Checksum { .. })));
        assert_eq!(check("wrong-chip"), Err(ImageError::ChipIdMismatch { expected: 5, found: 0xFE05 }));
        assert!(matches!(check("header-cut"), Err(ImageError::SegmentPastEnd { .. })));
        assert_eq!(check("not-an-image"), Err(ImageError::InvalidMagic { found: 0 }));
        assert_eq!(find("v2").unwrap().bytes(), find("v2").unwrap().bytes(), "deterministic");
    }
}
