//! Writing NVS items at run time, the way `nvs_flash` does, so that what a device stores while it
//! runs (the pull's resume point) is read back by [`super::get`], by ESP-IDF and by the
//! harness's inspector alike.
//!
//! An item is appended to the ACTIVE page (entry bytes first, then its bitmap bits set to
//! "written"), and only then are older copies of the key marked "erased": a power cut anywhere
//! leaves either the old value or the new one, never neither (the reader takes the newest
//! written copy). A full page is marked FULL and the next uninitialised page becomes ACTIVE with
//! the next sequence number. When only one uninitialised page is left, the oldest FULL page is
//! collected first: marked FREEING, its live items copied to the fresh page, then erased, as
//! `nvs_flash` keeps one page spare for exactly this. A collection cut short is finished by the
//! next write. Every flash operation is one aligned word or one entry, or one sector erase.

use super::{
    CHUNK_ANY, ENTRIES_PER_PAGE, ENTRY_SIZE, FIRST_ENTRY, PAGE_ACTIVE, PAGE_FREEING, PAGE_FULL, PAGE_SIZE,
    TYPE_STR, TYPE_U8, TYPE_U32, VERSION_2, entry_crc, header_crc, key_bytes,
};
use crate::crc::esp_rom_crc32_le;
use crate::flash::{FlashError, read};
use crate::partition::Partition;
use embedded_storage::nor_flash::NorFlash;

/// The longest string [`set_str`] stores (with its NUL it fills at most 8 entries).
pub const MAX_STORED_STR: usize = 8 * ENTRY_SIZE - 1;

const STATE_EMPTY: u8 = 0b11;
const STATE_WRITTEN: u8 = 0b10;
const STATE_ERASED: u8 = 0b00;

/// Why an item could not be stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StoreError {
    Flash(FlashError),
    /// Empty, longer than 15 bytes, or containing a NUL; or a string with a NUL or too long.
    BadItem,
    /// The partition has no page left to take the item (live items fill it).
    Full,
    /// The partition table has no nvs partition.
    NoPartition,
}

impl From<FlashError> for StoreError {
    fn from(e: FlashError) -> Self {
        StoreError::Flash(e)
    }
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::Flash(e) => e.fmt(f),
            StoreError::BadItem => f.write_str("not a storable NVS key or value"),
            StoreError::Full => f.write_str("the NVS partition is full"),
            StoreError::NoPartition => f.write_str("no nvs partition"),
        }
    }
}

/// Stores a `u32` (`nvs_set_u32`).
pub fn set_u32<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    namespace: &str,
    key: &str,
    value: u32,
) -> Result<(), StoreError> {
    let mut data = [0xFFu8; 8];
    data[..4].copy_from_slice(&value.to_le_bytes());
    set(flash, part, namespace, key, TYPE_U32, data, &[])
}

/// Stores a `u8` (`nvs_set_u8`).
pub fn set_u8<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    namespace: &str,
    key: &str,
    value: u8,
) -> Result<(), StoreError> {
    let mut data = [0xFFu8; 8];
    data[0] = value;
    set(flash, part, namespace, key, TYPE_U8, data, &[])
}

/// Stores a string of at most [`MAX_STORED_STR`] bytes (`nvs_set_str`).
pub fn set_str<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    namespace: &str,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    if value.len() > MAX_STORED_STR || value.as_bytes().contains(&0) {
        return Err(StoreError::BadItem);
    }
    let mut stored = [0u8; MAX_STORED_STR + 1];
    stored[..value.len()].copy_from_slice(value.as_bytes());
    let size = value.len() + 1;
    let mut data = [0xFFu8; 8];
    data[..2].copy_from_slice(&(size as u16).to_le_bytes());
    data[4..].copy_from_slice(&esp_rom_crc32_le(0xFFFF_FFFF, &stored[..size]).to_le_bytes());
    set(flash, part, namespace, key, TYPE_STR, data, &stored[..size])
}

/// Erases every copy of `namespace`/`key` (`nvs_erase_key`); a missing key is not an error.
pub fn erase<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    namespace: &str,
    key: &str,
) -> Result<(), StoreError> {
    let key = key_bytes(key).ok_or(StoreError::BadItem)?;
    let Some(ns) = super::namespace_index(flash, part, namespace)? else { return Ok(()) };
    mark_copies_erased(flash, part, ns, &key, None)
}

fn set<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    namespace: &str,
    key: &str,
    ty: u8,
    data: [u8; 8],
    extra: &[u8],
) -> Result<(), StoreError> {
    let key = key_bytes(key).ok_or(StoreError::BadItem)?;
    let ns_key = key_bytes(namespace).ok_or(StoreError::BadItem)?;
    finish_collection(flash, part)?;
    let ns = match super::namespace_index(flash, part, namespace)? {
        Some(ns) => ns,
        None => {
            let ns = next_namespace_index(flash, part)?;
            let mut d = [0xFFu8; 8];
            d[0] = ns;
            append(flash, part, &make_entry(0, TYPE_U8, 1, &ns_key, d), &[])?;
            ns
        }
    };
    let span = 1 + extra.len().div_ceil(ENTRY_SIZE);
    let entry = make_entry(ns, ty, span as u8, &key, data);
    let at = append(flash, part, &entry, extra)?;
    mark_copies_erased(flash, part, ns, &key, Some(at))
}

fn make_entry(ns: u8, ty: u8, span: u8, key: &[u8; 16], data: [u8; 8]) -> [u8; ENTRY_SIZE] {
    let mut entry = [0xFFu8; ENTRY_SIZE];
    entry[0] = ns;
    entry[1] = ty;
    entry[2] = span;
    entry[3] = CHUNK_ANY;
    entry[8..24].copy_from_slice(key);
    entry[24..].copy_from_slice(&data);
    let crc = entry_crc(&entry);
    entry[4..8].copy_from_slice(&crc.to_le_bytes());
    entry
}

/// A page's header fields.
#[derive(Clone, Copy)]
struct PageInfo {
    base: u32,
    state: u32,
    seq: u32,
    valid: bool,
}

fn page_info<F: NorFlash>(flash: &mut F, part: &Partition, page: usize) -> Result<PageInfo, FlashError> {
    let base = part.offset + (page * PAGE_SIZE) as u32;
    let mut header = [0u8; ENTRY_SIZE];
    read(flash, base, &mut header)?;
    let state = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let seq = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let crc = u32::from_le_bytes([header[28], header[29], header[30], header[31]]);
    let valid = header_crc(&header) == crc;
    Ok(PageInfo { base, state, seq, valid })
}

fn pages(part: &Partition) -> usize {
    part.size as usize / PAGE_SIZE
}

fn in_use(p: &PageInfo) -> bool {
    p.valid && matches!(p.state, PAGE_ACTIVE | PAGE_FULL | PAGE_FREEING)
}

fn entry_state<F: NorFlash>(flash: &mut F, base: u32, i: usize) -> Result<u8, FlashError> {
    let mut byte = [0u8; 1];
    read(flash, base + 32 + (i / 4) as u32, &mut byte)?;
    Ok((byte[0] >> ((i % 4) * 2)) & 0b11)
}

/// Sets entries `from..from + n` of the page at `base` to `state` (bits only cleared).
fn set_states<F: NorFlash>(
    flash: &mut F,
    base: u32,
    from: usize,
    n: usize,
    state: u8,
) -> Result<(), FlashError> {
    let mut i = from;
    while i < from + n {
        let word_at = base + 32 + ((i / 4) as u32 & !3);
        let mut word = [0u8; 4];
        read(flash, word_at, &mut word)?;
        let first_in_word = ((word_at - base - 32) * 4) as usize;
        while i < from + n && i < first_in_word + 16 {
            let bit = (i - first_in_word) * 2;
            let byte = bit / 8;
            let shift = bit % 8;
            word[byte] &= !(0b11 << shift) | (state << shift);
            i += 1;
        }
        flash.write(word_at, &word).map_err(FlashError::from_driver)?;
    }
    Ok(())
}

fn write_word<F: NorFlash>(flash: &mut F, at: u32, value: u32) -> Result<(), FlashError> {
    flash.write(at, &value.to_le_bytes()).map_err(FlashError::from_driver)
}

/// The first index from which `span` entries are free on the page at `base`: entries whose
/// bitmap says empty and whose bytes are still erased (a cut between writing an entry and
/// marking it leaves bytes under an "empty" state: such an entry is marked erased and skipped).
fn free_run<F: NorFlash>(flash: &mut F, base: u32, span: usize) -> Result<Option<usize>, FlashError> {
    let mut i = 0;
    while i < ENTRIES_PER_PAGE && entry_state(flash, base, i)? != STATE_EMPTY {
        i += 1;
    }
    while i < ENTRIES_PER_PAGE {
        let mut bytes = [0u8; ENTRY_SIZE];
        read(flash, base + (FIRST_ENTRY + i * ENTRY_SIZE) as u32, &mut bytes)?;
        if bytes.iter().all(|&b| b == 0xFF) {
            break;
        }
        set_states(flash, base, i, 1, STATE_ERASED)?;
        i += 1;
    }
    Ok((i + span <= ENTRIES_PER_PAGE).then_some(i))
}

/// Appends an item; returns its entry's address.
fn append<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    entry: &[u8; ENTRY_SIZE],
    extra: &[u8],
) -> Result<u32, StoreError> {
    let span = 1 + extra.len().div_ceil(ENTRY_SIZE);
    for _ in 0..pages(part) + 1 {
        let active = active_page(flash, part)?;
        let base = match active {
            Some(p) => p.base,
            None => open_page(flash, part)?,
        };
        if let Some(i) = free_run(flash, base, span)? {
            let at = base + (FIRST_ENTRY + i * ENTRY_SIZE) as u32;
            flash.write(at, entry).map_err(FlashError::from_driver)?;
            let mut chunk = [0xFFu8; ENTRY_SIZE];
            for (n, piece) in extra.chunks(ENTRY_SIZE).enumerate() {
                chunk.fill(0xFF);
                chunk[..piece.len()].copy_from_slice(piece);
                let to = at + ((n + 1) * ENTRY_SIZE) as u32;
                flash.write(to, &chunk).map_err(FlashError::from_driver)?;
            }
            set_states(flash, base, i, span, STATE_WRITTEN)?;
            return Ok(at);
        }
        // No room: the page is FULL, a fresh one is opened on the next turn.
        write_word(flash, base, PAGE_FULL)?;
    }
    Err(StoreError::Full)
}

/// The ACTIVE page with the highest sequence number.
fn active_page<F: NorFlash>(flash: &mut F, part: &Partition) -> Result<Option<PageInfo>, FlashError> {
    let mut best: Option<PageInfo> = None;
    for page in 0..pages(part) {
        let p = page_info(flash, part, page)?;
        if p.valid && p.state == PAGE_ACTIVE && best.is_none_or(|b| p.seq > b.seq) {
            best = Some(p);
        }
    }
    Ok(best)
}

/// Makes an uninitialised page ACTIVE; returns its base. When it was the last spare page, the
/// oldest FULL page is collected into it (marked FREEING first, so a cut anywhere is finished by
/// the next write), which leaves a spare page again.
fn open_page<F: NorFlash>(flash: &mut F, part: &Partition) -> Result<u32, StoreError> {
    let mut spare = None;
    let mut spares = 0;
    let mut max_seq = None::<u32>;
    let mut oldest_full: Option<PageInfo> = None;
    let mut freeing: Option<PageInfo> = None;
    for page in 0..pages(part) {
        let p = page_info(flash, part, page)?;
        if in_use(&p) {
            max_seq = Some(max_seq.map_or(p.seq, |m| m.max(p.seq)));
            if p.state == PAGE_FULL && oldest_full.is_none_or(|o| p.seq < o.seq) {
                oldest_full = Some(p);
            }
            if p.state == PAGE_FREEING {
                freeing = Some(p);
            }
        } else {
            // Anything else (never written, or a header a cut left half-written) is spare once erased.
            spares += 1;
            if spare.is_none() {
                spare = Some(p);
            }
        }
    }
    let Some(spare) = spare else { return Err(StoreError::Full) };
    if spares == 1
        && freeing.is_none()
        && let Some(old) = oldest_full
    {
        write_word(flash, old.base, PAGE_FREEING)?;
        freeing = Some(old);
    }
    let seq = max_seq.map_or(0, |m| m + 1);
    let base = init_page(flash, spare.base, seq)?;
    if let Some(old) = freeing {
        collect(flash, part, old.base, base)?;
    }
    Ok(base)
}

fn init_page<F: NorFlash>(flash: &mut F, base: u32, seq: u32) -> Result<u32, FlashError> {
    let mut header = [0xFFu8; ENTRY_SIZE];
    read(flash, base, &mut header)?;
    let mut bitmap = [0u8; 32];
    read(flash, base + 32, &mut bitmap)?;
    let mut first = [0u8; ENTRY_SIZE];
    read(flash, base + FIRST_ENTRY as u32, &mut first)?;
    let clean = header.iter().chain(bitmap.iter()).chain(first.iter()).all(|&b| b == 0xFF);
    if !clean {
        flash.erase(base, base + PAGE_SIZE as u32).map_err(FlashError::from_driver)?;
    }
    let mut header = [0xFFu8; ENTRY_SIZE];
    header[..4].copy_from_slice(&PAGE_ACTIVE.to_le_bytes());
    header[4..8].copy_from_slice(&seq.to_le_bytes());
    header[8] = VERSION_2;
    let crc = header_crc(&header);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    // The state word last: until it is written the page is not in use.
    flash.write(base + 4, &header[4..]).map_err(FlashError::from_driver)?;
    write_word(flash, base, PAGE_ACTIVE)?;
    Ok(base)
}

/// Finishes a collection a power cut interrupted: the FREEING page's live items go to the
/// ACTIVE page (or a fresh one), then the FREEING page is erased.
fn finish_collection<F: NorFlash>(flash: &mut F, part: &Partition) -> Result<(), StoreError> {
    for page in 0..pages(part) {
        let p = page_info(flash, part, page)?;
        if p.valid && p.state == PAGE_FREEING {
            match active_page(flash, part)? {
                Some(a) => collect(flash, part, p.base, a.base)?,
                // Opening a page collects the FREEING one into it.
                None => {
                    open_page(flash, part)?;
                }
            }
        }
    }
    Ok(())
}

/// Copies the items of the page at `from` whose newest copy lives there to the page at `to`,
/// then erases `from`.
fn collect<F: NorFlash>(flash: &mut F, part: &Partition, from: u32, to: u32) -> Result<(), StoreError> {
    let mut i = 0;
    while i < ENTRIES_PER_PAGE {
        let state = entry_state(flash, from, i)?;
        if state == STATE_EMPTY {
            break;
        }
        let at = from + (FIRST_ENTRY + i * ENTRY_SIZE) as u32;
        let mut entry = [0u8; ENTRY_SIZE];
        read(flash, at, &mut entry)?;
        let crc_ok = entry_crc(&entry) == u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let span = entry[2] as usize;
        let written = state == STATE_WRITTEN && crc_ok;
        let span = if written && span >= 1 && i + span <= ENTRIES_PER_PAGE { span } else { 1 };
        if written {
            let key: [u8; 16] = entry[8..24].try_into().unwrap_or([0; 16]);
            let newest = super::newest(flash, part, entry[0], &key)?;
            if newest.is_some_and(|h| h.addr == at) {
                let mut extra = [0u8; (ENTRIES_PER_PAGE - 1) * ENTRY_SIZE];
                let len = (span - 1) * ENTRY_SIZE;
                read(flash, at + ENTRY_SIZE as u32, &mut extra[..len])?;
                let Some(j) = free_run(flash, to, span)? else { return Err(StoreError::Full) };
                let dest = to + (FIRST_ENTRY + j * ENTRY_SIZE) as u32;
                flash.write(dest, &entry).map_err(FlashError::from_driver)?;
                if len > 0 {
                    flash.write(dest + ENTRY_SIZE as u32, &extra[..len]).map_err(FlashError::from_driver)?;
                }
                set_states(flash, to, j, span, STATE_WRITTEN)?;
            }
        }
        i += span;
    }
    flash.erase(from, from + PAGE_SIZE as u32).map_err(FlashError::from_driver)?;
    Ok(())
}

fn next_namespace_index<F: NorFlash>(flash: &mut F, part: &Partition) -> Result<u8, StoreError> {
    let mut max = 0u8;
    super::scan(flash, part, |_, _, entry| {
        if entry[0] == 0 && entry[1] == TYPE_U8 {
            max = max.max(entry[24]);
        }
    })?;
    max.checked_add(1).filter(|&n| n < 0xFF).ok_or(StoreError::Full)
}

/// Marks every written copy of `ns`/`key` but the one at `keep` erased.
fn mark_copies_erased<F: NorFlash>(
    flash: &mut F,
    part: &Partition,
    ns: u8,
    key: &[u8; 16],
    keep: Option<u32>,
) -> Result<(), StoreError> {
    // Found first, marked after: the scan borrows the flash.
    let mut found = [(0u32, 0usize); 8];
    loop {
        let mut n = 0;
        let mut more = false;
        super::scan(flash, part, |_, addr, entry| {
            if entry[0] == ns && entry[8..24] == key[..] && Some(addr) != keep {
                if n < found.len() {
                    found[n] = (addr, entry[2].max(1) as usize);
                    n += 1;
                } else {
                    more = true;
                }
            }
        })?;
        for &(addr, span) in &found[..n] {
            let page_base = part.offset + (addr - part.offset) / PAGE_SIZE as u32 * PAGE_SIZE as u32;
            let i = (addr - page_base) as usize / ENTRY_SIZE - 2;
            set_states(flash, page_base, i, span, STATE_ERASED)?;
        }
        if !more {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
