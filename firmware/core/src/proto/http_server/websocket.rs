//! WebSocket (RFC 6455) as a device's page and a harness's client need it, sans-IO and
//! allocation free: the upgrade (the request checked, the `Sec-WebSocket-Accept` key), frame
//! heads written for either side, and a streaming frame reader that hands a frame's payload on
//! as it arrives, unmasked, in pieces of at most [`PIECE`] bytes — so an 8 KiB chunk of an
//! image is never held whole, and a frame's declared length costs nothing until its bytes come.
//!
//! Messages (a frame and its continuations), their size limits and what they mean belong to
//! the protocol on top (`proto::ws_ota`).

use super::{Head, Method};
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3's GUID, appended to the client's key before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The most payload bytes one [`FrameEvent::Payload`] carries.
pub const PIECE: usize = 256;
/// A control frame's payload limit (§5.5).
pub const CONTROL_MAX: u64 = 125;

/// A frame's opcode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn of(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why an upgrade request is not a WebSocket handshake (answered 400, or 426 for a version).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UpgradeError {
    /// Not a GET.
    Method,
    /// No `Upgrade: websocket` with `Connection: upgrade`.
    NotAnUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    Version,
    /// No `Sec-WebSocket-Key`, or not the base64 of 16 bytes.
    Key,
}

impl UpgradeError {
    pub fn status(self) -> u16 {
        match self {
            UpgradeError::Version => 426,
            UpgradeError::Method => 405,
            _ => 400,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            UpgradeError::Method => "a WebSocket handshake is a GET",
            UpgradeError::NotAnUpgrade => "expected Upgrade: websocket",
            UpgradeError::Version => "Sec-WebSocket-Version must be 13",
            UpgradeError::Key => "bad Sec-WebSocket-Key",
        }
    }
}

/// Checks a handshake request; its key on success.
pub fn upgrade_key<'a>(head: &Head<'a>) -> Result<&'a str, UpgradeError> {
    if head.method != Method::Get {
        return Err(UpgradeError::Method);
    }
    let has = |name: &str, word: &str| {
        head.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(word)))
    };
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Err(UpgradeError::NotAnUpgrade);
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(UpgradeError::Version);
    }
    let key = head.header("sec-websocket-key").ok_or(UpgradeError::Key)?.trim();
    let b = key.as_bytes();
    // 16 bytes in base64: 22 digits and `==`.
    let digits_ok = b.len() == 24 && b[..22].iter().all(|&c| crate::pem::sextet(c).is_some());
    if !digits_ok || &b[22..] != b"==" {
        return Err(UpgradeError::Key);
    }
    Ok(key)
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ‖ GUID)), 28 characters.
pub fn accept_key(key: &str) -> [u8; 28] {
    let digest: [u8; 20] =
        Sha1::new().chain_update(key.as_bytes()).chain_update(GUID.as_bytes()).finalize().into();
    let mut out = [0u8; 28];
    base64(&digest, &mut out);
    out
}

fn base64(input: &[u8; 20], out: &mut [u8; 28]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = 0;
    for chunk in input.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            out[o + i] = if i <= n { ALPHABET[(v >> (18 - 6 * i)) as usize & 63] } else { b'=' };
        }
        o += 4;
    }
}

/// Writes the `101 Switching Protocols` answer to a handshake with `key`.
pub fn write_switching(send: &mut dyn FnMut(&[u8]), key: &str) {
    let accept = accept_key(key);
    send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    send(&accept);
    send(b"\r\n\r\n");
}

/// A frame's head as written: `fin`, the opcode, the payload length, and the mask a client
/// applies (`None`: a server's frame). Returns the used part of `out`.
pub fn frame_head(fin: bool, opcode: Opcode, len: u64, mask: Option<[u8; 4]>, out: &mut [u8; 14]) -> &[u8] {
    out[0] = (u8::from(fin) << 7) | opcode.bits();
    let masked = u8::from(mask.is_some()) << 7;
    let mut n = 2;
    if len < 126 {
        out[1] = masked | len as u8;
    } else if len <= 0xFFFF {
        out[1] = masked | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        n = 4;
    } else {
        out[1] = masked | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        n = 10;
    }
    if let Some(m) = mask {
        out[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    &out[..n]
}

/// Sends one unmasked (server) frame.
pub fn send_frame(send: &mut dyn FnMut(&[u8]), opcode: Opcode, payload: &[u8]) {
    let mut head = [0u8; 14];
    send(frame_head(true, opcode, payload.len() as u64, None, &mut head));
    send(payload);
}

/// XORs `bytes` with `mask`, the first byte being the payload's byte number `at`.
pub fn apply_mask(bytes: &mut [u8], mask: [u8; 4], at: u64) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b ^= mask[((at + i as u64) % 4) as usize];
    }
}

/// Why a frame breaks the protocol (the connection is closed with status 1002).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameError {
    /// A client's frame without a mask (§5.1), or a server's with one.
    Masking,
    /// RSV bits set without an extension that defines them.
    Reserved,
    /// An opcode RFC 6455 does not define.
    Opcode(u8),
    /// A control frame longer than 125 bytes, or fragmented.
    Control,
    /// A 64-bit length with its top bit set.
    Length,
}

impl FrameError {
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Masking => "frame masking wrong for its direction",
            FrameError::Reserved => "reserved bits set",
            FrameError::Opcode(_) => "unknown opcode",
            FrameError::Control => "control frame fragmented or longer than 125 bytes",
            FrameError::Length => "frame length out of range",
        }
    }
}

/// A frame as read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub len: u64,
}

/// What the reader found, in order: a frame's start, its payload in pieces, its end.
#[derive(PartialEq, Eq, Debug)]
pub enum FrameEvent<'a> {
    Start(Frame),
    Payload(&'a [u8]),
    End(Frame),
}

enum ReadState {
    Head { buf: [u8; 14], have: usize },
    Payload { frame: Frame, mask: Option<[u8; 4]>, done: u64 },
}

/// Reads frames from a byte stream; `masked` says what the peer must send (a server's reader:
/// `true`).
pub struct FrameReader {
    masked: bool,
    state: ReadState,
}

impl FrameReader {
    pub fn new(masked: bool) -> Self {
        FrameReader { masked, state: ReadState::Head { buf: [0; 14], have: 0 } }
    }

    /// Takes `input` whole; events go to `on`. After an error the reader takes nothing more.
    pub fn feed(&mut self, mut input: &[u8], on: &mut dyn FnMut(FrameEvent<'_>)) -> Result<(), FrameError> {
        loop {
            match &mut self.state {
                ReadState::Head { buf, have } => {
                    let Some(need) = head_len(&buf[..*have]) else {
                        if input.is_empty() {
                            return Ok(());
                        }
                        buf[*have] = input[0];
                        *have += 1;
                        input = &input[1..];
                        continue;
                    };
                    if *have < need {
                        let take = (need - *have).min(input.len());
                        buf[*have..*have + take].copy_from_slice(&input[..take]);
                        *have += take;
                        input = &input[take..];
                        if *have < need {
                            return Ok(());
                        }
                    }
                    let (frame, mask) = parse_head(&buf[..need], self.masked)?;
                    on(FrameEvent::Start(frame));
                    self.state = ReadState::Payload { frame, mask, done: 0 };
                }
                ReadState::Payload { frame, mask, done } => {
                    let frame = *frame;
                    while *done < frame.len && !input.is_empty() {
                        let n = (frame.len - *done).min(input.len() as u64).min(PIECE as u64) as usize;
                        let mut piece = [0u8; PIECE];
                        piece[..n].copy_from_slice(&input[..n]);
                        if let Some(m) = mask {
                            apply_mask(&mut piece[..n], *m, *done);
                        }
                        input = &input[n..];
                        *done += n as u64;
                        on(FrameEvent::Payload(&piece[..n]));
                    }
                    if *done < frame.len {
                        return Ok(());
                    }
                    self.state = ReadState::Head { buf: [0; 14], have: 0 };
                    on(FrameEvent::End(frame));
                }
            }
        }
    }
}

/// How long a frame's head is, once its first two bytes are known.
fn head_len(have: &[u8]) -> Option<usize> {
    let b1 = *have.get(1)?;
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    Some(
        2 + mask
            + match b1 & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            },
    )
}

fn parse_head(head: &[u8], masked: bool) -> Result<(Frame, Option<[u8; 4]>), FrameError> {
    let (b0, b1) = (head[0], head[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let opcode = Opcode::of(b0 & 0x0F).ok_or(FrameError::Opcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    if (b1 & 0x80 != 0) != masked {
        return Err(FrameError::Masking);
    }
    let (len, at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len >> 63 != 0 {
        return Err(FrameError::Length);
    }
    if opcode.is_control() && (!fin || len > CONTROL_MAX) {
        return Err(FrameError::Control);
    }
    let mask = masked.then(|| [head[at], head[at + 1], head[at + 2], head[at + 3]]);
    Ok((Frame { fin, opcode, len }, mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(&accept_key("dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn the_specs_masked_otasize_frame_reads_back() {
        let wire = [
            0x81, 0xa0, 0x11, 0x22, 0x33, 0x44, 0x6a, 0x00, 0x5d, 0x25, 0x7c, 0x47, 0x11, 0x7e, 0x33, 0x4d,
            0x47, 0x25, 0x42, 0x4b, 0x49, 0x21, 0x33, 0x0e, 0x11, 0x32, 0x70, 0x4e, 0x46, 0x21, 0x33, 0x18,
            0x01, 0x74, 0x25, 0x1a, 0x03, 0x39,
        ];
        let text = br#"{"name":"otaSize","value":20480}"#;
        let mut head = [0u8; 14];
        let mut built =
            frame_head(true, Opcode::Text, text.len() as u64, Some([0x11, 0x22, 0x33, 0x44]), &mut head)
                .to_vec();
        let mut body = text.to_vec();
        apply_mask(&mut body, [0x11, 0x22, 0x33, 0x44], 0);
        built.extend_from_slice(&body);
        assert_eq!(built, wire);
        // Read back one byte at a time.
        let mut reader = FrameReader::new(true);
        let mut payload = Vec::new();
        let mut ends = 0;
        for b in wire {
            reader
                .feed(&[b], &mut |e| match e {
                    FrameEvent::Payload(p) => payload.extend_from_slice(p),
                    FrameEvent::End(f) => {
                        assert_eq!(f, Frame { fin: true, opcode: Opcode::Text, len: 32 });
                        ends += 1
                    }
                    FrameEvent::Start(_) => {}
                })
                .unwrap();
        }
        assert_eq!((payload.as_slice(), ends), (&text[..], 1));
    }

    #[test]
    fn a_binary_chunk_head_and_lengths() {
        let mut head = [0u8; 14];
        assert_eq!(
            frame_head(true, Opcode::Binary, 8192, Some([1, 2, 3, 4]), &mut head),
            [0x82, 0xfe, 0x20, 0x00, 1, 2, 3, 4]
        );
        assert_eq!(frame_head(true, Opcode::Text, 32, None, &mut head), [0x81, 0x20]);
        assert_eq!(
            frame_head(false, Opcode::Binary, 1 << 20, None, &mut head),
            [0x02, 0x7f, 0, 0, 0, 0, 0, 0x10, 0, 0]
        );
    }

    #[test]
    fn protocol_errors() {
        let err = |bytes: &[u8], masked| FrameReader::new(masked).feed(bytes, &mut |_| {}).unwrap_err();
        assert_eq!(err(&[0x81, 0x01, b'x'], true), FrameError::Masking);
        assert_eq!(err(&[0x81, 0x81, 0, 0, 0, 0, b'x'], false), FrameError::Masking);
        assert_eq!(err(&[0xc1, 0x80, 0, 0, 0, 0], true), FrameError::Reserved);
        assert_eq!(err(&[0x83, 0x80, 0, 0, 0, 0], true), FrameError::Opcode(3));
        assert_eq!(err(&[0x09, 0x80, 0, 0, 0, 0], true), FrameError::Control);
        assert_eq!(err(&[0x89, 0xfe, 0, 126, 0, 0, 0, 0], true), FrameError::Control);
        assert_eq!(err(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], true), FrameError::Length);
    }

    #[test]
    fn a_huge_declared_length_costs_nothing_until_bytes_come() {
        let mut reader = FrameReader::new(true);
        let mut starts = Vec::new();
        reader
            .feed(&[0x82, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0, 9, 9, 9, 9], &mut |e| {
                if let FrameEvent::Start(f) = e {
                    starts.push(f.len)
                }
            })
            .unwrap();
        assert_eq!(starts, [1 << 30]);
    }

    #[test]
    fn handshake_checks() {
        let req = |extra: &str| {
            let mut s = std::string::String::from("GET /ota/ws HTTP/1.1\r\nHost: x\r\n");
            s.push_str(extra);
            s.push_str("\r\n");
            s
        };
        let key = |text: &str| {
            let h = Head::parse(text.as_bytes()).map_err(|_| UpgradeError::NotAnUpgrade)?;
            upgrade_key(&h).map(std::string::ToString::to_string)
        };
        let good = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        assert_eq!(key(&req(good)).as_deref(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(key(&req("")), Err(UpgradeError::NotAnUpgrade));
        assert_eq!(key(&req(&good.replace("13", "8"))), Err(UpgradeError::Version));
        assert_eq!(key(&req(&good.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"))), Err(UpgradeError::Key));
    }
}
