//! What a factory (or the harness) provisions into a device's nvs partition: every path's
//! settings on one NVS page, refused here when the device would refuse them. The device never
//! writes this page; the emulator's `make-flash`, the harness and the tests do.

use crate::nvs;
use crate::proto::arduino::AuthScheme;
use crate::proto::arduino::settings::{KEY_ARDUINO_AUTH, KEY_ARDUINO_PASSWORD};
use crate::proto::esphome::settings::{KEY_PASSWORD, KEY_PROTOCOL};
use crate::proto::homie::settings::{DeviceId, KEY_HOMIE_BROKER, KEY_HOMIE_ID, KEY_HOMIE_OTA};
use crate::proto::mqtt_pull::settings::{
    KEY_MQTT_BROKER, KEY_MQTT_CMD_TOPIC, KEY_MQTT_STATE_TOPIC, KEY_PULL_CA, KEY_PULL_CLOCK, KEY_PULL_RESUME,
    KEY_PULL_TIMEOUT, KEY_PULL_VERSION_CHECK, MAX_BROKER_LEN, MAX_CA_DER, MAX_CA_PEM, MAX_TOPIC_LEN, Topic,
    parse_broker,
};
use crate::settings::{MAX_PASSWORD_LEN, NAMESPACE};
use crate::wifi::{KEY_WIFI_PASSWORD, KEY_WIFI_SSID, MAX_SSID_LEN, MAX_WIFI_PASSWORD_LEN};

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

/// Homie OTA's provisioned settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct HomieProvision<'a> {
    pub broker: &'a str,
    /// The device id in its topics (default: the MAC in hex).
    pub id: Option<&'a str>,
    /// [`KEY_HOMIE_OTA`]: OTA enabled (Homie's default is off).
    pub ota: bool,
}

/// Homie 1.x's provisioned settings (the id and the OTA switch are Homie's, shared with 3.x).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Homie1Provision<'a> {
    pub broker: &'a str,
    pub id: Option<&'a str>,
    pub ota: bool,
    /// The OTA server (`http://host[:port]/path`; default: the broker's host, port 80, `/ota`).
    pub url: Option<&'a str>,
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
    /// Homie OTA's broker, id and switch; not written when `None` (the path stays off).
    pub homie: Option<HomieProvision<'a>>,
    /// Homie 1.x's broker, server and switch; not written when `None` (the path stays off).
    pub homie1: Option<Homie1Provision<'a>>,
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
    if let Some(h) = p.homie {
        if parse_broker(h.broker).is_none() || h.broker.len() > MAX_BROKER_LEN {
            return Err(ProvisionError::Broker);
        }
        page.str(ns, KEY_HOMIE_BROKER, h.broker).map_err(ProvisionError::Nvs)?;
        if let Some(id) = h.id {
            DeviceId::new(id).ok_or(ProvisionError::Topic)?;
            page.str(ns, KEY_HOMIE_ID, id).map_err(ProvisionError::Nvs)?;
        }
        page.u8(ns, KEY_HOMIE_OTA, h.ota as u8).map_err(ProvisionError::Nvs)?;
    }
    if let Some(h) = p.homie1 {
        use crate::proto::homie1::settings::{KEY_HOMIE1_BROKER, KEY_HOMIE1_URL, MAX_URL_LEN};
        if parse_broker(h.broker).is_none() || h.broker.len() > MAX_BROKER_LEN {
            return Err(ProvisionError::Broker);
        }
        page.str(ns, KEY_HOMIE1_BROKER, h.broker).map_err(ProvisionError::Nvs)?;
        if let Some(url) = h.url {
            if url.len() > MAX_URL_LEN || crate::url::Url::parse(url).is_err() {
                return Err(ProvisionError::Url);
            }
            page.str(ns, KEY_HOMIE1_URL, url).map_err(ProvisionError::Nvs)?;
        }
        // The id and the switch are Homie's own keys: written once, by whichever is provisioned.
        if p.homie.is_none() {
            if let Some(id) = h.id {
                DeviceId::new(id).ok_or(ProvisionError::Topic)?;
                page.str(ns, KEY_HOMIE_ID, id).map_err(ProvisionError::Nvs)?;
            }
            page.u8(ns, KEY_HOMIE_OTA, h.ota as u8).map_err(ProvisionError::Nvs)?;
        }
    }
    Ok(page.finish())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProvisionError {
    PasswordTooLong {
        len: usize,
    },
    Protocol(u8),
    Ssid {
        len: usize,
    },
    WifiPasswordTooLong {
        len: usize,
    },
    Broker,
    Topic,
    VersionCheck(u8),
    Timeout,
    Certificate(crate::pem::PemError),
    /// Homie 1.x's OTA server: not an `http(s)://host[:port]/path` URL the device keeps.
    Url,
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
            ProvisionError::Url => write!(
                f,
                "Homie 1.x OTA server: expected http://host[:port]/path (at most {} bytes)",
                crate::proto::homie1::settings::MAX_URL_LEN
            ),
            ProvisionError::Nvs(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::ram::RamFlash;
    use crate::log::LogEvent;
    use crate::partition::PartitionTable;
    use crate::proto::arduino::settings::ArduinoSettings;
    use crate::proto::esphome::settings::OtaSettings;
    use crate::proto::mqtt_pull::settings::MqttSettings;
    use crate::settings::Source;
    use crate::testutil::esphome_4mb_table;
    use crate::wifi::WifiCredentials;
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
            homie: None,
            homie1: None,
        })
        .unwrap();
        let (s, _) = load(Some(&page), OtaSettings::built_in(None, 2));
        assert_eq!((s.password(), s.protocol), (Some(&b"hunter2"[..]), 1));
        assert_eq!((s.password.from, s.protocol_from), (Source::Nvs, Source::Nvs));
        assert_eq!(format!("{}", s.log_line()), "OTA password set (nvs), protocol 1 (nvs)");
        // An empty password switches authentication off even when the build has one.
        let page = provisioning_page(&Provision { protocol: 2, ..Provision::default() }).unwrap();
        let (s, _) = load(Some(&page), OtaSettings::built_in(Some(b"baked"), 2));
        assert_eq!(s.password(), None);
        assert_eq!(format!("{}", s.log_line()), "OTA password none (nvs), protocol 2 (nvs)");
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
                homie: None,
                homie1: None,
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
            std::format!("{}", s.log_line(3232)),
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
            format!("{}", s.tls_log_line().unwrap()),
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
        assert_eq!(format!("{}", s.log_line()), "MQTT off: no broker configured");
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
            format!("{}", s.log_line()),
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
