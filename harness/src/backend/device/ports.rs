//! Finding the board's serial port from the bench file: a path (a `/dev/serial/by-id` link
//! included), a USB vendor:product id with an optional serial number, or the MAC the chip
//! reports (each USB serial port is asked through its ROM loader).

use crate::bench::PortSpec;
use serialport::{SerialPortType, UsbPortInfo};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot list the serial ports: {0}")]
    List(#[from] serialport::Error),
    #[error("no USB serial port {vid:04x}:{pid:04x}{} (ports seen: {seen})", serial.as_ref().map(|s| format!(" with serial number {s}")).unwrap_or_default())]
    NoUsb { vid: u16, pid: u16, serial: Option<String>, seen: String },
    #[error("{count} USB serial ports are {vid:04x}:{pid:04x}: give the serial number too ({seen})")]
    Ambiguous { vid: u16, pid: u16, count: usize, seen: String },
    #[error("no serial port's chip reports MAC {mac} (asked: {asked})")]
    NoMac { mac: String, asked: String },
    #[error("a stand-in's port (the emulator's, QEMU's) is set up by the harness, not looked up")]
    Emulator,
}

/// A port's path and USB identity (zeros for a port that is not USB, such as a pty).
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub usb: UsbPortInfo,
}

pub fn not_usb() -> UsbPortInfo {
    UsbPortInfo { vid: 0, pid: 0, serial_number: None, manufacturer: None, product: None, interface: None }
}

fn usb_ports() -> Result<Vec<(PathBuf, UsbPortInfo)>, PortError> {
    Ok(serialport::available_ports()?
        .into_iter()
        .filter_map(|p| match p.port_type {
            SerialPortType::UsbPort(info) => Some((PathBuf::from(p.port_name), info)),
            _ => None,
        })
        .collect())
}

fn describe(ports: &[(PathBuf, UsbPortInfo)]) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports
        .iter()
        .map(|(p, i)| {
            let serial = i.serial_number.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
            format!("{} {:04x}:{:04x}{serial}", p.display(), i.vid, i.pid)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The USB identity of the port at `path` (a link resolved), if the system lists it.
pub fn usb_info_of(path: &Path) -> UsbPortInfo {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    usb_ports()
        .ok()
        .and_then(|ports| {
            ports.into_iter().find(|(p, _)| std::fs::canonicalize(p).ok().as_ref() == Some(&real))
        })
        .map(|(_, info)| info)
        .unwrap_or_else(not_usb)
}

/// The USB port `vid:pid` (and `serial`) among `ports`.
fn pick_usb(
    ports: Vec<(PathBuf, UsbPortInfo)>,
    vid: u16,
    pid: u16,
    serial: Option<&str>,
) -> Result<Found, PortError> {
    let seen = describe(&ports);
    let mut matching: Vec<_> = ports
        .into_iter()
        .filter(|(_, i)| i.vid == vid && i.pid == pid)
        .filter(|(_, i)| serial.is_none_or(|s| i.serial_number.as_deref() == Some(s)))
        .collect();
    match matching.len() {
        0 => Err(PortError::NoUsb { vid, pid, serial: serial.map(str::to_string), seen }),
        1 => {
            let (path, usb) = matching.remove(0);
            Ok(Found { path, usb })
        }
        count => Err(PortError::Ambiguous { vid, pid, count, seen }),
    }
}

/// Where `spec` is now. `probe_mac` asks one port for its chip's MAC (through the ROM
/// loader; it resets that board).
pub fn find(spec: &PortSpec, probe_mac: impl Fn(&Found) -> Option<[u8; 6]>) -> Result<Found, PortError> {
    match spec {
        PortSpec::Path(p) => Ok(Found { path: p.clone(), usb: usb_info_of(p) }),
        PortSpec::Usb { vid, pid, serial } => pick_usb(usb_ports()?, *vid, *pid, serial.as_deref()),
        PortSpec::Mac(mac) => {
            let ports = usb_ports()?;
            let asked = describe(&ports);
            ports
                .into_iter()
                .map(|(path, usb)| Found { path, usb })
                .find(|f| probe_mac(f) == Some(*mac))
                .ok_or_else(|| PortError::NoMac { mac: format_mac(mac), asked })
        }
        PortSpec::Emulator | PortSpec::Qemu => Err(PortError::Emulator),
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(path: &str, vid: u16, pid: u16, serial: Option<&str>) -> (PathBuf, UsbPortInfo) {
        let info = UsbPortInfo {
            vid,
            pid,
            serial_number: serial.map(str::to_string),
            manufacturer: None,
            product: None,
            interface: None,
        };
        (PathBuf::from(path), info)
    }

    #[test]
    fn usb_ports_are_picked_by_id_and_serial_number() {
        let ports = || {
            vec![
                port("/dev/ttyACM0", 0x303a, 0x1001, Some("C4:0A:24:FE:10:01")),
                port("/dev/ttyACM1", 0x303a, 0x1001, Some("C4:0A:24:FE:10:02")),
                port("/dev/ttyUSB0", 0x10c4, 0xea60, Some("0001")),
            ]
        };
        let f = pick_usb(ports(), 0x10c4, 0xea60, None).unwrap();
        assert_eq!(f.path, PathBuf::from("/dev/ttyUSB0"));
        let f = pick_usb(ports(), 0x303a, 0x1001, Some("C4:0A:24:FE:10:02")).unwrap();
        assert_eq!(f.path, PathBuf::from("/dev/ttyACM1"));
        let e = pick_usb(ports(), 0x303a, 0x1001, None).unwrap_err();
        assert!(e.to_string().contains("2 USB serial ports are 303a:1001: give the serial number"), "{e}");
        let e = pick_usb(ports(), 0x303a, 0x1001, Some("nope")).unwrap_err();
        assert!(e.to_string().contains("no USB serial port 303a:1001 with serial number nope"), "{e}");
        assert!(e.to_string().contains("/dev/ttyUSB0 10c4:ea60 0001"), "{e}");
    }

    #[test]
    fn a_path_that_is_not_usb_has_no_usb_identity() {
        let f = find(&PortSpec::Path("/dev/pts/999".into()), |_| None).unwrap();
        assert_eq!((f.usb.vid, f.usb.pid), (0, 0));
        assert!(matches!(find(&PortSpec::Emulator, |_| None), Err(PortError::Emulator)));
    }
}
