//! The device's log line catalogue: every line the firmware and the emulator print, in ESP-IDF
//! form `I (<ms>) <tag>: <text>`, defined once so that logs match on every backend.

use crate::image::ImageError;
use crate::otadata::OtaState;
use crate::partition::TableError;
use crate::writer::OtaError;
use core::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Level {
    Error,
    Warn,
    Info,
}

impl Level {
    pub fn letter(self) -> char {
        match self {
            Level::Error => 'E',
            Level::Warn => 'W',
            Level::Info => 'I',
        }
    }
}

pub use crate::slot::SlotName;

/// A log line that the module printing it defines (its level, tag and text), so that the
/// catalogue here keeps the formatter and the boot, app, rollback and writer lines and knows no
/// update path. Each tag still appears in [`TAGS`], so log filters see every line.
pub trait ModuleLine: fmt::Display {
    fn level(&self) -> Level;
    fn tag(&self) -> &'static str;
}

/// A module's line as `Debug` shows it: its tag and text. (Not each type's own `Debug`, which
/// would link every line type's debug formatting into the chip firmware through the vtables.)
impl fmt::Debug for dyn ModuleLine + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.tag(), self)
    }
}

/// One line of the device's serial log, without its timestamp.
#[derive(Clone, Copy, Debug)]
pub enum LogEvent<'a> {
    // --- second-stage bootloader (tag `boot`), ESP-IDF's own texts where it has them
    BootStart,
    TableInvalid(TableError),
    TableOk {
        partitions: usize,
    },
    DefaultingToFactory,
    NoFactoryTryingOta0,
    OtadataInvalidFactory,
    OtadataInvalidTryAll,
    BootPendingToAborted {
        copy: usize,
    },
    BootNewToPending {
        copy: usize,
    },
    BootSelected {
        copy: usize,
        seq: u32,
        slot: SlotName,
        state: OtaState,
    },
    SlotNotBootable {
        slot: SlotName,
        reason: ImageError,
    },
    NoBootableApp,
    Loaded {
        offset: u32,
    },
    SetActualSeq {
        seq: u32,
    },
    // --- the app (tag `app`)
    AppRunning {
        slot: SlotName,
        label: &'a str,
        project: &'a str,
        version: &'a str,
    },
    // --- the app's boot guard (tag `rollback`)
    GuardFirstBoot {
        slot: SlotName,
    },
    SelfTestPassed {
        slot: SlotName,
    },
    SelfTestFailed {
        slot: SlotName,
    },
    SelfTestHung {
        slot: SlotName,
    },
    /// The self-test passed and the app confirms the image later ([`crate::boot::Confirm::App`]).
    AwaitingConfirmation {
        slot: SlotName,
    },
    Unconfirmed {
        slot: SlotName,
    },
    RollbackImpossible,
    FallbackBoot {
        running: SlotName,
        selected: SlotName,
    },
    Rebooting,
    // --- the OTA server (tag `ota`)
    OtaListening {
        port: u16,
    },
    OtaClientConnected,
    OtaMagicMismatch,
    OtaAuthFailed,
    OtaAuthMissing,
    OtaStarting {
        size: u32,
        slot: SlotName,
    },
    OtaProgress {
        percent: u8,
    },
    OtaRejected {
        code: u8,
        error: OtaError,
    },
    OtaMd5Mismatch,
    OtaConnectionLost {
        received: u32,
        size: u32,
    },
    OtaTimeout,
    OtaCompressionUnsupported,
    /// The device restarts into the image it just received.
    OtaRebooting,
    OtaComplete {
        slot: SlotName,
        seq: u32,
        state: OtaState,
    },
    /// A line of a module that owns its lines (an update path, the settings, the network), so
    /// this catalogue knows no path.
    Module(&'a (dyn ModuleLine + 'a)),
}

impl LogEvent<'_> {
    pub fn level(&self) -> Level {
        use LogEvent::*;
        match self {
            TableInvalid(_)
            | SlotNotBootable { .. }
            | NoBootableApp
            | SelfTestFailed { .. }
            | RollbackImpossible
            | OtaRejected { .. }
            | OtaMd5Mismatch => Level::Error,
            BootPendingToAborted { .. }
            | Unconfirmed { .. }
            | SelfTestHung { .. }
            | FallbackBoot { .. }
            | OtaMagicMismatch
            | OtaAuthFailed
            | OtaAuthMissing
            | OtaConnectionLost { .. }
            | OtaTimeout => Level::Warn,
            Module(line) => line.level(),
            _ => Level::Info,
        }
    }

    pub fn tag(&self) -> &'static str {
        use LogEvent::*;
        match self {
            BootStart
            | TableInvalid(_)
            | TableOk { .. }
            | DefaultingToFactory
            | NoFactoryTryingOta0
            | OtadataInvalidFactory
            | OtadataInvalidTryAll
            | BootPendingToAborted { .. }
            | BootNewToPending { .. }
            | BootSelected { .. }
            | SlotNotBootable { .. }
            | NoBootableApp
            | Loaded { .. }
            | SetActualSeq { .. } => "boot",
            AppRunning { .. } => "app",
            GuardFirstBoot { .. }
            | SelfTestPassed { .. }
            | SelfTestFailed { .. }
            | SelfTestHung { .. }
            | AwaitingConfirmation { .. }
            | Unconfirmed { .. }
            | RollbackImpossible
            | FallbackBoot { .. }
            | Rebooting => "rollback",
            Module(line) => line.tag(),
            _ => "ota",
        }
    }
}

impl fmt::Display for LogEvent<'_> {
    /// The message text (without level, timestamp and tag).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LogEvent::*;
        match self {
            BootStart => f.write_str("otahil second-stage bootloader"),
            TableInvalid(e) => write!(f, "Failed to verify partition table: {e}"),
            TableOk { partitions } => {
                write!(f, "Partition table verified: {partitions} partitions")
            }
            DefaultingToFactory => f.write_str("Defaulting to factory image"),
            NoFactoryTryingOta0 => f.write_str("No factory image, trying OTA 0"),
            OtadataInvalidFactory => f.write_str("ota data partition invalid, falling back to factory"),
            OtadataInvalidTryAll => {
                f.write_str("ota data partition invalid and no factory, will try all partitions")
            }
            BootPendingToAborted { copy } => {
                write!(f, "otadata[{copy}] was PENDING_VERIFY: marked ABORTED (rollback)")
            }
            BootNewToPending { copy } => write!(f, "otadata[{copy}] NEW -> PENDING_VERIFY"),
            BootSelected { copy, seq, slot, state } => {
                write!(f, "otadata[{copy}] seq={seq} state={state} selects {slot}")
            }
            SlotNotBootable { slot, reason } => write!(f, "{slot} is not bootable: {reason}"),
            NoBootableApp => f.write_str("No bootable app partitions in the partition table"),
            Loaded { offset } => write!(f, "Loaded app from partition at offset 0x{offset:x}"),
            SetActualSeq { seq } => write!(f, "Set actual ota_seq={seq} in otadata[0]"),
            AppRunning { slot, label, project, version } => {
                write!(f, "running {slot} ({label}): {project} version {version}")
            }
            GuardFirstBoot { slot } => {
                write!(f, "first boot of {slot}: PENDING_VERIFY, running self-test")
            }
            SelfTestPassed { slot } => write!(f, "self-test passed: {slot} marked VALID"),
            SelfTestFailed { slot } => {
                write!(f, "self-test failed: {slot} marked INVALID, rolling back")
            }
            SelfTestHung { slot } => write!(f, "self-test of {slot} {TEXT_SELF_TEST_HUNG}"),
            AwaitingConfirmation { slot } => {
                write!(f, "self-test passed: {slot} stays PENDING_VERIFY until the app confirms it")
            }
            Unconfirmed { slot } => {
                write!(f, "{slot} was reset before it confirmed itself: marked ABORTED, rolling back")
            }
            RollbackImpossible => {
                f.write_str("Rollback is not possible, do not have any suitable apps in slots")
            }
            FallbackBoot { running, selected } => write!(
                f,
                "running {running} but otadata selects {selected} (bootloader fallback): otadata left as is"
            ),
            Rebooting => f.write_str(TEXT_REBOOTING),
            OtaRebooting => f.write_str(TEXT_OTA_REBOOTING),
            OtaListening { port } => write!(f, "{TEXT_LISTENING} {port}"),
            OtaClientConnected => f.write_str("client connected"),
            OtaMagicMismatch => f.write_str("Magic bytes do not match"),
            OtaAuthFailed => f.write_str("Auth failed! Passwords do not match"),
            OtaAuthMissing => f.write_str("Auth: Reading cnonce failed"),
            OtaStarting { size, slot } => write!(f, "Starting update of {size} bytes into {slot}"),
            OtaProgress { percent } => write!(f, "progress {percent}%"),
            OtaRejected { code, error } => write!(f, "update failed (0x{code:02X}): {error}"),
            OtaMd5Mismatch => f.write_str("MD5 of the received image does not match"),
            OtaConnectionLost { received, size } => {
                write!(f, "connection lost after {received} of {size} bytes")
            }
            OtaTimeout => f.write_str("timed out waiting for the client"),
            OtaCompressionUnsupported => {
                f.write_str("client offers compression: not supported, uploading uncompressed")
            }
            OtaComplete { slot, seq, state } => {
                write!(f, "update complete: boot set to {slot} (seq {seq}, {state})")
            }
            Module(line) => line.fmt(f),
        }
    }
}

/// A log line with its timestamp (milliseconds since boot), printed ESP-IDF style.
#[derive(Clone, Copy, Debug)]
pub struct LogLine<'a> {
    pub ms: u32,
    pub event: &'a LogEvent<'a>,
}

impl fmt::Display for LogLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) {}: {}", self.event.level().letter(), self.ms, self.event.tag(), self.event)
    }
}

/// Every tag the catalogue uses: a log filter keeps these lines and drops others (ROM banners).
pub const TAGS: &[&str] =
    &["boot", "app", "config", "net", "rollback", "ota", "arduino", "mqtt", "pull", "homie", "homie1"];

/// The app's own tags: every line with one of these comes from `ota-core`, on any backend.
pub const APP_TAGS: &[&str] =
    &["app", "rollback", "ota", "arduino", "mqtt", "pull", "homie", "homie1", "web", "elegant", "ws_ota"];

/// The beginnings of the bootloader lines whose text is ESP-IDF's own: the real bootloader prints
/// them too, so a log filtered to these (plus [`APP_TAGS`]) reads the same on every backend. The
/// emulator's other `boot` lines (its selection details) and the real bootloader's table dump are
/// not among them.
pub const ESP_IDF_BOOT_TEXTS: &[&str] = &[
    "Defaulting to factory image",
    "No factory image, trying OTA 0",
    "ota data partition invalid, falling back to factory",
    "ota data partition invalid and no factory, will try all partitions",
    "No bootable app partitions in the partition table",
    "Loaded app from partition at offset 0x",
    "Set actual ota_seq=",
];

const TEXT_REBOOTING: &str = "Rebooting...";
const TEXT_OTA_REBOOTING: &str = "Rebooting into the new image...";
/// How every line that announces a restart by the device itself begins, whatever its tag: the
/// adapters' after an update, and a path's that restarts for its own reason
/// ([`crate::service::PathService::reboot_announced`]).
pub const TEXT_REBOOTING_INTO: &str = "Rebooting into ";
const _: () = assert!(TEXT_OTA_REBOOTING.len() > TEXT_REBOOTING_INTO.len());
const TEXT_LISTENING: &str = "listening on port";
const TEXT_SELF_TEST_HUNG: &str = "did not finish: image stays PENDING_VERIFY";
/// What the chip firmware prints when it cannot go on (not a catalogue line: it is printed
/// before or instead of the app's logging).
pub const HALTED: &str = "otahil-fw: halted";

/// The points in a device's life that a backend waits for, recognised from the catalogue's own
/// texts (so a reworded line cannot leave a backend waiting for the old words).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Milestone {
    /// The app serves OTA (`ota: listening on port N`).
    Serving,
    /// The self-test never finishes: the app will not serve OTA until a reset.
    SelfTestHung,
    /// The firmware stopped (no table, no app, a flash failure).
    Halted,
    /// The device restarts into the image an update just wrote.
    RebootIntoUpdate,
    /// The boot guard restarts the device to roll back.
    RebootForRollback,
}

impl Milestone {
    /// The milestone `line` (a serial line, timestamp and level included) marks, if any.
    pub fn of(line: &str) -> Option<Milestone> {
        let text = |tag: &str| {
            let at = line.find(") ")? + 2;
            line[at..].strip_prefix(tag)?.strip_prefix(": ")
        };
        if line.starts_with(HALTED) {
            return Some(Milestone::Halted);
        }
        if let Some(t) = text("ota") {
            if t.starts_with(TEXT_LISTENING) {
                return Some(Milestone::Serving);
            }
            if t.starts_with(TEXT_OTA_REBOOTING) {
                return Some(Milestone::RebootIntoUpdate);
            }
        }
        if let Some(t) = text("rollback") {
            if t.ends_with(TEXT_SELF_TEST_HUNG) {
                return Some(Milestone::SelfTestHung);
            }
            if t == TEXT_REBOOTING {
                return Some(Milestone::RebootForRollback);
            }
        }
        // A path's own restart ("homie1: Rebooting into OTA mode...").
        let (_, rest) = line.split_once(") ")?;
        let (_, t) = rest.split_once(": ")?;
        t.starts_with(TEXT_REBOOTING_INTO).then_some(Milestone::RebootIntoUpdate)
    }
}

/// Where the core's log lines go (UART on the chip, stdout in the emulator).
pub trait LogSink {
    fn log(&mut self, event: &LogEvent<'_>);
}

impl<F: FnMut(&LogEvent<'_>)> LogSink for F {
    fn log(&mut self, event: &LogEvent<'_>) {
        self(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::BootIndex;
    use std::format;

    #[test]
    fn milestones_come_from_the_catalogue_lines() {
        let slot = SlotName(BootIndex::Ota(1));
        let cases = [
            (LogEvent::OtaListening { port: 3232 }, Some(Milestone::Serving)),
            (LogEvent::SelfTestHung { slot }, Some(Milestone::SelfTestHung)),
            (LogEvent::OtaRebooting, Some(Milestone::RebootIntoUpdate)),
            (LogEvent::Rebooting, Some(Milestone::RebootForRollback)),
            (LogEvent::SelfTestPassed { slot }, None),
            (LogEvent::OtaClientConnected, None),
        ];
        for (event, want) in cases {
            let line = format!("{}", LogLine { ms: 1234, event: &event });
            assert_eq!(Milestone::of(&line), want, "{line}");
        }
        assert_eq!(Milestone::of("otahil-fw: halted: no app partition at 0x10000"), Some(Milestone::Halted));
        assert_eq!(Milestone::of("I (5) app: listening on port 3232"), None, "another tag");
        assert_eq!(
            Milestone::of("I (5) homie1: Rebooting into OTA mode..."),
            Some(Milestone::RebootIntoUpdate),
            "a path's own restart"
        );
    }

    #[test]
    fn esp_idf_line_format() {
        let e = LogEvent::Loaded { offset: 0x10000 };
        assert_eq!(
            format!("{}", LogLine { ms: 42, event: &e }),
            "I (42) boot: Loaded app from partition at offset 0x10000"
        );
        let e = LogEvent::OtaAuthFailed;
        assert_eq!(
            format!("{}", LogLine { ms: 7, event: &e }),
            "W (7) ota: Auth failed! Passwords do not match"
        );
        let e = LogEvent::AppRunning {
            slot: SlotName(BootIndex::Ota(1)),
            label: "app1",
            project: "p",
            version: "2.0.0",
        };
        assert_eq!(format!("{e}"), "running ota_1 (app1): p version 2.0.0");
        let e = LogEvent::OtaRejected { code: 0x84, error: OtaError::Validate(ImageError::Hash) };
        assert_eq!(
            format!("{}", LogLine { ms: 1, event: &e }),
            "E (1) ota: update failed (0x84): New image failed verification: Image hash failed - image is corrupt"
        );
        assert!(TAGS.contains(&e.tag()));
        for e in [
            LogEvent::DefaultingToFactory,
            LogEvent::NoFactoryTryingOta0,
            LogEvent::OtadataInvalidFactory,
            LogEvent::OtadataInvalidTryAll,
            LogEvent::NoBootableApp,
            LogEvent::Loaded { offset: 0x10000 },
            LogEvent::SetActualSeq { seq: 1 },
        ] {
            let text = format!("{e}");
            assert!(ESP_IDF_BOOT_TEXTS.iter().any(|t| text.starts_with(t)), "{text}");
        }
    }
}
