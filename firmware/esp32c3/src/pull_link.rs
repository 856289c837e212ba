//! The pull path's sockets on smoltcp: a TCP client to the MQTT broker and one to the firmware
//! server. `ota-core`'s agent (`proto::mqtt_pull`) decides everything; this module opens the
//! connections it asks for, moves its bytes, tells it when a connection came up or went, and
//! gives it the clock. Host names are not resolved (no DNS here): a URL names an IPv4 address.

use crate::net::now_ms;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use esp_storage::FlashStorage;
use ota_core::log::LogEvent;
use ota_core::proto::http_pull::{ConnectError, Endpoint};
use ota_core::proto::mqtt_pull::{Agent, Link, Output, Settings};
use ota_core::session::{Session, Target};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};

/// How long a connection may take to come up (`esp_http_client`'s and the MQTT client's
/// network timeout order of magnitude).
const CONNECT_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(3);
/// Local ports of the device's connections (a fresh one per connection).
const EPHEMERAL: core::ops::RangeInclusive<u16> = 40000..=48000;
/// How long a completed pull waits for its last status to leave before the restart.
const REBOOT_GRACE_MS: u64 = 500;

/// Bytes waiting for a socket: MQTT packets and HTTP requests are short, statuses a few hundred
/// bytes; 2 KiB is never reached while the sockets drain between polls.
struct Outbox {
    bytes: [u8; 2048],
    len: usize,
}

impl Outbox {
    const fn new() -> Self {
        Outbox { bytes: [0; 2048], len: 0 }
    }
    fn push(&mut self, b: &[u8]) {
        let n = b.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
    fn drain_into(&mut self, socket: &mut tcp::Socket<'_>) {
        if self.len > 0
            && let Ok(n) = socket.send_slice(&self.bytes[..self.len])
        {
            self.bytes.copy_within(n..self.len, 0);
            self.len -= n;
        }
    }
}

/// One of the two connections.
struct Conn {
    handle: SocketHandle,
    out: Outbox,
    /// Asked for and not up yet.
    connecting: bool,
    /// Up (the agent was told).
    up: bool,
    /// Close once `out` is sent.
    closing: bool,
}

impl Conn {
    fn new(handle: SocketHandle) -> Self {
        Conn { handle, out: Outbox::new(), connecting: false, up: false, closing: false }
    }
}

/// What one call of the agent asked for.
struct Asked<'l, L: FnMut(&LogEvent<'_>)> {
    broker: &'l mut Conn,
    server: &'l mut Conn,
    connect_broker: Option<SocketAddr>,
    connect_server: Option<Result<IpEndpoint, ConnectError>>,
    reboot_since: &'l mut Option<u64>,
    log: &'l mut L,
}

impl<L: FnMut(&LogEvent<'_>)> Output for Asked<'_, L> {
    fn connect_broker(&mut self, to: SocketAddr) {
        self.connect_broker = Some(to);
    }
    fn connect_server(&mut self, to: Endpoint<'_>) {
        // TCP only: for https, ota-core's TLS link runs over it inside the agent. No DNS here:
        // URLs name IPv4 addresses.
        self.connect_server = Some(match to.host.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(IpEndpoint::new(IpAddress::Ipv4(ip), to.port)),
            Err(_) => Err(ConnectError::Dns),
        });
    }
    fn send(&mut self, link: Link, bytes: &[u8]) {
        match link {
            Link::Broker => self.broker.out.push(bytes),
            Link::Server => self.server.out.push(bytes),
        }
    }
    fn close(&mut self, link: Link) {
        match link {
            Link::Broker => self.broker.closing = true,
            Link::Server => self.server.closing = true,
        }
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        (self.log)(line);
    }
}

pub struct PullLink {
    broker: Conn,
    server: Conn,
    session: Session<Agent>,
    started: bool,
    next_port: u16,
    reboot_since: Option<u64>,
}

impl PullLink {
    pub fn new(broker: SocketHandle, server: SocketHandle, tls_key: [u8; 32]) -> Self {
        let mut agent = Agent::default();
        agent.set_tls_key(tls_key);
        PullLink {
            broker: Conn::new(broker),
            server: Conn::new(server),
            session: Session::new(agent),
            started: false,
            next_port: *EPHEMERAL.start(),
            reboot_since: None,
        }
    }

    /// A pull holds the device (the other paths wait).
    pub fn busy(&self) -> bool {
        self.session.server.pulling()
    }

    fn port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == *EPHEMERAL.end() { *EPHEMERAL.start() } else { p + 1 };
        p
    }

    /// One pass: both connections and the timers. True when the device must restart into the
    /// new image now.
    #[allow(clippy::too_many_arguments)]
    pub fn poll<L: FnMut(&LogEvent<'_>)>(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        flash: &mut FlashStorage<'_>,
        target: &Target<'_>,
        settings: &Settings<'_>,
        other_update: bool,
        log: &mut L,
    ) -> bool {
        let now = now_ms();
        let (bp, sp) = (self.port(), self.port());
        let PullLink { broker, server, session, started, reboot_since, .. } = self;
        let first = !*started;
        *started = true;
        let mut asked = Asked {
            broker,
            server,
            connect_broker: None,
            connect_server: None,
            reboot_since,
            log: &mut *log,
        };
        session.with(flash, target, |agent, sink| {
            if first {
                agent.start(settings, &mut asked);
            }
            // The broker.
            let b = sockets.get_mut::<tcp::Socket>(asked.broker.handle);
            if asked.broker.connecting {
                if b.state() == tcp::State::Established {
                    // Up: the session keeps its own timeouts (keep-alive, the pull's stall limit).
                    b.set_timeout(None);
                    asked.broker.connecting = false;
                    asked.broker.up = true;
                    agent.broker_connected(settings, now, &mut asked);
                } else if !b.is_open() {
                    asked.broker.connecting = false;
                    agent.broker_connect_failed(now, &mut asked);
                }
            } else if asked.broker.up {
                if b.can_recv() {
                    let mut buf = [0u8; 1024];
                    if let Ok(n) = b.recv_slice(&mut buf) {
                        agent.broker_data(settings, &buf[..n], now, other_update, sink, &mut asked);
                    }
                } else if !b.may_recv() || !b.is_open() {
                    asked.broker.up = false;
                    b.abort();
                    agent.broker_closed(now, &mut asked);
                }
            }
            // The firmware server.
            let s = sockets.get_mut::<tcp::Socket>(asked.server.handle);
            if asked.server.connecting {
                if s.state() == tcp::State::Established {
                    s.set_timeout(None);
                    asked.server.connecting = false;
                    asked.server.up = true;
                    agent.server_connected(settings, now, sink, &mut asked);
                } else if !s.is_open() {
                    asked.server.connecting = false;
                    agent.server_connect_failed(settings, ConnectError::Refused, now, sink, &mut asked);
                }
            } else if asked.server.up && !asked.server.closing {
                if s.can_recv() {
                    let mut buf = [0u8; 2048];
                    if let Ok(n) = s.recv_slice(&mut buf) {
                        agent.server_data(settings, &buf[..n], now, sink, &mut asked);
                    }
                } else if !s.may_recv() || !s.is_open() {
                    asked.server.up = false;
                    agent.server_closed(settings, now, sink, &mut asked);
                }
            }
            agent.poll(settings, now, sink, &mut asked);
            // Connections asked for in this pass.
            if let Some(to) = asked.connect_broker.take() {
                let b = sockets.get_mut::<tcp::Socket>(asked.broker.handle);
                b.abort();
                b.set_timeout(Some(CONNECT_TIMEOUT));
                asked.broker.out.len = 0;
                asked.broker.up = false;
                asked.broker.closing = false;
                let started = match to.ip() {
                    IpAddr::V4(v4) => {
                        b.connect(iface.context(), IpEndpoint::new(IpAddress::Ipv4(v4), to.port()), bp)
                    }
                    IpAddr::V6(_) => Err(tcp::ConnectError::Unaddressable),
                };
                match started {
                    Ok(()) => asked.broker.connecting = true,
                    Err(_) => agent.broker_connect_failed(now, &mut asked),
                }
            }
            if let Some(to) = asked.connect_server.take() {
                let s = sockets.get_mut::<tcp::Socket>(asked.server.handle);
                s.abort();
                s.set_timeout(Some(CONNECT_TIMEOUT));
                asked.server.out.len = 0;
                asked.server.up = false;
                asked.server.closing = false;
                match to.map(|ep| s.connect(iface.context(), ep, sp).map_err(|_| ConnectError::Refused)) {
                    Ok(Ok(())) => asked.server.connecting = true,
                    Ok(Err(why)) | Err(why) => {
                        agent.server_connect_failed(settings, why, now, sink, &mut asked)
                    }
                }
            }
            // What the agent wants sent, and closes once it is out.
            for conn in [&mut *asked.broker, &mut *asked.server] {
                let socket = sockets.get_mut::<tcp::Socket>(conn.handle);
                conn.out.drain_into(socket);
                if conn.closing && conn.out.len == 0 && socket.send_queue() == 0 {
                    socket.close();
                    conn.closing = false;
                    conn.up = false;
                }
            }
            // A completed pull: the device restarts once its last bytes (the `done` status) are
            // out, as `esp_restart()` follows `esp_https_ota()` in the seed; a broker that does
            // not take them is not waited for long.
            if !agent.reboot_requested() {
                return false;
            }
            let since = *asked.reboot_since.get_or_insert(now);
            let b = sockets.get::<tcp::Socket>(asked.broker.handle);
            let sent = !asked.broker.up || (asked.broker.out.len == 0 && b.send_queue() == 0);
            sent || now >= since + REBOOT_GRACE_MS
        })
    }
}
