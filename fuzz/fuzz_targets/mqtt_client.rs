//! The device's MQTT session and the command reader under arbitrary broker bytes, connection
//! events and time. Properties: no panic; every decoded packet is one a broker may send with
//! fields in range; the session never reports `Ready` without a CONNACK accepted and a SUBACK
//! granted in that order; the command reader returns only http(s) URLs of at most 199 bytes.
//! The same bytes as a client's, to the broker's side of the codec (the harness's broker): no
//! panic, frames within the limit, every decoded PUBLISH with its id exactly at QoS 1 and 2;
//! and as a status message to the status reader: no panic, and what it reads, written again by
//! the device's writer, reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_core::proto::mqtt::broker::{self, FromClient};
use ota_core::proto::mqtt::client::{Client, Config, Event, Output};
use ota_core::proto::mqtt::command::{self, Command, MAX_URL};
use ota_core::proto::mqtt::packet::{Decoder, Incoming, QoS};

#[derive(Default)]
struct Out {
    ready: u32,
    lost: u32,
}

impl Output for Out {
    fn connect(&mut self, _to: core::net::SocketAddr) {}
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Ready => self.ready += 1,
            Event::Lost { retry_in_ms, .. } => {
                assert!((1_000..=32_000).contains(&retry_in_ms) || retry_in_ms == 0);
                self.lost += 1;
            }
            Event::Message { payload, .. } => {
                let mut url = [0u8; MAX_URL];
                if let Ok(Command::OtaTrigger { url, .. }) = command::parse(payload, &mut url) {
                    assert!(url.len() <= MAX_URL && ota_core::url::Url::parse(url).is_ok());
                }
            }
            _ => {}
        }
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

fuzz_target!(|data: &[u8]| {
    // The decoder alone, over the whole input.
    let mut d = Decoder::<256>::default();
    let mut rest = data;
    while !rest.is_empty() {
        let (used, p) = d.feed(rest);
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
        if let Some(Ok(p)) = p {
            match p {
                Incoming::ConnAck { code, .. } => assert!(code <= 5),
                Incoming::Publish { topic, qos, id, .. } => {
                    assert!(!topic.is_empty() && !topic.contains(['+', '#']));
                    assert_eq!(id.is_some(), qos != QoS::AtMostOnce);
                }
                Incoming::SubAck { codes, .. } => assert!(!codes.is_empty()),
                _ => {}
            }
        }
    }
    let mut url = [0u8; MAX_URL];
    let _ = command::parse(data, &mut url);
    // The broker's side, over the whole input.
    let mut rest = data;
    while let Ok(Some((first, body))) = broker::frame(rest, 1 << 12) {
        assert!(body.end <= rest.len() && body.len() <= 1 << 12);
        match broker::decode(first, &rest[body.clone()]) {
            Ok(FromClient::Publish { id, qos, .. }) => assert_eq!(id.is_some(), qos != QoS::AtMostOnce),
            Ok(FromClient::Subscribe { filters, .. }) => assert!(filters.count() > 0),
            Ok(FromClient::Unsubscribe { filters, .. }) => filters.for_each(drop),
            _ => {}
        }
        rest = &rest[body.end..];
    }
    // The status reader: what it accepts, written again, reads back the same.
    if let Ok(text) = core::str::from_utf8(data) {
        use ota_core::proto::mqtt::status::Status;
        let mut strings = vec![0u8; text.len()];
        if let Ok(status) = Status::parse(text, &mut strings) {
            // An escape is at most 6 bytes for every byte it stands for.
            let mut out = vec![0u8; text.len() * 6 + 64];
            let n = status.encode(&mut out).expect("room for every escape");
            let again = core::str::from_utf8(&out[..n]).expect("the writer writes UTF-8");
            let mut strings2 = vec![0u8; again.len()];
            let back = Status::parse(again, &mut strings2).expect("the reader reads the writer");
            assert_eq!(
                (back.state, back.bytes, back.total, back.error, back.fw),
                (status.state, status.bytes, status.total, status.error, status.fw)
            );
        }
    }
    // The session, driven by the input.
    let cfg = Config {
        broker: "127.0.0.1:1883".parse().unwrap(),
        client_id: "fuzz",
        username: None,
        password: None,
        keep_alive_s: 5,
        command_topic: "/switch/cmd/root",
        will: None,
        // Half the inputs take large messages piece by piece (Homie's firmware message).
        stream_large: data.first().is_some_and(|b| b & 1 == 1),
    };
    let mut client = <Client>::default();
    let mut out = Out::default();
    let mut now = 0u64;
    let mut ops = data;
    client.start(&cfg, &mut out);
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        match op % 5 {
            0 => client.connected(&cfg, now, &mut out),
            1 => client.connect_failed(now, &mut out),
            2 => {
                let n = take(&mut ops, 1).first().copied().unwrap_or(0) as usize;
                let bytes = take(&mut ops, n);
                let was_ready = client.is_ready();
                client.data(&cfg, bytes, now, &mut out);
                // Ready only through the handshake: a session that was not ready and is now
                // said so exactly once more.
                if !was_ready && client.is_ready() {
                    assert!(out.ready > 0);
                }
            }
            3 => client.closed(now, &mut out),
            _ => {
                now += 250 * op as u64;
                client.poll(&cfg, now, &mut out);
            }
        }
        if client.is_ready() {
            let _ = client.publish("/switch/state/root", b"{}", QoS::AtLeastOnce, false, now, &mut out);
        }
    }
});
