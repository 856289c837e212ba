//! ElegantOTA v3 (the portal most ESP sketches copy), as the device serves it on `WebServer`,
//! sans-IO:
//!
//! - `GET /update`: the portal ([`pages::PAGE`]); `GET /ota/metadata`: chip family and sizes
//!   (unauthenticated, as there).
//! - `GET /ota/start?mode=fr|fs&hash=<md5>`: a `hash` that is not 32 hex digits is refused
//!   *before* anything opens ("That MD5 digest is not valid": the original once checked it after
//!   `Update.begin`, left the slot open and refused every later update); then
//!   `Update.begin(UPDATE_SIZE_UNKNOWN)` — the whole slot — and the digest. 200 `OK`, or 400 with
//!   `Update`'s text. `mode=fs` needs a filesystem partition, which this device has not.
//! - `POST /ota/upload`, `multipart/form-data`: the file written into the update the start
//!   opened, chunk by chunk, then `Update.end(true)` (the MD5 checked first). 200 `OK` and
//!   the device restarts 2 s later (`ElegantOTA.loop()`), or 400 with the error; `Connection:
//!   close` either way.
//! - Credentials (`web_user`, `web_password`): Basic, on every route but the metadata.
//!
//! Where the original misbehaves, this one answers (each noted where it happens): an upload
//! without a start is refused (the original answers `OK` and restarts into the old image);
//! an upload without credentials is read and dropped, not written (the original checks them at
//! the part's start only and writes the chunks anyway); a start no upload follows is closed
//! after [`START_TIMEOUT_MS`] (the original keeps it open, refusing every other path, until
//! a restart); a disconnect or [`DATA_TIMEOUT_MS`] of silence closes the update; a second start
//! before any upload closes the first (a reloaded page); a start while another path writes is
//! refused. One client at a time; every response closes its connection.

pub mod lines;
pub mod pages;
pub mod script;
pub mod service;
#[cfg(test)]
mod tests;

use crate::log::{LogEvent, LogSink};
use crate::proto::arduino::UpdateError;
use crate::proto::http_server::multipart::{self, Delimiter, MultipartError};
use crate::proto::http_server::{Framing, Head, HeadReader, Method};
use crate::proto::web_form::lines::AbortReason;
use crate::proto::web_form::pages::CHALLENGE;
use crate::proto::web_form::settings::Credentials;
use crate::slot::{BootIndex, SlotName};
use crate::update::{Switched, UpdateSink};
use crate::writer::OtaError;
use lines::ElegantLine;
use md5::{Digest, Md5};

pub use crate::proto::web_form::{BODY_SLACK, DATA_TIMEOUT_MS, DEFAULT_PORT};
/// How long an update `/ota/start` opened waits for its upload before it is closed.
pub const START_TIMEOUT_MS: u64 = 30_000;
/// How long after a successful upload the device restarts (`ElegantOTA.loop()`'s 2 s).
pub const REBOOT_DELAY_MS: u64 = 2000;

/// An update `/ota/start` opened and no upload has taken yet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Opened {
    /// The digest the start gave (`Update.setMD5`), checked before the boot switch.
    pub md5: Option<[u8; 16]>,
}

/// What one device serves, lent per call.
#[derive(Clone, Copy, Debug)]
pub struct Site<'a> {
    pub credentials: Option<&'a Credentials>,
    /// The size of the slot an update goes to (0: none).
    pub slot_size: u32,
    /// The running image's size (`ESP.getSketchSize()`).
    pub running_len: u32,
    /// Another path runs an update.
    pub others_busy: bool,
    /// The update the last start opened, if no upload has taken it.
    pub opened: Option<Opened>,
}

/// Something that happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event<'a> {
    Line(ElegantLine<'a>),
    /// A start opened an update; the next upload writes it.
    Opened(Opened),
    /// The opened update was closed (a new start replaces it) or taken by an upload.
    OpenedTaken,
    /// The upload crossed a quarter of the request body.
    Progress {
        percent: u8,
    },
    /// The file's last byte is written; `Update.end` comes next.
    Received,
    /// Verified, boot slot switched.
    Complete(Switched),
}

impl Event<'_> {
    pub fn log(&self, log: &mut impl LogSink) {
        match self {
            Event::Line(line) => log.log(&LogEvent::Module(line)),
            Event::Progress { percent } => log.log(&LogEvent::OtaProgress { percent: *percent }),
            Event::Complete(s) => log.log(&LogEvent::OtaComplete {
                slot: SlotName(BootIndex::Ota(s.slot)),
                seq: s.seq,
                state: s.state,
            }),
            Event::Opened(_) | Event::OpenedTaken | Event::Received => {}
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

/// An answer given once the request's body is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Unauthorized,
    NotStarted,
    NotMultipart,
}

struct Upload {
    reader: multipart::Reader,
    file: FileState,
}

struct FileState {
    in_file: bool,
    seen_file: bool,
    /// The update is open and nothing failed yet.
    open: bool,
    expected_md5: Option<[u8; 16]>,
    md5: Md5,
    error: Option<UpdateError>,
    malformed: Option<MultipartError>,
    switched: Option<Switched>,
    quarter: u8,
}

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

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// An upload is being written.
    pub fn writing(&self) -> bool {
        matches!(&self.state, State::Body(Body { kind: BodyKind::Upload(u), .. }) if u.file.open)
    }

    /// The upload completed and its answer is out: the device restarts in
    /// [`REBOOT_DELAY_MS`].
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
                        up.feed(piece, body.total - body.left, body.total, sink, out);
                    }
                    if body.left == 0 {
                        self.finish(sink, out);
                    }
                }
            }
        }
    }

    /// The client closed: an upload in progress is closed (no answer can be sent).
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
            && up.file.open
        {
            sink.abort();
            out.event(Event::Line(ElegantLine::Aborted { received: total - left, why }));
        }
        self.state = State::Closed;
    }

    fn refuse(&mut self, status: u16, reason: &str, out: &mut dyn Output) {
        out.event(Event::Line(ElegantLine::Refused { status, reason }));
        self.text(status, reason, out);
    }

    /// A `text/plain` answer, and the connection closes.
    fn text(&mut self, status: u16, text: &str, out: &mut dyn Output) {
        // `respond` heads every answer with `Connection: close`, as the upload's must be.
        pages::respond(&mut |b: &[u8]| out.send(b), status, "text/plain", &[], &[text], false);
        self.state = State::Closed;
        out.close();
    }

    fn challenge(&mut self, route: &str, head_only: bool, out: &mut dyn Output) {
        out.event(Event::Line(ElegantLine::AuthFailed { route }));
        pages::respond(&mut |b: &[u8]| out.send(b), 401, "text/plain", &[CHALLENGE], &[], head_only);
        self.state = State::Closed;
        out.close();
    }

    fn on_head(&mut self, site: &Site<'_>, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        let route = match self.head.head() {
            Ok(head) => Route::of(&head, site),
            Err(e) => Route::Refuse(e.status(), e.reason()),
        };
        match route {
            Route::Refuse(status, reason) => self.refuse(status, reason, out),
            Route::NotFound => self.text(404, "Not found", out),
            Route::Method => self.text(405, "Method Not Allowed", out),
            Route::Page { head_only, authorized: false }
            | Route::Start { head_only, authorized: false, .. } => {
                let route = if matches!(route, Route::Page { .. }) { "/update" } else { "/ota/start" };
                self.challenge(route, head_only, out)
            }
            Route::Page { head_only, .. } => {
                pages::respond(&mut |b: &[u8]| out.send(b), 200, "text/html", &[], &[pages::PAGE], head_only);
                self.state = State::Closed;
                out.close();
            }
            Route::Metadata { head_only } => {
                pages::metadata(&mut |b: &[u8]| out.send(b), site.slot_size, site.running_len, head_only);
                self.state = State::Closed;
                out.close();
            }
            Route::Start { filesystem, hash, .. } => self.start(filesystem, hash, site, sink, out),
            Route::Upload { length, delimiter, authorized } => {
                if length > u64::from(site.slot_size) + BODY_SLACK {
                    // Not read through: a 1 GB upload costs one head. The opened update stays
                    // for a retry (or its timeout).
                    return self.refuse(413, "the upload is larger than the update slot", out);
                }
                let discard = |answer| Body { left: length, total: length, kind: BodyKind::Discard(answer) };
                let body = match (authorized, site.opened, delimiter) {
                    (false, ..) => {
                        out.event(Event::Line(ElegantLine::AuthFailed { route: "/ota/upload" }));
                        discard(Answer::Unauthorized)
                    }
                    (true, None, _) => {
                        out.event(Event::Line(ElegantLine::NotStarted));
                        discard(Answer::NotStarted)
                    }
                    (true, Some(_), Err(_)) => discard(Answer::NotMultipart),
                    (true, Some(opened), Ok(d)) => {
                        // This connection holds the update now.
                        out.event(Event::OpenedTaken);
                        Body {
                            left: length,
                            total: length,
                            kind: BodyKind::Upload(Upload {
                                reader: multipart::Reader::new(d),
                                file: FileState {
                                    in_file: false,
                                    seen_file: false,
                                    open: true,
                                    expected_md5: opened.md5,
                                    md5: Md5::new(),
                                    error: None,
                                    malformed: None,
                                    switched: None,
                                    quarter: 0,
                                },
                            }),
                        }
                    }
                };
                self.state = State::Body(body);
                if length == 0 {
                    self.finish(sink, out);
                }
            }
        }
    }

    /// `/ota/start`: the digest checked, then the slot opened.
    fn start(
        &mut self,
        filesystem: bool,
        hash: Result<Option<[u8; 16]>, ()>,
        site: &Site<'_>,
        sink: &mut dyn UpdateSink,
        out: &mut dyn Output,
    ) {
        let Ok(md5) = hash else { return self.refuse(400, pages::BAD_HASH, out) };
        if site.others_busy {
            out.event(Event::Line(ElegantLine::Busy));
            return self.text(400, pages::BUSY, out);
        }
        if site.opened.is_some() {
            sink.abort();
            out.event(Event::OpenedTaken);
            out.event(Event::Line(ElegantLine::Restarted));
        }
        let began = if filesystem {
            // `Update.begin(UPDATE_SIZE_UNKNOWN, U_SPIFFS)`: no SPIFFS or FAT partition here.
            Err((UpdateError::NoPartition, None))
        } else {
            sink.begin(site.slot_size).map_err(|e| (UpdateError::at_begin(&e), Some(e)))
        };
        match began {
            Ok(slot) => {
                let slot = SlotName(BootIndex::Ota(slot));
                out.event(Event::Line(ElegantLine::Started {
                    slot,
                    size: site.slot_size,
                    md5: md5.is_some(),
                }));
                out.event(Event::Opened(Opened { md5 }));
                self.text(200, "OK", out);
            }
            Err((error, cause)) => {
                out.event(Event::Line(ElegantLine::StartFailed { error, cause }));
                self.text(400, error.text(), out);
            }
        }
    }

    /// The whole body is read: the answer.
    fn finish(&mut self, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        let State::Body(body) = core::mem::replace(&mut self.state, State::Closed) else { return };
        match body.kind {
            BodyKind::Discard(Answer::Unauthorized) => self.challenge_after_body(out),
            BodyKind::Discard(Answer::NotStarted) => self.text(400, pages::NOT_STARTED, out),
            BodyKind::Discard(Answer::NotMultipart) => {
                self.refuse(400, "expected a multipart/form-data upload", out)
            }
            BodyKind::Upload(Upload { file: mut up, .. }) => {
                if up.open {
                    // The body ended inside the file, or held none: the update is closed.
                    sink.abort();
                    if up.seen_file {
                        up.fail(UpdateError::Aborted, None, out);
                    }
                }
                if let Some(e) = up.error {
                    self.text(400, e.text(), out);
                } else if up.switched.is_some() {
                    out.event(Event::Line(ElegantLine::RebootScheduled));
                    self.reboot = true;
                    self.text(200, "OK", out);
                } else if let Some(m) = up.malformed {
                    self.refuse(400, m.reason(), out);
                } else {
                    self.refuse(400, "no file in the request", out);
                }
            }
        }
    }

    fn challenge_after_body(&mut self, out: &mut dyn Output) {
        pages::respond(&mut |b: &[u8]| out.send(b), 401, "text/plain", &[CHALLENGE], &[], false);
        self.state = State::Closed;
        out.close();
    }
}

/// What a request head asks for, copied out of the head.
enum Route {
    Refuse(u16, &'static str),
    NotFound,
    Method,
    Page { head_only: bool, authorized: bool },
    Metadata { head_only: bool },
    Start { head_only: bool, authorized: bool, filesystem: bool, hash: Result<Option<[u8; 16]>, ()> },
    Upload { length: u64, delimiter: Result<Delimiter, MultipartError>, authorized: bool },
}

impl Route {
    fn of(head: &Head<'_>, site: &Site<'_>) -> Route {
        let authorized = site.credentials.is_none_or(|c| c.accept(head.header("authorization")));
        let head_only = head.method == Method::Head;
        let get = matches!(head.method, Method::Get | Method::Head);
        match head.path {
            "/update" if get => Route::Page { head_only, authorized },
            "/ota/metadata" if get => Route::Metadata { head_only },
            "/ota/start" if get => Route::Start {
                head_only,
                authorized,
                filesystem: head.query_param("mode") == Some("fs"),
                hash: head.query_param("hash").map_or(Ok(None), |h| parse_md5(h).map(Some).ok_or(())),
            },
            "/ota/upload" if head.method == Method::Post => {
                let length = match head.framing() {
                    Ok(Framing::Length(n)) => n,
                    Ok(Framing::None) => 0,
                    Ok(Framing::Chunked) => return Route::Refuse(411, "Content-Length required"),
                    Err(e) => return Route::Refuse(e.status(), e.reason()),
                };
                let delimiter = Delimiter::of_content_type(head.header("content-type").unwrap_or(""));
                Route::Upload { length, delimiter, authorized }
            }
            "/update" | "/ota/metadata" | "/ota/start" | "/ota/upload" => Route::Method,
            _ => Route::NotFound,
        }
    }
}

/// A digest as `hash` carries it: exactly 32 hex digits, either case.
pub fn parse_md5(hex: &str) -> Option<[u8; 16]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

impl Upload {
    fn feed(&mut self, piece: &[u8], read: u64, total: u64, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        let Upload { reader, file } = self;
        if file.malformed.is_none() {
            let fed = reader.feed(piece, &mut |event| file.on_event(event, &mut *sink, &mut *out));
            if let Err(e) = fed {
                file.malformed = Some(e);
                if file.open {
                    sink.abort();
                    file.fail(UpdateError::Aborted, None, out);
                }
            }
        }
        if file.open && file.seen_file {
            let quarter = (read * 4 / total.max(1)) as u8;
            if quarter > file.quarter && quarter < 4 {
                file.quarter = quarter;
                out.event(Event::Progress { percent: quarter * 25 });
            }
        }
    }
}

impl FileState {
    fn fail(&mut self, error: UpdateError, cause: Option<OtaError>, out: &mut dyn Output) {
        self.open = false;
        self.error = Some(error);
        out.event(Event::Line(ElegantLine::UploadFailed { error, cause }));
    }

    /// The sync `WebServer` upload handler, per multipart event.
    fn on_event(&mut self, event: multipart::Event<'_>, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        match event {
            multipart::Event::PartStart { filename: Some(file), .. } => {
                self.in_file = !self.seen_file;
                if !self.seen_file {
                    self.seen_file = true;
                    out.event(Event::Line(ElegantLine::Upload { file }));
                }
            }
            multipart::Event::PartStart { filename: None, .. } => self.in_file = false,
            multipart::Event::Data(bytes) => {
                if self.in_file && self.open {
                    self.md5.update(bytes);
                    if let Err(e) = sink.write(bytes) {
                        sink.abort();
                        self.fail(crate::proto::web_form::at_write(&e), Some(e), out);
                    }
                }
            }
            multipart::Event::PartEnd => {
                if self.in_file && self.open {
                    self.end(sink, out);
                }
                self.in_file = false;
            }
            multipart::Event::End => {}
        }
    }

    /// `Update.end(true)`: the digest first, then the image verified and the boot switched.
    fn end(&mut self, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        out.event(Event::Received);
        let digest: [u8; 16] = core::mem::take(&mut self.md5).finalize().into();
        if self.expected_md5.is_some_and(|m| m != digest) {
            sink.abort();
            return self.fail(UpdateError::Md5, None, out);
        }
        match sink.end() {
            Ok(switched) => {
                self.open = false;
                self.switched = Some(switched);
                out.event(Event::Complete(switched));
            }
            Err(e) => self.fail(UpdateError::at_end(&e), Some(e), out),
        }
    }
}
