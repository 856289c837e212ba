//! The parsers of everything the harness reads from a flash dump or a user: the binary
//! partition table (and its round trip), the CSV table, otadata entries, app images.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_core::image::{ChipInfo, verify};
use ota_core::otadata::{OtaData, OtaEntry};
use ota_core::partition::PartitionTable;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = PartitionTable::parse(data, 16 << 20) {
        let again = PartitionTable::parse(&t.to_bytes(true), 16 << 20).expect("a parsed table rebuilds");
        assert_eq!(again.partitions(), t.partitions());
        let _ = ota_core::boot::select(&t, None);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = ota_core::partition_csv::parse_csv(text) {
            let bytes = t.to_bytes(true);
            assert_eq!(
                PartitionTable::parse(&bytes, u32::MAX).map(|p| p.partitions().len()),
                Ok(t.partitions().len())
            );
        }
    }
    if data.len() >= 64 {
        let d = OtaData::parse(data[..32].try_into().unwrap(), data[32..64].try_into().unwrap());
        let _ = d.active();
        for e in d.entries {
            assert_eq!(OtaEntry::parse(&e.to_bytes()), e);
        }
        let _ = d.next_for_slot(data[0] % 16, 1 + data[1] % 16);
    }
    if let Ok(info) = verify(&mut &data[..], ChipInfo::ESP32C3) {
        assert!(info.len as usize <= data.len());
    }
});
