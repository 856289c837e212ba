//! Fresh flash images: a partition table at 0x8000 and an app in the first app slot, FF
//! elsewhere — the layout `espflash save-image --merge` produces (minus the bootloader binary,
//! which the emulator models in code).

use ota_core::partition::{PartitionTable, TABLE_OFFSET};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("flash size {0:#x} is not a multiple of 4 KiB between 1 MiB and 16 MiB")]
    FlashSize(u32),
    #[error("partition {label} ends at {end:#x}, past the {size:#x}-byte flash")]
    PastEnd { label: String, end: u64, size: u32 },
    #[error("the partition table has no factory or ota_0 app partition to hold the app")]
    NoAppSlot,
    #[error("the app image ({len} bytes) does not fit partition {label} ({size} bytes)")]
    AppTooBig { len: usize, label: String, size: u32 },
}

/// Builds a `flash_size`-byte image with `table` (MD5 row included) and `app` in its first app
/// slot (factory if the table has one, else ota_0). otadata stays erased, as espflash leaves it.
pub fn merged_image(table: &PartitionTable, app: &[u8], flash_size: u32) -> Result<Vec<u8>, MergeError> {
    if !flash_size.is_multiple_of(4096) || !(1 << 20..=16 << 20).contains(&flash_size) {
        return Err(MergeError::FlashSize(flash_size));
    }
    for p in table.partitions() {
        if p.end() > flash_size as u64 {
            return Err(MergeError::PastEnd { label: p.label().into(), end: p.end(), size: flash_size });
        }
    }
    let slot = table.factory().or_else(|| table.ota(0)).ok_or(MergeError::NoAppSlot)?;
    if app.len() > slot.size as usize {
        return Err(MergeError::AppTooBig { len: app.len(), label: slot.label().into(), size: slot.size });
    }
    let mut image = vec![0xFFu8; flash_size as usize];
    let t = table.to_bytes(true);
    image[TABLE_OFFSET as usize..TABLE_OFFSET as usize + t.len()].copy_from_slice(&t);
    image[slot.offset as usize..slot.offset as usize + app.len()].copy_from_slice(app);
    Ok(image)
}
