//! Pulling an update over HTTP(S), as a sans-IO state machine with two flavours:
//! - `esp_https_ota` (ESP-IDF v5.5.5, spec: mqtt-https-pull.md §2–7): HTTP/1.1 GET, redirects
//!   followed (bounded, never from https to http), the status table of §4, `Content-Length`,
//!   chunked or close-delimited bodies, the first 1024 bytes read before anything is written
//!   (chip id, then magic, then the app descriptor's version if the device checks it);
//! - the Arduino HTTP updater (spec: http-update.md, arduino-http-and-web-upload.md): HTTP/1.0
//!   with the `x-ESP32-*` headers, 304 = no update, a length required and checked against the
//!   free space, `x-MD5` checked before the boot slot is switched.
//!
//! The connection is an output ("connect to host:port, with TLS or not"): TLS (the pull agent's
//! layer, [`crate::tls`]), name resolution and sockets are outside, and a failed connection (a
//! refused certificate included) comes back through [`Client::connect_failed`]. Nothing is written to flash before the image's
//! header checks out, and the boot slot is switched only for a verified image.
//!
//! Deliberate difference from ESP-IDF: `esp_https_ota` retries a stalled body read forever and
//! follows redirects without limit (§5, §4); this client fails a body that brings no byte for
//! [`Config::stall_limit_ms`] and stops after [`Config::max_redirects`], so a device under test
//! always ends its update.

mod error_text;
pub mod response;
#[cfg(test)]
mod tests;

use crate::app_desc::{APP_DESC_IMAGE_OFFSET, APP_DESC_LEN, APP_DESC_MAGIC};
use crate::image::{CHIP_ID_ESP32C3, IMAGE_MAGIC};
use crate::proto::arduino::UpdateError;
use crate::update::{Switched, UpdateSink};
use crate::url::{Scheme, Url, UrlError};
use crate::writer::OtaError;
use md5::{Digest, Md5};
use response::{Body, BodyError, Framing, Head, HeadError, HeadReader, Md5Header};

/// `esp_http_client`'s user agent.
pub const USER_AGENT: &str = "ESP32 HTTP Client/1.0";
/// arduino-esp32's `HTTPUpdate` user agent.
pub const ARDUINO_USER_AGENT: &str = "ESP32-http-Update";
/// `esp_http_client`'s default `timeout_ms` (connect and each read).
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// `HTTPUpdate`'s default timeout.
pub const ARDUINO_TIMEOUT_MS: u64 = 8_000;
/// `esp_http_client`'s `max_redirection_count` default.
pub const MAX_REDIRECTS: u8 = 10;
/// How many bytes `esp_https_ota` reads before `esp_ota_begin` (`get_img_desc`'s read).
pub const PEEK: usize = 1024;
/// The longest URL the device keeps (a trigger's is at most 199 bytes; a redirect's 256).
pub const MAX_URL: usize = 320;

/// Whether the device compares the offered image's version with its own (application code in
/// ESP-IDF's advanced example, not the library: §6).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum VersionCheck {
    #[default]
    None,
    /// The same version as the running one is not taken.
    SkipSame,
    /// Nor an older one (versions compared as dot-separated numbers; other text only by equality).
    RefuseDowngrade,
}

/// What the Arduino updater tells the server about the device (its `x-ESP32-*` headers).
#[derive(Clone, Copy, Debug)]
pub struct DeviceFacts<'a> {
    pub sta_mac: [u8; 6],
    pub ap_mac: [u8; 6],
    /// The next OTA slot's size: a longer image is refused before its body is read.
    pub free_space: u32,
    pub sketch_size: u32,
    pub sketch_md5: Option<[u8; 16]>,
    /// `x-ESP32-sketch-sha256`, in upper-case hex as arduino-esp32 writes it.
    pub sketch_sha256: Option<[u8; 32]>,
    pub chip_size: u32,
    pub sdk_version: &'a str,
    /// `x-ESP32-version`, sent when not empty.
    pub version: &'a str,
}

#[derive(Clone, Copy, Debug)]
pub enum Flavour<'a> {
    EspHttpsOta,
    ArduinoUpdater(DeviceFacts<'a>),
}

/// The device's pull settings, lent per call.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    pub flavour: Flavour<'a>,
    /// How long the response head may take (from the request).
    pub timeout_ms: u64,
    /// How long a body may bring no byte before the pull fails.
    pub stall_limit_ms: u64,
    pub follow_redirects: bool,
    pub max_redirects: u8,
    pub version_check: VersionCheck,
    /// The running app's version (its descriptor's).
    pub running_version: &'a str,
    /// `ota_resumption`: how far a download got is kept in NVS (the sink's resume record), and
    /// a pull of the same URL after a cut asks for the rest with `Range` (`esp_https_ota` only).
    pub resume: bool,
}

impl<'a> Config<'a> {
    /// `esp_https_ota` with ESP-IDF's defaults.
    pub fn esp_https_ota(running_version: &'a str) -> Self {
        Config {
            flavour: Flavour::EspHttpsOta,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            stall_limit_ms: 6 * DEFAULT_TIMEOUT_MS,
            follow_redirects: true,
            max_redirects: MAX_REDIRECTS,
            version_check: VersionCheck::None,
            running_version,
            resume: false,
        }
    }

    /// arduino-esp32's `HTTPUpdate` with its defaults (redirects not followed).
    pub fn arduino(facts: DeviceFacts<'a>, running_version: &'a str) -> Self {
        Config {
            flavour: Flavour::ArduinoUpdater(facts),
            timeout_ms: ARDUINO_TIMEOUT_MS,
            stall_limit_ms: ARDUINO_TIMEOUT_MS,
            follow_redirects: false,
            max_redirects: MAX_REDIRECTS,
            version_check: VersionCheck::None,
            running_version,
            resume: false,
        }
    }

    fn arduino_facts(&self) -> Option<&DeviceFacts<'a>> {
        match &self.flavour {
            Flavour::ArduinoUpdater(f) => Some(f),
            Flavour::EspHttpsOta => None,
        }
    }
}

/// Where to connect.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Endpoint<'a> {
    pub host: &'a str,
    pub port: u16,
    /// TLS, with the server's certificate verified against the device's CA and `host`.
    pub tls: bool,
}

/// Why the adapter could not connect (all `ESP_ERR_HTTP_CONNECT` to ESP-IDF).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnectError {
    /// The name did not resolve.
    Dns,
    Refused,
    Timeout,
    /// The TLS handshake failed (the certificate refused, or no TLS server there).
    Tls(TlsFailure),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlsFailure {
    /// Not signed by a CA the device trusts.
    UnknownIssuer,
    /// The certificate does not name the host.
    WrongName,
    /// Outside its validity period (only where the device checks dates).
    Expired,
    /// Anything else in the handshake (protocol versions, ciphers, a non-TLS peer).
    Handshake,
    /// No CA is provisioned to check a server against (ESP-IDF: no `cert_pem`, no bundle).
    NoCa,
}

/// Why a pull ended without an update.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PullError {
    BadUrl(UrlError),
    Connect(ConnectError),
    /// No complete response head within the timeout (`-ESP_ERR_HTTP_EAGAIN`).
    HeadTimeout,
    /// The server closed before the head was complete.
    ClosedInHead,
    Head(HeadError),
    /// A status that is no image (`File not found`, `Client error`, `Server error`).
    Status(u16),
    /// 304 to `esp_https_ota` (`ESP_ERR_HTTP_NOT_MODIFIED`).
    NotModified,
    RedirectWithoutLocation,
    /// An https URL redirected to http (`ESP_ERR_HTTP_REDIRECT_DOWNGRADE`).
    RedirectDowngrade,
    TooManyRedirects,
    /// The image's chip id is not the ESP32-C3's (`Mismatch chip id, expected 5, found N`).
    ChipId {
        found: u16,
    },
    /// The body ended before [`PEEK`] bytes (`Complete headers were not received`).
    ImageTooShort {
        received: u32,
    },
    /// The app descriptor's magic is wrong (only read when the version is checked).
    AppDesc,
    SameVersion,
    Downgrade,
    /// The server closed before the body was complete.
    Truncated {
        received: u64,
    },
    /// No body byte for the stall limit.
    Stalled {
        received: u64,
    },
    /// A malformed chunked body.
    Body(BodyError),
    /// The writer refused (begin, write or end: the `esp_ota_*` code).
    Ota(OtaError),
    // --- the Arduino updater's own (`HTTP_UE_*`, and `Update`'s errors)
    /// `Content-Length` over the free space (-100).
    TooLessSpace {
        length: u64,
    },
    /// No `Content-Length` (-101).
    NoSize,
    /// `x-MD5` not 32 hex digits (-105).
    FaultyMd5,
    /// The first byte is not 0xE9 (-106).
    BinHeader {
        found: u8,
    },
    /// `Update` failed (positive: its error number); MD5 mismatch is `Update` error 7.
    Update(UpdateError),
    /// A 206 whose `Content-Range` does not start where the device asked.
    BadRange {
        first: u64,
    },
}

impl PullError {
    /// The `esp_err_t` `esp_https_ota` returns, or the Arduino updater's `getLastError()`.
    pub fn code(&self) -> i32 {
        match self {
            PullError::BadUrl(_) => 0x102,
            PullError::Connect(_) => 0x7002,
            PullError::HeadTimeout => -0x7007,
            PullError::ClosedInHead | PullError::Head(_) => 0x7004,
            PullError::NotModified => 0x7009,
            PullError::RedirectDowngrade => 0x700D,
            PullError::TooManyRedirects => 0x7001,
            PullError::ChipId { .. } => 0x10A,
            PullError::Ota(e) => e.esp_err(),
            PullError::Stalled { .. } => 0x7007,
            PullError::TooLessSpace { .. } => -100,
            PullError::NoSize => -101,
            PullError::FaultyMd5 => -105,
            PullError::BinHeader { .. } => -106,
            PullError::Update(e) => *e as i32,
            PullError::Status(_)
            | PullError::RedirectWithoutLocation
            | PullError::ImageTooShort { .. }
            | PullError::AppDesc
            | PullError::SameVersion
            | PullError::Downgrade
            | PullError::Truncated { .. }
            | PullError::BadRange { .. }
            | PullError::Body(_) => -1,
        }
    }

    /// The snake_case name scenarios and status messages use.
    pub fn name(&self) -> &'static str {
        match self {
            PullError::BadUrl(_) => "bad_url",
            PullError::Connect(ConnectError::Tls(_)) => "tls_failed",
            PullError::Connect(_) => "connect_failed",
            PullError::HeadTimeout => "head_timeout",
            PullError::ClosedInHead => "closed_in_head",
            PullError::Head(_) => "bad_response",
            PullError::Status(_) => "http_status",
            PullError::NotModified => "not_modified",
            PullError::RedirectWithoutLocation => "redirect_without_location",
            PullError::RedirectDowngrade => "redirect_downgrade",
            PullError::TooManyRedirects => "too_many_redirects",
            PullError::ChipId { .. } => "chip_id_mismatch",
            PullError::ImageTooShort { .. } => "image_too_short",
            PullError::AppDesc => "bad_app_descriptor",
            PullError::SameVersion => "same_version",
            PullError::Downgrade => "downgrade",
            PullError::Truncated { .. } => "truncated",
            PullError::Stalled { .. } => "stalled",
            PullError::Body(_) => "bad_body",
            PullError::Ota(OtaError::InvalidSize { .. } | OtaError::PastEnd { .. }) => "image_too_large",
            PullError::Ota(OtaError::InvalidMagic { .. }) => "invalid_magic",
            PullError::Ota(OtaError::Validate(_)) => "validate_failed",
            PullError::Ota(_) => "ota_failed",
            PullError::TooLessSpace { .. } => "too_less_space",
            PullError::NoSize => "no_size",
            PullError::FaultyMd5 => "faulty_md5",
            PullError::BinHeader { .. } => "bin_header",
            PullError::Update(UpdateError::Md5) => "md5_mismatch",
            PullError::Update(_) => "update_failed",
            PullError::BadRange { .. } => "bad_range",
        }
    }

    /// Whether the bytes already in the slot are still good for a later resume: the network or
    /// the server failed, not the image.
    pub fn keeps_resume_record(&self) -> bool {
        match self {
            PullError::Truncated { .. }
            | PullError::Stalled { .. }
            | PullError::HeadTimeout
            | PullError::ClosedInHead => true,
            PullError::Connect(why) => !matches!(why, ConnectError::Tls(_)),
            PullError::Status(code) => *code >= 500,
            _ => false,
        }
    }
}

/// Something that happened; the adapter logs it and publishes status from it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event<'a> {
    /// A request goes to `url` (after `redirects` redirects).
    Requesting {
        url: &'a str,
        redirects: u8,
    },
    /// The response's status line.
    Status {
        code: u16,
    },
    Redirected {
        to: &'a str,
    },
    /// The image's header checked out; `version` is its descriptor's (empty if not read).
    ImageAccepted {
        version: &'a str,
    },
    Begin {
        size: Option<u32>,
        slot: u8,
    },
    /// A `Range` request was answered with the rest: writing goes on at `at` (`esp_ota_resume`).
    Resumed {
        at: u32,
        size: Option<u32>,
        slot: u8,
    },
    /// A `Range` request was answered with the whole image (200) or 416: from byte 0.
    RangeIgnored {
        status: u16,
    },
    /// The resume record could not be written; this pull will not resume after a cut.
    ResumeNotSaved(crate::nvs::StoreError),
    Progress {
        received: u64,
        total: Option<u64>,
    },
    /// 304 to the Arduino updater: `HTTP_UPDATE_NO_UPDATES`, nothing written.
    NoUpdate,
    Failed(PullError),
    /// Written, verified, boot slot switched: the device restarts.
    Complete(Switched),
}

pub trait Output {
    fn connect(&mut self, to: Endpoint<'_>);
    fn send(&mut self, bytes: &[u8]);
    fn close(&mut self);
    fn event(&mut self, event: Event<'_>);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Idle,
    Connecting,
    Head {
        since_ms: u64,
    },
    Body {
        last_data_ms: u64,
    },
    /// Over (failed, no update, or complete); the connection closing.
    Done,
}

/// The resume record of the pull under way.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Record {
    None,
    /// In NVS for this pull's URL, at this many bytes.
    Kept(u32),
    /// Starting it failed: it is never advanced (its offset could pair with another URL).
    Failed,
}

/// The resume record advances each time this many more bytes are in the slot.
pub const RESUME_CHECKPOINT: u32 = 4096;
const _: () = assert!(RESUME_CHECKPOINT.is_multiple_of(crate::writer::RESUME_UNIT));

pub struct Client {
    state: State,
    url: [u8; MAX_URL],
    url_len: usize,
    redirects: u8,
    /// The first URL was https: no redirect may go to http.
    https_origin: bool,
    head: HeadReader,
    body: Body,
    /// The image's first bytes, kept until its header is checked.
    peek: [u8; PEEK],
    peek_len: usize,
    begun: bool,
    md5: Md5,
    expected_md5: Option<[u8; 16]>,
    reboot: bool,
    /// The URL the pull started with (what a resume record names).
    origin: [u8; MAX_URL],
    origin_len: usize,
    /// The offset the requests ask for with `Range` (0: the whole image).
    range_from: u32,
    /// Where the body's first byte goes in the image (a resumed body: `range_from`).
    base: u32,
    /// Image bytes handed to the sink.
    written: u32,
    record: Record,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            state: State::Idle,
            url: [0; MAX_URL],
            url_len: 0,
            redirects: 0,
            https_origin: false,
            head: HeadReader::default(),
            body: Body::new(Framing::Close),
            peek: [0; PEEK],
            peek_len: 0,
            begun: false,
            md5: Md5::new(),
            expected_md5: None,
            reboot: false,
            origin: [0; MAX_URL],
            origin_len: 0,
            range_from: 0,
            base: 0,
            written: 0,
            record: Record::None,
        }
    }
}

/// Splits a dotted version into up to four numbers (`v2.0.1-rc` → 2, 0, 1); `None` if it has none.
fn numeric_version(v: &str) -> Option<[u32; 4]> {
    let v = v.trim_start_matches(['v', 'V']);
    let mut out = [0u32; 4];
    let mut any = false;
    for (i, part) in v.split('.').take(4).enumerate() {
        let digits = part.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        out[i] = part[..digits].parse().ok()?;
        any = true;
        if digits < part.len() {
            break;
        }
    }
    any.then_some(out)
}

impl Client {
    /// A pull is under way (a second trigger meanwhile is refused by the adapter).
    pub fn is_busy(&self) -> bool {
        !matches!(self.state, State::Idle | State::Done)
    }

    /// The pull completed: once the connection is closed the device restarts.
    pub fn reboot_requested(&self) -> bool {
        self.reboot
    }

    /// When [`Client::poll`] next has something to do.
    pub fn deadline(&self, cfg: &Config<'_>) -> Option<u64> {
        match self.state {
            State::Head { since_ms } => Some(since_ms + cfg.timeout_ms),
            State::Body { last_data_ms } => Some(last_data_ms + cfg.stall_limit_ms),
            _ => None,
        }
    }

    fn url(&self) -> &str {
        url_text(&self.url, self.url_len)
    }

    /// Starts pulling `url`.
    pub fn start<O: Output>(&mut self, url: &str, out: &mut O) {
        self.start_at(url, 0, out);
    }

    /// Starts pulling `url`, asking for the image from byte `from` on (a resume record's
    /// offset; 0: the whole image).
    pub fn start_at<O: Output>(&mut self, url: &str, from: u32, out: &mut O) {
        if self.is_busy() {
            return;
        }
        self.reboot = false;
        self.redirects = 0;
        self.range_from = from;
        self.base = 0;
        self.written = 0;
        self.record = if from > 0 { Record::Kept(from) } else { Record::None };
        match Url::parse(url) {
            Ok(u) if url.len() <= MAX_URL => {
                self.https_origin = u.scheme == Scheme::Https;
                self.url[..url.len()].copy_from_slice(url.as_bytes());
                self.url_len = url.len();
                self.origin = self.url;
                self.origin_len = url.len();
                self.connect(out);
            }
            Ok(_) => self.fail_idle(PullError::BadUrl(UrlError::Characters), out),
            Err(e) => self.fail_idle(PullError::BadUrl(e), out),
        }
    }

    fn fail_idle<O: Output>(&mut self, e: PullError, out: &mut O) {
        self.state = State::Done;
        out.event(Event::Failed(e));
    }

    fn connect<O: Output>(&mut self, out: &mut O) {
        // Only URLs that parsed are stored.
        let url = url_text(&self.url, self.url_len);
        let Ok(u) = Url::parse(url) else { return };
        out.event(Event::Requesting { url, redirects: self.redirects });
        self.state = State::Connecting;
        out.connect(Endpoint { host: u.host, port: u.port, tls: u.scheme == Scheme::Https });
    }

    /// The connection is up: the request goes out.
    pub fn connected<O: Output>(&mut self, cfg: &Config<'_>, now_ms: u64, out: &mut O) {
        if self.state != State::Connecting {
            return;
        }
        let Ok(u) = Url::parse(url_text(&self.url, self.url_len)) else { return };
        self.head = HeadReader::default();
        let arduino = cfg.arduino_facts();
        out.send(b"GET ");
        out.send(u.target.as_bytes());
        out.send(if arduino.is_some() { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
        let host = |out: &mut O| {
            out.send(b"Host: ");
            let v6 = u.host.contains(':');
            if v6 {
                out.send(b"[");
            }
            out.send(u.host.as_bytes());
            if v6 {
                out.send(b"]");
            }
            if !u.default_port() {
                let mut buf = [0u8; 10];
                out.send(b":");
                out.send(decimal(u.port as u64, &mut buf));
            }
            out.send(b"\r\n");
        };
        match arduino {
            None => {
                out.send(b"User-Agent: ");
                out.send(USER_AGENT.as_bytes());
                out.send(b"\r\n");
                host(out);
                if self.range_from > 0 {
                    let mut buf = [0u8; 10];
                    out.send(b"Range: bytes=");
                    out.send(decimal(self.range_from as u64, &mut buf));
                    out.send(b"-\r\n");
                }
            }
            Some(f) => {
                host(out);
                out.send(b"User-Agent: ");
                out.send(ARDUINO_USER_AGENT.as_bytes());
                out.send(b"\r\nConnection: close\r\nCache-Control: no-cache\r\n");
                arduino_headers(f, out);
            }
        }
        out.send(b"\r\n");
        self.state = State::Head { since_ms: now_ms };
    }

    /// The connection could not be made.
    pub fn connect_failed<S: UpdateSink, O: Output>(&mut self, why: ConnectError, sink: &mut S, out: &mut O) {
        if self.state == State::Connecting {
            self.fail(PullError::Connect(why), sink, out);
        }
    }

    fn fail<S: UpdateSink, O: Output>(&mut self, e: PullError, sink: &mut S, out: &mut O) {
        if self.begun {
            sink.abort();
            self.begun = false;
        }
        if !e.keeps_resume_record() {
            self.forget_record(sink);
        }
        out.close();
        self.state = State::Done;
        out.event(Event::Failed(e));
    }

    /// Bytes from the server.
    pub fn data<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        mut input: &[u8],
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        if let State::Head { .. } = self.state {
            let (used, head) = self.head.feed(input);
            input = &input[used..];
            match head {
                None => return,
                Some(Err(e)) => return self.fail(PullError::Head(e), sink, out),
                Some(Ok(head)) => {
                    if !self.on_head(cfg, &head, now_ms, sink, out) {
                        return;
                    }
                }
            }
        }
        if let State::Body { .. } = self.state {
            if input.is_empty() {
                return;
            }
            self.state = State::Body { last_data_ms: now_ms };
            self.on_body(cfg, input, sink, out);
        }
    }

    /// Acts on a response head; `true` when a body follows.
    fn on_head<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        head: &Head,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) -> bool {
        out.event(Event::Status { code: head.status });
        let status = head.status;
        if let Some(facts) = cfg.arduino_facts() {
            match status {
                200 => {}
                304 => {
                    out.close();
                    self.state = State::Done;
                    out.event(Event::NoUpdate);
                    return false;
                }
                301 | 302 | 303 | 307 if cfg.follow_redirects => return self.redirect(cfg, head, sink, out),
                _ => {
                    self.fail(PullError::Status(status), sink, out);
                    return false;
                }
            }
            let Some(length) = head.content_length else {
                self.fail(PullError::NoSize, sink, out);
                return false;
            };
            if length > facts.free_space as u64 {
                self.fail(PullError::TooLessSpace { length }, sink, out);
                return false;
            }
            self.expected_md5 = match head.md5 {
                Md5Header::Absent => None,
                Md5Header::Valid(d) => Some(d),
                Md5Header::Faulty => {
                    self.fail(PullError::FaultyMd5, sink, out);
                    return false;
                }
            };
        } else {
            if self.range_from > 0 {
                match status {
                    206 => return self.on_rest(cfg, head, now_ms, sink, out),
                    200 | 416 => {
                        // `esp_https_ota`: the bytes in the slot are no use, from byte 0.
                        out.event(Event::RangeIgnored { status });
                        self.range_from = 0;
                        self.forget_record(sink);
                        if status == 416 {
                            out.close();
                            self.connect(out);
                            return false;
                        }
                    }
                    _ => {}
                }
            }
            match status {
                200..=299 | 300 | 305 => {}
                301 | 302 | 303 | 307 | 308 if cfg.follow_redirects => {
                    return self.redirect(cfg, head, sink, out);
                }
                304 => {
                    self.fail(PullError::NotModified, sink, out);
                    return false;
                }
                _ => {
                    self.fail(PullError::Status(status), sink, out);
                    return false;
                }
            }
            self.expected_md5 = None;
        }
        self.body = Body::new(Framing::of(head));
        self.peek_len = 0;
        self.begun = false;
        self.base = 0;
        self.written = 0;
        self.md5 = Md5::new();
        self.state = State::Body { last_data_ms: now_ms };
        if self.body.complete() {
            // `Content-Length: 0` is no length (`esp_http_client` reads it as chunked), so only
            // an empty chunked body ends here.
            self.finish(cfg, sink, out);
            return false;
        }
        true
    }

    /// A 206 to a resumed pull: the rest of the image, written on from `range_from`.
    fn on_rest<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        head: &Head,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) -> bool {
        let from = self.range_from;
        if let Some(r) = head.content_range
            && r.first != from as u64
        {
            self.fail(PullError::BadRange { first: r.first }, sink, out);
            return false;
        }
        self.body = Body::new(Framing::of(head));
        self.base = from;
        self.written = from;
        self.expected_md5 = None;
        match sink.resume(from) {
            Ok(slot) => {
                self.begun = true;
                let size = self.total().map(|t| t as u32);
                out.event(Event::Resumed { at: from, size, slot });
            }
            Err(e) => {
                self.fail(PullError::Ota(e), sink, out);
                return false;
            }
        }
        self.state = State::Body { last_data_ms: now_ms };
        if self.body.complete() {
            self.finish(cfg, sink, out);
            return false;
        }
        true
    }

    /// The resume record goes (the slot's bytes are no use to a later pull).
    fn forget_record<S: UpdateSink>(&mut self, sink: &mut S) {
        if matches!(self.record, Record::Kept(_)) {
            let _ = sink.clear_resume_record();
        }
        self.record = Record::None;
    }

    /// The resume record follows what is in the slot, every [`RESUME_CHECKPOINT`] bytes. The
    /// point kept is a multiple of it, not where the read ended: how TCP cut the body must not
    /// change where a resumed download starts (the emulator and QEMU resume at the same byte).
    fn checkpoint<S: UpdateSink, O: Output>(&mut self, cfg: &Config<'_>, sink: &mut S, out: &mut O) {
        if !cfg.resume || cfg.arduino_facts().is_some() || !self.begun {
            return;
        }
        let at = self.written - self.written % RESUME_CHECKPOINT;
        let saved = match self.record {
            Record::Failed => return,
            Record::Kept(k) if at / RESUME_CHECKPOINT <= k / RESUME_CHECKPOINT => return,
            Record::None if at < RESUME_CHECKPOINT => return,
            Record::Kept(_) => sink.advance_resume_record(at),
            Record::None => sink.start_resume_record(url_text(&self.origin, self.origin_len), at),
        };
        match saved {
            Ok(()) => self.record = Record::Kept(at),
            Err(e) => {
                // A record half-started is cleared; one that stopped advancing stays true.
                if self.record == Record::None {
                    let _ = sink.clear_resume_record();
                }
                self.record = Record::Failed;
                out.event(Event::ResumeNotSaved(e));
            }
        }
    }

    fn redirect<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        head: &Head,
        sink: &mut S,
        out: &mut O,
    ) -> bool {
        let Some(location) = head.location() else {
            self.fail(PullError::RedirectWithoutLocation, sink, out);
            return false;
        };
        if self.redirects >= cfg.max_redirects {
            self.fail(PullError::TooManyRedirects, sink, out);
            return false;
        }
        let mut next = [0u8; MAX_URL];
        let len = match resolve(self.url(), location, &mut next) {
            Ok(len) => len,
            Err(e) => {
                self.fail(PullError::BadUrl(e), sink, out);
                return false;
            }
        };
        let next_url = core::str::from_utf8(&next[..len]).unwrap_or("");
        if self.https_origin && !next_url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
            self.fail(PullError::RedirectDowngrade, sink, out);
            return false;
        }
        out.event(Event::Redirected { to: next_url });
        out.close();
        self.url = next;
        self.url_len = len;
        self.redirects += 1;
        self.connect(out);
        false
    }

    fn on_body<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        input: &[u8],
        sink: &mut S,
        out: &mut O,
    ) {
        let mut body = self.body;
        let mut failed: Option<PullError> = None;
        let fed = body.feed(input, |chunk| {
            if failed.is_none()
                && let Err(e) = self.take_image_bytes(cfg, chunk, false, sink, out)
            {
                failed = Some(e);
            }
        });
        self.body = body;
        if let Some(e) = failed {
            return self.fail(e, sink, out);
        }
        if let Err(e) = fed {
            return self.fail(PullError::Body(e), sink, out);
        }
        self.checkpoint(cfg, sink, out);
        out.event(Event::Progress { received: self.received(), total: self.total() });
        if self.body.complete() {
            self.finish(cfg, sink, out);
        }
    }

    /// The image's length: the body's, plus what a resumed pull had already.
    fn total(&self) -> Option<u64> {
        match self.body.framing() {
            Framing::Length(n) => Some(self.base as u64 + n),
            _ => None,
        }
    }

    /// Image bytes received, counted from the image's first byte.
    fn received(&self) -> u64 {
        self.base as u64 + self.body.received()
    }

    /// Image bytes: kept until the header is checked, then written.
    fn take_image_bytes<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        mut chunk: &[u8],
        at_end: bool,
        sink: &mut S,
        out: &mut O,
    ) -> Result<(), PullError> {
        if !self.begun {
            let take = chunk.len().min(PEEK - self.peek_len);
            self.peek[self.peek_len..self.peek_len + take].copy_from_slice(&chunk[..take]);
            self.peek_len += take;
            chunk = &chunk[take..];
            let body_done = at_end || self.total().is_some_and(|t| self.peek_len as u64 == t);
            if self.peek_len < PEEK && !body_done {
                return Ok(());
            }
            self.check_and_begin(cfg, sink, out)?;
            let head = self.peek;
            self.write(cfg, &head[..self.peek_len], sink)?;
        }
        if !chunk.is_empty() {
            self.write(cfg, chunk, sink)?;
        }
        Ok(())
    }

    fn write<S: UpdateSink>(&mut self, cfg: &Config<'_>, data: &[u8], sink: &mut S) -> Result<(), PullError> {
        self.md5.update(data);
        sink.write(data).map_err(|e| match cfg.arduino_facts() {
            Some(_) => PullError::Update(UpdateError::at_write(&e)),
            None => PullError::Ota(e),
        })?;
        self.written += data.len() as u32;
        Ok(())
    }

    /// The header checks on the first bytes, then `esp_ota_begin` / `Update.begin`.
    fn check_and_begin<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        sink: &mut S,
        out: &mut O,
    ) -> Result<(), PullError> {
        let peek = &self.peek[..self.peek_len];
        let first = peek.first().copied().unwrap_or(0);
        let arduino = cfg.arduino_facts().is_some();
        if arduino {
            if first != IMAGE_MAGIC {
                return Err(PullError::BinHeader { found: first });
            }
        } else {
            // Only reached with the peek full or the body over.
            if peek.len() < 14 {
                return Err(PullError::ImageTooShort { received: peek.len() as u32 });
            }
            let chip = u16::from_le_bytes([peek[12], peek[13]]);
            if chip != CHIP_ID_ESP32C3 {
                return Err(PullError::ChipId { found: chip });
            }
            if peek.len() < PEEK {
                return Err(PullError::ImageTooShort { received: peek.len() as u32 });
            }
            if first != IMAGE_MAGIC {
                return Err(PullError::Ota(OtaError::InvalidMagic { found: first }));
            }
        }
        let mut version = "";
        if cfg.version_check != VersionCheck::None {
            let at = APP_DESC_IMAGE_OFFSET as usize;
            let desc = peek.get(at..at + APP_DESC_LEN).ok_or(PullError::AppDesc)?;
            if u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]) != APP_DESC_MAGIC {
                return Err(PullError::AppDesc);
            }
            version = crate::app_desc::c_str(&desc[16..48]);
            if version == cfg.running_version {
                return Err(PullError::SameVersion);
            }
            if cfg.version_check == VersionCheck::RefuseDowngrade
                && let (Some(offered), Some(running)) =
                    (numeric_version(version), numeric_version(cfg.running_version))
                && offered < running
            {
                return Err(PullError::Downgrade);
            }
        }
        out.event(Event::ImageAccepted { version });
        let size = self.total().map(|t| t as u32);
        match sink.begin(size.unwrap_or(0)) {
            Ok(slot) => {
                self.begun = true;
                out.event(Event::Begin { size, slot });
                Ok(())
            }
            Err(e) if arduino => Err(PullError::Update(UpdateError::at_begin(&e))),
            Err(e) => Err(PullError::Ota(e)),
        }
    }

    /// The body is complete: the image is checked and the boot slot switched.
    fn finish<S: UpdateSink, O: Output>(&mut self, cfg: &Config<'_>, sink: &mut S, out: &mut O) {
        if !self.begun
            && let Err(e) = self.take_image_bytes(cfg, &[], true, sink, out)
        {
            return self.fail(e, sink, out);
        }
        if let Some(expected) = self.expected_md5 {
            let digest: [u8; 16] = core::mem::take(&mut self.md5).finalize().into();
            if digest != expected {
                return self.fail(PullError::Update(UpdateError::Md5), sink, out);
            }
        }
        self.begun = false;
        // Before the boot switch: a cut after it must not leave a record pointing into the
        // slot that is now the running one's rollback partner.
        self.forget_record(sink);
        match sink.end() {
            Ok(switched) => {
                out.close();
                self.state = State::Done;
                self.reboot = true;
                out.event(Event::Complete(switched));
            }
            Err(e) => {
                let e = match cfg.arduino_facts() {
                    Some(_) => PullError::Update(UpdateError::at_end(&e)),
                    None => PullError::Ota(e),
                };
                out.close();
                self.state = State::Done;
                out.event(Event::Failed(e));
            }
        }
    }

    /// The server closed the connection.
    pub fn closed<S: UpdateSink, O: Output>(&mut self, cfg: &Config<'_>, sink: &mut S, out: &mut O) {
        match self.state {
            State::Head { .. } => self.fail(PullError::ClosedInHead, sink, out),
            State::Body { .. } if self.body.framing() == Framing::Close => self.finish(cfg, sink, out),
            State::Body { .. } => {
                let received = self.received();
                self.fail(PullError::Truncated { received }, sink, out)
            }
            State::Connecting => self.fail(PullError::Connect(ConnectError::Refused), sink, out),
            State::Idle | State::Done => {}
        }
    }

    /// Time passed: a head that does not come, a body that stalls.
    pub fn poll<S: UpdateSink, O: Output>(
        &mut self,
        cfg: &Config<'_>,
        now_ms: u64,
        sink: &mut S,
        out: &mut O,
    ) {
        match self.state {
            State::Head { since_ms } if now_ms >= since_ms + cfg.timeout_ms => {
                self.fail(PullError::HeadTimeout, sink, out)
            }
            State::Body { last_data_ms } if now_ms >= last_data_ms + cfg.stall_limit_ms => {
                let received = self.received();
                self.fail(PullError::Stalled { received }, sink, out)
            }
            _ => {}
        }
    }
}

fn url_text(buf: &[u8; MAX_URL], len: usize) -> &str {
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// `location` against `base` (absolute URLs as they are; `/path` on the same origin).
fn resolve(base: &str, location: &str, out: &mut [u8; MAX_URL]) -> Result<usize, UrlError> {
    let mut len = 0;
    let mut put = |s: &str| -> Result<(), UrlError> {
        let end = len + s.len();
        if end > MAX_URL {
            return Err(UrlError::Characters);
        }
        out[len..end].copy_from_slice(s.as_bytes());
        len = end;
        Ok(())
    };
    if Url::parse(location).is_ok() {
        put(location)?;
    } else if location.starts_with('/') && !location.starts_with("//") {
        let b = Url::parse(base)?;
        put(b.scheme.name())?;
        put("://")?;
        let v6 = b.host.contains(':');
        if v6 {
            put("[")?;
        }
        put(b.host)?;
        if v6 {
            put("]")?;
        }
        if !b.default_port() {
            let mut buf = [0u8; 10];
            put(":")?;
            put(core::str::from_utf8(decimal(b.port as u64, &mut buf)).unwrap_or(""))?;
        }
        put(location)?;
    } else {
        return Err(Url::parse(location).err().unwrap_or(UrlError::Scheme));
    }
    let text = core::str::from_utf8(&out[..len]).map_err(|_| UrlError::Characters)?;
    Url::parse(text)?;
    Ok(len)
}

fn arduino_headers<O: Output>(f: &DeviceFacts<'_>, out: &mut O) {
    let mut num = [0u8; 20];
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mac = |m: &[u8; 6], buf: &mut [u8; 17]| {
        for (i, b) in m.iter().enumerate() {
            buf[i * 3] = HEX[(b >> 4) as usize];
            buf[i * 3 + 1] = HEX[(b & 15) as usize];
            if i < 5 {
                buf[i * 3 + 2] = b':';
            }
        }
    };
    let mut m = [0u8; 17];
    mac(&f.sta_mac, &mut m);
    out.send(b"x-ESP32-STA-MAC: ");
    out.send(&m);
    mac(&f.ap_mac, &mut m);
    out.send(b"\r\nx-ESP32-AP-MAC: ");
    out.send(&m);
    out.send(b"\r\nx-ESP32-free-space: ");
    out.send(decimal(f.free_space as u64, &mut num));
    out.send(b"\r\nx-ESP32-sketch-size: ");
    out.send(decimal(f.sketch_size as u64, &mut num));
    if let Some(md5) = f.sketch_md5 {
        let mut hex = [0u8; 32];
        crate::hex::encode_lower(&md5, &mut hex);
        out.send(b"\r\nx-ESP32-sketch-md5: ");
        out.send(&hex);
    }
    if let Some(sha) = f.sketch_sha256 {
        let mut hex = [0u8; 64];
        crate::hex::encode_upper(&sha, &mut hex);
        out.send(b"\r\nx-ESP32-sketch-sha256: ");
        out.send(&hex);
    }
    out.send(b"\r\nx-ESP32-chip-size: ");
    out.send(decimal(f.chip_size as u64, &mut num));
    out.send(b"\r\nx-ESP32-sdk-version: ");
    out.send(f.sdk_version.as_bytes());
    out.send(b"\r\nx-ESP32-mode: sketch\r\n");
    if !f.version.is_empty() {
        out.send(b"x-ESP32-version: ");
        out.send(f.version.as_bytes());
        out.send(b"\r\n");
    }
}

/// `n` in decimal.
fn decimal(mut n: u64, buf: &mut [u8]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 0 {
            return &buf[at..];
        }
    }
}

/// `esp_https_ota` writes through the app's `esp_ota_*`; an adapter running the Arduino
/// updater's flavour passes [`crate::proto::arduino::library_writes`] of its config, as
/// `HTTPUpdate` writes through the `Update` library.
impl crate::session::Protocol for Client {}

impl PullError {
    /// Every name [`PullError::name`] gives, for those who read a status's `err` back (the
    /// harness's outcomes for the pull).
    pub const NAMES: [&'static str; 30] = [
        "bad_url",
        "tls_failed",
        "connect_failed",
        "head_timeout",
        "closed_in_head",
        "bad_response",
        "http_status",
        "not_modified",
        "redirect_without_location",
        "redirect_downgrade",
        "too_many_redirects",
        "chip_id_mismatch",
        "image_too_short",
        "bad_app_descriptor",
        "same_version",
        "downgrade",
        "truncated",
        "stalled",
        "bad_body",
        "image_too_large",
        "invalid_magic",
        "validate_failed",
        "ota_failed",
        "too_less_space",
        "no_size",
        "faulty_md5",
        "bin_header",
        "md5_mismatch",
        "update_failed",
        "bad_range",
    ];
}

pub mod script;
