//! MQTT 3.1.1 control packets (OASIS mqtt-v3.1.1, §2–3): what a device sends, encoded piece
//! by piece into a byte sink (no buffer holds a whole packet), and an incremental decoder for
//! what a broker sends, holding at most one packet of `N` bytes. A packet larger than that is
//! skipped whole and reported, so a broker cannot make the device buffer without bound.

/// Control packet types (the fixed header's high nibble).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// The largest remaining length the four-byte encoding can say (§2.2.3).
pub const MAX_REMAINING: u32 = 268_435_455;

/// A quality of service level.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

/// Why the bytes from the broker are not MQTT 3.1.1 as a client may receive it. The
/// connection must then be closed (§4.8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProtocolError {
    /// A remaining length longer than four bytes.
    RemainingLength,
    /// A packet type a server never sends to a client (CONNECT, SUBSCRIBE, …) or type 0/15.
    UnexpectedType(u8),
    /// Fixed-header flags other than the ones §2.2.2 fixes for this type.
    Flags { kind: u8, flags: u8 },
    /// A packet whose body is shorter or longer than its type says.
    Length { kind: u8, len: u32 },
    /// PUBLISH with QoS 3.
    QoS,
    /// A topic name that is not UTF-8, holds a wildcard, or overruns the packet.
    Topic,
    /// A CONNACK return code above 5, or flags other than session-present.
    Connack,
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProtocolError::RemainingLength => f.write_str("remaining length over 4 bytes"),
            ProtocolError::UnexpectedType(k) => write!(f, "packet type {k} from a broker"),
            ProtocolError::Flags { kind, flags } => write!(f, "flags {flags:#x} on packet type {kind}"),
            ProtocolError::Length { kind, len } => write!(f, "packet type {kind} with {len} bytes"),
            ProtocolError::QoS => f.write_str("PUBLISH with QoS 3"),
            ProtocolError::Topic => f.write_str("malformed topic name"),
            ProtocolError::Connack => f.write_str("malformed CONNACK"),
        }
    }
}

/// A packet from the broker, borrowing the decoder's buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Incoming<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        topic: &'a str,
        payload: &'a [u8],
        qos: QoS,
        retain: bool,
        dup: bool,
        id: Option<u16>,
    },
    PubAck {
        id: u16,
    },
    /// QoS 2 flow packets; this client never asks for QoS 2, so they only say the broker erred.
    PubRec {
        id: u16,
    },
    PubRel {
        id: u16,
    },
    PubComp {
        id: u16,
    },
    SubAck {
        id: u16,
        codes: &'a [u8],
    },
    UnsubAck {
        id: u16,
    },
    PingResp,
    /// A packet over the decoder's capacity, skipped whole; only its type and size are known.
    Oversized {
        kind: u8,
        len: u32,
    },
    /// A piece of a PUBLISH over the decoder's capacity, streamed (a decoder asked to stream
    /// large messages): the payload's bytes from `offset`, as they came; `total` is the whole
    /// payload's size, and the last piece ends there. The topic and packet id come with every
    /// piece.
    PublishPiece {
        topic: &'a str,
        qos: QoS,
        retain: bool,
        dup: bool,
        id: Option<u16>,
        offset: u32,
        total: u32,
        piece: &'a [u8],
    },
}

/// Where encoded bytes go (a TCP stream: pieces may be sent separately).
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// MQTT's variable-length remaining length (1 to 4 bytes).
pub(super) fn put_remaining<S: Sink + ?Sized>(out: &mut S, mut len: u32) {
    let mut buf = [0u8; 4];
    let mut n = 0;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf[n] = byte;
        n += 1;
        if len == 0 {
            break;
        }
    }
    out.put(&buf[..n]);
}

fn put_str<S: Sink + ?Sized>(out: &mut S, s: &[u8]) {
    out.put(&(s.len() as u16).to_be_bytes());
    out.put(s);
}

/// A string field's size on the wire.
fn str_len(s: &[u8]) -> u32 {
    2 + s.len() as u32
}

/// The last will (§3.1.2.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub message: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub keep_alive_s: u16,
    pub clean_session: bool,
    pub will: Option<Will<'a>>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Why a packet cannot be encoded (strings are at most 65535 bytes, a packet 256 MiB).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TooLong;

fn checked(fields: &[&[u8]]) -> Result<(), TooLong> {
    if fields.iter().any(|f| f.len() > u16::MAX as usize) { Err(TooLong) } else { Ok(()) }
}

impl Connect<'_> {
    pub fn encode<S: Sink + ?Sized>(&self, out: &mut S) -> Result<(), TooLong> {
        let will = self.will.map(|w| (w.topic.as_bytes(), w.message));
        checked(&[
            self.client_id.as_bytes(),
            will.map_or(&[][..], |w| w.0),
            will.map_or(&[][..], |w| w.1),
            self.username.unwrap_or("").as_bytes(),
            self.password.unwrap_or(&[]),
        ])?;
        let mut flags = 0u8;
        let mut len = 10 + str_len(self.client_id.as_bytes());
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | ((w.qos as u8) << 3) | if w.retain { 0x20 } else { 0 };
            len += str_len(w.topic.as_bytes()) + str_len(w.message);
        }
        if let Some(u) = self.username {
            flags |= 0x80;
            len += str_len(u.as_bytes());
        }
        if let Some(p) = self.password {
            flags |= 0x40;
            len += str_len(p);
        }
        out.put(&[kind::CONNECT << 4]);
        put_remaining(out, len);
        put_str(out, b"MQTT");
        out.put(&[4, flags]);
        out.put(&self.keep_alive_s.to_be_bytes());
        put_str(out, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            put_str(out, w.topic.as_bytes());
            put_str(out, w.message);
        }
        if let Some(u) = self.username {
            put_str(out, u.as_bytes());
        }
        if let Some(p) = self.password {
            put_str(out, p);
        }
        Ok(())
    }
}

/// PUBLISH (§3.3); `id` is required for QoS 1 and 2.
pub fn publish<S: Sink + ?Sized>(
    out: &mut S,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    id: u16,
) -> Result<(), TooLong> {
    checked(&[topic.as_bytes()])?;
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let len = str_len(topic.as_bytes()) as u64 + id_len + payload.len() as u64;
    if len > MAX_REMAINING as u64 {
        return Err(TooLong);
    }
    out.put(&[(kind::PUBLISH << 4) | ((qos as u8) << 1) | retain as u8]);
    put_remaining(out, len as u32);
    put_str(out, topic.as_bytes());
    if id_len > 0 {
        out.put(&id.to_be_bytes());
    }
    out.put(payload);
    Ok(())
}

/// SUBSCRIBE to one filter (§3.8; flags fixed at 0b0010).
pub fn subscribe<S: Sink + ?Sized>(out: &mut S, id: u16, filter: &str, qos: QoS) -> Result<(), TooLong> {
    checked(&[filter.as_bytes()])?;
    out.put(&[(kind::SUBSCRIBE << 4) | 0x02]);
    put_remaining(out, 2 + str_len(filter.as_bytes()) + 1);
    out.put(&id.to_be_bytes());
    put_str(out, filter.as_bytes());
    out.put(&[qos as u8]);
    Ok(())
}

pub fn puback<S: Sink + ?Sized>(out: &mut S, id: u16) {
    out.put(&[kind::PUBACK << 4, 2]);
    out.put(&id.to_be_bytes());
}

pub fn pingreq<S: Sink + ?Sized>(out: &mut S) {
    out.put(&[kind::PINGREQ << 4, 0]);
}

pub fn disconnect<S: Sink + ?Sized>(out: &mut S) {
    out.put(&[kind::DISCONNECT << 4, 0]);
}

/// Whether `filter` (with `+` and `#` wildcards) matches `topic` (§4.7).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    // Topics starting with `$` are not matched by a leading wildcard (§4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// Waiting for a fixed header's first byte.
    Type,
    /// Reading the remaining length: its value so far and how many bytes it took.
    Length { first: u8, value: u32, bytes: u8 },
    /// Collecting the body into the buffer.
    Body { first: u8, len: u32 },
    /// Dropping an oversized body; reported once it is all gone.
    Skip { first: u8, len: u32, left: u32 },
    /// Collecting a large PUBLISH's topic and packet id (`head` bytes of the body, known once
    /// the topic's length is in) before its payload is streamed.
    StreamHead { first: u8, len: u32, head: u32 },
    /// Streaming a large PUBLISH's payload: `at` bytes of it handed out so far.
    StreamBody { first: u8, len: u32, head: u32, at: u32 },
}

/// Splits the broker's byte stream into packets.
pub struct Decoder<const N: usize> {
    buf: [u8; N],
    filled: usize,
    stage: Stage,
    /// Stream PUBLISH packets over `N` bytes piece by piece instead of skipping them.
    pub stream_large: bool,
}

impl<const N: usize> Default for Decoder<N> {
    fn default() -> Self {
        Decoder { buf: [0; N], filled: 0, stage: Stage::Type, stream_large: false }
    }
}

impl<const N: usize> Decoder<N> {
    /// Forgets a partial packet (a new connection).
    pub fn reset(&mut self) {
        self.filled = 0;
        self.stage = Stage::Type;
    }

    /// Consumes bytes from `input` until one packet is complete, then decodes it. Returns how
    /// many bytes were used and the packet, if one completed. Call again with the rest.
    pub fn feed<'s>(&'s mut self, input: &'s [u8]) -> (usize, Option<Result<Incoming<'s>, ProtocolError>>) {
        let mut used = 0;
        while used < input.len() {
            let b = input[used];
            match self.stage {
                Stage::Type => {
                    used += 1;
                    self.stage = Stage::Length { first: b, value: 0, bytes: 0 };
                }
                Stage::Length { first, value, bytes } => {
                    used += 1;
                    if bytes == 4 {
                        self.reset();
                        return (used, Some(Err(ProtocolError::RemainingLength)));
                    }
                    let value = value | (((b & 0x7F) as u32) << (7 * bytes));
                    if b & 0x80 != 0 {
                        if bytes == 3 {
                            self.reset();
                            return (used, Some(Err(ProtocolError::RemainingLength)));
                        }
                        self.stage = Stage::Length { first, value, bytes: bytes + 1 };
                        continue;
                    }
                    self.filled = 0;
                    self.stage = if value as usize > N && self.stream_large && first >> 4 == kind::PUBLISH {
                        Stage::StreamHead { first, len: value, head: 2 }
                    } else if value as usize > N {
                        Stage::Skip { first, len: value, left: value }
                    } else {
                        Stage::Body { first, len: value }
                    };
                    if value == 0 {
                        return (used, Some(self.finish()));
                    }
                }
                Stage::Body { len, .. } => {
                    let take = (len as usize - self.filled).min(input.len() - used);
                    self.buf[self.filled..self.filled + take].copy_from_slice(&input[used..used + take]);
                    self.filled += take;
                    used += take;
                    if self.filled == len as usize {
                        return (used, Some(self.finish()));
                    }
                }
                Stage::StreamHead { first, len, head } => {
                    let take = (head as usize - self.filled).min(input.len() - used);
                    self.buf[self.filled..self.filled + take].copy_from_slice(&input[used..used + take]);
                    self.filled += take;
                    used += take;
                    if self.filled < head as usize {
                        continue;
                    }
                    if head == 2 {
                        // The topic's length is in: the head is the topic and, at QoS 1 and 2,
                        // the packet id.
                        let topic_len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as u32;
                        let id_len = if (first >> 1) & 3 == 0 { 0 } else { 2 };
                        let head = 2 + topic_len + id_len;
                        // An empty topic is no topic (§4.7.3), and would leave the head at the
                        // two bytes already in: this stage would begin again for ever.
                        if topic_len == 0 || head as usize > N || head > len {
                            self.reset();
                            return (used, Some(Err(ProtocolError::Topic)));
                        }
                        self.stage = Stage::StreamHead { first, len, head };
                        continue;
                    }
                    // (The payload is not empty: the head fits the buffer, the body does not.)
                    self.stage = Stage::StreamBody { first, len, head, at: 0 };
                }
                Stage::StreamBody { first, len, head, at } => {
                    let take = ((len - head - at) as usize).min(input.len() - used);
                    let piece = &input[used..used + take];
                    used += take;
                    self.stage = Stage::StreamBody { first, len, head, at: at + take as u32 };
                    return (used, Some(self.piece(piece)));
                }
                Stage::Skip { first, len, left } => {
                    let take = (left as usize).min(input.len() - used);
                    used += take;
                    let left = left - take as u32;
                    if left == 0 {
                        self.stage = Stage::Type;
                        return (used, Some(Ok(Incoming::Oversized { kind: first >> 4, len })));
                    }
                    self.stage = Stage::Skip { first, len, left };
                }
            }
        }
        (used, None)
    }

    /// The piece just taken of a streamed PUBLISH (the stage holds the count after it).
    fn piece<'s>(&'s mut self, piece: &'s [u8]) -> Result<Incoming<'s>, ProtocolError> {
        let Stage::StreamBody { first, len, head, at } = self.stage else { return Err(ProtocolError::Topic) };
        if head + at == len {
            self.stage = Stage::Type;
        }
        let flags = first & 0x0F;
        let qos = match (flags >> 1) & 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return Err(ProtocolError::QoS),
        };
        let topic_len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
        let topic = core::str::from_utf8(&self.buf[2..2 + topic_len]).map_err(|_| ProtocolError::Topic)?;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(ProtocolError::Topic);
        }
        let id = (qos != QoS::AtMostOnce)
            .then(|| u16::from_be_bytes([self.buf[2 + topic_len], self.buf[3 + topic_len]]));
        let offset = at - piece.len() as u32;
        Ok(Incoming::PublishPiece {
            topic,
            qos,
            retain: flags & 1 != 0,
            dup: flags & 8 != 0,
            id,
            offset,
            total: len - head,
            piece,
        })
    }

    fn finish(&mut self) -> Result<Incoming<'_>, ProtocolError> {
        // Only called with a whole body in the buffer.
        let (first, len) = match self.stage {
            Stage::Body { first, len } => (first, len as usize),
            _ => (0, 0),
        };
        self.stage = Stage::Type;
        decode(first, &self.buf[..len])
    }
}

fn id_only(kind: u8, flags: u8, want_flags: u8, body: &[u8]) -> Result<u16, ProtocolError> {
    if flags != want_flags {
        return Err(ProtocolError::Flags { kind, flags });
    }
    match body {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(ProtocolError::Length { kind, len: body.len() as u32 }),
    }
}

/// Decodes one packet from a broker: its fixed header's first byte and its body.
pub fn decode(first: u8, body: &[u8]) -> Result<Incoming<'_>, ProtocolError> {
    let (k, flags) = (first >> 4, first & 0x0F);
    let len = body.len() as u32;
    match k {
        kind::CONNACK => {
            if flags != 0 {
                return Err(ProtocolError::Flags { kind: k, flags });
            }
            match body {
                [ack, code] if *ack <= 1 && *code <= 5 => {
                    Ok(Incoming::ConnAck { session_present: *ack == 1, code: *code })
                }
                [_, _] => Err(ProtocolError::Connack),
                _ => Err(ProtocolError::Length { kind: k, len }),
            }
        }
        kind::PUBLISH => {
            let qos = match (flags >> 1) & 3 {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                2 => QoS::ExactlyOnce,
                _ => return Err(ProtocolError::QoS),
            };
            if body.len() < 2 {
                return Err(ProtocolError::Length { kind: k, len });
            }
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let rest = &body[2..];
            if rest.len() < topic_len {
                return Err(ProtocolError::Topic);
            }
            let topic = core::str::from_utf8(&rest[..topic_len]).map_err(|_| ProtocolError::Topic)?;
            if topic.is_empty() || topic.contains(['+', '#', '\0']) {
                return Err(ProtocolError::Topic);
            }
            let rest = &rest[topic_len..];
            let (id, payload) = if qos == QoS::AtMostOnce {
                (None, rest)
            } else {
                match rest {
                    [a, b, payload @ ..] => (Some(u16::from_be_bytes([*a, *b])), payload),
                    _ => return Err(ProtocolError::Length { kind: k, len }),
                }
            };
            Ok(Incoming::Publish { topic, payload, qos, retain: flags & 1 != 0, dup: flags & 8 != 0, id })
        }
        kind::PUBACK => id_only(k, flags, 0, body).map(|id| Incoming::PubAck { id }),
        kind::PUBREC => id_only(k, flags, 0, body).map(|id| Incoming::PubRec { id }),
        kind::PUBREL => id_only(k, flags, 2, body).map(|id| Incoming::PubRel { id }),
        kind::PUBCOMP => id_only(k, flags, 0, body).map(|id| Incoming::PubComp { id }),
        kind::UNSUBACK => id_only(k, flags, 0, body).map(|id| Incoming::UnsubAck { id }),
        kind::SUBACK => {
            if flags != 0 {
                return Err(ProtocolError::Flags { kind: k, flags });
            }
            match body {
                [a, b, codes @ ..] if !codes.is_empty() => {
                    Ok(Incoming::SubAck { id: u16::from_be_bytes([*a, *b]), codes })
                }
                _ => Err(ProtocolError::Length { kind: k, len }),
            }
        }
        kind::PINGRESP if flags != 0 => Err(ProtocolError::Flags { kind: k, flags }),
        kind::PINGRESP if !body.is_empty() => Err(ProtocolError::Length { kind: k, len }),
        kind::PINGRESP => Ok(Incoming::PingResp),
        other => Err(ProtocolError::UnexpectedType(other)),
    }
}
