//! The device's side of HTTP/1.1, as its upload pages need it (the Arduino `/update` form,
//! ElegantOTA, the WebSocket OTA page): a request head taken into a fixed buffer and parsed in
//! place ([`HeadReader`], [`Head`]), the body's framing, and in [`multipart`] a streaming
//! `multipart/form-data` reader. Sans-IO and bounded: a head longer than [`HEAD_MAX`] is refused
//! with 431 wherever the bytes stop, more than [`MAX_HEADERS`] headers with 431, a length that
//! lies or a framing that could be read two ways (`Content-Length` with `Transfer-Encoding`) with
//! 400; nothing is allocated. The originals overflow here (esp_http_server's 512-byte header
//! buffer in IDF 4, the WebSocket component's 64-byte JSON values); this reader answers instead.

pub mod multipart;
pub mod websocket;

#[cfg(test)]
mod tests;

/// The longest request head taken: request line and headers with their line ends
/// (esp_http_server's `HTTPD_MAX_REQ_HDR_LEN` is 1024 in ESP-IDF 5).
pub const HEAD_MAX: usize = 1024;
/// The largest whole answer (head and body) a page route sends at once: the chip's web
/// sockets take this much without the app waiting for the peer (its adapter has no
/// backpressure to offer a path yet).
pub const ANSWER_MAX: usize = 4 * 1024;
/// The most headers one request may carry.
pub const MAX_HEADERS: usize = 24;

/// A request method the pages use; anything else is [`Method::Other`] (405 from a page).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Options,
    Other,
}

impl Method {
    fn parse(text: &str) -> Method {
        match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// Why a request head is refused, and the status that says so.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeadError {
    /// Longer than [`HEAD_MAX`], or more than [`MAX_HEADERS`] headers.
    TooLarge,
    /// Not a request line and header lines (a header without a colon, folding, control bytes).
    Malformed,
    /// An HTTP version other than 1.0 and 1.1.
    Version,
    /// A `Content-Length` that is not a number, or two that differ, or one with
    /// `Transfer-Encoding` (a body that could be framed two ways).
    Length,
    /// A `Transfer-Encoding` other than `chunked`.
    Encoding,
}

impl HeadError {
    /// The response status: 431, 400, 505, 400, 501.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed | HeadError::Length => 400,
            HeadError::Version => 505,
            HeadError::Encoding => 501,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            HeadError::TooLarge => "request head too large",
            HeadError::Malformed => "malformed request",
            HeadError::Version => "HTTP version not supported",
            HeadError::Length => "bad Content-Length",
            HeadError::Encoding => "Transfer-Encoding not supported",
        }
    }
}

/// How the request's body is delimited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Takes a request's bytes until its head is complete, into a fixed buffer.
pub struct HeadReader {
    buf: [u8; HEAD_MAX],
    len: usize,
    /// Where the head ends (after its blank line), once it has.
    end: Option<usize>,
}

impl Default for HeadReader {
    fn default() -> Self {
        HeadReader { buf: [0; HEAD_MAX], len: 0, end: None }
    }
}

impl HeadReader {
    /// Takes bytes of the request. `Ok(Some(n))`: the head is complete and ended after `n` of
    /// `input`'s bytes (the rest is the body's); `Ok(None)`: all taken, the head goes on.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, HeadError> {
        if self.end.is_some() {
            return Ok(Some(0));
        }
        let start = self.len;
        let room = HEAD_MAX - self.len;
        let take = input.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
        self.len += take;
        // The blank line may straddle two pieces: look again from just before this one.
        let from = start.saturating_sub(3);
        if let Some(end) = head_end(&self.buf[..self.len], from) {
            self.end = Some(end);
            return Ok(Some(end - start));
        }
        if self.len == HEAD_MAX {
            return Err(HeadError::TooLarge);
        }
        Ok(None)
    }

    /// Whether the head is complete.
    pub fn complete(&self) -> bool {
        self.end.is_some()
    }

    /// The complete head, parsed.
    pub fn head(&self) -> Result<Head<'_>, HeadError> {
        let end = self.end.ok_or(HeadError::Malformed)?;
        Head::parse(&self.buf[..end])
    }

    /// Ready for the connection's next request.
    pub fn reset(&mut self) {
        self.len = 0;
        self.end = None;
    }
}

/// Where the blank line that ends a head is (the index after it), searching from `from`: CRLF
/// CRLF, or bare LF LF as lenient servers accept.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// A parsed request head; its strings borrow the reader's buffer.
#[derive(Debug)]
pub struct Head<'a> {
    pub method: Method,
    /// The request target as sent (`/ota/start?mode=firmware&hash=…`).
    pub target: &'a str,
    /// The target's path, and its query without the `?`.
    pub path: &'a str,
    pub query: &'a str,
    /// HTTP/1.1 (`false`: HTTP/1.0).
    pub http11: bool,
    headers: [(&'a str, &'a str); MAX_HEADERS],
    count: usize,
}

impl<'a> Head<'a> {
    /// Parses a complete head (request line, header lines, the blank line).
    pub fn parse(bytes: &'a [u8]) -> Result<Head<'a>, HeadError> {
        let text = core::str::from_utf8(bytes).map_err(|_| HeadError::Malformed)?;
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        // A server ignores empty lines before the request line (RFC 9112 §2.2).
        let request = lines.by_ref().find(|l| !l.is_empty()).ok_or(HeadError::Malformed)?;
        let mut parts = request.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HeadError::Malformed);
        };
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(HeadError::Malformed);
        }
        if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(HeadError::Malformed);
        }
        let http11 = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            v if v.starts_with("HTTP/") => return Err(HeadError::Version),
            _ => return Err(HeadError::Malformed),
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut head = Head {
            method: Method::parse(method),
            target,
            path,
            query,
            http11,
            headers: [("", ""); MAX_HEADERS],
            count: 0,
        };
        for line in lines {
            if line.is_empty() {
                break;
            }
            // Obsolete line folding is refused (RFC 9112 §5.2).
            if line.starts_with([' ', '\t']) {
                return Err(HeadError::Malformed);
            }
            let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
            if name.is_empty() || !name.bytes().all(is_token) {
                return Err(HeadError::Malformed);
            }
            let value = value.trim_matches([' ', '\t']);
            if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                return Err(HeadError::Malformed);
            }
            if head.count == MAX_HEADERS {
                return Err(HeadError::TooLarge);
            }
            head.headers[head.count] = (name, value);
            head.count += 1;
        }
        Ok(head)
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.headers[..self.count].iter().copied()
    }

    /// How the body is delimited: `Content-Length` (every copy the same), `chunked`, or none.
    pub fn framing(&self) -> Result<Framing, HeadError> {
        let mut length: Option<u64> = None;
        for (name, value) in self.headers() {
            if !name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            // Digits only (no sign, no spaces inside), and not past what a u64 holds.
            if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Length);
            }
            let n: u64 = value.parse().map_err(|_| HeadError::Length)?;
            match length {
                Some(m) if m != n => return Err(HeadError::Length),
                _ => length = Some(n),
            }
        }
        match (self.header("transfer-encoding"), length) {
            (Some(_), Some(_)) => Err(HeadError::Length),
            (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            (Some(_), None) => Err(HeadError::Encoding),
            (None, Some(n)) => Ok(Framing::Length(n)),
            (None, None) => Ok(Framing::None),
        }
    }

    /// A query parameter's raw value (`hash` of `?mode=firmware&hash=…`; not percent-decoded).
    pub fn query_param(&self, key: &str) -> Option<&'a str> {
        self.query.split('&').find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if pair == key => Some(""),
            _ => None,
        })
    }

    /// Whether the connection stays open after the response (HTTP/1.1 unless `close`; 1.0 only
    /// with `keep-alive`).
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection");
        let says = |word: &str| {
            connection.is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case(word)))
        };
        if self.http11 { !says("close") } else { says("keep-alive") }
    }
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The longest `user:password` a Basic `Authorization` header may carry (both as NVS keeps them).
pub const CREDENTIALS_MAX: usize = 130;

/// Whether an `Authorization` header's value is Basic authentication with exactly `user` and
/// `password` (as Arduino's `WebServer::authenticate` decides it: the decoded `user:password`
/// compared whole). No header, another scheme, bad base64 or other credentials: `false`.
pub fn basic_auth_matches(authorization: Option<&str>, user: &str, password: &str) -> bool {
    let Some(value) = authorization else { return false };
    let Some((scheme, token)) = value.trim().split_once(' ') else { return false };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let token = token.trim().as_bytes();
    if token.is_empty() || token.len() % 4 != 0 {
        return false;
    }
    let mut decoded = [0u8; CREDENTIALS_MAX];
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    let padding = token.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return false;
    }
    for &c in &token[..token.len() - padding] {
        let Some(v) = crate::pem::sextet(c) else { return false };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            let Some(slot) = decoded.get_mut(n) else { return false };
            *slot = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    let want_len = user.len() + 1 + password.len();
    n == want_len
        && &decoded[..user.len()] == user.as_bytes()
        && decoded[user.len()] == b':'
        && &decoded[user.len() + 1..n] == password.as_bytes()
}

/// A status's reason phrase, for the statuses the pages answer with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes a response head to `send`: the status line, `Content-Type` and `Content-Length`
/// (when there is a body to length), `extra` headers in order, `Connection: close` when the
/// connection ends after it, and the blank line.
pub fn write_head(
    send: &mut dyn FnMut(&[u8]),
    status: u16,
    content_type: Option<&str>,
    length: Option<u64>,
    extra: &[(&str, &str)],
    close: bool,
) {
    let mut num = [0u8; 20];
    send(b"HTTP/1.1 ");
    send(crate::provision::decimal(u64::from(status), &mut num).as_bytes());
    send(b" ");
    send(reason_phrase(status).as_bytes());
    send(b"\r\n");
    if let Some(t) = content_type {
        send(b"Content-Type: ");
        send(t.as_bytes());
        send(b"\r\n");
    }
    if let Some(n) = length {
        send(b"Content-Length: ");
        send(crate::provision::decimal(n, &mut num).as_bytes());
        send(b"\r\n");
    }
    for (name, value) in extra {
        send(name.as_bytes());
        send(b": ");
        send(value.as_bytes());
        send(b"\r\n");
    }
    if close {
        send(b"Connection: close\r\n");
    }
    send(b"\r\n");
}
