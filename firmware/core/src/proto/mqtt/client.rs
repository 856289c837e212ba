//! The device's MQTT 3.1.1 session as a sans-IO state machine: connect to the broker (client
//! id, keep-alive, last will), subscribe to the command topic, pass commands on, publish status,
//! keep the connection alive with PINGREQ, and reconnect with a doubling back-off when it drops.
//!
//! The adapter owns the settings ([`Config`]) and lends them per call; the TCP connection is an
//! output ("connect to the broker") answered with [`Client::connected`] or
//! [`Client::connect_failed`], bytes go in through [`Client::data`], time through
//! [`Client::poll`].

use super::packet::{self, Connect, Decoder, Incoming, ProtocolError, QoS, Sink, TooLong, Will};
use core::net::SocketAddr;

/// First wait before reconnecting; doubled after each failed attempt up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_MIN_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 32_000;
/// How long the broker has to answer CONNECT or SUBSCRIBE.
pub const ANSWER_TIMEOUT_MS: u64 = 10_000;
/// The largest packet the device takes from the broker (the seed drops payloads over 8192).
pub const MAX_PACKET: usize = 8192 + 256;

/// The session's settings, lent by the adapter on each call that needs them.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    pub broker: SocketAddr,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub keep_alive_s: u16,
    /// The filter the device subscribes to for commands (at QoS 1); empty: none (the session
    /// is ready at CONNACK).
    pub command_topic: &'a str,
    /// The last will: published by the broker if the device vanishes.
    pub will: Option<Will<'a>>,
    /// Messages over [`MAX_PACKET`] come piece by piece ([`Event::Piece`]) instead of being
    /// dropped (Homie's firmware message: the image, never whole in RAM).
    pub stream_large: bool,
}

/// Why the connection ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lost {
    /// The TCP connection could not be made.
    ConnectFailed,
    /// The broker (or the network) closed it.
    Closed,
    /// The broker answered CONNECT with this refusal code (§3.2.2.3).
    Refused(u8),
    /// The broker refused the command subscription (SUBACK 0x80).
    SubscribeRefused,
    /// No CONNACK or SUBACK in time.
    NoAnswer,
    /// No PINGRESP within the keep-alive.
    PingTimeout,
    /// The broker sent bytes that are not MQTT 3.1.1.
    Protocol(ProtocolError),
}

impl core::fmt::Display for Lost {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Lost::ConnectFailed => f.write_str("cannot connect"),
            Lost::Closed => f.write_str("connection closed"),
            Lost::Refused(code) => write!(f, "refused, code {code} ({})", refusal(*code)),
            Lost::SubscribeRefused => f.write_str("subscription refused"),
            Lost::NoAnswer => f.write_str("no answer from the broker"),
            Lost::PingTimeout => f.write_str("ping timeout"),
            Lost::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// CONNACK return codes' meanings (§3.2.2.3).
pub fn refusal(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown",
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event<'a> {
    /// A TCP connection to the broker is asked for.
    Connecting { attempt: u32 },
    /// CONNACK accepted and the command subscription granted: commands flow.
    Ready,
    /// A message on a subscribed topic.
    Message { topic: &'a str, payload: &'a [u8], retain: bool },
    /// A piece of a message too large to hold, as it came (`stream_large`): the payload's bytes
    /// from `offset`; the last piece ends at `total`.
    Piece { topic: &'a str, retain: bool, offset: u32, total: u32, piece: &'a [u8] },
    /// A message too large for the device, dropped.
    Dropped { len: u32 },
    /// A QoS 1 publication was acknowledged.
    Published { id: u16 },
    /// The session ended; the next attempt comes after `retry_in_ms`.
    Lost { why: Lost, retry_in_ms: u64 },
}

/// What the client does to the world.
pub trait Output {
    fn connect(&mut self, to: SocketAddr);
    fn send(&mut self, bytes: &[u8]);
    /// Close the connection once what was sent is out.
    fn close(&mut self);
    fn event(&mut self, event: Event<'_>);
}

struct Bytes<'o, O: Output>(&'o mut O);

impl<O: Output> Sink for Bytes<'_, O> {
    fn put(&mut self, bytes: &[u8]) {
        self.0.send(bytes);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Not started, or stopped.
    Off,
    /// Waiting to reconnect.
    Backoff {
        until_ms: u64,
    },
    /// TCP connect asked for.
    Connecting,
    AwaitConnAck {
        since_ms: u64,
    },
    AwaitSubAck {
        since_ms: u64,
        id: u16,
    },
    Ready,
}

/// Why a publication was not sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PublishError {
    NotConnected,
    TooLong,
}

impl From<TooLong> for PublishError {
    fn from(_: TooLong) -> Self {
        PublishError::TooLong
    }
}

/// `N`: the largest packet taken whole (the rest are dropped, or streamed when the session asks
/// for it); a client that only streams large messages needs little.
pub struct Client<const N: usize = MAX_PACKET> {
    state: State,
    decoder: Decoder<N>,
    attempt: u32,
    backoff_ms: u64,
    next_id: u16,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
    /// QoS 1 publications not yet acknowledged.
    unacked: u32,
}

impl<const N: usize> Default for Client<N> {
    fn default() -> Self {
        Client {
            state: State::Off,
            decoder: Decoder::default(),
            attempt: 0,
            backoff_ms: BACKOFF_MIN_MS,
            next_id: 1,
            last_sent_ms: 0,
            ping_sent_ms: None,
            unacked: 0,
        }
    }
}

impl<const N: usize> Client<N> {
    /// Commands can arrive and status can be published.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// A connection attempt or session is under way (not off, not waiting to retry).
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::AwaitConnAck { .. } | State::AwaitSubAck { .. } | State::Ready)
    }

    /// QoS 1 publications the broker has not acknowledged yet.
    pub fn unacked(&self) -> u32 {
        self.unacked
    }

    /// When [`Client::poll`] next has something to do.
    pub fn deadline(&self, cfg: &Config<'_>) -> Option<u64> {
        match self.state {
            State::Off | State::Connecting => None,
            State::Backoff { until_ms } => Some(until_ms),
            State::AwaitConnAck { since_ms } | State::AwaitSubAck { since_ms, .. } => {
                Some(since_ms + ANSWER_TIMEOUT_MS)
            }
            State::Ready if cfg.keep_alive_s == 0 => None,
            State::Ready => Some(match self.ping_sent_ms {
                Some(at) => at + keep_alive_ms(cfg),
                None => self.last_sent_ms + keep_alive_ms(cfg),
            }),
        }
    }

    /// Starts the session: connects now.
    pub fn start<O: Output>(&mut self, cfg: &Config<'_>, out: &mut O) {
        if self.state == State::Off {
            self.connect(cfg, out);
        }
    }

    fn connect<O: Output>(&mut self, cfg: &Config<'_>, out: &mut O) {
        self.attempt += 1;
        self.state = State::Connecting;
        out.event(Event::Connecting { attempt: self.attempt });
        out.connect(cfg.broker);
    }

    fn id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// The TCP connection is up: CONNECT goes out.
    pub fn connected<O: Output>(&mut self, cfg: &Config<'_>, now_ms: u64, out: &mut O) {
        if self.state != State::Connecting {
            return;
        }
        self.decoder.reset();
        self.ping_sent_ms = None;
        self.unacked = 0;
        let connect = Connect {
            client_id: cfg.client_id,
            keep_alive_s: cfg.keep_alive_s,
            clean_session: true,
            will: cfg.will,
            username: cfg.username,
            password: cfg.password,
        };
        if connect.encode(&mut Bytes(out)).is_err() {
            // Settings too long for MQTT's strings: nothing sensible to retry with.
            out.close();
            self.state = State::Off;
            return out.event(Event::Lost { why: Lost::Refused(2), retry_in_ms: 0 });
        }
        self.last_sent_ms = now_ms;
        self.state = State::AwaitConnAck { since_ms: now_ms };
    }

    /// The TCP connection could not be made.
    pub fn connect_failed<O: Output>(&mut self, now_ms: u64, out: &mut O) {
        if self.state == State::Connecting {
            self.lose(Lost::ConnectFailed, now_ms, false, out);
        }
    }

    /// The connection closed (by the broker, or after [`Output::close`]).
    pub fn closed<O: Output>(&mut self, now_ms: u64, out: &mut O) {
        if matches!(
            self.state,
            State::Connecting | State::AwaitConnAck { .. } | State::AwaitSubAck { .. } | State::Ready
        ) {
            self.lose(Lost::Closed, now_ms, false, out);
        }
    }

    /// Ends the session with `why`; the next attempt waits the back-off, which doubles unless
    /// the session had been ready.
    fn lose<O: Output>(&mut self, why: Lost, now_ms: u64, close: bool, out: &mut O) {
        if close {
            out.close();
        }
        let wait = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
        self.state = State::Backoff { until_ms: now_ms + wait };
        out.event(Event::Lost { why, retry_in_ms: wait });
    }

    /// Bytes from the broker.
    pub fn data<O: Output>(&mut self, cfg: &Config<'_>, mut input: &[u8], now_ms: u64, out: &mut O) {
        while !input.is_empty() {
            let used = self.data_packet(cfg, input, now_ms, out);
            input = &input[used..];
        }
    }

    /// Bytes from the broker up to the end of the first packet they complete, whose events are
    /// out before this returns: how many bytes were taken (all of them when no packet completes,
    /// or when the session is lost). A caller acts on each message before the next is decoded,
    /// so how TCP grouped the broker's packets changes nothing.
    pub fn data_packet<O: Output>(
        &mut self,
        cfg: &Config<'_>,
        input: &[u8],
        now_ms: u64,
        out: &mut O,
    ) -> usize {
        let mut taken = 0;
        while taken < input.len() && self.is_connected() {
            self.decoder.stream_large = cfg.stream_large;
            let (used, packet) = self.decoder.feed(&input[taken..]);
            taken += used;
            let Some(packet) = packet else { continue };
            let mut reply = Reply::None;
            let outcome = match packet {
                Err(e) => Err(Lost::Protocol(e)),
                Ok(p) => step(&mut self.state, p, &mut reply, out),
            };
            if let Err(why) = outcome {
                self.lose(why, now_ms, true, out);
                return input.len();
            }
            match reply {
                Reply::None => {}
                Reply::PubAck(id) => {
                    packet::puback(&mut Bytes(out), id);
                    self.last_sent_ms = now_ms;
                }
                // No command topic: nothing to subscribe to (Homie 1.x with OTA off).
                Reply::Subscribe if cfg.command_topic.is_empty() => {
                    self.state = State::Ready;
                    self.backoff_ms = BACKOFF_MIN_MS;
                    out.event(Event::Ready);
                }
                Reply::Subscribe => {
                    let id = self.id();
                    if packet::subscribe(&mut Bytes(out), id, cfg.command_topic, QoS::AtLeastOnce).is_err() {
                        self.lose(Lost::SubscribeRefused, now_ms, true, out);
                        return input.len();
                    }
                    self.last_sent_ms = now_ms;
                    self.state = State::AwaitSubAck { since_ms: now_ms, id };
                }
                Reply::Ready => {
                    self.backoff_ms = BACKOFF_MIN_MS;
                    out.event(Event::Ready);
                }
                Reply::Acked => self.unacked = self.unacked.saturating_sub(1),
                Reply::Pong => self.ping_sent_ms = None,
            }
            return taken;
        }
        input.len()
    }

    /// Publishes `payload` on `topic`; returns the packet id of a QoS 1 publication.
    pub fn publish<O: Output>(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        now_ms: u64,
        out: &mut O,
    ) -> Result<Option<u16>, PublishError> {
        if self.state != State::Ready {
            return Err(PublishError::NotConnected);
        }
        // This client never publishes at QoS 2 (it has no PUBREC/PUBREL flow).
        let qos = if qos == QoS::ExactlyOnce { QoS::AtLeastOnce } else { qos };
        let id = if qos == QoS::AtMostOnce { 0 } else { self.id() };
        packet::publish(&mut Bytes(out), topic, payload, qos, retain, id)?;
        self.last_sent_ms = now_ms;
        if qos == QoS::AtMostOnce {
            return Ok(None);
        }
        self.unacked += 1;
        Ok(Some(id))
    }

    /// Ends the session cleanly (DISCONNECT: the broker drops the will).
    pub fn stop<O: Output>(&mut self, out: &mut O) {
        if self.is_connected() {
            packet::disconnect(&mut Bytes(out));
            out.close();
        }
        self.state = State::Off;
    }

    /// Time passed: reconnect after the back-off, give up on a broker that does not answer,
    /// ping when nothing was sent for the keep-alive, drop a broker that does not pong.
    pub fn poll<O: Output>(&mut self, cfg: &Config<'_>, now_ms: u64, out: &mut O) {
        match self.state {
            State::Backoff { until_ms } if now_ms >= until_ms => self.connect(cfg, out),
            State::AwaitConnAck { since_ms } | State::AwaitSubAck { since_ms, .. }
                if now_ms >= since_ms + ANSWER_TIMEOUT_MS =>
            {
                self.lose(Lost::NoAnswer, now_ms, true, out)
            }
            State::Ready if cfg.keep_alive_s > 0 => {
                let keep_alive = keep_alive_ms(cfg);
                match self.ping_sent_ms {
                    Some(at) if now_ms >= at + keep_alive => self.lose(Lost::PingTimeout, now_ms, true, out),
                    None if now_ms >= self.last_sent_ms + keep_alive => {
                        packet::pingreq(&mut Bytes(out));
                        self.last_sent_ms = now_ms;
                        self.ping_sent_ms = Some(now_ms);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn keep_alive_ms(cfg: &Config<'_>) -> u64 {
    cfg.keep_alive_s as u64 * 1000
}

/// What the client answers a packet with, once the packet's borrow of the decoder is over.
enum Reply {
    None,
    PubAck(u16),
    Subscribe,
    Ready,
    Acked,
    Pong,
}

/// One packet from the broker in `state`.
fn step<O: Output>(state: &mut State, p: Incoming<'_>, reply: &mut Reply, out: &mut O) -> Result<(), Lost> {
    match (*state, p) {
        (State::AwaitConnAck { .. }, Incoming::ConnAck { code: 0, .. }) => *reply = Reply::Subscribe,
        (State::AwaitConnAck { .. }, Incoming::ConnAck { code, .. }) => return Err(Lost::Refused(code)),
        (State::AwaitConnAck { .. }, _) => {
            // §3.2: the first packet from the server is CONNACK.
            return Err(Lost::Protocol(ProtocolError::UnexpectedType(packet_kind(&p))));
        }
        (State::AwaitSubAck { id, .. }, Incoming::SubAck { id: got, codes }) if got == id => {
            if codes[0] & 0x80 != 0 {
                return Err(Lost::SubscribeRefused);
            }
            *state = State::Ready;
            *reply = Reply::Ready;
        }
        (_, Incoming::ConnAck { .. }) => {
            return Err(Lost::Protocol(ProtocolError::UnexpectedType(packet::kind::CONNACK)));
        }
        (_, Incoming::Publish { qos: QoS::ExactlyOnce, .. }) => {
            return Err(Lost::Protocol(ProtocolError::QoS));
        }
        (_, Incoming::Publish { topic, payload, retain, id, .. }) => {
            out.event(Event::Message { topic, payload, retain });
            if let Some(id) = id {
                *reply = Reply::PubAck(id);
            }
        }
        (_, Incoming::PublishPiece { qos: QoS::ExactlyOnce, .. }) => {
            return Err(Lost::Protocol(ProtocolError::QoS));
        }
        (_, Incoming::PublishPiece { topic, retain, id, offset, total, piece, .. }) => {
            out.event(Event::Piece { topic, retain, offset, total, piece });
            // Acknowledged once all of it is taken, as the whole message is.
            if let Some(id) = id
                && offset + piece.len() as u32 == total
            {
                *reply = Reply::PubAck(id);
            }
        }
        (_, Incoming::Oversized { kind: packet::kind::PUBLISH, len }) => {
            // Dropped whole: its packet id (QoS 1) is lost with it, so the broker re-sends it
            // on a new session at most; this one goes on.
            out.event(Event::Dropped { len });
        }
        (_, Incoming::Oversized { kind, .. }) => {
            return Err(Lost::Protocol(ProtocolError::UnexpectedType(kind)));
        }
        (_, Incoming::PubAck { id }) => {
            out.event(Event::Published { id });
            *reply = Reply::Acked;
        }
        (_, Incoming::PingResp) => *reply = Reply::Pong,
        (_, Incoming::SubAck { .. } | Incoming::UnsubAck { .. }) => {}
        (_, Incoming::PubRec { .. } | Incoming::PubRel { .. } | Incoming::PubComp { .. }) => {
            return Err(Lost::Protocol(ProtocolError::QoS));
        }
    }
    Ok(())
}

fn packet_kind(p: &Incoming<'_>) -> u8 {
    use packet::kind;
    match p {
        Incoming::ConnAck { .. } => kind::CONNACK,
        Incoming::Publish { .. } => kind::PUBLISH,
        Incoming::PubAck { .. } => kind::PUBACK,
        Incoming::PubRec { .. } => kind::PUBREC,
        Incoming::PubRel { .. } => kind::PUBREL,
        Incoming::PubComp { .. } => kind::PUBCOMP,
        Incoming::SubAck { .. } => kind::SUBACK,
        Incoming::UnsubAck { .. } => kind::UNSUBACK,
        Incoming::PingResp => kind::PINGRESP,
        Incoming::Oversized { kind, .. } => *kind,
        Incoming::PublishPiece { .. } => kind::PUBLISH,
    }
}
