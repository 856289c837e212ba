//! A `multipart/form-data` body (RFC 7578), read as it streams in: each part's head (its
//! `Content-Disposition` name and file name), then its bytes, handed on as they come and never
//! held whole; only a part head ([`PART_HEAD_MAX`]) and the bytes that may begin a delimiter are
//! kept. What a browser's upload form, `curl -F` and ElegantOTA's page send.

/// The longest boundary RFC 2046 allows.
pub const BOUNDARY_MAX: usize = 70;
/// The longest part head taken (its header lines and blank line).
pub const PART_HEAD_MAX: usize = 512;
/// The delimiter between parts: CRLF, `--`, the boundary.
const DELIMITER_MAX: usize = BOUNDARY_MAX + 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MultipartError {
    /// The content type is not `multipart/form-data` with a `boundary` parameter.
    NotMultipart,
    /// A boundary empty, longer than [`BOUNDARY_MAX`] or with characters RFC 2046 forbids.
    BadBoundary,
    /// A part head longer than [`PART_HEAD_MAX`].
    PartHeadTooLarge,
    /// A part head that is not header lines, or without `Content-Disposition: form-data; name=…`.
    BadPartHead,
    /// Bytes after a delimiter other than CRLF (another part) or `--` (the end).
    Malformed,
}

impl MultipartError {
    pub fn reason(self) -> &'static str {
        match self {
            MultipartError::NotMultipart => "not multipart/form-data",
            MultipartError::BadBoundary => "bad multipart boundary",
            MultipartError::PartHeadTooLarge => "multipart part head too large",
            MultipartError::BadPartHead => "bad multipart part head",
            MultipartError::Malformed => "malformed multipart body",
        }
    }
}

/// The delimiter of a body: CRLF `--` boundary.
#[derive(Clone, Copy, Debug)]
pub struct Delimiter {
    bytes: [u8; DELIMITER_MAX],
    len: usize,
}

impl Delimiter {
    /// The delimiter a `Content-Type` header names (`multipart/form-data; boundary=…`, the
    /// boundary quoted or not).
    pub fn of_content_type(content_type: &str) -> Result<Delimiter, MultipartError> {
        let mut params = content_type.split(';');
        let kind = params.next().unwrap_or("").trim();
        if !kind.eq_ignore_ascii_case("multipart/form-data") {
            return Err(MultipartError::NotMultipart);
        }
        let boundary = params
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
            .map(|(_, v)| v.trim())
            .ok_or(MultipartError::NotMultipart)?;
        let boundary = boundary.strip_prefix('"').and_then(|b| b.strip_suffix('"')).unwrap_or(boundary);
        Delimiter::new(boundary)
    }

    pub fn new(boundary: &str) -> Result<Delimiter, MultipartError> {
        // RFC 2046 §5.1.1: 1 to 70 characters of bchars, not ending in a space.
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
        if boundary.is_empty()
            || boundary.len() > BOUNDARY_MAX
            || boundary.ends_with(' ')
            || !boundary.bytes().all(allowed)
        {
            return Err(MultipartError::BadBoundary);
        }
        let mut bytes = [0u8; DELIMITER_MAX];
        bytes[..4].copy_from_slice(b"\r\n--");
        bytes[4..4 + boundary.len()].copy_from_slice(boundary.as_bytes());
        Ok(Delimiter { bytes, len: 4 + boundary.len() })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A part begins: its form field's name, and the file's name for a file input.
    PartStart { name: &'a str, filename: Option<&'a str>, content_type: Option<&'a str> },
    /// Some of the part's bytes, in order.
    Data(&'a [u8]),
    /// The part's bytes are over (its delimiter came).
    PartEnd,
    /// The closing delimiter: whatever follows is the epilogue, ignored.
    End,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Before the first delimiter (the preamble, discarded) or inside a part.
    Data {
        in_part: bool,
    },
    /// Just after a delimiter: CRLF (a part follows), `--` (the end), or transport padding.
    AfterDelimiter {
        dash: bool,
    },
    /// Taking a part's head.
    PartHead,
    End,
}

/// Reads one multipart body.
pub struct Reader {
    delimiter: Delimiter,
    state: State,
    /// Bytes at the end of the last piece that begin the delimiter (so not yet data).
    carry: [u8; DELIMITER_MAX],
    carry_len: usize,
    head: [u8; PART_HEAD_MAX],
    head_len: usize,
}

impl Reader {
    pub fn new(delimiter: Delimiter) -> Reader {
        // The first delimiter has no CRLF before it (the body starts with `--boundary`): a CRLF
        // taken as already seen makes it look like every other one.
        let mut carry = [0u8; DELIMITER_MAX];
        carry[..2].copy_from_slice(b"\r\n");
        Reader {
            delimiter,
            state: State::Data { in_part: false },
            carry,
            carry_len: 2,
            head: [0; PART_HEAD_MAX],
            head_len: 0,
        }
    }

    /// Whether the closing delimiter came (a body that ends before it was cut short).
    pub fn finished(&self) -> bool {
        self.state == State::End
    }

    /// Whether the reader is inside a part's bytes.
    pub fn in_part(&self) -> bool {
        self.state == State::Data { in_part: true }
    }

    /// Takes the next piece of the body, handing what it finds to `on` in order.
    pub fn feed(&mut self, mut input: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), MultipartError> {
        while !input.is_empty() {
            input = match self.state {
                State::End => return Ok(()),
                State::Data { in_part } => self.data(input, in_part, on),
                State::AfterDelimiter { dash } => self.after_delimiter(input, dash, on)?,
                State::PartHead => self.part_head(input, on)?,
            };
        }
        Ok(())
    }

    /// Part bytes (or preamble) up to the next delimiter; returns what follows it.
    fn data<'i>(&mut self, input: &'i [u8], in_part: bool, on: &mut dyn FnMut(Event<'_>)) -> &'i [u8] {
        let delim = self.delimiter;
        let d = delim.as_bytes();
        let emit = |bytes: &[u8], on: &mut dyn FnMut(Event<'_>)| {
            if in_part && !bytes.is_empty() {
                on(Event::Data(bytes));
            }
        };
        // Bytes kept from the last piece: the delimiter, or data after all.
        let mut input = input;
        while self.carry_len > 0 {
            let carried = self.carry_len;
            let need = d.len() - carried;
            let n = need.min(input.len());
            if self.carry[..carried] == d[..carried] && input[..n] == d[carried..carried + n] {
                if n == need {
                    self.carry_len = 0;
                    self.delimiter_found(in_part, on);
                    return &input[n..];
                }
                // Still only a beginning of the delimiter: keep it all.
                self.carry[carried..carried + n].copy_from_slice(&input[..n]);
                self.carry_len += n;
                return &[];
            }
            // Not the delimiter from its first byte: that byte is data; try from the next.
            let cut = (1..carried).find(|&s| self.carry[s..carried] == d[..carried - s]).unwrap_or(carried);
            emit(&self.carry[..cut], on);
            self.carry.copy_within(cut..carried, 0);
            self.carry_len = carried - cut;
        }
        // Within this piece: the delimiter whole, or its beginning at the very end.
        let mut from = 0;
        while let Some(at) = input[from..].iter().position(|&b| b == b'\r').map(|p| from + p) {
            let rest = &input[at..];
            if rest.len() >= d.len() {
                if &rest[..d.len()] == d {
                    emit(&input[..at], on);
                    self.delimiter_found(in_part, on);
                    return &input[at + d.len()..];
                }
            } else if d.starts_with(rest) {
                emit(&input[..at], on);
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len();
                return &[];
            }
            from = at + 1;
        }
        emit(input, on);
        input = &[];
        input
    }

    fn delimiter_found(&mut self, in_part: bool, on: &mut dyn FnMut(Event<'_>)) {
        if in_part {
            on(Event::PartEnd);
        }
        self.state = State::AfterDelimiter { dash: false };
    }

    /// `--` ends the body, CRLF starts a part; spaces and tabs before the CRLF are padding.
    fn after_delimiter<'i>(
        &mut self,
        input: &'i [u8],
        dash: bool,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<&'i [u8], MultipartError> {
        let (&b, rest) = input.split_first().expect("not empty");
        match (dash, b) {
            (true, b'-') => {
                self.state = State::End;
                on(Event::End);
                Ok(&[])
            }
            (true, _) => Err(MultipartError::Malformed),
            (false, b'-') => {
                self.state = State::AfterDelimiter { dash: true };
                Ok(rest)
            }
            (false, b' ' | b'\t' | b'\r') => Ok(rest),
            (false, b'\n') => {
                self.state = State::PartHead;
                self.head_len = 0;
                Ok(rest)
            }
            _ => Err(MultipartError::Malformed),
        }
    }

    /// A part's head lines up to its blank line; then the part starts.
    fn part_head<'i>(
        &mut self,
        input: &'i [u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<&'i [u8], MultipartError> {
        let start = self.head_len;
        let take = input.len().min(PART_HEAD_MAX - start);
        self.head[start..start + take].copy_from_slice(&input[..take]);
        self.head_len += take;
        // A blank line first: a part without headers, so without its name.
        if self.head[..self.head_len].starts_with(b"\n") || self.head[..self.head_len].starts_with(b"\r\n") {
            return Err(MultipartError::BadPartHead);
        }
        let from = start.saturating_sub(3);
        let Some(end) = super::head_end(&self.head[..self.head_len], from) else {
            if self.head_len == PART_HEAD_MAX {
                return Err(MultipartError::PartHeadTooLarge);
            }
            return Ok(&[]);
        };
        let (name, filename, content_type) = part_fields(&self.head[..end])?;
        on(Event::PartStart { name, filename, content_type });
        self.state = State::Data { in_part: true };
        Ok(&input[end - start..])
    }
}

/// A part head's form field name, file name and content type.
fn part_fields(head: &[u8]) -> Result<(&str, Option<&str>, Option<&str>), MultipartError> {
    let text = core::str::from_utf8(head).map_err(|_| MultipartError::BadPartHead)?;
    let mut disposition = None;
    let mut content_type = None;
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(MultipartError::BadPartHead)?;
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("content-disposition") {
            disposition = Some(value);
        } else if name.trim().eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        }
    }
    let disposition = disposition.ok_or(MultipartError::BadPartHead)?;
    let (kind, params) = disposition.split_once(';').unwrap_or((disposition, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(MultipartError::BadPartHead);
    }
    let name = param(params, "name").ok_or(MultipartError::BadPartHead)?;
    Ok((name, param(params, "filename"), content_type))
}

/// A `Content-Disposition` parameter, quoted (as browsers send it, `"` escaped as `%22`) or not.
fn param<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = params;
    loop {
        rest = rest.trim_start_matches([';', ' ', '\t']);
        if rest.is_empty() {
            return None;
        }
        let (k, after) = rest.split_once('=')?;
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let close = quoted.find('"')?;
                (&quoted[..close], &quoted[close + 1..])
            }
            None => match after.find(';') {
                Some(i) => (after[..i].trim(), &after[i..]),
                None => (after.trim(), ""),
            },
        };
        if k.trim().eq_ignore_ascii_case(key) {
            return Some(value);
        }
        rest = next;
    }
}
