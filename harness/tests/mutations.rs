//! Image mutations: each is uploaded whole (size and MD5 match the mutated file) to an
//! in-process emulated device and must be rejected before the boot switch, with its precise
//! reason, leaving otadata as it was.

use md5::{Digest, Md5};
use ota_core::io::{Input, LinkId};
use ota_core::proto::esphome::MAGIC;
use ota_emu::device::{Action, Device, DeviceConfig};
use ota_emu::flash::{FileFlash, SplitMix};
use otahil::fixtures;

fn device() -> Device<Vec<u8>> {
    let table = ota_core::partition_csv::parse_csv(fixtures::DEFAULT_PARTITIONS_CSV).unwrap();
    let image =
        ota_emu::mkflash::merged_image(&table, &fixtures::find("v1").unwrap().bytes(), 4 << 20).unwrap();
    let mut d = Device::new(DeviceConfig::default(), FileFlash::in_memory(image), Vec::new());
    d.power_on();
    assert!(d.serving());
    d
}

/// The listener the app opened on the ESPHome port (taken from its first requests once).
fn esphome_listener(d: &mut Device<Vec<u8>>) -> LinkId {
    d.take_step()
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Listen { listener, port: ota_core::proto::esphome::DEFAULT_PORT } => Some(*listener),
            _ => None,
        })
        .expect("the app listens on the ESPHome port")
}

/// Uploads `image` (no password, protocol 2) and returns (last reply byte, serial log).
fn upload(d: &mut Device<Vec<u8>>, image: &[u8]) -> (u8, String) {
    let mut stream = MAGIC.to_vec();
    stream.push(0);
    stream.extend_from_slice(&(image.len() as u32).to_be_bytes());
    let digest: Vec<u8> = Md5::digest(image).iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect();
    stream.extend_from_slice(&digest);
    stream.extend_from_slice(image);
    let listener = esphome_listener(d);
    d.serial().clear();
    let link = d.accept(listener).0.expect("serving");
    let mut reply = Vec::new();
    'upload: for piece in stream.chunks(1024) {
        let step = d.input(Input::Data(link, piece));
        assert!(step.power_lost.is_none(), "power lost: {:?}", step.power_lost);
        assert!(!step.reboot, "a mutated image must never be switched to");
        for action in step.actions {
            match action {
                Action::Send { bytes, .. } => reply.extend(bytes),
                Action::Close { .. } => break 'upload,
                _ => {}
            }
        }
    }
    (*reply.last().unwrap(), String::from_utf8(d.serial().clone()).unwrap())
}

fn otadata(d: &Device<Vec<u8>>) -> Vec<u8> {
    d.flash().data()[0x9000..0xB000].to_vec()
}

fn v2() -> Vec<u8> {
    fixtures::find("v2").unwrap().bytes()
}

fn check(name: &str, image: &[u8], code: u8, reason: &str) {
    let mut d = device();
    let before = otadata(&d);
    let (got, log) = upload(&mut d, image);
    assert_eq!(got, code, "{name}: {log}");
    assert!(log.contains(reason), "{name}: expected `{reason}` in\n{log}");
    assert_eq!(otadata(&d), before, "{name}: otadata changed");
}

#[test]
fn truncated_at_every_4k_boundary() {
    let v2 = v2();
    let mut count = 0;
    for cut in (4096..v2.len()).step_by(4096) {
        // A fresh slot: what follows the cut reads as erased flash. The reason depends on where
        // the cut falls in the image's segments; it must be the one verification gives for the
        // slot's contents.
        let mut slot = v2[..cut].to_vec();
        slot.resize(0x1C0000, 0xFF);
        let reason = ota_core::image::verify_in_partition(
            &mut slot.as_slice(),
            ota_core::image::ChipInfo::ESP32C3,
            0x1C0000,
        )
        .expect_err("a truncated image never verifies");
        check(
            &format!("cut at {cut}"),
            &v2[..cut],
            0x84,
            &format!("New image failed verification: {reason}"),
        );
        count += 1;
    }
    assert_eq!(count, v2.len() / 4096);
}

#[test]
fn named_mutations() {
    let v2 = v2();
    let mut slot = v2[..180].to_vec();
    slot.resize(0x1C0000, 0xFF);
    let reason =
        ota_core::image::verify(&mut slot.as_slice(), ota_core::image::ChipInfo::ESP32C3).unwrap_err();
    check("header cut at 180", &v2[..180], 0x84, &format!("New image failed verification: {reason}"));

    let mut m = v2.clone();
    m[13] = 0xFE; // esp-idf's own test
    ota_core::image_builder::reseal(&mut m).unwrap();
    check("chip id byte 13", &m, 0x84, "mismatch chip ID, expected 5, found 65029");

    let mut m = v2.clone();
    let at = m.len() - 33;
    m[at] ^= 0x01;
    check("checksum flipped", &m, 0x84, "Checksum failed.");

    let mut m = v2.clone();
    let last = m.len() - 1;
    m[last] ^= 0x01;
    check("sha-256 flipped", &m, 0x84, "Image hash failed - image is corrupt");

    let mut m = v2.clone();
    m[28..32].copy_from_slice(&0x00F0_0000u32.to_le_bytes());
    check(
        "segment length past the end",
        &m,
        0x84,
        "segment 0 ends at 0xf00020, past the end of the partition",
    );

    let mut m = v2.clone();
    m[0x20] ^= 0xFF;
    ota_core::image_builder::reseal(&mut m).unwrap();
    check("app descriptor magic", &m, 0x84, "app descriptor magic 0xabcd54cd is not 0xabcd5432");

    let mut m = v2.clone();
    let mut rng = SplitMix(5);
    for b in &mut m[1000..5000] {
        *b = rng.byte();
    }
    check("random bytes in the payload", &m, 0x84, "New image failed verification");

    let mut rng = SplitMix(6);
    let mut m: Vec<u8> = (0..20_000).map(|_| rng.byte()).collect();
    m[0] = 0x17;
    check("random bytes", &m, 0x80, "OTA image has invalid magic byte (expected 0xE9, saw 0x17)");

    check(
        "larger than the slot",
        &fixtures::find("oversized").unwrap().bytes(),
        0x89,
        "does not fit the 1835008-byte partition",
    );
}
