//! ArduinoOTA's sockets on smoltcp: a UDP socket on port 3232 for invitations, and a TCP client
//! socket for the device's back-connection to the uploader. `ota-core`'s ArduinoOTA state
//! machine decides everything; this module only moves its datagrams, bytes and connection
//! events, and gives it the clock.

use crate::net::{HwRng, Pending, now_ms};
use core::net::{IpAddr, SocketAddr};
use esp_storage::FlashStorage;
use ota_core::log::LogEvent;
use ota_core::proto::arduino::{self, Event, Output, Server};
use ota_core::session::{Session, Target};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};

/// The longest datagram the device sends (`AUTH ` and a 64-character nonce).
const DATAGRAM_MAX: usize = 80;
/// arduino-esp32's `WiFiClient` gives up connecting after 3 s.
const CONNECT_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(3);
/// How long a close may take before the device goes on (it reboots after a completed update).
const CLOSE_GRACE_MS: u64 = 300;
/// Local ports of the back-connection (a fresh one per update).
const EPHEMERAL: core::ops::RangeInclusive<u16> = 49152..=65535;

/// What one call of the state machine asked for.
struct Asked<'l, L: FnMut(&LogEvent<'_>)> {
    datagram: Option<(SocketAddr, [u8; DATAGRAM_MAX], usize)>,
    connect: Option<SocketAddr>,
    close: bool,
    pending: &'l mut Pending,
    log: &'l mut L,
}

impl<L: FnMut(&LogEvent<'_>)> Output for Asked<'_, L> {
    fn datagram(&mut self, to: SocketAddr, bytes: &[u8]) {
        let mut buf = [0u8; DATAGRAM_MAX];
        let n = bytes.len().min(DATAGRAM_MAX);
        buf[..n].copy_from_slice(&bytes[..n]);
        self.datagram = Some((to, buf, n));
    }
    fn connect(&mut self, to: SocketAddr) {
        self.connect = Some(to);
    }
    fn send(&mut self, bytes: &[u8]) {
        self.pending.push(bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn event(&mut self, e: Event) {
        e.log(&mut |line: &LogEvent<'_>| (self.log)(line));
    }
}

fn endpoint(to: SocketAddr) -> Option<IpEndpoint> {
    match to.ip() {
        IpAddr::V4(v4) => Some(IpEndpoint::new(IpAddress::Ipv4(v4), to.port())),
        IpAddr::V6(_) => None,
    }
}

fn socket_addr(ep: IpEndpoint) -> SocketAddr {
    let IpAddress::Ipv4(v4) = ep.addr;
    SocketAddr::new(IpAddr::V4(v4), ep.port)
}

pub struct ArduinoLink {
    udp: SocketHandle,
    tcp: SocketHandle,
    session: Session<Server>,
    pending: Pending,
    /// The back-connection was asked for and is not up yet.
    connecting: bool,
    /// Close the back-connection once `pending` is out.
    closing: bool,
    /// When the close was started: a peer that never finishes it is given up after a grace.
    closing_since: Option<u64>,
    next_port: u16,
}

impl ArduinoLink {
    pub fn new(udp: SocketHandle, tcp: SocketHandle, config: arduino::Config<'_>) -> Self {
        ArduinoLink {
            udp,
            tcp,
            session: Session::new(Server::new(config)),
            pending: Pending::new(),
            connecting: false,
            closing: false,
            closing_since: None,
            next_port: *EPHEMERAL.start(),
        }
    }

    /// An ArduinoOTA update holds the device (ESPHome waits, as on an ESP32 running both).
    pub fn busy(&self) -> bool {
        self.session.server.is_busy()
    }

    /// One pass: invitations, the back-connection, timers. True when the device must restart
    /// into the new image now.
    #[allow(clippy::too_many_arguments)]
    pub fn poll<L: FnMut(&LogEvent<'_>)>(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        flash: &mut FlashStorage<'_>,
        target: &Target<'_>,
        rng: &mut HwRng,
        esphome_busy: bool,
        log: &mut L,
    ) -> bool {
        let now = now_ms();
        let ArduinoLink { udp, tcp, session, pending, connecting, closing, closing_since, next_port } = self;
        let (udp, tcp) = (*udp, *tcp);
        let mut asked = Asked { datagram: None, connect: None, close: false, pending, log: &mut *log };
        session.with(flash, target, |server, sink| {
            // Invitations (and authentication answers).
            if let Ok((data, meta)) = sockets.get_mut::<udp::Socket>(udp).recv() {
                server.datagram(socket_addr(meta.endpoint), data, esphome_busy, sink, rng, &mut asked);
            }
            if let Some((to, buf, n)) = asked.datagram.take()
                && let Some(ep) = endpoint(to)
            {
                // A reply that does not fit the socket is lost, as UDP loses it; the uploader
                // retries.
                let _ = sockets.get_mut::<udp::Socket>(udp).send_slice(&buf[..n], ep);
            }
            // The back-connection.
            let socket = sockets.get_mut::<tcp::Socket>(tcp);
            if let Some(to) = asked.connect.take() {
                let local = *next_port;
                *next_port = if local == *EPHEMERAL.end() { *EPHEMERAL.start() } else { local + 1 };
                socket.abort();
                socket.set_timeout(Some(CONNECT_TIMEOUT));
                let started = match endpoint(to) {
                    Some(ep) => socket.connect(iface.context(), ep, local).is_ok(),
                    None => false,
                };
                if started {
                    *connecting = true;
                } else {
                    server.connect_failed(sink, &mut asked);
                }
            }
            if *connecting {
                if socket.state() == tcp::State::Established {
                    *connecting = false;
                    // The data phase keeps its own timeouts (1 s and three re-sent counts).
                    socket.set_timeout(None);
                    server.connected(now);
                } else if !socket.is_open() {
                    *connecting = false;
                    server.connect_failed(sink, &mut asked);
                }
            } else if server.is_busy() && !*closing {
                if socket.can_recv() {
                    let _ = socket.recv(|data| {
                        server.data(data, now, sink, &mut asked);
                        (data.len(), ())
                    });
                } else if !socket.may_recv() || !socket.is_open() {
                    server.closed(sink, &mut asked);
                } else {
                    server.poll(now, sink, &mut asked);
                }
            }
            if asked.close {
                *closing = true;
            }
            let pending = &mut *asked.pending;
            if pending.len() > 0
                && let Ok(n) = socket.send_slice(pending.bytes())
            {
                pending.consume(n);
            }
            if *closing && pending.len() == 0 && socket.send_queue() == 0 {
                socket.close();
                let since = *closing_since.get_or_insert(now);
                if !socket.is_open()
                    || socket.state() == tcp::State::TimeWait
                    || now >= since + CLOSE_GRACE_MS
                {
                    *closing = false;
                    *closing_since = None;
                    let reboot = server.reboot_requested();
                    server.closed(sink, &mut asked);
                    return reboot;
                }
            }
            false
        })
    }
}
