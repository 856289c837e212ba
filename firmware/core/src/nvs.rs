//! The part of ESP-IDF's NVS (non-volatile storage, format version 2) that a device needs to
//! read its settings, and a builder for one page of it, as `nvs_partition_gen.py` lays it out.
//!
//! An NVS partition is a run of 4 KiB pages. A page: a 32-byte header (state, sequence number,
//! version 0xFE, CRC over bytes 4..28), a 32-byte bitmap with two bits per entry (11 empty,
//! 10 written, 00 erased), then 126 entries of 32 bytes. An entry: namespace index, type, span
//! (entries it occupies), chunk index, CRC over bytes 0..4 and 8..32, a 16-byte NUL-padded key,
//! 8 bytes of data. Namespaces are U8 entries in namespace 0 whose value is the index; a string
//! entry's data holds its size (with the NUL), 0xFFFF and the CRC of the bytes that fill the
//! `span - 1` entries after it. The CRCs are `esp_rom_crc32_le(0xFFFF_FFFF, ..)`.
//!
//! Reading follows what `nvs_flash` trusts: pages in state ACTIVE, FULL or FREEING with a good
//! header CRC, entries marked written with a good CRC; where a key appears more than once (a power cut
//! between writing the new item and erasing the old one), the page with the higher sequence
//! number, then the later entry, wins.

use crate::crc::esp_rom_crc32_le;
use crate::flash::{FlashError, read};
use crate::partition::Partition;
use embedded_storage::nor_flash::ReadNorFlash;

mod store;
pub use store::{MAX_STORED_STR, StoreError, erase, set_str, set_u8, set_u32};

pub const PAGE_SIZE: usize = 4096;
pub const ENTRY_SIZE: usize = 32;
pub const ENTRIES_PER_PAGE: usize = 126;
/// Keys are at most 15 bytes (16 with the NUL).
pub const MAX_KEY_LEN: usize = 15;

const PAGE_ACTIVE: u32 = 0xFFFF_FFFE;
const PAGE_FULL: u32 = 0xFFFF_FFFC;
/// Being emptied by nvs_flash's garbage collection: its items are copied to a newer page before
/// it is erased, and a power cut mid-copy leaves some only here (nvs_flash finishes the copy at
/// its next start), so they still count, below any copy on a newer page.
const PAGE_FREEING: u32 = 0xFFFF_FFF8;
const VERSION_2: u8 = 0xFE;
const FIRST_ENTRY: usize = 64;
const CHUNK_ANY: u8 = 0xFF;

/// The item types this module reads and writes.
pub const TYPE_U8: u8 = 0x01;
pub const TYPE_U32: u8 = 0x04;
pub const TYPE_STR: u8 = 0x21;

/// A value found in NVS.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Value<'a> {
    U8(u8),
    U32(u32),
    /// The string without its NUL, borrowed from the caller's buffer.
    Str(&'a str),
}

/// Why a lookup failed (a missing key is `Ok(None)`, not an error).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NvsError {
    Flash(FlashError),
    /// The newest copy of the key is a string longer than the caller's buffer.
    TooLong {
        len: usize,
        room: usize,
    },
    /// The newest copy's bytes fail their CRC or are not UTF-8: the item is damaged.
    Damaged,
    /// The newest copy has a type this reader does not decode.
    UnsupportedType(u8),
}

impl core::fmt::Display for NvsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            NvsError::Flash(e) => e.fmt(f),
            NvsError::TooLong { len, room } => {
                write!(f, "value of {len} bytes exceeds the {room}-byte buffer")
            }
            NvsError::Damaged => f.write_str("the item's data fails its CRC or is not UTF-8"),
            NvsError::UnsupportedType(t) => write!(f, "item type 0x{t:02x} is not supported"),
        }
    }
}

impl From<FlashError> for NvsError {
    fn from(e: FlashError) -> Self {
        NvsError::Flash(e)
    }
}

fn entry_crc(entry: &[u8; ENTRY_SIZE]) -> u32 {
    let head = esp_rom_crc32_le(0xFFFF_FFFF, &entry[..4]);
    esp_rom_crc32_le(head, &entry[8..])
}

fn header_crc(header: &[u8; ENTRY_SIZE]) -> u32 {
    esp_rom_crc32_le(0xFFFF_FFFF, &header[4..28])
}

fn key_bytes(key: &str) -> Option<[u8; 16]> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.as_bytes().contains(&0) {
        return None;
    }
    let mut out = [0u8; 16];
    out[..key.len()].copy_from_slice(key.as_bytes());
    Some(out)
}

/// Where the newest copy of an item is.
#[derive(Clone, Copy)]
struct Hit {
    seq: u32,
    addr: u32,
    entry: [u8; ENTRY_SIZE],
}

/// Calls `visit(page_seq, entry_addr, entry)` for every trusted entry of the partition.
fn scan<F: ReadNorFlash>(
    flash: &mut F,
    part: &Partition,
    mut visit: impl FnMut(u32, u32, &[u8; ENTRY_SIZE]),
) -> Result<(), FlashError> {
    let pages = part.size as usize / PAGE_SIZE;
    for page in 0..pages {
        let base = part.offset + (page * PAGE_SIZE) as u32;
        let mut header = [0u8; ENTRY_SIZE];
        read(flash, base, &mut header)?;
        let state = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let stored_crc = u32::from_le_bytes([header[28], header[29], header[30], header[31]]);
        if !matches!(state, PAGE_ACTIVE | PAGE_FULL | PAGE_FREEING) || header_crc(&header) != stored_crc {
            continue;
        }
        let seq = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut bitmap = [0u8; 32];
        read(flash, base + 32, &mut bitmap)?;
        let mut i = 0;
        while i < ENTRIES_PER_PAGE {
            let state = (bitmap[i / 4] >> ((i % 4) * 2)) & 0b11;
            if state == 0b11 {
                break; // entries are written in order: the first empty one ends the page
            }
            let addr = base + (FIRST_ENTRY + i * ENTRY_SIZE) as u32;
            let mut entry = [0u8; ENTRY_SIZE];
            read(flash, addr, &mut entry)?;
            let crc_ok = entry_crc(&entry) == u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
            let span = entry[2] as usize;
            // An erased entry steps over itself only: erasing marks a whole span, and an entry
            // a cut left without its data was erased alone, so its span is not to be believed.
            let written = state == 0b10 && crc_ok;
            let span = if written && span >= 1 && i + span <= ENTRIES_PER_PAGE { span } else { 1 };
            if written {
                visit(seq, addr, &entry);
            }
            i += span;
        }
    }
    Ok(())
}

fn newest<F: ReadNorFlash>(
    flash: &mut F,
    part: &Partition,
    ns: u8,
    key: &[u8; 16],
) -> Result<Option<Hit>, FlashError> {
    let mut best: Option<Hit> = None;
    scan(flash, part, |seq, addr, entry| {
        if entry[0] == ns && entry[8..24] == key[..] {
            let newer = best.is_none_or(|b| (seq, addr) >= (b.seq, b.addr));
            if newer {
                best = Some(Hit { seq, addr, entry: *entry });
            }
        }
    })?;
    Ok(best)
}

/// The index of `namespace`, if the partition defines it.
pub fn namespace_index<F: ReadNorFlash>(
    flash: &mut F,
    part: &Partition,
    namespace: &str,
) -> Result<Option<u8>, FlashError> {
    let Some(key) = key_bytes(namespace) else { return Ok(None) };
    Ok(newest(flash, part, 0, &key)?.filter(|h| h.entry[1] == TYPE_U8).map(|h| h.entry[24]))
}

/// The newest value of `namespace`/`key`; strings are copied into `buf`.
pub fn get<'b, F: ReadNorFlash>(
    flash: &mut F,
    part: &Partition,
    namespace: &str,
    key: &str,
    buf: &'b mut [u8],
) -> Result<Option<Value<'b>>, NvsError> {
    let Some(ns) = namespace_index(flash, part, namespace)? else { return Ok(None) };
    let Some(key) = key_bytes(key) else { return Ok(None) };
    let Some(hit) = newest(flash, part, ns, &key)? else { return Ok(None) };
    let data = &hit.entry[24..];
    match hit.entry[1] {
        TYPE_U8 => Ok(Some(Value::U8(data[0]))),
        TYPE_U32 => Ok(Some(Value::U32(u32::from_le_bytes([data[0], data[1], data[2], data[3]])))),
        TYPE_STR => {
            let size = u16::from_le_bytes([data[0], data[1]]) as usize;
            let data_crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
            let span = hit.entry[2] as usize;
            if size == 0 || size > (span - 1) * ENTRY_SIZE {
                return Err(NvsError::Damaged);
            }
            if size > buf.len() {
                return Err(NvsError::TooLong { len: size - 1, room: buf.len().saturating_sub(1) });
            }
            read(flash, hit.addr + ENTRY_SIZE as u32, &mut buf[..size])?;
            if esp_rom_crc32_le(0xFFFF_FFFF, &buf[..size]) != data_crc || buf[size - 1] != 0 {
                return Err(NvsError::Damaged);
            }
            let text = core::str::from_utf8(&buf[..size - 1]).map_err(|_| NvsError::Damaged)?;
            Ok(Some(Value::Str(text)))
        }
        other => Err(NvsError::UnsupportedType(other)),
    }
}

/// Why an item does not fit a page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BuildError {
    /// Empty, longer than 15 bytes, or containing a NUL.
    BadKey,
    /// The page's 126 entries are used up.
    PageFull,
    /// A string must not contain a NUL (NVS stores it NUL-terminated).
    NulInString,
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BuildError::BadKey => "NVS keys are 1 to 15 bytes without NUL",
            BuildError::PageFull => "the NVS page has no room left (126 entries)",
            BuildError::NulInString => "an NVS string cannot contain a NUL byte",
        })
    }
}

/// One ACTIVE NVS page, filled the way `nvs_partition_gen.py` fills it.
pub struct PageBuilder {
    page: [u8; PAGE_SIZE],
    next: usize,
    namespaces: u8,
}

impl PageBuilder {
    /// An empty page with sequence number `seq`.
    pub fn new(seq: u32) -> Self {
        let mut page = [0xFFu8; PAGE_SIZE];
        page[..4].copy_from_slice(&PAGE_ACTIVE.to_le_bytes());
        page[4..8].copy_from_slice(&seq.to_le_bytes());
        page[8] = VERSION_2;
        let header: [u8; ENTRY_SIZE] = page[..ENTRY_SIZE].try_into().expect("32 bytes");
        page[28..32].copy_from_slice(&header_crc(&header).to_le_bytes());
        PageBuilder { page, next: 0, namespaces: 0 }
    }

    fn push(&mut self, ns: u8, ty: u8, key: &str, data: [u8; 8], extra: &[u8]) -> Result<(), BuildError> {
        let key = key_bytes(key).ok_or(BuildError::BadKey)?;
        let span = 1 + extra.len().div_ceil(ENTRY_SIZE);
        if self.next + span > ENTRIES_PER_PAGE {
            return Err(BuildError::PageFull);
        }
        let mut entry = [0xFFu8; ENTRY_SIZE];
        entry[0] = ns;
        entry[1] = ty;
        entry[2] = span as u8;
        entry[3] = CHUNK_ANY;
        entry[8..24].copy_from_slice(&key);
        entry[24..].copy_from_slice(&data);
        let crc = entry_crc(&entry);
        entry[4..8].copy_from_slice(&crc.to_le_bytes());
        let at = FIRST_ENTRY + self.next * ENTRY_SIZE;
        self.page[at..at + ENTRY_SIZE].copy_from_slice(&entry);
        self.page[at + ENTRY_SIZE..at + ENTRY_SIZE + extra.len()].copy_from_slice(extra);
        for i in self.next..self.next + span {
            self.page[32 + i / 4] &= !(1 << ((i % 4) * 2)); // 11 (empty) -> 10 (written)
        }
        self.next += span;
        Ok(())
    }

    /// Whether the page already holds an item `key` in namespace `ns`.
    pub fn has(&self, ns: u8, key: &str) -> bool {
        let Some(key) = key_bytes(key) else { return false };
        let mut i = 0;
        while i < self.next {
            let at = FIRST_ENTRY + i * ENTRY_SIZE;
            let entry = &self.page[at..at + ENTRY_SIZE];
            if entry[0] == ns && entry[8..24] == key {
                return true;
            }
            i += usize::from(entry[2]).max(1);
        }
        false
    }

    /// Defines a namespace and returns its index for the items that follow.
    pub fn namespace(&mut self, name: &str) -> Result<u8, BuildError> {
        let index = self.namespaces + 1;
        let mut data = [0xFFu8; 8];
        data[0] = index;
        self.push(0, TYPE_U8, name, data, &[])?;
        self.namespaces = index;
        Ok(index)
    }

    pub fn u8(&mut self, ns: u8, key: &str, value: u8) -> Result<(), BuildError> {
        let mut data = [0xFFu8; 8];
        data[0] = value;
        self.push(ns, TYPE_U8, key, data, &[])
    }

    pub fn str(&mut self, ns: u8, key: &str, value: &str) -> Result<(), BuildError> {
        if value.as_bytes().contains(&0) {
            return Err(BuildError::NulInString);
        }
        // The stored bytes are the string and its NUL; at most 125 entries of 32 bytes follow.
        let size = value.len() + 1;
        if size > (ENTRIES_PER_PAGE - 1) * ENTRY_SIZE {
            return Err(BuildError::PageFull);
        }
        let mut stored = [0u8; (ENTRIES_PER_PAGE - 1) * ENTRY_SIZE];
        stored[..value.len()].copy_from_slice(value.as_bytes());
        let crc = esp_rom_crc32_le(0xFFFF_FFFF, &stored[..size]);
        let mut data = [0xFFu8; 8];
        data[..2].copy_from_slice(&(size as u16).to_le_bytes());
        data[4..].copy_from_slice(&crc.to_le_bytes());
        self.push(ns, TYPE_STR, key, data, &stored[..size])
    }

    pub fn finish(self) -> [u8; PAGE_SIZE] {
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::ram::RamFlash;
    use crate::partition::{Partition, SUBTYPE_DATA_NVS, TYPE_DATA};
    use std::vec::Vec;

    fn ram(bytes: &[u8]) -> RamFlash {
        let mut f = RamFlash::new(bytes.len());
        f.data.copy_from_slice(bytes);
        f
    }

    /// `nvs_partition_gen.py generate` (esp-idf-nvs-partition-gen 0.3.0) of
    /// fixtures/nvs/otahil-hunter2.csv, size 0x3000.
    const GENERATED: &[u8] = include_bytes!("../../../fixtures/nvs/otahil-hunter2.bin");

    fn nvs_part(size: u32) -> Partition {
        Partition::new("nvs", TYPE_DATA, SUBTYPE_DATA_NVS, 0, size, 0)
    }

    fn hunter2_page() -> [u8; PAGE_SIZE] {
        let mut b = PageBuilder::new(0);
        let ns = b.namespace("otahil").unwrap();
        b.str(ns, "ota_password", "hunter2").unwrap();
        b.u8(ns, "ota_protocol", 1).unwrap();
        b.finish()
    }

    #[test]
    fn the_builder_matches_the_esp_idf_generator_byte_for_byte() {
        assert_eq!(GENERATED.len(), 0x3000);
        assert_eq!(&hunter2_page()[..], &GENERATED[..PAGE_SIZE]);
        assert!(GENERATED[PAGE_SIZE..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn reads_what_the_generator_wrote() {
        let part = nvs_part(0x3000);
        let mut buf = [0u8; 64];
        let mut f = ram(GENERATED);
        assert_eq!(namespace_index(&mut f, &part, "otahil"), Ok(Some(1)));
        assert_eq!(get(&mut f, &part, "otahil", "ota_password", &mut buf), Ok(Some(Value::Str("hunter2"))));
        assert_eq!(get(&mut f, &part, "otahil", "ota_protocol", &mut buf), Ok(Some(Value::U8(1))));
        assert_eq!(get(&mut f, &part, "otahil", "wifi_ssid", &mut buf), Ok(None));
        assert_eq!(get(&mut f, &part, "other", "ota_protocol", &mut buf), Ok(None));
        let mut tiny = [0u8; 4];
        assert_eq!(
            get(&mut f, &part, "otahil", "ota_password", &mut tiny),
            Err(NvsError::TooLong { len: 7, room: 3 })
        );
        f.data[0] = 0xFF; // page state no longer ACTIVE nor FULL
        assert_eq!(get(&mut f, &part, "otahil", "ota_protocol", &mut buf), Ok(None));
    }

    #[test]
    fn damage_is_detected_not_believed() {
        let part = nvs_part(0x3000);
        let mut buf = [0u8; 64];
        let mut f = ram(GENERATED);
        // A bit of the password's data entry: the data CRC no longer matches.
        f.data[0x80] ^= 1;
        assert_eq!(get(&mut f, &part, "otahil", "ota_password", &mut buf), Err(NvsError::Damaged));
        // A bit of the protocol entry's header: its CRC fails, the item is not trusted at all.
        f.data[0xA0 + 9] ^= 1;
        assert_eq!(get(&mut f, &part, "otahil", "ota_protocol", &mut buf), Ok(None));
        // A bit of the page header: the whole page is skipped.
        let mut f = ram(GENERATED);
        f.data[5] ^= 1;
        assert_eq!(namespace_index(&mut f, &part, "otahil"), Ok(None));
    }

    #[test]
    fn the_newest_copy_wins() {
        let mut older = PageBuilder::new(0);
        let ns = older.namespace("otahil").unwrap();
        older.u8(ns, "ota_protocol", 1).unwrap();
        older.u8(ns, "ota_protocol", 2).unwrap(); // later in the same page
        let mut newer = PageBuilder::new(1);
        let ns2 = newer.namespace("otahil").unwrap();
        newer.str(ns2, "ota_password", "from-page-1").unwrap();
        let mut flash = Vec::new();
        // The newer page first in flash: sequence numbers, not positions, order pages.
        flash.extend_from_slice(&newer.finish());
        older.str(ns, "ota_password", "from-page-0").unwrap();
        flash.extend_from_slice(&older.finish());
        let part = nvs_part(0x2000);
        let mut buf = [0u8; 64];
        let mut f = ram(&flash);
        assert_eq!(get(&mut f, &part, "otahil", "ota_protocol", &mut buf), Ok(Some(Value::U8(2))));
        assert_eq!(
            get(&mut f, &part, "otahil", "ota_password", &mut buf),
            Ok(Some(Value::Str("from-page-1")))
        );
    }

    #[test]
    fn builder_limits() {
        let mut b = PageBuilder::new(0);
        assert_eq!(b.namespace(""), Err(BuildError::BadKey));
        assert_eq!(b.namespace("sixteen-chars-xx"), Err(BuildError::BadKey));
        let ns = b.namespace("n").unwrap();
        assert_eq!(b.str(ns, "k", "a\0b"), Err(BuildError::NulInString));
        let long = "x".repeat(125 * 32);
        assert_eq!(b.str(ns, "k", &long), Err(BuildError::PageFull));
        let fits = "x".repeat(124 * 32 - 1); // 124 data entries + its own = 125 of the 125 left
        b.str(ns, "k", &fits).unwrap();
        assert_eq!(b.u8(ns, "more", 1), Err(BuildError::PageFull));
        let mut f = ram(&b.finish());
        let mut buf = std::vec![0u8; 4096];
        let got = get(&mut f, &nvs_part(0x1000), "n", "k", &mut buf).unwrap();
        assert_eq!(got, Some(Value::Str(fits.as_str())));
    }

    #[test]
    fn the_builder_knows_what_it_wrote() {
        let mut b = PageBuilder::new(0);
        let a = b.namespace("a").unwrap();
        let c = b.namespace("c").unwrap();
        assert!(!b.has(a, "k"));
        b.str(a, "long", &"x".repeat(100)).unwrap(); // 5 entries: the scan steps over its data
        b.u8(a, "k", 1).unwrap();
        assert!(b.has(a, "k") && b.has(a, "long"));
        assert!(!b.has(c, "k"), "another namespace");
        assert!(!b.has(a, "kk") && !b.has(a, ""));
    }

    /// A power cut during nvs_flash's garbage collection: the old page is FREEING, the new page
    /// holds some of its items. Both count; the new page's copy wins where there is one.
    #[test]
    fn items_on_a_freeing_page_still_count() {
        let mut old = PageBuilder::new(3);
        let ns = old.namespace("otahil").unwrap();
        old.str(ns, "ota_password", "old").unwrap();
        old.u8(ns, "ota_protocol", 1).unwrap();
        let mut old = old.finish();
        old[..4].copy_from_slice(&PAGE_FREEING.to_le_bytes()); // the state is outside the header CRC
        let mut new = PageBuilder::new(4);
        let ns = new.namespace("otahil").unwrap();
        new.str(ns, "ota_password", "copied").unwrap();
        let mut flash = old.to_vec();
        flash.extend_from_slice(&new.finish());
        let part = nvs_part(0x2000);
        let mut buf = [0u8; 64];
        let mut f = ram(&flash);
        assert_eq!(get(&mut f, &part, "otahil", "ota_password", &mut buf), Ok(Some(Value::Str("copied"))));
        assert_eq!(get(&mut f, &part, "otahil", "ota_protocol", &mut buf), Ok(Some(Value::U8(1))));
    }
}
