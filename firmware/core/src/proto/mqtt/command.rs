//! The command topic's messages (spec: mqtt-https-pull.md §1, the seed project's JSON era): a
//! JSON object whose `type` says what it is; `{"type":"ota_trigger","url":"http://…"}` starts an
//! HTTP(S) pull. The URL is cut to 199 bytes, as the seed's mesh message cuts it. A small,
//! allocation-free reader: nested values are skipped, strings unescaped into a fixed buffer.

/// The seed's mesh message holds 200 bytes with the terminating NUL.
pub const MAX_URL: usize = 199;
/// Command types the seed knows besides the trigger (taken, not acted on).
pub const OTHER_TYPES: [&str; 3] = ["connections", "button_types", "gesture_config"];

/// Our own type beside the seed's trigger: the same pull done by arduino-esp32's `HTTPUpdate`
/// (`httpUpdate.update(client, url, version)`, as sketches call it on a command).
pub const HTTP_UPDATE_TYPE: &str = "http_update";

/// A command the device takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Command<'a> {
    /// Pull the image at this URL (cut to [`MAX_URL`] bytes; `truncated` says it was).
    OtaTrigger { url: &'a str, truncated: bool },
    /// Pull it with the Arduino HTTP updater ([`HTTP_UPDATE_TYPE`]).
    HttpUpdate { url: &'a str, truncated: bool },
    /// One of the seed's other configuration messages.
    Other(&'static str),
}

/// Why a message on the command topic is not taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CommandError {
    /// Does not start with `{` (the seed handles those as other, non-JSON commands).
    NotJson,
    /// Not a JSON object: the byte offset where reading stopped.
    BadJson { at: usize },
    /// No `type`, or not a string (the seed's `JSON missing 'type' field`).
    MissingType,
    /// A `type` the device does not know (`Unknown config type`).
    UnknownType,
    /// An `ota_trigger` (or `http_update`) without a string `url` (the seed ignores it silently;
    /// we say so).
    MissingUrl,
    /// A `url` that is not `http://` or `https://` (or has no host).
    BadUrl,
}

impl CommandError {
    pub fn text(self) -> &'static str {
        match self {
            CommandError::NotJson => "not JSON",
            CommandError::BadJson { .. } => "malformed JSON",
            CommandError::MissingType => "JSON missing 'type' field",
            CommandError::UnknownType => "unknown command type",
            CommandError::MissingUrl => "trigger without a string 'url'",
            CommandError::BadUrl => "url is not http(s)://host/…",
        }
    }
}

/// Reads one command; the URL is unescaped into `url_buf`.
pub fn parse<'b>(payload: &[u8], url_buf: &'b mut [u8; MAX_URL]) -> Result<Command<'b>, CommandError> {
    if payload.first() != Some(&b'{') {
        return Err(CommandError::NotJson);
    }
    let mut r = Reader { s: payload, at: 0 };
    let mut kind = Kind::Missing;
    let mut type_buf = [0u8; 32];
    let mut url: Option<(usize, bool)> = None;
    let bad = |r: &Reader<'_>| CommandError::BadJson { at: r.at };
    r.expect(b'{').map_err(|_| bad(&r))?;
    r.ws();
    if r.peek() == Some(b'}') {
        r.at += 1;
    } else {
        loop {
            r.ws();
            let mut key = [0u8; 8];
            let key = match r.string(&mut key) {
                Ok((len, false)) => &key[..len],
                // A key longer than any we look for.
                Ok((_, true)) => &[][..],
                Err(()) => return Err(bad(&r)),
            };
            r.ws();
            r.expect(b':').map_err(|_| bad(&r))?;
            r.ws();
            match (key, r.peek()) {
                (b"type", Some(b'"')) => {
                    kind = match r.string(&mut type_buf) {
                        Ok((len, false)) => Kind::Is(len),
                        Ok((_, true)) => Kind::Unknown,
                        Err(()) => return Err(bad(&r)),
                    }
                }
                (b"type", _) => {
                    r.skip_value().map_err(|_| bad(&r))?;
                    kind = Kind::Missing;
                }
                (b"url", Some(b'"')) => url = Some(r.string(url_buf).map_err(|_| bad(&r))?),
                (b"url", _) => {
                    r.skip_value().map_err(|_| bad(&r))?;
                    url = None;
                }
                _ => r.skip_value().map_err(|_| bad(&r))?,
            }
            r.ws();
            match r.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(bad(&r)),
            }
        }
    }
    r.ws();
    if r.at != payload.len() {
        return Err(bad(&r));
    }
    let name = match kind {
        Kind::Missing => return Err(CommandError::MissingType),
        Kind::Unknown => return Err(CommandError::UnknownType),
        Kind::Is(len) => core::str::from_utf8(&type_buf[..len]).map_err(|_| CommandError::UnknownType)?,
    };
    if name != "ota_trigger" && name != HTTP_UPDATE_TYPE {
        return OTHER_TYPES
            .iter()
            .find(|t| **t == name)
            .map(|t| Command::Other(t))
            .ok_or(CommandError::UnknownType);
    }
    let Some((len, truncated)) = url else { return Err(CommandError::MissingUrl) };
    // Cut on a character boundary: a URL is ASCII, anything else fails the URL check below.
    let url = core::str::from_utf8(&url_buf[..len]).map_err(|_| CommandError::BadUrl)?;
    if crate::url::Url::parse(url).is_err() {
        return Err(CommandError::BadUrl);
    }
    Ok(if name == HTTP_UPDATE_TYPE {
        Command::HttpUpdate { url, truncated }
    } else {
        Command::OtaTrigger { url, truncated }
    })
}

enum Kind {
    Missing,
    Unknown,
    Is(usize),
}

/// Nesting deeper than this is refused rather than followed (a bounded stack).
const MAX_DEPTH: usize = 16;

struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), ()> {
        if self.next() == Some(b) { Ok(()) } else { Err(()) }
    }

    /// A string into `buf`: its length there and whether it was cut to fit.
    fn string(&mut self, buf: &mut [u8]) -> Result<(usize, bool), ()> {
        self.expect(b'"')?;
        let mut len = 0;
        let mut cut = false;
        let mut push = |bytes: &[u8], len: &mut usize, cut: &mut bool| {
            for &b in bytes {
                if *len < buf.len() {
                    buf[*len] = b;
                    *len += 1;
                } else {
                    *cut = true;
                }
            }
        };
        loop {
            match self.next().ok_or(())? {
                b'"' => return Ok((len, cut)),
                b'\\' => {
                    let c = match self.next().ok_or(())? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return Err(()),
                    };
                    let mut utf8 = [0u8; 4];
                    push(c.encode_utf8(&mut utf8).as_bytes(), &mut len, &mut cut);
                }
                b if b < 0x20 => return Err(()),
                b => push(&[b], &mut len, &mut cut),
            }
        }
    }

    fn hex4(&mut self) -> Result<u16, ()> {
        let mut v = 0u16;
        for _ in 0..4 {
            let d = (self.next().ok_or(())? as char).to_digit(16).ok_or(())?;
            v = v << 4 | d as u16;
        }
        Ok(v)
    }

    /// `\uXXXX`, a surrogate pair taken whole.
    fn unicode(&mut self) -> Result<char, ()> {
        let hi = self.hex4()?;
        if !(0xD800..0xDC00).contains(&hi) {
            return char::from_u32(hi as u32).ok_or(());
        }
        if self.next() != Some(b'\\') || self.next() != Some(b'u') {
            return Err(());
        }
        let lo = self.hex4()?;
        if !(0xDC00..0xE000).contains(&lo) {
            return Err(());
        }
        char::from_u32(0x10000 + (((hi as u32) - 0xD800) << 10) + (lo as u32 - 0xDC00)).ok_or(())
    }

    fn skip_value(&mut self) -> Result<(), ()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Result<(), ()> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        self.ws();
        match self.peek().ok_or(())? {
            b'"' => self.string(&mut []).map(drop),
            open @ (b'{' | b'[') => {
                self.at += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                self.ws();
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string(&mut [])?;
                        self.ws();
                        self.expect(b':')?;
                    }
                    self.skip_at(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => continue,
                        Some(c) if c == close => return Ok(()),
                        _ => return Err(()),
                    }
                }
            }
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.at;
                while matches!(self.peek(), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
                    self.at += 1;
                }
                if self.at == start { Err(()) } else { Ok(()) }
            }
            _ => Err(()),
        }
    }

    fn word(&mut self, w: &[u8]) -> Result<(), ()> {
        if self.s[self.at..].starts_with(w) {
            self.at += w.len();
            Ok(())
        } else {
            Err(())
        }
    }
}
