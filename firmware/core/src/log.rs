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

/// One line of the device's serial log, without its timestamp.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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
    // --- the app's settings (tag `config`)
    ConfigOta {
        password: bool,
        password_from: crate::settings::Source,
        protocol: u8,
        protocol_from: crate::settings::Source,
    },
    ConfigIgnored {
        key: &'a str,
        why: crate::settings::Rejected,
    },
    // --- the board's network link (tag `net`; the emulator has none)
    WifiJoining {
        ssid: &'a str,
        from: crate::settings::Source,
    },
    WifiJoined {
        channel: u8,
    },
    WifiJoinFailed {
        reason: &'a str,
        retry_in_s: u8,
    },
    WifiNoCredentials,
    NetAddress {
        ip: [u8; 4],
        prefix: u8,
        dhcp: bool,
    },
    NetAddressLost,
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
    // --- ArduinoOTA (tag `arduino`); its updates share the `ota` lines above
    ArduinoInvitationIgnored(crate::proto::arduino::InvitationError),
    ArduinoBusy,
    ArduinoAuthUnexpected {
        got: u32,
    },
    ArduinoAuthMalformed(crate::proto::arduino::InvitationError),
    ArduinoAuthFailed,
    ArduinoBeginFailed {
        error: crate::proto::arduino::UpdateError,
        cause: Option<OtaError>,
    },
    ArduinoConnectFailed,
    ArduinoWriteFailed {
        error: crate::proto::arduino::UpdateError,
        cause: OtaError,
    },
    ArduinoReceiveFailed {
        received: u32,
        size: u32,
    },
    ArduinoUpdateFailed {
        error: crate::proto::arduino::UpdateError,
        cause: Option<OtaError>,
    },
    /// The settings ArduinoOTA runs with (tag `config`).
    ConfigArduino {
        port: u16,
        password: bool,
        password_from: crate::settings::Source,
        auth: crate::proto::arduino::AuthScheme,
        auth_from: crate::settings::Source,
    },
    // --- MQTT to the broker (tag `mqtt`)
    /// What the pull path runs with (tag `config`): `None` when no broker is configured.
    ConfigMqtt {
        broker_from: Option<crate::settings::Source>,
        command_topic: &'a str,
        state_topic: &'a str,
        /// Downloads resume after a cut ([`crate::settings::KEY_PULL_RESUME`]).
        resume: bool,
    },
    /// https pulls trust a provisioned CA (tag `config`); dates checked only with a clock.
    ConfigTls {
        dates_checked: bool,
    },
    MqttReady {
        command_topic: &'a str,
    },
    MqttLost {
        why: crate::proto::mqtt::client::Lost,
        retry_in_ms: u64,
    },
    MqttDropped {
        len: u32,
    },
    MqttCommandIgnored(crate::proto::mqtt::command::CommandError),
    MqttCommandOther(&'static str),
    // --- the HTTP(S) pull (tag `pull`); its writes share the `ota` lines above
    PullTriggered {
        truncated: bool,
        /// An `http_update`: the Arduino updater pulls.
        arduino: bool,
    },
    PullBusy,
    PullRequesting {
        path: &'a str,
        redirects: u8,
    },
    PullStatus {
        code: u16,
    },
    PullImageAccepted {
        version: &'a str,
    },
    PullStartingUnsized {
        slot: SlotName,
    },
    PullNoUpdate,
    PullFailed(crate::proto::http_pull::PullError),
    /// A download cut short goes on from its resume record (`path` of the recorded URL).
    PullResuming {
        path: &'a str,
        at: u32,
    },
    /// The server answered a `Range` request with the whole image (200) or 416.
    PullRangeIgnored {
        status: u16,
    },
    /// The server sent the rest: writing goes on at `at` (`esp_ota_resume`).
    PullResumed {
        at: u32,
        size: Option<u32>,
        slot: SlotName,
    },
    PullResumeNotSaved(crate::nvs::StoreError),
}

impl LogEvent<'_> {
    pub fn level(&self) -> Level {
        use LogEvent::*;
        match self {
            TableInvalid(_)
            | WifiNoCredentials
            | SlotNotBootable { .. }
            | NoBootableApp
            | SelfTestFailed { .. }
            | RollbackImpossible
            | OtaRejected { .. }
            | OtaMd5Mismatch
            | ArduinoBeginFailed { .. }
            | ArduinoConnectFailed
            | ArduinoWriteFailed { .. }
            | ArduinoReceiveFailed { .. }
            | ArduinoUpdateFailed { .. }
            | PullFailed(_) => Level::Error,
            BootPendingToAborted { .. }
            | ConfigIgnored { .. }
            | WifiJoinFailed { .. }
            | NetAddressLost
            | Unconfirmed { .. }
            | SelfTestHung { .. }
            | FallbackBoot { .. }
            | OtaMagicMismatch
            | OtaAuthFailed
            | OtaAuthMissing
            | OtaConnectionLost { .. }
            | OtaTimeout
            | ArduinoInvitationIgnored(_)
            | ArduinoBusy
            | ArduinoAuthUnexpected { .. }
            | ArduinoAuthMalformed(_)
            | ArduinoAuthFailed
            | MqttLost { .. }
            | MqttDropped { .. }
            | MqttCommandIgnored(_)
            | PullBusy
            | PullRangeIgnored { .. }
            | PullResumeNotSaved(_)
            | PullTriggered { truncated: true, .. } => Level::Warn,
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
            ConfigOta { .. }
            | ConfigIgnored { .. }
            | ConfigArduino { .. }
            | ConfigMqtt { .. }
            | ConfigTls { .. } => "config",
            MqttReady { .. }
            | MqttLost { .. }
            | MqttDropped { .. }
            | MqttCommandIgnored(_)
            | MqttCommandOther(_) => "mqtt",
            PullTriggered { .. }
            | PullBusy
            | PullRequesting { .. }
            | PullStatus { .. }
            | PullImageAccepted { .. }
            | PullStartingUnsized { .. }
            | PullNoUpdate
            | PullFailed(_)
            | PullResuming { .. }
            | PullRangeIgnored { .. }
            | PullResumed { .. }
            | PullResumeNotSaved(_) => "pull",
            ArduinoInvitationIgnored(_)
            | ArduinoBusy
            | ArduinoAuthUnexpected { .. }
            | ArduinoAuthMalformed(_)
            | ArduinoAuthFailed
            | ArduinoBeginFailed { .. }
            | ArduinoConnectFailed
            | ArduinoWriteFailed { .. }
            | ArduinoReceiveFailed { .. }
            | ArduinoUpdateFailed { .. } => "arduino",
            WifiJoining { .. }
            | WifiJoined { .. }
            | WifiJoinFailed { .. }
            | WifiNoCredentials
            | NetAddress { .. }
            | NetAddressLost => "net",
            GuardFirstBoot { .. }
            | SelfTestPassed { .. }
            | SelfTestFailed { .. }
            | SelfTestHung { .. }
            | Unconfirmed { .. }
            | RollbackImpossible
            | FallbackBoot { .. }
            | Rebooting => "rollback",
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
            ConfigOta { password, password_from, protocol, protocol_from } => write!(
                f,
                "OTA password {} ({password_from}), protocol {protocol} ({protocol_from})",
                if *password { "set" } else { "none" }
            ),
            ConfigIgnored { key, why } => {
                write!(f, "ignoring nvs {}/{key}: {why}", crate::settings::NAMESPACE)
            }
            WifiJoining { ssid, from } => write!(f, "joining Wi-Fi \"{ssid}\" (credentials {from})"),
            WifiJoined { channel } => write!(f, "Wi-Fi connected on channel {channel}"),
            WifiJoinFailed { reason, retry_in_s } => {
                write!(f, "Wi-Fi connection failed ({reason}), retrying in {retry_in_s} s")
            }
            WifiNoCredentials => f.write_str(
                "no Wi-Fi credentials: provision nvs otahil/wifi_ssid (and wifi_password) or build with OTAHIL_FW_WIFI_SSID",
            ),
            NetAddress { ip: [a, b, c, d], prefix, dhcp } => {
                write!(f, "address {a}.{b}.{c}.{d}/{prefix} ({})", if *dhcp { "dhcp" } else { "static" })
            }
            NetAddressLost => f.write_str("DHCP lease lost: no address until it is renewed"),
            GuardFirstBoot { slot } => {
                write!(f, "first boot of {slot}: PENDING_VERIFY, running self-test")
            }
            SelfTestPassed { slot } => write!(f, "self-test passed: {slot} marked VALID"),
            SelfTestFailed { slot } => {
                write!(f, "self-test failed: {slot} marked INVALID, rolling back")
            }
            SelfTestHung { slot } => write!(f, "self-test of {slot} {TEXT_SELF_TEST_HUNG}"),
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
            ArduinoInvitationIgnored(why) => write!(f, "invitation ignored: {why}"),
            ArduinoBusy => f.write_str("invitation ignored: an update is already running"),
            ArduinoAuthUnexpected { got } => write!(f, "200 was expected. got {got} instead"),
            ArduinoAuthMalformed(why) => write!(f, "authentication answer ignored: {why}"),
            ArduinoAuthFailed => f.write_str("Authentication Failed"),
            ArduinoBeginFailed { error, cause } => {
                write!(f, "Begin ERROR: {error}")?;
                cause.map_or(Ok(()), |c| write!(f, " ({c})"))
            }
            ArduinoConnectFailed => f.write_str("could not connect back to the uploader: update dropped"),
            ArduinoWriteFailed { error, cause } => write!(f, "Write ERROR: {error} ({cause})"),
            ArduinoReceiveFailed { received, size } => {
                write!(f, "Receive Failed after {received} of {size} bytes")
            }
            ArduinoUpdateFailed { error, cause } => {
                write!(f, "Update ERROR: {error}")?;
                cause.map_or(Ok(()), |c| write!(f, " ({c})"))
            }
            ConfigArduino { port, password, password_from, auth, auth_from } => write!(
                f,
                "ArduinoOTA on UDP port {port}: password {} ({password_from}), auth {auth} ({auth_from})",
                if *password { "set" } else { "none" }
            ),
            ConfigMqtt { broker_from: None, .. } => f.write_str("MQTT off: no broker configured"),
            ConfigMqtt { broker_from: Some(from), command_topic, state_topic, resume } => {
                write!(f, "MQTT broker set ({from}), commands on {command_topic}, status on {state_topic}")?;
                if *resume {
                    f.write_str("; downloads resume after a cut")?;
                }
                Ok(())
            }
            ConfigTls { dates_checked: true } => {
                f.write_str("https trusts the CA set (nvs); certificate dates checked (clock set)")
            }
            ConfigTls { dates_checked: false } => {
                f.write_str("https trusts the CA set (nvs); certificate dates not checked (no clock)")
            }
            MqttReady { command_topic } => write!(f, "connected, subscribed to {command_topic}"),
            MqttLost { why, retry_in_ms } => write!(f, "connection lost ({why}), retrying in {retry_in_ms} ms"),
            MqttDropped { len } => write!(f, "message of {len} bytes dropped: too long"),
            MqttCommandIgnored(why) => write!(f, "command ignored: {}", why.text()),
            MqttCommandOther(kind) => write!(f, "'{kind}' command: not handled by this firmware"),
            PullTriggered { truncated, arduino } => {
                f.write_str(if *arduino { "HTTP update trigger received (Arduino updater)" } else { "OTA trigger received" })?;
                if *truncated {
                    write!(f, ", URL cut to {} bytes", crate::proto::mqtt::command::MAX_URL)?;
                }
                Ok(())
            }
            PullBusy => f.write_str("OTA trigger ignored: an update is already running"),
            PullRequesting { path, redirects: 0 } => write!(f, "GET {path}"),
            PullRequesting { path, redirects } => write!(f, "GET {path} (redirect {redirects})"),
            PullStatus { code } => write!(f, "HTTP status {code}"),
            PullImageAccepted { version: "" } => f.write_str("image header checked"),
            PullImageAccepted { version } => write!(f, "image header checked, version {version}"),
            PullStartingUnsized { slot } => write!(f, "Starting update of unknown size into {slot}"),
            PullNoUpdate => f.write_str("no update (304)"),
            PullFailed(e) => {
                let code = e.code();
                if code >= 0 {
                    write!(f, "OTA update failed: {} ({code:#x}): {e}", e.name())
                } else {
                    write!(f, "OTA update failed: {} ({code}): {e}", e.name())
                }
            }
            PullResuming { path, at } => write!(f, "resuming {path} from byte {at}"),
            PullRangeIgnored { status: 416 } => {
                f.write_str("Range not satisfiable (416), downloading from byte 0")
            }
            PullRangeIgnored { status } => {
                write!(f, "server ignored the requested Range header (HTTP {status}), downloading from byte 0")
            }
            PullResumed { at, size: Some(size), slot } => {
                write!(f, "Resuming update of {size} bytes into {slot} at byte {at}")
            }
            PullResumed { at, size: None, slot } => {
                write!(f, "Resuming update of unknown size into {slot} at byte {at}")
            }
            PullResumeNotSaved(e) => write!(f, "resume point not saved: {e}"),
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
pub const TAGS: &[&str] = &["boot", "app", "config", "net", "rollback", "ota", "arduino", "mqtt", "pull"];

/// The app's own tags: every line with one of these comes from `ota-core`, on any backend.
pub const APP_TAGS: &[&str] = &["app", "rollback", "ota", "arduino", "mqtt", "pull"];

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
        None
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
