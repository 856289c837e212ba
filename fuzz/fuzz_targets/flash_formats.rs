//! The parsers of everything the harness reads from a flash dump or a user, and the device reads
//! from its flash: the binary partition table (and its round trip), the CSV table, otadata
//! entries, app images, and an NVS partition with the device's settings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_core::image::{ChipInfo, verify};
use ota_core::otadata::{OtaData, OtaEntry};
use ota_core::partition::{Partition, PartitionTable, SUBTYPE_DATA_NVS, TYPE_DATA};
use ota_core::proto::esphome::settings::OtaSettings;
use ota_core::wifi::WifiCredentials;
use ota_emu::flash::FileFlash;

/// `data` as the nvs partition (at 0x9000, up to three pages) of a device reading its settings.
fn nvs_settings(data: &[u8]) {
    const AT: usize = 0x9000;
    let pages = data.len().div_ceil(4096).clamp(1, 3);
    let mut image = vec![0xFF; AT + pages * 4096];
    let n = data.len().min(pages * 4096);
    image[AT..AT + n].copy_from_slice(&data[..n]);
    let part = Partition::new("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, AT as u32, (pages * 4096) as u32, 0);
    let mut table = PartitionTable::new();
    table.push(part).expect("a valid layout");
    let mut flash = FileFlash::in_memory(image);
    for key in ["ota_password", "ota_protocol", "wifi_ssid"] {
        for room in [4usize, 65] {
            let mut buf = vec![0u8; room];
            if let Ok(Some(ota_core::nvs::Value::Str(s))) =
                ota_core::nvs::get(&mut flash, &part, "otahil", key, &mut buf)
            {
                assert!(s.len() < room, "a string and its NUL fit the buffer");
            }
        }
    }
    let mut lines = 0usize;
    let settings =
        OtaSettings::built_in(None, 2)
            .load(&mut flash, &table, &mut |_: &ota_core::log::LogEvent<'_>| lines += 1);
    assert!(settings.password().is_none_or(|p| p.len() <= ota_core::settings::MAX_PASSWORD_LEN));
    assert!(matches!(settings.protocol, 1 | 2));
    let _ =
        WifiCredentials::load(&mut flash, &table, "", "", &mut |_: &ota_core::log::LogEvent<'_>| lines += 1);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = PartitionTable::parse(data, 16 << 20) {
        let again = PartitionTable::parse(&t.to_bytes(true), 16 << 20).expect("a parsed table rebuilds");
        assert_eq!(again.partitions(), t.partitions());
        let _ = ota_core::boot::select(&t, None);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = ota_core::partition_csv::parse_csv(text)
    {
        let bytes = t.to_bytes(true);
        assert_eq!(
            PartitionTable::parse(&bytes, u32::MAX).map(|p| p.partitions().len()),
            Ok(t.partitions().len())
        );
    }
    if data.len() >= 64 {
        let d = OtaData::parse(data[..32].try_into().unwrap(), data[32..64].try_into().unwrap());
        let _ = d.active();
        for e in d.entries {
            assert_eq!(OtaEntry::parse(&e.to_bytes()), e);
        }
        let _ = d.next_for_slot(data[0] % 16, 1 + data[1] % 16);
    }
    nvs_settings(data);
    if let Ok(info) = verify(&mut &data[..], ChipInfo::ESP32C3) {
        assert!(info.len as usize <= data.len());
    }
});
