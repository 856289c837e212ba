//! Fixtures shared by the core's unit tests.

use crate::partition::{Partition, PartitionTable, TYPE_APP, TYPE_DATA};

/// ESPHome's 4 MB ESP-IDF layout: the spec's worked example.
pub fn esphome_4mb_table() -> PartitionTable {
    let mut t = PartitionTable::new();
    t.push(Partition::new("otadata", TYPE_DATA, 0x00, 0x9000, 0x2000, 0)).unwrap();
    t.push(Partition::new("phy_init", TYPE_DATA, 0x01, 0xB000, 0x1000, 0)).unwrap();
    t.push(Partition::new("app0", TYPE_APP, 0x10, 0x10000, 0x1C0000, 0)).unwrap();
    t.push(Partition::new("app1", TYPE_APP, 0x11, 0x1D0000, 0x1C0000, 0)).unwrap();
    t.push(Partition::new("nvs", TYPE_DATA, 0x02, 0x390000, 0x6D000, 0)).unwrap();
    t
}

/// A 4 MB RAM flash with [`esphome_4mb_table`]'s layout, `page` (if any) as the first page of
/// its nvs partition: a device provisioned with it.
pub fn provisioned_flash(page: Option<&[u8]>) -> (crate::flash::ram::RamFlash, PartitionTable) {
    let table = esphome_4mb_table();
    let mut flash = crate::flash::ram::RamFlash::new(4 << 20);
    if let Some(page) = page {
        let nvs = table.by_label("nvs").expect("the layout has an nvs partition");
        flash.data[nvs.offset as usize..][..page.len()].copy_from_slice(page);
    }
    (flash, table)
}

/// The device's own settings on a provisioning page a test adds a path's settings to.
pub const BASE_SETTINGS: crate::provision::Provision<'static> =
    crate::provision::Provision { ota_password: None, protocol: 2, wifi: None };
