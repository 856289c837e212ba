//! The network a board joins (Wi-Fi credentials, provisioned or built in) and the network
//! link's log lines (tag `net`; the emulator and QEMU have no Wi-Fi).

use crate::log::{Level, LogSink, ModuleLine};
use crate::partition::PartitionTable;
use crate::settings::{Source, read_str};
use core::fmt;
use embedded_storage::nor_flash::ReadNorFlash;

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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NetLine<'a> {
    WifiJoining {
        ssid: &'a str,
        from: Source,
    },
    WifiJoined {
        channel: u8,
    },
    WifiJoinFailed {
        reason: &'a str,
        retry_in_s: u8,
    },
    WifiNoCredentials,
    NetAddress {
        ip: [u8; 4],
        prefix: u8,
        dhcp: bool,
    },
    NetAddressLost,
    /// A connection's send buffers were full: `dropped` bytes of what a path sent are lost (its
    /// peer sees a short answer). A path that sends more than a socket and its outbox hold at
    /// once needs streaming the adapter does not offer yet.
    SendOverflow {
        dropped: u32,
    },
}

impl ModuleLine for NetLine<'_> {
    fn level(&self) -> Level {
        use NetLine::*;
        match self {
            WifiNoCredentials | SendOverflow { .. } => Level::Error,
            WifiJoinFailed { .. } | NetAddressLost => Level::Warn,
            WifiJoining { .. } | WifiJoined { .. } | NetAddress { .. } => Level::Info,
        }
    }
    fn tag(&self) -> &'static str {
        "net"
    }
}

impl fmt::Display for NetLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use NetLine::*;
        match self {
            WifiJoining { ssid, from } => write!(f, "joining Wi-Fi \"{ssid}\" (credentials {from})"),
            WifiJoined { channel } => write!(f, "Wi-Fi connected on channel {channel}"),
            WifiJoinFailed { reason, retry_in_s } => {
                write!(f, "Wi-Fi connection failed ({reason}), retrying in {retry_in_s} s")
            }
            WifiNoCredentials => f.write_str(
                "no Wi-Fi credentials: provision nvs otahil/wifi_ssid (and wifi_password) or build with OTAHIL_FW_WIFI_SSID",
            ),
            NetAddress { ip: [a, b, c, d], prefix, dhcp } => {
                write!(f, "address {a}.{b}.{c}.{d}/{prefix} ({})", if *dhcp { "dhcp" } else { "static" })
            }
            NetAddressLost => f.write_str("DHCP lease lost: no address until it is renewed"),
            SendOverflow { dropped } => {
                write!(f, "send buffers full: {dropped} bytes of an answer dropped")
            }
        }
    }
}
