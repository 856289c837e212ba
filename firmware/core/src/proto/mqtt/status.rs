//! The device's OTA status messages on its state topic (our schema, mqtt-https-pull.md §10; the
//! seed publishes none): one JSON object per step of a pull,
//! `{"state":"downloading","bytes":N,"total":N|-1,"err":"","fw":"1.0.0"}` with `state` one of
//! `started`, `downloading`, `done`, `failed`, `no_update` (and, retained, `online` /
//! `offline`, the latter as the device's last will), and on a failure `err` the reason's
//! name and `code` its `esp_err_t` (or the Arduino updater's code). Written into a fixed buffer;
//! strings are JSON-escaped.

/// A status message's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// A trigger was taken; the request goes out.
    Started,
    Downloading,
    /// Written and verified; the device restarts into the new image.
    Done,
    Failed,
    /// The server had nothing newer (the Arduino updater's 304).
    NoUpdate,
    /// The device is connected (retained, so a late subscriber sees the running version).
    Online,
    /// The device's last will: the broker publishes it when the device vanishes.
    Offline,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Started => "started",
            State::Downloading => "downloading",
            State::Done => "done",
            State::Failed => "failed",
            State::NoUpdate => "no_update",
            State::Online => "online",
            State::Offline => "offline",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Status<'a> {
    pub state: State,
    pub bytes: u64,
    /// `None`: the length is not known (chunked or close-delimited body).
    pub total: Option<u64>,
    /// On `Failed`: the reason's name and code.
    pub error: Option<(&'a str, i32)>,
    /// The running firmware's version.
    pub fw: &'a str,
}

/// The buffer is too small for the message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Overflow;

struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn raw(&mut self, s: &[u8]) -> Result<(), Overflow> {
        let end = self.len.checked_add(s.len()).filter(|&e| e <= self.buf.len()).ok_or(Overflow)?;
        self.buf[self.len..end].copy_from_slice(s);
        self.len = end;
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), Overflow> {
        self.raw(b"\"")?;
        for c in s.chars() {
            match c {
                '"' => self.raw(b"\\\"")?,
                '\\' => self.raw(b"\\\\")?,
                c if (c as u32) < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let n = c as usize;
                    self.raw(&[b'\\', b'u', b'0', b'0', HEX[n >> 4], HEX[n & 15]])?;
                }
                c => {
                    let mut b = [0u8; 4];
                    self.raw(c.encode_utf8(&mut b).as_bytes())?;
                }
            }
        }
        self.raw(b"\"")
    }

    fn number(&mut self, n: i64) -> Result<(), Overflow> {
        let mut buf = [0u8; 20];
        let mut at = buf.len();
        let mut v = n.unsigned_abs();
        loop {
            at -= 1;
            buf[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            at -= 1;
            buf[at] = b'-';
        }
        self.raw(&buf[at..])
    }
}

impl Status<'_> {
    /// Writes the JSON into `buf`; returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Overflow> {
        let mut w = Writer { buf, len: 0 };
        w.raw(b"{\"state\":")?;
        w.string(self.state.name())?;
        w.raw(b",\"bytes\":")?;
        w.number(self.bytes.min(i64::MAX as u64) as i64)?;
        w.raw(b",\"total\":")?;
        w.number(self.total.map_or(-1, |t| t.min(i64::MAX as u64) as i64))?;
        w.raw(b",\"err\":")?;
        w.string(self.error.map_or("", |(name, _)| name))?;
        if let Some((_, code)) = self.error {
            w.raw(b",\"code\":")?;
            w.number(code as i64)?;
        }
        w.raw(b",\"fw\":")?;
        w.string(self.fw)?;
        w.raw(b"}")?;
        Ok(w.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &Status<'_>) -> std::string::String {
        let mut buf = [0u8; 256];
        let n = s.encode(&mut buf).unwrap();
        std::string::String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_are_the_documented_json() {
        let s =
            Status { state: State::Downloading, bytes: 4096, total: Some(182_704), error: None, fw: "1.0.0" };
        assert_eq!(text(&s), r#"{"state":"downloading","bytes":4096,"total":182704,"err":"","fw":"1.0.0"}"#);
        let s = Status {
            state: State::Failed,
            bytes: 0,
            total: None,
            error: Some(("chip_id_mismatch", 0x10A)),
            fw: "1.0\"x\n",
        };
        assert_eq!(
            text(&s),
            r#"{"state":"failed","bytes":0,"total":-1,"err":"chip_id_mismatch","code":266,"fw":"1.0\"x\u000a"}"#
        );
        let s = Status {
            state: State::Failed,
            bytes: 0,
            total: None,
            error: Some(("head_timeout", -0x7007)),
            fw: "",
        };
        assert!(text(&s).contains(r#""code":-28679"#));
        assert_eq!(s.encode(&mut [0u8; 20]), Err(Overflow));
    }
}
