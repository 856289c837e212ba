//! `otahil-fwimage ELF PARTITIONS.csv APP_OUT FLASH_OUT VERSION SELFTEST`: the firmware ELF as an
//! ESP app image (espflash's IDF format, byte-identical to `espflash save-image`) and as a merged
//! 4 MiB flash image (bootloader at 0x0, partition table at 0x8000, app in its first app slot,
//! FF elsewhere, as `espflash save-image --merge`). Both are then read back with `ota-core`:
//! the app must verify as an ESP32-C3 image with the expected version and self-test outcome,
//! and the merged image's table must parse and hold that app — the firmware and the harness
//! agree on every byte or this fails.

use anyhow::{Context, bail, ensure};
use espflash::flasher::{FlashData, FlashFrequency, FlashMode, FlashSettings, FlashSize};
use espflash::image_format::idf::IdfBootloaderFormat;
use espflash::target::{Chip, XtalFrequency};
use ota_core::image::{ChipInfo, verify};
use ota_core::partition::{PartitionTable, TABLE_LEN, TABLE_OFFSET};
use ota_core::selftest::SelfTest;
use std::path::Path;

const FLASH_SIZE: usize = 4 << 20;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [elf, csv, app_out, flash_out, version, self_test] = args.as_slice() else {
        bail!("usage: otahil-fwimage ELF PARTITIONS.csv APP_OUT FLASH_OUT VERSION pass|fail|hang");
    };
    let elf_data = std::fs::read(elf).with_context(|| format!("reading {elf}"))?;
    let flash_data = FlashData::new(
        FlashSettings::new(Some(FlashMode::Dio), Some(FlashSize::_4Mb), Some(FlashFrequency::_40Mhz)),
        0,
        None,
        Chip::Esp32c3,
        XtalFrequency::_40Mhz,
    );
    let image = IdfBootloaderFormat::new(&elf_data, &flash_data, Some(Path::new(csv)), None, None, None)
        .map_err(|e| anyhow::anyhow!("espflash: {e}"))?;
    let mut merged = vec![0xFFu8; FLASH_SIZE];
    let mut app = None;
    for (i, seg) in image.flash_segments().enumerate() {
        let at = seg.addr as usize;
        ensure!(at + seg.data.len() <= FLASH_SIZE, "segment at {at:#x} does not fit 4 MiB");
        merged[at..at + seg.data.len()].copy_from_slice(&seg.data);
        if i == 2 {
            app = Some((seg.addr, seg.data.to_vec()));
        }
    }
    let (app_addr, app) = app.context("espflash produced no app segment")?;

    // Read both back with ota-core.
    let info = verify(&mut app.as_slice(), ChipInfo::ESP32C3)
        .map_err(|e| anyhow::anyhow!("ota-core rejects the app image: {e}"))?;
    ensure!(
        info.desc.version() == version,
        "app descriptor version `{}`, expected `{version}`",
        info.desc.version()
    );
    ensure!(info.desc.project_name() == "otahil-fw", "project `{}`", info.desc.project_name());
    let declared =
        SelfTest::declared_by(&mut app.as_slice(), info.len).map_err(|_| anyhow::anyhow!("read failed"))?;
    ensure!(
        declared.name() == self_test,
        "the image declares self-test `{}`, expected `{self_test}`",
        declared.name()
    );
    let table = PartitionTable::parse(
        &merged[TABLE_OFFSET as usize..TABLE_OFFSET as usize + TABLE_LEN],
        FLASH_SIZE as u32,
    )
    .map_err(|e| anyhow::anyhow!("ota-core rejects espflash's partition table: {e}"))?;
    let slot = table.app_at(app_addr).context("the app is not at the start of an app partition")?;
    ensure!(
        slot.ota_slot() == Some(0) || slot.is_factory(),
        "the app went to {} instead of the first app slot",
        slot.label()
    );

    std::fs::write(app_out, &app).with_context(|| format!("writing {app_out}"))?;
    std::fs::write(flash_out, &merged).with_context(|| format!("writing {flash_out}"))?;
    println!(
        "{app_out}: {} bytes, version {version}, self-test {self_test}, sha256 {}",
        info.len,
        info.sha256.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    Ok(())
}
