//! ArduinoOTA's sockets on smoltcp: a UDP socket on port 3232 for invitations, and a TCP client
//! socket for the device's back-connection to the uploader. `ota-core`'s ArduinoOTA state
//! machine decides everything; this module only moves its datagrams, bytes and connection
//! events, and gives it the clock.

use crate::net::{HwRng, Pending, now_ms};
use core::net::{IpAddr, SocketAddr};
use esp_storage::FlashStorage;
use ota_core::log::LogEvent;
use ota_core::partition::{Partition, PartitionTable};
use ota_core::proto::arduino::{self, Event, Output, Server};
use ota_core::update::FlashSink;
use ota_core::writer::{OtaConfig, OtaUpdate};
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
        if let Some(line) = e.log_event() {
            (self.log)(&line);
        }
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

/// Where the update goes: the device's flash, through the Arduino library's way of writing.
pub struct Target<'a, 'd> {
    pub flash: &'a mut FlashStorage<'d>,
    pub table: &'a PartitionTable,
    pub running: Partition,
    pub ota: OtaConfig,
}

pub struct ArduinoLink {
    udp: SocketHandle,
    tcp: SocketHandle,
    server: Server,
    update: Option<OtaUpdate>,
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
            server: Server::new(config),
            update: None,
            pending: Pending::new(),
            connecting: false,
            closing: false,
            closing_since: None,
            next_port: *EPHEMERAL.start(),
        }
    }

    /// An ArduinoOTA update holds the device (ESPHome waits, as on an ESP32 running both).
    pub fn busy(&self) -> bool {
        self.server.is_busy()
    }

    /// One pass: invitations, the back-connection, timers. True when the device must restart
    /// into the new image now.
    #[allow(clippy::too_many_arguments)]
    pub fn poll<L: FnMut(&LogEvent<'_>)>(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        target: &mut Target<'_, '_>,
        rng: &mut HwRng,
        esphome_busy: bool,
        log: &mut L,
    ) -> bool {
        let now = now_ms();
        let mut asked =
            Asked { datagram: None, connect: None, close: false, pending: &mut self.pending, log: &mut *log };
        let mut sink = FlashSink::new(target.flash, target.table, target.running, target.ota, &mut self.update)
            .adapted(arduino::library_writes);
        // Invitations (and authentication answers).
        let udp = sockets.get_mut::<udp::Socket>(self.udp);
        if let Ok((data, meta)) = udp.recv() {
            self.server.datagram(socket_addr(meta.endpoint), data, esphome_busy, &mut sink, rng, &mut asked);
        }
        if let Some((to, buf, n)) = asked.datagram.take()
            && let Some(ep) = endpoint(to)
        {
            // A reply that does not fit the socket is lost, as UDP loses it; the uploader retries.
            let _ = sockets.get_mut::<udp::Socket>(self.udp).send_slice(&buf[..n], ep);
        }
        // The back-connection.
        let tcp = sockets.get_mut::<tcp::Socket>(self.tcp);
        if let Some(to) = asked.connect.take() {
            let local = self.next_port;
            self.next_port = if local == *EPHEMERAL.end() { *EPHEMERAL.start() } else { local + 1 };
            tcp.abort();
            tcp.set_timeout(Some(CONNECT_TIMEOUT));
            let started = match endpoint(to) {
                Some(ep) => tcp.connect(iface.context(), ep, local).is_ok(),
                None => false,
            };
            if started {
                self.connecting = true;
            } else {
                self.server.connect_failed(&mut sink, &mut asked);
            }
        }
        let tcp = sockets.get_mut::<tcp::Socket>(self.tcp);
        if self.connecting {
            if tcp.state() == tcp::State::Established {
                self.connecting = false;
                // The data phase keeps its own timeouts (1 s and three re-sent counts).
                tcp.set_timeout(None);
                self.server.connected(now);
            } else if !tcp.is_open() {
                self.connecting = false;
                self.server.connect_failed(&mut sink, &mut asked);
            }
        } else if self.server.is_busy() && !self.closing {
            if tcp.can_recv() {
                let server = &mut self.server;
                let _ = tcp.recv(|data| {
                    server.data(data, now, &mut sink, &mut asked);
                    (data.len(), ())
                });
            } else if !tcp.may_recv() || !tcp.is_open() {
                self.server.closed(&mut sink, &mut asked);
            } else {
                self.server.poll(now, &mut sink, &mut asked);
            }
        }
        if asked.close {
            self.closing = true;
        }
        let tcp = sockets.get_mut::<tcp::Socket>(self.tcp);
        if self.pending.len() > 0
            && let Ok(n) = tcp.send_slice(self.pending.bytes())
        {
            self.pending.consume(n);
        }
        if self.closing && self.pending.len() == 0 && tcp.send_queue() == 0 {
            tcp.close();
            let since = *self.closing_since.get_or_insert(now);
            if !tcp.is_open() || tcp.state() == tcp::State::TimeWait || now >= since + CLOSE_GRACE_MS {
                self.closing = false;
                self.closing_since = None;
                let reboot = self.server.reboot_requested();
                let mut sink =
                    FlashSink::new(target.flash, target.table, target.running, target.ota, &mut self.update)
                        .adapted(arduino::library_writes);
                let mut asked = Asked {
                    datagram: None,
                    connect: None,
                    close: false,
                    pending: &mut self.pending,
                    log: &mut *log,
                };
                self.server.closed(&mut sink, &mut asked);
                return reboot;
            }
        }
        false
    }
}
