//! Scenarios as checked: what the runner plays (images loaded, names resolved, durations and
//! regexes parsed).

use super::services;
use super::{EraseSpec, Image, WriterFaultSpec};
use crate::client::UpdatePath;
use crate::paths;
use ota_core::partition::PartitionTable;
use ota_core::proto::arduino::AuthScheme;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub about: Option<String>,
    pub file: PathBuf,
    pub device: Device,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub firmware: Image,
    pub password: Option<String>,
    pub partitions: PartitionTable,
    pub partitions_name: String,
    pub flash_size: u32,
    pub protocol: u8,
    pub bootloader_rollback: bool,
    pub erase: EraseSpec,
    pub seed: u64,
    pub writer_fault: Option<WriterFaultSpec>,
    /// ArduinoOTA's password and scheme, when the scenario provisions them.
    pub arduino: Option<ArduinoDevice>,
    /// The sections of `device:` that belong to an update path.
    pub paths: paths::DeviceSections,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArduinoDevice {
    pub password: Option<String>,
    pub auth: AuthScheme,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub line: u64,
    pub kind: StepKind,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Boot,
    PowerOn,
    PowerOff,
    Reset,
    ExpectLog { pattern: regex::Regex, timeout: Duration, absent: bool },
    Ota(Box<OtaStep>),
    Snapshot(Vec<SnapshotKind>),
    Sweep(Box<SweepStep>),
    Serve(Box<services::ServeStep>),
    MqttPublish(services::PublishStep),
    ExpectStatus(services::ExpectStatusStep),
    ExpectRequest(services::ExpectRequestStep),
    Broker(services::BrokerAction),
}

/// Cut the power at every flash operation of an update (and tear it, with `torn`).
#[derive(Debug, Clone)]
pub struct SweepStep {
    /// The update path whose state machine writes the swept update.
    pub path: UpdatePath,
    pub image: Image,
    pub torn: bool,
    pub exact: bool,
    /// Seeded runs with several cuts each, after the sweep.
    pub random_runs: u32,
    pub max_cuts: u32,
}

impl StepKind {
    pub fn label(&self) -> String {
        match self {
            StepKind::Boot => "boot".into(),
            StepKind::PowerOn => "power_on".into(),
            StepKind::PowerOff => "power_off".into(),
            StepKind::Reset => "reset".into(),
            StepKind::ExpectLog { pattern, absent, .. } => {
                format!("expect_log{} '{}'", if *absent { " (absent)" } else { "" }, pattern.as_str())
            }
            StepKind::Ota(o) if std::ptr::eq(o.path, &paths::PATHS[0]) => {
                format!("ota {} (expect {})", o.image.name, o.expect)
            }
            StepKind::Ota(o) => format!("ota {} over {} (expect {})", o.image.name, o.path.name, o.expect),
            StepKind::Snapshot(k) => {
                format!("snapshot {}", k.iter().map(|k| k.name()).collect::<Vec<_>>().join("+"))
            }
            StepKind::Sweep(s) => format!(
                "sweep {}{}{}",
                s.image.name,
                if s.path == UpdatePath::Esphome { String::new() } else { format!(" over {}", s.path) },
                if s.torn { " (torn)" } else { "" }
            ),
            StepKind::Serve(s) => {
                format!("serve {}: {}", s.path, s.route.label(s.image.as_ref().map_or("", |i| &i.name)))
            }
            StepKind::MqttPublish(p) => format!("mqtt_publish {}", p.topic),
            StepKind::ExpectStatus(e) => format!(
                "expect_status {}{}{}",
                e.state.name(),
                e.err.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
                e.progress.map(|p| format!(" at {p}%")).unwrap_or_default()
            ),
            StepKind::ExpectRequest(r) => format!("expect_request {}", r.path),
            StepKind::Broker(a) => format!("broker {}", a.name()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Partitions,
    Log,
}

impl SnapshotKind {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::Partitions => "partitions",
            SnapshotKind::Log => "log",
        }
    }
}

/// What the OTA step must end with: `ok`, `interrupted`, `password_required`, or one of the
/// update path's own outcome names ([`paths::PathEntry::outcomes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect(pub &'static str);

impl Expect {
    pub const OK: Expect = Expect("ok");
    pub const INTERRUPTED: Expect = Expect("interrupted");
    pub const PASSWORD_REQUIRED: Expect = Expect("password_required");

    pub fn is_ok(self) -> bool {
        self == Expect::OK
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ota_core::proto::esphome::code_by_name(self.0) {
            Some(c) if c >= 0x80 => write!(f, "{} (0x{c:02X})", self.0),
            _ => f.write_str(self.0),
        }
    }
}

#[derive(Debug, Clone)]
pub enum CutPower {
    AfterBytes(u64),
    AfterOps(u64),
    /// As soon as the device prints a line matching this: the emulator cuts right after the
    /// line; QEMU and a bench with a power switch cut when the harness reads it.
    AtLog(regex::Regex),
}

#[derive(Debug, Clone)]
pub struct OtaStep {
    /// The update path that runs it.
    pub path: &'static paths::PathEntry,
    pub image: Image,
    pub expect: Expect,
    pub timeout: Duration,
    pub cut_power: Option<(CutPower, Option<u64>)>,
    pub flash_unchanged: bool,
    pub erases: Option<u64>,
    /// The path's own options, read by the path.
    pub update: paths::Update,
}
