//! The ESP app image: header, segments, 0xEF-seeded checksum, appended SHA-256 — and the
//! verification `esp_image_verify` performs, with one precise reason per failure.

use crate::app_desc::{APP_DESC_IMAGE_OFFSET, APP_DESC_LEN, AppDesc};
use core::fmt;
use sha2::{Digest, Sha256};

pub const IMAGE_MAGIC: u8 = 0xE9;
pub const HEADER_LEN: u32 = 24;
pub const SEGMENT_HEADER_LEN: u32 = 8;
pub const MAX_SEGMENTS: u8 = 16;
pub const CHECKSUM_SEED: u8 = 0xEF;
pub const CHIP_ID_ESP32C3: u16 = 0x0005;
/// Segment lengths must stay below this (`invalid segment length`).
pub const MAX_SEGMENT_LEN: u32 = 16 * 1024 * 1024;
/// MMU page on the ESP32-C3: flash-mapped segments keep file offset ≡ load address mod this.
pub const MMU_PAGE: u32 = 0x10000;

/// Byte-addressed read access to an image, wherever it lives (RAM, a flash partition, a file).
pub trait ImageSource {
    /// Bytes that can be read (a partition's size, a buffer's length).
    fn len(&self) -> u32;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; only called with `offset + buf.len() <= len()`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ReadFailed>;
}

/// The storage under an [`ImageSource`] failed to read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReadFailed;

impl ImageSource for &[u8] {
    fn len(&self) -> u32 {
        <[u8]>::len(self) as u32
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ReadFailed> {
        let start = offset as usize;
        buf.copy_from_slice(self.get(start..start + buf.len()).ok_or(ReadFailed)?);
        Ok(())
    }
}

/// `esp_image_header_t`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ImageHeader {
    pub magic: u8,
    pub segment_count: u8,
    pub spi_mode: u8,
    /// bits 0-3 speed, bits 4-7 size.
    pub spi_speed_size: u8,
    pub entry_addr: u32,
    pub wp_pin: u8,
    pub spi_pin_drv: [u8; 3],
    pub chip_id: u16,
    pub min_chip_rev: u8,
    pub min_chip_rev_full: u16,
    pub max_chip_rev_full: u16,
    pub reserved: [u8; 4],
    pub hash_appended: u8,
}

impl ImageHeader {
    pub fn parse(b: &[u8; HEADER_LEN as usize]) -> Self {
        ImageHeader {
            magic: b[0],
            segment_count: b[1],
            spi_mode: b[2],
            spi_speed_size: b[3],
            entry_addr: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            wp_pin: b[8],
            spi_pin_drv: [b[9], b[10], b[11]],
            chip_id: u16::from_le_bytes([b[12], b[13]]),
            min_chip_rev: b[14],
            min_chip_rev_full: u16::from_le_bytes([b[15], b[16]]),
            max_chip_rev_full: u16::from_le_bytes([b[17], b[18]]),
            reserved: [b[19], b[20], b[21], b[22]],
            hash_appended: b[23],
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0] = self.magic;
        b[1] = self.segment_count;
        b[2] = self.spi_mode;
        b[3] = self.spi_speed_size;
        b[4..8].copy_from_slice(&self.entry_addr.to_le_bytes());
        b[8] = self.wp_pin;
        b[9..12].copy_from_slice(&self.spi_pin_drv);
        b[12..14].copy_from_slice(&self.chip_id.to_le_bytes());
        b[14] = self.min_chip_rev;
        b[15..17].copy_from_slice(&self.min_chip_rev_full.to_le_bytes());
        b[17..19].copy_from_slice(&self.max_chip_rev_full.to_le_bytes());
        b[19..23].copy_from_slice(&self.reserved);
        b[23] = self.hash_appended;
        b
    }
}

/// Why an image does not verify. The `Display` texts are ESP-IDF's own messages where it has one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ImageError {
    /// Fewer bytes than the image needs (a cut upload, a header cut at 180 bytes).
    Truncated { needed: u32, available: u32 },
    /// `image at 0x%x has invalid magic byte (nothing flashed here?)`
    InvalidMagic { found: u8 },
    /// `mismatch chip ID, expected %d, found %d`
    ChipIdMismatch { expected: u16, found: u16 },
    /// `chip revision check failed. Required >= v%d.%d, found v%d.%d.`
    ChipRevTooLow { required: u16, found: u16 },
    /// `chip revision check failed. Required <= v%d.%d, found v%d.%d.`
    ChipRevTooHigh { allowed: u16, found: u16 },
    /// `image at 0x%x segment count %d exceeds max %d`
    SegmentCount { count: u8 },
    /// `invalid segment length 0x%x`
    SegmentLength { segment: u8, len: u32 },
    /// The segment's data runs past the end of the partition.
    SegmentPastEnd { segment: u8, end: u32, available: u32 },
    /// `Segment %d load address 0x%08x, doesn't match data 0x%08x`
    SegmentAlignment { segment: u8, load_addr: u32, file_offset: u32 },
    /// `Checksum failed. Calculated 0x%x read 0x%x`
    Checksum { calculated: u8, read: u8 },
    /// `Image hash failed - image is corrupt`
    Hash,
    /// `Image length %u doesn't fit in partition length %u`
    TooBig { image_len: u32, partition_len: u32 },
    /// The app descriptor at 0x20 lacks its magic word 0xABCD5432.
    AppDescMagic { found: u32 },
    /// The storage failed while reading the image.
    Read,
}

fn rev(f: &mut fmt::Formatter<'_>, r: u16) -> fmt::Result {
    write!(f, "v{}.{}", r / 100, r % 100)
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ImageError::Truncated { needed, available } => {
                write!(f, "image truncated: needs {needed} bytes, {available} available")
            }
            ImageError::InvalidMagic { found } => {
                write!(f, "image has invalid magic byte 0x{found:02x} (nothing flashed here?)")
            }
            ImageError::ChipIdMismatch { expected, found } => {
                write!(f, "mismatch chip ID, expected {expected}, found {found}")
            }
            ImageError::ChipRevTooLow { required, found } => {
                f.write_str("chip revision check failed. Required >= ")?;
                rev(f, required)?;
                f.write_str(", found ")?;
                rev(f, found)?;
                f.write_str(".")
            }
            ImageError::ChipRevTooHigh { allowed, found } => {
                f.write_str("chip revision check failed. Required <= ")?;
                rev(f, allowed)?;
                f.write_str(", found ")?;
                rev(f, found)?;
                f.write_str(".")
            }
            ImageError::SegmentCount { count } => {
                write!(f, "image segment count {count} exceeds max {MAX_SEGMENTS}")
            }
            ImageError::SegmentLength { segment, len } => {
                write!(f, "invalid segment length 0x{len:x} (segment {segment})")
            }
            ImageError::SegmentPastEnd { segment, end, available } => write!(
                f,
                "segment {segment} ends at 0x{end:x}, past the end of the partition (0x{available:x})"
            ),
            ImageError::SegmentAlignment { segment, load_addr, file_offset } => write!(
                f,
                "Segment {segment} load address 0x{load_addr:08x}, doesn't match data 0x{file_offset:08x}"
            ),
            ImageError::Checksum { calculated, read } => {
                write!(f, "Checksum failed. Calculated 0x{calculated:x} read 0x{read:x}")
            }
            ImageError::Hash => f.write_str("Image hash failed - image is corrupt"),
            ImageError::TooBig { image_len, partition_len } => {
                write!(f, "Image length {image_len} doesn't fit in partition length {partition_len}")
            }
            ImageError::AppDescMagic { found } => {
                write!(f, "app descriptor magic 0x{found:08x} is not 0xabcd5432")
            }
            ImageError::Read => f.write_str("flash read failed while verifying the image"),
        }
    }
}

impl ImageError {
    /// A short, stable identifier for reports and scenario expectations.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Truncated { .. } => "truncated",
            ImageError::InvalidMagic { .. } => "invalid_magic",
            ImageError::ChipIdMismatch { .. } => "chip_id_mismatch",
            ImageError::ChipRevTooLow { .. } => "chip_rev_too_low",
            ImageError::ChipRevTooHigh { .. } => "chip_rev_too_high",
            ImageError::SegmentCount { .. } => "segment_count",
            ImageError::SegmentLength { .. } => "segment_length",
            ImageError::SegmentPastEnd { .. } => "segment_past_end",
            ImageError::SegmentAlignment { .. } => "segment_alignment",
            ImageError::Checksum { .. } => "checksum",
            ImageError::Hash => "sha256",
            ImageError::TooBig { .. } => "too_big",
            ImageError::AppDescMagic { .. } => "app_desc_magic",
            ImageError::Read => "read_failed",
        }
    }
}

/// The chip an image is checked against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChipInfo {
    pub chip_id: u16,
    /// major×100 + minor, e.g. 4 for v0.4.
    pub revision: u16,
}

impl ChipInfo {
    /// An ESP32-C3 revision v0.4, the most common production silicon (and what QEMU reports).
    pub const ESP32C3: ChipInfo = ChipInfo { chip_id: CHIP_ID_ESP32C3, revision: 4 };
}

/// What a verified image is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ImageInfo {
    pub header: ImageHeader,
    pub desc: AppDesc,
    /// Bytes from the header through the checksum block and appended hash.
    pub len: u32,
    pub checksum: u8,
    /// SHA-256 of the image's `len` bytes: the file's `sha256sum`, appended hash included.
    pub sha256: [u8; 32],
    /// What `esp_partition_get_sha256` reports for the app: its appended hash when it has one
    /// (the digest of the bytes before it), else the digest of the `len` bytes.
    pub partition_sha256: [u8; 32],
}

fn is_flash_mapped(addr: u32) -> bool {
    // ESP32-C3 DROM and IROM windows.
    (0x3C00_0000..0x3C80_0000).contains(&addr) || (0x4200_0000..0x4280_0000).contains(&addr)
}

const CHUNK: usize = 512;

struct Reader<'a, S: ImageSource> {
    src: &'a mut S,
    pos: u32,
    sha: Sha256,
}

impl<S: ImageSource> Reader<'_, S> {
    fn take(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        let needed = self.pos + buf.len() as u32;
        if needed > self.src.len() {
            return Err(ImageError::Truncated { needed, available: self.src.len() });
        }
        self.src.read(self.pos, buf).map_err(|_| ImageError::Read)?;
        self.sha.update(&*buf);
        self.pos = needed;
        Ok(())
    }
}

/// Verifies the image at the start of `src`, as `esp_image_verify` does, against `chip`.
pub fn verify<S: ImageSource>(src: &mut S, chip: ChipInfo) -> Result<ImageInfo, ImageError> {
    let available = src.len();
    let mut r = Reader { src, pos: 0, sha: Sha256::new() };
    let mut hb = [0u8; HEADER_LEN as usize];
    if available == 0 {
        return Err(ImageError::Truncated { needed: HEADER_LEN, available });
    }
    // The magic byte is judged before the length so that a blank slot says "invalid magic".
    let mut first = [0u8; 1];
    r.src.read(0, &mut first).map_err(|_| ImageError::Read)?;
    if first[0] != IMAGE_MAGIC {
        return Err(ImageError::InvalidMagic { found: first[0] });
    }
    r.take(&mut hb)?;
    let header = ImageHeader::parse(&hb);
    if header.chip_id != chip.chip_id {
        return Err(ImageError::ChipIdMismatch { expected: chip.chip_id, found: header.chip_id });
    }
    if header.min_chip_rev_full > chip.revision {
        return Err(ImageError::ChipRevTooLow { required: header.min_chip_rev_full, found: chip.revision });
    }
    if header.max_chip_rev_full != 0
        && header.max_chip_rev_full != 0xFFFF
        && chip.revision > header.max_chip_rev_full
    {
        return Err(ImageError::ChipRevTooHigh { allowed: header.max_chip_rev_full, found: chip.revision });
    }
    if header.segment_count > MAX_SEGMENTS {
        return Err(ImageError::SegmentCount { count: header.segment_count });
    }
    let mut checksum = CHECKSUM_SEED;
    let mut desc_bytes = [0u8; APP_DESC_LEN];
    let mut desc_filled = 0usize;
    let mut buf = [0u8; CHUNK];
    for segment in 0..header.segment_count {
        let mut sh = [0u8; SEGMENT_HEADER_LEN as usize];
        r.take(&mut sh)?;
        let load_addr = u32::from_le_bytes([sh[0], sh[1], sh[2], sh[3]]);
        let len = u32::from_le_bytes([sh[4], sh[5], sh[6], sh[7]]);
        if len % 4 != 0 || len >= MAX_SEGMENT_LEN {
            return Err(ImageError::SegmentLength { segment, len });
        }
        let data_start = r.pos;
        let end = data_start as u64 + len as u64;
        if end > available as u64 {
            return Err(ImageError::SegmentPastEnd {
                segment,
                end: end.min(u32::MAX as u64) as u32,
                available,
            });
        }
        if is_flash_mapped(load_addr) && data_start % MMU_PAGE != load_addr % MMU_PAGE {
            return Err(ImageError::SegmentAlignment { segment, load_addr, file_offset: data_start });
        }
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            let at = r.pos;
            r.take(&mut buf[..n])?;
            for &b in &buf[..n] {
                checksum ^= b;
            }
            // The descriptor lives in the first bytes of the first segment's data.
            let desc_at = APP_DESC_IMAGE_OFFSET as usize + desc_filled;
            if segment == 0 && desc_filled < APP_DESC_LEN && at as usize <= desc_at {
                let from = desc_at - at as usize;
                let m = (n - from.min(n)).min(APP_DESC_LEN - desc_filled);
                desc_bytes[desc_filled..desc_filled + m].copy_from_slice(&buf[from..from + m]);
                desc_filled += m;
            }
            left -= n;
        }
    }
    // Padding up to the checksum byte: the last byte of the 16-byte block after the segments.
    let checksum_at = crate::align_up(r.pos + 1, 16) - 1;
    let mut pad = [0u8; 16];
    let pad_len = (checksum_at - r.pos) as usize;
    r.take(&mut pad[..pad_len])?;
    let mut stored = [0u8; 1];
    r.take(&mut stored)?;
    let mut len = r.pos;
    if stored[0] != checksum {
        return Err(ImageError::Checksum { calculated: checksum, read: stored[0] });
    }
    let mut whole = r.sha.clone();
    let mut partition_sha256 = None;
    if header.hash_appended == 1 {
        let calculated: [u8; 32] = r.sha.finalize().into();
        let mut appended = [0u8; 32];
        let needed = len + 32;
        if needed > available {
            return Err(ImageError::Truncated { needed, available });
        }
        r.src.read(len, &mut appended).map_err(|_| ImageError::Read)?;
        if appended != calculated {
            return Err(ImageError::Hash);
        }
        whole.update(appended);
        partition_sha256 = Some(appended);
        len = needed;
    }
    if desc_filled < APP_DESC_LEN {
        return Err(ImageError::AppDescMagic { found: 0 });
    }
    let desc = AppDesc::parse(&desc_bytes);
    if !desc.magic_ok() {
        return Err(ImageError::AppDescMagic { found: desc.magic });
    }
    let sha256: [u8; 32] = whole.finalize().into();
    let partition_sha256 = partition_sha256.unwrap_or(sha256);
    Ok(ImageInfo { header, desc, len, checksum, sha256, partition_sha256 })
}

/// Like [`verify`], then checks that the image fits a partition of `partition_len` bytes.
pub fn verify_in_partition<S: ImageSource>(
    src: &mut S,
    chip: ChipInfo,
    partition_len: u32,
) -> Result<ImageInfo, ImageError> {
    let info = verify(src, chip)?;
    if info.len > partition_len {
        return Err(ImageError::TooBig { image_len: info.len, partition_len });
    }
    Ok(info)
}

/// Searches the first `len` bytes of `src` for `needle` (at most 64 bytes long).
pub fn contains<S: ImageSource>(src: &mut S, len: u32, needle: &[u8]) -> Result<bool, ReadFailed> {
    debug_assert!(!needle.is_empty() && needle.len() <= 64);
    let len = len.min(src.len());
    let keep = needle.len() - 1;
    let mut window = [0u8; CHUNK + 64];
    let mut carried = 0usize;
    let mut pos = 0u32;
    while pos < len {
        let n = ((len - pos) as usize).min(CHUNK);
        src.read(pos, &mut window[carried..carried + n])?;
        let filled = carried + n;
        if window[..filled].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        carried = keep.min(filled);
        window.copy_within(filled - carried..filled, 0);
        pos += n as u32;
    }
    Ok(false)
}
