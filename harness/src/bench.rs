//! The bench file: how the `device` backend reaches one ESP32-C3 on a lab bench (its serial
//! port, how to flash and reset it, an optional power switch, where its update endpoints are,
//! the Wi-Fi network to provision). Strict YAML like a scenario: an unknown key, a value of the
//! wrong kind or a setting that cannot work is an error at its file:line:column.
//! `fixtures/bench.example.yaml` documents every field.

use crate::scenario::{ScenarioError, parse_duration, read_text, yaml_error};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An error in a bench file, at its place (the same form as a scenario's).
pub type BenchError = ScenarioError;

/// Which serial port is the board's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A device path (`/dev/ttyACM0`, a `/dev/serial/by-id/…` link).
    Path(PathBuf),
    /// The USB device with this vendor and product id, and this serial number if given.
    Usb { vid: u16, pid: u16, serial: Option<String> },
    /// The port whose chip reports this MAC (the harness probes the ports it finds).
    Mac([u8; 6]),
    /// The CI stand-in: the harness starts the emulator with its UART on a pseudo-terminal.
    Emulator,
    /// Espressif's QEMU as the board: flashed through the real ROM loader in download boot mode
    /// (strap 0x02, UART on a pty), then restarted in flash boot mode on the same flash file.
    Qemu,
}

/// How the board is flashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashMethod {
    /// espflash through the ROM loader with the flasher stub (compressed, fast).
    Espflash,
    /// espflash through the ROM loader only (some USB-JTAG bridges fail with the stub).
    EspflashNoStub,
    /// probe-rs over the chip's USB-JTAG (cargo feature `probe-rs`): no download mode needed.
    /// The board's identity and the read-back still go through espflash's stub on `port`
    /// (probe-rs has no flash-dump call).
    ProbeRs,
}

/// Which debug probe flashes the board (`flash: probe-rs`): USB vendor:product id and serial
/// number, as probe-rs selects probes. By default the board's own USB-JTAG (303a:1001), with the
/// port's serial number when the port is given by USB id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub vid: u16,
    pub pid: u16,
    pub serial: Option<String>,
}

/// The ESP32-C3's built-in USB-Serial-JTAG.
pub const USB_JTAG: (u16, u16) = (0x303a, 0x1001);

/// Whether this otahil was built with probe-rs (cargo feature `probe-rs`).
pub const HAS_PROBE_RS: bool = cfg!(feature = "probe-rs");

/// How the board is reset (into download mode for flashing, into its app afterwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetMethod {
    /// Chosen from the port's USB product id, as espflash does: USB-JTAG-Serial (303a:1001) or
    /// the classic DTR/RTS circuit of a USB-UART bridge.
    Auto,
    UsbJtag,
    Classic,
    /// Nothing resets it (download mode by hand, or through the control channel on the emulator).
    None,
    /// A program that resets it (a relay on EN, a debug probe).
    Command(Vec<String>),
}

// The bench's values as a bench file writes them, for messages and `otahil check`.

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSpec::Path(p) => write!(f, "{}", p.display()),
            PortSpec::Usb { vid, pid, serial: None } => write!(f, "usb {vid:04x}:{pid:04x}"),
            PortSpec::Usb { vid, pid, serial: Some(s) } => write!(f, "usb {vid:04x}:{pid:04x} serial {s}"),
            PortSpec::Mac(m) => write!(f, "mac {}", m.map(|b| format!("{b:02x}")).join(":")),
            PortSpec::Emulator => f.write_str("emulator"),
            PortSpec::Qemu => f.write_str("qemu"),
        }
    }
}

impl std::fmt::Display for FlashMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlashMethod::Espflash => "espflash",
            FlashMethod::EspflashNoStub => "espflash-no-stub",
            FlashMethod::ProbeRs => "probe-rs",
        })
    }
}

impl std::fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResetMethod::Auto => f.write_str("auto"),
            ResetMethod::UsbJtag => f.write_str("usb-jtag"),
            ResetMethod::Classic => f.write_str("classic"),
            ResetMethod::None => f.write_str("none"),
            ResetMethod::Command(argv) => write!(f, "command `{}`", argv.join(" ")),
        }
    }
}

impl std::fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vid, self.pid)?;
        match &self.serial {
            Some(s) => write!(f, ":{s}"),
            None => Ok(()),
        }
    }
}

/// A power switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerSwitch {
    /// Programs that switch the board's power (uhubctl, a relay, a smart plug), and how long the
    /// board is left off.
    Commands { off: Vec<String>, on: Vec<String>, settle: Duration },
    /// The emulator's control channel (`power-off`, `power-on`): only with `port: emulator`.
    Emulator,
    /// Stopping and starting the QEMU process: only with `port: qemu`.
    Qemu,
}

/// Where the board's update endpoints are.
#[derive(Debug, Clone)]
pub enum Address {
    /// A fixed host name or IP address.
    Fixed(String),
    /// The first capture group of the first serial line that matches (after each boot).
    FromLog(regex::Regex),
    /// The emulator's own listening sockets.
    Emulator,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wifi {
    pub ssid: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub struct Bench {
    pub file: PathBuf,
    pub name: String,
    pub port: PortSpec,
    pub log_port: Option<PathBuf>,
    pub baud: u32,
    pub flash_baud: u32,
    pub flash: FlashMethod,
    /// The probe for `flash: probe-rs`.
    pub probe: Option<ProbeSpec>,
    pub reset: ResetMethod,
    pub power: Option<PowerSwitch>,
    pub address: Address,
    /// This machine's address as the board reaches it (the MQTT broker and the firmware server
    /// of the pull scenarios listen there); `None`: the pull scenarios are skipped.
    pub harness_address: Option<std::net::IpAddr>,
    pub esphome_port: u16,
    pub arduino_port: u16,
    /// The board's web server (the upload form), TCP.
    pub web_port: u16,
    pub wifi: Option<Wifi>,
}

impl Bench {
    /// Without a power switch there is no power cycle and no power cut: scenarios that need
    /// them are skipped with that reason.
    pub fn has_power_switch(&self) -> bool {
        self.power.is_some()
    }

    /// The firmware the board runs: `fixtures` (the emulator standing in runs the fixture
    /// images), or `wifi` (a board joins its network: `cargo xtask firmware --wifi`).
    pub fn firmware(&self) -> &'static str {
        match self.port {
            PortSpec::Emulator => "fixtures",
            PortSpec::Qemu => "qemu",
            _ => "wifi",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBench {
    name: Spanned<String>,
    port: Spanned<RawPort>,
    log_port: Option<Spanned<String>>,
    baud: Option<Spanned<u32>>,
    flash_baud: Option<Spanned<u32>>,
    flash: Option<Spanned<String>>,
    probe: Option<Spanned<String>>,
    reset: Option<Spanned<RawReset>>,
    power: Option<Spanned<RawPower>>,
    address: Option<Spanned<String>>,
    address_from_log: Option<Spanned<String>>,
    harness_address: Option<Spanned<String>>,
    // Wider than a port so that 70000 is refused in a port's words, not a type's.
    esphome_port: Option<Spanned<u64>>,
    arduino_port: Option<Spanned<u64>>,
    web_port: Option<Spanned<u64>>,
    wifi: Option<Spanned<RawWifi>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Path(String),
    Usb {
        usb: String,
        #[serde(default)]
        serial: Option<String>,
    },
    Mac {
        mac: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawReset {
    Named(String),
    Command { command: Vec<String> },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPower {
    Named(String),
    // Not `off`/`on`: YAML 1.1 reads those keys as booleans.
    Commands {
        switch_off: Vec<String>,
        switch_on: Vec<String>,
        #[serde(default)]
        settle: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWifi {
    ssid: String,
    #[serde(default)]
    password: String,
}

/// The fastest rate the ESP32-C3's UART and USB-Serial-JTAG are driven at by the flashers.
const MAX_BAUD: u32 = 3_000_000;
const MIN_BAUD: u32 = 9_600;

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn at<T, U>(&self, s: &Spanned<U>, message: impl Into<String>) -> Result<T, BenchError> {
        Err(ScenarioError {
            file: self.file.to_path_buf(),
            line: s.referenced.line(),
            column: s.referenced.column(),
            message: message.into(),
        })
    }
}

pub fn load(path: &Path) -> Result<Bench, BenchError> {
    parse(&read_text(path)?, path)
}

pub fn parse(text: &str, path: &Path) -> Result<Bench, BenchError> {
    let raw: RawBench = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column, message) = yaml_error(&e);
        ScenarioError { file: path.to_path_buf(), line, column, message: bench_words(message) }
    })?;
    check(raw, &Ctx { file: path })
}

/// The loader's words for this file's untagged choices.
fn bench_words(message: String) -> String {
    if message.contains("RawPort") {
        return "port: expected a device path, `emulator`, { usb: \"VID:PID\", serial: S } or { mac: MAC }"
            .into();
    }
    if message.contains("RawReset") {
        return "reset: expected auto, usb-jtag, classic, none or { command: [program, args…] }".into();
    }
    if message.contains("RawPower") {
        return "power: expected { switch_off: [program, args…], switch_on: [program, args…], settle: 500ms } or `emulator`".into();
    }
    message
}

fn hex_u16(text: &str) -> Option<u16> {
    (text.len() == 4).then(|| u16::from_str_radix(text, 16).ok()).flatten()
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

fn argv<U>(cx: &Ctx<'_>, at: &Spanned<U>, what: &str, argv: Vec<String>) -> Result<Vec<String>, BenchError> {
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return cx
            .at(at, format!("{what}: expected a program and its arguments, such as [uhubctl, -a, off]"));
    }
    Ok(argv)
}

fn check(raw: RawBench, cx: &Ctx<'_>) -> Result<Bench, BenchError> {
    let name = &raw.name;
    if name.value.is_empty() || !name.value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return cx.at(name, "name must be non-empty and use only letters, digits, `-` and `_`");
    }
    let port = match &raw.port.value {
        RawPort::Path(p) if p == "emulator" => PortSpec::Emulator,
        RawPort::Path(p) if p == "qemu" => PortSpec::Qemu,
        RawPort::Path(p) if p.trim().is_empty() => return cx.at(&raw.port, "port: an empty path"),
        RawPort::Path(p) => PortSpec::Path(PathBuf::from(p)),
        RawPort::Usb { usb, serial } => {
            let ids = usb.split_once(':').and_then(|(v, p)| Some((hex_u16(v)?, hex_u16(p)?)));
            let Some((vid, pid)) = ids else {
                return cx
                    .at(&raw.port, format!("port usb `{usb}`: expected VID:PID in hex, such as 303a:1001"));
            };
            PortSpec::Usb { vid, pid, serial: serial.clone() }
        }
        RawPort::Mac { mac } => match parse_mac(mac) {
            Some(m) => PortSpec::Mac(m),
            None => {
                return cx.at(
                    &raw.port,
                    format!("port mac `{mac}`: expected six hex bytes, such as c4:0a:24:fe:10:01"),
                );
            }
        },
    };
    // QEMU is set up by the harness as the emulator is: no ports, resets or addresses to give.
    let emulator = matches!(port, PortSpec::Emulator | PortSpec::Qemu);
    let qemu = port == PortSpec::Qemu;
    let log_port = match raw.log_port {
        Some(l) if emulator => {
            return cx.at(&l, "log_port: the emulator's log is on its UART; remove log_port");
        }
        Some(l) if l.value.trim().is_empty() => return cx.at(&l, "log_port: an empty path"),
        Some(l) => Some(PathBuf::from(l.value)),
        None => None,
    };
    let rate = |r: Option<Spanned<u32>>, default: u32, what: &str| match r {
        None => Ok(default),
        Some(b) if (MIN_BAUD..=MAX_BAUD).contains(&b.value) => Ok(b.value),
        Some(b) => cx.at(&b, format!("{what} {}: expected {MIN_BAUD} to {MAX_BAUD}", b.value)),
    };
    let baud = rate(raw.baud, 115_200, "baud")?;
    let flash_baud = rate(raw.flash_baud, 921_600, "flash_baud")?;
    let flash = match &raw.flash {
        None if qemu => FlashMethod::EspflashNoStub,
        None => FlashMethod::Espflash,
        Some(f) => match f.value.as_str() {
            "espflash" if qemu => {
                return cx.at(f, "flash espflash: the stub does not finish writing under QEMU; use espflash-no-stub (the real ROM loader)");
            }
            "espflash" => FlashMethod::Espflash,
            "espflash-no-stub" => FlashMethod::EspflashNoStub,
            "probe-rs" if emulator => {
                return cx.at(f, "flash probe-rs: a stand-in (the emulator, QEMU) has no USB-JTAG; use espflash or espflash-no-stub");
            }
            "probe-rs" if !HAS_PROBE_RS => {
                return cx.at(f, "flash probe-rs: this otahil was built without probe-rs; build it with `--features probe-rs` (`cargo xtask hil --probe-rs …`), or use espflash");
            }
            "probe-rs" => FlashMethod::ProbeRs,
            other => {
                return cx.at(f, format!("flash `{other}`: expected espflash, espflash-no-stub or probe-rs"));
            }
        },
    };
    let probe = match (&raw.probe, flash) {
        (Some(p), FlashMethod::ProbeRs) => {
            let mut parts = p.value.splitn(3, ':');
            let ids = (parts.next().and_then(hex_u16), parts.next().and_then(hex_u16));
            let (Some(vid), Some(pid)) = ids else {
                return cx.at(
                    p,
                    format!("probe `{}`: expected VID:PID or VID:PID:SERIAL in hex, such as 303a:1001:C4:0A:24:FE:10:01", p.value),
                );
            };
            let serial = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
            Some(ProbeSpec { vid, pid, serial })
        }
        (Some(p), _) => return cx.at(p, "probe: only with flash: probe-rs"),
        (None, FlashMethod::ProbeRs) => Some(match &port {
            PortSpec::Usb { vid, pid, serial } if (*vid, *pid) == USB_JTAG => {
                ProbeSpec { vid: *vid, pid: *pid, serial: serial.clone() }
            }
            _ => ProbeSpec { vid: USB_JTAG.0, pid: USB_JTAG.1, serial: None },
        }),
        (None, _) => None,
    };
    let reset = match raw.reset {
        None if emulator => ResetMethod::None,
        None => ResetMethod::Auto,
        Some(r) => {
            let method = match &r.value {
                RawReset::Named(n) => match n.as_str() {
                    "auto" => ResetMethod::Auto,
                    "usb-jtag" => ResetMethod::UsbJtag,
                    "classic" => ResetMethod::Classic,
                    "none" => ResetMethod::None,
                    other => {
                        return cx.at(&r, format!("reset `{other}`: expected auto, usb-jtag, classic, none or {{ command: […] }}"));
                    }
                },
                RawReset::Command { command } => {
                    ResetMethod::Command(argv(cx, &r, "reset command", command.clone())?)
                }
            };
            if emulator && method != ResetMethod::None {
                return cx.at(
                    &r,
                    "reset: the emulator is reset through its control channel; use none or leave it out",
                );
            }
            method
        }
    };
    let power = match raw.power {
        None => None,
        Some(p) => Some(match &p.value {
            RawPower::Named(n) if n == "qemu" && qemu => PowerSwitch::Qemu,
            RawPower::Named(n) if n == "emulator" && emulator && !qemu => PowerSwitch::Emulator,
            RawPower::Named(n) if n == "emulator" => {
                return cx.at(&p, "power emulator: only with port: emulator");
            }
            RawPower::Named(other) => {
                return cx.at(
                    &p,
                    format!("power `{other}`: expected {{ switch_off: […], switch_on: […] }} or emulator"),
                );
            }
            RawPower::Commands { switch_off, switch_on, settle } => {
                let settle = match settle {
                    None => Duration::from_millis(500),
                    Some(t) => match parse_duration(t) {
                        Ok(d) if d <= Duration::from_secs(60) => d,
                        _ => {
                            return cx.at(
                                &p,
                                format!("power settle `{t}`: expected a duration up to 60s, such as 500ms"),
                            );
                        }
                    },
                };
                let off = argv(cx, &p, "power switch_off", switch_off.clone())?;
                let on = argv(cx, &p, "power switch_on", switch_on.clone())?;
                PowerSwitch::Commands { off, on, settle }
            }
        }),
    };
    let address = match (raw.address, raw.address_from_log) {
        (Some(a), Some(_)) => return cx.at(&a, "address and address_from_log: give one of them"),
        (Some(a), None) if emulator => {
            return cx.at(&a, "address: the emulator's endpoints are its own; remove it");
        }
        (None, Some(l)) if emulator => {
            return cx.at(&l, "address_from_log: the emulator's endpoints are its own; remove it");
        }
        (Some(a), None) if a.value.trim().is_empty() || a.value.contains(char::is_whitespace) => {
            return cx.at(&a, format!("address `{}`: expected a host name or an IP address", a.value));
        }
        (Some(a), None) => Address::Fixed(a.value),
        (None, Some(l)) => match regex::Regex::new(&l.value) {
            Ok(re) if re.captures_len() == 2 => Address::FromLog(re),
            Ok(_) => {
                return cx.at(
                    &l,
                    "address_from_log: expected a regex with exactly one capture group, the address",
                );
            }
            Err(e) => return cx.at(&l, format!("address_from_log: not a regex: {e}")),
        },
        (None, None) if emulator => Address::Emulator,
        (None, None) => {
            return cx.at(
                &raw.name,
                "no address: give address (host or IP) or address_from_log (a regex on the serial log)",
            );
        }
    };
    let harness_address = match raw.harness_address {
        None => None,
        Some(a) if emulator => {
            return cx.at(&a, "harness_address: the emulator reaches this machine on its own; remove it");
        }
        Some(a) => match a.value.parse::<std::net::IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => Some(ip),
            _ => {
                return cx.at(
                    &a,
                    format!(
                        "harness_address `{}`: expected this machine's IP address on the board's network (the firmware has no DNS)",
                        a.value
                    ),
                );
            }
        },
    };
    let tcp_port_or = |p: Option<Spanned<u64>>, what: &str, default: u16| match p {
        None => Ok(default),
        Some(p) => match u16::try_from(p.value) {
            Ok(port) if port != 0 => Ok(port),
            _ => cx.at(&p, format!("{what} {}: expected a port from 1 to 65535", p.value)),
        },
    };
    let esphome_port = tcp_port_or(raw.esphome_port, "esphome_port", 3232)?;
    let arduino_port = tcp_port_or(raw.arduino_port, "arduino_port", 3232)?;
    let web_port = tcp_port_or(raw.web_port, "web_port", ota_core::proto::web_form::DEFAULT_PORT)?;
    let wifi = match raw.wifi {
        None => None,
        Some(w) => {
            let RawWifi { ssid, password } = &w.value;
            if ssid.is_empty() || ssid.len() > 32 {
                return cx.at(&w, format!("wifi ssid of {} bytes: expected 1 to 32", ssid.len()));
            }
            if !password.is_empty() && !(8..=63).contains(&password.len()) {
                return cx.at(
                    &w,
                    format!(
                        "wifi password of {} characters: WPA2 takes 8 to 63 (or none for an open network)",
                        password.len()
                    ),
                );
            }
            Some(Wifi { ssid: ssid.clone(), password: password.clone() })
        }
    };
    Ok(Bench {
        file: cx.file.to_path_buf(),
        name: raw.name.value,
        port,
        log_port,
        baud,
        flash_baud,
        flash,
        probe,
        reset,
        power,
        address,
        harness_address,
        esphome_port,
        arduino_port,
        web_port,
        wifi,
    })
}

#[cfg(test)]
mod tests;
