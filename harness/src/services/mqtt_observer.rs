//! The harness as a client of a broker it did not start (`--mqtt-broker`, mosquitto in CI): it
//! subscribes to every topic, records what it receives in the same [`Message`] form the embedded
//! broker records, and publishes the scenario's commands. The session is ota-core's MQTT client
//! (the device's own, sans-IO) on a socket in a thread of its own.

use super::mqtt_broker::{HARNESS_CLIENT, Message};
use ota_core::proto::mqtt::client::{Client, Config, Event, Output};
use ota_core::proto::mqtt::packet::QoS;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error("cannot reach the MQTT broker at {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error(
        "the MQTT broker at {addr} did not accept the harness's session within {CONNECT_TIMEOUT:?}: {why}"
    )]
    Session { addr: SocketAddr, why: String },
}

/// A publication the harness asks for.
struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

#[derive(Default)]
struct Seen {
    messages: Vec<Message>,
    ready: bool,
    lost: Option<String>,
}

pub struct MqttObserver {
    addr: SocketAddr,
    seen: Arc<(Mutex<Seen>, Condvar)>,
    outgoing: Sender<Outgoing>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MqttObserver {
    /// Connects to `addr` and subscribes to `#`; returns once the subscription is acknowledged.
    pub fn connect(addr: SocketAddr) -> Result<Self, ObserverError> {
        let (tx, _) = mpsc::channel();
        let mut observer =
            MqttObserver { addr, seen: Arc::default(), outgoing: tx, stop: Arc::default(), thread: None };
        observer.open_session()?;
        Ok(observer)
    }

    /// Ends the session (if any is left) and opens a new one, keeping what was seen: for a broker
    /// that went away and came back. Publications of the time between are lost, as the device's.
    pub fn reconnect(&mut self) -> Result<(), ObserverError> {
        self.end_session();
        self.open_session()
    }

    fn open_session(&mut self) -> Result<(), ObserverError> {
        let addr = self.addr;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|source| ObserverError::Connect { addr, source })?;
        stream.set_read_timeout(Some(TICK)).map_err(|source| ObserverError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        {
            let mut s = self.seen.0.lock().unwrap_or_else(|p| p.into_inner());
            s.ready = false;
            s.lost = None;
        }
        self.stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        self.outgoing = tx;
        let (seen, stop) = (self.seen.clone(), self.stop.clone());
        self.thread = Some(
            std::thread::Builder::new()
                .name("otahil-mqtt-observer".into())
                .spawn(move || session(addr, stream, &seen, &stop, &rx))
                .expect("spawning a thread"),
        );
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let (lock, cv) = &*self.seen;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !s.ready {
            if let Some(why) = &s.lost {
                return Err(ObserverError::Session { addr, why: why.clone() });
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(ObserverError::Session { addr, why: "no CONNACK and SUBACK".into() });
            };
            s = cv.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }

    fn end_session(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let _ = self.outgoing.send(Outgoing { topic: topic.into(), payload: payload.to_vec(), retain });
    }

    /// What the harness received, in order (its own publications come back too, as the broker
    /// delivers them to its `#` subscription).
    pub fn messages(&self) -> Vec<Message> {
        self.seen.0.lock().unwrap_or_else(|p| p.into_inner()).messages.clone()
    }

    /// Waits for the first message after the first `skip` that `pred` accepts.
    pub fn wait_message(
        &self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Option<(usize, Message)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.seen;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((i, m)) = s.messages.iter().enumerate().skip(skip).find(|(_, m)| pred(m)) {
                return Some((i, m.clone()));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = cv.wait_timeout(s, left.min(TICK * 10)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for MqttObserver {
    fn drop(&mut self) {
        self.end_session();
    }
}

struct Sock<'a> {
    out: Vec<u8>,
    seen: &'a (Mutex<Seen>, Condvar),
    close: bool,
}

impl Output for Sock<'_> {
    fn connect(&mut self, _to: SocketAddr) {}
    fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn event(&mut self, e: Event<'_>) {
        let (lock, cv) = self.seen;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Ready => s.ready = true,
            Event::Message { topic, payload, retain } => s.messages.push(Message {
                topic: topic.to_string(),
                payload: payload.to_vec(),
                qos: 0,
                retain,
                from: String::new(),
                will: false,
            }),
            Event::Lost { why, .. } => s.lost = Some(why.to_string()),
            Event::Dropped { len } => {
                tracing::warn!("MQTT observer: a message of {len} bytes was too long to record")
            }
            // Asked for no streaming: a large message comes as `Dropped`.
            Event::Connecting { .. } | Event::Published { .. } | Event::Piece { .. } => {}
        }
        cv.notify_all();
    }
}

/// One session, until stopped or lost (a lost session is reported, not re-made here: a scenario
/// against an external broker that drops the harness fails where it waits; a broker the harness
/// restarts itself is followed by [`MqttObserver::reconnect`]).
fn session(
    addr: SocketAddr,
    mut stream: TcpStream,
    seen: &(Mutex<Seen>, Condvar),
    stop: &AtomicBool,
    rx: &Receiver<Outgoing>,
) {
    let client_id = format!("{HARNESS_CLIENT}-{}", std::process::id());
    let cfg = Config {
        broker: addr,
        client_id: &client_id,
        username: None,
        password: None,
        keep_alive_s: 30,
        command_topic: "#",
        will: None,
        stream_large: false,
    };
    let started = Instant::now();
    let now = || started.elapsed().as_millis() as u64;
    let mut client = <Client>::default();
    let mut sock = Sock { out: Vec::new(), seen, close: false };
    client.start(&cfg, &mut sock);
    client.connected(&cfg, now(), &mut sock);
    let mut buf = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        while let Ok(o) = rx.try_recv() {
            if client.publish(&o.topic, &o.payload, QoS::AtLeastOnce, o.retain, now(), &mut sock).is_err() {
                tracing::warn!(topic = %o.topic, "MQTT observer: not connected, publication dropped");
            }
        }
        if !sock.out.is_empty() && stream.write_all(&std::mem::take(&mut sock.out)).is_err() {
            client.closed(now(), &mut sock);
            break;
        }
        if sock.close {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                client.closed(now(), &mut sock);
                break;
            }
            Ok(n) => client.data(&cfg, &buf[..n], now(), &mut sock),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                client.closed(now(), &mut sock);
                break;
            }
        }
        client.poll(&cfg, now(), &mut sock);
    }
    // What was published just before the end (a run clearing its retained messages) goes out
    // before the DISCONNECT.
    while let Ok(o) = rx.try_recv() {
        let _ = client.publish(&o.topic, &o.payload, QoS::AtLeastOnce, o.retain, now(), &mut sock);
    }
    client.stop(&mut sock);
    let _ = stream.write_all(&sock.out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::mqtt_broker::MqttBroker;
    use std::net::Ipv4Addr;

    const WAIT: Duration = Duration::from_secs(5);

    fn published(m: &Message, topic: &str, payload: &str) -> bool {
        m.topic == topic && m.payload == payload.as_bytes()
    }

    #[test]
    fn follows_a_broker_that_went_away_and_came_back_keeping_what_it_saw() {
        let broker = MqttBroker::start(Ipv4Addr::LOCALHOST.into()).expect("a loopback port");
        let mut observer = MqttObserver::connect(broker.addr()).expect("subscribed");
        broker.publish("t/a", b"before", false);
        let (first, _) = observer.wait_message(0, WAIT, |m| published(m, "t/a", "before")).expect("seen");

        broker.go_away();
        broker.publish("t/a", b"while away", false);
        broker.come_back();
        observer.reconnect().expect("subscribed again");
        broker.publish("t/a", b"after", false);
        let (next, _) =
            observer.wait_message(first + 1, WAIT, |m| published(m, "t/a", "after")).expect("seen");

        let texts: Vec<String> = observer.messages().iter().map(Message::text).collect();
        assert_eq!(next, first + 1, "nothing in between: {texts:?}");
        assert_eq!(texts, ["before", "after"], "what came before the restart is kept, in order");
        // The new session publishes too.
        observer.publish("t/b", b"from the harness", false);
        broker.wait_message(0, WAIT, |m| published(m, "t/b", "from the harness")).expect("published");
    }

    #[test]
    fn a_broker_that_is_not_there_is_a_clear_error() {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
        let e = MqttObserver::connect(port).err().expect("nothing listens there");
        assert!(e.to_string().starts_with(&format!("cannot reach the MQTT broker at {port}")), "{e}");
    }
}
