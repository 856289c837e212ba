//! The pull path's settings (MQTT broker and topics, the pull's version check, timeout, CA,
//! clock and resumption).

use super::{MqttLine, PullLine};
use crate::log::{LogEvent, LogSink};
use crate::partition::PartitionTable;
use crate::proto::http_pull::VersionCheck;
use crate::settings::{Ignored, Rejected, Source, read_str, read_u8};
use embedded_storage::nor_flash::ReadNorFlash;

pub const KEY_MQTT_BROKER: &str = "mqtt_broker";
pub const KEY_MQTT_CMD_TOPIC: &str = "mqtt_cmd_topic";
pub const KEY_MQTT_STATE_TOPIC: &str = "mqtt_st_topic";
/// 0: no version check, 1: skip the running version, 2: refuse a downgrade as well.
pub const KEY_PULL_VERSION_CHECK: &str = "pull_vcheck";
/// `esp_http_client`'s `timeout_ms` in whole seconds (1 to 255): the wait for a response head;
/// a body that brings nothing for three of these fails (ESP-IDF would wait forever).
pub const KEY_PULL_TIMEOUT: &str = "pull_timeout_s";
/// The CA (PEM, a string) an https server's certificate must chain to; without it https pulls
/// fail (as `esp_https_ota` without `cert_pem` or a bundle).
pub const KEY_PULL_CA: &str = "pull_ca";
/// The device's clock for certificate dates (seconds since 1970, a decimal string), standing in
/// for the time an SNTP client would set; without it dates are not checked (ESP-IDF's default).
pub const KEY_PULL_CLOCK: &str = "pull_clock";
/// 1: a download cut short resumes with `Range` (ESP-IDF's `ota_resumption`), its progress
/// kept in NVS ([`crate::resume`]); 0 or absent: every pull starts from byte 0 (ESP-IDF's default).
pub const KEY_PULL_RESUME: &str = "pull_resume";
/// The longest CA certificate (DER) the device keeps.
pub const MAX_CA_DER: usize = 1536;
/// The longest PEM text read for it.
pub const MAX_CA_PEM: usize = 2200;
/// The seed's `timeout_ms` (mqtt-https-pull.md §1).
pub const DEFAULT_PULL_TIMEOUT_S: u8 = 10;
/// The longest topic the device keeps (the seed's are 16 bytes).
pub const MAX_TOPIC_LEN: usize = 64;
/// `ip:port`, IPv4 or `[IPv6]`: a device without DNS is given an address.
pub const MAX_BROKER_LEN: usize = 47;

/// A topic kept in a fixed buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Topic {
    bytes: [u8; MAX_TOPIC_LEN],
    len: usize,
}

impl Topic {
    pub fn new(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > MAX_TOPIC_LEN || s.contains(['+', '#', '\0']) {
            return None;
        }
        let mut t = Topic { bytes: [0; MAX_TOPIC_LEN], len: s.len() };
        t.bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(t)
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled from a `&str`, cut at its own length.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// The pull path's settings: NVS `mqtt_broker` (`ip:port`; none: the path is off),
/// `mqtt_cmd_topic`, `mqtt_st_topic` and `pull_vcheck`, else the seed's topics and no version
/// check. The seed appends `:1883` to a broker without a port; so does this.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MqttSettings {
    pub broker: Option<core::net::SocketAddr>,
    pub broker_from: Source,
    pub command_topic: Topic,
    pub state_topic: Topic,
    pub version_check: VersionCheck,
    pub timeout_s: u8,
    /// [`KEY_PULL_CA`] as DER (`ca_len` bytes; none: 0).
    pub ca: [u8; MAX_CA_DER],
    pub ca_len: usize,
    /// [`KEY_PULL_CLOCK`].
    pub clock_unix: Option<u64>,
    /// [`KEY_PULL_RESUME`].
    pub resume: bool,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            broker: None,
            broker_from: Source::BuiltIn,
            command_topic: Topic::new(crate::proto::mqtt::DEFAULT_COMMAND_TOPIC).expect("a valid topic"),
            state_topic: Topic::new(crate::proto::mqtt::DEFAULT_STATE_TOPIC).expect("a valid topic"),
            version_check: VersionCheck::None,
            timeout_s: DEFAULT_PULL_TIMEOUT_S,
            ca: [0; MAX_CA_DER],
            ca_len: 0,
            clock_unix: None,
            resume: false,
        }
    }
}

/// `ip:port` or `ip` (port 1883), IPv6 in brackets.
pub fn parse_broker(s: &str) -> Option<core::net::SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let ip: core::net::IpAddr = s.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(core::net::SocketAddr::new(ip, crate::proto::mqtt::DEFAULT_PORT))
}

/// A broker setting at `key`: `Some(Some(addr))`, `Some(None)` for an empty value (the path
/// switched off), `None` when absent or unusable (logged).
pub fn read_broker<F: ReadNorFlash>(
    flash: &mut F,
    part: &crate::partition::Partition,
    key: &'static str,
    log: &mut impl LogSink,
) -> Option<Option<core::net::SocketAddr>> {
    let mut buf = [0u8; MAX_TOPIC_LEN + 1];
    let v = read_str(flash, part, key, &mut buf, log)?;
    match parse_broker(v) {
        Some(a) => Some(Some(a)),
        None if v.is_empty() => Some(None),
        None => {
            log.log(&LogEvent::Module(&Ignored { key, why: Rejected::NotAnAddress }));
            None
        }
    }
}

impl MqttSettings {
    /// The settings after the NVS overrides, each unusable override logged and skipped.
    pub fn load<F: ReadNorFlash>(
        mut self,
        flash: &mut F,
        table: &PartitionTable,
        log: &mut impl LogSink,
    ) -> Self {
        let Some(part) = table.nvs() else { return self };
        if let Some(broker) = read_broker(flash, part, KEY_MQTT_BROKER, log) {
            self.broker = broker;
            self.broker_from = Source::Nvs;
        }
        let mut buf = [0u8; MAX_TOPIC_LEN + 1];
        for (key, topic) in
            [(KEY_MQTT_CMD_TOPIC, &mut self.command_topic), (KEY_MQTT_STATE_TOPIC, &mut self.state_topic)]
        {
            if let Some(v) = read_str(flash, part, key, &mut buf, log) {
                match Topic::new(v) {
                    Some(t) => *topic = t,
                    None => log.log(&LogEvent::Module(&Ignored {
                        key,
                        why: Rejected::NotATopic { max_len: MAX_TOPIC_LEN },
                    })),
                }
            }
        }
        match read_u8(flash, part, KEY_PULL_TIMEOUT, log) {
            Some(0) => {
                log.log(&LogEvent::Module(&Ignored { key: KEY_PULL_TIMEOUT, why: Rejected::ZeroTimeout }))
            }
            Some(s) => self.timeout_s = s,
            None => {}
        }
        if let Some(v) = read_u8(flash, part, KEY_PULL_VERSION_CHECK, log) {
            match v {
                0 => self.version_check = VersionCheck::None,
                1 => self.version_check = VersionCheck::SkipSame,
                2 => self.version_check = VersionCheck::RefuseDowngrade,
                _ => log.log(&LogEvent::Module(&Ignored {
                    key: KEY_PULL_VERSION_CHECK,
                    why: Rejected::VersionCheckOutOfRange(v),
                })),
            }
        }
        let mut pem = [0u8; MAX_CA_PEM];
        if let Some(v) = read_str(flash, part, KEY_PULL_CA, &mut pem, log) {
            match crate::pem::decode_certificate(v, &mut self.ca) {
                Ok(n) => self.ca_len = n,
                Err(e) => log
                    .log(&LogEvent::Module(&Ignored { key: KEY_PULL_CA, why: Rejected::NotACertificate(e) })),
            }
        }
        match read_u8(flash, part, KEY_PULL_RESUME, log) {
            Some(0) => self.resume = false,
            Some(1) => self.resume = true,
            Some(v) => {
                log.log(&LogEvent::Module(&Ignored { key: KEY_PULL_RESUME, why: Rejected::NotAFlag(v) }))
            }
            None => {}
        }
        let mut clock = [0u8; 24];
        if let Some(v) = read_str(flash, part, KEY_PULL_CLOCK, &mut clock, log) {
            match v.parse() {
                Ok(t) => self.clock_unix = Some(t),
                Err(_) => {
                    log.log(&LogEvent::Module(&Ignored { key: KEY_PULL_CLOCK, why: Rejected::NotATime }))
                }
            }
        }
        self
    }

    /// The CA certificate (DER) https servers must chain to; empty when none is provisioned.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca[..self.ca_len]
    }

    /// The line that says what https pulls trust, when a CA is provisioned.
    pub fn tls_log_line(&self) -> Option<PullLine<'static>> {
        (self.ca_len > 0).then_some(PullLine::ConfigTls { dates_checked: self.clock_unix.is_some() })
    }

    /// The line that says what the pull path runs with (never the broker's address: it differs
    /// from backend to backend, and logs must not).
    pub fn log_line(&self) -> MqttLine<'_> {
        MqttLine::Config {
            broker_from: self.broker.map(|_| self.broker_from),
            command_topic: self.command_topic.as_str(),
            state_topic: self.state_topic.as_str(),
            resume: self.resume,
        }
    }
}

/// The pull path's provisioned settings; without them the path stays off.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Provision<'a> {
    pub broker: &'a str,
    pub command_topic: Option<&'a str>,
    pub state_topic: Option<&'a str>,
    /// 0, 1 or 2 ([`KEY_PULL_VERSION_CHECK`]).
    pub version_check: u8,
    /// Not written when `None` (the seed's 10 s).
    pub timeout_s: Option<u8>,
    /// [`KEY_PULL_CA`]: a PEM certificate.
    pub ca_pem: Option<&'a str>,
    /// [`KEY_PULL_CLOCK`].
    pub clock_unix: Option<u64>,
    /// [`KEY_PULL_RESUME`], written when set.
    pub resume: bool,
}

/// Writes a broker setting (`ip:port` or `ip`) at `key`, refused as the device would refuse it.
pub fn provision_broker(
    page: &mut crate::provision::SettingsPage,
    key: &str,
    broker: &str,
) -> Result<(), crate::provision::ProvisionError> {
    use crate::provision::{ProvisionError, SettingProblem};
    if broker.len() > MAX_BROKER_LEN {
        return Err(ProvisionError::setting(
            "MQTT broker",
            SettingProblem::TooLong { len: broker.len(), max: MAX_BROKER_LEN },
        ));
    }
    if parse_broker(broker).is_none() {
        return Err(ProvisionError::setting(
            "MQTT broker",
            SettingProblem::Malformed { expected: "ip:port or ip (no host names)" },
        ));
    }
    page.str(key, broker)
}

/// Writes a topic setting at `key`, refused as the device would refuse it.
pub fn provision_topic(
    page: &mut crate::provision::SettingsPage,
    key: &str,
    topic: &str,
) -> Result<(), crate::provision::ProvisionError> {
    use crate::provision::{ProvisionError, SettingProblem};
    if topic.len() > MAX_TOPIC_LEN {
        return Err(ProvisionError::setting(
            "MQTT topic",
            SettingProblem::TooLong { len: topic.len(), max: MAX_TOPIC_LEN },
        ));
    }
    if Topic::new(topic).is_none() {
        return Err(ProvisionError::setting(
            "MQTT topic",
            SettingProblem::Malformed { expected: "a topic name without wildcards or NUL" },
        ));
    }
    page.str(key, topic)
}

impl crate::provision::PathProvision for Provision<'_> {
    fn write(
        &self,
        page: &mut crate::provision::SettingsPage,
    ) -> Result<(), crate::provision::ProvisionError> {
        use crate::provision::{ProvisionError, SettingProblem};
        provision_broker(page, KEY_MQTT_BROKER, self.broker)?;
        for (key, topic) in
            [(KEY_MQTT_CMD_TOPIC, self.command_topic), (KEY_MQTT_STATE_TOPIC, self.state_topic)]
        {
            if let Some(t) = topic {
                provision_topic(page, key, t)?;
            }
        }
        if self.version_check > 2 {
            return Err(ProvisionError::setting(
                "version check",
                SettingProblem::OutOfRange { value: self.version_check.into(), expected: "0, 1 or 2" },
            ));
        }
        page.u8(KEY_PULL_VERSION_CHECK, self.version_check)?;
        match self.timeout_s {
            Some(0) => {
                return Err(ProvisionError::setting(
                    "pull timeout",
                    SettingProblem::OutOfRange { value: 0, expected: "1 to 255 seconds" },
                ));
            }
            Some(s) => page.u8(KEY_PULL_TIMEOUT, s)?,
            None => {}
        }
        if let Some(pem) = self.ca_pem {
            let refused = |e| ProvisionError::setting("pull CA", SettingProblem::Certificate(e));
            crate::pem::decode_certificate(pem, &mut [0; MAX_CA_DER]).map_err(refused)?;
            if pem.len() >= MAX_CA_PEM {
                return Err(refused(crate::pem::PemError::TooLong));
            }
            page.str(KEY_PULL_CA, pem)?;
        }
        if let Some(t) = self.clock_unix {
            let mut digits = [0u8; 20];
            page.str(KEY_PULL_CLOCK, crate::provision::decimal(t, &mut digits))?;
        }
        if self.resume {
            page.u8(KEY_PULL_RESUME, 1)?;
        }
        Ok(())
    }
}
