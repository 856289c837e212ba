//! Homie OTA's settings: NVS `homie_broker` (`ip:port`; none: the path is off), `homie_id`
//! (the device id in its topics; default the station MAC in lowercase hex, as homie-esp8266
//! makes it) and `homie_ota` (1: OTA enabled; default 0, as Homie's `ota.enabled`).

use super::HomieLine;
use crate::log::{LogEvent, LogSink};
use crate::partition::PartitionTable;
use crate::proto::mqtt_pull::settings::read_broker;
use crate::settings::{Ignored, Rejected, Source, read_str, read_u8};
use core::net::SocketAddr;
use embedded_storage::nor_flash::ReadNorFlash;

pub const KEY_HOMIE_BROKER: &str = "homie_broker";
pub const KEY_HOMIE_ID: &str = "homie_id";
pub const KEY_HOMIE_OTA: &str = "homie_ota";
/// Homie's `MAX_DEVICE_ID_LENGTH` (without the NUL).
pub const MAX_ID_LEN: usize = 32;

/// A Homie device id: 1 to 32 of `a-z`, `0-9` and `-` (the convention's topic IDs), not
/// starting with `-`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceId {
    bytes: [u8; MAX_ID_LEN],
    len: usize,
}

impl DeviceId {
    pub fn new(s: &str) -> Option<Self> {
        let ok = (1..=MAX_ID_LEN).contains(&s.len())
            && !s.starts_with('-')
            && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
        if !ok {
            return None;
        }
        let mut bytes = [0u8; MAX_ID_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(DeviceId { bytes, len: s.len() })
    }

    /// The station MAC in lowercase hex (homie-esp8266's default id).
    pub fn of_mac(mac: [u8; 6]) -> Self {
        let mut bytes = [0u8; MAX_ID_LEN];
        crate::hex::encode_lower(&mac, &mut bytes[..12]);
        DeviceId { bytes, len: 12 }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("homie")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HomieSettings {
    pub broker: Option<SocketAddr>,
    pub broker_from: Source,
    pub id: DeviceId,
    pub ota_enabled: bool,
    pub ota_from: Source,
}

impl HomieSettings {
    /// No broker, OTA disabled, the id from `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        HomieSettings {
            broker: None,
            broker_from: Source::BuiltIn,
            id: DeviceId::of_mac(mac),
            ota_enabled: false,
            ota_from: Source::BuiltIn,
        }
    }

    /// The settings after the NVS overrides, each unusable override logged and skipped.
    pub fn load<F: ReadNorFlash>(
        mut self,
        flash: &mut F,
        table: &PartitionTable,
        log: &mut impl LogSink,
    ) -> Self {
        let Some(part) = table.nvs() else { return self };
        if let Some(broker) = read_broker(flash, part, KEY_HOMIE_BROKER, log) {
            self.broker = broker;
            self.broker_from = Source::Nvs;
        }
        let mut buf = [0u8; 64];
        if let Some(v) = read_str(flash, part, KEY_HOMIE_ID, &mut buf, log) {
            match DeviceId::new(v) {
                Some(id) => self.id = id,
                None => log.log(&LogEvent::Module(&Ignored {
                    key: KEY_HOMIE_ID,
                    why: Rejected::NotATopic { max_len: MAX_ID_LEN },
                })),
            }
        }
        match read_u8(flash, part, KEY_HOMIE_OTA, log) {
            Some(v @ (0 | 1)) => {
                self.ota_enabled = v == 1;
                self.ota_from = Source::Nvs;
            }
            Some(v) => {
                log.log(&LogEvent::Module(&Ignored { key: KEY_HOMIE_OTA, why: Rejected::NotAFlag(v) }))
            }
            None => {}
        }
        self
    }

    /// The line that says what the path runs with.
    pub fn log_line(&self) -> HomieLine<'_> {
        HomieLine::Config {
            broker: self.broker,
            broker_from: self.broker_from,
            id: self.id.as_str(),
            ota: self.ota_enabled,
            ota_from: self.ota_from,
        }
    }
}

/// Homie OTA's provisioned settings; without them the path stays off.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Provision<'a> {
    pub broker: &'a str,
    /// The device id in its topics (default: the MAC in hex).
    pub id: Option<&'a str>,
    /// [`KEY_HOMIE_OTA`]: OTA enabled (Homie's default is off).
    pub ota: bool,
}

/// Writes the id and the OTA switch, keys Homie 3 and Homie 1.x share: the first path
/// provisioned writes them, the other's are checked and left (the device reads one of each).
pub fn provision_identity(
    page: &mut crate::provision::SettingsPage,
    id: Option<&str>,
    ota: bool,
) -> Result<(), crate::provision::ProvisionError> {
    use crate::provision::{ProvisionError, SettingProblem};
    if let Some(id) = id {
        if DeviceId::new(id).is_none() {
            return Err(ProvisionError::setting(
                "Homie device id",
                SettingProblem::Malformed { expected: "1 to 32 of a-z, 0-9 and `-`, not starting with `-`" },
            ));
        }
        if !page.has(KEY_HOMIE_ID) {
            page.str(KEY_HOMIE_ID, id)?;
        }
    }
    if !page.has(KEY_HOMIE_OTA) {
        page.u8(KEY_HOMIE_OTA, ota as u8)?;
    }
    Ok(())
}

impl crate::provision::PathProvision for Provision<'_> {
    fn write(
        &self,
        page: &mut crate::provision::SettingsPage,
    ) -> Result<(), crate::provision::ProvisionError> {
        crate::proto::mqtt_pull::settings::provision_broker(page, KEY_HOMIE_BROKER, self.broker)?;
        provision_identity(page, self.id, self.ota)
    }
}
