//! ESPHome native OTA's settings: NVS `ota_password` (empty = no authentication) and
//! `ota_protocol` (1 or 2), else the values the image was built with.

use super::ServerConfig;
use crate::log::{Level, LogEvent, LogSink, ModuleLine};
use crate::partition::PartitionTable;
use crate::settings::{Ignored, Password, Rejected, Source, read_u8};
use embedded_storage::nor_flash::ReadNorFlash;

pub const KEY_PASSWORD: &str = "ota_password";
pub const KEY_PROTOCOL: &str = "ota_protocol";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OtaSettings {
    pub password: Password,
    pub protocol: u8,
    pub protocol_from: Source,
}

impl OtaSettings {
    /// The values an image was built with; `password` longer than [`MAX_PASSWORD_LEN`] is cut.
    pub fn built_in(password: Option<&[u8]>, protocol: u8) -> Self {
        OtaSettings { password: Password::built_in(password), protocol, protocol_from: Source::BuiltIn }
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.password.get()
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
        let Some(part) = table.nvs() else { return self };
        self.password.load(flash, part, KEY_PASSWORD, log);
        if let Some(v) = read_u8(flash, part, KEY_PROTOCOL, log) {
            match v {
                1 | 2 => {
                    self.protocol = v;
                    self.protocol_from = Source::Nvs;
                }
                v => log.log(&LogEvent::Module(&Ignored {
                    key: KEY_PROTOCOL,
                    why: Rejected::ProtocolOutOfRange(v),
                })),
            }
        }
        self
    }

    /// The line that says what the device will use (never the password itself).
    pub fn log_line(&self) -> OtaConfigLine {
        OtaConfigLine {
            password: self.password.get().is_some(),
            password_from: self.password.from,
            protocol: self.protocol,
            protocol_from: self.protocol_from,
        }
    }
}

/// What ESPHome's OTA server runs with (tag `config`; never the password itself).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OtaConfigLine {
    pub password: bool,
    pub password_from: Source,
    pub protocol: u8,
    pub protocol_from: Source,
}

impl ModuleLine for OtaConfigLine {
    fn level(&self) -> Level {
        Level::Info
    }
    fn tag(&self) -> &'static str {
        "config"
    }
}

impl core::fmt::Display for OtaConfigLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let OtaConfigLine { password, password_from, protocol, protocol_from } = self;
        write!(
            f,
            "OTA password {} ({password_from}), protocol {protocol} ({protocol_from})",
            if *password { "set" } else { "none" }
        )
    }
}
