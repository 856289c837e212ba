//! The partition table's CSV form, as users hand it to `gen_esp32part.py`:
//! `# Name, Type, SubType, Offset, Size, Flags`, empty offsets placed after the previous row,
//! sizes such as `1M`, `64K` or `0x4000`, flags `encrypted` / `readonly` separated by `:`.

use crate::partition::{
    DATA_SUBTYPES, FLAG_ENCRYPTED, FLAG_READONLY, LayoutError, Partition, PartitionTable, TABLE_OFFSET,
    TYPE_APP, TYPE_BOOTLOADER, TYPE_DATA, TYPE_PARTITION_TABLE,
};
use core::fmt;

/// A CSV line the table cannot be built from; `line` counts from 1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CsvError {
    pub line: usize,
    pub kind: CsvErrorKind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CsvErrorKind {
    /// Fewer than five fields (name, type, subtype, offset, size).
    MissingFields {
        found: usize,
    },
    EmptyName,
    NameTooLong,
    UnknownType,
    UnknownSubtype,
    BadNumber {
        field: &'static str,
    },
    MissingSize,
    UnknownFlag,
    /// An empty offset, but no aligned room is left after the previous partition.
    NoRoomForAutoOffset,
    Layout(LayoutError),
    /// A name an earlier line already gave (ESP-IDF's `gen_esp32part.py` refuses it too:
    /// partitions are found by name).
    DuplicateName,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match self.kind {
            CsvErrorKind::MissingFields { found } => {
                write!(f, "expected `name, type, subtype, offset, size[, flags]`, found {found} field(s)")
            }
            CsvErrorKind::EmptyName => f.write_str("partition name is empty"),
            CsvErrorKind::NameTooLong => f.write_str("partition name is longer than 16 bytes"),
            CsvErrorKind::UnknownType => {
                f.write_str("unknown type: expected app, data, bootloader, partition_table or a number")
            }
            CsvErrorKind::UnknownSubtype => f.write_str("unknown subtype for this type"),
            CsvErrorKind::BadNumber { field } => {
                write!(f, "{field} is not a number (expected decimal, 0x hex, or a K/M suffix)")
            }
            CsvErrorKind::MissingSize => f.write_str("size is required"),
            CsvErrorKind::UnknownFlag => f.write_str("unknown flag: expected encrypted or readonly"),
            CsvErrorKind::NoRoomForAutoOffset => {
                f.write_str("empty offset, but no aligned room is left after the previous partition")
            }
            CsvErrorKind::Layout(e) => e.fmt(f),
            CsvErrorKind::DuplicateName => f.write_str("a partition of this name is defined already"),
        }
    }
}

/// Parses `1M`, `64K`, `0x4000`, `4096`.
pub fn parse_size(text: &str) -> Option<u32> {
    let t = text.trim();
    let (digits, mult) = if let Some(d) = t.strip_suffix(['M', 'm']) {
        (d, 1024 * 1024)
    } else if let Some(d) = t.strip_suffix(['K', 'k']) {
        (d, 1024)
    } else {
        (t, 1)
    };
    let value = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()?
    } else {
        digits.parse::<u32>().ok()?
    };
    value.checked_mul(mult)
}

fn parse_type(text: &str) -> Option<u8> {
    match text {
        "app" => Some(TYPE_APP),
        "data" => Some(TYPE_DATA),
        "bootloader" => Some(TYPE_BOOTLOADER),
        "partition_table" => Some(TYPE_PARTITION_TABLE),
        n => parse_size(n).and_then(|v| u8::try_from(v).ok()),
    }
}

fn parse_subtype(ptype: u8, text: &str) -> Option<u8> {
    let named = match ptype {
        TYPE_APP => match text {
            "factory" => Some(0x00),
            "test" => Some(0x20),
            t => t
                .strip_prefix("ota_")
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| *n < 16)
                .map(|n| 0x10 + n),
        },
        TYPE_DATA => DATA_SUBTYPES.iter().find(|(n, _)| *n == text).map(|(_, v)| *v),
        TYPE_BOOTLOADER => match text {
            "primary" => Some(0),
            "ota" => Some(1),
            "recovery" => Some(2),
            _ => None,
        },
        TYPE_PARTITION_TABLE => match text {
            "primary" => Some(0),
            "ota" => Some(1),
            _ => None,
        },
        _ => None,
    };
    named.or_else(|| parse_size(text).and_then(|v| u8::try_from(v).ok()))
}

/// Parses a partition CSV into a table, placing empty offsets as `gen_esp32part.py` does.
pub fn parse_csv(text: &str) -> Result<PartitionTable, CsvError> {
    let mut table = PartitionTable::new();
    let mut next_free = TABLE_OFFSET + 0x1000;
    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let err = |kind| CsvError { line, kind };
        let content = raw_line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut fields = [""; 6];
        let mut count = 0;
        for field in content.split(',') {
            if count < fields.len() {
                fields[count] = field.trim();
            }
            count += 1;
        }
        if count < 5 {
            return Err(err(CsvErrorKind::MissingFields { found: count }));
        }
        let [name, ty, sub, offset, size, flags] = fields;
        if name.is_empty() {
            return Err(err(CsvErrorKind::EmptyName));
        }
        if name.len() > 16 {
            return Err(err(CsvErrorKind::NameTooLong));
        }
        if table.by_label(name).is_some() {
            return Err(err(CsvErrorKind::DuplicateName));
        }
        let ptype = parse_type(ty).ok_or(err(CsvErrorKind::UnknownType))?;
        let subtype = parse_subtype(ptype, sub).ok_or(err(CsvErrorKind::UnknownSubtype))?;
        if size.is_empty() {
            return Err(err(CsvErrorKind::MissingSize));
        }
        let size = parse_size(size).ok_or(err(CsvErrorKind::BadNumber { field: "size" }))?;
        let align = if ptype == TYPE_APP { 0x10000 } else { 0x1000 };
        let offset = if offset.is_empty() {
            next_free.checked_next_multiple_of(align).ok_or(err(CsvErrorKind::NoRoomForAutoOffset))?
        } else {
            parse_size(offset).ok_or(err(CsvErrorKind::BadNumber { field: "offset" }))?
        };
        let mut flag_bits = 0;
        for flag in flags.split(':').map(str::trim).filter(|f| !f.is_empty()) {
            flag_bits |= match flag {
                "encrypted" => FLAG_ENCRYPTED,
                "readonly" => FLAG_READONLY,
                _ => return Err(err(CsvErrorKind::UnknownFlag)),
            };
        }
        table
            .push(Partition::new(name, ptype, subtype, offset, size, flag_bits))
            .map_err(|e| err(CsvErrorKind::Layout(e)))?;
        // `push` has checked that the partition ends inside the 32-bit address space.
        next_free = offset + size;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::esphome_4mb_table;

    #[test]
    fn esphome_4mb_csv_matches_the_spec_layout() {
        let csv = "# Name, Type, SubType, Offset, Size, Flags\n\
                   otadata,  data, ota,   , 0x2000\n\
                   phy_init, data, phy,   , 0x1000\n\
                   app0,     app,  ota_0, , 0x1C0000\n\
                   app1,     app,  ota_1, , 0x1C0000\n\
                   nvs,      data, nvs,   , 0x6D000\n";
        let table = parse_csv(csv).unwrap();
        assert_eq!(table, esphome_4mb_table());
    }

    #[test]
    fn sizes_flags_and_explicit_offsets() {
        assert_eq!(parse_size("1M"), Some(0x100000));
        assert_eq!(parse_size("64K"), Some(0x10000));
        assert_eq!(parse_size("0x4000"), Some(0x4000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4G"), None);
        assert_eq!(parse_size("0x1_0"), None);
        let csv = "nvs, data, nvs, 0x9000, 24K\n\
                   otadata, data, ota, , 8K\n\
                   factory, app, factory, 0x20000, 1M, readonly:encrypted\n\
                   custom, 0x40, 0x07, , 4K\n";
        let t = parse_csv(csv).unwrap();
        assert_eq!(t.otadata().unwrap().offset, 0xF000);
        assert_eq!(t.factory().unwrap().flags, FLAG_READONLY | FLAG_ENCRYPTED);
        assert_eq!(t.partitions()[3].offset, 0x120000);
        assert_eq!(t.partitions()[3].ptype, 0x40);
    }

    #[test]
    fn errors_name_the_line() {
        let e = |csv| parse_csv(csv).unwrap_err();
        assert_eq!(
            e("\n\nnvs, data\n"),
            CsvError { line: 3, kind: CsvErrorKind::MissingFields { found: 2 } }
        );
        assert_eq!(e("a, blob, nvs, , 4K").kind, CsvErrorKind::UnknownType);
        assert_eq!(e("a, app, ota_16, , 64K").kind, CsvErrorKind::UnknownSubtype);
        assert_eq!(e("a, data, nvs, , lots").kind, CsvErrorKind::BadNumber { field: "size" });
        assert_eq!(e("a, data, nvs, zz, 4K").kind, CsvErrorKind::BadNumber { field: "offset" });
        assert_eq!(e("a, data, nvs, ,").kind, CsvErrorKind::MissingSize);
        assert_eq!(e("a, data, nvs, , 4K, shiny").kind, CsvErrorKind::UnknownFlag);
        assert_eq!(e(", data, nvs, , 4K").kind, CsvErrorKind::EmptyName);
        assert_eq!(e("abcdefghijklmnopq, data, nvs, , 4K").kind, CsvErrorKind::NameTooLong);
        // Issue #22: two partitions of one name (make-flash used to accept them).
        assert_eq!(
            e("app0, app, ota_0, , 64K\napp0, app, ota_1, , 64K\n"),
            CsvError { line: 2, kind: CsvErrorKind::DuplicateName }
        );
        assert_eq!(
            e("o, data, ota, , 4K").kind,
            CsvErrorKind::Layout(LayoutError::OtadataSize { size: 0x1000 })
        );
        extern crate std;
        assert_eq!(
            std::format!("{}", e("x\n")),
            "line 1: expected `name, type, subtype, offset, size[, flags]`, found 1 field(s)"
        );
    }

    /// Found by the `flash_formats` fuzz target (CI smoke, seed 3444091490): two 3 GiB app
    /// partitions were accepted, but the second ends past 4 GiB, so the binary table made from
    /// them no longer parsed.
    #[test]
    fn partitions_past_the_address_space_are_refused() {
        let text = "#\np,app, 0,,0x0C0006001\n#\nq,app, 0,,0x0C0006001";
        assert_eq!(
            parse_csv(text),
            Err(CsvError { line: 4, kind: CsvErrorKind::Layout(LayoutError::PastAddressSpace { index: 1 }) })
        );
        // The last byte of the address space is still addressable.
        let t = parse_csv("a, data, nvs, 0xFFFFF000, 0xFFF\n").expect("ends at 0xFFFF_FFFF");
        assert_eq!(t.partitions()[0].end(), u64::from(u32::MAX));
    }

    #[test]
    fn an_auto_offset_with_no_room_left_is_an_error_not_an_overflow() {
        let text = "a, data, nvs, 0xFFFF0000, 0xFFFF\nb, data, nvs, , 0x1000\n";
        assert_eq!(parse_csv(text), Err(CsvError { line: 2, kind: CsvErrorKind::NoRoomForAutoOffset }));
    }
}
