//! The WebSocket OTA component's log lines (tag `ws_ota`; its settings line tag `config`). Its
//! writes share the writer's `ota` lines in [`crate::log`] (progress, the boot switch), and a
//! rollback the page asks for ends with the boot guard's own `rollback: Rebooting...`.

use crate::boot::Confirm;
use crate::log::{Level, ModuleLine, TEXT_REBOOTING_INTO};
use crate::proto::web_form::lines::AbortReason;
use crate::slot::SlotName;
use crate::writer::OtaError;
use core::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WsLine<'a> {
    /// What the page runs with (tag `config`).
    Config {
        port: u16,
        confirm: Confirm,
    },
    /// An HTTP request answered with an error status.
    Refused {
        status: u16,
        reason: &'a str,
    },
    /// A page connected while the running image waits for its confirmation.
    CheckRollback {
        slot: SlotName,
    },
    /// `otaSize` opened the slot (erased whole, `esp_ota_begin(OTA_SIZE_UNKNOWN)`).
    Started {
        slot: SlotName,
        size: u32,
        chunk: u32,
    },
    /// `otaSize` of 0 or not a number (`Error ota size = 0`; the socket stays).
    SizeZero,
    /// `otaSize` larger than the slot (refused before any erase).
    TooLarge {
        size: u32,
        slot_size: u32,
    },
    /// `otaSize` while another update runs (another path, or another page).
    Busy,
    /// `esp_ota_begin` refused.
    StartFailed {
        cause: OtaError,
    },
    /// The first chunk cannot hold the image's headers (`Received package is not fit len`).
    ShortFirstChunk {
        len: u64,
    },
    /// A chunk that would run past the size `otaSize` declared.
    PastSize {
        offset: u32,
        len: u64,
        size: u32,
    },
    WriteFailed {
        cause: OtaError,
    },
    EndFailed {
        cause: OtaError,
    },
    /// The image is in and verified, the boot slot switched; the page offers the restart.
    Ended,
    /// `otaCancel` or `otaError` from the page: the update is closed.
    Cancelled {
        received: u32,
        by: &'a str,
    },
    /// The socket went away or fell silent mid-update: the update is closed.
    Aborted {
        received: u32,
        why: AbortReason,
    },
    /// A binary frame with no update open (ignored, as the original does).
    StrayChunk {
        len: u64,
    },
    /// A text message that is not the page's JSON (`Error json str`).
    BadMessage {
        why: &'a str,
    },
    UnknownCommand {
        command: &'a str,
    },
    /// A frame that breaks RFC 6455: the socket is closed (1002).
    ProtocolError {
        why: &'a str,
    },
    /// `otaProcessRollback false`: the running image is confirmed.
    Confirmed {
        slot: SlotName,
    },
    /// `otaProcessRollback false` with nothing pending: nothing changes.
    NothingToConfirm {
        slot: SlotName,
    },
    /// `otaProcessRollback true`: the running image is marked INVALID; the device restarts.
    RolledBack {
        slot: SlotName,
    },
    /// `otaProcessRollback true` with nothing to go back to (`ESP_ERR_OTA_ROLLBACK_FAILED`).
    RollbackFailed {
        slot: SlotName,
    },
    /// `otaRestartEsp`.
    Restarting,
}

impl ModuleLine for WsLine<'_> {
    fn level(&self) -> Level {
        use WsLine::*;
        match self {
            Config { .. }
            | CheckRollback { .. }
            | Started { .. }
            | Ended
            | Confirmed { .. }
            | RolledBack { .. }
            | Restarting => Level::Info,
            Refused { .. }
            | SizeZero
            | Busy
            | Cancelled { .. }
            | StrayChunk { .. }
            | BadMessage { .. }
            | UnknownCommand { .. }
            | ProtocolError { .. }
            | NothingToConfirm { .. } => Level::Warn,
            TooLarge { .. }
            | StartFailed { .. }
            | ShortFirstChunk { .. }
            | PastSize { .. }
            | WriteFailed { .. }
            | EndFailed { .. }
            | Aborted { .. }
            | RollbackFailed { .. } => Level::Error,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            WsLine::Config { .. } => "config",
            _ => "ws_ota",
        }
    }
}

impl fmt::Display for WsLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use WsLine::*;
        match self {
            Config { port, confirm } => write!(
                f,
                "WebSocket OTA on TCP port {port} at {} (socket {}): new images confirmed by {}",
                super::PAGE_PATH,
                super::SOCKET_PATH,
                match confirm {
                    Confirm::SelfTest => "the self-test",
                    Confirm::App => "the page",
                }
            ),
            Refused { status, reason } => write!(f, "request refused: {status} {reason}"),
            CheckRollback { slot } => write!(f, "{slot} is PENDING_VERIFY: otaCheckRollback sent"),
            Started { slot, size, chunk } => {
                write!(f, "otaSize {size}: {slot} erased, asking for {chunk}-byte chunks")
            }
            SizeZero => f.write_str("Error ota size = 0"),
            TooLarge { size, slot_size } => {
                write!(f, "otaSize {size} does not fit the {slot_size}-byte slot: Error start ota")
            }
            Busy => f.write_str("otaSize refused: another update is running"),
            StartFailed { cause } => write!(f, "Error start ota ({cause})"),
            ShortFirstChunk { len } => {
                write!(
                    f,
                    "Received package is not fit len: a first chunk of {len} bytes (more than 288 needed)"
                )
            }
            PastSize { offset, len, size } => {
                write!(
                    f,
                    "a {len}-byte chunk at {offset} runs past the declared {size} bytes: Error write ota"
                )
            }
            WriteFailed { cause } => write!(f, "Error write ota ({cause})"),
            EndFailed { cause } => write!(f, "Error end ota ({cause})"),
            Ended => f.write_str("OTA END OK: waiting for the page's restart"),
            Cancelled { received, by } => write!(f, "{by} after {received} bytes: update closed"),
            Aborted { received, why } => write!(f, "update aborted after {received} bytes: {why}"),
            StrayChunk { len } => write!(f, "a {len}-byte chunk without otaSize: ignored"),
            BadMessage { why } => write!(f, "Error json str: {why}"),
            UnknownCommand { command } => write!(f, "unknown command `{command}`: ignored"),
            ProtocolError { why } => write!(f, "socket closed: {why}"),
            Confirmed { slot } => write!(f, "otaProcessRollback false: {slot} marked VALID"),
            NothingToConfirm { slot } => {
                write!(f, "otaProcessRollback false: {slot} is not PENDING_VERIFY, nothing changes")
            }
            RolledBack { slot } => write!(f, "otaProcessRollback true: {slot} marked INVALID, rolling back"),
            RollbackFailed { slot } => write!(
                f,
                "otaProcessRollback true: ESP_ERR_OTA_ROLLBACK_FAILED (no image to go back to from {slot})"
            ),
            Restarting => write!(f, "{TEXT_REBOOTING_INTO}the boot partition (otaRestartEsp)"),
        }
    }
}
