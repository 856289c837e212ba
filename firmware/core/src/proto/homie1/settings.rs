//! Homie 1.x's settings: NVS `homie1_broker` (`ip:port`; none: the path is off), `homie1_url`
//! (the OTA server, `http://host[:port]/path`; default Homie's: the broker's host, port 80,
//! `/ota`), the id and OTA switch shared with Homie 3 (`homie_id`, `homie_ota`), and
//! `homie1_flag`, the OTA-mode flag: the target version, written when an offer is taken and
//! cleared after the pull (Homie's `/homie/ota` file).

use super::{MAX_VERSION_LEN, Version};
use crate::log::{LogEvent, LogSink};
use crate::partition::PartitionTable;
use crate::proto::homie::settings::{DeviceId, HomieSettings};
use crate::proto::mqtt_pull::settings::read_broker;
use crate::settings::{Ignored, Rejected, read_str};
use crate::url::{Scheme, Url};
use core::net::SocketAddr;
use embedded_storage::nor_flash::ReadNorFlash;

pub const KEY_HOMIE1_BROKER: &str = "homie1_broker";
pub const KEY_HOMIE1_URL: &str = "homie1_url";
pub const KEY_HOMIE1_FLAG: &str = "homie1_flag";
/// The longest OTA server URL kept.
pub const MAX_URL_LEN: usize = 120;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Homie1Settings {
    pub broker: Option<SocketAddr>,
    pub id: DeviceId,
    pub ota_enabled: bool,
    url: [u8; MAX_URL_LEN],
    url_len: usize,
    /// The OTA-mode flag found at boot.
    pub flag: Option<Version>,
}

impl Homie1Settings {
    /// The settings NVS gives (each unusable value logged and skipped).
    pub fn load<F: ReadNorFlash>(
        flash: &mut F,
        table: &PartitionTable,
        mac: [u8; 6],
        log: &mut impl LogSink,
    ) -> Self {
        // Homie 3's path reads and logs the shared keys at its own boot.
        let shared = HomieSettings::new(mac).load(flash, table, &mut Quiet);
        let mut s = Homie1Settings {
            broker: None,
            id: shared.id,
            ota_enabled: shared.ota_enabled,
            url: [0; MAX_URL_LEN],
            url_len: 0,
            flag: None,
        };
        let Some(part) = table.nvs() else { return s };
        s.broker = read_broker(flash, part, KEY_HOMIE1_BROKER, log).flatten();
        let mut buf = [0u8; MAX_URL_LEN + 1];
        match read_str(flash, part, KEY_HOMIE1_URL, &mut buf, log) {
            Some(url)
                if url.len() <= MAX_URL_LEN && Url::parse(url).is_ok_and(|u| u.scheme == Scheme::Http) =>
            {
                s.url[..url.len()].copy_from_slice(url.as_bytes());
                s.url_len = url.len();
            }
            Some(_) => {
                log.log(&LogEvent::Module(&Ignored { key: KEY_HOMIE1_URL, why: Rejected::NotAnAddress }))
            }
            None => {}
        }
        if s.url_len == 0
            && let Some(broker) = s.broker
        {
            s.set_default_url(broker);
        }
        let mut buf = [0u8; MAX_VERSION_LEN + 1];
        s.flag = read_str(flash, part, KEY_HOMIE1_FLAG, &mut buf, log).and_then(Version::new);
        s
    }

    /// Homie's default: the broker's host, port 80, `/ota`.
    fn set_default_url(&mut self, broker: SocketAddr) {
        struct W<'b>(&'b mut [u8], usize);
        impl core::fmt::Write for W<'_> {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                let end = self.1 + s.len();
                if end > self.0.len() {
                    return Err(core::fmt::Error);
                }
                self.0[self.1..end].copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut w = W(&mut self.url, 0);
        let written = match broker.ip() {
            core::net::IpAddr::V4(ip) => core::fmt::write(&mut w, format_args!("http://{ip}/ota")),
            core::net::IpAddr::V6(ip) => core::fmt::write(&mut w, format_args!("http://[{ip}]/ota")),
        };
        self.url_len = if written.is_ok() { w.1 } else { 0 };
    }

    /// The OTA server's URL (empty without a broker).
    pub fn url(&self) -> &str {
        core::str::from_utf8(&self.url[..self.url_len]).unwrap_or("")
    }

    /// The line that says what the path runs with.
    pub fn log_line(&self) -> super::Homie1Line<'_> {
        super::Homie1Line::Config {
            broker: self.broker,
            id: self.id.as_str(),
            ota: self.ota_enabled,
            url: self.url(),
        }
    }
}

/// The shared keys' problems are logged once, by Homie 3's path.
struct Quiet;

impl LogSink for Quiet {
    fn log(&mut self, _event: &LogEvent<'_>) {}
}

/// Homie 1.x's provisioned settings (the id and the OTA switch are Homie's, shared with 3.x);
/// without them the path stays off.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Provision<'a> {
    pub broker: &'a str,
    pub id: Option<&'a str>,
    pub ota: bool,
    /// The OTA server (`http://host[:port]/path`; default: the broker's host, port 80, `/ota`).
    pub url: Option<&'a str>,
}

impl crate::provision::PathProvision for Provision<'_> {
    fn write(
        &self,
        page: &mut crate::provision::SettingsPage,
    ) -> Result<(), crate::provision::ProvisionError> {
        use crate::provision::{ProvisionError, SettingProblem};
        crate::proto::mqtt_pull::settings::provision_broker(page, KEY_HOMIE1_BROKER, self.broker)?;
        if let Some(url) = self.url {
            const WHAT: &str = "Homie 1.x OTA server";
            if url.len() > MAX_URL_LEN {
                let problem = SettingProblem::TooLong { len: url.len(), max: MAX_URL_LEN };
                return Err(ProvisionError::setting(WHAT, problem));
            }
            if !Url::parse(url).is_ok_and(|u| u.scheme == Scheme::Http) {
                let problem = SettingProblem::Malformed { expected: "http://host[:port]/path" };
                return Err(ProvisionError::setting(WHAT, problem));
            }
            page.str(KEY_HOMIE1_URL, url)?;
        }
        crate::proto::homie::settings::provision_identity(page, self.id, self.ota)
    }
}
