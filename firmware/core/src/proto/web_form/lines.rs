//! The upload form's log lines (tag `web`; its settings line tag `config`). Its writes share
//! the writer's `ota` lines in [`crate::log`] (progress, the boot switch).

use crate::log::{Level, ModuleLine};
use crate::proto::arduino::UpdateError;
use crate::settings::Source;
use crate::slot::SlotName;
use crate::writer::OtaError;
use core::fmt;

/// Why an upload stopped before its request was complete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AbortReason {
    /// The client closed the connection (`UPLOAD_FILE_ABORTED`).
    Disconnected,
    /// No bytes for [`super::DATA_TIMEOUT_MS`] (`HTTP_MAX_POST_WAIT`).
    Timeout,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortReason::Disconnected => "the client disconnected",
            AbortReason::Timeout => "no data for 5 s",
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WebLine<'a> {
    /// The settings the form runs with (tag `config`).
    Config { port: u16, path: &'a str, credentials: bool, from: Source },
    /// A request answered with an error status before any upload.
    Refused { status: u16, reason: &'a str },
    /// A request without the form's credentials (answered 401).
    AuthFailed { post: bool },
    /// Another path runs an update: the upload is refused.
    Busy,
    /// `Update.begin` took the upload.
    Upload { file: &'a str, slot: SlotName, declared: u32 },
    /// The upload failed in `Update` (the page says `Update error: …`).
    UploadFailed { error: UpdateError, cause: Option<OtaError> },
    /// The request ended before its body did: no answer, the update aborted.
    Aborted { received: u64, why: AbortReason },
    /// A POST whose body held no file.
    NoFile,
    /// A second file in one upload (only the first is written).
    ExtraFile,
}

impl ModuleLine for WebLine<'_> {
    fn level(&self) -> Level {
        use WebLine::*;
        match self {
            Config { .. } | Upload { .. } => Level::Info,
            Refused { .. } | AuthFailed { .. } | Busy | NoFile | ExtraFile => Level::Warn,
            UploadFailed { .. } | Aborted { .. } => Level::Error,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            WebLine::Config { .. } => "config",
            _ => "web",
        }
    }
}

impl fmt::Display for WebLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use WebLine::*;
        match self {
            Config { port, path, credentials, from } => write!(
                f,
                "web update form on TCP port {port} at {path}: credentials {} ({from})",
                if *credentials { "set" } else { "none" }
            ),
            Refused { status, reason } => write!(f, "request refused: {status} {reason}"),
            AuthFailed { post } => {
                write!(f, "{}: authentication failed (401)", if *post { "upload" } else { "page" })
            }
            Busy => f.write_str("upload refused: another update is running"),
            Upload { file, slot, declared } => {
                write!(f, "upload of `{file}` into {slot} (Update.begin {declared} bytes)")
            }
            UploadFailed { error, cause } => {
                write!(f, "Update error: {error}")?;
                cause.map_or(Ok(()), |c| write!(f, " ({c})"))
            }
            Aborted { received, why } => write!(f, "upload aborted after {received} bytes: {why}"),
            NoFile => f.write_str("upload refused: no file in the request"),
            ExtraFile => f.write_str("a second file in the upload ignored"),
        }
    }
}
