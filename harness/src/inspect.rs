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

/// Lower-case hex, as the snapshots and `sha256sum` write digests.
pub(crate) fn hex(bytes: &[u8]) -> String {
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

/// Whether the bootloader would boot something from `dump`: a valid partition table and a slot
/// whose image verifies.
pub fn boots_something(dump: &[u8]) -> bool {
    flash_map(dump).table.is_ok_and(|t| t.boots != Boots::Nothing)
}

/// One partition as the table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub label: String,
    pub type_name: String,
    pub subtype_name: String,
    pub offset: u32,
    pub size: u32,
    pub flags: u32,
    /// The boot candidate it is (`ota_0`, `factory`), for app partitions.
    pub slot: Option<String>,
}

/// What an app slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotImage {
    Erased,
    Valid {
        project: String,
        version: String,
        len: u32,
        sha256: String,
    },
    /// It does not verify: why, and the hash of its first 4 KiB (a partial image or stale data).
    Invalid {
        kind: String,
        error: String,
        head_sha256: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub name: String,
    pub label: String,
    pub image: SlotImage,
}

/// Which slot the bootloader would start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boots {
    Selected(String),
    /// The selected slot does not verify: the bootloader falls back to this one.
    Fallback {
        boots: String,
        selected: String,
    },
    Nothing,
}

/// The partition state of a flash dump, as data: what the snapshot text and the report's flash
/// map are both made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashMap {
    pub flash_size: u32,
    /// The table, or why the bootloader would refuse it.
    pub table: Result<TableState, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    pub md5: &'static str,
    pub partitions: Vec<PartitionRow>,
    /// Both otadata copies as the snapshot shows them (`None`: no otadata partition).
    pub otadata: Option<[String; 2]>,
    pub selects: String,
    pub reason: String,
    pub boots: Boots,
    pub slots: Vec<SlotState>,
}

/// Decodes a flash dump with `ota-core`, as the device would.
pub fn flash_map(dump: &[u8]) -> FlashMap {
    let flash_size = dump.len() as u32;
    let table_bytes = dump.get(TABLE_OFFSET as usize..TABLE_OFFSET as usize + TABLE_LEN).unwrap_or(&[]);
    let table = match PartitionTable::parse(table_bytes, flash_size) {
        Ok(t) => t,
        Err(e) => return FlashMap { flash_size, table: Err(e.to_string()) },
    };
    let md5 = match table.md5_row() {
        Md5Row::Ok(_) => "ok",
        Md5Row::Absent => "absent",
    };
    let partitions = table
        .partitions()
        .iter()
        .map(|p| {
            let (ty, sub) = p.type_names();
            PartitionRow {
                label: p.label().to_string(),
                type_name: ty.to_string(),
                subtype_name: sub.to_string(),
                offset: p.offset,
                size: p.size,
                flags: p.flags,
                slot: p.is_app().then(|| BootIndex::of(p).map(|i| SlotName(i).to_string())).flatten(),
            }
        })
        .collect();
    let mut flash = FileFlash::in_memory(dump.to_vec());
    let data = table.otadata().map(|od| {
        let at = od.offset as usize;
        let c0: &[u8; 32] = dump[at..at + 32].try_into().expect("in bounds: table verified");
        let c1: &[u8; 32] = dump[at + 4096..at + 4096 + 32].try_into().expect("in bounds");
        OtaData::parse(c0, c1)
    });
    let otadata = data.as_ref().map(|d| [entry_line(&d.entries[0]), entry_line(&d.entries[1])]);
    let selection = select(&table, data.as_ref());
    let boots = load_order(selection.index, &table).find(|i| {
        i.partition(&table).is_some_and(|p| verify_slot(&mut flash, &{ *p }, ChipInfo::ESP32C3).is_ok())
    });
    // "No valid otadata and no factory": the bootloader tries every slot in order, so the
    // first that verifies is its choice, not a fallback from a factory slot that is not there.
    let selected_exists = selection.index.partition(&table).is_some();
    let boots = match boots {
        Some(i) if i == selection.index || !selected_exists => Boots::Selected(SlotName(i).to_string()),
        Some(i) => Boots::Fallback {
            boots: SlotName(i).to_string(),
            selected: SlotName(selection.index).to_string(),
        },
        None => Boots::Nothing,
    };
    let slots = table
        .partitions()
        .iter()
        .filter(|p| p.is_app())
        .map(|p| {
            let name = BootIndex::of(p).map(|i| SlotName(i).to_string()).unwrap_or_else(|| "?".into());
            let region = &dump[p.offset as usize..p.end() as usize];
            let image = if region.iter().all(|&b| b == 0xFF) {
                SlotImage::Erased
            } else {
                match verify_slot(&mut flash, p, ChipInfo::ESP32C3) {
                    Ok(info) => SlotImage::Valid {
                        project: info.desc.project_name().to_string(),
                        version: info.desc.version().to_string(),
                        len: info.len,
                        sha256: hex(&info.sha256),
                    },
                    Err(e) => SlotImage::Invalid {
                        kind: e.kind().to_string(),
                        error: e.to_string(),
                        head_sha256: hex(&Sha256::digest(&region[..4096.min(region.len())])),
                    },
                }
            };
            SlotState { name, label: p.label().to_string(), image }
        })
        .collect();
    FlashMap {
        flash_size,
        table: Ok(TableState {
            md5,
            partitions,
            otadata,
            selects: if selected_exists {
                SlotName(selection.index).to_string()
            } else {
                "every app slot in order".to_string()
            },
            reason: reason_text(selection.reason),
            boots,
            slots,
        }),
    }
}

impl FlashMap {
    /// The stable text the partition snapshots hold.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "flash_size: {:#x}", self.flash_size);
        let t = match &self.table {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(out, "partition_table: INVALID ({e})");
                return out;
            }
        };
        let _ = writeln!(out, "partition_table: # md5 {}", t.md5);
        for p in &t.partitions {
            let _ = writeln!(
                out,
                "  - {:<10} {:<5} {:<9} offset={:#08x} size={:#08x}{}",
                p.label,
                p.type_name,
                p.subtype_name,
                p.offset,
                p.size,
                if p.flags != 0 { format!(" flags={:#x}", p.flags) } else { String::new() }
            );
        }
        match &t.otadata {
            Some(copies) => {
                let _ = writeln!(out, "otadata:");
                for (i, c) in copies.iter().enumerate() {
                    let _ = writeln!(out, "  copy{i}: {c}");
                }
            }
            None => {
                let _ = writeln!(out, "otadata: none");
            }
        }
        let _ = writeln!(out, "bootloader:");
        let _ = writeln!(out, "  selects: {} # {}", t.selects, t.reason);
        let _ = match &t.boots {
            Boots::Selected(s) => writeln!(out, "  boots: {s}"),
            Boots::Fallback { boots, selected } => {
                writeln!(out, "  boots: {boots} # fallback: {selected} does not verify")
            }
            Boots::Nothing => writeln!(out, "  boots: NOTHING # no slot holds a valid image: bricked"),
        };
        let _ = writeln!(out, "slots:");
        for slot in &t.slots {
            let _ = writeln!(out, "  {} ({}):", slot.name, slot.label);
            match &slot.image {
                SlotImage::Erased => {
                    let _ = writeln!(out, "    image: erased");
                }
                SlotImage::Valid { project, version, len, sha256 } => {
                    let _ = writeln!(out, "    image: valid");
                    let _ = writeln!(out, "    project: {project}");
                    let _ = writeln!(out, "    version: {version}");
                    let _ = writeln!(out, "    length: {len}");
                    let _ = writeln!(out, "    sha256: {sha256}");
                }
                SlotImage::Invalid { kind, error, head_sha256 } => {
                    let _ = writeln!(out, "    image: invalid ({kind}: {error})");
                    let _ = writeln!(out, "    head_sha256: {head_sha256}");
                }
            }
        }
        out
    }
}

/// The partition state of a flash dump, as text with a fixed field order.
pub fn partition_state(dump: &[u8]) -> String {
    flash_map(dump).to_text()
}
