//! ArduinoOTA, as arduino-esp32's `ArduinoOTA` and `Update` libraries serve it to `espota.py`
//! (spec: arduino-ota.md), as a sans-IO state machine.
//!
//! The uploader sends a UDP invitation `"<command> <port> <size> <md5>\n"` to the device's port
//! 3232; with a password set the device answers `AUTH <nonce>` and waits for
//! `"200 <cnonce> <response>\n"`; then it answers `OK`, prepares the update (the size is checked
//! before anything is erased) and connects back over TCP to the invitation's host and port. The
//! image arrives on that connection; the device acknowledges each write with its byte count in
//! decimal, checks the invitation's MD5 before it switches the boot slot, and ends with `OK` or
//! the `Update` library's error text.
//!
//! Datagrams, the back-connection's bytes and the clock go in; datagrams, "connect to X", bytes,
//! "close" and [`Event`]s come out through an [`Output`]. Sockets and timers are the adapter's.

mod auth;
mod lines;
pub mod service;
pub mod settings;
pub use lines::ArduinoLine;
mod invitation;
#[cfg(test)]
mod tests;

pub use auth::AuthScheme;
pub use invitation::{AuthRequest, Invitation, InvitationError, parse_auth, parse_invitation};

use crate::hex;
use crate::log::{LogEvent, LogSink};
use crate::slot::SlotName;
use crate::update::{Switched, UpdateSink};
use crate::writer::{OtaConfig, OtaError};
use core::fmt;
use core::net::SocketAddr;
use md5::{Digest, Md5};

/// ESP32's ArduinoOTA port (ESP8266's is 8266).
pub const DEFAULT_PORT: u16 = 3232;
/// Invitation commands.
pub const CMD_FLASH: u32 = 0;
pub const CMD_FILESYSTEM: u32 = 100;
pub const CMD_AUTH: u32 = 200;
/// `_runUpdate` reads at most this many bytes per `Update.write`.
pub const READ_CHUNK: usize = 1460;
/// `_ota_timeout`: how long the device waits for data before re-sending its last count.
pub const DATA_TIMEOUT_MS: u64 = 1000;
/// How often the last count is re-sent before the device gives up (`Receive Failed`).
pub const ACK_RETRIES: u8 = 3;
/// How arduino-esp32's `Update` library writes, over what the app's writer would do: through
/// its 4 KiB buffer with lazy erases, the image's first 16 bytes kept back until `end()`
/// ([`OtaConfig::update_library`]).
pub fn library_writes(app: OtaConfig) -> OtaConfig {
    OtaConfig { update_library: true, ..app }
}

/// The `Update` library's errors (`UPDATE_ERROR_*`), with the texts `printError` sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UpdateError {
    Write = 1,
    Erase = 2,
    Read = 3,
    Space = 4,
    Size = 5,
    Stream = 6,
    Md5 = 7,
    MagicByte = 8,
    Activate = 9,
    NoPartition = 10,
    BadArgument = 11,
    Aborted = 12,
    /// A first byte other than `0xE9` in `Update`'s default crypt mode (`U_AES_DECRYPT_AUTO`):
    /// taken for an encrypted image, which fails without a key (arduino-esp32 ≥ 2.0.6).
    Decryption = 13,
}

impl UpdateError {
    pub const ALL: [UpdateError; 13] = [
        UpdateError::Write,
        UpdateError::Erase,
        UpdateError::Read,
        UpdateError::Space,
        UpdateError::Size,
        UpdateError::Stream,
        UpdateError::Md5,
        UpdateError::MagicByte,
        UpdateError::Activate,
        UpdateError::NoPartition,
        UpdateError::BadArgument,
        UpdateError::Aborted,
        UpdateError::Decryption,
    ];

    /// What `Update.errorString()` says.
    pub fn text(self) -> &'static str {
        match self {
            UpdateError::Write => "Flash Write Failed",
            UpdateError::Erase => "Flash Erase Failed",
            UpdateError::Read => "Flash Read Failed",
            UpdateError::Space => "Not Enough Space",
            UpdateError::Size => "Bad Size Given",
            UpdateError::Stream => "Stream Read Timeout",
            UpdateError::Md5 => "MD5 Check Failed",
            UpdateError::MagicByte => "Wrong Magic Byte",
            UpdateError::Activate => "Could Not Activate The Firmware",
            UpdateError::NoPartition => "Partition Could Not be Found",
            UpdateError::BadArgument => "Bad Argument",
            UpdateError::Aborted => "Aborted",
            UpdateError::Decryption => "Decryption error",
        }
    }

    /// The snake_case name scenarios and reports use.
    pub fn name(self) -> &'static str {
        match self {
            UpdateError::Write => "write_failed",
            UpdateError::Erase => "erase_failed",
            UpdateError::Read => "read_failed",
            UpdateError::Space => "not_enough_space",
            UpdateError::Size => "bad_size",
            UpdateError::Stream => "stream_timeout",
            UpdateError::Md5 => "md5_check_failed",
            UpdateError::MagicByte => "wrong_magic_byte",
            UpdateError::Activate => "activate_failed",
            UpdateError::NoPartition => "no_partition",
            UpdateError::BadArgument => "bad_argument",
            UpdateError::Aborted => "aborted",
            UpdateError::Decryption => "decryption_error",
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The error whose text starts `line` (what an uploader reads on the connection).
    pub fn from_reply(line: &str) -> Option<Self> {
        let line = line.trim();
        Self::ALL.into_iter().find(|e| !line.is_empty() && line.starts_with(e.text()))
    }

    /// How `Update.begin` fails for a writer error.
    pub(crate) fn at_begin(e: &OtaError) -> Self {
        match e {
            OtaError::InvalidSize { .. } => UpdateError::Size,
            OtaError::NoUpdatePartition | OtaError::PartitionConflict => UpdateError::NoPartition,
            OtaError::Flash(_) => UpdateError::Erase,
            _ => UpdateError::Activate,
        }
    }

    /// How `Update.write` fails.
    pub(crate) fn at_write(e: &OtaError) -> Self {
        match e {
            OtaError::InvalidMagic { .. } => UpdateError::MagicByte,
            OtaError::InvalidSize { .. } | OtaError::PastEnd { .. } => UpdateError::Space,
            _ => UpdateError::Write,
        }
    }

    /// How `Update.end` fails after the MD5 matched: the boot switch re-verifies the image.
    pub(crate) fn at_end(e: &OtaError) -> Self {
        match e {
            OtaError::Flash(_) => UpdateError::Write,
            _ => UpdateError::Activate,
        }
    }
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Something that happened; [`Event::log_event`] gives the serial line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// A datagram that is no invitation the device takes (nothing is answered).
    InvitationIgnored(InvitationError),
    /// An invitation while an update runs (on this or another update path): no answer.
    Busy,
    AuthRequested,
    /// The answer's command was not 200: the exchange is over, nothing answered.
    AuthUnexpectedCommand(u32),
    /// The answer's cnonce or response had the wrong length, or it was no answer at all.
    AuthMalformed(InvitationError),
    AuthFailed,
    /// `Update.begin` refused (after `OK` was sent: the uploader sees no back-connection).
    BeginFailed {
        error: UpdateError,
        cause: Option<OtaError>,
    },
    Begin {
        size: u32,
        slot: u8,
    },
    ConnectFailed,
    /// `written` bytes went to flash, `received` in all.
    Progress {
        written: u32,
        received: u32,
        size: u32,
    },
    WriteFailed {
        error: UpdateError,
        cause: OtaError,
    },
    /// No data for the timeout and every re-sent count.
    ReceiveFailed {
        received: u32,
        size: u32,
    },
    /// The whole image arrived: the MD5 check and the boot switch come next.
    Received {
        size: u32,
    },
    /// The uploader closed before the whole image arrived.
    ConnectionLost {
        received: u32,
        size: u32,
    },
    /// `Update.end` failed.
    EndFailed {
        error: UpdateError,
        cause: Option<OtaError>,
    },
    /// Written, verified, boot slot switched: the device reboots once the connection is closed.
    Complete(Switched),
}

impl Event {
    /// Prints the catalogue line this event prints, if any.
    pub fn log(&self, log: &mut impl LogSink) {
        let line = match *self {
            Event::InvitationIgnored(why) => ArduinoLine::InvitationIgnored(why),
            Event::Busy => ArduinoLine::Busy,
            Event::AuthUnexpectedCommand(got) => ArduinoLine::AuthUnexpected { got },
            Event::AuthMalformed(why) => ArduinoLine::AuthMalformed(why),
            Event::AuthFailed => ArduinoLine::AuthFailed,
            Event::BeginFailed { error, cause } => ArduinoLine::BeginFailed { error, cause },
            Event::Begin { size, slot } => {
                return log
                    .log(&LogEvent::OtaStarting { size, slot: SlotName(crate::slot::BootIndex::Ota(slot)) });
            }
            Event::ConnectFailed => ArduinoLine::ConnectFailed,
            Event::Progress { written, received, size } => {
                // One line per quarter crossed: enough to follow, few enough to snapshot.
                let quarter = |r: u32| (r as u64 * 4 / size.max(1) as u64) as u8;
                let now = quarter(received);
                if now == quarter(received.saturating_sub(written)) || received >= size {
                    return;
                }
                return log.log(&LogEvent::OtaProgress { percent: now * 25 });
            }
            Event::WriteFailed { error, cause } => ArduinoLine::WriteFailed { error, cause },
            Event::ReceiveFailed { received, size } => ArduinoLine::ReceiveFailed { received, size },
            Event::ConnectionLost { received, size } => {
                return log.log(&LogEvent::OtaConnectionLost { received, size });
            }
            Event::EndFailed { error, cause } => ArduinoLine::UpdateFailed { error, cause },
            Event::Complete(s) => {
                return log.log(&LogEvent::OtaComplete {
                    slot: SlotName(crate::slot::BootIndex::Ota(s.slot)),
                    seq: s.seq,
                    state: s.state,
                });
            }
            Event::AuthRequested | Event::Received { .. } => return,
        };
        log.log(&LogEvent::Module(&line));
    }
}

/// Receives what the device sends and reports.
pub trait Output {
    /// A UDP datagram to `to` (the sender of the packet being answered).
    fn datagram(&mut self, to: SocketAddr, bytes: &[u8]);
    /// Open the TCP back-connection; answer with [`Server::connected`] or
    /// [`Server::connect_failed`].
    fn connect(&mut self, to: SocketAddr);
    /// Bytes on the back-connection.
    fn send(&mut self, bytes: &[u8]);
    /// Close the back-connection once what was sent is out.
    fn close(&mut self);
    fn event(&mut self, event: Event);
}

/// Random bytes for nonces.
pub trait NonceSource {
    fn fill(&mut self, buf: &mut [u8]);
}

/// A device's ArduinoOTA settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Config<'a> {
    /// `None`: no authentication (`OK` right after the invitation).
    pub password: Option<&'a [u8]>,
    pub auth: AuthScheme,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Idle,
    /// `AUTH <nonce>` sent for this invitation.
    WaitAuth(Invitation),
    /// Update begun, back-connection asked for.
    Connecting {
        size: u32,
    },
    Data(Transfer),
    /// The last reply is queued and the connection closing.
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Transfer {
    size: u32,
    received: u32,
    last_input_ms: u64,
    /// The count of the last write, re-sent on a timeout.
    last_written: u32,
    retries: u8,
}

/// One device's ArduinoOTA service. It owns its password (as `setPassword` keeps the hash).
pub struct Server {
    auth: AuthScheme,
    /// Lowercase hex of MD5 (classic) or SHA-256 (PBKDF2 scheme) of the password.
    password_hash: Option<([u8; 64], usize)>,
    state: State,
    nonce: [u8; 64],
    expected_md5: [u8; 16],
    md5: Md5,
    reboot: bool,
}

impl Server {
    pub fn new(config: Config<'_>) -> Self {
        let password_hash = config.password.map(|p| auth::password_hash(config.auth, p));
        Server {
            auth: config.auth,
            password_hash,
            state: State::Idle,
            nonce: [0; 64],
            expected_md5: [0; 16],
            md5: Md5::new(),
            reboot: false,
        }
    }

    /// An update is under way on this path (from the accepted invitation to the last reply).
    pub fn is_busy(&self) -> bool {
        matches!(self.state, State::Connecting { .. } | State::Data(_) | State::Done)
    }

    /// The update completed: once the connection is closed the device reboots.
    pub fn reboot_requested(&self) -> bool {
        self.reboot
    }

    /// When [`Server::poll`] next has something to do (milliseconds on the caller's clock).
    pub fn deadline(&self) -> Option<u64> {
        match self.state {
            State::Data(t) => Some(t.last_input_ms + DATA_TIMEOUT_MS),
            _ => None,
        }
    }

    /// Bytes of the image received so far and the announced size, during a transfer.
    pub fn progress(&self) -> Option<(u32, u32)> {
        match self.state {
            State::Data(t) => Some((t.received, t.size)),
            _ => None,
        }
    }

    /// A UDP datagram from `from`. `other_update_running`: another update path is writing, so
    /// this one must not start.
    pub fn datagram<S: UpdateSink, N: NonceSource, O: Output>(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        other_update_running: bool,
        sink: &mut S,
        rng: &mut N,
        out: &mut O,
    ) {
        match self.state {
            State::Idle => {
                let invitation = match parse_invitation(data) {
                    Ok(i) => i,
                    Err(why) => return out.event(Event::InvitationIgnored(why)),
                };
                if other_update_running {
                    return out.event(Event::Busy);
                }
                let invitation = Invitation { host: from, ..invitation };
                if self.password_hash.is_none() {
                    out.datagram(from, b"OK");
                    return self.begin(invitation, sink, out);
                }
                let n = self.auth.hex_len();
                auth::nonce(self.auth, rng, &mut self.nonce[..n]);
                let mut reply = [0u8; 5 + 64];
                reply[..5].copy_from_slice(b"AUTH ");
                reply[5..5 + n].copy_from_slice(&self.nonce[..n]);
                out.datagram(from, &reply[..5 + n]);
                out.event(Event::AuthRequested);
                self.state = State::WaitAuth(invitation);
            }
            State::WaitAuth(invitation) => {
                self.state = State::Idle;
                let answer = match parse_auth(data, self.auth.hex_len()) {
                    Ok(a) => a,
                    Err(InvitationError::AuthCommand(got)) => {
                        return out.event(Event::AuthUnexpectedCommand(got));
                    }
                    Err(why) => return out.event(Event::AuthMalformed(why)),
                };
                let (hash, len) = self.password_hash.as_ref().expect("WaitAuth only with a password");
                let n = self.auth.hex_len();
                let mut expected = [0u8; 64];
                auth::response(
                    self.auth,
                    &hash[..*len],
                    &self.nonce[..n],
                    answer.cnonce(),
                    &mut expected[..n],
                );
                if hex::constant_time_eq(&expected[..n], answer.response()) {
                    out.datagram(from, b"OK");
                    self.begin(invitation, sink, out);
                } else {
                    out.datagram(from, b"Authentication Failed");
                    out.event(Event::AuthFailed);
                }
            }
            // `_runUpdate` blocks the device's loop: nothing reads the UDP socket meanwhile.
            State::Connecting { .. } | State::Data(_) | State::Done => {
                if parse_invitation(data).is_ok() {
                    out.event(Event::Busy);
                }
            }
        }
    }

    fn begin<S: UpdateSink, O: Output>(&mut self, inv: Invitation, sink: &mut S, out: &mut O) {
        self.state = State::Idle;
        if inv.command != CMD_FLASH {
            // A filesystem image: this device has no filesystem partition to take it.
            return out.event(Event::BeginFailed { error: UpdateError::NoPartition, cause: None });
        }
        if inv.size == 0 {
            return out.event(Event::BeginFailed { error: UpdateError::Size, cause: None });
        }
        match sink.begin(inv.size) {
            Ok(slot) => {
                out.event(Event::Begin { size: inv.size, slot });
                self.expected_md5 = inv.md5;
                self.md5 = Md5::new();
                self.state = State::Connecting { size: inv.size };
                out.connect(inv.back_connection());
            }
            Err(cause) => {
                out.event(Event::BeginFailed { error: UpdateError::at_begin(&cause), cause: Some(cause) })
            }
        }
    }

    /// The back-connection is up.
    pub fn connected(&mut self, now_ms: u64) {
        if let State::Connecting { size } = self.state {
            self.state = State::Data(Transfer {
                size,
                received: 0,
                last_input_ms: now_ms,
                last_written: 0,
                retries: 0,
            });
        }
    }

    /// The back-connection could not be made: the update is dropped (nothing was erased yet).
    pub fn connect_failed<S: UpdateSink, O: Output>(&mut self, sink: &mut S, out: &mut O) {
        if let State::Connecting { .. } = self.state {
            sink.abort();
            out.event(Event::ConnectFailed);
            self.state = State::Idle;
        }
    }

    /// Bytes from the back-connection.
    pub fn data<S: UpdateSink, O: Output>(
        &mut self,
        mut input: &[u8],
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        let State::Data(mut t) = self.state else { return };
        t.last_input_ms = now_ms;
        t.retries = 0;
        while !input.is_empty() && t.received < t.size {
            let take = input.len().min(READ_CHUNK).min((t.size - t.received) as usize);
            let (chunk, rest) = input.split_at(take);
            input = rest;
            if let Err(cause) = sink.write(chunk) {
                let error = UpdateError::at_write(&cause);
                self.fail_with(error, out);
                out.event(Event::WriteFailed { error, cause });
                sink.abort();
                return;
            }
            self.md5.update(chunk);
            t.received += take as u32;
            t.last_written = take as u32;
            let mut count = [0u8; 10];
            out.send(decimal(take as u32, &mut count));
            out.event(Event::Progress { written: take as u32, received: t.received, size: t.size });
        }
        self.state = State::Data(t);
        if t.received == t.size {
            self.finish(t.size, sink, out);
        }
    }

    fn finish<S: UpdateSink, O: Output>(&mut self, size: u32, sink: &mut S, out: &mut O) {
        out.event(Event::Received { size });
        let digest: [u8; 16] = core::mem::take(&mut self.md5).finalize().into();
        if digest != self.expected_md5 {
            sink.abort();
            self.fail_with(UpdateError::Md5, out);
            return out.event(Event::EndFailed { error: UpdateError::Md5, cause: None });
        }
        match sink.end() {
            Ok(switched) => {
                out.send(b"OK");
                out.close();
                self.state = State::Done;
                self.reboot = true;
                out.event(Event::Complete(switched));
            }
            Err(cause) => {
                let error = UpdateError::at_end(&cause);
                self.fail_with(error, out);
                out.event(Event::EndFailed { error, cause: Some(cause) });
            }
        }
    }

    /// `Update.printError(client)`: the text and CRLF, then the connection closes.
    fn fail_with<O: Output>(&mut self, error: UpdateError, out: &mut O) {
        out.send(error.text().as_bytes());
        out.send(b"\r\n");
        out.close();
        self.state = State::Done;
    }

    /// The back-connection closed (by the uploader, or after the device's close).
    pub fn closed<S: UpdateSink, O: Output>(&mut self, sink: &mut S, out: &mut O) {
        match self.state {
            State::Data(t) => {
                // `Update.end()` with bytes missing: a premature end, aborted.
                sink.abort();
                out.event(Event::ConnectionLost { received: t.received, size: t.size });
                self.state = State::Idle;
            }
            State::Connecting { .. } => self.connect_failed(sink, out),
            State::Done => self.state = State::Idle,
            State::Idle | State::WaitAuth(_) => {}
        }
    }

    /// Time passed: re-send the last count after a silent second, up to [`ACK_RETRIES`] times
    /// once something was written, then give up (`Receive Failed`).
    pub fn poll<S: UpdateSink, O: Output>(&mut self, now_ms: u64, sink: &mut S, out: &mut O) {
        let State::Data(mut t) = self.state else { return };
        if now_ms < t.last_input_ms + DATA_TIMEOUT_MS {
            return;
        }
        if t.received > 0 && t.retries < ACK_RETRIES {
            t.retries += 1;
            t.last_input_ms = now_ms;
            let mut count = [0u8; 10];
            out.send(decimal(t.last_written, &mut count));
            self.state = State::Data(t);
            return;
        }
        sink.abort();
        out.close();
        out.event(Event::ReceiveFailed { received: t.received, size: t.size });
        self.state = State::Done;
    }
}

/// `n` in decimal, as `printf("%u")` writes it.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// ArduinoOTA writes through arduino-esp32's `Update` library.
impl crate::session::Protocol for Server {
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        library_writes(app)
    }
}

pub mod script;
