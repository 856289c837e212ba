//! Homie 1.x's log lines (tag `homie1`; its settings line tag `config`), in Homie 1.5's words.

use crate::log::{Level, ModuleLine};
use crate::nvs::StoreError;
use crate::proto::http_pull::PullError;
use core::fmt;
use core::net::SocketAddr;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Homie1Line<'a> {
    /// What the path runs with (tag `config`).
    Config { broker: Option<SocketAddr>, id: &'a str, ota: bool, url: &'a str },
    /// The session with the broker is up and `$fwname`, `$fwversion` are out.
    Ready { id: &'a str },
    /// The session with the broker ended; the next attempt comes after `retry_in_ms`.
    Lost { why: crate::proto::mqtt::client::Lost, retry_in_ms: u64 },
    /// `✴ OTA available (version v)`.
    Available { version: &'a str },
    /// `Version string received is too long`.
    TooLong,
    /// Another path is writing an update: the offer is not taken.
    Busy { version: &'a str },
    /// The OTA-mode flag could not be stored: no restart.
    FlagNotStored(StoreError),
    /// The OTA-mode flag could not be cleared: the next boot pulls again.
    FlagNotCleared(StoreError),
    /// `↻ Rebooting into OTA mode...`.
    RebootingIntoOta,
    /// This boot is in OTA mode, for `target`.
    OtaMode { target: &'a str },
    /// `✖ Update failed`.
    Failed(PullError),
    /// `✖ No updates` (304).
    NoUpdates,
    /// `✔ Success`.
    Success,
    /// `↻ Rebooting into normal mode...`.
    RebootingIntoNormal,
}

impl ModuleLine for Homie1Line<'_> {
    fn level(&self) -> Level {
        match self {
            Homie1Line::Failed(_) | Homie1Line::FlagNotStored(_) | Homie1Line::FlagNotCleared(_) => {
                Level::Error
            }
            Homie1Line::Lost { .. } | Homie1Line::TooLong | Homie1Line::Busy { .. } => Level::Warn,
            _ => Level::Info,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            Homie1Line::Config { .. } => "config",
            _ => "homie1",
        }
    }
}

impl fmt::Display for Homie1Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Homie1Line::Config { broker: None, .. } => f.write_str("Homie 1.x: no broker, off"),
            Homie1Line::Config { broker: Some(b), id, ota, url } => write!(
                f,
                "Homie 1.x device {id} on broker {b}, OTA {} from {url}",
                if *ota { "enabled" } else { "disabled" }
            ),
            Homie1Line::Ready { id } => write!(f, "device {id} ready"),
            Homie1Line::Lost { why, retry_in_ms } => {
                write!(f, "broker lost: {why}; retrying in {retry_in_ms} ms")
            }
            Homie1Line::Available { version } => write!(f, "OTA available (version {version})"),
            Homie1Line::TooLong => f.write_str("Version string received is too long"),
            Homie1Line::Busy { version } => {
                write!(f, "OTA available (version {version}), but another update is running")
            }
            Homie1Line::FlagNotStored(e) => write!(f, "cannot flag for OTA: {e}"),
            Homie1Line::FlagNotCleared(e) => write!(f, "cannot clear the OTA flag: {e}"),
            Homie1Line::RebootingIntoOta => f.write_str("Rebooting into OTA mode..."),
            Homie1Line::OtaMode { target } => write!(f, "OTA mode: updating to version {target}"),
            Homie1Line::Failed(e) => write!(f, "Update failed: {e}"),
            Homie1Line::NoUpdates => f.write_str("No updates"),
            Homie1Line::Success => f.write_str("Success"),
            Homie1Line::RebootingIntoNormal => f.write_str("Rebooting into normal mode..."),
        }
    }
}
