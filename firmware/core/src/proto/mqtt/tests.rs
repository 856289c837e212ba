use super::client::{self, BACKOFF_MAX_MS, BACKOFF_MIN_MS, Client, Config, Event, Lost, Output};
use super::command::{self, CommandError, MAX_URL};
use super::packet::{self, Connect, Decoder, Incoming, ProtocolError, QoS, Sink, Will, topic_matches};
use core::net::SocketAddr;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[test]
fn connect_is_byte_exact() {
    // CONNECT with a will, user and password, checked against §3.1 field by field.
    let mut out = Vec::new();
    Connect {
        client_id: "dev1",
        keep_alive_s: 60,
        clean_session: true,
        will: Some(Will { topic: "s", message: b"gone", qos: QoS::AtLeastOnce, retain: true }),
        username: Some("u"),
        password: Some(b"pw"),
    }
    .encode(&mut out)
    .unwrap();
    let body: Vec<u8> = [
        &[0, 4][..],
        b"MQTT",
        &[4, 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02, 0, 60],
        &[0, 4],
        b"dev1",
        &[0, 1],
        b"s",
        &[0, 4],
        b"gone",
        &[0, 1],
        b"u",
        &[0, 2],
        b"pw",
    ]
    .concat();
    assert_eq!(out[0], 0x10);
    assert_eq!(out[1] as usize, body.len());
    assert_eq!(&out[2..], &body[..]);
}

#[test]
fn publish_subscribe_and_small_packets() {
    let mut out = Vec::new();
    packet::publish(&mut out, "a/b", b"hi", QoS::AtLeastOnce, true, 0x1234).unwrap();
    assert_eq!(out, [0x33, 9, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'h', b'i']);
    out.clear();
    packet::publish(&mut out, "t", &[7; 200], QoS::AtMostOnce, false, 0).unwrap();
    // 3 + 200 = 203 = 0xCB → remaining length 0xCB 0x01.
    assert_eq!(&out[..5], &[0x30, 0xCB, 0x01, 0, 1]);
    out.clear();
    packet::subscribe(&mut out, 1, "/switch/cmd/root", QoS::AtLeastOnce).unwrap();
    assert_eq!(&out[..4], &[0x82, 21, 0, 1]);
    assert_eq!(out.last(), Some(&1));
    out.clear();
    packet::puback(&mut out, 7);
    packet::pingreq(&mut out);
    packet::disconnect(&mut out);
    assert_eq!(out, [0x40, 2, 0, 7, 0xC0, 0, 0xE0, 0]);
    let long = "x".repeat(70_000);
    assert_eq!(packet::subscribe(&mut Vec::new(), 1, &long, QoS::AtMostOnce), Err(packet::TooLong));
}

/// Feeds `bytes` one at a time and collects what decoded (owned, for comparing).
fn decode_all<const N: usize>(d: &mut Decoder<N>, bytes: &[u8]) -> Vec<String> {
    let mut seen = Vec::new();
    for b in bytes {
        let (used, p) = d.feed(core::slice::from_ref(b));
        assert_eq!(used, 1);
        if let Some(p) = p {
            seen.push(format!("{p:?}"));
        }
    }
    seen
}

#[test]
fn the_decoder_splits_a_stream_fed_byte_by_byte() {
    let mut stream = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 1, 0xD0, 0];
    packet::publish(&mut stream, "/switch/cmd/root", b"{}", QoS::AtLeastOnce, false, 9).unwrap();
    let mut d = Decoder::<64>::default();
    let seen = decode_all(&mut d, &stream);
    assert_eq!(
        seen,
        [
            format!("{:?}", Ok::<_, ProtocolError>(Incoming::ConnAck { session_present: false, code: 0 })),
            format!("{:?}", Ok::<_, ProtocolError>(Incoming::SubAck { id: 1, codes: &[1] })),
            format!("{:?}", Ok::<_, ProtocolError>(Incoming::PingResp)),
            format!(
                "{:?}",
                Ok::<_, ProtocolError>(Incoming::Publish {
                    topic: "/switch/cmd/root",
                    payload: b"{}",
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    dup: false,
                    id: Some(9)
                })
            ),
        ]
    );
}

#[test]
fn oversized_packets_are_skipped_whole_and_the_stream_goes_on() {
    let mut stream = Vec::new();
    packet::publish(&mut stream, "t", &[0xAA; 300], QoS::AtMostOnce, false, 0).unwrap();
    stream.extend_from_slice(&[0xD0, 0]);
    let mut d = Decoder::<64>::default();
    let (used, p) = d.feed(&stream);
    assert_eq!(format!("{p:?}"), "Some(Ok(Oversized { kind: 3, len: 303 }))");
    let (_, p) = d.feed(&stream[used..]);
    assert_eq!(p, Some(Ok(Incoming::PingResp)));
}

/// A large PUBLISH streamed: every split of the stream gives the same payload, in order, with
/// the topic and id on every piece, and the stream goes on after it.
#[test]
fn large_publishes_stream_piece_by_piece_whatever_the_splits() {
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let mut stream = Vec::new();
    packet::publish(&mut stream, "homie/d/x", &payload, QoS::AtLeastOnce, true, 0x1234).unwrap();
    packet::publish(&mut stream, "homie/d/e", b"", QoS::AtMostOnce, false, 0).unwrap();
    stream.extend_from_slice(&[0xD0, 0]);
    for split in [1, 2, 3, 13, 64, 999, stream.len()] {
        let mut d = Decoder::<16>::default();
        d.stream_large = true;
        let (mut got, mut rest, mut pieces, mut after) = (Vec::new(), &stream[..], 0, Vec::new());
        while !rest.is_empty() {
            let chunk = &rest[..split.min(rest.len())];
            let mut at = 0;
            while at < chunk.len() {
                let (used, p) = d.feed(&chunk[at..]);
                at += used;
                match p {
                    Some(Ok(Incoming::PublishPiece {
                        topic: "homie/d/x",
                        id,
                        retain,
                        offset,
                        total,
                        piece,
                        ..
                    })) => {
                        assert_eq!(
                            (id, retain, total, offset as usize),
                            (Some(0x1234), true, 1000, got.len())
                        );
                        got.extend_from_slice(piece);
                        pieces += 1;
                    }
                    Some(other) => after.push(format!("{other:?}")),
                    None => {}
                }
            }
            rest = &rest[chunk.len()..];
        }
        assert_eq!(got, payload, "split {split}");
        assert!((1..=1000).contains(&pieces), "split {split}: {pieces} pieces");
        // A message within the capacity comes whole, as before.
        assert_eq!(after.len(), 2, "split {split}: {after:?}");
        assert!(after[0].contains("Publish {") && after[0].contains("homie/d/e"), "{after:?}");
        assert_eq!(after[1], "Ok(PingResp)");
    }
    // Not asked to stream: skipped whole, as before.
    let mut d = Decoder::<16>::default();
    let (_, p) = d.feed(&stream);
    assert!(matches!(p, Some(Ok(Incoming::Oversized { kind: 3, .. }))), "{p:?}");
    // A topic longer than the decoder can hold is an error, not a panic.
    let mut long = Vec::new();
    packet::publish(&mut long, &"t".repeat(20), &[1; 30], QoS::AtMostOnce, false, 0).unwrap();
    let mut d = Decoder::<16>::default();
    d.stream_large = true;
    let (_, p) = d.feed(&long);
    assert_eq!(p, Some(Err(ProtocolError::Topic)));
    // A large PUBLISH with an empty topic (found by fuzzing: the decoder began its head again
    // for ever, so a broker could hang the device) is an error once its first four bytes are in.
    let mut empty = vec![0x30, 20, 0, 0];
    empty.extend_from_slice(&[7; 18]);
    empty.extend_from_slice(&[0xD0, 0]);
    let mut d = Decoder::<16>::default();
    d.stream_large = true;
    let (used, p) = d.feed(&empty);
    assert_eq!((used, p), (4, Some(Err(ProtocolError::Topic))));
}

#[test]
fn malformed_packets_are_protocol_errors() {
    let cases: [(&[u8], ProtocolError); 10] = [
        (&[0x20, 2, 0, 6], ProtocolError::Connack),
        (&[0x21, 2, 0, 0], ProtocolError::Flags { kind: 2, flags: 1 }),
        (&[0x20, 3, 0, 0, 0], ProtocolError::Length { kind: 2, len: 3 }),
        (&[0x36, 4, 0, 1, b't', 0], ProtocolError::QoS),
        (&[0x30, 3, 0, 5, b't'], ProtocolError::Topic),
        (&[0x30, 4, 0, 1, b'#', b'x'], ProtocolError::Topic),
        (&[0x30, 4, 0, 2, 0xFF, 0xFE], ProtocolError::Topic),
        (&[0x10, 0], ProtocolError::UnexpectedType(1)),
        (&[0xD0, 1, 0], ProtocolError::Length { kind: 13, len: 1 }),
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], ProtocolError::RemainingLength),
    ];
    for (bytes, want) in cases {
        let mut d = Decoder::<64>::default();
        let (_, p) = d.feed(bytes);
        assert_eq!(format!("{p:?}"), format!("{:?}", Some(Err::<Incoming<'_>, _>(want))), "{bytes:x?}");
    }
}

#[test]
fn topic_filters_match_as_the_spec_says() {
    assert!(topic_matches("/switch/cmd/root", "/switch/cmd/root"));
    assert!(topic_matches("/switch/cmd/+", "/switch/cmd/root"));
    assert!(topic_matches("/switch/#", "/switch/cmd/root"));
    assert!(topic_matches("sport/#", "sport"));
    assert!(!topic_matches("/switch/cmd", "/switch/cmd/root"));
    assert!(!topic_matches("+/x", "$SYS/x"));
    assert!(!topic_matches("a/+", "a/b/c"));
}

#[derive(Default)]
struct Rec {
    sent: Vec<u8>,
    log: Vec<String>,
}

impl Output for Rec {
    fn connect(&mut self, to: SocketAddr) {
        self.log.push(format!("connect {to}"));
    }
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.log.push("close".into());
    }
    fn event(&mut self, event: Event<'_>) {
        self.log.push(match event {
            Event::Message { topic, payload, .. } => {
                format!("message {topic} {}", String::from_utf8_lossy(payload))
            }
            e => format!("{e:?}"),
        });
    }
}

impl Rec {
    fn take(&mut self) -> (Vec<u8>, Vec<String>) {
        (core::mem::take(&mut self.sent), core::mem::take(&mut self.log))
    }
}

fn cfg() -> Config<'static> {
    Config {
        broker: "127.0.0.1:1883".parse().unwrap(),
        client_id: "otahil-dev",
        username: None,
        password: None,
        keep_alive_s: 10,
        command_topic: "/switch/cmd/root",
        will: Some(Will {
            topic: "/switch/state/root",
            message: b"{\"status\":\"disconnected\"}",
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        stream_large: false,
    }
}

/// A client brought to Ready at t=0.
fn ready() -> (Client, Rec) {
    let (c, mut out) = (cfg(), Rec::default());
    let mut client = <Client>::default();
    client.start(&c, &mut out);
    client.connected(&c, 0, &mut out);
    let (sent, log) = out.take();
    assert_eq!(log, ["Connecting { attempt: 1 }", "connect 127.0.0.1:1883"]);
    assert_eq!(sent[0], 0x10, "CONNECT first");
    client.data(&c, &[0x20, 2, 0, 0], 0, &mut out);
    let (sent, _) = out.take();
    assert_eq!(&sent[..4], &[0x82, 21, 0, 1], "SUBSCRIBE after CONNACK");
    client.data(&c, &[0x90, 3, 0, 1, 1], 0, &mut out);
    assert_eq!(out.take().1, ["Ready"]);
    assert!(client.is_ready());
    (client, out)
}

#[test]
fn a_session_connects_subscribes_takes_commands_and_acks_them() {
    let c = cfg();
    let (mut client, mut out) = ready();
    let mut msg = Vec::new();
    packet::publish(&mut msg, "/switch/cmd/root", b"{\"type\":\"x\"}", QoS::AtLeastOnce, false, 42).unwrap();
    // Split across reads at an awkward place.
    client.data(&c, &msg[..5], 100, &mut out);
    client.data(&c, &msg[5..], 100, &mut out);
    let (sent, log) = out.take();
    assert_eq!(log, ["message /switch/cmd/root {\"type\":\"x\"}"]);
    assert_eq!(sent, [0x40, 2, 0, 42], "PUBACK for QoS 1");
    let id = client.publish("/switch/state/root", b"{}", QoS::AtLeastOnce, false, 200, &mut out).unwrap();
    assert_eq!(id, Some(2));
    assert_eq!(client.unacked(), 1);
    out.take();
    client.data(&c, &[0x40, 2, 0, 2], 250, &mut out);
    assert_eq!(out.take().1, ["Published { id: 2 }"]);
    assert_eq!(client.unacked(), 0);
}

#[test]
fn keep_alive_pings_and_a_silent_broker_is_dropped_then_retried_with_backoff() {
    let c = cfg();
    let (mut client, mut out) = ready();
    assert_eq!(client.deadline(&c), Some(10_000));
    client.poll(&c, 9_999, &mut out);
    assert!(out.take().0.is_empty());
    client.poll(&c, 10_000, &mut out);
    assert_eq!(out.take().0, [0xC0, 0], "PINGREQ after the keep-alive");
    client.data(&c, &[0xD0, 0], 10_100, &mut out);
    client.poll(&c, 20_000, &mut out);
    assert_eq!(out.take().0, [0xC0, 0]);
    // No PINGRESP this time.
    client.poll(&c, 30_000, &mut out);
    assert_eq!(out.take().1, ["close", "Lost { why: PingTimeout, retry_in_ms: 1000 }"]);
    client.poll(&c, 30_999, &mut out);
    assert!(out.take().1.is_empty());
    client.poll(&c, 31_000, &mut out);
    assert_eq!(out.take().1, ["Connecting { attempt: 2 }", "connect 127.0.0.1:1883"]);
    // Failures double the wait up to the cap; a session that gets ready resets it.
    let mut now = 31_000;
    let mut waits = Vec::new();
    for _ in 0..8 {
        client.connect_failed(now, &mut out);
        let d = client.deadline(&c).unwrap();
        waits.push(d - now);
        now = d;
        client.poll(&c, now, &mut out);
    }
    assert_eq!(
        waits,
        [2_000, 4_000, 8_000, 16_000, BACKOFF_MAX_MS, BACKOFF_MAX_MS, BACKOFF_MAX_MS, BACKOFF_MAX_MS]
    );
    client.connected(&c, now, &mut out);
    client.data(&c, &[0x20, 2, 0, 0, 0x90, 3, 0, 2, 1], now, &mut out);
    assert!(client.is_ready());
    client.closed(now, &mut out);
    assert_eq!(
        out.take().1.last().unwrap(),
        &format!("Lost {{ why: Closed, retry_in_ms: {BACKOFF_MIN_MS} }}")
    );
}

#[test]
fn refusals_and_broker_errors_end_the_session_with_the_reason() {
    let c = cfg();
    let cases: [(&[u8], &[u8], Lost); 5] = [
        (&[0x20, 2, 0, 5], &[], Lost::Refused(5)),
        (&[0x90, 3, 0, 1, 0], &[], Lost::Protocol(ProtocolError::UnexpectedType(9))),
        (&[0x20, 2, 0, 0], &[0x90, 3, 0, 1, 0x80], Lost::SubscribeRefused),
        (
            &[0x20, 2, 0, 0],
            &[0x90, 3, 0, 1, 1, 0x20, 2, 0, 0],
            Lost::Protocol(ProtocolError::UnexpectedType(2)),
        ),
        (
            &[0x20, 2, 0, 0],
            &[0x90, 3, 0, 1, 1, 0x34, 5, 0, 1, b't', 0, 1],
            Lost::Protocol(ProtocolError::QoS),
        ),
    ];
    for (first, then, want) in cases {
        let mut client = <Client>::default();
        let mut out = Rec::default();
        client.start(&c, &mut out);
        client.connected(&c, 0, &mut out);
        client.data(&c, first, 0, &mut out);
        client.data(&c, then, 0, &mut out);
        let log = out.take().1;
        assert_eq!(
            log.last().unwrap(),
            &format!("{:?}", Event::Lost { why: want, retry_in_ms: 1000 }),
            "{log:?}"
        );
        assert!(log.contains(&"close".to_string()));
        assert!(!client.is_connected());
    }
    // No CONNACK within the answer timeout.
    let mut client = <Client>::default();
    let mut out = Rec::default();
    client.start(&c, &mut out);
    client.connected(&c, 0, &mut out);
    client.poll(&c, client::ANSWER_TIMEOUT_MS, &mut out);
    assert_eq!(out.take().1.last().unwrap(), "Lost { why: NoAnswer, retry_in_ms: 1000 }");
    // Publishing needs a ready session.
    assert_eq!(
        client.publish("t", b"x", QoS::AtMostOnce, false, 0, &mut out),
        Err(client::PublishError::NotConnected)
    );
}

#[test]
fn an_oversized_command_is_dropped_and_the_session_goes_on() {
    let c = cfg();
    let (mut client, mut out) = ready();
    let mut msg = Vec::new();
    packet::publish(
        &mut msg,
        "/switch/cmd/root",
        &vec![b'x'; client::MAX_PACKET + 1],
        QoS::AtMostOnce,
        false,
        0,
    )
    .unwrap();
    client.data(&c, &msg, 0, &mut out);
    let log = out.take().1;
    assert_eq!(log.len(), 1);
    assert!(log[0].starts_with("Dropped { len: "), "{log:?}");
    assert!(client.is_ready());
}

fn cmd(json: &str) -> Result<String, CommandError> {
    let mut buf = [0u8; MAX_URL];
    command::parse(json.as_bytes(), &mut buf).map(|c| format!("{c:?}"))
}

#[test]
fn the_seeds_trigger_and_its_error_cases() {
    assert_eq!(
        cmd(r#"{"type":"ota_trigger","url":"https://h/firmware.bin"}"#).unwrap(),
        r#"OtaTrigger { url: "https://h/firmware.bin", truncated: false }"#
    );
    // Order, whitespace, escapes and other fields do not matter.
    assert_eq!(
        cmd(" {}"),
        Err(CommandError::NotJson),
        "the seed reads JSON only when the first byte is `{{`"
    );
    assert_eq!(
        cmd("{\"url\" : \"http:\\/\\/10.0.2.2:8070\\/v2.bin\", \"n\": [1, {\"a\": null}], \"type\":\"ota_trigger\"}\n")
            .unwrap(),
        r#"OtaTrigger { url: "http://10.0.2.2:8070/v2.bin", truncated: false }"#
    );
    assert_eq!(cmd(r#"{"type":"connections","data":{}}"#).unwrap(), r#"Other("connections")"#);
    assert_eq!(cmd("U"), Err(CommandError::NotJson));
    assert_eq!(cmd(r#"{"type":"ota_trigger","#), Err(CommandError::BadJson { at: 22 }));
    assert_eq!(cmd(r#"{"type":"ota_trigger"} x"#), Err(CommandError::BadJson { at: 23 }));
    assert_eq!(cmd(r#"{"url":"http://h/"}"#), Err(CommandError::MissingType));
    assert_eq!(cmd(r#"{"type":7,"url":"http://h/"}"#), Err(CommandError::MissingType));
    assert_eq!(cmd(r#"{"type":"reboot"}"#), Err(CommandError::UnknownType));
    assert_eq!(cmd(r#"{"type":"ota_trigger"}"#), Err(CommandError::MissingUrl));
    assert_eq!(cmd(r#"{"type":"ota_trigger","url":42}"#), Err(CommandError::MissingUrl));
    assert_eq!(cmd(r#"{"type":"ota_trigger","url":"ftp://h/f"}"#), Err(CommandError::BadUrl));
    // Deep nesting is refused, not followed.
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
    assert!(matches!(cmd(&deep), Err(CommandError::BadJson { .. })));
}

#[test]
fn a_long_url_is_cut_to_199_bytes_as_the_seeds_mesh_message_cuts_it() {
    let url = format!("http://h/{}", "a".repeat(300));
    let got = cmd(&format!(r#"{{"type":"ota_trigger","url":"{url}"}}"#)).unwrap();
    assert_eq!(got, format!(r#"OtaTrigger {{ url: "{}", truncated: true }}"#, &url[..MAX_URL]));
}
