//! The two datagrams an uploader sends: the invitation `"<command> <port> <size> <md5>\n"` and
//! the authentication answer `"200 <cnonce> <response>\n"`.
//!
//! Stricter than arduino-esp32's reader (whose `parseInt` turns a missing number into 0, so a
//! stray datagram reads as a FLASH invitation for port 0): every field must be there and well
//! formed, and what was wrong is named, so a bad invitation is a log line, never an update.

use super::{CMD_AUTH, CMD_FILESYSTEM, CMD_FLASH};
use core::fmt;
use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// An invitation the device takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Invitation {
    pub command: u32,
    /// Where the uploader waits for the back-connection (its TCP port).
    pub port: u16,
    pub size: u32,
    pub md5: [u8; 16],
    /// Who sent it (the back-connection goes to this address, at `port`).
    pub host: SocketAddr,
}

impl Invitation {
    pub fn back_connection(&self) -> SocketAddr {
        SocketAddr::new(self.host.ip(), self.port)
    }
}

/// Why a datagram was not taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InvitationError {
    /// No decimal command at the start.
    NoCommand,
    /// A command other than FLASH (0) or filesystem (100).
    UnknownCommand(u32),
    /// A number with more digits than fit.
    NumberTooLarge,
    /// The TCP port is missing, not a number or 0.
    Port,
    /// The size is missing or not a number.
    Size,
    /// The MD5 is not 32 characters.
    Md5Length(usize),
    /// The MD5 has a character that is not hexadecimal.
    Md5NotHex,
    /// An authentication answer whose command is not 200.
    AuthCommand(u32),
    /// An authentication answer whose cnonce or response has the wrong length.
    AuthParams { cnonce: usize, response: usize, expected: usize },
}

impl fmt::Display for InvitationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvitationError::NoCommand => f.write_str("no command number"),
            InvitationError::UnknownCommand(c) => {
                write!(f, "unknown command {c} (expected {CMD_FLASH} flash or {CMD_FILESYSTEM} filesystem)")
            }
            InvitationError::NumberTooLarge => f.write_str("number too large"),
            InvitationError::Port => f.write_str("no valid TCP port (1-65535)"),
            InvitationError::Size => f.write_str("no valid image size"),
            InvitationError::Md5Length(n) => write!(f, "bad md5 length {n} (expected 32)"),
            InvitationError::Md5NotHex => f.write_str("md5 is not hexadecimal"),
            InvitationError::AuthCommand(c) => write!(f, "{CMD_AUTH} was expected. got {c} instead"),
            InvitationError::AuthParams { cnonce, response, expected } => write!(
                f,
                "auth param fail: cnonce of {cnonce} and response of {response} characters (expected {expected})"
            ),
        }
    }
}

/// Reads from a datagram the way the device's parser goes through it.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn skip_spaces(&mut self) {
        while let [b' ', rest @ ..] = self.data {
            self.data = rest;
        }
    }

    /// A decimal number after optional spaces: `None` when there is no digit.
    fn number(&mut self) -> Result<Option<u64>, InvitationError> {
        self.skip_spaces();
        let digits = self.data.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Ok(None);
        }
        if digits > 10 {
            return Err(InvitationError::NumberTooLarge);
        }
        let value = self.data[..digits].iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        self.data = &self.data[digits..];
        Ok(Some(value))
    }

    /// One separator byte (the device consumes it whatever it is).
    fn separator(&mut self) {
        if let [_, rest @ ..] = self.data {
            self.data = rest;
        }
    }

    /// Everything up to `end` (or the end of the datagram), `end` consumed.
    fn until(&mut self, end: u8) -> &'a [u8] {
        let n = self.data.iter().position(|b| *b == end).unwrap_or(self.data.len());
        let field = &self.data[..n];
        self.data = self.data.get(n + 1..).unwrap_or(&[]);
        field
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && first.is_ascii_whitespace()
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && last.is_ascii_whitespace()
    {
        s = rest;
    }
    s
}

/// An invitation; `host` is left unspecified for the caller to fill in with the sender.
pub fn parse_invitation(data: &[u8]) -> Result<Invitation, InvitationError> {
    let mut c = Cursor { data };
    let command = c.number()?.ok_or(InvitationError::NoCommand)?;
    let command = u32::try_from(command).map_err(|_| InvitationError::NumberTooLarge)?;
    if command != CMD_FLASH && command != CMD_FILESYSTEM {
        return Err(InvitationError::UnknownCommand(command));
    }
    let port = match c.number()? {
        Some(p @ 1..=65535) => p as u16,
        _ => return Err(InvitationError::Port),
    };
    let size = c.number()?.ok_or(InvitationError::Size)?;
    let size = u32::try_from(size).map_err(|_| InvitationError::NumberTooLarge)?;
    c.separator();
    let md5_text = trim(c.until(b'\n'));
    if md5_text.len() != 32 {
        return Err(InvitationError::Md5Length(md5_text.len()));
    }
    let mut md5 = [0u8; 16];
    let mut lower = [0u8; 32];
    for (l, b) in lower.iter_mut().zip(md5_text) {
        *l = b.to_ascii_lowercase();
    }
    crate::hex::decode(&lower, &mut md5).ok_or(InvitationError::Md5NotHex)?;
    let host = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    Ok(Invitation { command, port, size, md5, host })
}

/// An authentication answer's two fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AuthRequest {
    cnonce: [u8; 64],
    response: [u8; 64],
    len: usize,
}

impl AuthRequest {
    pub fn cnonce(&self) -> &[u8] {
        &self.cnonce[..self.len]
    }
    pub fn response(&self) -> &[u8] {
        &self.response[..self.len]
    }
}

/// `"200 <cnonce> <response>\n"` with both fields `hex_len` characters long.
pub fn parse_auth(data: &[u8], hex_len: usize) -> Result<AuthRequest, InvitationError> {
    let mut c = Cursor { data };
    let command = c.number()?.ok_or(InvitationError::NoCommand)?;
    if command != u64::from(CMD_AUTH) {
        return Err(InvitationError::AuthCommand(u32::try_from(command).unwrap_or(u32::MAX)));
    }
    c.separator();
    let cnonce = c.until(b' ');
    let response = trim(c.until(b'\n'));
    if cnonce.len() != hex_len || response.len() != hex_len || hex_len > 64 {
        return Err(InvitationError::AuthParams {
            cnonce: cnonce.len(),
            response: response.len(),
            expected: hex_len,
        });
    }
    let mut req = AuthRequest { cnonce: [0; 64], response: [0; 64], len: hex_len };
    req.cnonce[..hex_len].copy_from_slice(cnonce);
    req.response[..hex_len].copy_from_slice(response);
    Ok(req)
}
