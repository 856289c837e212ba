//! Homie OTA's log lines (tag `homie`; its settings line tag `config`). Its writes share the
//! writer's `ota` lines in [`crate::log`].

use super::{Refusal, Status};
use crate::log::{Level, ModuleLine};
use crate::settings::Source;
use core::fmt;
use core::net::SocketAddr;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HomieLine<'a> {
    /// A firmware message was taken (`202`).
    Request { total: u32 },
    /// A message refused, or its update failed, and the status said so.
    Refused { why: Refusal, status: Status },
    /// The broker went away in the middle of a message: the update is dropped.
    Interrupted { written: u32, size: u32 },
    /// The session with the broker is up and the device's attributes are published.
    Ready { id: &'a str },
    /// The session with the broker ended; the next attempt comes after `retry_in_ms`.
    Lost { why: crate::proto::mqtt::client::Lost, retry_in_ms: u64 },
    /// What the path runs with (tag `config`).
    Config { broker: Option<SocketAddr>, broker_from: Source, id: &'a str, ota: bool, ota_from: Source },
}

impl ModuleLine for HomieLine<'_> {
    fn level(&self) -> Level {
        match self {
            HomieLine::Refused { status: Status::NotModified, .. } => Level::Info,
            HomieLine::Refused { .. } | HomieLine::Interrupted { .. } => Level::Error,
            HomieLine::Lost { .. } => Level::Warn,
            HomieLine::Request { .. } | HomieLine::Ready { .. } | HomieLine::Config { .. } => Level::Info,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            HomieLine::Config { .. } => "config",
            _ => "homie",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Disabled => f.write_str("OTA is disabled"),
            Refusal::NotAnMd5 => f.write_str("the topic's checksum is not 32 hex digits"),
            Refusal::Installed => f.write_str("this firmware is running already"),
            Refusal::Busy => f.write_str("another update is running"),
            Refusal::NotFirmware => f.write_str("the payload is neither an image nor base64 of one"),
            Refusal::BadBase64 => f.write_str("the payload is not valid base64"),
            Refusal::Md5Mismatch => f.write_str("the image's MD5 is not the topic's"),
            Refusal::Begin { error, cause } => {
                write!(f, "Update.begin: {error}")?;
                cause.map_or(Ok(()), |c| write!(f, " ({c})"))
            }
            Refusal::Write { error, cause } => write!(f, "Update.write: {error} ({cause})"),
            Refusal::End(cause) => write!(f, "Update.end: {cause}"),
        }
    }
}

impl fmt::Display for HomieLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HomieLine::Request { total } => write!(f, "OTA request: a firmware message of {total} bytes"),
            HomieLine::Refused { why, status } => write!(f, "OTA {status}: {why}"),
            HomieLine::Interrupted { written, size } => {
                write!(f, "OTA interrupted after {written} of {size} bytes: the broker went away")
            }
            HomieLine::Ready { id } => write!(f, "device {id} ready"),
            HomieLine::Lost { why, retry_in_ms } => {
                write!(f, "broker lost: {why}; retrying in {retry_in_ms} ms")
            }
            HomieLine::Config { broker: None, .. } => f.write_str("Homie: no broker, off"),
            HomieLine::Config { broker: Some(b), broker_from, id, ota, ota_from } => write!(
                f,
                "Homie device {id} on broker {b} ({broker_from}), OTA {} ({ota_from})",
                if *ota { "enabled" } else { "disabled" }
            ),
        }
    }
}
