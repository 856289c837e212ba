//! Reading the device's status messages back ([`super::status`] writes them): for whoever
//! watches the state topic, the harness first. Strict: the fields in the order the device
//! writes them, so a device that strays from its own schema is caught.

use super::status::{State, Status};

/// Why a message on the state topic is not a status of this schema.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParseError {
    /// Not the fields in the order [`Status::encode`] writes them: where reading stopped.
    Shape { at: usize },
    /// A `state` this schema does not have.
    State,
    /// A number out of range, or an error without a code (or a code without an error).
    Value,
    /// The unescaped strings do not fit the buffer lent for them.
    Overflow,
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ParseError::Shape { at } => write!(f, "not the status schema (at byte {at})"),
            ParseError::State => f.write_str("unknown state"),
            ParseError::Value => f.write_str("a number out of range, or `err` and `code` not together"),
            ParseError::Overflow => f.write_str("strings longer than the buffer"),
        }
    }
}

impl State {
    pub const ALL: [State; 7] = [
        State::Started,
        State::Downloading,
        State::Done,
        State::Failed,
        State::NoUpdate,
        State::Online,
        State::Offline,
    ];

    pub fn by_name(name: &str) -> Option<State> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The state ends an update (no later status of it comes).
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed | State::NoUpdate)
    }
}

/// Reads what [`Status::encode`] writes, field by field in its order.
struct Reader<'t, 'b> {
    text: &'t [u8],
    at: usize,
    strings: &'b mut [u8],
    used: usize,
}

impl<'t, 'b> Reader<'t, 'b> {
    fn shape<T>(&self) -> Result<T, ParseError> {
        Err(ParseError::Shape { at: self.at })
    }

    fn literal(&mut self, want: &[u8]) -> Result<(), ParseError> {
        if self.text[self.at..].starts_with(want) {
            self.at += want.len();
            Ok(())
        } else {
            self.shape()
        }
    }

    fn number(&mut self) -> Result<i64, ParseError> {
        let start = self.at;
        if self.text.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let digits = self.text[self.at..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return self.shape();
        }
        self.at += digits;
        core::str::from_utf8(&self.text[start..self.at])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(ParseError::Value)
    }

    /// A JSON string, unescaped into the lent buffer: its range there.
    fn string(&mut self) -> Result<core::ops::Range<usize>, ParseError> {
        self.literal(b"\"")?;
        let start = self.used;
        loop {
            let Some(&b) = self.text.get(self.at) else { return self.shape() };
            self.at += 1;
            let byte = match b {
                b'"' => return Ok(start..self.used),
                b'\\' => {
                    let Some(&e) = self.text.get(self.at) else { return self.shape() };
                    self.at += 1;
                    match e {
                        b'"' | b'\\' | b'/' => e,
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'u' => {
                            let hex = self
                                .text
                                .get(self.at..self.at + 4)
                                .ok_or(ParseError::Shape { at: self.at })?;
                            let code = core::str::from_utf8(hex)
                                .ok()
                                .and_then(|h| u8::from_str_radix(h.strip_prefix("00")?, 16).ok())
                                .filter(|c| *c < 0x80)
                                .ok_or(ParseError::Shape { at: self.at })?;
                            self.at += 4;
                            code
                        }
                        _ => return self.shape(),
                    }
                }
                0..0x20 => return self.shape(),
                b => b,
            };
            *self.strings.get_mut(self.used).ok_or(ParseError::Overflow)? = byte;
            self.used += 1;
        }
    }
}

impl<'b> Status<'b> {
    /// Reads a status message as the device publishes it. Its strings are unescaped into
    /// `strings` (the message's length is always enough). One reader for everyone who watches
    /// the state topic: the harness checks a device's statuses with it.
    pub fn parse(text: &str, strings: &'b mut [u8]) -> Result<Status<'b>, ParseError> {
        let mut r = Reader { text: text.as_bytes(), at: 0, strings, used: 0 };
        r.literal(b"{\"state\":")?;
        let state_at = r.string()?;
        r.literal(b",\"bytes\":")?;
        let bytes = u64::try_from(r.number()?).map_err(|_| ParseError::Value)?;
        r.literal(b",\"total\":")?;
        let total = match r.number()? {
            -1 => None,
            n => Some(u64::try_from(n).map_err(|_| ParseError::Value)?),
        };
        r.literal(b",\"err\":")?;
        let err_at = r.string()?;
        let code = match r.text[r.at..].starts_with(b",\"code\":") {
            true => {
                r.at += 8;
                Some(i32::try_from(r.number()?).map_err(|_| ParseError::Value)?)
            }
            false => None,
        };
        r.literal(b",\"fw\":")?;
        let fw_at = r.string()?;
        r.literal(b"}")?;
        if r.at != r.text.len() {
            return r.shape();
        }
        let Reader { strings, .. } = r;
        let strings: &'b [u8] = strings;
        // Only ASCII bytes and whole UTF-8 sequences of the text are copied.
        let text_of = |range: core::ops::Range<usize>| {
            core::str::from_utf8(&strings[range]).map_err(|_| ParseError::Value)
        };
        let state = State::by_name(text_of(state_at)?).ok_or(ParseError::State)?;
        let err = text_of(err_at)?;
        let error = match (err.is_empty(), code) {
            (true, None) => None,
            (false, Some(code)) => Some((err, code)),
            _ => return Err(ParseError::Value),
        };
        Ok(Status { state, bytes, total, error, fw: text_of(fw_at)? })
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
    fn what_the_device_writes_reads_back_and_nothing_else_does() {
        for s in [
            Status { state: State::Downloading, bytes: 4096, total: Some(182_704), error: None, fw: "1.0.0" },
            Status {
                state: State::Failed,
                bytes: 0,
                total: None,
                error: Some(("head_timeout", -0x7007)),
                fw: "",
            },
            Status { state: State::Online, bytes: 0, total: None, error: None, fw: "1.0\"x\n\\é" },
        ] {
            let written = text(&s);
            let mut strings = [0u8; 64];
            let back = Status::parse(&written, &mut strings).unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(
                (back.state, back.bytes, back.total, back.error, back.fw),
                (s.state, s.bytes, s.total, s.error, s.fw),
                "{written}"
            );
        }
        let mut strings = [0u8; 64];
        for (bad, why) in [
            (r#"{"state":"done","bytes":1,"total":1,"err":"","fw":"1"} "#, ParseError::Shape { at: 54 }),
            (r#"{"bytes":1,"state":"done","total":1,"err":"","fw":"1"}"#, ParseError::Shape { at: 0 }),
            (r#"{"state":"exploded","bytes":1,"total":1,"err":"","fw":"1"}"#, ParseError::State),
            (r#"{"state":"done","bytes":-2,"total":1,"err":"","fw":"1"}"#, ParseError::Value),
            (r#"{"state":"failed","bytes":1,"total":1,"err":"x","fw":"1"}"#, ParseError::Value),
            (r#"{"state":"done","bytes":1,"total":1,"err":"","code":3,"fw":"1"}"#, ParseError::Value),
            (
                r#"{"state":"done","bytes":99999999999999999999,"total":1,"err":"","fw":"1"}"#,
                ParseError::Value,
            ),
            (r#"{"state":"done","bytes":1,"total":1,"err":"","fw":"\u0100"}"#, ParseError::Shape { at: 53 }),
            ("", ParseError::Shape { at: 0 }),
        ] {
            assert_eq!(Status::parse(bad, &mut strings).map(|s| s.state), Err(why), "{bad}");
        }
        assert_eq!(
            Status::parse(r#"{"state":"done","bytes":1,"total":1,"err":"","fw":"1.0.0"}"#, &mut [0u8; 6])
                .map(|s| s.fw),
            Err(ParseError::Overflow)
        );
        assert!(State::ALL.iter().all(|s| State::by_name(s.name()) == Some(*s)));
        assert!(State::Done.is_final() && State::NoUpdate.is_final() && !State::Downloading.is_final());
    }
}
