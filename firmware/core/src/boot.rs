//! Booting as the ESP32-C3 does, in two separate halves:
//!
//! - [`run_bootloader`]: the ESP-IDF second-stage bootloader's slot choice
//!   (`bootloader_utility_get_selected_boot_partition` + `load_boot_image`), with
//!   `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` on or off. espflash bundles it *off*.
//! - [`boot_guard`]: what our app does first, because that bootloader does not do rollback:
//!   NEW → PENDING_VERIFY → self-test → VALID, or INVALID and reboot; PENDING_VERIFY found at
//!   boot (a reset before confirmation) → ABORTED and reboot.

use crate::flash::{FlashError, PartitionSource};
use crate::image::{ChipInfo, ImageError, ImageInfo, verify_in_partition};
use crate::log::{LogEvent, LogSink};
use crate::otadata::{OtaData, OtaEntry, OtaState};
use crate::partition::{Partition, PartitionTable, TABLE_LEN, TABLE_OFFSET, TableError};
use crate::selftest::SelfTest;
use crate::slot::SlotName;
use crate::writer::{read_otadata, state_of_slot, write_otadata_copy};
use embedded_storage::nor_flash::NorFlash;

pub use crate::slot::BootIndex;

/// Why the bootloader chose its first candidate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SelectReason {
    /// The table has no otadata partition.
    NoOtadataPartition,
    /// Both copies invalid (or no OTA slots), factory present: `Defaulting to factory image`.
    NoValidCopyFactory,
    /// Both copies invalid, no factory: `No factory image, trying OTA 0`.
    NoValidCopyOta0,
    /// The active copy's `(seq - 1) % n`.
    ActiveCopy { copy: usize, seq: u32, state: OtaState },
    /// No copy is valid (CRC), factory present.
    OtadataInvalidFactory,
    /// No copy is valid, no factory: try every partition.
    OtadataInvalidTryAll,
}

/// The bootloader's choice before any image is loaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Selection {
    pub index: BootIndex,
    pub reason: SelectReason,
    /// otadata is in its initial state (erased / bad CRC) and there is no factory: after a
    /// successful load of an OTA slot the bootloader writes copy 0.
    pub initial: bool,
}

/// Steps 1, 4, 5 and 6 of the bootloader's selection, without flash access.
pub fn select(table: &PartitionTable, otadata: Option<&OtaData>) -> Selection {
    let has_factory = table.factory().is_some();
    let Some(data) = otadata else {
        return Selection {
            index: BootIndex::Factory,
            reason: SelectReason::NoOtadataPartition,
            initial: false,
        };
    };
    let count = table.ota_count();
    let initial = !has_factory && data.both_uninitialised();
    if data.both_invalid() || count == 0 {
        return if has_factory {
            Selection { index: BootIndex::Factory, reason: SelectReason::NoValidCopyFactory, initial }
        } else {
            Selection { index: BootIndex::Ota(0), reason: SelectReason::NoValidCopyOta0, initial }
        };
    }
    match data.active() {
        Some(copy) => {
            let e = &data.entries[copy];
            let slot = ((e.seq - 1) % count as u32) as u8;
            Selection {
                index: BootIndex::Ota(slot),
                reason: SelectReason::ActiveCopy { copy, seq: e.seq, state: e.state },
                initial,
            }
        }
        None if has_factory => {
            Selection { index: BootIndex::Factory, reason: SelectReason::OtadataInvalidFactory, initial }
        }
        None => Selection { index: BootIndex::Factory, reason: SelectReason::OtadataInvalidTryAll, initial },
    }
}

/// The order in which the bootloader tries candidates: the chosen one, lower indices down to
/// factory, higher OTA indices, then the test app.
pub fn load_order(chosen: BootIndex, table: &PartitionTable) -> impl Iterator<Item = BootIndex> + '_ {
    let as_int = |i: BootIndex| match i {
        BootIndex::Factory => -1i32,
        BootIndex::Ota(n) => n as i32,
        BootIndex::Test => -2,
    };
    let start = as_int(chosen);
    let from_int = |i: i32| {
        if i < 0 { BootIndex::Factory } else { BootIndex::Ota(i as u8) }
    };
    let lower = (-1..start).rev().map(from_int);
    let higher = (start.max(-1) + 1..16).map(from_int);
    core::iter::once(chosen)
        .chain(lower)
        .chain(higher)
        .chain(core::iter::once(BootIndex::Test).filter(move |_| chosen != BootIndex::Test))
        .filter(move |i| i.partition(table).is_some())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootloaderConfig {
    /// `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`. espflash's bundled bootloader: `false`.
    pub rollback: bool,
    pub chip: ChipInfo,
    pub flash_size: u32,
}

impl BootloaderConfig {
    /// The bootloader espflash bundles for an ESP32-C3 with 4 MB of flash.
    pub const ESPFLASH_4MB: BootloaderConfig =
        BootloaderConfig { rollback: false, chip: ChipInfo::ESP32C3, flash_size: 4 << 20 };
}

/// The image the bootloader handed control to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Booted {
    pub index: BootIndex,
    pub partition: Partition,
    pub image: ImageInfo,
    pub selection: Selection,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BootError {
    /// `Failed to verify partition table`: the chip resets.
    Table(TableError),
    /// `No bootable app partitions in the partition table`: the chip resets.
    NoBootableApp,
    Flash(FlashError),
}

impl From<FlashError> for BootError {
    fn from(e: FlashError) -> Self {
        BootError::Flash(e)
    }
}

/// Reads and verifies the partition table at 0x8000.
pub fn read_table<F: NorFlash>(flash: &mut F, flash_size: u32) -> Result<PartitionTable, BootError> {
    let mut raw = [0u8; TABLE_LEN];
    crate::flash::read(flash, TABLE_OFFSET, &mut raw)?;
    PartitionTable::parse(&raw, flash_size).map_err(BootError::Table)
}

/// Verifies the image in `p` as the bootloader does before jumping to it.
pub fn verify_slot<F: NorFlash>(
    flash: &mut F,
    p: &Partition,
    chip: ChipInfo,
) -> Result<ImageInfo, ImageError> {
    verify_in_partition(&mut PartitionSource::new(flash, p), chip, p.size)
}

/// How boot code checks an image. Verification is a pure function of a slot's bytes, so a
/// caller that knows when those bytes last changed (the power-cut sweep) may answer from memory.
pub trait SlotVerifier<F> {
    /// `esp_image_verify` of the image in `p`.
    fn verify(&mut self, flash: &mut F, p: &Partition, chip: ChipInfo) -> Result<ImageInfo, ImageError>;
    /// The self-test outcome the verified image `booted` declares.
    fn self_test(&mut self, flash: &mut F, booted: &Booted) -> SelfTest;
}

/// Verifies every time, reading the flash.
pub struct DirectVerify;

impl<F: NorFlash> SlotVerifier<F> for DirectVerify {
    fn verify(&mut self, flash: &mut F, p: &Partition, chip: ChipInfo) -> Result<ImageInfo, ImageError> {
        verify_slot(flash, p, chip)
    }
    fn self_test(&mut self, flash: &mut F, booted: &Booted) -> SelfTest {
        SelfTest::declared_by(&mut PartitionSource::new(flash, &booted.partition), booted.image.len)
            .unwrap_or_default()
    }
}

/// Runs the second-stage bootloader: selection, its otadata writes, loading with fallback.
pub fn run_bootloader<F: NorFlash, L: LogSink>(
    flash: &mut F,
    config: BootloaderConfig,
    log: &mut L,
) -> Result<(PartitionTable, Booted), BootError> {
    run_bootloader_with(flash, config, &mut DirectVerify, log)
}

/// [`run_bootloader`] with a chosen [`SlotVerifier`].
pub fn run_bootloader_with<F: NorFlash, V: SlotVerifier<F>, L: LogSink>(
    flash: &mut F,
    config: BootloaderConfig,
    verifier: &mut V,
    log: &mut L,
) -> Result<(PartitionTable, Booted), BootError> {
    log.log(&LogEvent::BootStart);
    let table = match read_table(flash, config.flash_size) {
        Ok(t) => t,
        Err(e) => {
            if let BootError::Table(t) = e {
                log.log(&LogEvent::TableInvalid(t));
            }
            return Err(e);
        }
    };
    log.log(&LogEvent::TableOk { partitions: table.partitions().len() });
    let mut otadata = match table.otadata() {
        Some(od) => Some((*od, read_otadata(flash, od)?)),
        None => None,
    };
    if config.rollback
        && let Some((od, data)) = otadata.as_mut()
    {
        for copy in 0..2 {
            if data.entries[copy].state == OtaState::PendingVerify {
                data.entries[copy].state = OtaState::Aborted;
                write_otadata_copy(flash, od, copy, &data.entries[copy])?;
                log.log(&LogEvent::BootPendingToAborted { copy });
            }
        }
    }
    let selection = select(&table, otadata.as_ref().map(|(_, d)| d));
    match selection.reason {
        SelectReason::NoOtadataPartition | SelectReason::NoValidCopyFactory => {
            log.log(&LogEvent::DefaultingToFactory)
        }
        SelectReason::NoValidCopyOta0 => log.log(&LogEvent::NoFactoryTryingOta0),
        SelectReason::OtadataInvalidFactory => log.log(&LogEvent::OtadataInvalidFactory),
        SelectReason::OtadataInvalidTryAll => log.log(&LogEvent::OtadataInvalidTryAll),
        SelectReason::ActiveCopy { copy, seq, state } => {
            log.log(&LogEvent::BootSelected { copy, seq, slot: SlotName(selection.index), state });
            if config.rollback
                && state == OtaState::New
                && let Some((od, data)) = otadata.as_mut()
            {
                data.entries[copy].state = OtaState::PendingVerify;
                write_otadata_copy(flash, od, copy, &data.entries[copy])?;
                log.log(&LogEvent::BootNewToPending { copy });
            }
        }
    }
    let mut candidates = [BootIndex::Factory; 18];
    let mut n = 0;
    for index in load_order(selection.index, &table) {
        candidates[n] = index;
        n += 1;
    }
    for &index in &candidates[..n] {
        let p = *index.partition(&table).expect("load_order yields existing partitions");
        match verifier.verify(flash, &p, config.chip) {
            Ok(image) => {
                log.log(&LogEvent::Loaded { offset: p.offset });
                if let (true, BootIndex::Ota(n), Some((od, _))) = (selection.initial, index, otadata) {
                    let entry = OtaEntry::new(n as u32 + 1, OtaState::Valid);
                    write_otadata_copy(flash, &od, 0, &entry)?;
                    log.log(&LogEvent::SetActualSeq { seq: entry.seq });
                }
                return Ok((table, Booted { index, partition: p, image, selection }));
            }
            Err(reason) => log.log(&LogEvent::SlotNotBootable { slot: SlotName(index), reason }),
        }
    }
    log.log(&LogEvent::NoBootableApp);
    Err(BootError::NoBootableApp)
}

/// What the app does after its boot guard ran.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuardOutcome {
    /// The image is confirmed (or needs no confirmation): run normally.
    Run,
    /// otadata was changed to roll back: the app must reset now.
    Reboot,
    /// The self-test never finishes: the image stays PENDING_VERIFY until a reset.
    Hang,
}

/// `esp_ota_check_rollback_is_possible`: another copy is valid and its slot's image verifies,
/// or no other copy is valid but a factory app verifies.
pub fn rollback_possible<F: NorFlash, V: SlotVerifier<F>>(
    flash: &mut F,
    table: &PartitionTable,
    data: &OtaData,
    active: usize,
    chip: ChipInfo,
    verifier: &mut V,
) -> bool {
    let other = &data.entries[1 - active];
    let count = table.ota_count() as u32;
    if other.is_valid() && count > 0 {
        let slot = ((other.seq - 1) % count) as u8;
        if let Some(p) = table.ota(slot).copied() {
            return verifier.verify(flash, &p, chip).is_ok();
        }
        return false;
    }
    match table.factory().copied() {
        Some(p) => verifier.verify(flash, &p, chip).is_ok(),
        None => false,
    }
}

/// Who confirms a new image on its first boot.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Confirm {
    /// The boot-time self-test: a passing one marks the image VALID at once (Arduino cores).
    #[default]
    SelfTest,
    /// The running app, later (`esp_ota_mark_app_valid_cancel_rollback`, as a stock ESP-IDF app
    /// with the WebSocket OTA page does): a passing self-test leaves the image PENDING_VERIFY,
    /// and a reset before the app confirms it rolls back.
    App,
}

/// The NVS key (namespace [`crate::settings::NAMESPACE`]) that says who confirms: u8 0 or
/// missing the self-test, 1 the app.
pub const KEY_CONFIRM: &str = "confirm";

impl Confirm {
    /// The provisioned choice; a value other than 0 or 1 is logged as ignored (the self-test
    /// confirms).
    pub fn load<F: NorFlash>(flash: &mut F, table: &PartitionTable, log: &mut impl LogSink) -> Confirm {
        use crate::settings::{Ignored, Rejected};
        let Some(part) = table.nvs() else { return Confirm::SelfTest };
        match crate::settings::read_u8(flash, part, KEY_CONFIRM, log) {
            None | Some(0) => Confirm::SelfTest,
            Some(1) => Confirm::App,
            Some(v) => {
                log.log(&LogEvent::Module(&Ignored { key: KEY_CONFIRM, why: Rejected::NotAFlag(v) }));
                Confirm::SelfTest
            }
        }
    }
}

/// The app's boot-time rollback guard, run first thing after the bootloader jumps to `booted`.
/// `self_test` is what the image's self-test does (see [`SelfTest`]); `confirm` who marks a
/// passing image VALID.
pub fn boot_guard<F: NorFlash, L: LogSink>(
    flash: &mut F,
    table: &PartitionTable,
    booted: &Booted,
    self_test: SelfTest,
    confirm: Confirm,
    chip: ChipInfo,
    log: &mut L,
) -> Result<GuardOutcome, FlashError> {
    boot_guard_with(flash, table, booted, self_test, confirm, chip, &mut DirectVerify, log)
}

/// [`boot_guard`] with a chosen [`SlotVerifier`] (used to check that a rollback is possible).
#[allow(clippy::too_many_arguments)]
pub fn boot_guard_with<F: NorFlash, V: SlotVerifier<F>, L: LogSink>(
    flash: &mut F,
    table: &PartitionTable,
    booted: &Booted,
    self_test: SelfTest,
    confirm: Confirm,
    chip: ChipInfo,
    verifier: &mut V,
    log: &mut L,
) -> Result<GuardOutcome, FlashError> {
    let (Some(slot), Some(od)) = (booted.partition.ota_slot(), table.otadata().copied()) else {
        return Ok(GuardOutcome::Run);
    };
    let mut data = read_otadata(flash, &od)?;
    let Some(active) = data.active() else {
        return Ok(GuardOutcome::Run);
    };
    let count = table.ota_count();
    let selected = ((data.entries[active].seq - 1) % count as u32) as u8;
    let me = SlotName(BootIndex::Ota(slot));
    if selected != slot {
        log.log(&LogEvent::FallbackBoot { running: me, selected: SlotName(BootIndex::Ota(selected)) });
        return Ok(GuardOutcome::Run);
    }
    debug_assert_eq!(state_of_slot(&data, slot, count).map(|(c, _)| c), Some(active));
    match data.entries[active].state {
        OtaState::New => {
            data.entries[active].state = OtaState::PendingVerify;
            write_otadata_copy(flash, &od, active, &data.entries[active])?;
            log.log(&LogEvent::GuardFirstBoot { slot: me });
            match self_test {
                SelfTest::Pass if confirm == Confirm::App => {
                    log.log(&LogEvent::AwaitingConfirmation { slot: me });
                    Ok(GuardOutcome::Run)
                }
                SelfTest::Pass => {
                    data.entries[active].state = OtaState::Valid;
                    write_otadata_copy(flash, &od, active, &data.entries[active])?;
                    log.log(&LogEvent::SelfTestPassed { slot: me });
                    Ok(GuardOutcome::Run)
                }
                SelfTest::Fail => {
                    if !rollback_possible(flash, table, &data, active, chip, verifier) {
                        log.log(&LogEvent::RollbackImpossible);
                        return Ok(GuardOutcome::Run);
                    }
                    data.entries[active].state = OtaState::Invalid;
                    write_otadata_copy(flash, &od, active, &data.entries[active])?;
                    log.log(&LogEvent::SelfTestFailed { slot: me });
                    log.log(&LogEvent::Rebooting);
                    Ok(GuardOutcome::Reboot)
                }
                SelfTest::Hang => {
                    log.log(&LogEvent::SelfTestHung { slot: me });
                    Ok(GuardOutcome::Hang)
                }
            }
        }
        OtaState::PendingVerify => {
            // What the rollback-enabled bootloader would have done at this boot.
            data.entries[active].state = OtaState::Aborted;
            write_otadata_copy(flash, &od, active, &data.entries[active])?;
            log.log(&LogEvent::Unconfirmed { slot: me });
            log.log(&LogEvent::Rebooting);
            Ok(GuardOutcome::Reboot)
        }
        _ => Ok(GuardOutcome::Run),
    }
}

/// The running app's otadata entry, when otadata selects its slot: (its copy, the data).
fn running_entry<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
    running: &Partition,
) -> Result<Option<(Partition, OtaData, usize)>, FlashError> {
    let (Some(slot), Some(od)) = (running.ota_slot(), table.otadata().copied()) else { return Ok(None) };
    let data = read_otadata(flash, &od)?;
    Ok(state_of_slot(&data, slot, table.ota_count()).map(|(copy, _)| (od, data, copy)))
}

/// Whether the running app is PENDING_VERIFY (`esp_ota_get_state_partition`).
pub fn running_pending<F: NorFlash>(flash: &mut F, table: &PartitionTable, running: &Partition) -> bool {
    matches!(running_entry(flash, table, running), Ok(Some((_, data, copy))) if data.entries[copy].state == OtaState::PendingVerify)
}

/// `esp_ota_mark_app_valid_cancel_rollback`: a PENDING_VERIFY running app becomes VALID.
/// `Ok(true)` when it was pending; any other state is left as it is (`Ok(false)`).
pub fn mark_app_valid<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
    running: &Partition,
) -> Result<bool, FlashError> {
    let Some((od, mut data, copy)) = running_entry(flash, table, running)? else { return Ok(false) };
    if data.entries[copy].state != OtaState::PendingVerify {
        return Ok(false);
    }
    data.entries[copy].state = OtaState::Valid;
    write_otadata_copy(flash, &od, copy, &data.entries[copy])?;
    Ok(true)
}

/// Why `esp_ota_mark_app_invalid_rollback_and_reboot` refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MarkInvalidError {
    /// `ESP_ERR_OTA_ROLLBACK_FAILED` (0x1505): nothing valid to go back to, or the running app
    /// is not the one otadata selects.
    RollbackFailed,
    Flash(FlashError),
}

impl From<FlashError> for MarkInvalidError {
    fn from(e: FlashError) -> Self {
        MarkInvalidError::Flash(e)
    }
}

/// `esp_ota_mark_app_invalid_rollback_and_reboot` up to the reboot: when a rollback is
/// possible, the running app's entry becomes INVALID (whatever its state was) and the caller
/// restarts; the bootloader then picks the previous image.
pub fn mark_app_invalid<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
    running: &Partition,
    chip: ChipInfo,
) -> Result<(), MarkInvalidError> {
    let Some((od, mut data, copy)) = running_entry(flash, table, running)? else {
        return Err(MarkInvalidError::RollbackFailed);
    };
    if !rollback_possible(flash, table, &data, copy, chip, &mut DirectVerify) {
        return Err(MarkInvalidError::RollbackFailed);
    }
    data.entries[copy].state = OtaState::Invalid;
    write_otadata_copy(flash, &od, copy, &data.entries[copy])?;
    Ok(())
}

/// How a power-on ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PowerOn {
    /// The app runs: its table and the image it booted.
    Running { table: PartitionTable, booted: Booted },
    /// The app's self-test never finishes.
    Hung { table: PartitionTable, booted: Booted },
    /// The bootloader cannot start anything (the chip resets forever).
    Failed(BootError),
    /// The app rebooted this many times in a row without settling.
    BootLoop(u32),
    /// A flash operation of the boot failed (the power went again, in the emulator).
    Flash(FlashError),
}

/// A power-on as the chip does it: the bootloader, the app's identity line, its boot guard —
/// again after every reboot the guard asks for, at most `max_boots` times.
pub fn power_on<F: NorFlash, V: SlotVerifier<F>, L: LogSink>(
    flash: &mut F,
    config: BootloaderConfig,
    verifier: &mut V,
    log: &mut L,
    max_boots: u32,
) -> PowerOn {
    for _ in 0..max_boots {
        let (table, booted) = match run_bootloader_with(flash, config, verifier, log) {
            Ok(ok) => ok,
            Err(BootError::Flash(e)) => return PowerOn::Flash(e),
            Err(e) => return PowerOn::Failed(e),
        };
        let desc = booted.image.desc;
        log.log(&LogEvent::AppRunning {
            slot: SlotName(booted.index),
            label: booted.partition.label(),
            project: desc.project_name(),
            version: desc.version(),
        });
        let self_test = verifier.self_test(flash, &booted);
        let confirm = Confirm::load(flash, &table, log);
        match boot_guard_with(flash, &table, &booted, self_test, confirm, config.chip, verifier, log) {
            Err(e) => return PowerOn::Flash(e),
            Ok(GuardOutcome::Reboot) => continue,
            Ok(GuardOutcome::Hang) => return PowerOn::Hung { table, booted },
            Ok(GuardOutcome::Run) => return PowerOn::Running { table, booted },
        }
    }
    PowerOn::BootLoop(max_boots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::ram::{Op, RamFlash};
    use crate::image_builder::{ImageSpec, build};
    use crate::partition::{TYPE_APP, TYPE_DATA};
    use crate::testutil::esphome_4mb_table;
    use std::vec;
    use std::vec::Vec;

    const CHIP: ChipInfo = ChipInfo::ESP32C3;

    fn put_image(f: &mut RamFlash, at: u32, version: &str, st: SelfTest) {
        let mut spec = ImageSpec::new("otahil", version);
        spec.self_test = st;
        spec.payload_len = 2000;
        let mut v = vec![0; spec.image_len()];
        build(&spec, &mut v).unwrap();
        f.data[at as usize..at as usize + v.len()].copy_from_slice(&v);
    }

    fn device() -> RamFlash {
        let mut f = RamFlash::new(4 << 20);
        let t = esphome_4mb_table().to_bytes(true);
        f.data[0x8000..0x8000 + t.len()].copy_from_slice(&t);
        put_image(&mut f, 0x10000, "1.0.0", SelfTest::Pass);
        f
    }

    fn set_copy(f: &mut RamFlash, copy: usize, e: OtaEntry) {
        let at = 0x9000 + copy * 0x1000;
        f.data[at..at + 32].copy_from_slice(&e.to_bytes());
    }

    fn copy(f: &RamFlash, copy: usize) -> OtaEntry {
        let at = 0x9000 + copy * 0x1000;
        OtaEntry::parse(f.data[at..at + 32].try_into().unwrap())
    }

    fn boot(f: &mut RamFlash, rollback: bool) -> (Booted, Vec<std::string::String>) {
        let mut lines = Vec::new();
        let cfg = BootloaderConfig { rollback, ..BootloaderConfig::ESPFLASH_4MB };
        let (_, b) = run_bootloader(f, cfg, &mut |e: &LogEvent<'_>| lines.push(std::format!("{e}"))).unwrap();
        (b, lines)
    }

    #[test]
    fn fresh_flash_boots_ota0_and_writes_initial_seq() {
        let mut f = device();
        let (b, lines) = boot(&mut f, false);
        assert_eq!(b.index, BootIndex::Ota(0));
        assert_eq!(b.selection.reason, SelectReason::NoValidCopyOta0);
        assert!(lines.iter().any(|l| l == "Set actual ota_seq=1 in otadata[0]"));
        assert_eq!(copy(&f, 0), OtaEntry::new(1, OtaState::Valid));
        // Second boot: the active copy now selects ota_0; no more writes.
        f.ops.clear();
        let (b, _) = boot(&mut f, false);
        assert_eq!(b.selection.reason, SelectReason::ActiveCopy { copy: 0, seq: 1, state: OtaState::Valid });
        assert!(f.ops.is_empty());
    }

    #[test]
    fn highest_valid_seq_wins_and_invalid_states_are_skipped() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Pass);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::Undefined));
        assert_eq!(boot(&mut f, false).0.index, BootIndex::Ota(1));
        for skipped in [OtaState::Aborted, OtaState::Invalid] {
            set_copy(&mut f, 1, OtaEntry::new(2, skipped));
            assert_eq!(boot(&mut f, false).0.index, BootIndex::Ota(0));
        }
        // A torn copy (bad CRC) is ignored.
        let mut torn = OtaEntry::new(2, OtaState::Undefined);
        torn.crc ^= 0x10;
        set_copy(&mut f, 1, torn);
        assert_eq!(boot(&mut f, false).0.index, BootIndex::Ota(0));
        // seq 4 with 2 slots → ota_1.
        set_copy(&mut f, 1, OtaEntry::new(4, OtaState::Valid));
        assert_eq!(boot(&mut f, false).0.index, BootIndex::Ota(1));
    }

    #[test]
    fn broken_selected_image_falls_back_without_touching_otadata() {
        let mut f = device();
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::Valid));
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Pass);
        f.data[0x1D0000 + 500] ^= 0xFF;
        f.ops.clear();
        let (b, lines) = boot(&mut f, false);
        assert_eq!(b.index, BootIndex::Ota(0));
        assert!(lines.iter().any(|l| l.starts_with("ota_1 is not bootable: Checksum failed")));
        assert!(f.ops.is_empty());
    }

    #[test]
    fn rollback_enabled_bootloader_transitions() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Pass);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        f.ops.clear();
        let (b, _) = boot(&mut f, true);
        assert_eq!(b.index, BootIndex::Ota(1));
        assert_eq!(copy(&f, 1).state, OtaState::PendingVerify);
        assert_eq!(f.ops, [Op::Erase(0xA000), Op::Program(0xA000, 32)]);
        // Not confirmed: next boot aborts it and falls back to ota_0.
        let (b, lines) = boot(&mut f, true);
        assert_eq!(copy(&f, 1).state, OtaState::Aborted);
        assert_eq!(b.index, BootIndex::Ota(0));
        assert!(lines.iter().any(|l| l.contains("marked ABORTED")));
    }

    #[test]
    fn rollback_disabled_bootloader_writes_nothing_for_new_or_pending() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Pass);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::PendingVerify));
        f.ops.clear();
        assert_eq!(boot(&mut f, false).0.index, BootIndex::Ota(1));
        assert!(f.ops.is_empty());
    }

    fn guard(f: &mut RamFlash, st: SelfTest) -> (GuardOutcome, Vec<std::string::String>) {
        let (b, _) = boot(f, false);
        let t = read_table(f, 4 << 20).unwrap();
        let mut lines = Vec::new();
        let out = boot_guard(f, &t, &b, st, Confirm::SelfTest, CHIP, &mut |e: &LogEvent<'_>| {
            lines.push(std::format!("{e}"))
        })
        .unwrap();
        (out, lines)
    }

    #[test]
    fn guard_confirms_a_passing_image() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Pass);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        f.ops.clear();
        assert_eq!(guard(&mut f, SelfTest::Pass).0, GuardOutcome::Run);
        assert_eq!(copy(&f, 1).state, OtaState::Valid);
        assert_eq!(
            f.ops,
            [Op::Erase(0xA000), Op::Program(0xA000, 32), Op::Erase(0xA000), Op::Program(0xA000, 32)]
        );
        // Already VALID: nothing more.
        f.ops.clear();
        assert_eq!(guard(&mut f, SelfTest::Pass).0, GuardOutcome::Run);
        assert!(f.ops.is_empty());
    }

    #[test]
    fn guard_rolls_back_a_failing_image() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Fail);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        let (out, lines) = guard(&mut f, SelfTest::Fail);
        assert_eq!(out, GuardOutcome::Reboot);
        assert_eq!(copy(&f, 1).state, OtaState::Invalid);
        assert!(lines.iter().any(|l| l.contains("self-test failed")));
        assert_eq!(boot(&mut f, false).0.index, BootIndex::Ota(0));
    }

    #[test]
    fn guard_refuses_rollback_with_nowhere_to_go() {
        let mut f = device();
        // Only ota_1 has an image and copy 0 is erased: nothing to roll back to.
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        f.data[0x10000] = 0xFF;
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Fail);
        let (out, lines) = guard(&mut f, SelfTest::Fail);
        assert_eq!(out, GuardOutcome::Run);
        assert!(lines.iter().any(|l| l.starts_with("Rollback is not possible")));
        assert_eq!(copy(&f, 1).state, OtaState::PendingVerify);
    }

    #[test]
    fn guard_aborts_an_image_reset_before_confirmation() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Hang);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        assert_eq!(guard(&mut f, SelfTest::Hang).0, GuardOutcome::Hang);
        assert_eq!(copy(&f, 1).state, OtaState::PendingVerify);
        // Reset: the bootloader (rollback off) boots it again; the guard aborts it.
        let (out, _) = guard(&mut f, SelfTest::Hang);
        assert_eq!(out, GuardOutcome::Reboot);
        assert_eq!(copy(&f, 1).state, OtaState::Aborted);
        assert_eq!(boot(&mut f, false).0.index, BootIndex::Ota(0));
    }

    #[test]
    fn the_app_confirms_or_rolls_back_when_it_is_the_one_to_confirm() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Pass);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        let (b, _) = boot(&mut f, false);
        let t = read_table(&mut f, 4 << 20).unwrap();
        let mut lines = Vec::new();
        let mut log = |e: &LogEvent<'_>| lines.push(std::format!("{e}"));
        let out = boot_guard(&mut f, &t, &b, SelfTest::Pass, Confirm::App, CHIP, &mut log).unwrap();
        assert_eq!(out, GuardOutcome::Run);
        assert_eq!(copy(&f, 1).state, OtaState::PendingVerify);
        assert!(lines.iter().any(|l| l.ends_with("stays PENDING_VERIFY until the app confirms it")));
        assert!(running_pending(&mut f, &t, &b.partition));
        // The app confirms: VALID, and a second confirmation changes nothing.
        assert_eq!(mark_app_valid(&mut f, &t, &b.partition), Ok(true));
        assert_eq!(copy(&f, 1).state, OtaState::Valid);
        assert!(!running_pending(&mut f, &t, &b.partition));
        assert_eq!(mark_app_valid(&mut f, &t, &b.partition), Ok(false));
        // It may still be rolled back later (ESP-IDF's call takes any state): INVALID, ota_0 boots.
        assert_eq!(mark_app_invalid(&mut f, &t, &b.partition, CHIP), Ok(()));
        assert_eq!(copy(&f, 1).state, OtaState::Invalid);
        let (b0, _) = boot(&mut f, false);
        assert_eq!(b0.index, BootIndex::Ota(0));
        // ota_0 has nothing behind it: refused, otadata untouched.
        f.ops.clear();
        assert_eq!(mark_app_invalid(&mut f, &t, &b0.partition, CHIP), Err(MarkInvalidError::RollbackFailed));
        assert!(f.ops.is_empty());
    }

    #[test]
    fn a_failing_self_test_rolls_back_whoever_confirms() {
        let mut f = device();
        put_image(&mut f, 0x1D0000, "2.0.0", SelfTest::Fail);
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        let (b, _) = boot(&mut f, false);
        let t = read_table(&mut f, 4 << 20).unwrap();
        let out = boot_guard(&mut f, &t, &b, SelfTest::Fail, Confirm::App, CHIP, &mut |_: &LogEvent<'_>| {});
        assert_eq!(out, Ok(GuardOutcome::Reboot));
        assert_eq!(copy(&f, 1).state, OtaState::Invalid);
    }

    #[test]
    fn guard_leaves_a_fallback_boot_alone() {
        let mut f = device();
        set_copy(&mut f, 0, OtaEntry::new(1, OtaState::Valid));
        set_copy(&mut f, 1, OtaEntry::new(2, OtaState::New));
        // ota_1 is blank, so the bootloader falls back to ota_0 while copy 1 selects ota_1.
        f.ops.clear();
        let (out, lines) = guard(&mut f, SelfTest::Pass);
        assert_eq!(out, GuardOutcome::Run);
        assert!(lines.iter().any(|l| l.contains("bootloader fallback")));
        assert!(f.ops.is_empty());
    }

    #[test]
    fn factory_layouts_and_load_order() {
        let mut t = PartitionTable::new();
        t.push(Partition::new("otadata", TYPE_DATA, 0, 0x9000, 0x2000, 0)).unwrap();
        t.push(Partition::new("factory", TYPE_APP, 0x00, 0x10000, 0x100000, 0)).unwrap();
        t.push(Partition::new("ota_0", TYPE_APP, 0x10, 0x110000, 0x100000, 0)).unwrap();
        t.push(Partition::new("ota_1", TYPE_APP, 0x11, 0x210000, 0x100000, 0)).unwrap();
        t.push(Partition::new("test", TYPE_APP, 0x20, 0x310000, 0x10000, 0)).unwrap();
        let order: Vec<_> = load_order(BootIndex::Ota(1), &t).collect();
        assert_eq!(order, [BootIndex::Ota(1), BootIndex::Ota(0), BootIndex::Factory, BootIndex::Test]);
        let order: Vec<_> = load_order(BootIndex::Factory, &t).collect();
        assert_eq!(order, [BootIndex::Factory, BootIndex::Ota(0), BootIndex::Ota(1), BootIndex::Test]);

        let empty = OtaEntry::parse(&[0xFF; 32]);
        let blank = OtaData { entries: [empty, empty] };
        assert_eq!(select(&t, Some(&blank)).reason, SelectReason::NoValidCopyFactory);
        assert!(!select(&t, Some(&blank)).initial);
        let mut bad = OtaEntry::new(1, OtaState::Valid);
        bad.crc = 0;
        let torn = OtaData { entries: [bad, bad] };
        assert_eq!(select(&t, Some(&torn)).reason, SelectReason::OtadataInvalidFactory);
        assert_eq!(select(&t, None).reason, SelectReason::NoOtadataPartition);
        let no_factory = esphome_4mb_table();
        assert_eq!(select(&no_factory, Some(&torn)).reason, SelectReason::OtadataInvalidTryAll);
        assert!(select(&no_factory, Some(&torn)).initial);
    }

    #[test]
    fn bad_table_and_no_app() {
        let mut f = device();
        f.data[0x8000] = 0;
        let r = run_bootloader(&mut f, BootloaderConfig::ESPFLASH_4MB, &mut |_: &LogEvent<'_>| {});
        assert!(matches!(r, Err(BootError::Table(TableError::InvalidMagic { row: 0, .. }))));
        let mut f = device();
        f.data[0x10000] = 0xFF;
        let r = run_bootloader(&mut f, BootloaderConfig::ESPFLASH_4MB, &mut |_: &LogEvent<'_>| {});
        assert_eq!(r.unwrap_err(), BootError::NoBootableApp);
    }
}
