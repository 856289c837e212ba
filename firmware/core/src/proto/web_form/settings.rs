//! The web server's settings: NVS `web_form` picks the page set on port 80 (1: the upload form,
//! 2: ElegantOTA, 3: the WebSocket OTA page; missing or 0: no web server, so a device
//! provisioned for other paths shows none), and `web_user` /
//! `web_password`, the Basic credentials `HTTPUpdateServer::setup(server, path, user, pass)`
//! takes — authentication only when both are non-empty, as there.

use super::lines::WebLine;
use crate::log::{LogEvent, LogSink};
use crate::partition::PartitionTable;
use crate::settings::{Ignored, MAX_PASSWORD_LEN, Rejected, Source, read_str, read_u8};
use embedded_storage::nor_flash::ReadNorFlash;

pub const KEY_WEB_FORM: &str = "web_form";
pub const KEY_WEB_USER: &str = "web_user";
pub const KEY_WEB_PASSWORD: &str = "web_password";
/// The longest user name or password kept.
pub const MAX_CREDENTIAL_LEN: usize = MAX_PASSWORD_LEN;

/// A user name and password the form asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Credentials {
    user: [u8; MAX_CREDENTIAL_LEN],
    user_len: usize,
    password: [u8; MAX_CREDENTIAL_LEN],
    password_len: usize,
}

impl Credentials {
    /// `None` unless both are non-empty and fit.
    pub fn new(user: &str, password: &str) -> Option<Self> {
        let fits = |s: &str| (1..=MAX_CREDENTIAL_LEN).contains(&s.len());
        if !fits(user) || !fits(password) {
            return None;
        }
        let mut c = Credentials {
            user: [0; MAX_CREDENTIAL_LEN],
            user_len: user.len(),
            password: [0; MAX_CREDENTIAL_LEN],
            password_len: password.len(),
        };
        c.user[..user.len()].copy_from_slice(user.as_bytes());
        c.password[..password.len()].copy_from_slice(password.as_bytes());
        Some(c)
    }

    pub fn user(&self) -> &str {
        core::str::from_utf8(&self.user[..self.user_len]).unwrap_or("")
    }

    pub fn password(&self) -> &str {
        core::str::from_utf8(&self.password[..self.password_len]).unwrap_or("")
    }

    /// Whether an `Authorization` header carries these credentials.
    pub fn accept(&self, authorization: Option<&str>) -> bool {
        crate::proto::http_server::basic_auth_matches(authorization, self.user(), self.password())
    }
}

/// Which update page set port 80 serves: the two share `/update`, so a device runs one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pages {
    /// `HTTPUpdateServer`'s form (`web_form` = 1).
    Form = 1,
    /// ElegantOTA (`web_form` = 2).
    ElegantOta = 2,
    /// The WebSocket OTA page at `/ota` (`web_form` = 3).
    WsOta = 3,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WebFormSettings {
    /// `None`: anyone may upload.
    pub credentials: Option<Credentials>,
    pub from: Source,
}

impl WebFormSettings {
    /// The settings NVS gives when it picks `pages`, else `None`. Each unusable value is logged
    /// once: by the form's service, which boots first (ElegantOTA's reads the key quietly).
    pub fn load<F: ReadNorFlash>(
        flash: &mut F,
        table: &PartitionTable,
        pages: Pages,
        log: &mut impl LogSink,
    ) -> Option<Self> {
        let part = table.nvs()?;
        let value = match pages {
            Pages::Form => read_u8(flash, part, KEY_WEB_FORM, log)?,
            Pages::ElegantOta | Pages::WsOta => {
                read_u8(flash, part, KEY_WEB_FORM, &mut |_: &LogEvent<'_>| {})?
            }
        };
        match value {
            v if v == pages as u8 => {}
            0..=3 => return None,
            v => {
                if pages == Pages::Form {
                    log.log(&LogEvent::Module(&Ignored { key: KEY_WEB_FORM, why: Rejected::NotAPageSet(v) }));
                }
                return None;
            }
        }
        let mut user_buf = [0u8; MAX_CREDENTIAL_LEN + 1];
        let mut password_buf = [0u8; MAX_CREDENTIAL_LEN + 1];
        let user = read_str(flash, part, KEY_WEB_USER, &mut user_buf, log);
        let password = read_str(flash, part, KEY_WEB_PASSWORD, &mut password_buf, log);
        let credentials = match (user, password) {
            (Some(u), Some(p)) => Credentials::new(u, p),
            _ => None,
        };
        let from = if user.is_some() || password.is_some() { Source::Nvs } else { Source::BuiltIn };
        Some(WebFormSettings { credentials, from })
    }

    /// The line that says what the form runs with (never the credentials themselves).
    pub fn log_line(&self, port: u16) -> WebLine<'static> {
        WebLine::Config {
            port,
            path: super::FORM_PATH,
            credentials: self.credentials.is_some(),
            from: self.from,
        }
    }
}

/// The web server's provisioned settings: a page set, with credentials or without.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Provision<'a> {
    pub pages: Pages,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
}

impl Default for Provision<'_> {
    fn default() -> Self {
        Provision { pages: Pages::Form, user: None, password: None }
    }
}

impl crate::provision::PathProvision for Provision<'_> {
    fn write(
        &self,
        page: &mut crate::provision::SettingsPage,
    ) -> Result<(), crate::provision::ProvisionError> {
        use crate::provision::{ProvisionError, SettingProblem};
        for (what, key, value) in [
            ("web form user", KEY_WEB_USER, self.user),
            ("web form password", KEY_WEB_PASSWORD, self.password),
        ] {
            let Some(value) = value else { continue };
            if value.len() > MAX_CREDENTIAL_LEN {
                let problem = SettingProblem::TooLong { len: value.len(), max: MAX_CREDENTIAL_LEN };
                return Err(ProvisionError::setting(what, problem));
            }
            page.str(key, value)?;
        }
        page.u8(KEY_WEB_FORM, self.pages as u8)
    }
}
