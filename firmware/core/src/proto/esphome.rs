//! The ESPHome native OTA server (spec: esphome-ota.md) as a sans-IO state machine.
//!
//! Bytes received from the TCP peer go into [`Server::feed`]; bytes to send and [`Event`]s come
//! out through an [`Output`]; the update itself goes to an [`UpdateSink`], whose protocol-neutral
//! errors this module maps to ESPHome's response codes. Sockets, timers and reboots are the
//! adapter's. Protocol versions 1 and 2, MD5 and SHA-256 challenge-response; compression is
//! declined.

use crate::hex;
use crate::log::LogEvent;
use crate::settings::Password;
use crate::slot::SlotName;
use crate::update::{Switched, UpdateSink};
use crate::writer::OtaError;
use md5::{Digest, Md5};
use sha2::Sha256;

pub const MAGIC: [u8; 5] = [0x6C, 0x26, 0xF7, 0x5C, 0x45];
pub const CHUNK_SIZE: u32 = 8192;
pub const DEFAULT_PORT: u16 = 3232;
/// ESPHome's device gives a client this long from the accepted connection to the end of the
/// handshake (magic, features, authentication), however the bytes trickle in.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 20_000;
/// ... and, once authenticated, this long without a byte (`OTA_SOCKET_TIMEOUT_DATA`); the data
/// loop then answers `0xFF` (`No data received for 90000 ms`).
pub const DATA_TIMEOUT_MS: u64 = 90_000;

/// Client feature bits (the byte after the version reply).
pub const FEATURE_COMPRESSION: u8 = 0x01;
pub const FEATURE_SHA256_AUTH: u8 = 0x02;

/// Response codes (`OTA_RESPONSE_*`), with the client's names.
pub mod service;
pub mod settings;

pub mod code {
    pub const OK: u8 = 0x00;
    pub const REQUEST_AUTH: u8 = 0x01;
    pub const REQUEST_SHA256_AUTH: u8 = 0x02;
    pub const HEADER_OK: u8 = 0x40;
    pub const AUTH_OK: u8 = 0x41;
    pub const UPDATE_PREPARE_OK: u8 = 0x42;
    pub const BIN_MD5_OK: u8 = 0x43;
    pub const RECEIVE_OK: u8 = 0x44;
    pub const UPDATE_END_OK: u8 = 0x45;
    pub const SUPPORTS_COMPRESSION: u8 = 0x46;
    pub const CHUNK_OK: u8 = 0x47;
    pub const FEATURE_FLAGS: u8 = 0x48;
    pub const ERROR_MAGIC: u8 = 0x80;
    pub const ERROR_UPDATE_PREPARE: u8 = 0x81;
    pub const ERROR_AUTH_INVALID: u8 = 0x82;
    pub const ERROR_WRITING_FLASH: u8 = 0x83;
    pub const ERROR_UPDATE_END: u8 = 0x84;
    pub const ERROR_INVALID_BOOTSTRAPPING: u8 = 0x85;
    pub const ERROR_WRONG_CURRENT_FLASH_CONFIG: u8 = 0x86;
    pub const ERROR_WRONG_NEW_FLASH_CONFIG: u8 = 0x87;
    pub const ERROR_ESP8266_NOT_ENOUGH_SPACE: u8 = 0x88;
    pub const ERROR_ESP32_NOT_ENOUGH_SPACE: u8 = 0x89;
    pub const ERROR_NO_UPDATE_PARTITION: u8 = 0x8A;
    pub const ERROR_MD5_MISMATCH: u8 = 0x8B;
    pub const ERROR_RP2040_NOT_ENOUGH_SPACE: u8 = 0x8C;
    pub const ERROR_SIGNATURE_INVALID: u8 = 0x8D;
    pub const ERROR_UNSUPPORTED_OTA_TYPE: u8 = 0x8E;
    pub const ERROR_PARTITION_TABLE_VERIFY: u8 = 0x8F;
    pub const ERROR_PARTITION_TABLE_UPDATE: u8 = 0x90;
    pub const ERROR_UNKNOWN: u8 = 0xFF;
}

/// Every response code with the snake_case name scenarios and reports use.
pub const CODE_NAMES: &[(u8, &str)] = &[
    (code::OK, "ok"),
    (code::REQUEST_AUTH, "request_auth"),
    (code::REQUEST_SHA256_AUTH, "request_sha256_auth"),
    (code::HEADER_OK, "header_ok"),
    (code::AUTH_OK, "auth_ok"),
    (code::UPDATE_PREPARE_OK, "update_prepare_ok"),
    (code::BIN_MD5_OK, "bin_md5_ok"),
    (code::RECEIVE_OK, "receive_ok"),
    (code::UPDATE_END_OK, "update_end_ok"),
    (code::SUPPORTS_COMPRESSION, "supports_compression"),
    (code::CHUNK_OK, "chunk_ok"),
    (code::FEATURE_FLAGS, "feature_flags"),
    (code::ERROR_MAGIC, "magic"),
    (code::ERROR_UPDATE_PREPARE, "update_prepare"),
    (code::ERROR_AUTH_INVALID, "auth_invalid"),
    (code::ERROR_WRITING_FLASH, "writing_flash"),
    (code::ERROR_UPDATE_END, "update_end"),
    (code::ERROR_INVALID_BOOTSTRAPPING, "invalid_bootstrapping"),
    (code::ERROR_WRONG_CURRENT_FLASH_CONFIG, "wrong_current_flash_config"),
    (code::ERROR_WRONG_NEW_FLASH_CONFIG, "wrong_new_flash_config"),
    (code::ERROR_ESP8266_NOT_ENOUGH_SPACE, "esp8266_not_enough_space"),
    (code::ERROR_ESP32_NOT_ENOUGH_SPACE, "esp32_not_enough_space"),
    (code::ERROR_NO_UPDATE_PARTITION, "no_update_partition"),
    (code::ERROR_MD5_MISMATCH, "md5_mismatch"),
    (code::ERROR_RP2040_NOT_ENOUGH_SPACE, "rp2040_not_enough_space"),
    (code::ERROR_SIGNATURE_INVALID, "signature_invalid"),
    (code::ERROR_UNSUPPORTED_OTA_TYPE, "unsupported_ota_type"),
    (code::ERROR_PARTITION_TABLE_VERIFY, "partition_table_verify"),
    (code::ERROR_PARTITION_TABLE_UPDATE, "partition_table_update"),
    (code::ERROR_UNKNOWN, "unknown"),
];

/// The name of a response code (`None` for bytes the protocol does not define).
pub fn code_name(c: u8) -> Option<&'static str> {
    CODE_NAMES.iter().find(|(v, _)| *v == c).map(|(_, n)| *n)
}

/// The response code for a name from [`CODE_NAMES`].
pub fn code_by_name(name: &str) -> Option<u8> {
    CODE_NAMES.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
}

/// Error codes ESPHome's ESP-IDF backend sends for writer errors, per call.
fn begin_error_code(e: &OtaError) -> u8 {
    match e {
        OtaError::InvalidSize { .. } | OtaError::PastEnd { .. } => code::ERROR_ESP32_NOT_ENOUGH_SPACE,
        OtaError::NoUpdatePartition => code::ERROR_NO_UPDATE_PARTITION,
        OtaError::Flash(_) => code::ERROR_WRITING_FLASH,
        _ => code::ERROR_UNKNOWN,
    }
}

fn write_error_code(e: &OtaError) -> u8 {
    match e {
        OtaError::InvalidMagic { .. } => code::ERROR_MAGIC,
        OtaError::Flash(_) => code::ERROR_WRITING_FLASH,
        _ => code::ERROR_UNKNOWN,
    }
}

fn end_error_code(e: &OtaError) -> u8 {
    match e {
        OtaError::Validate(_) => code::ERROR_UPDATE_END,
        OtaError::Flash(_) => code::ERROR_WRITING_FLASH,
        _ => code::ERROR_UNKNOWN,
    }
}

/// A failed update call: the code sent and the writer's reason.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rejection {
    pub code: u8,
    pub error: OtaError,
}

/// Random bytes for nonces.
pub trait NonceSource {
    fn fill(&mut self, buf: &mut [u8]);
}

/// Authentication methods the server may offer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuthMethod {
    Md5,
    Sha256,
}

#[derive(Clone, Copy, Debug)]
pub struct ServerConfig<'a> {
    /// `None`: no authentication (`AUTH_OK` right after the features byte).
    pub password: Option<&'a [u8]>,
    /// 1 or 2 (2 acknowledges every 8192-byte chunk).
    pub version: u8,
    /// Offer SHA-256 to clients that set feature bit 1 (the MD5 fallback stays for others).
    pub sha256: bool,
}

impl Default for ServerConfig<'_> {
    fn default() -> Self {
        ServerConfig { password: None, version: 2, sha256: true }
    }
}

/// Something that happened in a session.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    MagicMismatch,
    CompressionDeclined,
    AuthRequested(AuthMethod),
    AuthOk,
    AuthFailed,
    /// The client went away while the device waited for its authentication answer.
    AuthMissing,
    Begin {
        size: u32,
        slot: u8,
    },
    Progress {
        received: u32,
        size: u32,
    },
    Received {
        size: u32,
    },
    Md5Mismatch,
    /// An update call failed; `code` was sent.
    Failed(Rejection),
    /// Peer closed or timed out mid-session; `code` was sent (0x00 after `begin`, per ESPHome).
    Interrupted {
        received: u32,
        size: u32,
        timeout: bool,
        code: u8,
    },
    /// The update is written, verified and the boot slot switched: the device reboots now.
    Complete(Switched),
}

impl Event {
    /// The catalogue line this event prints, if any.
    pub fn log_event(&self) -> Option<LogEvent<'static>> {
        Some(match *self {
            Event::MagicMismatch => LogEvent::OtaMagicMismatch,
            Event::CompressionDeclined => LogEvent::OtaCompressionUnsupported,
            Event::AuthFailed => LogEvent::OtaAuthFailed,
            Event::AuthMissing => LogEvent::OtaAuthMissing,
            Event::Begin { size, slot } => {
                LogEvent::OtaStarting { size, slot: SlotName(crate::slot::BootIndex::Ota(slot)) }
            }
            Event::Progress { received, size } => {
                // One line per quarter: enough to follow, few enough to snapshot.
                let pct = |r: u32| (r as u64 * 100 / size.max(1) as u64) as u8;
                let before = pct(received.saturating_sub(CHUNK_SIZE)) / 25;
                let now = pct(received) / 25;
                if now == before || received == size {
                    return None;
                }
                LogEvent::OtaProgress { percent: now * 25 }
            }
            Event::Md5Mismatch => LogEvent::OtaMd5Mismatch,
            Event::Failed(Rejection { code, error }) => LogEvent::OtaRejected { code, error },
            Event::Interrupted { timeout: true, .. } => LogEvent::OtaTimeout,
            Event::Interrupted { received, size, .. } => LogEvent::OtaConnectionLost { received, size },
            Event::Complete(s) => LogEvent::OtaComplete {
                slot: SlotName(crate::slot::BootIndex::Ota(s.slot)),
                seq: s.seq,
                state: s.state,
            },
            Event::AuthRequested(_) | Event::AuthOk | Event::Received { .. } => {
                return None;
            }
        })
    }
}

/// Receives what the server sends and reports.
pub trait Output {
    fn send(&mut self, bytes: &[u8]);
    fn event(&mut self, event: Event);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Magic,
    Features,
    AuthAnswer(AuthMethod),
    Size,
    Md5,
    Data,
    FinalAck,
    Closed,
}

/// One ESPHome OTA session's server side. It keeps its own copy of the password (as ESPHome's
/// component does), so a session outlives the settings it was made from.
pub struct Server {
    password: Option<Password>,
    version: u8,
    sha256: bool,
    state: State,
    buf: [u8; 128],
    have: usize,
    nonce: [u8; 64],
    size: u32,
    received: u32,
    expected_md5: [u8; 32],
    md5: Md5,
    begun: bool,
    switched: Option<Switched>,
    complete: bool,
}

impl Server {
    /// A password longer than [`crate::settings::MAX_PASSWORD_LEN`] is cut there, as NVS
    /// would have cut it.
    pub fn new(config: ServerConfig<'_>) -> Self {
        Server {
            password: config.password.map(|p| Password::built_in(Some(p))),
            version: config.version,
            sha256: config.sha256,
            state: State::Magic,
            buf: [0; 128],
            have: 0,
            nonce: [0; 64],
            size: 0,
            received: 0,
            expected_md5: [0; 32],
            md5: Md5::new(),
            begun: false,
            switched: None,
            complete: false,
        }
    }

    /// The session is over: the adapter closes the connection.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The update completed: after closing, the device reboots into the new image.
    pub fn reboot_requested(&self) -> bool {
        self.complete
    }

    /// Bytes of the image received so far, and the announced size.
    pub fn progress(&self) -> (u32, u32) {
        (self.received, self.size)
    }

    /// Whether the data phase is under way.
    pub fn in_data_phase(&self) -> bool {
        self.state == State::Data
    }

    /// When [`Server::expired`] turns true if nothing comes: the handshake's limit from the
    /// accepted connection, or the data phase's from the last byte (`None`: closed).
    pub fn expires_at(&self, accepted_ms: u64, last_input_ms: u64) -> Option<u64> {
        match self.state {
            State::Magic | State::Features | State::AuthAnswer(_) => Some(accepted_ms + HANDSHAKE_TIMEOUT_MS),
            State::Size | State::Md5 | State::Data | State::FinalAck => Some(last_input_ms + DATA_TIMEOUT_MS),
            State::Closed => None,
        }
    }

    /// Whether the client has had its time, `since_accept_ms` after the connection was accepted
    /// and `since_input_ms` after its last byte: [`HANDSHAKE_TIMEOUT_MS`] in all for the
    /// handshake, then [`DATA_TIMEOUT_MS`] without data. The adapter then calls
    /// [`Server::on_disconnect`] with `timeout: true`.
    pub fn expired(&self, since_accept_ms: u64, since_input_ms: u64) -> bool {
        match self.state {
            State::Magic | State::Features | State::AuthAnswer(_) => since_accept_ms >= HANDSHAKE_TIMEOUT_MS,
            State::Closed => false,
            State::Size | State::Md5 | State::Data | State::FinalAck => since_input_ms >= DATA_TIMEOUT_MS,
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
    }

    fn fail<B: UpdateSink, O: Output>(&mut self, err: Rejection, backend: &mut B, out: &mut O) {
        out.send(&[err.code]);
        out.event(Event::Failed(err));
        if self.begun {
            backend.abort();
            self.begun = false;
        }
        self.close();
    }

    /// Collects a fixed-size field; true once `n` bytes are in `buf`.
    fn gather(&mut self, input: &mut &[u8], n: usize) -> bool {
        let take = (n - self.have).min(input.len());
        self.buf[self.have..self.have + take].copy_from_slice(&input[..take]);
        self.have += take;
        *input = &input[take..];
        if self.have == n {
            self.have = 0;
            true
        } else {
            false
        }
    }

    /// Feeds bytes received from the client. Bytes after the session closed are ignored.
    pub fn feed<B: UpdateSink, N: NonceSource, O: Output>(
        &mut self,
        mut input: &[u8],
        backend: &mut B,
        rng: &mut N,
        out: &mut O,
    ) {
        while !input.is_empty() && self.state != State::Closed {
            match self.state {
                State::Magic => {
                    if self.gather(&mut input, 5) {
                        if self.buf[..5] != MAGIC {
                            out.send(&[code::ERROR_MAGIC]);
                            out.event(Event::MagicMismatch);
                            self.close();
                        } else {
                            out.send(&[code::OK, self.version]);
                            self.state = State::Features;
                        }
                    }
                }
                State::Features => {
                    if self.gather(&mut input, 1) {
                        let features = self.buf[0];
                        if features & FEATURE_COMPRESSION != 0 {
                            out.event(Event::CompressionDeclined);
                        }
                        out.send(&[code::HEADER_OK]);
                        self.start_auth(features, rng, out);
                    }
                }
                State::AuthAnswer(method) => {
                    let n = hash_hex_len(method);
                    if self.gather(&mut input, 2 * n) {
                        self.check_auth(method, out);
                    }
                }
                State::Size => {
                    if self.gather(&mut input, 4) {
                        let size = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                        self.size = size;
                        match backend.begin(size) {
                            Ok(slot) => {
                                self.begun = true;
                                out.event(Event::Begin { size, slot });
                                out.send(&[code::UPDATE_PREPARE_OK]);
                                self.state = State::Md5;
                            }
                            Err(error) => {
                                self.fail(Rejection { code: begin_error_code(&error), error }, backend, out)
                            }
                        }
                    }
                }
                State::Md5 => {
                    if self.gather(&mut input, 32) {
                        self.expected_md5.copy_from_slice(&self.buf[..32]);
                        out.send(&[code::BIN_MD5_OK]);
                        self.state = State::Data;
                        if self.size == 0 {
                            self.finish_data(backend, out);
                        }
                    }
                }
                State::Data => {
                    let take = ((self.size - self.received) as usize).min(input.len());
                    // Acknowledge each 8192-byte chunk as soon as it is complete.
                    let to_boundary = (CHUNK_SIZE - self.received % CHUNK_SIZE) as usize;
                    let take = take.min(to_boundary);
                    let (data, rest) = input.split_at(take);
                    input = rest;
                    if let Err(error) = backend.write(data) {
                        self.fail(Rejection { code: write_error_code(&error), error }, backend, out);
                        break;
                    }
                    self.md5.update(data);
                    self.received += take as u32;
                    if self.received.is_multiple_of(CHUNK_SIZE) || self.received == self.size {
                        if self.version >= 2 {
                            out.send(&[code::CHUNK_OK]);
                        }
                        out.event(Event::Progress { received: self.received, size: self.size });
                    }
                    if self.received == self.size {
                        self.finish_data(backend, out);
                    }
                }
                State::FinalAck => {
                    input = &input[1..];
                    self.finish(out);
                }
                State::Closed => break,
            }
        }
    }

    fn start_auth<N: NonceSource, O: Output>(&mut self, features: u8, rng: &mut N, out: &mut O) {
        let Some(_) = self.password else {
            out.send(&[code::AUTH_OK]);
            self.state = State::Size;
            return;
        };
        let method = if self.sha256 && features & FEATURE_SHA256_AUTH != 0 {
            AuthMethod::Sha256
        } else {
            AuthMethod::Md5
        };
        let n = hash_hex_len(method);
        match method {
            AuthMethod::Md5 => {
                // ESPHome 2024.11: md5 of random_uint32() formatted "%08x".
                let mut r = [0u8; 4];
                rng.fill(&mut r);
                let mut text = [0u8; 8];
                hex::encode_lower(&u32::from_le_bytes(r).to_be_bytes(), &mut text);
                let digest: [u8; 16] = Md5::digest(text).into();
                hex::encode_lower(&digest, &mut self.nonce[..32]);
            }
            AuthMethod::Sha256 => {
                let mut r = [0u8; 8];
                rng.fill(&mut r);
                let digest: [u8; 32] = Sha256::digest(r).into();
                hex::encode_lower(&digest, &mut self.nonce[..64]);
            }
        }
        out.send(&[match method {
            AuthMethod::Md5 => code::REQUEST_AUTH,
            AuthMethod::Sha256 => code::REQUEST_SHA256_AUTH,
        }]);
        out.send(&self.nonce[..n]);
        out.event(Event::AuthRequested(method));
        self.state = State::AuthAnswer(method);
    }

    fn check_auth<O: Output>(&mut self, method: AuthMethod, out: &mut O) {
        let n = hash_hex_len(method);
        let password = self.password.as_ref().and_then(Password::get).unwrap_or_default();
        let (cnonce, answer) = self.buf[..2 * n].split_at(n);
        let mut expected = [0u8; 64];
        match method {
            AuthMethod::Md5 => {
                let mut h = Md5::new();
                h.update(password);
                h.update(&self.nonce[..n]);
                h.update(cnonce);
                let d: [u8; 16] = h.finalize().into();
                hex::encode_lower(&d, &mut expected[..n]);
            }
            AuthMethod::Sha256 => {
                let mut h = Sha256::new();
                h.update(password);
                h.update(&self.nonce[..n]);
                h.update(cnonce);
                let d: [u8; 32] = h.finalize().into();
                hex::encode_lower(&d, &mut expected[..n]);
            }
        }
        if hex::constant_time_eq(&expected[..n], answer) {
            out.send(&[code::AUTH_OK]);
            out.event(Event::AuthOk);
            self.state = State::Size;
        } else {
            out.send(&[code::ERROR_AUTH_INVALID]);
            out.event(Event::AuthFailed);
            self.close();
        }
    }

    fn finish_data<B: UpdateSink, O: Output>(&mut self, backend: &mut B, out: &mut O) {
        out.send(&[code::RECEIVE_OK]);
        out.event(Event::Received { size: self.size });
        let digest: [u8; 16] = core::mem::take(&mut self.md5).finalize().into();
        let mut announced = [0u8; 16];
        if hex::decode(&self.expected_md5, &mut announced).is_none() || announced != digest {
            out.send(&[code::ERROR_MD5_MISMATCH]);
            out.event(Event::Md5Mismatch);
            backend.abort();
            self.begun = false;
            self.close();
            return;
        }
        match backend.end() {
            Ok(s) => {
                self.begun = false;
                out.send(&[code::UPDATE_END_OK]);
                self.switched = Some(s);
                self.state = State::FinalAck;
            }
            Err(error) => {
                self.begun = false;
                self.fail(Rejection { code: end_error_code(&error), error }, backend, out);
            }
        }
    }

    fn finish<O: Output>(&mut self, out: &mut O) {
        if let Some(s) = self.switched {
            out.event(Event::Complete(s));
        }
        self.complete = true;
        self.close();
    }

    /// The peer closed the connection (`timeout: false`) or a read timed out (`true`).
    pub fn on_disconnect<B: UpdateSink, O: Output>(&mut self, timeout: bool, backend: &mut B, out: &mut O) {
        match self.state {
            State::Closed => {}
            // The image is switched already; a missing final ack is only logged by ESPHome.
            State::FinalAck => self.finish(out),
            State::AuthAnswer(_) if !timeout => {
                out.send(&[code::ERROR_UNKNOWN]);
                out.event(Event::AuthMissing);
                self.close();
            }
            _ => {
                // ESPHome's error_code is 0x00 once begin() succeeded, 0xFF before; its data loop
                // answers a silent client with 0xFF.
                let data_timeout = timeout && self.state == State::Data;
                let code = if self.begun && !data_timeout { code::OK } else { code::ERROR_UNKNOWN };
                out.send(&[code]);
                out.event(Event::Interrupted { received: self.received, size: self.size, timeout, code });
                if self.begun {
                    backend.abort();
                    self.begun = false;
                }
                self.close();
            }
        }
    }
}

fn hash_hex_len(m: AuthMethod) -> usize {
    match m {
        AuthMethod::Md5 => 32,
        AuthMethod::Sha256 => 64,
    }
}

#[cfg(test)]
mod tests;

/// ESPHome's component writes through the app's `esp_ota_*`.
impl crate::session::Protocol for Server {}

pub mod script;
