//! The flash inspector: a flash dump in, the partition state out — the table, both otadata
//! copies, the slot the bootloader would pick and why, and every app slot's image — in a stable
//! text form for snapshots. The decoding is `ota-core`'s, the same the device runs.

use ota_core::boot::{BootIndex, SelectReason, load_order, select, verify_slot};
use ota_core::image::ChipInfo;
use ota_core::log::SlotName;
use ota_core::otadata::{OtaData, OtaEntry, SEQ_EMPTY};
use ota_core::partition::{Md5Row, PartitionTable, TABLE_LEN, TABLE_OFFSET};
use ota_emu::flash::FileFlash;
use sha2::{Digest, Sha256};
use std::fmt::Write;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_line(e: &OtaEntry) -> String {
    if e.seq == SEQ_EMPTY && e.state.to_u32() == 0xFFFF_FFFF && e.crc == 0xFFFF_FFFF {
        return "erased".into();
    }
    format!(
        "seq={} state={} crc={}{}",
        e.seq,
        e.state,
        if e.crc_ok() { "ok" } else { "BAD" },
        if e.is_valid() { "" } else { " (not selectable)" }
    )
}

fn reason_text(r: SelectReason) -> String {
    match r {
        SelectReason::NoOtadataPartition => "no otadata partition: factory".into(),
        SelectReason::NoValidCopyFactory => "no valid otadata copy: factory".into(),
        SelectReason::NoValidCopyOta0 => "no valid otadata copy and no factory: ota_0".into(),
        SelectReason::ActiveCopy { copy, seq, state } => {
            format!("otadata[{copy}] has the highest valid seq ({seq}, {state})")
        }
        SelectReason::OtadataInvalidFactory => "otadata invalid (CRC): factory".into(),
        SelectReason::OtadataInvalidTryAll => "otadata invalid (CRC) and no factory: try every slot".into(),
    }
}

/// Whether `dump` holds a partition table the bootloader would accept.
pub fn has_valid_table(dump: &[u8]) -> bool {
    let table_bytes = dump.get(TABLE_OFFSET as usize..TABLE_OFFSET as usize + TABLE_LEN).unwrap_or(&[]);
    PartitionTable::parse(table_bytes, dump.len() as u32).is_ok()
}

/// The partition state of a flash dump, as text with a fixed field order.
pub fn partition_state(dump: &[u8]) -> String {
    let mut out = String::new();
    let flash_size = dump.len() as u32;
    let _ = writeln!(out, "flash_size: {:#x}", flash_size);
    let table_bytes = dump.get(TABLE_OFFSET as usize..TABLE_OFFSET as usize + TABLE_LEN).unwrap_or(&[]);
    let table = match PartitionTable::parse(table_bytes, flash_size) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "partition_table: INVALID ({e})");
            return out;
        }
    };
    let md5 = match table.md5_row() {
        Md5Row::Ok(_) => "ok",
        Md5Row::Absent => "absent",
    };
    let _ = writeln!(out, "partition_table: # md5 {md5}");
    for p in table.partitions() {
        let (ty, sub) = p.type_names();
        let _ = writeln!(
            out,
            "  - {:<10} {:<5} {:<9} offset={:#08x} size={:#08x}{}",
            p.label(),
            ty.to_string(),
            sub.to_string(),
            p.offset,
            p.size,
            if p.flags != 0 { format!(" flags={:#x}", p.flags) } else { String::new() }
        );
    }
    let mut flash = FileFlash::in_memory(dump.to_vec());
    let otadata = table.otadata().map(|od| {
        let at = od.offset as usize;
        let c0: &[u8; 32] = dump[at..at + 32].try_into().expect("in bounds: table verified");
        let c1: &[u8; 32] = dump[at + 4096..at + 4096 + 32].try_into().expect("in bounds");
        let data = OtaData::parse(c0, c1);
        let _ = writeln!(out, "otadata:");
        for (i, e) in data.entries.iter().enumerate() {
            let _ = writeln!(out, "  copy{i}: {}", entry_line(e));
        }
        data
    });
    if otadata.is_none() {
        let _ = writeln!(out, "otadata: none");
    }
    let selection = select(&table, otadata.as_ref());
    let _ = writeln!(out, "bootloader:");
    let _ = writeln!(out, "  selects: {} # {}", SlotName(selection.index), reason_text(selection.reason));
    let boots = load_order(selection.index, &table).find(|i| {
        i.partition(&table).is_some_and(|p| verify_slot(&mut flash, &{ *p }, ChipInfo::ESP32C3).is_ok())
    });
    let _ = match boots {
        Some(i) if i == selection.index => writeln!(out, "  boots: {}", SlotName(i)),
        Some(i) => writeln!(
            out,
            "  boots: {} # fallback: {} does not verify",
            SlotName(i),
            SlotName(selection.index)
        ),
        None => writeln!(out, "  boots: NOTHING # no slot holds a valid image: bricked"),
    };
    let _ = writeln!(out, "slots:");
    for p in table.partitions().iter().filter(|p| p.is_app()) {
        let name = BootIndex::of(p).map(|i| SlotName(i).to_string()).unwrap_or_else(|| "?".into());
        let _ = writeln!(out, "  {name} ({}):", p.label());
        let region = &dump[p.offset as usize..p.end() as usize];
        if region.iter().all(|&b| b == 0xFF) {
            let _ = writeln!(out, "    image: erased");
            continue;
        }
        match verify_slot(&mut flash, p, ChipInfo::ESP32C3) {
            Ok(info) => {
                let _ = writeln!(out, "    image: valid");
                let _ = writeln!(out, "    project: {}", info.desc.project_name());
                let _ = writeln!(out, "    version: {}", info.desc.version());
                let _ = writeln!(out, "    length: {}", info.len);
                let _ = writeln!(out, "    sha256: {}", hex(&info.sha256));
            }
            Err(e) => {
                // What is in the slot, even if it does not verify: the first 4 KiB's hash
                // tells a partial image from stale data.
                let _ = writeln!(out, "    image: invalid ({}: {e})", e.kind());
                let _ = writeln!(
                    out,
                    "    head_sha256: {}",
                    hex(&Sha256::digest(&region[..4096.min(region.len())]))
                );
            }
        }
    }
    out
}
