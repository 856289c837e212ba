//! The device's OTA settings: the ESPHome password and protocol version, read at boot from the
//! NVS namespace `otahil` (keys `ota_password`, `ota_protocol`), falling back to the values the
//! image was built with.
//!
//! Why NVS: one firmware build then plays every scenario (the harness provisions the settings
//! into the flash before power-on, as a factory would), and a lab bench configures boards the
//! way ESP-IDF users already do, with `nvs_partition_gen.py`. An empty `ota_password` means "no
//! authentication", so a provisioned device never depends on what its build had compiled in.

use crate::esphome::ServerConfig;
use crate::log::{LogEvent, LogSink};
use crate::nvs::{self, NvsError, Value};
use crate::partition::{PartitionTable, TYPE_DATA};
use embedded_storage::nor_flash::ReadNorFlash;

pub const NAMESPACE: &str = "otahil";
pub const KEY_PASSWORD: &str = "ota_password";
pub const KEY_PROTOCOL: &str = "ota_protocol";
/// Longest password the device stores (ESPHome's are short; this bounds the buffer).
pub const MAX_PASSWORD_LEN: usize = 64;
const SUBTYPE_NVS: u8 = 0x02;

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
}

impl core::fmt::Display for Rejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Rejected::Read(e) => e.fmt(f),
            Rejected::WrongType => f.write_str("unexpected item type"),
            Rejected::ProtocolOutOfRange(v) => write!(f, "protocol {v} is not 1 or 2"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OtaSettings {
    password: [u8; MAX_PASSWORD_LEN],
    /// `None`: no authentication.
    password_len: Option<usize>,
    pub protocol: u8,
    pub password_from: Source,
    pub protocol_from: Source,
}

impl OtaSettings {
    /// The values an image was built with; `password` longer than [`MAX_PASSWORD_LEN`] is cut.
    pub const fn built_in(password: Option<&[u8]>, protocol: u8) -> Self {
        let mut buf = [0u8; MAX_PASSWORD_LEN];
        let password_len = match password {
            Some(bytes) => {
                let n = if bytes.len() < MAX_PASSWORD_LEN { bytes.len() } else { MAX_PASSWORD_LEN };
                let mut i = 0;
                while i < n {
                    buf[i] = bytes[i];
                    i += 1;
                }
                Some(n)
            }
            None => None,
        };
        OtaSettings {
            password: buf,
            password_len,
            protocol,
            password_from: Source::BuiltIn,
            protocol_from: Source::BuiltIn,
        }
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.password_len.map(|n| &self.password[..n])
    }

    pub fn server_config(&self) -> ServerConfig<'_> {
        ServerConfig { password: self.password(), version: self.protocol, sha256: true }
    }

    /// The settings after the NVS overrides, each unusable override logged and skipped.
    /// A missing nvs partition, namespace or key leaves the built-in value.
    pub fn load<F: ReadNorFlash>(
        mut self,
        flash: &mut F,
        table: &PartitionTable,
        log: &mut impl LogSink,
    ) -> Self {
        let Some(part) = table.partitions().iter().find(|p| p.ptype == TYPE_DATA && p.subtype == SUBTYPE_NVS)
        else {
            return self;
        };
        let mut buf = [0u8; MAX_PASSWORD_LEN + 1];
        match nvs::get(flash, part, NAMESPACE, KEY_PASSWORD, &mut buf) {
            Ok(None) => {}
            Ok(Some(Value::Str(p))) => {
                self.password[..p.len()].copy_from_slice(p.as_bytes());
                self.password_len = (!p.is_empty()).then_some(p.len());
                self.password_from = Source::Nvs;
            }
            Ok(Some(_)) => log.log(&LogEvent::ConfigIgnored { key: KEY_PASSWORD, why: Rejected::WrongType }),
            Err(e) => log.log(&LogEvent::ConfigIgnored { key: KEY_PASSWORD, why: Rejected::Read(e) }),
        }
        match nvs::get(flash, part, NAMESPACE, KEY_PROTOCOL, &mut buf) {
            Ok(None) => {}
            Ok(Some(Value::U8(v @ (1 | 2)))) => {
                self.protocol = v;
                self.protocol_from = Source::Nvs;
            }
            Ok(Some(Value::U8(v))) => {
                log.log(&LogEvent::ConfigIgnored { key: KEY_PROTOCOL, why: Rejected::ProtocolOutOfRange(v) })
            }
            Ok(Some(_)) => log.log(&LogEvent::ConfigIgnored { key: KEY_PROTOCOL, why: Rejected::WrongType }),
            Err(e) => log.log(&LogEvent::ConfigIgnored { key: KEY_PROTOCOL, why: Rejected::Read(e) }),
        }
        self
    }

    /// The line that says what the device will use (never the password itself).
    pub fn log_event(&self) -> LogEvent<'static> {
        LogEvent::ConfigOta {
            password: self.password_len.is_some(),
            password_from: self.password_from,
            protocol: self.protocol,
            protocol_from: self.protocol_from,
        }
    }
}

/// An NVS page holding these settings, for provisioning a flash image: `password` `None` is
/// stored as the empty string (no authentication), so the page decides both settings.
pub fn provisioning_page(
    password: Option<&str>,
    protocol: u8,
) -> Result<[u8; nvs::PAGE_SIZE], ProvisionError> {
    let password = password.unwrap_or("");
    if password.len() > MAX_PASSWORD_LEN {
        return Err(ProvisionError::PasswordTooLong { len: password.len() });
    }
    if !(1..=2).contains(&protocol) {
        return Err(ProvisionError::Protocol(protocol));
    }
    let mut page = nvs::PageBuilder::new(0);
    let ns = page.namespace(NAMESPACE).map_err(ProvisionError::Nvs)?;
    page.str(ns, KEY_PASSWORD, password).map_err(ProvisionError::Nvs)?;
    page.u8(ns, KEY_PROTOCOL, protocol).map_err(ProvisionError::Nvs)?;
    Ok(page.finish())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProvisionError {
    PasswordTooLong { len: usize },
    Protocol(u8),
    Nvs(nvs::BuildError),
}

impl core::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProvisionError::PasswordTooLong { len } => {
                write!(f, "password of {len} bytes: the device stores at most {MAX_PASSWORD_LEN}")
            }
            ProvisionError::Protocol(v) => write!(f, "protocol {v}: expected 1 or 2"),
            ProvisionError::Nvs(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::ram::RamFlash;
    use crate::testutil::esphome_4mb_table;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    fn device(page: Option<&[u8]>) -> (RamFlash, PartitionTable) {
        let table = esphome_4mb_table();
        let mut flash = RamFlash::new(4 << 20);
        if let Some(page) = page {
            let nvs = table.by_label("nvs").unwrap();
            flash.data[nvs.offset as usize..][..page.len()].copy_from_slice(page);
        }
        (flash, table)
    }

    fn load(page: Option<&[u8]>, built_in: OtaSettings) -> (OtaSettings, Vec<String>) {
        let (mut flash, table) = device(page);
        let mut lines = Vec::new();
        let s = built_in.load(&mut flash, &table, &mut |e: &LogEvent<'_>| lines.push(format!("{e}")));
        (s, lines)
    }

    #[test]
    fn nothing_provisioned_keeps_the_built_in_values() {
        let (s, lines) = load(None, OtaSettings::built_in(Some(b"baked"), 1));
        assert_eq!((s.password(), s.protocol), (Some(&b"baked"[..]), 1));
        assert_eq!((s.password_from, s.protocol_from), (Source::BuiltIn, Source::BuiltIn));
        assert!(lines.is_empty());
    }

    #[test]
    fn provisioned_values_override_the_build() {
        let page = provisioning_page(Some("hunter2"), 1).unwrap();
        let (s, _) = load(Some(&page), OtaSettings::built_in(None, 2));
        assert_eq!((s.password(), s.protocol), (Some(&b"hunter2"[..]), 1));
        assert_eq!((s.password_from, s.protocol_from), (Source::Nvs, Source::Nvs));
        assert_eq!(format!("{}", s.log_event()), "OTA password set (nvs), protocol 1 (nvs)");
        // An empty password switches authentication off even when the build has one.
        let page = provisioning_page(None, 2).unwrap();
        let (s, _) = load(Some(&page), OtaSettings::built_in(Some(b"baked"), 2));
        assert_eq!(s.password(), None);
        assert_eq!(format!("{}", s.log_event()), "OTA password none (nvs), protocol 2 (nvs)");
    }

    #[test]
    fn the_generator_made_page_configures_the_device() {
        let generated = include_bytes!("../../../fixtures/nvs/otahil-hunter2.bin");
        let (s, _) = load(Some(generated), OtaSettings::built_in(None, 2));
        assert_eq!((s.password(), s.protocol), (Some(&b"hunter2"[..]), 1));
    }

    #[test]
    fn unusable_values_are_logged_and_skipped() {
        let mut b = nvs::PageBuilder::new(0);
        let ns = b.namespace(NAMESPACE).unwrap();
        b.u8(ns, KEY_PASSWORD, 7).unwrap();
        b.u8(ns, KEY_PROTOCOL, 3).unwrap();
        let (s, lines) = load(Some(&b.finish()), OtaSettings::built_in(Some(b"baked"), 2));
        assert_eq!((s.password(), s.protocol), (Some(&b"baked"[..]), 2));
        assert_eq!(
            lines,
            [
                "ignoring nvs otahil/ota_password: unexpected item type",
                "ignoring nvs otahil/ota_protocol: protocol 3 is not 1 or 2"
            ]
        );
        let long = "p".repeat(MAX_PASSWORD_LEN + 1);
        let mut b = nvs::PageBuilder::new(0);
        let ns = b.namespace(NAMESPACE).unwrap();
        b.str(ns, KEY_PASSWORD, &long).unwrap();
        let (s, lines) = load(Some(&b.finish()), OtaSettings::built_in(None, 2));
        assert_eq!(s.password(), None);
        assert_eq!(lines, ["ignoring nvs otahil/ota_password: value of 65 bytes exceeds the 64-byte buffer"]);
        assert_eq!(
            provisioning_page(Some(&long), 2),
            Err(ProvisionError::PasswordTooLong { len: MAX_PASSWORD_LEN + 1 })
        );
        assert_eq!(provisioning_page(None, 0), Err(ProvisionError::Protocol(0)));
    }
}
