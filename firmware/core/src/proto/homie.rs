//! Homie OTA 3.x (and 2.x): the firmware pushed as one MQTT message on
//! `homie/<id>/$implementation/ota/firmware/<md5>`, raw or base64, written piece by piece as it
//! comes (never whole in RAM), with the status on `homie/<id>/$implementation/ota/status`.
//! Spec: homie-ota.md §2. This module is the receiver: pieces in, statuses, log events and
//! writes out ([`Ota`]); [`service`] is the device's MQTT session around it.
//!
//! The device behaves as homie-esp8266 (v3.0.1) on an ESP32 does, with two deliberate
//! differences, both where the cores lose an update or write one that should not be:
//! - The MD5 in the topic is checked against the image (current cores never check it:
//!   `Update.begin` clears the MD5 Homie set): a mismatch is `400 BAD_CHECKSUM` and the boot
//!   slot is not switched.
//! - A transfer cut by a broker loss is aborted; the next message starts afresh (the cores keep
//!   the `Update` running and fail every later transfer until a reboot).
//!
//! What follows the cores: `403` when OTA is disabled, `304` when the topic's MD5 equals the
//! running image's (byte for byte, so an uppercase MD5 never matches), `202` then `206 w/t`
//! for every piece, `200` and a reboot; the ESP32 mapping of `Update` errors (a bad size, a
//! wrong magic byte and a bad payload are all `400 BAD_CHECKSUM`); and a retained firmware
//! message is handled at every delivery (`304` once it runs).

mod base64;
mod lines;
pub mod service;
pub mod settings;
#[cfg(test)]
mod tests;

pub use lines::HomieLine;

use crate::log::LogEvent;
use crate::proto::arduino::UpdateError;
use crate::slot::{BootIndex, SlotName};
use crate::update::UpdateSink;
use crate::writer::OtaError;
use base64::{Base64, Base64Error};
use core::fmt;
use md5::{Digest, Md5};

/// The topics' root (Homie's default base topic).
pub const BASE_TOPIC: &str = "homie/";
/// The Homie convention the device announces (`$homie`).
pub const CONVENTION: &str = "3.0.1";
/// Under the device's topic: where the firmware comes, and where the status goes.
pub const FIRMWARE_TOPIC: &str = "$implementation/ota/firmware/";
pub const STATUS_TOPIC: &str = "$implementation/ota/status";
/// The first byte of an ESP32 image (`ESP_IMAGE_HEADER_MAGIC`).
const IMAGE_MAGIC: u8 = 0xE9;

/// `Homie_setFirmware`'s magic bytes (homie-ota.md §3): the name and the version framed so an
/// OTA server (`homie-ota`, `firmware_parser.py`) reads them from the binary.
pub const NAME_LEFT: [u8; 5] = [0xBF, 0x84, 0xE4, 0x13, 0x54];
pub const NAME_RIGHT: [u8; 5] = [0x93, 0x44, 0x6B, 0xA7, 0x75];
pub const VERSION_LEFT: [u8; 5] = [0x6A, 0x3F, 0x3E, 0x0E, 0xE1];
pub const VERSION_RIGHT: [u8; 5] = [0xB0, 0x30, 0x48, 0xD4, 0x1A];
/// The signature `firmware_parser.py` looks for.
pub const SIGNATURE: [u8; 18] = *b"%HOMIE_ESP8266_FW%";

/// `text` between `left` and `right`, as a firmware embeds it (`N` = `text.len() + 10`); a
/// `static` of it in the image is what servers find.
pub const fn framed<const N: usize>(left: [u8; 5], text: &str, right: [u8; 5]) -> [u8; N] {
    let mut out = [0u8; N];
    let t = text.as_bytes();
    assert!(N == t.len() + 10, "N must be the text's length + 10");
    let mut i = 0;
    while i < 5 {
        out[i] = left[i];
        out[N - 5 + i] = right[i];
        i += 1;
    }
    let mut j = 0;
    while j < t.len() {
        out[5 + j] = t[j];
        j += 1;
    }
    out
}

/// The text framed by `left` and `right` in `image`, as `homie-ota` finds it (`None`: absent).
pub fn find_framed<'i>(image: &'i [u8], left: &[u8; 5], right: &[u8; 5]) -> Option<&'i [u8]> {
    let start = image.windows(5).position(|w| w == left)? + 5;
    let len = image[start..].windows(5).position(|w| w == right)?;
    Some(&image[start..start + len])
}

/// What the device publishes on the status topic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    /// `202`: the firmware is taken.
    Accepted,
    /// `206 written/total`.
    Progress { written: u32, total: u32 },
    /// `200`: written, verified, the boot slot switched; the device restarts.
    Done,
    /// `304`: the device runs this firmware already.
    NotModified,
    /// `403`: OTA is disabled.
    Disabled,
    /// `400 BAD_CHECKSUM`.
    BadChecksum,
    /// `400 NOT_ENOUGH_SPACE`.
    NotEnoughSpace,
    /// `500 FLASH_ERROR`.
    FlashError,
    /// `500 INTERNAL_ERROR n`: the `Update` library's error number (0: `begin` refused without
    /// one, as when another update runs).
    Internal(u8),
}

impl Status {
    /// The status for an `Update` library error, as Homie maps them on an ESP32.
    pub fn of(error: UpdateError) -> Status {
        match error {
            // On an ESP32 these fall through Homie's ESP8266-only branch to the MD5 case.
            UpdateError::Size | UpdateError::MagicByte | UpdateError::Md5 => Status::BadChecksum,
            UpdateError::Space => Status::NotEnoughSpace,
            UpdateError::Write | UpdateError::Erase | UpdateError::Read => Status::FlashError,
            other => Status::Internal(other as u8),
        }
    }

    /// A status as the device publishes it (`206 12/34`, `400 BAD_CHECKSUM`); `None` for any
    /// other text. The one reader of it: an OTA server, the harness and the tests use it.
    pub fn parse(text: &str) -> Option<Status> {
        let (code, rest) = match text.split_once(' ') {
            None => (text, ""),
            Some((_, "")) => return None,
            Some(split) => split,
        };
        Some(match (code, rest) {
            ("202", "") => Status::Accepted,
            ("200", "") => Status::Done,
            ("304", "") => Status::NotModified,
            ("403", "") => Status::Disabled,
            ("206", progress) => {
                let (written, total) = progress.split_once('/')?;
                Status::Progress { written: written.parse().ok()?, total: total.parse().ok()? }
            }
            ("400", "BAD_CHECKSUM") => Status::BadChecksum,
            ("400", "NOT_ENOUGH_SPACE") => Status::NotEnoughSpace,
            ("500", "FLASH_ERROR") => Status::FlashError,
            ("500", internal) => Status::Internal(internal.strip_prefix("INTERNAL_ERROR ")?.parse().ok()?),
            _ => return None,
        })
    }

    /// Whether the status ends the message's handling (done or failed).
    pub fn is_final(&self) -> bool {
        !matches!(self, Status::Accepted | Status::Progress { .. })
    }

    /// Whether the status ends the message's handling with a failure.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Status::Accepted | Status::Progress { .. } | Status::Done)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Accepted => f.write_str("202"),
            Status::Progress { written, total } => write!(f, "206 {written}/{total}"),
            Status::Done => f.write_str("200"),
            Status::NotModified => f.write_str("304"),
            Status::Disabled => f.write_str("403"),
            Status::BadChecksum => f.write_str("400 BAD_CHECKSUM"),
            Status::NotEnoughSpace => f.write_str("400 NOT_ENOUGH_SPACE"),
            Status::FlashError => f.write_str("500 FLASH_ERROR"),
            Status::Internal(n) => write!(f, "500 INTERNAL_ERROR {n}"),
        }
    }
}

/// How the image is carried in the message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Encoding {
    Raw,
    Base64,
}

/// Why a message was refused or its update failed (the log says it; the status tells the
/// server).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refusal {
    Disabled,
    /// The topic's last level is not 32 hex digits.
    NotAnMd5,
    /// The device runs that image already.
    Installed,
    /// Another update path is writing.
    Busy,
    /// Neither an image (first byte 0xE9) nor base64 of one, or base64 of a length that is not
    /// a multiple of 4.
    NotFirmware,
    /// A character base64 does not have, or `=` before the last two.
    BadBase64,
    /// The image's MD5 is not the topic's.
    Md5Mismatch,
    Begin {
        error: UpdateError,
        cause: Option<OtaError>,
    },
    Write {
        error: UpdateError,
        cause: OtaError,
    },
    /// The image did not verify, or the boot switch failed.
    End(OtaError),
}

/// What the receiver reports.
pub trait Output {
    fn status(&mut self, status: Status);
    fn log(&mut self, line: &LogEvent<'_>);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// No message, or one being ignored to its end (refused, failed or done).
    Idle,
    /// Accepted; waiting for the first bytes that tell the encoding.
    Head,
    Receiving,
}

/// One firmware message's handling, piece by piece.
pub struct Ota {
    state: State,
    expected_md5: [u8; 16],
    md5: Md5,
    /// The message's size (the base64 text's, for base64).
    total: u32,
    /// The image size announced to `Update.begin` (3/4 of the text for base64).
    size: u32,
    written: u32,
    /// The first bytes, until the encoding is known.
    head: [u8; 2],
    head_len: usize,
    encoding: Encoding,
    base64: Base64,
    /// The last quarter logged.
    quarter: u8,
    reboot: bool,
}

impl Default for Ota {
    fn default() -> Self {
        Ota {
            state: State::Idle,
            expected_md5: [0; 16],
            md5: Md5::new(),
            total: 0,
            size: 0,
            written: 0,
            head: [0; 2],
            head_len: 0,
            encoding: Encoding::Raw,
            base64: Base64::default(),
            quarter: 0,
            reboot: false,
        }
    }
}

/// What the receiver needs to know about the device for a message.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub ota_enabled: bool,
    /// `$fw/checksum`: the running image's MD5, lowercase hex.
    pub running_md5: &'a str,
    /// Another update path is writing.
    pub others_busy: bool,
}

impl Ota {
    /// An update is being written (the other paths wait).
    pub fn writing(&self) -> bool {
        matches!(self.state, State::Head | State::Receiving)
    }

    /// An update completed: the device restarts once its status is out.
    pub fn reboot_requested(&self) -> bool {
        self.reboot
    }

    /// A piece of the firmware message on `…/firmware/<md5_level>`: `piece` is the message's
    /// bytes from `offset`, the message is `total` bytes long. Pieces of one message come in
    /// order; a piece at offset 0 starts a new message.
    #[allow(clippy::too_many_arguments)]
    pub fn piece<S: UpdateSink, O: Output>(
        &mut self,
        md5_level: &str,
        offset: u32,
        total: u32,
        piece: &[u8],
        facts: &Facts<'_>,
        sink: &mut S,
        out: &mut O,
    ) {
        if offset == 0 {
            if self.writing() {
                // A new message before the last one ended (the broker re-sent it): start over.
                sink.abort();
                self.state = State::Idle;
            }
            if self.start(md5_level, total, facts, out).is_err() {
                return;
            }
        }
        if self.state == State::Head {
            let take = piece.len().min(self.head.len() - self.head_len);
            self.head[self.head_len..self.head_len + take].copy_from_slice(&piece[..take]);
            self.head_len += take;
            let last = offset + piece.len() as u32 == total;
            // An image is known by its first byte; base64 of one by its first two characters.
            let known =
                self.head_len == self.head.len() || (self.head_len == 1 && self.head[0] == IMAGE_MAGIC);
            if !known && !last {
                return;
            }
            if self.begin(facts, sink, out).is_err() {
                return;
            }
            let head = self.head;
            let n = self.head_len;
            if self.take(&head[..n], 0, sink, out).is_err() {
                return;
            }
            let rest = &piece[take..];
            self.finish_piece(offset + piece.len() as u32, rest, take as u32 + offset, sink, out);
            return;
        }
        if self.state == State::Receiving {
            self.finish_piece(offset + piece.len() as u32, piece, offset, sink, out);
        }
    }

    /// Takes `bytes` (the message's, from `at`), then reports progress and ends the update at
    /// the message's end (`end`: the offset after this piece).
    fn finish_piece<S: UpdateSink, O: Output>(
        &mut self,
        end: u32,
        bytes: &[u8],
        at: u32,
        sink: &mut S,
        out: &mut O,
    ) {
        if self.take(bytes, at, sink, out).is_err() {
            return;
        }
        let last = end == self.total;
        if last && self.encoding == Encoding::Base64 {
            // The pads are known now: the image is that much shorter than 3/4 of the text.
            self.size = self.written;
        }
        out.status(Status::Progress { written: self.written, total: self.size });
        if last {
            self.end(sink, out);
        }
    }

    /// The first piece: the checks Homie makes before it takes the firmware.
    fn start<O: Output>(
        &mut self,
        md5_level: &str,
        total: u32,
        facts: &Facts<'_>,
        out: &mut O,
    ) -> Result<(), ()> {
        self.state = State::Idle;
        if !facts.ota_enabled {
            return self.refuse(Refusal::Disabled, Status::Disabled, out);
        }
        let mut md5 = [0u8; 16];
        if md5_level.len() != 32 || crate::hex::decode(md5_level.as_bytes(), &mut md5).is_none() {
            return self.refuse(Refusal::NotAnMd5, Status::BadChecksum, out);
        }
        if md5_level == facts.running_md5 {
            return self.refuse(Refusal::Installed, Status::NotModified, out);
        }
        self.expected_md5 = md5;
        self.md5 = Md5::new();
        self.total = total;
        self.written = 0;
        self.head_len = 0;
        self.quarter = 0;
        self.base64 = Base64::default();
        out.status(Status::Accepted);
        out.log(&LogEvent::Module(&HomieLine::Request { total }));
        self.state = State::Head;
        Ok(())
    }

    /// The encoding is known from the first bytes: `Update.begin` with the image's size.
    fn begin<S: UpdateSink, O: Output>(
        &mut self,
        facts: &Facts<'_>,
        sink: &mut S,
        out: &mut O,
    ) -> Result<(), ()> {
        let head = &self.head[..self.head_len];
        self.encoding = match head {
            [IMAGE_MAGIC, ..] => Encoding::Raw,
            // Base64 of 0xE9 and anything: `6` and one of Q..Z, a..f.
            [b'6', second, ..]
                if matches!(second, b'Q'..=b'Z' | b'a'..=b'f') && self.total.is_multiple_of(4) =>
            {
                Encoding::Base64
            }
            _ => return self.refuse(Refusal::NotFirmware, Status::BadChecksum, out),
        };
        self.size = match self.encoding {
            Encoding::Raw => self.total,
            Encoding::Base64 => self.total / 4 * 3,
        };
        if facts.others_busy {
            // `Update.begin` while another update runs: false, and no error number.
            return self.refuse(Refusal::Busy, Status::Internal(0), out);
        }
        match sink.begin(self.size) {
            Ok(slot) => {
                out.log(&LogEvent::OtaStarting { size: self.size, slot: SlotName(BootIndex::Ota(slot)) });
                self.state = State::Receiving;
                Ok(())
            }
            Err(cause) => {
                let error = UpdateError::at_begin(&cause);
                self.refuse(Refusal::Begin { error, cause: Some(cause) }, Status::of(error), out)
            }
        }
    }

    /// Message bytes from `at`: decoded (base64) and written.
    fn take<S: UpdateSink, O: Output>(
        &mut self,
        bytes: &[u8],
        at: u32,
        sink: &mut S,
        out: &mut O,
    ) -> Result<(), ()> {
        if self.state != State::Receiving {
            return Err(());
        }
        match self.encoding {
            Encoding::Raw => self.write(bytes, sink, out),
            Encoding::Base64 => {
                let mut decoded = [0u8; 96];
                let mut rest = bytes;
                let mut pos = at;
                while !rest.is_empty() {
                    let n = rest.len().min(128);
                    let (text, tail) = rest.split_at(n);
                    match self.base64.decode(text, pos, self.total, &mut decoded) {
                        Ok(len) => self.write(&decoded[..len], sink, out)?,
                        Err(Base64Error) => {
                            sink.abort();
                            return self.refuse(Refusal::BadBase64, Status::BadChecksum, out);
                        }
                    }
                    pos += n as u32;
                    rest = tail;
                }
                Ok(())
            }
        }
    }

    fn write<S: UpdateSink, O: Output>(&mut self, bytes: &[u8], sink: &mut S, out: &mut O) -> Result<(), ()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Err(cause) = sink.write(bytes) {
            sink.abort();
            let error = UpdateError::at_write(&cause);
            return self.refuse(Refusal::Write { error, cause }, Status::of(error), out);
        }
        self.md5.update(bytes);
        self.written += bytes.len() as u32;
        let quarter = (self.written as u64 * 4 / self.size.max(1) as u64) as u8;
        if quarter > self.quarter && quarter < 4 {
            self.quarter = quarter;
            out.log(&LogEvent::OtaProgress { percent: quarter * 25 });
        }
        Ok(())
    }

    /// The message's end: the MD5 from the topic, then `Update.end` (the image verified, the
    /// boot slot switched).
    fn end<S: UpdateSink, O: Output>(&mut self, sink: &mut S, out: &mut O) {
        self.state = State::Idle;
        let digest: [u8; 16] = core::mem::take(&mut self.md5).finalize().into();
        if digest != self.expected_md5 {
            sink.abort();
            let _ = self.refuse(Refusal::Md5Mismatch, Status::BadChecksum, out);
            return;
        }
        match sink.end() {
            Ok(switched) => {
                out.status(Status::Done);
                out.log(&LogEvent::OtaComplete {
                    slot: SlotName(BootIndex::Ota(switched.slot)),
                    seq: switched.seq,
                    state: switched.state,
                });
                self.reboot = true;
            }
            Err(cause) => {
                let status = match cause {
                    OtaError::Flash(_) => Status::FlashError,
                    // The image did not verify: a bad payload under a header that looked right.
                    _ => Status::BadChecksum,
                };
                let _ = self.refuse(Refusal::End(cause), status, out);
            }
        }
    }

    /// The broker went away mid-message: the update is dropped (flash stays as written).
    pub fn interrupted<S: UpdateSink, O: Output>(&mut self, sink: &mut S, out: &mut O) {
        if self.writing() {
            sink.abort();
            out.log(&LogEvent::Module(&HomieLine::Interrupted { written: self.written, size: self.size }));
        }
        self.state = State::Idle;
    }

    fn refuse<O: Output>(&mut self, why: Refusal, status: Status, out: &mut O) -> Result<(), ()> {
        self.state = State::Idle;
        out.status(status);
        out.log(&LogEvent::Module(&HomieLine::Refused { why, status }));
        Err(())
    }
}

pub mod script;
