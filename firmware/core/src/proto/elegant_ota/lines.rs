//! ElegantOTA's log lines (tag `elegant`; its settings line tag `config`). Its writes share the
//! writer's `ota` lines in [`crate::log`] (progress, the boot switch).

use crate::log::{Level, ModuleLine};
use crate::proto::arduino::UpdateError;
use crate::proto::web_form::lines::AbortReason;
use crate::settings::Source;
use crate::slot::SlotName;
use crate::writer::OtaError;
use core::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ElegantLine<'a> {
    /// The settings the portal runs with (tag `config`).
    Config { port: u16, credentials: bool, from: Source },
    /// A request answered with an error status before any flash was opened.
    Refused { status: u16, reason: &'a str },
    /// A request without the portal's credentials (answered 401).
    AuthFailed { route: &'a str },
    /// `/ota/start` while another path runs an update.
    Busy,
    /// `/ota/start` opened the slot (`Update.begin` with the slot's whole size).
    Started { slot: SlotName, size: u32, md5: bool },
    /// A second `/ota/start` before any upload: the first is closed, the new one opened.
    Restarted,
    /// `/ota/start` opened the slot and no upload came.
    StartExpired { after_ms: u64 },
    /// `/ota/start` could not open the slot.
    StartFailed { error: UpdateError, cause: Option<OtaError> },
    /// `/ota/upload` without a start before it.
    NotStarted,
    /// The upload's file.
    Upload { file: &'a str },
    /// The upload failed in `Update` (answered 400 with the text).
    UploadFailed { error: UpdateError, cause: Option<OtaError> },
    /// The request ended before its body did: the update is closed.
    Aborted { received: u64, why: AbortReason },
    /// Verified and switched: the device restarts in 2 s (`ElegantOTA.loop()`).
    RebootScheduled,
}

impl ModuleLine for ElegantLine<'_> {
    fn level(&self) -> Level {
        use ElegantLine::*;
        match self {
            Config { .. } | Started { .. } | Upload { .. } | RebootScheduled => Level::Info,
            Refused { .. } | AuthFailed { .. } | Busy | Restarted | StartExpired { .. } | NotStarted => {
                Level::Warn
            }
            StartFailed { .. } | UploadFailed { .. } | Aborted { .. } => Level::Error,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            ElegantLine::Config { .. } => "config",
            _ => "elegant",
        }
    }
}

impl fmt::Display for ElegantLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ElegantLine::*;
        match self {
            Config { port, credentials, from } => write!(
                f,
                "ElegantOTA on TCP port {port} at /update: credentials {} ({from})",
                if *credentials { "set" } else { "none" }
            ),
            Refused { status, reason } => write!(f, "request refused: {status} {reason}"),
            AuthFailed { route } => write!(f, "{route}: authentication failed (401)"),
            Busy => f.write_str("start refused: another update is running"),
            Started { slot, size, md5 } => write!(
                f,
                "OTA started: {slot}, Update.begin {size} bytes, MD5 {}",
                if *md5 { "given" } else { "none" }
            ),
            Restarted => f.write_str("a new start closes the update the last one opened"),
            StartExpired { after_ms } => write!(f, "no upload {after_ms} ms after the start: update closed"),
            StartFailed { error, cause } | UploadFailed { error, cause } => {
                let what = if matches!(self, StartFailed { .. }) { "start" } else { "upload" };
                write!(f, "{what} failed: {error}")?;
                cause.map_or(Ok(()), |c| write!(f, " ({c})"))
            }
            NotStarted => f.write_str("upload refused: no /ota/start before it"),
            Upload { file } => write!(f, "upload of `{file}`"),
            Aborted { received, why } => write!(f, "upload aborted after {received} bytes: {why}"),
            RebootScheduled => f.write_str("update complete: rebooting in 2 s"),
        }
    }
}
