//! The ESP-IDF partition table: 32-byte rows at 0x8000, the optional MD5 row, 0xFF padding.
//!
//! Parsing follows `esp_partition_table_verify` (what the bootloader accepts); building follows
//! `gen_esp32part.py` (what the generator writes), so a table we build is byte-identical to theirs.

use core::fmt;
use md5::{Digest, Md5};

/// Default `CONFIG_PARTITION_TABLE_OFFSET`.
pub const TABLE_OFFSET: u32 = 0x8000;
/// Bytes of the table the generator writes (rows + MD5 row + FF padding).
pub const TABLE_LEN: usize = 0xC00;
/// Rows that fit in [`TABLE_LEN`] (`ESP_PARTITION_TABLE_MAX_ENTRIES`).
pub const MAX_ROWS: usize = TABLE_LEN / ROW_LEN;
/// Partitions one table can hold next to its MD5 row and terminator.
pub const MAX_PARTITIONS: usize = MAX_ROWS - 2;
pub const ROW_LEN: usize = 32;
pub const ENTRY_MAGIC: u16 = 0x50AA;
pub const MD5_MAGIC: u16 = 0xEBEB;

pub const TYPE_APP: u8 = 0x00;
pub const TYPE_DATA: u8 = 0x01;
pub const TYPE_BOOTLOADER: u8 = 0x02;
pub const TYPE_PARTITION_TABLE: u8 = 0x03;
pub const SUBTYPE_FACTORY: u8 = 0x00;
pub const SUBTYPE_OTA_0: u8 = 0x10;
pub const SUBTYPE_TEST: u8 = 0x20;
pub const SUBTYPE_DATA_OTA: u8 = 0x00;
pub const SUBTYPE_DATA_NVS: u8 = 0x02;
pub const FLAG_ENCRYPTED: u32 = 1;
pub const FLAG_READONLY: u32 = 2;
/// Size the bootloader and the generator require of the otadata partition.
pub const OTADATA_SIZE: u32 = 0x2000;

/// One partition row (`esp_partition_info_t`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Partition {
    pub ptype: u8,
    pub subtype: u8,
    pub offset: u32,
    pub size: u32,
    pub label: [u8; 16],
    pub flags: u32,
}

impl Partition {
    pub const EMPTY: Partition =
        Partition { ptype: 0xFF, subtype: 0xFF, offset: 0, size: 0, label: [0; 16], flags: 0 };

    /// A partition with `label` (at most 16 bytes; longer labels are cut as the generator does).
    pub fn new(label: &str, ptype: u8, subtype: u8, offset: u32, size: u32, flags: u32) -> Self {
        let mut l = [0u8; 16];
        let n = label.len().min(16);
        l[..n].copy_from_slice(&label.as_bytes()[..n]);
        Partition { ptype, subtype, offset, size, label: l, flags }
    }

    /// The label up to its first NUL (labels that are not UTF-8 read as `"?"`).
    pub fn label(&self) -> &str {
        let end = self.label.iter().position(|&b| b == 0).unwrap_or(16);
        core::str::from_utf8(&self.label[..end]).unwrap_or("?")
    }

    pub fn is_app(&self) -> bool {
        self.ptype == TYPE_APP
    }

    /// `Some(n)` for an `ota_n` app partition.
    pub fn ota_slot(&self) -> Option<u8> {
        (self.is_app() && (SUBTYPE_OTA_0..SUBTYPE_OTA_0 + 16).contains(&self.subtype))
            .then(|| self.subtype - SUBTYPE_OTA_0)
    }

    pub fn is_factory(&self) -> bool {
        self.is_app() && self.subtype == SUBTYPE_FACTORY
    }

    pub fn is_test(&self) -> bool {
        self.is_app() && self.subtype == SUBTYPE_TEST
    }

    pub fn is_otadata(&self) -> bool {
        self.ptype == TYPE_DATA && self.subtype == SUBTYPE_DATA_OTA
    }

    pub fn is_nvs(&self) -> bool {
        self.ptype == TYPE_DATA && self.subtype == SUBTYPE_DATA_NVS
    }

    pub fn end(&self) -> u64 {
        self.offset as u64 + self.size as u64
    }

    /// The generator's names for type and subtype, e.g. `("app", "ota_1")`.
    pub fn type_names(&self) -> (TypeName, SubtypeName) {
        (TypeName(self.ptype), SubtypeName(self.ptype, self.subtype))
    }

    fn to_row(self) -> [u8; ROW_LEN] {
        let mut row = [0u8; ROW_LEN];
        row[0..2].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
        row[2] = self.ptype;
        row[3] = self.subtype;
        row[4..8].copy_from_slice(&self.offset.to_le_bytes());
        row[8..12].copy_from_slice(&self.size.to_le_bytes());
        row[12..28].copy_from_slice(&self.label);
        row[28..32].copy_from_slice(&self.flags.to_le_bytes());
        row
    }

    fn from_row(row: &[u8]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([row[i], row[i + 1], row[i + 2], row[i + 3]]);
        let mut label = [0u8; 16];
        label.copy_from_slice(&row[12..28]);
        Partition {
            ptype: row[2],
            subtype: row[3],
            offset: u32_at(4),
            size: u32_at(8),
            label,
            flags: u32_at(28),
        }
    }
}

/// Displays a partition type as `gen_esp32part.py` names it, or in hex.
pub struct TypeName(pub u8);
impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TYPE_APP => f.write_str("app"),
            TYPE_DATA => f.write_str("data"),
            TYPE_BOOTLOADER => f.write_str("bootloader"),
            TYPE_PARTITION_TABLE => f.write_str("partition_table"),
            t => write!(f, "0x{t:02x}"),
        }
    }
}

/// Displays a subtype as `gen_esp32part.py` names it, or in hex.
pub struct SubtypeName(pub u8, pub u8);
impl fmt::Display for SubtypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (TYPE_APP, SUBTYPE_FACTORY) => f.write_str("factory"),
            (TYPE_APP, s @ 0x10..=0x1F) => write!(f, "ota_{}", s - 0x10),
            (TYPE_APP, SUBTYPE_TEST) => f.write_str("test"),
            (TYPE_DATA, s) => match data_subtype_name(s) {
                Some(name) => f.write_str(name),
                None => write!(f, "0x{s:02x}"),
            },
            (_, s) => write!(f, "0x{s:02x}"),
        }
    }
}

/// Data subtype names, as in `gen_esp32part.py` v1.5.
pub const DATA_SUBTYPES: &[(&str, u8)] = &[
    ("ota", 0x00),
    ("phy", 0x01),
    ("nvs", 0x02),
    ("coredump", 0x03),
    ("nvs_keys", 0x04),
    ("efuse", 0x05),
    ("undefined", 0x06),
    ("esphttpd", 0x80),
    ("fat", 0x81),
    ("spiffs", 0x82),
    ("littlefs", 0x83),
    ("tee_ota", 0x90),
];

fn data_subtype_name(s: u8) -> Option<&'static str> {
    DATA_SUBTYPES.iter().find(|(_, v)| *v == s).map(|(n, _)| *n)
}

/// Why the bootloader would refuse a partition table (`esp_partition_table_verify`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TableError {
    /// `partition %d invalid magic number 0x%x`
    InvalidMagic { row: usize, magic: u16 },
    /// `partition %d invalid - offset 0x.. size 0x.. exceeds flash chip size 0x..`
    ExceedsFlash { row: usize, offset: u32, size: u32, flash_size: u32 },
    /// `Incorrect MD5 checksum`
    Md5Mismatch,
    /// `Only one MD5 checksum is allowed`
    SecondMd5,
    /// `partition table has no terminating entry, not valid`
    NoTerminator,
    /// Fewer bytes than a row were given.
    Truncated,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TableError::InvalidMagic { row, magic } => {
                write!(f, "partition {row} invalid magic number 0x{magic:x}")
            }
            TableError::ExceedsFlash { row, offset, size, flash_size } => write!(
                f,
                "partition {row} invalid - offset 0x{offset:x} size 0x{size:x} exceeds flash chip size 0x{flash_size:x}"
            ),
            TableError::Md5Mismatch => f.write_str("Incorrect MD5 checksum"),
            TableError::SecondMd5 => f.write_str("Only one MD5 checksum is allowed"),
            TableError::NoTerminator => f.write_str("partition table has no terminating entry, not valid"),
            TableError::Truncated => f.write_str("partition table shorter than one row"),
        }
    }
}

/// Why a partition cannot be added to a table being built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LayoutError {
    TooManyPartitions,
    Overlap {
        a: usize,
        b: usize,
    },
    Misaligned {
        index: usize,
        align: u32,
    },
    OtadataSize {
        size: u32,
    },
    SecondOtadata,
    BeforeTable {
        index: usize,
    },
    /// Ends past the 32-bit flash address space, which no binary table row can describe.
    PastAddressSpace {
        index: usize,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::TooManyPartitions => {
                write!(f, "more than {MAX_PARTITIONS} partitions do not fit in the table")
            }
            LayoutError::Overlap { a, b } => write!(f, "partitions {a} and {b} overlap"),
            LayoutError::Misaligned { index, align } => {
                write!(f, "partition {index} offset is not aligned to 0x{align:x}")
            }
            LayoutError::OtadataSize { size } => {
                write!(f, "otadata partition must have size = 0x2000 (found 0x{size:x})")
            }
            LayoutError::SecondOtadata => f.write_str("found multiple otadata partitions"),
            LayoutError::BeforeTable { index } => {
                write!(f, "partition {index} starts before the end of the partition table")
            }
            LayoutError::PastAddressSpace { index } => {
                write!(f, "partition {index} ends past the 4 GiB flash address space")
            }
        }
    }
}

/// The MD5 row's verdict.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Md5Row {
    /// No MD5 row (accepted by the bootloader).
    Absent,
    /// Present and matching the rows before it.
    Ok([u8; 16]),
}

/// A partition table: up to [`MAX_PARTITIONS`] rows, in table order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PartitionTable {
    rows: [Partition; MAX_PARTITIONS],
    len: usize,
    md5: Md5Row,
}

impl Default for PartitionTable {
    fn default() -> Self {
        Self::new()
    }
}

impl PartitionTable {
    pub const fn new() -> Self {
        PartitionTable { rows: [Partition::EMPTY; MAX_PARTITIONS], len: 0, md5: Md5Row::Absent }
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.rows[..self.len]
    }

    /// What the MD5 row said when the table was parsed (`Absent` for a built table).
    pub fn md5_row(&self) -> Md5Row {
        self.md5
    }

    /// Appends a partition, checking the generator's layout rules against the rows so far.
    pub fn push(&mut self, p: Partition) -> Result<(), LayoutError> {
        if self.len == MAX_PARTITIONS {
            return Err(LayoutError::TooManyPartitions);
        }
        let index = self.len;
        if p.end() > u64::from(u32::MAX) {
            return Err(LayoutError::PastAddressSpace { index });
        }
        let align = if p.is_app() { 0x10000 } else { 0x1000 };
        if !p.offset.is_multiple_of(align) {
            return Err(LayoutError::Misaligned { index, align });
        }
        if p.offset < TABLE_OFFSET + 0x1000 && p.ptype != TYPE_BOOTLOADER && p.ptype != TYPE_PARTITION_TABLE {
            return Err(LayoutError::BeforeTable { index });
        }
        if p.is_otadata() {
            if p.size != OTADATA_SIZE {
                return Err(LayoutError::OtadataSize { size: p.size });
            }
            if self.otadata().is_some() {
                return Err(LayoutError::SecondOtadata);
            }
        }
        for (i, q) in self.partitions().iter().enumerate() {
            if (p.offset as u64) < q.end() && (q.offset as u64) < p.end() {
                return Err(LayoutError::Overlap { a: i, b: index });
            }
        }
        self.rows[index] = p;
        self.len += 1;
        Ok(())
    }

    /// Parses and verifies a table as the bootloader does. `bytes` may be longer than the table.
    pub fn parse(bytes: &[u8], flash_size: u32) -> Result<Self, TableError> {
        if bytes.len() < ROW_LEN {
            return Err(TableError::Truncated);
        }
        let mut table = PartitionTable::new();
        let mut md5_seen = false;
        for row in 0..MAX_ROWS {
            let start = row * ROW_LEN;
            let Some(raw) = bytes.get(start..start + ROW_LEN) else {
                return Err(TableError::NoTerminator);
            };
            let magic = u16::from_le_bytes([raw[0], raw[1]]);
            match magic {
                ENTRY_MAGIC => {
                    let p = Partition::from_row(raw);
                    if p.end() > flash_size as u64 {
                        return Err(TableError::ExceedsFlash {
                            row,
                            offset: p.offset,
                            size: p.size,
                            flash_size,
                        });
                    }
                    if table.len < MAX_PARTITIONS {
                        table.rows[table.len] = p;
                        table.len += 1;
                    }
                }
                MD5_MAGIC => {
                    if md5_seen {
                        return Err(TableError::SecondMd5);
                    }
                    md5_seen = true;
                    let digest: [u8; 16] = Md5::digest(&bytes[..start]).into();
                    if raw[16..32] != digest {
                        return Err(TableError::Md5Mismatch);
                    }
                    table.md5 = Md5Row::Ok(digest);
                }
                0xFFFF if row > 0 && raw[2] == 0xFF && raw[3] == 0xFF => return Ok(table),
                _ => return Err(TableError::InvalidMagic { row, magic }),
            }
        }
        Err(TableError::NoTerminator)
    }

    /// Writes the table as `gen_esp32part.py` does: rows, optional MD5 row, FF up to 0xC00.
    pub fn to_bytes(&self, with_md5: bool) -> [u8; TABLE_LEN] {
        let mut out = [0xFFu8; TABLE_LEN];
        for (i, p) in self.partitions().iter().enumerate() {
            out[i * ROW_LEN..(i + 1) * ROW_LEN].copy_from_slice(&p.to_row());
        }
        if with_md5 {
            let start = self.len * ROW_LEN;
            let digest: [u8; 16] = Md5::digest(&out[..start]).into();
            out[start..start + 2].copy_from_slice(&MD5_MAGIC.to_le_bytes());
            out[start + 16..start + 32].copy_from_slice(&digest);
        }
        out
    }

    /// The `data/ota` partition, if any.
    pub fn otadata(&self) -> Option<&Partition> {
        self.partitions().iter().find(|p| p.is_otadata())
    }

    /// The first nvs partition (the one ESP-IDF's default NVS uses is labelled `nvs`; ours need
    /// not be).
    pub fn nvs(&self) -> Option<&Partition> {
        self.partitions().iter().find(|p| p.is_nvs())
    }

    pub fn factory(&self) -> Option<&Partition> {
        self.partitions().iter().find(|p| p.is_factory())
    }

    pub fn test_app(&self) -> Option<&Partition> {
        self.partitions().iter().find(|p| p.is_test())
    }

    /// The `ota_n` partition.
    pub fn ota(&self, n: u8) -> Option<&Partition> {
        self.partitions().iter().find(|p| p.ota_slot() == Some(n))
    }

    /// Number of `ota_N` app partitions, counted as the bootloader counts them (every ota_N).
    pub fn ota_count(&self) -> u8 {
        self.partitions().iter().filter(|p| p.ota_slot().is_some()).count() as u8
    }

    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions().iter().find(|p| p.label() == label)
    }

    /// The app partition that holds `offset` (what "running from" means on the chip).
    pub fn app_at(&self, offset: u32) -> Option<&Partition> {
        self.partitions().iter().find(|p| p.is_app() && p.offset == offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::esphome_4mb_table;

    // The spec's worked example, verified there against gen_esp32part.py.
    const SPEC_MD5: [u8; 16] =
        [0xb1, 0x76, 0x45, 0x0e, 0xd6, 0xde, 0xdd, 0x5e, 0xbf, 0x17, 0x3d, 0x91, 0xc2, 0x8c, 0xfb, 0x4a];

    #[test]
    fn builds_the_spec_example_byte_for_byte() {
        let bytes = esphome_4mb_table().to_bytes(true);
        assert_eq!(
            &bytes[0..32],
            &[
                0xaa, 0x50, 0x01, 0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, b'o', b't', b'a',
                b'd', b'a', b't', b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(
            &bytes[0x40..0x4c],
            &[0xaa, 0x50, 0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x1c, 0x00]
        );
        assert_eq!(
            &bytes[0x80..0x8c],
            &[0xaa, 0x50, 0x01, 0x02, 0x00, 0x00, 0x39, 0x00, 0x00, 0xd0, 0x06, 0x00]
        );
        assert_eq!(
            &bytes[0xa0..0xb0],
            &[0xeb, 0xeb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(&bytes[0xb0..0xc0], &SPEC_MD5);
        assert!(bytes[0xc0..].iter().all(|&b| b == 0xFF));
        assert_eq!(bytes.len(), 0xC00);
    }

    #[test]
    fn round_trip_with_and_without_md5() {
        let table = esphome_4mb_table();
        let parsed = PartitionTable::parse(&table.to_bytes(true), 4 << 20).unwrap();
        assert_eq!(parsed.partitions(), table.partitions());
        assert_eq!(parsed.md5_row(), Md5Row::Ok(SPEC_MD5));
        let parsed = PartitionTable::parse(&table.to_bytes(false), 4 << 20).unwrap();
        assert_eq!(parsed.partitions(), table.partitions());
        assert_eq!(parsed.md5_row(), Md5Row::Absent);
        assert_eq!(parsed.ota_count(), 2);
        assert_eq!(parsed.otadata().unwrap().offset, 0x9000);
        assert_eq!(parsed.ota(1).unwrap().offset, 0x1D0000);
        assert_eq!(parsed.by_label("nvs").unwrap().size, 0x6D000);
    }

    #[test]
    fn every_verification_failure() {
        let good = esphome_4mb_table().to_bytes(true);

        let mut bad = good;
        bad[0xa5] ^= 1; // inside the MD5 row's padding: not checked by IDF
        assert!(PartitionTable::parse(&bad, 4 << 20).is_ok());

        let mut bad = good;
        bad[0x20 + 5] ^= 0x01; // phy_init offset changed: MD5 no longer matches
        assert_eq!(PartitionTable::parse(&bad, 4 << 20), Err(TableError::Md5Mismatch));

        let mut bad = good;
        bad[0x20] = 0x12;
        assert_eq!(
            PartitionTable::parse(&bad, 4 << 20),
            Err(TableError::InvalidMagic { row: 1, magic: 0x5012 })
        );

        assert_eq!(
            PartitionTable::parse(&good, 2 << 20),
            Err(TableError::ExceedsFlash { row: 3, offset: 0x1D0000, size: 0x1C0000, flash_size: 2 << 20 })
        );

        let mut bad = good;
        bad.copy_within(0xa0..0xc0, 0xc0);
        assert_eq!(PartitionTable::parse(&bad, 4 << 20), Err(TableError::SecondMd5));

        let blank = [0xFFu8; TABLE_LEN];
        assert_eq!(
            PartitionTable::parse(&blank, 4 << 20),
            Err(TableError::InvalidMagic { row: 0, magic: 0xFFFF })
        );

        let mut full = [0u8; TABLE_LEN];
        let row = Partition::new("x", TYPE_DATA, 0x02, 0x9000, 0x1000, 0).to_row();
        for r in 0..MAX_ROWS {
            full[r * ROW_LEN..(r + 1) * ROW_LEN].copy_from_slice(&row);
        }
        assert_eq!(PartitionTable::parse(&full, 4 << 20), Err(TableError::NoTerminator));
        assert_eq!(PartitionTable::parse(&full[..10], 4 << 20), Err(TableError::Truncated));
    }

    #[test]
    fn layout_rules() {
        let mut t = PartitionTable::new();
        t.push(Partition::new("otadata", TYPE_DATA, 0, 0x9000, 0x2000, 0)).unwrap();
        assert_eq!(
            t.push(Partition::new("od2", TYPE_DATA, 0, 0xB000, 0x2000, 0)),
            Err(LayoutError::SecondOtadata)
        );
        assert_eq!(
            t.push(Partition::new("app", TYPE_APP, 0x10, 0x18000, 0x10000, 0)),
            Err(LayoutError::Misaligned { index: 1, align: 0x10000 })
        );
        assert_eq!(
            t.push(Partition::new("nvs", TYPE_DATA, 2, 0xA000, 0x1000, 0)),
            Err(LayoutError::Overlap { a: 0, b: 1 })
        );
        assert_eq!(
            t.push(Partition::new("od", TYPE_DATA, 0, 0x4000, 0x1000, 0)),
            Err(LayoutError::BeforeTable { index: 1 })
        );
    }

    #[test]
    fn names() {
        extern crate std;
        use std::format;
        let t = esphome_4mb_table();
        let (ty, sub) = t.partitions()[3].type_names();
        assert_eq!(format!("{ty}/{sub}"), "app/ota_1");
        let (ty, sub) = t.partitions()[4].type_names();
        assert_eq!(format!("{ty}/{sub}"), "data/nvs");
        assert_eq!(format!("{}", SubtypeName(0x40, 0x07)), "0x07");
    }
}
