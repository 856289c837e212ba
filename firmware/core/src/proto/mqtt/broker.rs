//! MQTT 3.1.1 as a broker reads and writes it (OASIS mqtt-v3.1.1, §2–3): the packets a client
//! sends, decoded from whole frames, and the ones a broker sends back, encoded. The device never
//! links this; the harness's broker does, so one codec serves both ends of the wire, and the
//! tests below decode what the device's own encoder ([`super::packet`]) writes.

use super::packet::{Connect, QoS, Sink, Will, kind, put_remaining};
use core::ops::Range;

/// Why bytes from a client are not an MQTT 3.1.1 packet a broker takes. The connection must
/// then be closed (§4.8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// A remaining length longer than four bytes.
    RemainingLength,
    /// A packet over what the broker takes.
    TooLong { len: u32, max: u32 },
    /// A packet type a client never sends (CONNACK, SUBACK, …) or type 0/15: the first byte.
    UnexpectedType(u8),
    /// Fixed-header flags other than the ones §2.2.2 fixes for this type.
    Flags { kind: u8, flags: u8 },
    /// The packet ends inside a field, or a fixed-size packet has bytes over.
    Length { kind: u8 },
    /// A string field that is not UTF-8.
    Utf8,
    /// QoS 3 (a PUBLISH, a will or a subscription).
    QoS,
    /// A CONNECT that breaks §3.1.2: what is wrong.
    Connect(&'static str),
    /// A SUBSCRIBE without a topic filter (§3.8.3).
    EmptySubscribe,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::RemainingLength => f.write_str("remaining length longer than 4 bytes"),
            DecodeError::TooLong { len, max } => write!(f, "packet of {len} bytes over the broker's {max}"),
            DecodeError::UnexpectedType(first) => {
                write!(f, "packet type {first:#04x} is not sent by clients")
            }
            DecodeError::Flags { kind, flags } => {
                write!(f, "reserved flags {flags:#x} wrong for packet type {kind}")
            }
            DecodeError::Length { kind } => write!(f, "packet type {kind} ends inside a field or runs over"),
            DecodeError::Utf8 => f.write_str("string is not UTF-8"),
            DecodeError::QoS => f.write_str("QoS 3"),
            DecodeError::Connect(why) => write!(f, "CONNECT: {why}"),
            DecodeError::EmptySubscribe => f.write_str("SUBSCRIBE without topic filters"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// A packet from a client, borrowing the frame it was decoded from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FromClient<'a> {
    /// `level` is the protocol level (4 for 3.1.1); the broker answers another with code 1.
    Connect {
        level: u8,
        connect: Connect<'a>,
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
    Subscribe {
        id: u16,
        filters: Subscriptions<'a>,
    },
    Unsubscribe {
        id: u16,
        filters: Unsubscriptions<'a>,
    },
    PingReq,
    Disconnect,
}

/// A whole frame at the start of `buf`: its first byte and its body's range; `Ok(None)` until
/// its last byte is in. A frame over `max` bytes of body is an error as soon as its length is
/// known, so a client cannot make the broker buffer without bound.
pub fn frame(buf: &[u8], max: u32) -> Result<Option<(u8, Range<usize>)>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0u32;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        len |= ((b & 0x7F) as u32) << (7 * i);
        if b & 0x80 == 0 {
            if len > max {
                return Err(DecodeError::TooLong { len, max });
            }
            let start = 2 + i;
            let end = start + len as usize;
            return Ok((buf.len() >= end).then_some((first, start..end)));
        }
    }
    Err(DecodeError::RemainingLength)
}

/// The fields of a body, front to back.
#[derive(Clone, Copy)]
struct Fields<'a> {
    rest: &'a [u8],
    kind: u8,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Length { kind: self.kind });
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        core::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::Utf8)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError::Length { kind: self.kind }) }
    }
}

fn qos(bits: u8) -> Result<QoS, DecodeError> {
    match bits {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(DecodeError::QoS),
    }
}

/// Decodes one frame from a client: its first byte and its body.
pub fn decode(first: u8, body: &[u8]) -> Result<FromClient<'_>, DecodeError> {
    let (k, flags) = (first >> 4, first & 0x0F);
    let fixed = |want: u8| if flags == want { Ok(()) } else { Err(DecodeError::Flags { kind: k, flags }) };
    let mut f = Fields { rest: body, kind: k };
    let packet = match k {
        kind::CONNECT => {
            fixed(0)?;
            let (level, connect) = connect(&mut f)?;
            FromClient::Connect { level, connect }
        }
        kind::PUBLISH => {
            let qos = qos((flags >> 1) & 3)?;
            let topic = f.str()?;
            let id = if qos == QoS::AtMostOnce { None } else { Some(f.u16()?) };
            let payload = core::mem::take(&mut f.rest);
            FromClient::Publish { topic, payload, qos, retain: flags & 1 == 1, dup: flags & 8 == 8, id }
        }
        kind::PUBACK => {
            fixed(0)?;
            FromClient::PubAck { id: f.u16()? }
        }
        kind::SUBSCRIBE => {
            fixed(2)?;
            let id = f.u16()?;
            let filters = Subscriptions(Fields { rest: f.rest, kind: k });
            // Checked whole here, so iterating cannot fail.
            let mut check = filters.0.rest;
            if check.is_empty() {
                return Err(DecodeError::EmptySubscribe);
            }
            while !check.is_empty() {
                let mut one = Fields { rest: check, kind: k };
                one.str()?;
                qos(one.u8()?)?;
                check = one.rest;
            }
            return Ok(FromClient::Subscribe { id, filters });
        }
        kind::UNSUBSCRIBE => {
            fixed(2)?;
            let id = f.u16()?;
            let filters = Unsubscriptions(Fields { rest: f.rest, kind: k });
            let mut check = Fields { rest: f.rest, kind: k };
            while !check.rest.is_empty() {
                check.str()?;
            }
            return Ok(FromClient::Unsubscribe { id, filters });
        }
        kind::PINGREQ => {
            fixed(0)?;
            FromClient::PingReq
        }
        kind::DISCONNECT => {
            fixed(0)?;
            FromClient::Disconnect
        }
        _ => return Err(DecodeError::UnexpectedType(first)),
    };
    f.end()?;
    Ok(packet)
}

fn connect<'a>(f: &mut Fields<'a>) -> Result<(u8, Connect<'a>), DecodeError> {
    if f.bytes()? != b"MQTT" {
        return Err(DecodeError::Connect("protocol name is not MQTT"));
    }
    let level = f.u8()?;
    let flags = f.u8()?;
    if flags & 1 != 0 {
        return Err(DecodeError::Connect("reserved flag set"));
    }
    let keep_alive_s = f.u16()?;
    let client_id = f.str()?;
    let will = if flags & 0x04 != 0 {
        let qos = qos((flags >> 3) & 3)?;
        Some(Will { topic: f.str()?, message: f.bytes()?, qos, retain: flags & 0x20 != 0 })
    } else if flags & 0x38 != 0 {
        return Err(DecodeError::Connect("will QoS or retain without a will"));
    } else {
        None
    };
    let username = if flags & 0x80 != 0 { Some(f.str()?) } else { None };
    let password = if flags & 0x40 != 0 { Some(f.bytes()?) } else { None };
    let clean_session = flags & 0x02 != 0;
    Ok((level, Connect { client_id, keep_alive_s, clean_session, will, username, password }))
}

/// A SUBSCRIBE's topic filters and the QoS asked for each (checked when decoded).
#[derive(Clone, Copy)]
pub struct Subscriptions<'a>(Fields<'a>);

impl<'a> Iterator for Subscriptions<'a> {
    type Item = (&'a str, QoS);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.rest.is_empty() {
            return None;
        }
        let filter = self.0.str().ok()?;
        let qos = qos(self.0.u8().ok()?).ok()?;
        Some((filter, qos))
    }
}

/// An UNSUBSCRIBE's topic filters (checked when decoded).
#[derive(Clone, Copy)]
pub struct Unsubscriptions<'a>(Fields<'a>);

impl<'a> Iterator for Unsubscriptions<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.rest.is_empty() {
            return None;
        }
        self.0.str().ok()
    }
}

impl PartialEq for Subscriptions<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.rest == other.0.rest
    }
}

impl Eq for Subscriptions<'_> {}

impl PartialEq for Unsubscriptions<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.rest == other.0.rest
    }
}

impl Eq for Unsubscriptions<'_> {}

impl core::fmt::Debug for Subscriptions<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(*self).finish()
    }
}

impl core::fmt::Debug for Unsubscriptions<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(*self).finish()
    }
}

/// Whether a topic filter is valid (§4.7.1): `#` last and alone in its level, `+` alone in its.
pub fn valid_filter(filter: &str) -> bool {
    let levels = filter.split('/').count();
    !filter.is_empty()
        && filter.split('/').enumerate().all(|(i, level)| match level {
            "#" => i == levels - 1,
            "+" => true,
            other => !other.contains(['#', '+']),
        })
}

/// CONNACK (§3.2): `code` 0 accepts, 1–5 refuse.
pub fn connack<S: Sink + ?Sized>(out: &mut S, session_present: bool, code: u8) {
    out.put(&[kind::CONNACK << 4, 2, session_present as u8, code]);
}

/// SUBACK (§3.9): one return code per filter asked for (a granted QoS, or 0x80).
pub fn suback<S: Sink + ?Sized>(out: &mut S, id: u16, codes: &[u8]) {
    out.put(&[kind::SUBACK << 4]);
    put_remaining(out, 2 + codes.len() as u32);
    out.put(&id.to_be_bytes());
    out.put(codes);
}

pub fn unsuback<S: Sink + ?Sized>(out: &mut S, id: u16) {
    out.put(&[kind::UNSUBACK << 4, 2]);
    out.put(&id.to_be_bytes());
}

pub fn pingresp<S: Sink + ?Sized>(out: &mut S) {
    out.put(&[kind::PINGRESP << 4, 0]);
}

#[cfg(test)]
mod tests {
    use super::super::packet::{self, Connect, QoS, Will};
    use super::*;
    use std::vec::Vec;

    fn one(bytes: &[u8]) -> Result<FromClient<'_>, DecodeError> {
        let (first, body) = frame(bytes, 1 << 20)?.expect("a whole frame");
        assert_eq!(body.end, bytes.len(), "one frame, nothing after it");
        decode(first, &bytes[body])
    }

    #[test]
    fn what_the_device_encodes_decodes_to_what_it_meant() {
        let will = Will { topic: "homie/d/$state", message: b"lost", qos: QoS::AtLeastOnce, retain: true };
        let connect = Connect {
            client_id: "otahil-d",
            keep_alive_s: 15,
            clean_session: true,
            will: Some(will),
            username: Some("u"),
            password: Some(b"p\0w"),
        };
        let mut out = Vec::new();
        connect.encode(&mut out).unwrap();
        let Ok(FromClient::Connect { level: 4, connect: back }) = one(&out) else {
            panic!("{:?}", one(&out))
        };
        assert_eq!(
            (back.client_id, back.keep_alive_s, back.clean_session, back.username, back.password),
            ("otahil-d", 15, true, Some("u"), Some(&b"p\0w"[..]))
        );
        let w = back.will.unwrap();
        assert_eq!((w.topic, w.message, w.qos, w.retain), (will.topic, will.message, will.qos, true));

        let mut out = Vec::new();
        packet::publish(&mut out, "a/b", &[7; 300], QoS::AtLeastOnce, false, 9).unwrap();
        assert_eq!(
            one(&out),
            Ok(FromClient::Publish {
                topic: "a/b",
                payload: &[7; 300],
                qos: QoS::AtLeastOnce,
                retain: false,
                dup: false,
                id: Some(9),
            })
        );
        let mut out = Vec::new();
        packet::subscribe(&mut out, 3, "homie/d/#", QoS::AtLeastOnce).unwrap();
        let Ok(FromClient::Subscribe { id: 3, filters }) = one(&out) else { panic!() };
        assert_eq!(filters.collect::<Vec<_>>(), [("homie/d/#", QoS::AtLeastOnce)]);
        for (encode, want) in [
            (packet::puback as fn(&mut Vec<u8>, u16), FromClient::PubAck { id: 5 }),
            (|o: &mut Vec<u8>, _| packet::pingreq(o), FromClient::PingReq),
            (|o: &mut Vec<u8>, _| packet::disconnect(o), FromClient::Disconnect),
        ] {
            let mut out = Vec::new();
            encode(&mut out, 5);
            assert_eq!(one(&out), Ok(want));
        }
    }

    #[test]
    fn what_the_broker_encodes_the_device_decodes() {
        let mut out = Vec::new();
        connack(&mut out, false, 3);
        assert_eq!(
            packet::decode(out[0], &out[2..]),
            Ok(packet::Incoming::ConnAck { session_present: false, code: 3 })
        );
        let mut out = Vec::new();
        let codes = [1u8; 200];
        suback(&mut out, 7, &codes);
        let (first, body) = frame(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(packet::decode(first, &out[body]), Ok(packet::Incoming::SubAck { id: 7, codes: &codes }));
        let mut out = Vec::new();
        unsuback(&mut out, 8);
        pingresp(&mut out);
        assert_eq!(packet::decode(out[0], &out[2..4]), Ok(packet::Incoming::UnsubAck { id: 8 }));
        assert_eq!(packet::decode(out[4], &out[6..]), Ok(packet::Incoming::PingResp));
    }

    #[test]
    fn frames_wait_for_their_last_byte_and_refuse_bad_or_large_lengths() {
        assert_eq!(frame(&[], 10), Ok(None));
        assert_eq!(frame(&[0xC0], 10), Ok(None));
        assert_eq!(frame(&[0xC0, 0], 10), Ok(Some((0xC0, 2..2))));
        assert_eq!(frame(&[0x30, 0x80], 10), Ok(None));
        assert_eq!(frame(&[0x30, 0x03, 0, 1], 10), Ok(None));
        assert_eq!(frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], u32::MAX), Err(DecodeError::RemainingLength));
        assert_eq!(frame(&[0x30, 11], 10), Err(DecodeError::TooLong { len: 11, max: 10 }));
    }

    #[test]
    fn bad_client_packets_say_why() {
        let connect = |flags: u8| [&[0, 4][..], b"MQTT", &[4, flags, 0, 60, 0, 2], b"id"].concat();
        assert_eq!(decode(0x10, &connect(0x01)), Err(DecodeError::Connect("reserved flag set")));
        assert_eq!(
            decode(0x10, &connect(0x20)),
            Err(DecodeError::Connect("will QoS or retain without a will"))
        );
        assert_eq!(decode(0x10, &connect(0x04 | 0x18)), Err(DecodeError::QoS));
        assert_eq!(
            decode(0x10, &connect(0x04)),
            Err(DecodeError::Length { kind: 1 }),
            "a will flag, no will"
        );
        assert_eq!(decode(0x11, &connect(0x02)), Err(DecodeError::Flags { kind: 1, flags: 1 }));
        let mut other = connect(0x02);
        other[2] = b'X';
        assert_eq!(decode(0x10, &other), Err(DecodeError::Connect("protocol name is not MQTT")));
        let Ok(FromClient::Connect { level: 3, .. }) =
            decode(0x10, &[&connect(0x02)[..6], &[3], &connect(0x02)[7..]].concat())
        else {
            panic!("another level decodes: the broker answers it")
        };
        assert_eq!(decode(0x82, &[0, 7]), Err(DecodeError::EmptySubscribe));
        assert_eq!(decode(0x82, &[0, 7, 0, 1, b'a', 3]), Err(DecodeError::QoS));
        assert_eq!(decode(0x82, &[0, 7, 0, 2, b'a']), Err(DecodeError::Length { kind: 8 }));
        assert_eq!(decode(0x82, &[0, 7, 0, 1, 0xFF, 0]), Err(DecodeError::Utf8));
        assert_eq!(decode(0x80, &[0, 7, 0, 1, b'a', 0]), Err(DecodeError::Flags { kind: 8, flags: 0 }));
        assert_eq!(decode(0xA2, &[0, 7, 0, 3, b'a']), Err(DecodeError::Length { kind: 10 }));
        let Ok(FromClient::Unsubscribe { id: 7, filters }) = decode(0xA2, &[0, 7, 0, 1, b'a', 0, 1, b'b'])
        else {
            panic!()
        };
        assert_eq!(filters.collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(decode(0x36, &[0, 1, b't']), Err(DecodeError::QoS));
        assert_eq!(
            decode(0x32, &[0, 1, b't', 0]),
            Err(DecodeError::Length { kind: 3 }),
            "no room for the id"
        );
        assert_eq!(decode(0x20, &[0, 0]), Err(DecodeError::UnexpectedType(0x20)));
        assert_eq!(decode(0xC0, &[0]), Err(DecodeError::Length { kind: 12 }));
        assert_eq!(decode(0x40, &[0, 1, 2]), Err(DecodeError::Length { kind: 4 }));
    }

    #[test]
    fn filters_are_valid_as_the_standard_says() {
        for ok in ["a", "a/+/#", "#", "+", "/", "+/+", "$SYS/#"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "a#", "#/a", "a/b#"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }
}
