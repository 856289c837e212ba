//! An HTTP/1.x response as a pulling device reads it: the head (status line and the headers it
//! acts on) collected into a bounded buffer, then the body framed by `Content-Length`, chunked
//! transfer coding, or the connection's close. Everything else in the head is skipped.

/// The longest head the device takes (status line and headers).
pub const MAX_HEAD: usize = 2048;
/// The longest `Location` it follows.
pub const MAX_LOCATION: usize = 256;
/// The longest chunk-size line (size, extensions): more is a malformed body.
const MAX_CHUNK_LINE: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeadError {
    /// The head did not fit [`MAX_HEAD`].
    TooLong,
    /// No `HTTP/1.x NNN` status line.
    StatusLine,
    /// A header line without a colon, or a `Content-Length` that is no number (or two that differ).
    Header,
    /// A `Transfer-Encoding` other than `chunked` (identity aside).
    Encoding,
}

/// What `x-MD5` said.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Md5Header {
    Absent,
    Valid([u8; 16]),
    /// Present but not 32 hex digits (the Arduino updater's `HTTP_UE_SERVER_FAULTY_MD5`).
    Faulty,
}

/// The parts of a response head the device acts on.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    pub status: u16,
    /// `Content-Length`, when present (a negative or absent one: none).
    pub content_length: Option<u64>,
    pub chunked: bool,
    location: [u8; MAX_LOCATION],
    location_len: usize,
    /// `Location` longer than [`MAX_LOCATION`].
    pub location_too_long: bool,
    pub md5: Md5Header,
    /// `Content-Range: bytes first-last/total` (a 206's): first byte, and the total when known.
    pub content_range: Option<ContentRange>,
}

/// A 206 response's `Content-Range`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    /// `*` when the server does not know it.
    pub total: Option<u64>,
}

impl ContentRange {
    /// `bytes first-last/total` or `bytes first-last/*`; anything else (`bytes */total` of a
    /// 416 included) is none.
    fn parse(value: &[u8]) -> Option<Self> {
        let v = core::str::from_utf8(value).ok()?;
        let rest = v.strip_prefix("bytes")?.trim_start();
        let (range, total) = rest.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let first: u64 = first.trim().parse().ok()?;
        let last: u64 = last.trim().parse().ok()?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse::<u64>().ok()?),
        };
        (first <= last && total.is_none_or(|t| last < t)).then_some(ContentRange { first, last, total })
    }
}

impl Head {
    fn new(status: u16) -> Self {
        Head {
            status,
            content_length: None,
            chunked: false,
            location: [0; MAX_LOCATION],
            location_len: 0,
            location_too_long: false,
            md5: Md5Header::Absent,
            content_range: None,
        }
    }

    pub fn location(&self) -> Option<&str> {
        if self.location_len == 0 {
            return None;
        }
        core::str::from_utf8(&self.location[..self.location_len]).ok()
    }
}

/// Collects a head; [`HeadReader::feed`] says how many bytes it used once the head is complete.
pub struct HeadReader {
    buf: [u8; MAX_HEAD],
    len: usize,
}

impl Default for HeadReader {
    fn default() -> Self {
        HeadReader { buf: [0; MAX_HEAD], len: 0 }
    }
}

impl HeadReader {
    /// Takes bytes until the empty line that ends the head. Returns the bytes used and, once
    /// the head is complete, the head or why it is malformed.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<Head, HeadError>>) {
        for (i, &b) in input.iter().enumerate() {
            if self.len == MAX_HEAD {
                return (i, Some(Err(HeadError::TooLong)));
            }
            self.buf[self.len] = b;
            self.len += 1;
            let end = &self.buf[..self.len];
            if end.ends_with(b"\r\n\r\n") || end.ends_with(b"\n\n") {
                return (i + 1, Some(parse_head(end)));
            }
        }
        (input.len(), None)
    }

    /// Bytes of a head collected so far (a head cut short by the server's close).
    pub fn partial(&self) -> usize {
        self.len
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let s = s.strip_suffix(b"\r").unwrap_or(s);
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end]
}

fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = trim(lines.next().unwrap_or(&[]));
    let rest = status_line.strip_prefix(b"HTTP/1.").ok_or(HeadError::StatusLine)?;
    let status = match rest {
        [b'0' | b'1', b' ', a, b, c, ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            (*a - b'0') as u16 * 100 + (*b - b'0') as u16 * 10 + (*c - b'0') as u16
        }
        _ => return Err(HeadError::StatusLine),
    };
    if !(100..=599).contains(&status) {
        return Err(HeadError::StatusLine);
    }
    let mut head = Head::new(status);
    for line in lines {
        let line = trim(line);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(HeadError::Header)?;
        let (name, value) = (trim(&line[..colon]), trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = core::str::from_utf8(value).map_err(|_| HeadError::Header)?;
            // `esp_http_client` takes a negative length as none; a non-number is malformed.
            let len = match v.parse::<i64>() {
                Ok(n) if n > 0 => Some(n as u64),
                Ok(_) => None,
                Err(_) => return Err(HeadError::Header),
            };
            if head.content_length.is_some() && head.content_length != len {
                return Err(HeadError::Header);
            }
            head.content_length = len;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if value.eq_ignore_ascii_case(b"chunked") {
                head.chunked = true;
            } else if !value.eq_ignore_ascii_case(b"identity") {
                return Err(HeadError::Encoding);
            }
        } else if name.eq_ignore_ascii_case(b"location") {
            if value.len() > MAX_LOCATION {
                head.location_too_long = true;
            } else {
                head.location[..value.len()].copy_from_slice(value);
                head.location_len = value.len();
            }
        } else if name.eq_ignore_ascii_case(b"content-range") {
            head.content_range = ContentRange::parse(value);
        } else if name.eq_ignore_ascii_case(b"x-md5") {
            let mut digest = [0u8; 16];
            head.md5 = match crate::hex::decode(value, &mut digest) {
                Some(()) => Md5Header::Valid(digest),
                None => Md5Header::Faulty,
            };
        }
    }
    if head.chunked {
        // RFC 9112 §6.3: chunked wins over a Content-Length.
        head.content_length = None;
    }
    Ok(head)
}

/// How a body ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// No length and no chunking: the body ends when the server closes.
    Close,
}

impl Framing {
    pub fn of(head: &Head) -> Framing {
        match (head.chunked, head.content_length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BodyError {
    /// A chunk-size line that is no hex number, too long, or a chunk not followed by CRLF.
    Chunk,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    /// Reading a size line: the size so far, the line's length, whether extensions started.
    Size {
        size: u64,
        line: usize,
        ext: bool,
        digits: bool,
    },
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data: how many of its bytes were seen.
    DataEnd {
        seen: u8,
    },
    /// Trailer lines after the last chunk: the current line's length.
    Trailer {
        line: usize,
    },
    Done,
}

/// Cuts the body out of the bytes after the head.
#[derive(Clone, Copy, Debug)]
pub struct Body {
    framing: Framing,
    received: u64,
    chunk: Chunk,
}

impl Body {
    pub fn new(framing: Framing) -> Self {
        Body { framing, received: 0, chunk: Chunk::Size { size: 0, line: 0, ext: false, digits: false } }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Body bytes so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The whole body arrived (a close-delimited one only ends at the close).
    pub fn complete(&self) -> bool {
        match self.framing {
            Framing::Length(n) => self.received == n,
            Framing::Chunked => self.chunk == Chunk::Done,
            Framing::Close => false,
        }
    }

    /// Calls `data` with each run of body bytes in `input`; returns the bytes used (bytes past
    /// the end of the body are not used).
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, BodyError> {
        match self.framing {
            Framing::Length(n) => {
                let take = ((n - self.received) as usize).min(input.len());
                if take > 0 {
                    data(&input[..take]);
                }
                self.received += take as u64;
                Ok(take)
            }
            Framing::Close => {
                if !input.is_empty() {
                    data(input);
                }
                self.received += input.len() as u64;
                Ok(input.len())
            }
            Framing::Chunked => self.feed_chunked(input, data),
        }
    }

    fn feed_chunked(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, BodyError> {
        let mut at = 0;
        while at < input.len() {
            match self.chunk {
                Chunk::Size { size, line, ext, digits } => {
                    let b = input[at];
                    at += 1;
                    if line >= MAX_CHUNK_LINE {
                        return Err(BodyError::Chunk);
                    }
                    let line = line + 1;
                    self.chunk = match b {
                        b'\n' if digits && size == 0 => Chunk::Trailer { line: 0 },
                        b'\n' if digits => Chunk::Data { left: size },
                        b'\n' => return Err(BodyError::Chunk),
                        b'\r' => Chunk::Size { size, line, ext: true, digits },
                        b';' => Chunk::Size { size, line, ext: true, digits },
                        _ if ext => Chunk::Size { size, line, ext, digits },
                        b => {
                            let d = (b as char).to_digit(16).ok_or(BodyError::Chunk)? as u64;
                            let size = size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(d))
                                .ok_or(BodyError::Chunk)?;
                            if size > u32::MAX as u64 {
                                return Err(BodyError::Chunk);
                            }
                            Chunk::Size { size, line, ext, digits: true }
                        }
                    };
                }
                Chunk::Data { left } => {
                    let take = (left as usize).min(input.len() - at);
                    data(&input[at..at + take]);
                    at += take;
                    self.received += take as u64;
                    self.chunk = if left == take as u64 {
                        Chunk::DataEnd { seen: 0 }
                    } else {
                        Chunk::Data { left: left - take as u64 }
                    };
                }
                Chunk::DataEnd { seen } => {
                    let b = input[at];
                    at += 1;
                    self.chunk = match (seen, b) {
                        (0, b'\r') => Chunk::DataEnd { seen: 1 },
                        (_, b'\n') => Chunk::Size { size: 0, line: 0, ext: false, digits: false },
                        _ => return Err(BodyError::Chunk),
                    };
                }
                Chunk::Trailer { line } => {
                    let b = input[at];
                    at += 1;
                    self.chunk = match b {
                        b'\n' if line == 0 => Chunk::Done,
                        b'\n' => Chunk::Trailer { line: 0 },
                        b'\r' => Chunk::Trailer { line },
                        _ if line >= MAX_HEAD => return Err(BodyError::Chunk),
                        _ => Chunk::Trailer { line: line + 1 },
                    };
                }
                Chunk::Done => break,
            }
        }
        Ok(at)
    }
}
