//! Homie 1.x OTA (homie-esp8266 v1.5 on an ESP32; spec: homie-ota.md §1): the server announces
//! a version on `devices/<id>/$ota`; a device with OTA enabled that runs another version keeps
//! that target in NVS (Homie's `/homie/ota` file) and restarts into "OTA mode", where it pulls
//! the image over HTTP with the Arduino updater, sending `x-ESP32-version: id=name=have=want`
//! (304: no update; 200: the image, `x-MD5` checked if sent). Whatever the result, the flag is
//! cleared and the device restarts into normal mode: into the new image if the pull completed.
//! There is no status over MQTT in 1.x; the device's `$fwversion` after the restart says it.
//!
//! As Homie: a payload equal to the running version is ignored silently; one longer than 16
//! characters is logged and ignored; a power cut in OTA mode leaves the flag, so the next boot
//! pulls again. Differences: the headers are arduino-esp32's `x-ESP32-*` (an ESP8266 sends
//! `x-ESP8266-*`), and a target arriving while another path writes an update is refused (Homie
//! waits until the sketch is resettable; this device has nothing else to wait for).

mod lines;
pub mod service;
pub mod settings;
#[cfg(test)]
mod tests;

pub use lines::Homie1Line;

/// The topics' root in Homie 1.x.
pub const BASE_TOPIC: &str = "devices/";
/// Under the device's topic: where the server announces a version.
pub const OTA_TOPIC: &str = "$ota";
/// Homie's `MAX_FIRMWARE_VERSION_LENGTH` without the NUL.
pub const MAX_VERSION_LEN: usize = 16;

/// A firmware version as Homie 1.x keeps it (at most 16 bytes of UTF-8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Version {
    bytes: [u8; MAX_VERSION_LEN],
    len: usize,
}

impl Version {
    pub fn new(s: &str) -> Option<Version> {
        if s.is_empty() || s.len() > MAX_VERSION_LEN || s.contains('\0') {
            return None;
        }
        let mut bytes = [0u8; MAX_VERSION_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(Version { bytes, len: s.len() })
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// What a message on `$ota` asks of a device running `running`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Offer {
    /// The running version: nothing to do (Homie says nothing).
    Same,
    /// Longer than 16 characters (or not text): logged, ignored.
    TooLong,
    /// Another version: flag it and restart into OTA mode.
    Update(Version),
}

/// Reads a `$ota` payload as Homie 1.5 does.
pub fn offer(payload: &[u8], running: &str) -> Offer {
    match core::str::from_utf8(payload) {
        Ok(v) if v == running => Offer::Same,
        Ok(v) => Version::new(v).map_or(Offer::TooLong, Offer::Update),
        Err(_) => Offer::TooLong,
    }
}

/// `id=name=have=want`, the `x-ESP32-version` header of an OTA-mode pull, into `buf`.
pub fn version_header<'b>(buf: &'b mut [u8; 96], id: &str, name: &str, have: &str, want: &str) -> &'b str {
    let mut len = 0;
    for (i, part) in [id, name, have, want].into_iter().enumerate() {
        if i > 0 && len < buf.len() {
            buf[len] = b'=';
            len += 1;
        }
        let n = part.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&part.as_bytes()[..n]);
        len += n;
    }
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

pub mod script;
