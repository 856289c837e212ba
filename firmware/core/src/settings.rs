//! The device's settings, common to every path: the NVS namespace `otahil` they are read from
//! at boot, where a value came from, why a provisioned value was refused, and the readers that
//! log a refusal and keep the built-in value. Each update path owns its own settings (its keys,
//! its struct, its config line) in its module; [`crate::provision`] writes them all.
//!
//! Why NVS: one firmware build then plays every scenario (the harness provisions the settings
//! into the flash before power-on, as a factory would), and a lab bench configures boards the
//! way ESP-IDF users already do, with `nvs_partition_gen.py`. An empty password means "no
//! authentication", so a provisioned device never depends on what its build had compiled in.

use crate::log::{Level, LogEvent, LogSink, ModuleLine};
use crate::nvs::{self, NvsError, Value};
use crate::partition::Partition;
use embedded_storage::nor_flash::ReadNorFlash;

pub const NAMESPACE: &str = "otahil";
/// Longest password the device stores (ESPHome's are short; this bounds the buffer).
pub const MAX_PASSWORD_LEN: usize = 64;

/// Where a setting's value came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    BuiltIn,
    Nvs,
}

impl core::fmt::Display for Source {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Source::BuiltIn => "built in",
            Source::Nvs => "nvs",
        })
    }
}

/// Why an NVS value was not used (the built-in value stays).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rejected {
    Read(NvsError),
    WrongType,
    ProtocolOutOfRange(u8),
    AuthSchemeOutOfRange(u8),
    NotAnAddress,
    NotATopic {
        max_len: usize,
    },
    VersionCheckOutOfRange(u8),
    ZeroTimeout,
    NotACertificate(crate::pem::PemError),
    NotATime,
    NotAFlag(u8),
    /// A web page set other than 0 (none), 1 (the form), 2 (ElegantOTA) or 3 (WebSocket OTA).
    NotAPageSet(u8),
}

impl core::fmt::Display for Rejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Rejected::Read(e) => e.fmt(f),
            Rejected::WrongType => f.write_str("unexpected item type"),
            Rejected::ProtocolOutOfRange(v) => write!(f, "protocol {v} is not 1 or 2"),
            Rejected::AuthSchemeOutOfRange(v) => write!(f, "auth scheme {v} is not 1 (md5) or 2 (pbkdf2)"),
            Rejected::NotAnAddress => f.write_str("not ip:port"),
            Rejected::NotATopic { max_len } => {
                write!(f, "not a topic of 1 to {max_len} bytes without wildcards")
            }
            Rejected::VersionCheckOutOfRange(v) => write!(f, "version check {v} is not 0, 1 or 2"),
            Rejected::ZeroTimeout => f.write_str("a timeout of 0 s"),
            Rejected::NotACertificate(e) => write!(f, "not a PEM certificate ({e})"),
            Rejected::NotATime => f.write_str("not seconds since 1970"),
            Rejected::NotAFlag(v) => write!(f, "{v} is not 0 or 1"),
            Rejected::NotAPageSet(v) => {
                write!(
                    f,
                    "{v} is not 0 (off), 1 (the upload form), 2 (ElegantOTA) or 3 (the WebSocket OTA page)"
                )
            }
        }
    }
}

/// A password the device keeps (`None`: no authentication) and where it came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Password {
    bytes: [u8; MAX_PASSWORD_LEN],
    len: Option<usize>,
    pub from: Source,
}

impl Password {
    /// The value an image was built with; one longer than [`MAX_PASSWORD_LEN`] is cut.
    pub fn built_in(password: Option<&[u8]>) -> Self {
        let mut p = Password { bytes: [0; MAX_PASSWORD_LEN], len: None, from: Source::BuiltIn };
        if let Some(bytes) = password {
            let n = bytes.len().min(MAX_PASSWORD_LEN);
            p.bytes[..n].copy_from_slice(&bytes[..n]);
            p.len = Some(n);
        }
        p
    }

    pub fn get(&self) -> Option<&[u8]> {
        self.len.map(|n| &self.bytes[..n])
    }

    /// The string at `key` overrides it (empty: no authentication); a missing key leaves it.
    pub fn load<F: ReadNorFlash>(
        &mut self,
        flash: &mut F,
        part: &Partition,
        key: &'static str,
        log: &mut impl LogSink,
    ) {
        let mut buf = [0u8; MAX_PASSWORD_LEN + 1];
        if let Some(p) = read_str(flash, part, key, &mut buf, log) {
            self.bytes[..p.len()].copy_from_slice(p.as_bytes());
            self.len = (!p.is_empty()).then_some(p.len());
            self.from = Source::Nvs;
        }
    }
}

/// The u8 at `key`, or `None` (missing, or unusable and logged as ignored).
pub fn read_u8<F: ReadNorFlash>(
    flash: &mut F,
    part: &Partition,
    key: &'static str,
    log: &mut impl LogSink,
) -> Option<u8> {
    // Large enough for any item a provisioned page holds, so a string there reads as the
    // wrong type rather than as a too-small buffer.
    let mut buf = [0u8; MAX_PASSWORD_LEN + 1];
    match nvs::get(flash, part, NAMESPACE, key, &mut buf) {
        Ok(None) => None,
        Ok(Some(Value::U8(v))) => Some(v),
        Ok(Some(_)) => {
            log.log(&LogEvent::Module(&Ignored { key, why: Rejected::WrongType }));
            None
        }
        Err(e) => {
            log.log(&LogEvent::Module(&Ignored { key, why: Rejected::Read(e) }));
            None
        }
    }
}

/// The string at `key`, or `None` (missing, or unusable and logged as ignored).
pub fn read_str<'b, F: ReadNorFlash>(
    flash: &mut F,
    part: &crate::partition::Partition,
    key: &'static str,
    buf: &'b mut [u8],
    log: &mut impl LogSink,
) -> Option<&'b str> {
    match nvs::get(flash, part, NAMESPACE, key, buf) {
        Ok(None) => None,
        Ok(Some(Value::Str(s))) => Some(s),
        Ok(Some(_)) => {
            log.log(&LogEvent::Module(&Ignored { key, why: Rejected::WrongType }));
            None
        }
        Err(e) => {
            log.log(&LogEvent::Module(&Ignored { key, why: Rejected::Read(e) }));
            None
        }
    }
}

/// A provisioned value the device did not use (tag `config`): the built-in value stays.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ignored<'a> {
    pub key: &'a str,
    pub why: Rejected,
}

impl ModuleLine for Ignored<'_> {
    fn level(&self) -> Level {
        Level::Warn
    }
    fn tag(&self) -> &'static str {
        "config"
    }
}

impl core::fmt::Display for Ignored<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ignoring nvs {NAMESPACE}/{}: {}", self.key, self.why)
    }
}
