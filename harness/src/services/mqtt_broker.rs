//! The MQTT broker the harness starts for devices that take commands over MQTT (the HTTP pull
//! trigger, next Homie OTA and fleet rollouts): MQTT 3.1.1 over TCP on loopback at a free port,
//! stopped when dropped. QoS 0 and 1 (a QoS 2 publication closes the connection: no client the
//! harness drives sends it), retained messages, last wills, keep-alive, session takeover by
//! client id, `+`/`#` wildcards. Clean sessions only: nothing is kept for a client that left.
//!
//! The harness takes part as a client of its own: [`MqttBroker::publish`] sends as one would,
//! and every accepted publication is recorded ([`MqttBroker::messages`]) so a scenario can wait
//! for a device's status or check what it said. [`MqttBroker::go_away`] plays a broker that
//! vanishes (every connection dropped, new ones refused) until [`MqttBroker::come_back`].
//!
//! Why not an embedded broker crate: rumqttd 0.20 (the candidate, spec crates-for-update-paths)
//! runs until the process ends (`Broker::start` never returns, no shutdown), so a test could not
//! stop what it started, and it brings an HTTP stack along. Interoperability with a reference
//! broker is checked against Debian's mosquitto instead (`--mqtt-broker`, and `.ci/run`).

#[cfg(test)]
mod tests;

use ota_core::proto::mqtt::broker::{self as codec, FromClient};
use ota_core::proto::mqtt::packet::{self, QoS, Sink, topic_matches};
use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest packet the broker takes (Homie sends whole images in one PUBLISH).
pub const MAX_PACKET: u32 = 4 << 20;
/// How often the threads look at the stop flag.
const TICK: Duration = Duration::from_millis(10);
/// A connection must send CONNECT within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The client id the harness's own publications carry in the record.
pub const HARNESS_CLIENT: &str = "otahil-harness";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A publication the broker accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// The publishing client's id ([`HARNESS_CLIENT`] for the harness's own); a will is recorded
    /// under the client that left it.
    pub from: String,
    /// The broker published it as the client's last will.
    pub will: bool,
}

impl Message {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A client's last will, kept until it leaves.
struct Will {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

/// A packet encoded whole, to be written at once.
#[derive(Default)]
struct Encoded(Vec<u8>);

impl Sink for Encoded {
    fn put(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

fn encoded(encode: impl FnOnce(&mut Encoded)) -> Vec<u8> {
    let mut out = Encoded::default();
    encode(&mut out);
    out.0
}

/// A PUBLISH to a subscriber at QoS 0 or 1; `id` only counts at QoS 1.
fn publish_packet(topic: &str, payload: &[u8], qos: u8, retain: bool, id: u16) -> Vec<u8> {
    let qos = if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    // Topics and payloads come from packets the broker decoded (or the harness, which is
    // bounded by MAX_PACKET): they fit the encoding.
    encoded(|o| packet::publish(o, topic, payload, qos, retain, id).expect("a decoded topic and payload fit"))
}

fn qos_number(q: QoS) -> u8 {
    q as u8
}

struct Client {
    client_id: String,
    subscriptions: Vec<(String, u8)>,
    writer: Writer,
    /// The same socket, to shut it without waiting for a write in progress.
    socket: TcpStream,
    will: Option<Will>,
}

/// A client's sending side. Its answers (from its own thread) and the publications routed to it
/// (from any publisher's) go out whole under this lock: a large publication written in several
/// pieces had a PUBACK slip between two of them, and the device read those bytes as firmware.
#[derive(Clone)]
struct Writer(Arc<Mutex<TcpStream>>);

impl Writer {
    fn lock(&self) -> MutexGuard<'_, TcpStream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.lock().write_all(bytes)
    }
}

#[derive(Default)]
struct State {
    next_conn: u64,
    clients: HashMap<u64, Client>,
    retained: BTreeMap<String, (Vec<u8>, u8)>,
    published: Vec<Message>,
    refusing: bool,
    next_packet_id: u16,
    /// Connections cut mid-message ([`MqttBroker::publish_cut`]): their sending half is shut,
    /// so what they are answered fails; they are read until their client closes.
    cut: std::collections::HashSet<u64>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct MqttBroker {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl MqttBroker {
    /// Listens on `ip` at a port the system picks.
    pub fn start(ip: IpAddr) -> Result<Self, BrokerError> {
        let bind = SocketAddr::new(ip, 0);
        let listener = TcpListener::bind(bind).map_err(|source| BrokerError::Bind { addr: bind, source })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind { addr: bind, source })?;
        listener.set_nonblocking(true).map_err(|source| BrokerError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (shared, connections) = (shared.clone(), connections.clone());
            std::thread::spawn(move || accept_loop(listener, shared, connections))
        };
        tracing::debug!(%addr, "MQTT broker listening");
        Ok(MqttBroker { addr, shared, accept: Some(accept), connections })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes as a client would, at QoS 1.
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        route(&self.shared, harness_message(topic, payload, retain));
    }

    /// Publishes as [`Self::publish`], but each subscriber's connection is cut after `after`
    /// bytes of the PUBLISH packet (a broker or a network lost mid-message); its will follows.
    pub fn publish_cut(&self, topic: &str, payload: &[u8], retain: bool, after: usize) {
        route_cut(&self.shared, harness_message(topic, payload, retain), Some(after));
    }

    /// Every publication accepted so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.shared.lock().published.clone()
    }

    /// Waits for the first publication after the first `skip` that `pred` accepts.
    pub fn wait_message(
        &self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Option<(usize, Message)> {
        self.wait(timeout, |s| {
            s.published.iter().enumerate().skip(skip).find(|(_, m)| pred(m)).map(|(i, m)| (i, m.clone()))
        })
    }

    /// Waits until a connected client has a subscription that `topic` matches; its client id.
    pub fn wait_subscriber(&self, topic: &str, timeout: Duration) -> Option<String> {
        self.wait(timeout, |s| {
            s.clients
                .values()
                .find(|c| c.subscriptions.iter().any(|(f, _)| topic_matches(f, topic)))
                .map(|c| c.client_id.clone())
        })
    }

    /// The ids of the clients connected now.
    pub fn clients(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shared.lock().clients.values().map(|c| c.client_id.clone()).collect();
        ids.sort();
        ids
    }

    /// The broker vanishes: every connection drops (no wills: a broker that dies publishes
    /// nothing) and new ones are refused until [`MqttBroker::come_back`].
    pub fn go_away(&self) {
        let mut s = self.shared.lock();
        s.refusing = true;
        for c in s.clients.values_mut() {
            c.will = None;
            let _ = c.socket.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    pub fn come_back(&self) {
        self.shared.lock().refusing = false;
    }

    fn wait<R>(&self, timeout: Duration, mut found: impl FnMut(&State) -> Option<R>) -> Option<R> {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        loop {
            if let Some(r) = found(&s) {
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = self.shared.changed.wait_timeout(s, left.min(TICK * 10)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for MqttBroker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let s = self.shared.lock();
            for c in s.clients.values() {
                let _ = c.socket.shutdown(Shutdown::Both);
            }
        }
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let handles = std::mem::take(&mut *self.connections.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, connections: Arc<Mutex<Vec<JoinHandle<()>>>>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let h = std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &shared) {
                        tracing::debug!(%peer, "MQTT connection ended: {e}");
                    }
                });
                let mut list = connections.lock().unwrap_or_else(|p| p.into_inner());
                list.retain(|h| !h.is_finished());
                list.push(h);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(e) => {
                tracing::warn!("MQTT broker: accept failed: {e}");
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] codec::DecodeError),
    #[error("{0}")]
    Refused(&'static str),
}

/// One client connection, from CONNECT to its end; the will is published unless it said
/// DISCONNECT.
fn serve(mut stream: TcpStream, shared: &Shared) -> Result<(), End> {
    stream.set_read_timeout(Some(TICK))?;
    stream.set_nodelay(true)?;
    let out = Writer(Arc::new(Mutex::new(stream.try_clone()?)));
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let opened = Instant::now();
    let mut conn: Option<(u64, Duration)> = None;
    let mut last_packet = Instant::now();
    let result = loop {
        if shared.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        // Every whole frame in the buffer.
        let mut ended = None;
        while let Some((first, body)) = match codec::frame(&buf, MAX_PACKET) {
            Ok(f) => f,
            Err(e) => {
                ended = Some(Err(e.into()));
                None
            }
        } {
            let end = body.end;
            let packet = codec::decode(first, &buf[body]).map(|p| handle(p, &out, shared, &mut conn));
            buf.drain(..end);
            last_packet = Instant::now();
            match packet {
                Err(e) => {
                    ended = Some(Err(e.into()));
                    break;
                }
                Ok(handled) => match handled {
                    Ok(true) => {}
                    Ok(false) => {
                        ended = Some(Ok(()));
                        break;
                    }
                    // An answer to a client whose connection was cut cannot go out; the
                    // client's close ends it (closing here would reset it, and the client
                    // would lose the bytes it had not read yet).
                    Err(_) if conn.is_some_and(|(id, _)| shared.lock().cut.contains(&id)) => {}
                    Err(e) => {
                        ended = Some(Err(e));
                        break;
                    }
                },
            }
        }
        if let Some(r) = ended {
            break r;
        }
        match conn {
            None if opened.elapsed() > CONNECT_TIMEOUT => break Err(End::Refused("no CONNECT in time")),
            Some((_, keep_alive)) if !keep_alive.is_zero() && last_packet.elapsed() > keep_alive * 3 / 2 => {
                break Err(End::Refused("keep-alive expired"));
            }
            _ => {}
        }
        match stream.read(&mut chunk) {
            Ok(0) => break Err(End::Refused("connection closed without DISCONNECT")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => break Err(e.into()),
        }
    };
    // Forgotten before the socket closes: a peer that sees the close sees it gone.
    let gone = conn.and_then(|(id, _)| {
        let mut s = shared.lock();
        let gone = s.clients.remove(&id);
        s.cut.remove(&id);
        shared.changed.notify_all();
        gone
    });
    let _ = stream.shutdown(Shutdown::Both);
    {
        let clean = result.is_ok();
        if let Some(Client { client_id, will: Some(w), .. }) = gone
            && !clean
        {
            route(
                shared,
                Message {
                    topic: w.topic,
                    payload: w.payload,
                    qos: w.qos.min(1),
                    retain: w.retain,
                    from: client_id,
                    will: true,
                },
            );
        }
    }
    result
}

/// One packet; `false` when the client said DISCONNECT.
fn handle(
    p: FromClient<'_>,
    out: &Writer,
    shared: &Shared,
    conn: &mut Option<(u64, Duration)>,
) -> Result<bool, End> {
    let Some((id, _)) = *conn else {
        let FromClient::Connect { level, connect: c } = p else {
            return Err(End::Refused("first packet is not CONNECT"));
        };
        return connect(level, c, out, shared, conn).map(|()| true);
    };
    match p {
        FromClient::Connect { .. } => return Err(End::Refused("second CONNECT")),
        FromClient::Publish { topic, payload, qos, retain, id: packet_id, .. } => {
            if qos == QoS::ExactlyOnce {
                return Err(End::Refused("QoS 2 is not supported by this broker"));
            }
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(End::Refused("PUBLISH to a topic with wildcards"));
            }
            if let Some(pid) = packet_id {
                out.send(&encoded(|o| packet::puback(o, pid)))?;
            }
            let from = shared.lock().clients.get(&id).map(|c| c.client_id.clone()).unwrap_or_default();
            let (topic, payload, qos) = (topic.to_string(), payload.to_vec(), qos_number(qos));
            route(shared, Message { topic, payload, qos, retain, from, will: false });
        }
        FromClient::PubAck { .. } => {}
        FromClient::Subscribe { id: packet_id, filters } => {
            let filters: Vec<(String, u8)> = filters
                .map(|(f, q)| {
                    (f.to_string(), if codec::valid_filter(f) { qos_number(q).min(1) } else { 0x80 })
                })
                .collect();
            let granted: Vec<u8> = filters.iter().map(|(_, g)| *g).collect();
            let mut s = shared.lock();
            // Each retained message once, at the lower of its QoS and the best granted one.
            let retained: Vec<(String, Vec<u8>, u8)> = s
                .retained
                .iter()
                .filter_map(|(t, (p, q))| {
                    let best = filters
                        .iter()
                        .filter(|(f, g)| *g != 0x80 && topic_matches(f, t))
                        .map(|(_, g)| *g)
                        .max()?;
                    Some((t.clone(), p.clone(), best.min(*q)))
                })
                .collect();
            if let Some(c) = s.clients.get_mut(&id) {
                for (f, g) in filters {
                    if g != 0x80 {
                        c.subscriptions.retain(|(old, _)| *old != f);
                        c.subscriptions.push((f, g));
                    }
                }
            }
            out.send(&encoded(|o| codec::suback(o, packet_id, &granted)))?;
            for (topic, payload, qos) in retained {
                let pid = next_packet_id(&mut s);
                out.send(&publish_packet(&topic, &payload, qos, true, pid))?;
            }
            shared.changed.notify_all();
        }
        FromClient::Unsubscribe { id: packet_id, filters } => {
            if let Some(c) = shared.lock().clients.get_mut(&id) {
                for gone in filters {
                    c.subscriptions.retain(|(f, _)| f != gone);
                }
            }
            out.send(&encoded(|o| codec::unsuback(o, packet_id)))?;
        }
        FromClient::PingReq => out.send(&encoded(codec::pingresp))?,
        FromClient::Disconnect => return Ok(false),
    }
    Ok(true)
}

fn connect(
    level: u8,
    c: packet::Connect<'_>,
    out: &Writer,
    shared: &Shared,
    conn: &mut Option<(u64, Duration)>,
) -> Result<(), End> {
    let refuse = |out: &Writer, code: u8, why: &'static str| -> Result<(), End> {
        out.send(&encoded(|o| codec::connack(o, false, code)))?;
        Err(End::Refused(why))
    };
    if level != 4 {
        return refuse(out, 1, "protocol level is not 4 (MQTT 3.1.1)");
    }
    if c.client_id.is_empty() && !c.clean_session {
        return refuse(out, 2, "empty client id without a clean session");
    }
    let mut s = shared.lock();
    if s.refusing {
        drop(s);
        return refuse(out, 3, "broker unavailable");
    }
    let id = s.next_conn;
    s.next_conn += 1;
    let client_id = if c.client_id.is_empty() { format!("auto-{id}") } else { c.client_id.to_string() };
    // Takeover: the older connection with this client id is closed (its will goes out when its
    // thread sees the close).
    for old in s.clients.values().filter(|o| o.client_id == client_id) {
        let _ = old.socket.shutdown(Shutdown::Both);
    }
    let socket = out.lock().try_clone()?;
    let will = c.will.map(|w| Will {
        topic: w.topic.to_string(),
        payload: w.message.to_vec(),
        qos: qos_number(w.qos),
        retain: w.retain,
    });
    s.clients.insert(id, Client { client_id, subscriptions: Vec::new(), writer: out.clone(), socket, will });
    drop(s);
    out.send(&encoded(|o| codec::connack(o, false, 0)))?;
    *conn = Some((id, Duration::from_secs(c.keep_alive_s as u64)));
    shared.changed.notify_all();
    Ok(())
}

fn next_packet_id(s: &mut State) -> u16 {
    s.next_packet_id = s.next_packet_id.wrapping_add(1).max(1);
    s.next_packet_id
}

/// Records a publication, keeps it if retained, and sends it to every subscriber.
/// A publication of the harness's own, at QoS 1.
fn harness_message(topic: &str, payload: &[u8], retain: bool) -> Message {
    Message {
        topic: topic.to_string(),
        payload: payload.to_vec(),
        qos: 1,
        retain,
        from: HARNESS_CLIENT.to_string(),
        will: false,
    }
}

fn route(shared: &Shared, m: Message) {
    route_cut(shared, m, None);
}

/// Routes `m`; with `cut`, each subscriber gets only that many bytes of it and loses its
/// connection.
fn route_cut(shared: &Shared, m: Message, cut: Option<usize>) {
    let mut s = shared.lock();
    if m.retain {
        if m.payload.is_empty() {
            s.retained.remove(&m.topic);
        } else {
            s.retained.insert(m.topic.clone(), (m.payload.clone(), m.qos));
        }
    }
    let mut deliveries = Vec::new();
    for (id, c) in &s.clients {
        let best = c.subscriptions.iter().filter(|(f, _)| topic_matches(f, &m.topic)).map(|(_, q)| *q).max();
        if let Some(q) = best {
            deliveries.push((*id, c.writer.clone(), q.min(m.qos)));
        }
    }
    if cut.is_some() {
        let ids: Vec<u64> = deliveries.iter().map(|(id, ..)| *id).collect();
        s.cut.extend(ids);
    }
    for (_, w, qos) in deliveries {
        let pid = if qos > 0 { next_packet_id(&mut s) } else { 0 };
        // To existing subscribers the retain flag is 0 (§3.3.1.3). A subscriber whose socket
        // fails is dropped by its own thread.
        let packet = publish_packet(&m.topic, &m.payload, qos, false, pid);
        match cut {
            None => {
                let _ = w.send(&packet);
            }
            Some(after) => {
                let mut w = w.lock();
                let _ = w.write_all(&packet[..after.min(packet.len())]);
                // Only the sending half: the subscriber reads every byte sent, then the end
                // (closing both halves now would reset the connection and drop, on its side,
                // whatever it had not read yet). Its close ends its thread here, which
                // publishes its will.
                let _ = w.shutdown(Shutdown::Write);
            }
        }
    }
    s.published.push(m);
    shared.changed.notify_all();
}
