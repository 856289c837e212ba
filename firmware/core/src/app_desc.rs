//! `esp_app_desc_t`: the 256-byte identity record at image offset 0x20.

pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
pub const APP_DESC_LEN: usize = 256;
/// Where the descriptor starts in an app image (header + first segment header).
pub const APP_DESC_IMAGE_OFFSET: u32 = 0x20;

/// The fields of `esp_app_desc_t` that identify a build.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AppDesc {
    pub magic: u32,
    pub secure_version: u32,
    pub version: [u8; 32],
    pub project_name: [u8; 32],
    pub time: [u8; 16],
    pub date: [u8; 16],
    pub idf_ver: [u8; 32],
    pub app_elf_sha256: [u8; 32],
    pub min_efuse_blk_rev_full: u16,
    pub max_efuse_blk_rev_full: u16,
    pub mmu_page_size: u8,
}

fn fixed<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    // Keep one NUL so C readers find the end, as ESP-IDF's strncpy of N-1 does.
    let n = text.len().min(N - 1);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// A NUL-padded C string field as `&str` (`"?"` if not UTF-8).
pub fn c_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("?")
}

impl AppDesc {
    /// A descriptor for `project` at `version`, built against `idf_ver`.
    pub fn new(project: &str, version: &str, idf_ver: &str) -> Self {
        AppDesc {
            magic: APP_DESC_MAGIC,
            secure_version: 0,
            version: fixed(version),
            project_name: fixed(project),
            time: [0; 16],
            date: [0; 16],
            idf_ver: fixed(idf_ver),
            app_elf_sha256: [0; 32],
            min_efuse_blk_rev_full: 0,
            max_efuse_blk_rev_full: 0,
            mmu_page_size: 0,
        }
    }

    pub fn version(&self) -> &str {
        c_str(&self.version)
    }

    pub fn project_name(&self) -> &str {
        c_str(&self.project_name)
    }

    pub fn idf_ver(&self) -> &str {
        c_str(&self.idf_ver)
    }

    pub fn magic_ok(&self) -> bool {
        self.magic == APP_DESC_MAGIC
    }

    pub fn parse(b: &[u8; APP_DESC_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let arr = |start: usize| {
            let mut out = [0u8; 32];
            out.copy_from_slice(&b[start..start + 32]);
            out
        };
        let arr16 = |start: usize| {
            let mut out = [0u8; 16];
            out.copy_from_slice(&b[start..start + 16]);
            out
        };
        AppDesc {
            magic: u32_at(0),
            secure_version: u32_at(4),
            version: arr(16),
            project_name: arr(48),
            time: arr16(80),
            date: arr16(96),
            idf_ver: arr(112),
            app_elf_sha256: arr(144),
            min_efuse_blk_rev_full: u16_at(176),
            max_efuse_blk_rev_full: u16_at(178),
            mmu_page_size: b[180],
        }
    }

    pub fn to_bytes(&self) -> [u8; APP_DESC_LEN] {
        let mut b = [0u8; APP_DESC_LEN];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.secure_version.to_le_bytes());
        b[16..48].copy_from_slice(&self.version);
        b[48..80].copy_from_slice(&self.project_name);
        b[80..96].copy_from_slice(&self.time);
        b[96..112].copy_from_slice(&self.date);
        b[112..144].copy_from_slice(&self.idf_ver);
        b[144..176].copy_from_slice(&self.app_elf_sha256);
        b[176..178].copy_from_slice(&self.min_efuse_blk_rev_full.to_le_bytes());
        b[178..180].copy_from_slice(&self.max_efuse_blk_rev_full.to_le_bytes());
        b[180] = self.mmu_page_size;
        b
    }
}

/// The app descriptor of the image that starts with `image`: `None` when the bytes stop
/// before its end or its magic is wrong.
pub fn of_image(image: &[u8]) -> Option<AppDesc> {
    let at = APP_DESC_IMAGE_OFFSET as usize;
    let desc = AppDesc::parse(image.get(at..at + APP_DESC_LEN)?.try_into().ok()?);
    desc.magic_ok().then_some(desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_offsets() {
        let mut d = AppDesc::new("demo", "1.2.3", "v5.5.5");
        d.secure_version = 7;
        d.min_efuse_blk_rev_full = 101;
        d.mmu_page_size = 16;
        let b = d.to_bytes();
        assert_eq!(&b[0..4], &[0x32, 0x54, 0xcd, 0xab]);
        assert_eq!(&b[16..22], b"1.2.3\0");
        assert_eq!(&b[48..53], b"demo\0");
        assert_eq!(&b[112..118], b"v5.5.5");
        let back = AppDesc::parse(&b);
        assert_eq!(back, d);
        assert_eq!((back.version(), back.project_name(), back.idf_ver()), ("1.2.3", "demo", "v5.5.5"));
        let long = AppDesc::new("p", "0123456789012345678901234567890123456789", "");
        assert_eq!(long.version().len(), 31);
    }

    #[test]
    fn an_images_descriptor_is_read_where_esp_idf_puts_it() {
        let mut image = std::vec![0xE9u8; APP_DESC_IMAGE_OFFSET as usize];
        image.extend_from_slice(&AppDesc::new("demo", "2.0.0", "v5.5").to_bytes());
        assert_eq!(of_image(&image).map(|d| d.version() == "2.0.0"), Some(true));
        assert_eq!(of_image(&image[..image.len() - 1]), None, "cut short");
        image[APP_DESC_IMAGE_OFFSET as usize] ^= 1;
        assert_eq!(of_image(&image), None, "no magic");
    }
}
