//! MQTT 3.1.1 as a broker reads and writes it (OASIS standard, §2–3): the packets clients send,
//! parsed from whole frames, and the packets a broker sends, encoded. Written apart from the
//! device's client in ota-core on purpose: each checks the other.

/// The largest packet the broker takes (Homie sends whole images in one PUBLISH).
pub const MAX_PACKET: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("remaining length longer than 4 bytes")]
    Length,
    #[error("packet of {0} bytes over the broker's {MAX_PACKET}")]
    TooLong(usize),
    #[error("packet type {0:#04x} is not sent by clients")]
    Type(u8),
    #[error("reserved flags {flags:#x} wrong for packet type {kind}")]
    Flags { kind: u8, flags: u8 },
    #[error("packet ends inside a field")]
    Short,
    #[error("string is not UTF-8")]
    Utf8,
    #[error("QoS 3")]
    Qos,
    #[error("CONNECT: {0}")]
    Connect(&'static str),
    #[error("SUBSCRIBE without topic filters")]
    EmptySubscribe,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub protocol_level: u8,
    pub clean_session: bool,
    pub keep_alive_s: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Present when `qos` > 0.
    pub packet_id: Option<u16>,
}

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientPacket {
    Connect(Connect),
    Publish(Publish),
    PubAck(u16),
    Subscribe { packet_id: u16, filters: Vec<(String, u8)> },
    Unsubscribe { packet_id: u16, filters: Vec<String> },
    PingReq,
    Disconnect,
}

/// A whole frame at the start of `buf`: its first byte, its body's range. `Ok(None)`: more bytes
/// are needed.
pub fn frame(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>)>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            if len > MAX_PACKET {
                return Err(CodecError::TooLong(len));
            }
            let start = 2 + i;
            return Ok((buf.len() >= start + len).then_some((buf[0], start..start + len)));
        }
    }
    Err(CodecError::Length)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, CodecError> {
        std::str::from_utf8(self.bytes()?).map(str::to_string).map_err(|_| CodecError::Utf8)
    }
}

/// Parses one frame's first byte and body.
pub fn parse(first: u8, body: &[u8]) -> Result<ClientPacket, CodecError> {
    let (kind, flags) = (first >> 4, first & 0x0F);
    let fixed_flags = |want: u8| if flags == want { Ok(()) } else { Err(CodecError::Flags { kind, flags }) };
    let mut r = Reader(body);
    Ok(match kind {
        1 => {
            fixed_flags(0)?;
            ClientPacket::Connect(connect(&mut r)?)
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(CodecError::Qos);
            }
            let topic = r.string()?;
            let packet_id = if qos > 0 { Some(r.u16()?) } else { None };
            ClientPacket::Publish(Publish {
                topic,
                payload: r.0.to_vec(),
                qos,
                retain: flags & 1 == 1,
                dup: flags & 8 == 8,
                packet_id,
            })
        }
        4 => {
            fixed_flags(0)?;
            ClientPacket::PubAck(r.u16()?)
        }
        8 => {
            fixed_flags(2)?;
            let packet_id = r.u16()?;
            let mut filters = Vec::new();
            while !r.0.is_empty() {
                let f = r.string()?;
                let q = r.u8()?;
                if q > 2 {
                    return Err(CodecError::Qos);
                }
                filters.push((f, q));
            }
            if filters.is_empty() {
                return Err(CodecError::EmptySubscribe);
            }
            ClientPacket::Subscribe { packet_id, filters }
        }
        10 => {
            fixed_flags(2)?;
            let packet_id = r.u16()?;
            let mut filters = Vec::new();
            while !r.0.is_empty() {
                filters.push(r.string()?);
            }
            ClientPacket::Unsubscribe { packet_id, filters }
        }
        12 => {
            fixed_flags(0)?;
            ClientPacket::PingReq
        }
        14 => {
            fixed_flags(0)?;
            ClientPacket::Disconnect
        }
        _ => return Err(CodecError::Type(first)),
    })
}

fn connect(r: &mut Reader<'_>) -> Result<Connect, CodecError> {
    let name = r.bytes()?;
    if name != b"MQTT" {
        return Err(CodecError::Connect("protocol name is not MQTT"));
    }
    let protocol_level = r.u8()?;
    let flags = r.u8()?;
    if flags & 1 != 0 {
        return Err(CodecError::Connect("reserved flag set"));
    }
    let keep_alive_s = r.u16()?;
    let client_id = r.string()?;
    let will = if flags & 0x04 != 0 {
        let qos = (flags >> 3) & 3;
        if qos == 3 {
            return Err(CodecError::Qos);
        }
        Some(Will { topic: r.string()?, payload: r.bytes()?.to_vec(), qos, retain: flags & 0x20 != 0 })
    } else {
        if flags & 0x38 != 0 {
            return Err(CodecError::Connect("will QoS or retain without a will"));
        }
        None
    };
    let username = if flags & 0x80 != 0 { Some(r.string()?) } else { None };
    let password = if flags & 0x40 != 0 { Some(r.bytes()?.to_vec()) } else { None };
    Ok(Connect {
        protocol_level,
        clean_session: flags & 0x02 != 0,
        keep_alive_s,
        client_id,
        will,
        username,
        password,
    })
}

fn with_length(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

pub fn connack(session_present: bool, code: u8) -> Vec<u8> {
    vec![0x20, 2, session_present as u8, code]
}

pub fn suback(packet_id: u16, granted: &[u8]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend_from_slice(granted);
    with_length(0x90, &body)
}

pub fn unsuback(packet_id: u16) -> Vec<u8> {
    let [a, b] = packet_id.to_be_bytes();
    vec![0xB0, 2, a, b]
}

pub fn puback(packet_id: u16) -> Vec<u8> {
    let [a, b] = packet_id.to_be_bytes();
    vec![0x40, 2, a, b]
}

pub fn pingresp() -> Vec<u8> {
    vec![0xD0, 0]
}

/// A PUBLISH to a subscriber; `packet_id` only at QoS 1.
pub fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool, packet_id: u16) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    with_length(0x30 | (qos << 1) | retain as u8, &body)
}

/// Whether a topic filter is valid (§4.7.1): `#` last and alone in its level, `+` alone.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['#', '+']),
    })
}

/// Whether `topic` matches `filter` (§4.7): the device's own rule, one truth for both sides.
pub use ota_core::proto::mqtt::packet::topic_matches as matches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_wait_for_their_last_byte_and_refuse_bad_lengths() {
        assert_eq!(frame(&[0xC0]), Ok(None));
        assert_eq!(frame(&[0xC0, 0]), Ok(Some((0xC0, 2..2))));
        assert_eq!(frame(&[0x30, 0x80]), Ok(None));
        assert_eq!(frame(&[0x30, 0x03, 0, 1]), Ok(None));
        assert_eq!(frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]), Err(CodecError::Length));
        assert!(matches!(frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]), Err(CodecError::TooLong(_))));
    }

    #[test]
    fn client_packets_parse_and_bad_ones_say_why() {
        // CONNECT with a will, as the device sends it.
        let body = [
            &[0, 4][..],
            b"MQTT",
            &[4, 0x04 | 0x08 | 0x20 | 0x02, 0, 60, 0, 2],
            b"id",
            &[0, 1],
            b"s",
            &[0, 3],
            b"off",
        ]
        .concat();
        let ClientPacket::Connect(c) = parse(0x10, &body).unwrap() else { panic!() };
        assert_eq!((c.client_id.as_str(), c.keep_alive_s, c.clean_session), ("id", 60, true));
        assert_eq!(c.will, Some(Will { topic: "s".into(), payload: b"off".to_vec(), qos: 1, retain: true }));
        assert_eq!(parse(0x11, &body), Err(CodecError::Flags { kind: 1, flags: 1 }));
        assert_eq!(parse(0x10, &body[..12]), Err(CodecError::Short));
        assert_eq!(
            parse(0x82, &[0, 7, 0, 3, b'a', b'/', b'#', 1]),
            Ok(ClientPacket::Subscribe { packet_id: 7, filters: vec![("a/#".into(), 1)] })
        );
        assert_eq!(parse(0x82, &[0, 7]), Err(CodecError::EmptySubscribe));
        assert_eq!(parse(0x36, &[0, 1, b't']), Err(CodecError::Qos));
        assert_eq!(parse(0x20, &[0, 0]), Err(CodecError::Type(0x20)));
        let p = parse(0x33, &[0, 1, b't', 0, 9, b'x']).unwrap();
        assert_eq!(
            p,
            ClientPacket::Publish(Publish {
                topic: "t".into(),
                payload: b"x".to_vec(),
                qos: 1,
                retain: true,
                dup: false,
                packet_id: Some(9)
            })
        );
    }

    #[test]
    fn wildcards_match_as_the_standard_says() {
        assert!(matches("/switch/cmd/root", "/switch/cmd/root"));
        assert!(matches("/switch/+/root", "/switch/cmd/root"));
        assert!(matches("/switch/#", "/switch/cmd/root"));
        assert!(matches("sport/#", "sport"));
        assert!(!matches("/switch/cmd", "/switch/cmd/root"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(valid_filter("a/+/#") && !valid_filter("a/#/b") && !valid_filter("a+") && !valid_filter(""));
        assert_eq!(publish("t", b"p", 0, true, 0), [0x31, 4, 0, 1, b't', b'p']);
        assert_eq!(suback(1, &[1, 0x80]), [0x90, 4, 0, 1, 1, 0x80]);
    }
}
