//! The WebSocket OTA component of an ESP-IDF project (`ota_ws_update`), as the device serves it
//! on `esp_http_server`, sans-IO (spec: `shared/spec/websocket-ota-and-encrypted-img.md` §1–4):
//!
//! - `GET /ota`: the page ([`page::PAGE`]); `GET /ota/ws`: the socket the page opens.
//! - The page sends `{"name":"otaSize","value":N}`; the device erases the whole next slot
//!   (`esp_ota_begin(OTA_SIZE_UNKNOWN)`), answers `otaSetChunkSize` and `otaGetChunk 0`, then
//!   asks for each next chunk by offset; the page answers each with one binary frame. After the
//!   last byte: `esp_ota_end`, the boot switch, `otaEnd OK`; the page offers the restart
//!   (`otaRestartEsp`). `otaCancel` / `otaError` close the update.
//! - On a socket opened while the running image is PENDING_VERIFY the device sends
//!   `otaCheckRollback`; `otaProcessRollback false` confirms it, `true` marks it INVALID and
//!   restarts into the previous image. Whether a new image waits for that answer is the device's
//!   [`Confirm`](crate::boot::Confirm) setting.
//!
//! Where the original overflows or leaks, this one answers (each noted where it happens): a
//! text message longer than [`TEXT_MAX`] is `Error json str` (the original copies values into
//! 64-byte stack buffers unchecked); an empty one too (the original dereferences NULL); a chunk
//! past the declared size is refused before it is written (the original writes it); a socket
//! that goes away or falls silent for [`DATA_TIMEOUT_MS`] mid-update closes the update (the
//! original keeps it open, global, until the next `otaSize`); an `otaSize` larger than the slot
//! is refused before the erase; a second page's `otaSize` while one writes is refused.

pub mod lines;
pub mod page;
pub mod script;
pub mod service;
pub mod settings;
#[cfg(test)]
mod tests;

use crate::log::{LogEvent, LogSink};
use crate::proto::http_server::websocket::{self, FrameEvent, FrameReader, Opcode};
use crate::proto::http_server::{HeadReader, Method};
use crate::proto::web_form::lines::AbortReason;
use crate::slot::{BootIndex, SlotName};
use crate::update::{Switched, UpdateSink};
use lines::WsLine;

pub use crate::proto::web_form::{DATA_TIMEOUT_MS, DEFAULT_PORT};
/// The page (`OTA_DEFAULT_URI`).
pub const PAGE_PATH: &str = "/ota";
/// The socket (`OTA_DEFAULT_WS_URI`: the page's own path and `/ws`).
pub const SOCKET_PATH: &str = "/ota/ws";
/// The chunk the device asks for (`OTA_CHUNK_SIZE & ~0xF`).
pub const CHUNK_SIZE: u32 = 8192 & !0xF;
/// A first chunk must be longer than this: the image header, the first segment's header and
/// `esp_app_desc_t` (24 + 8 + 256 bytes).
pub const FIRST_CHUNK_MIN: u64 = 288;
/// The longest text message taken (the page's are under 64 bytes).
pub const TEXT_MAX: usize = 128;

/// What one device serves, lent per call.
#[derive(Clone, Copy, Debug)]
pub struct Site {
    /// The size of the slot an update goes to (0: none).
    pub slot_size: u32,
    /// Another path runs an update, or another page's socket writes one.
    pub others_busy: bool,
    /// The running image waits for its confirmation (PENDING_VERIFY).
    pub pending: bool,
    /// The running image's slot.
    pub running: SlotName,
}

/// Something that happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event<'a> {
    Line(WsLine<'a>),
    /// This socket opened the device's update.
    Started,
    /// This socket's update is over (written, failed, cancelled or dropped).
    Released,
    Progress {
        percent: u8,
    },
    /// The image's last byte is written; `esp_ota_end` comes next.
    Received,
    Complete(Switched),
    /// `otaProcessRollback`: `true` roll back, `false` confirm.
    ProcessRollback(bool),
    /// `otaRestartEsp`.
    Restart,
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
            _ => {}
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

/// The update this socket writes.
#[derive(Clone, Copy)]
struct Upload {
    size: u32,
    /// Bytes written so far (the offset asked for last).
    offset: u32,
    quarter: u8,
}

/// What the binary frame being read is to the update.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Written, `len` bytes.
    Writing(u64),
    /// Dropped: no update is open.
    Stray,
}

/// The text message being read (across its continuation frames).
struct Text {
    bytes: [u8; TEXT_MAX],
    len: usize,
    too_long: bool,
}

struct Socket {
    /// The message being read: text or binary (a continuation frame carries on its kind).
    message: Option<Opcode>,
    /// The frame being read: a control opcode, or its message's kind.
    frame: Option<Opcode>,
    text: Text,
    chunk: Option<Chunk>,
    /// A control frame's payload (at most 125 bytes).
    control: [u8; 125],
    control_len: usize,
    upload: Option<Upload>,
}

#[allow(clippy::large_enum_variant)]
enum State {
    Http(HeadReader),
    Socket(FrameReader, Socket),
    Closed,
}

/// One connection: an HTTP request, then (after an upgrade) the page's socket.
pub struct Server {
    state: State,
    last_input_ms: u64,
}

impl Server {
    pub fn new(now_ms: u64) -> Self {
        Server { state: State::Http(HeadReader::default()), last_input_ms: now_ms }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// This socket writes the device's update.
    pub fn writing(&self) -> bool {
        matches!(&self.state, State::Socket(_, s) if s.upload.is_some())
    }

    /// When the connection is given up for silence: a request's head, or an update's chunks
    /// (an idle page's socket waits for its person as long as it takes).
    pub fn deadline(&self) -> Option<u64> {
        match &self.state {
            State::Http(_) => Some(self.last_input_ms + DATA_TIMEOUT_MS),
            State::Socket(_, s) if s.upload.is_some() => Some(self.last_input_ms + DATA_TIMEOUT_MS),
            _ => None,
        }
    }

    /// Bytes from the client.
    pub fn feed(
        &mut self,
        input: &[u8],
        now_ms: u64,
        site: &Site,
        sink: &mut dyn UpdateSink,
        out: &mut dyn Output,
    ) {
        self.last_input_ms = now_ms;
        let mut input = input;
        if let State::Http(head) = &mut self.state {
            match head.feed(input) {
                Ok(None) => return,
                Ok(Some(n)) => input = &input[n..],
                Err(e) => return self.refuse(e.status(), e.reason(), out),
            }
            self.on_head(site, out);
        }
        if let State::Socket(reader, socket) = &mut self.state {
            let mut close = false;
            let fed = reader.feed(input, &mut |event| {
                if !close {
                    close = socket.on_frame(event, site, &mut *sink, &mut *out);
                }
            });
            if let Err(e) = fed
                && !close
            {
                out.event(Event::Line(WsLine::ProtocolError { why: e.reason() }));
                send_close(out, 1002);
                close = true;
            }
            if close {
                self.give_up(None, sink, out);
                out.close();
            }
        }
    }

    /// The client closed.
    pub fn closed(&mut self, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        self.give_up(Some(AbortReason::Disconnected), sink, out);
    }

    /// Time passed: a silent request or update is given up.
    pub fn poll(&mut self, now_ms: u64, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        if self.deadline().is_some_and(|d| now_ms >= d) {
            self.give_up(Some(AbortReason::Timeout), sink, out);
            out.close();
        }
    }

    /// The connection ends; an update it writes is closed (`why` says so in the log).
    fn give_up(&mut self, why: Option<AbortReason>, sink: &mut dyn UpdateSink, out: &mut dyn Output) {
        if let State::Socket(_, Socket { upload: Some(up), .. }) = &self.state {
            sink.abort();
            out.event(Event::Line(WsLine::Aborted {
                received: up.offset,
                why: why.unwrap_or(AbortReason::Disconnected),
            }));
            out.event(Event::Released);
        }
        self.state = State::Closed;
    }

    fn refuse(&mut self, status: u16, reason: &str, out: &mut dyn Output) {
        out.event(Event::Line(WsLine::Refused { status, reason }));
        page::respond(&mut |b: &[u8]| out.send(b), status, "text/plain", &[reason], false);
        self.state = State::Closed;
        out.close();
    }

    fn on_head(&mut self, site: &Site, out: &mut dyn Output) {
        let State::Http(reader) = &self.state else { return };
        let head = match reader.head() {
            Ok(h) => h,
            Err(e) => return self.refuse(e.status(), e.reason(), out),
        };
        let get = matches!(head.method, Method::Get | Method::Head);
        match head.path {
            PAGE_PATH if get => {
                let head_only = head.method == Method::Head;
                page::respond(&mut |b: &[u8]| out.send(b), 200, "text/html", &[page::PAGE], head_only);
                self.state = State::Closed;
                out.close();
            }
            SOCKET_PATH => match websocket::upgrade_key(&head) {
                Ok(key) => {
                    websocket::write_switching(&mut |b: &[u8]| out.send(b), key);
                    self.state = State::Socket(
                        FrameReader::new(true),
                        Socket {
                            message: None,
                            frame: None,
                            text: Text { bytes: [0; TEXT_MAX], len: 0, too_long: false },
                            chunk: None,
                            control: [0; 125],
                            control_len: 0,
                            upload: None,
                        },
                    );
                    if site.pending {
                        out.event(Event::Line(WsLine::CheckRollback { slot: site.running }));
                        send_text(out, br#"{"name":"otaCheckRollback","value":"true" }"#);
                    }
                }
                Err(e) => self.refuse(e.status(), e.reason(), out),
            },
            PAGE_PATH => self.refuse(405, "Method Not Allowed", out),
            _ => {
                // Not logged: a browser asks for /favicon.ico with every page, as many times as
                // it likes, and a log snapshot must not count them.
                page::respond(&mut |b: &[u8]| out.send(b), 404, "text/plain", &["Not Found"], false);
                self.state = State::Closed;
                out.close();
            }
        }
    }
}

impl Socket {
    /// One frame event; `true`: close the connection.
    fn on_frame(
        &mut self,
        event: FrameEvent<'_>,
        site: &Site,
        sink: &mut dyn UpdateSink,
        out: &mut dyn Output,
    ) -> bool {
        match event {
            FrameEvent::Start(frame) if frame.opcode.is_control() => {
                self.frame = Some(frame.opcode);
                self.control_len = 0;
                false
            }
            FrameEvent::Start(frame) => {
                let kind = match (frame.opcode, self.message) {
                    (Opcode::Continuation, Some(kind)) => kind,
                    (Opcode::Continuation, None) | (_, Some(_)) => {
                        out.event(Event::Line(WsLine::ProtocolError {
                            why: "a fragmented message out of order",
                        }));
                        send_close(out, 1002);
                        return true;
                    }
                    (op, None) => {
                        if op == Opcode::Text {
                            self.text.len = 0;
                            self.text.too_long = false;
                        }
                        op
                    }
                };
                self.message = Some(kind);
                self.frame = Some(kind);
                if kind == Opcode::Binary {
                    return self.chunk_start(frame.len, sink, out);
                }
                false
            }
            FrameEvent::Payload(bytes) => match self.frame {
                Some(Opcode::Binary) => self.chunk_data(bytes, sink, out),
                Some(Opcode::Text) => {
                    let t = &mut self.text;
                    if t.len + bytes.len() > TEXT_MAX {
                        t.too_long = true;
                    } else {
                        t.bytes[t.len..t.len + bytes.len()].copy_from_slice(bytes);
                        t.len += bytes.len();
                    }
                    false
                }
                _ => {
                    let n = bytes.len().min(self.control.len() - self.control_len);
                    self.control[self.control_len..self.control_len + n].copy_from_slice(&bytes[..n]);
                    self.control_len += n;
                    false
                }
            },
            FrameEvent::End(frame) => {
                let kind = self.frame.take();
                if frame.opcode.is_control() {
                    return self.control_end(frame.opcode, out);
                }
                let close = kind == Some(Opcode::Binary) && self.chunk_end(sink, out);
                if frame.fin {
                    self.message = None;
                    if kind == Some(Opcode::Text) && !close {
                        return self.on_text(site, sink, out);
                    }
                }
                close
            }
        }
    }

    fn control_end(&mut self, opcode: Opcode, out: &mut dyn Output) -> bool {
        match opcode {
            Opcode::Ping => {
                websocket::send_frame(
                    &mut |b: &[u8]| out.send(b),
                    Opcode::Pong,
                    &self.control[..self.control_len],
                );
                false
            }
            Opcode::Close => {
                // Echo the status (RFC 6455 §5.5.1), then the connection ends.
                let code = if self.control_len >= 2 { &self.control[..2] } else { &[] };
                websocket::send_frame(&mut |b: &[u8]| out.send(b), Opcode::Close, code);
                true
            }
            _ => false,
        }
    }

    /// A binary frame begins: a chunk of the update, checked before any of it is written.
    fn chunk_start(&mut self, len: u64, sink: &mut dyn UpdateSink, out: &mut dyn Output) -> bool {
        let Some(up) = self.upload else {
            // The original ignores it too (no reply), so a stale page cannot write.
            out.event(Event::Line(WsLine::StrayChunk { len }));
            self.chunk = Some(Chunk::Stray);
            return false;
        };
        let failed = if up.offset == 0 && len <= FIRST_CHUNK_MIN {
            Some(WsLine::ShortFirstChunk { len })
        } else if u64::from(up.offset) + len > u64::from(up.size) {
            // The original writes it; the declared size is the page's promise, so it is held.
            Some(WsLine::PastSize { offset: up.offset, len, size: up.size })
        } else {
            None
        };
        if let Some(line) = failed {
            out.event(Event::Line(line));
            return self.fail(b"Error write ota", sink, out);
        }
        self.chunk = Some(Chunk::Writing(len));
        false
    }

    fn chunk_data(&mut self, bytes: &[u8], sink: &mut dyn UpdateSink, out: &mut dyn Output) -> bool {
        if matches!(self.chunk, Some(Chunk::Writing(_)))
            && let Err(cause) = sink.write(bytes)
        {
            out.event(Event::Line(WsLine::WriteFailed { cause }));
            return self.fail(b"Error write ota", sink, out);
        }
        false
    }

    /// A chunk is in: the next one asked for, or the update ended.
    fn chunk_end(&mut self, sink: &mut dyn UpdateSink, out: &mut dyn Output) -> bool {
        let (Some(Chunk::Writing(len)), Some(up)) = (self.chunk.take(), &mut self.upload) else {
            return false;
        };
        up.offset += len as u32;
        let quarter = (u64::from(up.offset) * 4 / u64::from(up.size.max(1))) as u8;
        if quarter > up.quarter && quarter < 4 {
            up.quarter = quarter;
            out.event(Event::Progress { percent: quarter * 25 });
        }
        if up.offset < up.size {
            let mut text = Reply::new();
            text.push(br#"{"name":"otaGetChunk","value": "#);
            text.number(up.offset);
            text.push(b" }");
            send_text(out, text.bytes());
            return false;
        }
        out.event(Event::Received);
        match sink.end() {
            Ok(switched) => {
                self.upload = None;
                out.event(Event::Complete(switched));
                out.event(Event::Line(WsLine::Ended));
                out.event(Event::Released);
                send_text(out, br#"{"name":"otaEnd","value":"OK" }"#);
                false
            }
            Err(cause) => {
                out.event(Event::Line(WsLine::EndFailed { cause }));
                self.fail(b"Error end ota", sink, out)
            }
        }
    }

    /// The update fails: closed, the page told; the original's handler then fails and httpd
    /// closes the socket (`true`).
    fn fail(&mut self, message: &[u8], sink: &mut dyn UpdateSink, out: &mut dyn Output) -> bool {
        if self.upload.take().is_some() {
            sink.abort();
            out.event(Event::Released);
        }
        send_error(out, message);
        true
    }

    /// A whole text message: the page's command.
    fn on_text(&mut self, site: &Site, sink: &mut dyn UpdateSink, out: &mut dyn Output) -> bool {
        let (bytes, len, too_long) = (self.text.bytes, self.text.len, self.text.too_long);
        let parsed = if too_long {
            Err("longer than 128 bytes")
        } else {
            core::str::from_utf8(&bytes[..len]).map_err(|_| "not UTF-8").and_then(parse_message)
        };
        let (command, value) = match parsed {
            Ok(m) => m,
            Err(why) => {
                out.event(Event::Line(WsLine::BadMessage { why }));
                send_error(out, b"Error json str");
                return false;
            }
        };
        match command {
            "otaSize" => self.start(value, site, sink, out),
            "otaCancel" | "otaError" => {
                if let Some(up) = self.upload.take() {
                    sink.abort();
                    out.event(Event::Line(WsLine::Cancelled {
                        received: up.offset,
                        by: if command == "otaCancel" { "otaCancel" } else { "otaError" },
                    }));
                    out.event(Event::Released);
                }
                if command == "otaCancel" {
                    send_text(out, br#"{"name":"otaCancel","value":"Cancel command"}"#);
                } else {
                    send_error(out, b"Error command");
                }
                false
            }
            "otaProcessRollback" => {
                match value {
                    Some("true") => out.event(Event::ProcessRollback(true)),
                    Some("false") => out.event(Event::ProcessRollback(false)),
                    _ => {
                        out.event(Event::Line(WsLine::BadMessage {
                            why: "otaProcessRollback takes \"true\" or \"false\"",
                        }));
                        send_error(out, b"Error json str");
                    }
                }
                false
            }
            "otaRestartEsp" => {
                out.event(Event::Restart);
                false
            }
            other => {
                out.event(Event::Line(WsLine::UnknownCommand { command: other }));
                false
            }
        }
    }

    /// `otaSize`: the slot opened (erased whole) and the first chunk asked for.
    fn start(
        &mut self,
        value: Option<&str>,
        site: &Site,
        sink: &mut dyn UpdateSink,
        out: &mut dyn Output,
    ) -> bool {
        // `atoi`: leading digits; none (or 0) is `Error ota size = 0`.
        let digits = value.map_or("", |v| &v[..v.bytes().take_while(u8::is_ascii_digit).count()]);
        let size = match digits.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                out.event(Event::Line(WsLine::SizeZero));
                send_error(out, b"Error ota size = 0");
                return false;
            }
        };
        if let Some(old) = self.upload.take() {
            // A second otaSize on the same socket starts over (the original begins again).
            sink.abort();
            out.event(Event::Line(WsLine::Cancelled { received: old.offset, by: "a new otaSize" }));
            out.event(Event::Released);
        }
        if site.others_busy {
            out.event(Event::Line(WsLine::Busy));
            send_error(out, b"Error start ota");
            return true;
        }
        if size > u64::from(site.slot_size) {
            out.event(Event::Line(WsLine::TooLarge {
                size: size.min(u64::from(u32::MAX)) as u32,
                slot_size: site.slot_size,
            }));
            send_error(out, b"Error start ota");
            return true;
        }
        let size = size as u32;
        match sink.begin(site.slot_size) {
            Ok(slot) => {
                self.upload = Some(Upload { size, offset: 0, quarter: 0 });
                out.event(Event::Started);
                out.event(Event::Line(WsLine::Started {
                    slot: SlotName(BootIndex::Ota(slot)),
                    size,
                    chunk: CHUNK_SIZE,
                }));
                let mut text = Reply::new();
                text.push(br#"{"name":"otaSetChunkSize","value":"#);
                text.number(CHUNK_SIZE);
                text.push(b"}");
                send_text(out, text.bytes());
                send_text(out, br#"{"name":"otaGetChunk","value":0}"#);
                false
            }
            Err(cause) => {
                out.event(Event::Line(WsLine::StartFailed { cause }));
                send_error(out, b"Error start ota");
                true
            }
        }
    }
}

/// A device frame's text, built without allocating.
struct Reply {
    buf: [u8; 64],
    len: usize,
}

impl Reply {
    fn new() -> Self {
        Reply { buf: [0; 64], len: 0 }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, n: u32) {
        let mut digits = [0u8; 20];
        self.push(crate::provision::decimal(u64::from(n), &mut digits).as_bytes());
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The page's message: `{"name":"<command>","value":<argument>}`. As the original's parser,
/// key names are not looked at: the first pair's value is the command, the second's (if any)
/// the argument; more than two pairs are an error. Strings without escapes; other values
/// (numbers, `true`) as their text.
pub fn parse_message(text: &str) -> Result<(&str, Option<&str>), &'static str> {
    let mut rest = text.trim_matches(JSON_SPACE);
    rest = rest.strip_prefix('{').ok_or("not a JSON object")?;
    rest = rest.strip_suffix('}').ok_or("not a JSON object")?;
    let mut values: [Option<&str>; 2] = [None, None];
    let mut count = 0;
    let mut rest = rest.trim_matches(JSON_SPACE);
    while !rest.is_empty() {
        if count == 2 {
            return Err("more than two pairs");
        }
        let (_key, after) = json_string(rest).ok_or("a key that is not a string")?;
        let after = after.trim_start_matches(JSON_SPACE).strip_prefix(':').ok_or("a pair without `:`")?;
        let after = after.trim_start_matches(JSON_SPACE);
        let (value, after) = if after.starts_with('"') {
            json_string(after).ok_or("a string value without its end (or with an escape)")?
        } else {
            let end = after.find(|c: char| c == ',' || JSON_SPACE.contains(&c)).unwrap_or(after.len());
            let token = &after[..end];
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
                return Err("a value that is neither a string, a number nor a literal");
            }
            (token, &after[end..])
        };
        values[count] = Some(value);
        count += 1;
        let after = after.trim_start_matches(JSON_SPACE);
        rest = match after.strip_prefix(',') {
            Some(next) => {
                let next = next.trim_start_matches(JSON_SPACE);
                if next.is_empty() {
                    return Err("a trailing comma");
                }
                next
            }
            None if after.is_empty() => after,
            None => return Err("pairs not separated by `,`"),
        };
    }
    let command = values[0].ok_or("no command")?;
    Ok((command, values[1]))
}

const JSON_SPACE: [char; 4] = [' ', '\t', '\r', '\n'];

/// A JSON string at the start of `s` (no escapes): its contents and what follows it.
fn json_string(s: &str) -> Option<(&str, &str)> {
    let body = s.strip_prefix('"')?;
    let end = body.find(['"', '\\'])?;
    if body.as_bytes()[end] == b'\\' {
        return None;
    }
    Some((&body[..end], &body[end + 1..]))
}

fn send_error(out: &mut dyn Output, message: &[u8]) {
    let mut text = Reply::new();
    text.push(br#"{"name":"otaError","value":""#);
    text.push(message);
    text.push(br#""}"#);
    send_text(out, text.bytes());
}

/// Sends one text frame.
fn send_text(out: &mut dyn Output, text: &[u8]) {
    websocket::send_frame(&mut |b: &[u8]| out.send(b), Opcode::Text, text);
}

/// Sends a close frame with `code`.
fn send_close(out: &mut dyn Output, code: u16) {
    websocket::send_frame(&mut |b: &[u8]| out.send(b), Opcode::Close, &code.to_be_bytes());
}
