//! Fresh flash images: a partition table at 0x8000 and an app in the first app slot, FF
//! elsewhere — the layout `espflash save-image --merge` produces (minus the bootloader binary,
//! which the emulator models in code) — and the device's OTA settings provisioned into its nvs
//! partition, as a factory would with `nvs_partition_gen.py`.

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProvisionError {
    #[error("the partition table has no nvs partition to hold the device's settings")]
    NoNvsPartition,
    #[error("the flash image ({len} bytes) does not hold the nvs partition (ends at {end:#x})")]
    ImageTooSmall { len: usize, end: u64 },
    #[error("{0}")]
    Settings(ota_core::provision::ProvisionError),
}

/// Writes `settings` (OTA password `None`: no authentication) and `paths`' settings as the
/// first page of `table`'s nvs partition in `image`, erasing the rest of the partition: a
/// device booted from it uses these settings whatever its firmware has built in
/// (`ota_core::settings`).
pub fn provision_settings(
    image: &mut [u8],
    table: &PartitionTable,
    settings: &ota_core::provision::Provision<'_>,
    paths: &[&dyn ota_core::provision::PathProvision],
) -> Result<(), ProvisionError> {
    let page = ota_core::provision::provisioning_page(settings, paths).map_err(ProvisionError::Settings)?;
    write_page(image, table, &page)
}

/// Writes a provisioning `page` as the first page of `table`'s nvs partition in `image`,
/// erasing the rest of the partition.
pub fn write_page(
    image: &mut [u8],
    table: &PartitionTable,
    page: &[u8; ota_core::nvs::PAGE_SIZE],
) -> Result<(), ProvisionError> {
    let nvs = table.nvs().ok_or(ProvisionError::NoNvsPartition)?;
    if nvs.end() > image.len() as u64 {
        return Err(ProvisionError::ImageTooSmall { len: image.len(), end: nvs.end() });
    }
    let region = &mut image[nvs.offset as usize..nvs.end() as usize];
    region.fill(0xFF);
    region[..page.len()].copy_from_slice(page);
    Ok(())
}

/// Builds a `flash_size`-byte image with `table` (MD5 row included) and `app` in its first app
/// slot (factory if the table has one, else ota_0). otadata stays erased, as espflash leaves it.
pub fn merged_image(table: &PartitionTable, app: &[u8], flash_size: u32) -> Result<Vec<u8>, MergeError> {
    let slot = check_layout(table, app.len(), flash_size)?;
    let mut image = vec![0xFFu8; flash_size as usize];
    let t = table.to_bytes(true);
    image[TABLE_OFFSET as usize..TABLE_OFFSET as usize + t.len()].copy_from_slice(&t);
    image[slot.offset as usize..slot.offset as usize + app.len()].copy_from_slice(app);
    Ok(image)
}

/// Whether an app of `app_len` bytes and `table` make a flash of `flash_size` bytes: the app
/// slot it goes into, or why not (what [`merged_image`] would refuse, without building it).
pub fn check_layout(
    table: &PartitionTable,
    app_len: usize,
    flash_size: u32,
) -> Result<ota_core::partition::Partition, MergeError> {
    if !flash_size.is_multiple_of(4096) || !(1 << 20..=16 << 20).contains(&flash_size) {
        return Err(MergeError::FlashSize(flash_size));
    }
    for p in table.partitions() {
        if p.end() > flash_size as u64 {
            return Err(MergeError::PastEnd { label: p.label().into(), end: p.end(), size: flash_size });
        }
    }
    let slot = *table.factory().or_else(|| table.ota(0)).ok_or(MergeError::NoAppSlot)?;
    if app_len > slot.size as usize {
        return Err(MergeError::AppTooBig { len: app_len, label: slot.label().into(), size: slot.size });
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::partition_csv::parse_csv;
    use ota_core::provision::Provision;

    const APP: &[u8] = &[0xE9; 64];

    #[test]
    fn provisioning_writes_one_page_and_erases_the_rest_of_nvs() {
        let table = parse_csv("nvs, data, nvs, 0x9000, 0x5000\napp0, app, ota_0, 0x10000, 1M\n").unwrap();
        let mut image = merged_image(&table, APP, 4 << 20).unwrap();
        image[0xA000] = 0x00; // stale bytes in the partition's second page
        let settings = Provision { ota_password: Some("pw"), protocol: 2, wifi: None };
        provision_settings(&mut image, &table, &settings, &[]).unwrap();
        let page = ota_core::provision::provisioning_page(&settings, &[]).unwrap();
        assert_eq!(&image[0x9000..0xA000], &page[..]);
        assert!(image[0xA000..0xE000].iter().all(|&b| b == 0xFF));
        assert_eq!(&image[0x10000..0x10040], APP, "nothing outside nvs moves");
    }

    #[test]
    fn provisioning_errors_are_named() {
        let table = parse_csv("app0, app, factory, 0x10000, 1M\n").unwrap();
        let mut image = merged_image(&table, APP, 4 << 20).unwrap();
        assert_eq!(
            provision_settings(&mut image, &table, &Provision { protocol: 2, ..Provision::default() }, &[]),
            Err(ProvisionError::NoNvsPartition)
        );
        let table = parse_csv("nvs, data, nvs, 0x9000, 0x5000\napp0, app, factory, 0x10000, 1M\n").unwrap();
        let mut image = merged_image(&table, APP, 4 << 20).unwrap();
        let long = "x".repeat(65);
        let e = provision_settings(
            &mut image,
            &table,
            &Provision { ota_password: Some(&long), protocol: 2, wifi: None },
            &[],
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "password of 65 bytes: the device stores at most 64");
        let e = provision_settings(
            &mut image[..0xA000],
            &table,
            &Provision { protocol: 2, ..Provision::default() },
            &[],
        )
        .unwrap_err();
        assert_eq!(e, ProvisionError::ImageTooSmall { len: 0xA000, end: 0xE000 });
    }
}
