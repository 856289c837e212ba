//! The Arduino `/update` upload form (arduino-esp32's `HTTPUpdateServer` on `WebServer`), as
//! the device serves it, sans-IO (spec: `arduino-http-and-web-upload.md` §3–4):
//!
//! - `GET /update`: the form ([`pages::FORM_PAGE`]); `GET /`: which image runs.
//! - `POST /update`, `multipart/form-data`: the first file part is the upload. A part named
//!   `filesystem` targets a filesystem partition, which this device has not ("Partition Could
//!   Not be Found"); any other name the next OTA slot, through `Update` ([`OtaConfig::update_library`]:
//!   4 KiB buffers, lazy erases, the head withheld), begun with `HTTPUpdateServer`'s declared
//!   size, the free sketch space less 4 KiB, not the file's. The part's end is `Update.end(true)`.
//! - The answer comes once the whole body is read: `Update Success! Rebooting...` (then the
//!   device restarts), or status 200 `Update error: <Update's text>` — errors are 200, as there.
//! - Credentials (`web_user`, `web_password`): Basic; a request without them gets 401 with
//!   the challenge, and an upload without them is read and dropped, the flash untouched.
//!
//! Where the original misbehaves, this one answers instead (each noted where it happens): a
//! declared body larger than the slot can take is refused before any byte is read (413), a
//! POST without a file is refused (the original restarts without updating), and a request
//! that stalls for [`DATA_TIMEOUT_MS`] or disconnects aborts the update (`UPLOAD_FILE_ABORTED`).
//! One client at a time; every response closes its connection.

pub mod lines;
pub mod pages;
pub mod script;
pub mod service;
pub mod settings;
#[cfg(test)]
mod tests;

use crate::log::{LogEvent, LogSink};
use crate::proto::arduino::UpdateError;
use crate::proto::http_server::multipart::{self, Delimiter, MultipartError};
use crate::proto::http_server::{Framing, Head, HeadReader, Method};
use crate::slot::{BootIndex, SlotName};
use crate::update::{Switched, UpdateSink};
use crate::writer::{OtaConfig, OtaError};
use lines::{AbortReason, WebLine};
use settings::Credentials;

/// The port `WebServer` listens on in the examples.
pub const DEFAULT_PORT: u16 = 80;
/// `HTTPUpdateServer`'s default path.
pub const FORM_PATH: &str = "/update";
/// How long a request may go without bytes (`HTTP_MAX_DATA_WAIT`, `HTTP_MAX_POST_WAIT`).
pub const DATA_TIMEOUT_MS: u64 = 5000;
/// What a body may carry besides the image (part heads, delimiters, other fields): a declared
/// length past the slot plus this is refused at once.
pub const BODY_SLACK: u64 = 64 * 1024;

/// How `Update` writes (the same library as ArduinoOTA's).
pub fn library_writes(app: OtaConfig) -> OtaConfig {
    crate::proto::arduino::library_writes(app)
}

/// What `HTTPUpdateServer` passes to `Update.begin`: `(ESP.getFreeSketchSpace() - 0x1000) &
/// 0xFFFFF000`, the slot's size less at least 4 KiB, whatever the file's size.
pub fn declared_size(slot_size: u32) -> u32 {
    slot_size.saturating_sub(0x1000) & !0xFFF
}

/// How `Update.write` fails, as the form reports it. A first byte other than `0xE9` is
/// "Decryption error" on ESP32: `Update`'s default crypt mode takes such an image for an
/// encrypted one and has no key (spec §4).
pub(crate) fn at_write(e: &OtaError) -> UpdateError {
    match e {
        OtaError::InvalidMagic { .. } => UpdateError::Decryption,
        e => UpdateError::at_write(e),
    }
}

/// What one device serves, lent per call.
#[derive(Clone, Copy, Debug)]
pub struct Site<'a> {
    pub credentials: Option<&'a Credentials>,
    /// The running image, for the index.
    pub project: &'a str,
    pub version: &'a str,
    /// The size of the slot an update goes to (0: none).
    pub slot_size: u32,
    /// Another path runs an update: an upload is refused.
    pub others_busy: bool,
}

/// Something that happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event<'a> {
    Line(WebLine<'a>),
    /// The upload crossed a quarter of the request body.
    Progress {
        percent: u8,
    },
    /// The file's last byte is written; `Update.end` comes next.
    Received,
    /// Verified, boot slot switched: the device restarts once the answer is out.
    Complete(Switched),
}

impl Event<'_> {
    pub fn log(&self, log: &mut impl LogSink) {
        match self {
            Event::Line(line) => log.log(&LogEvent::Module(line)),
            Event::Progress { percent } => log.log(&LogEvent::OtaProgress { percent: *percent }),
            Event::Received => {}
            Event::Complete(s) => log.log(&LogEvent::OtaComplete {
                slot: SlotName(BootIndex::Ota(s.slot)),
                seq: s.seq,
                state: s.state,
            }),
        }
    }
}

/// Receives what the server sends and reports.
pub trait Output {
    fn send(&mut self, bytes: &[u8]);
    /// Close the connection once what was sent is out.
    fn close(&mut self);
    fn event(&mut self, event: Event<'_>);
}

/// An answer given once the request's body is read (so the client, still sending, reads it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Unauthorized,
    Busy,
    NotMultipart,
}

/// The part of the body being read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    /// Before the first part, between parts, or a part that is not written.
    Skip,
    /// The file being written.
    File,
}

struct Upload {
    reader: multipart::Reader,
    file: FileState,
}

/// What the upload did so far, apart from the reader.
struct FileState {
    part: Part,
    seen_file: bool,
    began: bool,
    error: Option<UpdateError>,
    malformed: Option<MultipartError>,
    switched: Option<Switched>,
    quarter: u8,
}

// The core allocates nothing: the upload's multipart reader lives in place, and the server
// holds one connection's state at a time.
#[allow(clippy::large_enum_variant)]
enum BodyKind {
    Discard(Answer),
    Upload(Upload),
}

struct Body {
    left: u64,
    total: u64,
    kind: BodyKind,
}

#[allow(clippy::large_enum_variant)]
enum State {
    Head,
    Body(Body),
    /// The answer is out (or the connection given up): nothing more is read.
    Closed,
}

/// One connection's server.
pub struct Server {
    head: HeadReader,
    state: State,
    last_input_ms: u64,
    reboot: bool,
}

impl Server {
    pub fn new(now_ms: u64) -> Self {
        Server { head: HeadReader::default(), state: State::Head, last_input_ms: now_ms, reboot: false }
    }

    /// The answer is out: the connection closes (and the device restarts if it asked to).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// An upload is being written.
    pub fn writing(&self) -> bool {
        matches!(&self.state, State::Body(Body { kind: BodyKind::Upload(u), .. }) if u.file.writing())
    }

    /// The upload completed and its answer is out.
    pub fn reboot_requested(&self) -> bool {
        self.reboot
    }

    /// When the connection is given up for silence.
    pub fn deadline(&self) -> Option<u64> {
        (!self.is_closed()).then_some(self.last_input_ms + DATA_TIMEOUT_MS)
    }

    /// Bytes from the client.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        now_ms: u64,
        site: &Site<'_>,
        sink: &mut dyn UpdateSink,
        out: &mut dyn Output,
    ) {
        self.last_input_ms = now_ms;
        while !input.is_empty() {
            match &mut self.state {
                State::Closed => return,
                State::Head => match self.head.feed(input) {
                    Ok(None) => return,
                    Ok(Some(n)) => {
                        input = &input[n..];
                        self.on_head(site, sink, out);
                    }
                    Err(e) => return self.refuse(e.status(), e.reason(), out),
                },
                State::Body(body) => {
                    let n = (body.left.min(input.len() as u64)) as usize;
                    let (piece, rest) = input.split_at(n);
                    input = rest;
                    body.left -= n as u64;
                    if let BodyKind::Upload(up) = &mut body.kind {
                        up.feed(piece, body.total - body.left, body.total, site, sink, out);
                    }
                    if body.left == 0 {
                        self.finish(sink, out);
                    }
                }
            }
        }
    }

    /// The client closed: an upload in progress is aborted (no answer can be sent).
    pub fn closed(&mut self, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        self.give_up(AbortReason::Disconnected, sink, out);
    }

    /// Time passed: a request silent for [`DATA_TIMEOUT_MS`] is given up.
    pub fn poll(&mut self, now_ms: u64, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        if self.deadline().is_some_and(|d| now_ms >= d) {
            self.give_up(AbortReason::Timeout, sink, out);
            out.close();
        }
    }

    fn give_up(&mut self, why: AbortReason, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        if let State::Body(Body { kind: BodyKind::Upload(up), left, total }) = &self.state
            && up.file.writing()
        {
            sink.abort();
            out.event(Event::Line(WebLine::Aborted { received: total - left, why }));
        }
        self.state = State::Closed;
    }

    /// Answers `status` with `reason` as the body, logs it, and closes.
    fn refuse(&mut self, status: u16, reason: &str, out: &mut dyn Output) {
        out.event(Event::Line(WebLine::Refused { status, reason }));
        self.answer_text(status, &[reason, "\r\n"], &[], out);
    }

    fn answer_text(&mut self, status: u16, pieces: &[&str], extra: &[(&str, &str)], out: &mut dyn Output) {
        pages::respond(&mut |b: &[u8]| out.send(b), status, "text/plain", extra, pieces, false);
        self.close(out);
    }

    fn close(&mut self, out: &mut dyn Output) {
        self.state = State::Closed;
        out.close();
    }

    fn on_head(&mut self, site: &Site<'_>, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        // The head borrows the reader's buffer: copy out what the answer needs.
        let route = match self.head.head() {
            Ok(head) => Route::of(&head, site),
            Err(e) => Route::Refuse(e.status(), e.reason()),
        };
        let mut send = |b: &[u8]| out.send(b);
        match route {
            Route::Refuse(status, reason) => self.refuse(status, reason, out),
            Route::NotFound => {
                pages::respond(&mut send, 404, "text/plain", &[], &["Not found\r\n"], false);
                self.close(out);
            }
            Route::Method => {
                pages::respond(
                    &mut send,
                    405,
                    "text/plain",
                    &[("Allow", "GET, POST")],
                    &["Method Not Allowed\r\n"],
                    false,
                );
                self.close(out);
            }
            Route::Index { head_only } => {
                pages::index(&mut send, site.project, site.version, head_only);
                self.close(out);
            }
            Route::Form { head_only, authorized } => {
                if authorized {
                    pages::respond(&mut send, 200, "text/html", &[], &[pages::FORM_PAGE], head_only);
                } else {
                    out.event(Event::Line(WebLine::AuthFailed { post: false }));
                    pages::respond(
                        &mut |b: &[u8]| out.send(b),
                        401,
                        "text/html",
                        &[pages::CHALLENGE],
                        &[],
                        head_only,
                    );
                }
                self.close(out);
            }
            Route::Upload { length, delimiter, authorized } => {
                let limit = u64::from(site.slot_size) + BODY_SLACK;
                let discard = |answer| Body { left: length, total: length, kind: BodyKind::Discard(answer) };
                let body = if !authorized {
                    out.event(Event::Line(WebLine::AuthFailed { post: true }));
                    discard(Answer::Unauthorized)
                } else if site.others_busy {
                    out.event(Event::Line(WebLine::Busy));
                    discard(Answer::Busy)
                } else {
                    match delimiter {
                        Err(_) => discard(Answer::NotMultipart),
                        Ok(d) => Body {
                            left: length,
                            total: length,
                            kind: BodyKind::Upload(Upload {
                                reader: multipart::Reader::new(d),
                                file: FileState {
                                    part: Part::Skip,
                                    seen_file: false,
                                    began: false,
                                    error: None,
                                    malformed: None,
                                    switched: None,
                                    quarter: 0,
                                },
                            }),
                        },
                    }
                };
                // A body that long is not read through: the answer goes now (413 whatever else
                // is wrong, so a 1 GB upload costs one head and leaves the flash untouched).
                if length > limit {
                    out.event(Event::Line(WebLine::Refused {
                        status: 413,
                        reason: "the upload is larger than the update slot",
                    }));
                    let text = UpdateError::Space.text();
                    return self.answer_text(413, &[pages::ERROR_PREFIX, text, "\r\n"], &[], out);
                }
                self.state = State::Body(body);
                if length == 0 {
                    self.finish(sink, out);
                }
            }
        }
    }

    /// The whole body is read: the answer.
    fn finish(&mut self, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        let State::Body(body) = core::mem::replace(&mut self.state, State::Closed) else { return };
        let mut send = |b: &[u8]| out.send(b);
        match body.kind {
            BodyKind::Discard(Answer::Unauthorized) => {
                pages::respond(&mut send, 401, "text/html", &[pages::CHALLENGE], &[], false);
            }
            BodyKind::Discard(Answer::Busy) => {
                let pieces = [pages::ERROR_PREFIX, "another update is running\r\n"];
                pages::respond(&mut send, 503, "text/html", &[], &pieces, false);
            }
            BodyKind::Discard(Answer::NotMultipart) => {
                out.event(Event::Line(WebLine::Refused {
                    status: 400,
                    reason: "not a multipart/form-data upload",
                }));
                let pieces = [pages::ERROR_PREFIX, "expected a multipart/form-data upload\r\n"];
                pages::respond(&mut |b: &[u8]| out.send(b), 400, "text/html", &[], &pieces, false);
            }
            BodyKind::Upload(Upload { file: mut up, .. }) => {
                if up.writing() {
                    // The body ended inside the file (its closing delimiter never came).
                    sink.abort();
                    up.fail(UpdateError::Aborted, None, out);
                }
                if let Some(e) = up.error {
                    let pieces = [pages::ERROR_PREFIX, e.text(), "\r\n"];
                    pages::respond(&mut |b: &[u8]| out.send(b), 200, "text/html", &[], &pieces, false);
                } else if up.switched.is_some() {
                    pages::respond(
                        &mut |b: &[u8]| out.send(b),
                        200,
                        "text/html",
                        &[],
                        &[pages::SUCCESS_PAGE],
                        false,
                    );
                    self.reboot = true;
                } else if let Some(m) = up.malformed {
                    out.event(Event::Line(WebLine::Refused { status: 400, reason: m.reason() }));
                    let pieces = [pages::ERROR_PREFIX, m.reason(), "\r\n"];
                    pages::respond(&mut |b: &[u8]| out.send(b), 400, "text/html", &[], &pieces, false);
                } else {
                    // The original answers success and restarts without an update.
                    out.event(Event::Line(WebLine::NoFile));
                    let pieces = [pages::ERROR_PREFIX, "no file in the request\r\n"];
                    pages::respond(&mut |b: &[u8]| out.send(b), 400, "text/html", &[], &pieces, false);
                }
            }
        }
        out.close();
    }
}

/// What a request head asks for, copied out of the head.
enum Route {
    Refuse(u16, &'static str),
    NotFound,
    Method,
    Index { head_only: bool },
    Form { head_only: bool, authorized: bool },
    Upload { length: u64, delimiter: Result<Delimiter, MultipartError>, authorized: bool },
}

impl Route {
    fn of(head: &Head<'_>, site: &Site<'_>) -> Route {
        let authorized = site.credentials.is_none_or(|c| c.accept(head.header("authorization")));
        let head_only = head.method == Method::Head;
        match (head.path, head.method) {
            ("/", Method::Get | Method::Head) => Route::Index { head_only },
            (FORM_PATH, Method::Get | Method::Head) => Route::Form { head_only, authorized },
            (FORM_PATH, Method::Post) => {
                let length = match head.framing() {
                    Ok(Framing::Length(n)) => n,
                    Ok(Framing::None) => 0,
                    // `WebServer` reads a body by its length only.
                    Ok(Framing::Chunked) => return Route::Refuse(411, "Content-Length required"),
                    Err(e) => return Route::Refuse(e.status(), e.reason()),
                };
                let delimiter = Delimiter::of_content_type(head.header("content-type").unwrap_or(""));
                Route::Upload { length, delimiter, authorized }
            }
            ("/" | FORM_PATH, _) => Route::Method,
            _ => Route::NotFound,
        }
    }
}

impl Upload {
    /// The next piece of the body; `read` of `total` bytes are in.
    fn feed(
        &mut self,
        piece: &[u8],
        read: u64,
        total: u64,
        site: &Site<'_>,
        sink: &mut dyn UpdateSink,
        out: &mut dyn Output,
    ) {
        let Upload { reader, file } = self;
        if file.malformed.is_none() {
            let fed = reader.feed(piece, &mut |event| file.on_event(event, site, &mut *sink, &mut *out));
            if let Err(e) = fed {
                file.malformed = Some(e);
                if file.writing() {
                    sink.abort();
                    file.fail(UpdateError::Aborted, None, out);
                }
            }
        }
        if file.writing() {
            // One line per quarter of the body crossed, as the other paths log their image's.
            let quarter = (read * 4 / total.max(1)) as u8;
            if quarter > file.quarter && quarter < 4 {
                file.quarter = quarter;
                out.event(Event::Progress { percent: quarter * 25 });
            }
        }
    }
}

impl FileState {
    fn writing(&self) -> bool {
        self.began && self.switched.is_none() && self.error.is_none()
    }

    fn fail(&mut self, error: UpdateError, cause: Option<OtaError>, out: &mut dyn Output) {
        self.error = Some(error);
        out.event(Event::Line(WebLine::UploadFailed { error, cause }));
    }

    /// `HTTPUpdateServer`'s upload handler, per multipart event.
    fn on_event(
        &mut self,
        event: multipart::Event<'_>,
        site: &Site<'_>,
        sink: &mut dyn UpdateSink,
        out: &mut dyn Output,
    ) {
        match event {
            multipart::Event::PartStart { name, filename: Some(file), .. } => {
                self.part = Part::Skip;
                if self.seen_file {
                    out.event(Event::Line(WebLine::ExtraFile));
                    return;
                }
                self.seen_file = true;
                if name == "filesystem" {
                    // `Update.begin(SPIFFS.totalBytes(), U_SPIFFS)`: no such partition here.
                    return self.fail(UpdateError::NoPartition, None, out);
                }
                let declared = declared_size(site.slot_size);
                match sink.begin(declared) {
                    Ok(slot) => {
                        self.began = true;
                        self.part = Part::File;
                        let slot = SlotName(BootIndex::Ota(slot));
                        out.event(Event::Line(WebLine::Upload { file, slot, declared }));
                    }
                    Err(e) => self.fail(UpdateError::at_begin(&e), Some(e), out),
                }
            }
            multipart::Event::PartStart { filename: None, .. } => self.part = Part::Skip,
            multipart::Event::Data(bytes) => {
                if self.part == Part::File
                    && self.writing()
                    && let Err(e) = sink.write(bytes)
                {
                    sink.abort();
                    self.fail(at_write(&e), Some(e), out);
                }
            }
            multipart::Event::PartEnd => {
                if self.part == Part::File && self.writing() {
                    out.event(Event::Received);
                    // `Update.end(true)`: the size becomes what was written.
                    match sink.end() {
                        Ok(switched) => {
                            self.switched = Some(switched);
                            out.event(Event::Complete(switched));
                        }
                        Err(e) => self.fail(UpdateError::at_end(&e), Some(e), out),
                    }
                }
                self.part = Part::Skip;
            }
            multipart::Event::End => {}
        }
    }
}
