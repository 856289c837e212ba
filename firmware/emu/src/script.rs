//! One whole update without sockets, for the sweep: the path's own script in ota-core
//! (`UpdatePath::script`) on this device's flash, partition table and writer.

use embedded_storage::nor_flash::NorFlash;
use ota_core::partition::{Partition, PartitionTable};
use ota_core::proto::UpdatePath;
use ota_core::session::Target;
use ota_core::writer::OtaConfig;

pub use ota_core::script::ScriptError;

/// Uploads `image` over `path` to a device running from `running`. `on_received` is called
/// when the last image byte is written, before the boot switch.
pub fn upload<F: NorFlash>(
    path: UpdatePath,
    flash: &mut F,
    table: &PartitionTable,
    running: &Partition,
    image: &[u8],
    config: OtaConfig,
    on_received: &mut dyn FnMut(),
) -> Result<(), ScriptError> {
    let update = ota_core::session::UpdateSlot::default();
    path.script(flash, &Target { table, running: *running, config, update: &update }, image, on_received)
}
