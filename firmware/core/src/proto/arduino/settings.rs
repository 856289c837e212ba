//! ArduinoOTA's settings.

use super::{ArduinoLine, AuthScheme};
use crate::log::{LogEvent, LogSink};
use crate::partition::PartitionTable;
use crate::settings::{Ignored, Password, Rejected, Source, read_u8};
use embedded_storage::nor_flash::ReadNorFlash;

pub const KEY_ARDUINO_PASSWORD: &str = "arduino_passwd";
/// 1: classic MD5 challenge, 2: PBKDF2-HMAC-SHA256 (arduino-esp32 3.3.1+).
pub const KEY_ARDUINO_AUTH: &str = "arduino_auth";

/// The ArduinoOTA settings: NVS `arduino_passwd` (empty = no authentication) and
/// `arduino_auth`, else the values built in. ArduinoOTA's password is its own, as in a sketch
/// that sets `ArduinoOTA.setPassword` beside ESPHome's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ArduinoSettings {
    pub password: Password,
    pub auth: AuthScheme,
    pub auth_from: Source,
}

impl ArduinoSettings {
    /// The values an image was built with; `password` longer than [`MAX_PASSWORD_LEN`] is cut.
    pub fn built_in(password: Option<&[u8]>, auth: AuthScheme) -> Self {
        ArduinoSettings { password: Password::built_in(password), auth, auth_from: Source::BuiltIn }
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.password.get()
    }

    pub fn config(&self) -> super::Config<'_> {
        super::Config { password: self.password(), auth: self.auth }
    }

    /// The settings after the NVS overrides, each unusable override logged and skipped.
    pub fn load<F: ReadNorFlash>(
        mut self,
        flash: &mut F,
        table: &PartitionTable,
        log: &mut impl LogSink,
    ) -> Self {
        let Some(part) = table.nvs() else { return self };
        self.password.load(flash, part, KEY_ARDUINO_PASSWORD, log);
        if let Some(v) = read_u8(flash, part, KEY_ARDUINO_AUTH, log) {
            match AuthScheme::from_code(v) {
                Some(auth) => {
                    self.auth = auth;
                    self.auth_from = Source::Nvs;
                }
                None => log.log(&LogEvent::Module(&Ignored {
                    key: KEY_ARDUINO_AUTH,
                    why: Rejected::AuthSchemeOutOfRange(v),
                })),
            }
        }
        self
    }

    /// The line that says what ArduinoOTA will use on `port` (never the password itself).
    pub fn log_line(&self, port: u16) -> ArduinoLine {
        ArduinoLine::Config {
            port,
            password: self.password.get().is_some(),
            password_from: self.password.from,
            auth: self.auth,
            auth_from: self.auth_from,
        }
    }
}

/// ArduinoOTA's provisioned settings; without them the build's values apply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Provision<'a> {
    /// `None` is stored as empty: no authentication, whatever the build says.
    pub password: Option<&'a str>,
    pub auth: AuthScheme,
}

impl crate::provision::PathProvision for Provision<'_> {
    fn write(
        &self,
        page: &mut crate::provision::SettingsPage,
    ) -> Result<(), crate::provision::ProvisionError> {
        let password = self.password.unwrap_or("");
        if password.len() > crate::settings::MAX_PASSWORD_LEN {
            return Err(crate::provision::ProvisionError::PasswordTooLong { len: password.len() });
        }
        page.str(KEY_ARDUINO_PASSWORD, password)?;
        page.u8(KEY_ARDUINO_AUTH, self.auth.code())
    }
}
