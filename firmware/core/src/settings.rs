//! The device's OTA settings: the ESPHome password and protocol version, read at boot from the
//! NVS namespace `otahil` (keys `ota_password`, `ota_protocol`), falling back to the values the
//! image was built with.
//!
//! Why NVS: one firmware build then plays every scenario (the harness provisions the settings
//! into the flash before power-on, as a factory would), and a lab bench configures boards the
//! way ESP-IDF users already do, with `nvs_partition_gen.py`. An empty `ota_password` means "no
//! authentication", so a provisioned device never depends on what its build had compiled in.

use crate::log::{LogEvent, LogSink};
use crate::nvs::{self, NvsError, Value};
use crate::partition::{Partition, PartitionTable};
use crate::proto::arduino::{self, AuthScheme};
use crate::proto::esphome::ServerConfig;
use embedded_storage::nor_flash::ReadNorFlash;

pub const NAMESPACE: &str = "otahil";
pub const KEY_PASSWORD: &str = "ota_password";
pub const KEY_PROTOCOL: &str = "ota_protocol";
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
    NotATopic,
    VersionCheckOutOfRange(u8),
    ZeroTimeout,
    NotACertificate(crate::pem::PemError),
    NotATime,
    NotAFlag(u8),
}

impl core::fmt::Display for Rejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Rejected::Read(e) => e.fmt(f),
            Rejected::WrongType => f.write_str("unexpected item type"),
            Rejected::ProtocolOutOfRange(v) => write!(f, "protocol {v} is not 1 or 2"),
            Rejected::AuthSchemeOutOfRange(v) => write!(f, "auth scheme {v} is not 1 (md5) or 2 (pbkdf2)"),
            Rejected::NotAnAddress => f.write_str("not ip:port"),
            Rejected::NotATopic => write!(f, "not a topic of 1 to {MAX_TOPIC_LEN} bytes without wildcards"),
            Rejected::VersionCheckOutOfRange(v) => write!(f, "version check {v} is not 0, 1 or 2"),
            Rejected::ZeroTimeout => f.write_str("a timeout of 0 s"),
            Rejected::NotACertificate(e) => write!(f, "not a PEM certificate ({e})"),
            Rejected::NotATime => f.write_str("not seconds since 1970"),
            Rejected::NotAFlag(v) => write!(f, "{v} is not 0 or 1"),
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
    fn load<F: ReadNorFlash>(
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
                v => log.log(&LogEvent::ConfigIgnored {
                    key: KEY_PROTOCOL,
                    why: Rejected::ProtocolOutOfRange(v),
                }),
            }
        }
        self
    }

    /// The line that says what the device will use (never the password itself).
    pub fn log_event(&self) -> LogEvent<'static> {
        LogEvent::ConfigOta {
            password: self.password.get().is_some(),
            password_from: self.password.from,
            protocol: self.protocol,
            protocol_from: self.protocol_from,
        }
    }
}

/// The u8 at `key`, or `None` (missing, or unusable and logged as ignored).
fn read_u8<F: ReadNorFlash>(
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
            log.log(&LogEvent::ConfigIgnored { key, why: Rejected::WrongType });
            None
        }
        Err(e) => {
            log.log(&LogEvent::ConfigIgnored { key, why: Rejected::Read(e) });
            None
        }
    }
}

/// The string at `key`, or `None` (missing, or unusable and logged as ignored).
fn read_str<'b, F: ReadNorFlash>(
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
            log.log(&LogEvent::ConfigIgnored { key, why: Rejected::WrongType });
            None
        }
        Err(e) => {
            log.log(&LogEvent::ConfigIgnored { key, why: Rejected::Read(e) });
            None
        }
    }
}

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

    pub fn config(&self) -> arduino::Config<'_> {
        arduino::Config { password: self.password(), auth: self.auth }
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
                None => log.log(&LogEvent::ConfigIgnored {
                    key: KEY_ARDUINO_AUTH,
                    why: Rejected::AuthSchemeOutOfRange(v),
                }),
            }
        }
        self
    }

    /// The line that says what ArduinoOTA will use on `port` (never the password itself).
    pub fn log_event(&self, port: u16) -> LogEvent<'static> {
        LogEvent::ConfigArduino {
            port,
            password: self.password.get().is_some(),
            password_from: self.password.from,
            auth: self.auth,
            auth_from: self.auth_from,
        }
    }
}

pub const KEY_WIFI_SSID: &str = "wifi_ssid";
pub const KEY_WIFI_PASSWORD: &str = "wifi_password";
/// 802.11 limits: an SSID is at most 32 bytes, a WPA2 passphrase at most 64.
pub const MAX_SSID_LEN: usize = 32;
pub const MAX_WIFI_PASSWORD_LEN: usize = 64;

/// The network a board joins: NVS `wifi_ssid` / `wifi_password` when provisioned (a missing
/// password means an open network), else the credentials built in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WifiCredentials {
    ssid: [u8; MAX_SSID_LEN],
    ssid_len: usize,
    password: [u8; MAX_WIFI_PASSWORD_LEN],
    password_len: usize,
    pub from: Source,
}

impl WifiCredentials {
    fn new(ssid: &str, password: &str, from: Source) -> Option<Self> {
        if ssid.is_empty() || ssid.len() > MAX_SSID_LEN || password.len() > MAX_WIFI_PASSWORD_LEN {
            return None;
        }
        let mut c = WifiCredentials {
            ssid: [0; MAX_SSID_LEN],
            ssid_len: ssid.len(),
            password: [0; MAX_WIFI_PASSWORD_LEN],
            password_len: password.len(),
            from,
        };
        c.ssid[..ssid.len()].copy_from_slice(ssid.as_bytes());
        c.password[..password.len()].copy_from_slice(password.as_bytes());
        Some(c)
    }

    pub fn ssid(&self) -> &str {
        // Only ever filled from a `&str`, cut at its own length.
        core::str::from_utf8(&self.ssid[..self.ssid_len]).unwrap_or("")
    }

    pub fn password(&self) -> &str {
        core::str::from_utf8(&self.password[..self.password_len]).unwrap_or("")
    }

    /// The provisioned credentials, else `built_in_ssid` / `built_in_password` (empty SSID: none).
    pub fn load<F: ReadNorFlash>(
        flash: &mut F,
        table: &PartitionTable,
        built_in_ssid: &str,
        built_in_password: &str,
        log: &mut impl LogSink,
    ) -> Option<Self> {
        if let Some(part) = table.nvs() {
            let mut ssid_buf = [0u8; MAX_SSID_LEN + 1];
            let mut pass_buf = [0u8; MAX_WIFI_PASSWORD_LEN + 1];
            let ssid = read_str(flash, part, KEY_WIFI_SSID, &mut ssid_buf, log).filter(|s| !s.is_empty());
            if let Some(ssid) = ssid {
                let password = read_str(flash, part, KEY_WIFI_PASSWORD, &mut pass_buf, log).unwrap_or("");
                return WifiCredentials::new(ssid, password, Source::Nvs);
            }
        }
        WifiCredentials::new(built_in_ssid, built_in_password, Source::BuiltIn)
    }
}

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
const MAX_CA_PEM: usize = 2200;
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
    fn new(s: &str) -> Option<Self> {
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
    pub version_check: crate::proto::http_pull::VersionCheck,
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
            version_check: crate::proto::http_pull::VersionCheck::None,
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

impl MqttSettings {
    /// The settings after the NVS overrides, each unusable override logged and skipped.
    pub fn load<F: ReadNorFlash>(
        mut self,
        flash: &mut F,
        table: &PartitionTable,
        log: &mut impl LogSink,
    ) -> Self {
        let Some(part) = table.nvs() else { return self };
        let mut buf = [0u8; MAX_TOPIC_LEN + 1];
        if let Some(v) = read_str(flash, part, KEY_MQTT_BROKER, &mut buf, log) {
            match parse_broker(v) {
                Some(a) => {
                    self.broker = Some(a);
                    self.broker_from = Source::Nvs;
                }
                None if v.is_empty() => {
                    self.broker = None;
                    self.broker_from = Source::Nvs;
                }
                None => {
                    log.log(&LogEvent::ConfigIgnored { key: KEY_MQTT_BROKER, why: Rejected::NotAnAddress })
                }
            }
        }
        for (key, topic) in
            [(KEY_MQTT_CMD_TOPIC, &mut self.command_topic), (KEY_MQTT_STATE_TOPIC, &mut self.state_topic)]
        {
            if let Some(v) = read_str(flash, part, key, &mut buf, log) {
                match Topic::new(v) {
                    Some(t) => *topic = t,
                    None => log.log(&LogEvent::ConfigIgnored { key, why: Rejected::NotATopic }),
                }
            }
        }
        match read_u8(flash, part, KEY_PULL_TIMEOUT, log) {
            Some(0) => {
                log.log(&LogEvent::ConfigIgnored { key: KEY_PULL_TIMEOUT, why: Rejected::ZeroTimeout })
            }
            Some(s) => self.timeout_s = s,
            None => {}
        }
        if let Some(v) = read_u8(flash, part, KEY_PULL_VERSION_CHECK, log) {
            use crate::proto::http_pull::VersionCheck;
            match v {
                0 => self.version_check = VersionCheck::None,
                1 => self.version_check = VersionCheck::SkipSame,
                2 => self.version_check = VersionCheck::RefuseDowngrade,
                _ => log.log(&LogEvent::ConfigIgnored {
                    key: KEY_PULL_VERSION_CHECK,
                    why: Rejected::VersionCheckOutOfRange(v),
                }),
            }
        }
        let mut pem = [0u8; MAX_CA_PEM];
        if let Some(v) = read_str(flash, part, KEY_PULL_CA, &mut pem, log) {
            match crate::pem::decode_certificate(v, &mut self.ca) {
                Ok(n) => self.ca_len = n,
                Err(e) => {
                    log.log(&LogEvent::ConfigIgnored { key: KEY_PULL_CA, why: Rejected::NotACertificate(e) })
                }
            }
        }
        match read_u8(flash, part, KEY_PULL_RESUME, log) {
            Some(0) => self.resume = false,
            Some(1) => self.resume = true,
            Some(v) => log.log(&LogEvent::ConfigIgnored { key: KEY_PULL_RESUME, why: Rejected::NotAFlag(v) }),
            None => {}
        }
        let mut clock = [0u8; 24];
        if let Some(v) = read_str(flash, part, KEY_PULL_CLOCK, &mut clock, log) {
            match v.parse() {
                Ok(t) => self.clock_unix = Some(t),
                Err(_) => log.log(&LogEvent::ConfigIgnored { key: KEY_PULL_CLOCK, why: Rejected::NotATime }),
            }
        }
        self
    }

    /// The CA certificate (DER) https servers must chain to; empty when none is provisioned.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca[..self.ca_len]
    }

    /// The line that says what https pulls trust, when a CA is provisioned.
    pub fn tls_log_event(&self) -> Option<LogEvent<'_>> {
        (self.ca_len > 0).then_some(LogEvent::ConfigTls { dates_checked: self.clock_unix.is_some() })
    }

    /// The line that says what the pull path runs with (never the broker's address: it differs
    /// from backend to backend, and logs must not).
    pub fn log_event(&self) -> LogEvent<'_> {
        LogEvent::ConfigMqtt {
            broker_from: self.broker.map(|_| self.broker_from),
            command_topic: self.command_topic.as_str(),
            state_topic: self.state_topic.as_str(),
            resume: self.resume,
        }
    }
}

/// The pull path's provisioned settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MqttProvision<'a> {
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

/// What a factory (or the harness) provisions into a device's nvs partition.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Provision<'a> {
    /// `None` is stored as the empty string: no authentication, whatever the build says.
    pub ota_password: Option<&'a str>,
    /// 1 or 2.
    pub protocol: u8,
    /// SSID and password of the network to join (boards with the `wifi` build).
    pub wifi: Option<(&'a str, &'a str)>,
    /// ArduinoOTA's password (`None` stored as empty: no authentication) and auth scheme; not
    /// written at all when `None` (the build's values apply).
    pub arduino: Option<(Option<&'a str>, AuthScheme)>,
    /// The pull path's broker and topics; not written when `None` (the path stays off).
    pub mqtt: Option<MqttProvision<'a>>,
}

/// An NVS page holding `p`, for provisioning a flash image: the page decides the OTA password
/// and protocol (and the Wi-Fi network when given) whatever the firmware has built in.
pub fn provisioning_page(p: &Provision<'_>) -> Result<[u8; nvs::PAGE_SIZE], ProvisionError> {
    let password = p.ota_password.unwrap_or("");
    if password.len() > MAX_PASSWORD_LEN {
        return Err(ProvisionError::PasswordTooLong { len: password.len() });
    }
    if !(1..=2).contains(&p.protocol) {
        return Err(ProvisionError::Protocol(p.protocol));
    }
    let mut page = nvs::PageBuilder::new(0);
    let ns = page.namespace(NAMESPACE).map_err(ProvisionError::Nvs)?;
    page.str(ns, KEY_PASSWORD, password).map_err(ProvisionError::Nvs)?;
    page.u8(ns, KEY_PROTOCOL, p.protocol).map_err(ProvisionError::Nvs)?;
    if let Some((ssid, wifi_password)) = p.wifi {
        if ssid.is_empty() || ssid.len() > MAX_SSID_LEN {
            return Err(ProvisionError::Ssid { len: ssid.len() });
        }
        if wifi_password.len() > MAX_WIFI_PASSWORD_LEN {
            return Err(ProvisionError::WifiPasswordTooLong { len: wifi_password.len() });
        }
        page.str(ns, KEY_WIFI_SSID, ssid).map_err(ProvisionError::Nvs)?;
        page.str(ns, KEY_WIFI_PASSWORD, wifi_password).map_err(ProvisionError::Nvs)?;
    }
    if let Some((arduino_password, auth)) = p.arduino {
        let arduino_password = arduino_password.unwrap_or("");
        if arduino_password.len() > MAX_PASSWORD_LEN {
            return Err(ProvisionError::PasswordTooLong { len: arduino_password.len() });
        }
        page.str(ns, KEY_ARDUINO_PASSWORD, arduino_password).map_err(ProvisionError::Nvs)?;
        page.u8(ns, KEY_ARDUINO_AUTH, auth.code()).map_err(ProvisionError::Nvs)?;
    }
    if let Some(m) = p.mqtt {
        if parse_broker(m.broker).is_none() || m.broker.len() > MAX_BROKER_LEN {
            return Err(ProvisionError::Broker);
        }
        page.str(ns, KEY_MQTT_BROKER, m.broker).map_err(ProvisionError::Nvs)?;
        for (key, topic) in [(KEY_MQTT_CMD_TOPIC, m.command_topic), (KEY_MQTT_STATE_TOPIC, m.state_topic)] {
            if let Some(t) = topic {
                Topic::new(t).ok_or(ProvisionError::Topic)?;
                page.str(ns, key, t).map_err(ProvisionError::Nvs)?;
            }
        }
        if m.version_check > 2 {
            return Err(ProvisionError::VersionCheck(m.version_check));
        }
        page.u8(ns, KEY_PULL_VERSION_CHECK, m.version_check).map_err(ProvisionError::Nvs)?;
        match m.timeout_s {
            Some(0) => return Err(ProvisionError::Timeout),
            Some(s) => page.u8(ns, KEY_PULL_TIMEOUT, s).map_err(ProvisionError::Nvs)?,
            None => {}
        }
        if let Some(pem) = m.ca_pem {
            crate::pem::decode_certificate(pem, &mut [0; MAX_CA_DER]).map_err(ProvisionError::Certificate)?;
            if pem.len() >= MAX_CA_PEM {
                return Err(ProvisionError::Certificate(crate::pem::PemError::TooLong));
            }
            page.str(ns, KEY_PULL_CA, pem).map_err(ProvisionError::Nvs)?;
        }
        if let Some(t) = m.clock_unix {
            let mut digits = [0u8; 20];
            page.str(ns, KEY_PULL_CLOCK, decimal(t, &mut digits)).map_err(ProvisionError::Nvs)?;
        }
        if m.resume {
            page.u8(ns, KEY_PULL_RESUME, 1).map_err(ProvisionError::Nvs)?;
        }
    }
    Ok(page.finish())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProvisionError {
    PasswordTooLong { len: usize },
    Protocol(u8),
    Ssid { len: usize },
    WifiPasswordTooLong { len: usize },
    Broker,
    Topic,
    VersionCheck(u8),
    Timeout,
    Certificate(crate::pem::PemError),
    Nvs(nvs::BuildError),
}

/// `value` in decimal, in `buf`.
fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("0")
}

impl core::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProvisionError::PasswordTooLong { len } => {
                write!(f, "password of {len} bytes: the device stores at most {MAX_PASSWORD_LEN}")
            }
            ProvisionError::Protocol(v) => write!(f, "protocol {v}: expected 1 or 2"),
            ProvisionError::Ssid { len } => write!(f, "SSID of {len} bytes: expected 1 to {MAX_SSID_LEN}"),
            ProvisionError::WifiPasswordTooLong { len } => {
                write!(f, "Wi-Fi password of {len} bytes: at most {MAX_WIFI_PASSWORD_LEN}")
            }
            ProvisionError::Broker => {
                write!(f, "MQTT broker: expected ip:port or ip (at most {MAX_BROKER_LEN} bytes)")
            }
            ProvisionError::Topic => {
                write!(f, "MQTT topic: expected 1 to {MAX_TOPIC_LEN} bytes without wildcards")
            }
            ProvisionError::VersionCheck(v) => write!(f, "version check {v}: expected 0, 1 or 2"),
            ProvisionError::Timeout => f.write_str("pull timeout: expected 1 to 255 seconds"),
            ProvisionError::Certificate(e) => write!(f, "pull CA: {e}"),
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
        assert_eq!((s.password.from, s.protocol_from), (Source::BuiltIn, Source::BuiltIn));
        assert!(lines.is_empty());
    }

    #[test]
    fn provisioned_values_override_the_build() {
        let page = provisioning_page(&Provision {
            ota_password: Some("hunter2"),
            protocol: 1,
            wifi: None,
            arduino: None,
            mqtt: None,
        })
        .unwrap();
        let (s, _) = load(Some(&page), OtaSettings::built_in(None, 2));
        assert_eq!((s.password(), s.protocol), (Some(&b"hunter2"[..]), 1));
        assert_eq!((s.password.from, s.protocol_from), (Source::Nvs, Source::Nvs));
        assert_eq!(format!("{}", s.log_event()), "OTA password set (nvs), protocol 1 (nvs)");
        // An empty password switches authentication off even when the build has one.
        let page = provisioning_page(&Provision { protocol: 2, ..Provision::default() }).unwrap();
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
            provisioning_page(&Provision {
                ota_password: Some(&long),
                protocol: 2,
                wifi: None,
                arduino: None,
                mqtt: None,
            }),
            Err(ProvisionError::PasswordTooLong { len: MAX_PASSWORD_LEN + 1 })
        );
        assert_eq!(provisioning_page(&Provision::default()), Err(ProvisionError::Protocol(0)));
    }

    #[test]
    fn wifi_credentials_come_from_nvs_then_the_build() {
        let (mut flash, table) = device(None);
        let none = WifiCredentials::load(&mut flash, &table, "", "", &mut |_: &LogEvent<'_>| {});
        assert_eq!(none, None, "no SSID anywhere: nothing to join");
        let built =
            WifiCredentials::load(&mut flash, &table, "lab", "secret", &mut |_: &LogEvent<'_>| {}).unwrap();
        assert_eq!((built.ssid(), built.password(), built.from), ("lab", "secret", Source::BuiltIn));
        let page = provisioning_page(&Provision {
            protocol: 2,
            wifi: Some(("bench-5", "")),
            ..Provision::default()
        })
        .unwrap();
        let (mut flash, table) = device(Some(&page));
        let c =
            WifiCredentials::load(&mut flash, &table, "lab", "secret", &mut |_: &LogEvent<'_>| {}).unwrap();
        assert_eq!((c.ssid(), c.password(), c.from), ("bench-5", "", Source::Nvs));
        let e = provisioning_page(&Provision { protocol: 2, wifi: Some(("", "x")), ..Provision::default() });
        assert_eq!(e, Err(ProvisionError::Ssid { len: 0 }));
        let long = "s".repeat(33);
        let e =
            provisioning_page(&Provision { protocol: 2, wifi: Some((&long, "")), ..Provision::default() });
        assert_eq!(format!("{}", e.unwrap_err()), "SSID of 33 bytes: expected 1 to 32");
    }

    #[test]
    fn arduino_settings_from_nvs_or_built_in() {
        let built_in = ArduinoSettings::built_in(None, AuthScheme::Md5);
        let page = provisioning_page(&Provision {
            protocol: 2,
            arduino: Some((Some("admin"), AuthScheme::Pbkdf2Sha256)),
            ..Provision::default()
        })
        .unwrap();
        let (mut flash, table) = device(Some(&page));
        let s = built_in.load(&mut flash, &table, &mut |_: &LogEvent<'_>| {});
        assert_eq!((s.password(), s.auth), (Some(&b"admin"[..]), AuthScheme::Pbkdf2Sha256));
        assert_eq!((s.password.from, s.auth_from), (Source::Nvs, Source::Nvs));
        assert_eq!(
            std::format!("{}", s.log_event(3232)),
            "ArduinoOTA on UDP port 3232: password set (nvs), auth pbkdf2 (nvs)"
        );
        // Provisioned without a password: none, whatever was built in.
        let page = provisioning_page(&Provision {
            protocol: 2,
            arduino: Some((None, AuthScheme::Md5)),
            ..Provision::default()
        })
        .unwrap();
        let (mut flash, table) = device(Some(&page));
        let s = ArduinoSettings::built_in(Some(b"x"), AuthScheme::Md5).load(
            &mut flash,
            &table,
            &mut |_: &LogEvent<'_>| {},
        );
        assert_eq!(s.password(), None);
        // Nothing provisioned for ArduinoOTA: the built-in values, and the ESPHome page unchanged.
        let page = provisioning_page(&Provision { protocol: 2, ..Provision::default() }).unwrap();
        let (mut flash, table) = device(Some(&page));
        let s = ArduinoSettings::built_in(Some(b"x"), AuthScheme::Md5).load(
            &mut flash,
            &table,
            &mut |_: &LogEvent<'_>| {},
        );
        assert_eq!((s.password(), s.password.from), (Some(&b"x"[..]), Source::BuiltIn));
        // An auth value the device does not know is logged and ignored.
        let mut b = nvs::PageBuilder::new(0);
        let ns = b.namespace(NAMESPACE).unwrap();
        b.u8(ns, KEY_ARDUINO_AUTH, 9).unwrap();
        let (mut flash, table) = device(Some(&b.finish()));
        let mut lines = std::vec::Vec::new();
        let s = built_in.load(&mut flash, &table, &mut |e: &LogEvent<'_>| lines.push(std::format!("{e}")));
        assert_eq!(s.auth, AuthScheme::Md5);
        assert_eq!(lines, ["ignoring nvs otahil/arduino_auth: auth scheme 9 is not 1 (md5) or 2 (pbkdf2)"]);
    }

    fn mqtt(page: Option<&[u8]>) -> (MqttSettings, Vec<String>) {
        let (mut flash, table) = device(page);
        let mut lines = Vec::new();
        let s = MqttSettings::default()
            .load(&mut flash, &table, &mut |e: &LogEvent<'_>| lines.push(format!("{e}")));
        (s, lines)
    }

    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBXzCCAQWgAwIBAgIUX7Ui1kC5ak+3Um4a5E0rEZ9gKecwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOb3RhaGlsIHRlc3QgQ0EwIBcNNzUwMTAxMDAwMDAwWhgPNDA5
NjAxMDEwMDAwMDBaMBkxFzAVBgNVBAMMDm90YWhpbCB0ZXN0IENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEUTXLz0Q2O6sC4hTk2lUHrV3nyEfXWQ8tgSx+5pR1
vSpm0KY/gUMWo4iQpH7DbvV4wuvQDkxXp4zZpb3cNaZRa6MjMCEwDwYDVR0TAQH/
BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZIzj0EAwIDSAAwRQIgVdGTMZDu
sGZ3ZpK5nGtPCB0AI3BhbvoWrRG7Ft2W6KYCIQCWmP3uZVVnY9kB/7x1QY9l0Vnx
Z8O+2bCrbqW4zJmD3g==
-----END CERTIFICATE-----
";

    #[test]
    fn the_pull_ca_and_clock_are_provisioned_and_read_back() {
        let m = MqttProvision {
            broker: "10.0.2.2",
            ca_pem: Some(TEST_CA_PEM),
            clock_unix: Some(1_796_000_000),
            ..MqttProvision::default()
        };
        let page =
            provisioning_page(&Provision { protocol: 2, mqtt: Some(m), ..Provision::default() }).unwrap();
        let (s, lines) = mqtt(Some(&page));
        assert!(lines.is_empty(), "{lines:?}");
        let mut der = [0u8; MAX_CA_DER];
        let n = crate::pem::decode_certificate(TEST_CA_PEM, &mut der).unwrap();
        assert_eq!(s.ca_der(), &der[..n]);
        assert_eq!(s.clock_unix, Some(1_796_000_000));
        assert_eq!(
            format!("{}", s.tls_log_event().unwrap()),
            "https trusts the CA set (nvs); certificate dates checked (clock set)"
        );
        let bad = MqttProvision {
            broker: "10.0.2.2",
            ca_pem: Some("not a certificate"),
            ..MqttProvision::default()
        };
        assert_eq!(
            provisioning_page(&Provision { protocol: 2, mqtt: Some(bad), ..Provision::default() }),
            Err(ProvisionError::Certificate(crate::pem::PemError::NoCertificate))
        );
    }

    #[test]
    fn the_pull_path_is_off_until_a_broker_is_provisioned() {
        let (s, lines) = mqtt(None);
        assert_eq!(s.broker, None);
        assert!(lines.is_empty());
        assert_eq!(format!("{}", s.log_event()), "MQTT off: no broker configured");
        let page = provisioning_page(&Provision {
            protocol: 2,
            mqtt: Some(MqttProvision {
                broker: "10.0.2.2",
                command_topic: Some("/fleet/cmd"),
                state_topic: None,
                version_check: 1,
                timeout_s: Some(2),
                ..MqttProvision::default()
            }),
            ..Provision::default()
        })
        .unwrap();
        let (s, lines) = mqtt(Some(&page));
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(s.broker, Some("10.0.2.2:1883".parse().unwrap()), "the seed's default port");
        assert_eq!((s.command_topic.as_str(), s.state_topic.as_str()), ("/fleet/cmd", "/switch/state/root"));
        assert_eq!(s.version_check, crate::proto::http_pull::VersionCheck::SkipSame);
        assert_eq!(s.timeout_s, 2);
        let zero = MqttProvision { broker: "1.2.3.4", timeout_s: Some(0), ..MqttProvision::default() };
        let page = provisioning_page(&Provision { protocol: 2, mqtt: Some(zero), ..Provision::default() });
        assert_eq!(page, Err(ProvisionError::Timeout));
        assert_eq!(
            format!("{}", s.log_event()),
            "MQTT broker set (nvs), commands on /fleet/cmd, status on /switch/state/root"
        );
        assert_eq!(parse_broker("[::1]:1884"), Some("[::1]:1884".parse().unwrap()));
        assert_eq!(parse_broker("[::1]"), Some("[::1]:1883".parse().unwrap()));
    }

    #[test]
    fn unusable_pull_settings_are_refused_or_skipped() {
        let bad = |m: MqttProvision<'static>| {
            provisioning_page(&Provision { protocol: 2, mqtt: Some(m), ..Provision::default() })
        };
        assert_eq!(
            bad(MqttProvision { broker: "broker.local", ..MqttProvision::default() }),
            Err(ProvisionError::Broker)
        );
        let wild =
            MqttProvision { broker: "1.2.3.4", command_topic: Some("/a/#"), ..MqttProvision::default() };
        assert_eq!(bad(wild), Err(ProvisionError::Topic));
        let vc = MqttProvision { broker: "1.2.3.4", version_check: 3, ..MqttProvision::default() };
        assert_eq!(bad(vc), Err(ProvisionError::VersionCheck(3)));
        // Written by another tool: the device logs and keeps its defaults.
        let mut b = nvs::PageBuilder::new(0);
        let ns = b.namespace(NAMESPACE).unwrap();
        b.str(ns, KEY_MQTT_BROKER, "mqtt.example.com").unwrap();
        b.str(ns, KEY_MQTT_CMD_TOPIC, "a/+/b").unwrap();
        b.u8(ns, KEY_PULL_VERSION_CHECK, 9).unwrap();
        let (s, lines) = mqtt(Some(&b.finish()));
        assert_eq!(s, MqttSettings::default());
        assert_eq!(
            lines,
            [
                "ignoring nvs otahil/mqtt_broker: not ip:port",
                "ignoring nvs otahil/mqtt_cmd_topic: not a topic of 1 to 64 bytes without wildcards",
                "ignoring nvs otahil/pull_vcheck: version check 9 is not 0, 1 or 2",
            ]
        );
    }
}
