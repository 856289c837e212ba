//! What a factory (or the harness) provisions into a device's nvs partition: the device's own
//! settings and each update path's, on one NVS page, refused here when the device would refuse
//! them. Each path writes its settings itself ([`PathProvision`], in its `settings` module);
//! this module knows none of them. The device never writes this page; the emulator's
//! `make-flash`, the harness and the tests do.

use crate::nvs;
use crate::pem::PemError;
use crate::proto::esphome::settings::{KEY_PASSWORD, KEY_PROTOCOL};
use crate::settings::{MAX_PASSWORD_LEN, NAMESPACE};
use crate::wifi::{KEY_WIFI_PASSWORD, KEY_WIFI_SSID, MAX_SSID_LEN, MAX_WIFI_PASSWORD_LEN};

/// The settings every device has: ESPHome's password and protocol (the base path, always on)
/// and the network it joins.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Provision<'a> {
    /// `None` is stored as the empty string: no authentication, whatever the build says.
    pub ota_password: Option<&'a str>,
    /// 1 or 2.
    pub protocol: u8,
    /// SSID and password of the network to join (boards with the `wifi` build).
    pub wifi: Option<(&'a str, &'a str)>,
}

/// An update path's provisioned settings: written on the page by the path's own code, checked
/// as the device would check them when it reads them back.
pub trait PathProvision {
    fn write(&self, page: &mut SettingsPage) -> Result<(), ProvisionError>;
}

/// Who confirms new images (`confirm`, read by the boot guard): a device setting, not a path's.
impl PathProvision for crate::boot::Confirm {
    fn write(&self, page: &mut SettingsPage) -> Result<(), ProvisionError> {
        page.u8(crate::boot::KEY_CONFIRM, u8::from(*self == crate::boot::Confirm::App))
    }
}

/// The provisioning page being filled: the device's namespace, one writer per value type.
pub struct SettingsPage {
    page: nvs::PageBuilder,
    ns: u8,
}

impl SettingsPage {
    /// A page holding the device's own settings (`p`), ready for the paths' settings.
    pub fn new(p: &Provision<'_>) -> Result<Self, ProvisionError> {
        let password = p.ota_password.unwrap_or("");
        if password.len() > MAX_PASSWORD_LEN {
            return Err(ProvisionError::PasswordTooLong { len: password.len() });
        }
        if !(1..=2).contains(&p.protocol) {
            return Err(ProvisionError::Protocol(p.protocol));
        }
        let mut page = nvs::PageBuilder::new(0);
        let ns = page.namespace(NAMESPACE).map_err(ProvisionError::Nvs)?;
        let mut this = SettingsPage { page, ns };
        this.str(KEY_PASSWORD, password)?;
        this.u8(KEY_PROTOCOL, p.protocol)?;
        if let Some((ssid, wifi_password)) = p.wifi {
            if ssid.is_empty() || ssid.len() > MAX_SSID_LEN {
                return Err(ProvisionError::Ssid { len: ssid.len() });
            }
            if wifi_password.len() > MAX_WIFI_PASSWORD_LEN {
                return Err(ProvisionError::WifiPasswordTooLong { len: wifi_password.len() });
            }
            this.str(KEY_WIFI_SSID, ssid)?;
            this.str(KEY_WIFI_PASSWORD, wifi_password)?;
        }
        Ok(this)
    }

    /// Adds a path's settings.
    pub fn path(&mut self, path: &dyn PathProvision) -> Result<&mut Self, ProvisionError> {
        path.write(self)?;
        Ok(self)
    }

    pub fn str(&mut self, key: &str, value: &str) -> Result<(), ProvisionError> {
        self.page.str(self.ns, key, value).map_err(ProvisionError::Nvs)
    }

    pub fn u8(&mut self, key: &str, value: u8) -> Result<(), ProvisionError> {
        self.page.u8(self.ns, key, value).map_err(ProvisionError::Nvs)
    }

    /// Whether `key` is written already: for a key two paths share (the first one's value
    /// stays; the device reads one).
    pub fn has(&self, key: &str) -> bool {
        self.page.has(self.ns, key)
    }

    pub fn finish(self) -> [u8; nvs::PAGE_SIZE] {
        self.page.finish()
    }
}

/// An NVS page holding `p` and each of `paths`' settings, for provisioning a flash image: the
/// page decides what it holds whatever the firmware has built in.
pub fn provisioning_page(
    p: &Provision<'_>,
    paths: &[&dyn PathProvision],
) -> Result<[u8; nvs::PAGE_SIZE], ProvisionError> {
    let mut page = SettingsPage::new(p)?;
    for path in paths {
        page.path(*path)?;
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
    /// A path's setting the device would not take.
    Setting {
        what: &'static str,
        problem: SettingProblem,
    },
    Nvs(nvs::BuildError),
}

/// What is wrong with a path's setting.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SettingProblem {
    TooLong {
        len: usize,
        max: usize,
    },
    /// Not of the form `expected`.
    Malformed {
        expected: &'static str,
    },
    /// A number outside `expected`.
    OutOfRange {
        value: u64,
        expected: &'static str,
    },
    Certificate(PemError),
}

impl ProvisionError {
    /// A path's setting `what` with `problem`.
    pub fn setting(what: &'static str, problem: SettingProblem) -> Self {
        ProvisionError::Setting { what, problem }
    }
}

/// `value` in decimal, in `buf`.
pub fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &str {
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
            ProvisionError::Setting { what, problem } => match problem {
                SettingProblem::TooLong { len, max } => write!(f, "{what} of {len} bytes: at most {max}"),
                SettingProblem::Malformed { expected } => write!(f, "{what}: expected {expected}"),
                SettingProblem::OutOfRange { value, expected } => {
                    write!(f, "{what} {value}: expected {expected}")
                }
                SettingProblem::Certificate(e) => write!(f, "{what}: {e}"),
            },
            ProvisionError::Nvs(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogEvent;
    use crate::proto::esphome::settings::OtaSettings;
    use crate::settings::Source;
    use crate::wifi::WifiCredentials;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    fn device(page: Option<&[u8]>) -> (crate::flash::ram::RamFlash, crate::partition::PartitionTable) {
        crate::testutil::provisioned_flash(page)
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
        let page =
            provisioning_page(&Provision { ota_password: Some("hunter2"), protocol: 1, wifi: None }, &[])
                .unwrap();
        let (s, _) = load(Some(&page), OtaSettings::built_in(None, 2));
        assert_eq!((s.password(), s.protocol), (Some(&b"hunter2"[..]), 1));
        assert_eq!((s.password.from, s.protocol_from), (Source::Nvs, Source::Nvs));
        assert_eq!(format!("{}", s.log_line()), "OTA password set (nvs), protocol 1 (nvs)");
        // An empty password switches authentication off even when the build has one.
        let page = provisioning_page(&Provision { protocol: 2, ..Provision::default() }, &[]).unwrap();
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
            provisioning_page(&Provision { ota_password: Some(&long), protocol: 2, wifi: None }, &[]),
            Err(ProvisionError::PasswordTooLong { len: MAX_PASSWORD_LEN + 1 })
        );
        assert_eq!(provisioning_page(&Provision::default(), &[]), Err(ProvisionError::Protocol(0)));
    }

    #[test]
    fn wifi_credentials_come_from_nvs_then_the_build() {
        let (mut flash, table) = device(None);
        let none = WifiCredentials::load(&mut flash, &table, "", "", &mut |_: &LogEvent<'_>| {});
        assert_eq!(none, None, "no SSID anywhere: nothing to join");
        let built =
            WifiCredentials::load(&mut flash, &table, "lab", "secret", &mut |_: &LogEvent<'_>| {}).unwrap();
        assert_eq!((built.ssid(), built.password(), built.from), ("lab", "secret", Source::BuiltIn));
        let page = provisioning_page(
            &Provision { protocol: 2, wifi: Some(("bench-5", "")), ..Provision::default() },
            &[],
        )
        .unwrap();
        let (mut flash, table) = device(Some(&page));
        let c =
            WifiCredentials::load(&mut flash, &table, "lab", "secret", &mut |_: &LogEvent<'_>| {}).unwrap();
        assert_eq!((c.ssid(), c.password(), c.from), ("bench-5", "", Source::Nvs));
        let e =
            provisioning_page(&Provision { protocol: 2, wifi: Some(("", "x")), ..Provision::default() }, &[]);
        assert_eq!(e, Err(ProvisionError::Ssid { len: 0 }));
        let long = "s".repeat(33);
        let e = provisioning_page(
            &Provision { protocol: 2, wifi: Some((&long, "")), ..Provision::default() },
            &[],
        );
        assert_eq!(format!("{}", e.unwrap_err()), "SSID of 33 bytes: expected 1 to 32");
    }
}
