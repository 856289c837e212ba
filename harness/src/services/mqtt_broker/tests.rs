//! The broker over real loopback sockets, driven with raw packets written here and with the
//! device's own MQTT client from ota-core.

use super::*;
use std::net::Ipv4Addr;

const WAIT: Duration = Duration::from_secs(5);

fn broker() -> MqttBroker {
    MqttBroker::start(Ipv4Addr::LOCALHOST.into()).expect("a loopback port")
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    [&[first, body.len() as u8][..], body].concat()
}

struct Raw(TcpStream);

impl Raw {
    fn open(b: &MqttBroker, id: &str, will: Option<(&str, &str)>, keep_alive: u16) -> (Raw, u8) {
        let s = TcpStream::connect(b.addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut flags = 0x02;
        let mut tail = string(id);
        if let Some((t, p)) = will {
            flags |= 0x04 | 0x08 | 0x20;
            tail.extend(string(t));
            tail.extend(string(p));
        }
        let body = [&string("MQTT")[..], &[4, flags], &keep_alive.to_be_bytes(), &tail].concat();
        let mut r = Raw(s);
        r.send(&frame(0x10, &body));
        let ack = r.read_packet();
        assert_eq!(ack[..3], [0x20, 2, 0]);
        (r, ack[3])
    }
    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }
    fn read_packet(&mut self) -> Vec<u8> {
        let mut head = [0u8; 2];
        self.0.read_exact(&mut head).unwrap();
        assert!(head[1] < 128, "short packets only here");
        let mut body = vec![0u8; head[1] as usize];
        self.0.read_exact(&mut body).unwrap();
        [&head[..], &body].concat()
    }
    fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<u8> {
        let body = [&[0, 1][..], &string(filter), &[qos]].concat();
        self.send(&frame(0x82, &body));
        self.read_packet()
    }
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn publications_reach_matching_subscribers_and_retained_ones_late_subscribers() {
    let b = broker();
    let (mut sub, code) = Raw::open(&b, "sub", None, 60);
    assert_eq!(code, 0);
    assert_eq!(sub.subscribe("/switch/+/root", 1), [0x90, 3, 0, 1, 1]);
    assert_eq!(b.wait_subscriber("/switch/cmd/root", WAIT).as_deref(), Some("sub"));
    b.publish("/switch/cmd/root", b"go", false);
    let p = sub.read_packet();
    // QoS 1 to a QoS 1 subscriber: a packet id, retain 0.
    assert_eq!(p[0], 0x32);
    assert!(p.ends_with(b"go"));
    b.publish("/other", b"x", false);
    // Retained: kept, sent on subscribe with retain 1; an empty one deletes it.
    b.publish("/switch/state/root", b"online", true);
    let (mut late, _) = Raw::open(&b, "late", None, 60);
    assert_eq!(late.subscribe("/switch/state/#", 0)[..2], [0x90, 3]);
    let r = late.read_packet();
    assert_eq!(r[0], 0x31, "QoS 0 granted, retain set");
    assert!(r.ends_with(b"online"));
    b.publish("/switch/state/root", b"", true);
    let (mut later, _) = Raw::open(&b, "later", None, 60);
    later.subscribe("/switch/state/#", 0);
    later.0.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut one = [0u8; 1];
    assert!(later.0.read(&mut one).is_err(), "nothing retained any more");
    let topics: Vec<String> = b.messages().iter().map(|m| m.topic.clone()).collect();
    assert_eq!(topics, ["/switch/cmd/root", "/other", "/switch/state/root", "/switch/state/root"]);
}

#[test]
fn a_will_goes_out_when_a_client_vanishes_and_not_when_it_says_goodbye() {
    let b = broker();
    let (gone, _) = Raw::open(&b, "dev1", Some(("/switch/state/root", "offline")), 60);
    drop(gone);
    let (_, m) = b.wait_message(0, WAIT, |m| m.will).expect("the will");
    assert_eq!(
        (m.topic.as_str(), m.text().as_str(), m.from.as_str(), m.retain),
        ("/switch/state/root", "offline", "dev1", true)
    );
    let (mut polite, _) = Raw::open(&b, "dev2", Some(("/w", "bye")), 60);
    polite.send(&[0xE0, 0]);
    assert!(polite.closed());
    assert!(b.wait_message(1, Duration::from_millis(300), |m| m.will).is_none());
    // Takeover: the same client id again closes the first connection, whose will goes out.
    let (mut first, _) = Raw::open(&b, "dev3", Some(("/w3", "taken over")), 60);
    let (_second, _) = Raw::open(&b, "dev3", None, 60);
    assert!(first.closed());
    assert!(b.wait_message(0, WAIT, |m| m.will && m.from == "dev3").is_some());
}

#[test]
fn bad_clients_are_refused_with_the_right_code_or_dropped() {
    let b = broker();
    // Protocol level 3 (MQTT 3.1): CONNACK 1.
    let mut s = TcpStream::connect(b.addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = [&string("MQTT")[..], &[3, 2, 0, 60], &string("old")].concat();
    s.write_all(&frame(0x10, &body)).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 1]);
    // Not CONNECT first: dropped.
    let mut r = Raw(TcpStream::connect(b.addr()).unwrap());
    r.0.set_read_timeout(Some(WAIT)).unwrap();
    r.send(&[0xC0, 0]);
    assert!(r.closed());
    // QoS 2: dropped.
    let (mut q2, _) = Raw::open(&b, "q2", None, 60);
    q2.send(&frame(0x34, &[&string("t")[..], &[0, 1], b"x"].concat()));
    assert!(q2.closed());
    // Garbage remaining length: dropped.
    let (mut junk, _) = Raw::open(&b, "junk", None, 60);
    junk.send(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert!(junk.closed());
    // Keep-alive of 1 s and silence: dropped after 1.5 s.
    let (mut quiet, _) = Raw::open(&b, "quiet", None, 1);
    assert!(quiet.closed());
    assert!(b.clients().is_empty(), "{:?}", b.clients());
}

#[test]
fn a_broker_that_goes_away_drops_everyone_and_refuses_until_it_comes_back() {
    let b = broker();
    let (mut c, _) = Raw::open(&b, "dev", Some(("/w", "x")), 60);
    c.send(&[0xC0, 0]);
    assert_eq!(c.read_packet(), [0xD0, 0]);
    b.go_away();
    assert!(c.closed());
    let (_, code) = Raw::open(&b, "dev", None, 60);
    assert_eq!(code, 3, "server unavailable");
    assert!(b.messages().iter().all(|m| !m.will), "a vanished broker publishes no will");
    b.come_back();
    assert_eq!(Raw::open(&b, "dev", None, 60).1, 0);
}

/// The device's client from ota-core, on a socket: CONNECT with its will, the command
/// subscription, a command in, a status out, the will when it vanishes.
#[test]
fn the_devices_own_client_talks_to_it() {
    use ota_core::proto::mqtt::client::{Client, Config, Event, Output};
    use ota_core::proto::mqtt::packet::{QoS, Will as DeviceWill};

    #[derive(Default)]
    struct Sock {
        out: Vec<u8>,
        ready: bool,
        got: Vec<(String, Vec<u8>)>,
    }
    impl Output for Sock {
        fn connect(&mut self, _: SocketAddr) {}
        fn send(&mut self, bytes: &[u8]) {
            self.out.extend_from_slice(bytes);
        }
        fn close(&mut self) {}
        fn event(&mut self, e: Event<'_>) {
            match e {
                Event::Ready => self.ready = true,
                Event::Message { topic, payload, .. } => self.got.push((topic.into(), payload.to_vec())),
                _ => {}
            }
        }
    }
    let b = broker();
    let cfg = Config {
        broker: b.addr(),
        client_id: "otahil_c30001",
        username: None,
        password: None,
        keep_alive_s: 60,
        command_topic: "/switch/cmd/root",
        will: Some(DeviceWill {
            topic: "/switch/state/root",
            message: b"{\"state\":\"offline\"}",
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        stream_large: false,
    };
    let mut client = <Client>::default();
    let mut sock = Sock::default();
    client.start(&cfg, &mut sock);
    let mut stream = TcpStream::connect(b.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    client.connected(&cfg, 0, &mut sock);
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut published = false;
    while sock.got.is_empty() && start.elapsed() < WAIT {
        if !sock.out.is_empty() {
            stream.write_all(&std::mem::take(&mut sock.out)).unwrap();
        }
        if sock.ready && !published {
            b.wait_subscriber("/switch/cmd/root", WAIT).expect("subscribed");
            b.publish("/switch/cmd/root", br#"{"type":"ota_trigger","url":"http://h/x"}"#, false);
            published = true;
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!("the broker closed"),
            Ok(n) => client.data(&cfg, &buf[..n], 1, &mut sock),
            Err(_) => {}
        }
    }
    assert_eq!(
        sock.got,
        [("/switch/cmd/root".to_string(), br#"{"type":"ota_trigger","url":"http://h/x"}"#.to_vec())]
    );
    client
        .publish("/switch/state/root", b"{\"state\":\"started\"}", QoS::AtLeastOnce, false, 2, &mut sock)
        .unwrap();
    stream.write_all(&std::mem::take(&mut sock.out)).unwrap();
    let (_, m) = b.wait_message(0, WAIT, |m| m.from == "otahil_c30001").expect("the status");
    assert_eq!(m.text(), "{\"state\":\"started\"}");
    drop(stream);
    let (_, will) = b.wait_message(0, WAIT, |m| m.will).expect("the will");
    assert_eq!(will.text(), "{\"state\":\"offline\"}");
}

/// A connection cut mid-message gets exactly the bytes before the cut, then the end (never a
/// reset that would drop what it had not read), even when it sends a packet that wants an
/// answer after the cut; its will goes out when it closes.
#[test]
fn a_cut_publication_delivers_exactly_its_first_bytes_then_the_end() {
    let b = broker();
    let (mut dev, _) = Raw::open(&b, "dev", Some(("dev/state", "lost")), 0);
    assert_eq!(dev.subscribe("fw/#", 1)[..2], [0x90, 3]);
    let payload = vec![0xA5u8; 200_000];
    b.publish_cut("fw/x", &payload, false, 150_000);
    // A QoS 1 publication from the device: its PUBACK cannot go out any more.
    let body = [&string("dev/status")[..], &[0, 7], b"206"].concat();
    dev.send(&frame(0x32, &body));
    let mut got = Vec::new();
    dev.0.read_to_end(&mut got).expect("an orderly end, not a reset");
    assert_eq!(got.len(), 150_000);
    assert_eq!(got[0], 0x32, "a PUBLISH at QoS 1");
    assert!(got[got.len() - 1000..].iter().all(|&x| x == 0xA5));
    drop(dev);
    let (_, will) = b.wait_message(0, WAIT, |m| m.will).expect("the will after the close");
    assert_eq!((will.topic.as_str(), will.payload.as_slice()), ("dev/state", &b"lost"[..]));
}

/// Packets in `bytes` (a stream from the broker): first byte and body of each whole one.
fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (mut len, mut shift, mut at) = (0usize, 0, 1);
        loop {
            let b = bytes[at];
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        assert!(at + len <= bytes.len(), "the stream does not frame: a packet got into another one");
        out.push((bytes[0], bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    out
}

/// A publication larger than the socket buffers goes out in several writes while the client's
/// own QoS 1 publications are answered from its thread: every packet still arrives whole. (A
/// Homie device publishes its attributes at QoS 1 as the firmware is routed to it; a PUBACK
/// once slipped between two pieces of the image.)
#[test]
fn a_large_publication_goes_out_whole_while_its_client_is_answered() {
    let b = broker();
    let (mut dev, _) = Raw::open(&b, "dev", None, 0);
    assert_eq!(dev.subscribe("fw/#", 1)[..2], [0x90, 3]);
    let payload: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
    const ACKED: u16 = 50;
    let got = std::thread::scope(|s| {
        s.spawn(|| b.publish("fw/big", &payload, false));
        // The publication is being written (and stalls: nothing reads it yet).
        std::thread::sleep(Duration::from_millis(100));
        for id in 1..=ACKED {
            let body = [&string("dev/attr")[..], &id.to_be_bytes(), b"x"].concat();
            dev.send(&frame(0x32, &body));
        }
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + WAIT;
        // Everything comes: one PUBLISH (fixed header, topic, packet id, payload) and the
        // acknowledgements.
        while got.len() < 1 + 4 + 8 + 2 + payload.len() + 4 * usize::from(ACKED) {
            assert!(Instant::now() < deadline, "{} bytes came", got.len());
            let n = dev.0.read(&mut chunk).unwrap();
            got.extend_from_slice(&chunk[..n]);
            // A device reads slowly (a small window): the broker's writes wait for room, and
            // whoever else writes to the socket meanwhile gets between them.
            if got.len() < 1 << 20 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        got
    });
    let packets = packets(&got);
    let publishes: Vec<_> = packets.iter().filter(|(f, _)| f >> 4 == 3).collect();
    assert_eq!(publishes.len(), 1);
    let body = &publishes[0].1;
    assert_eq!(&body[..8], &string("fw/big")[..]);
    assert!(body[10..] == payload[..], "the payload arrived unchanged");
    let acks: Vec<u16> =
        packets.iter().filter(|(f, _)| *f == 0x40).map(|(_, b)| u16::from_be_bytes([b[0], b[1]])).collect();
    assert_eq!(acks, (1..=ACKED).collect::<Vec<_>>());
}
