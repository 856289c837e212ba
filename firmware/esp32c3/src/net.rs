//! The device's network on smoltcp (QEMU's open_eth MAC, or Wi-Fi on a board), pumped for
//! `ota-core`'s device application (`ota_core::app`). This module knows no update path: the app
//! names its links (`LinkId`) and asks to listen, bind, connect, send and close; this loop does
//! it on a fixed pool of sockets and tells the app what happened, with the clock.
//! A tight polled loop: an acknowledgement waits for nothing but the next poll.

use esp_storage::FlashStorage;
use ota_core::app::{App, Env};
use ota_core::io::{ConnectFailure, Entropy, Input, Io, LinkId, Remote};
use ota_core::log::LogEvent;
use ota_core::wifi::NetLine;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::Device;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

/// How the device gets its IPv4 address.
#[derive(Clone, Copy)]
pub enum Addressing {
    /// Fixed, as on QEMU's user-mode network (slirp gives the guest 10.0.2.15/24 and is itself
    /// the gateway, 10.0.2.2; `hostfwd` maps a host port to port 3232 here). Wi-Fi builds use
    /// DHCP only, for now.
    #[cfg_attr(feature = "wifi", allow(dead_code))]
    Static { ip: [u8; 4], prefix: u8, gateway: [u8; 4] },
    /// From the network's DHCP server (a board on Wi-Fi).
    #[cfg(feature = "wifi")]
    Dhcp,
}

pub struct NetConfig {
    pub mac: [u8; 6],
    pub addressing: Addressing,
}

/// Keeps the link up between polls (Wi-Fi rejoins a network it lost); a wired link has
/// nothing to do.
pub trait LinkWatch {
    fn check(&mut self, log: &mut dyn FnMut(&LogEvent<'_>));
}

impl LinkWatch for () {
    fn check(&mut self, _log: &mut dyn FnMut(&LogEvent<'_>)) {}
}

/// Asks who has the gateway's address, once at start-up. The answer does not matter; the
/// question tells the network (QEMU's slirp, a router) where this device is. Without it slirp
/// holds the first packet of the first connection while it resolves the address and sends it
/// only at its next poll, up to half a second later, on every boot.
fn announce<D: Device>(dev: &mut D, mac: [u8; 6], ip: [u8; 4], gateway: [u8; 4]) {
    use smoltcp::phy::TxToken;
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr};
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: Ipv4Address::from_octets(ip),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: Ipv4Address::from_octets(gateway),
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let Some(tx) = dev.transmit(now()) else { return };
    tx.consume(eth.buffer_len() + arp.buffer_len(), |buf| {
        let mut frame = EthernetFrame::new_unchecked(buf);
        eth.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    });
}

fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(
        esp_hal::time::Instant::now().duration_since_epoch().as_micros() as i64
    )
}

/// Milliseconds since boot (the app's clock).
pub fn now_ms() -> u64 {
    esp_hal::time::Instant::now().duration_since_epoch().as_millis()
}

/// Randomness from the chip's hardware random number generator.
pub struct HwRng(pub esp_hal::rng::Rng);

impl Entropy for HwRng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.read(buf);
    }
}

/// How long a connection may take to come up (the network timeouts of the clients an ESP32
/// app links, lwIP's sockets under them, are of this order).
const CONNECT_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(3);
/// How long a closing connection may keep its socket before it is dropped, as lwIP bounds its
/// closing states.
const CLOSING_LIMIT: esp_hal::time::Duration = esp_hal::time::Duration::from_secs(2);
/// How long a completed update waits for its last bytes to leave before the restart.
const REBOOT_GRACE: esp_hal::time::Duration = esp_hal::time::Duration::from_millis(500);
/// Local ports of the device's own connections (a fresh one per connection).
const EPHEMERAL: core::ops::RangeInclusive<u16> = 49152..=65535;
/// How many sockets a listener has: one for the connection being served, one for the next
/// client, whose bytes wait in its buffer (lwIP's `listen(1)`).
const PER_LISTENER: usize = 2;
/// Two listeners: ESPHome's (the first the app opens, with the larger buffers) and the web
/// server's (the upload form, when provisioned).
const LISTENERS: usize = 2;
/// Sockets for the connections the app opens itself. Three: a fourth (10 KiB) overflowed the
/// stack under QEMU with the app of four paths (TLS handshakes and uploads through a client
/// socket failed). An app that wants a fourth connection at once gets the socket that has been
/// closing longest, or `ConnectFailed(Refused)`; the paths' docs (docs/update-paths.md) say which of them
/// can want that.
const CLIENTS: usize = 3;
const LINKS: usize = LISTENERS + 1 + LISTENERS * PER_LISTENER + CLIENTS;

/// What the app sends and a socket has not taken yet.
struct Outbox {
    bytes: [u8; 2048],
    len: usize,
}

impl Outbox {
    const fn new() -> Self {
        Outbox { bytes: [0; 2048], len: 0 }
    }

    /// Queues `bytes`; returns how many did not fit. A path sends a few bytes per piece it
    /// receives, short requests and statuses, and pages that fit a web socket's 4 KiB window
    /// (they go to the socket first); this holds what the window has no room for yet.
    fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        bytes.len() - n
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

/// A TCP connection the app holds.
struct Conn {
    id: LinkId,
    handle: SocketHandle,
    out: Outbox,
    /// Asked for and not up yet.
    connecting: bool,
    /// `Closed` was told: nothing more is read.
    gone: bool,
    /// Close once `out` is sent.
    closing: bool,
}

/// One entry of the fixed link table (it stays in place, so a connection's outbox in it costs
/// nothing to move).
#[allow(clippy::large_enum_variant)]
enum Slot {
    Free,
    Listener { id: LinkId, port: u16, sockets: [SocketHandle; PER_LISTENER] },
    Udp { id: LinkId, handle: SocketHandle },
    Conn(Conn),
}

/// The app's links and the sockets behind them.
struct Links {
    slots: [Slot; LINKS],
    /// Free sockets for listeners (in groups of [`PER_LISTENER`]), UDP and clients.
    listen_pool: [Option<[SocketHandle; PER_LISTENER]>; LISTENERS],
    udp_pool: Option<SocketHandle>,
    client_pool: [Option<SocketHandle>; CLIENTS],
    /// Sockets of closed connections that are still closing, and since when: a listener's
    /// socket listens again, a client socket goes back to the pool, once it is closed.
    closing: [Option<(SocketHandle, esp_hal::time::Instant)>; LISTENERS * PER_LISTENER + CLIENTS],
    next_port: u16,
    /// Told on the next pass: a connect that could not start.
    failed: Option<(LinkId, ConnectFailure)>,
}

impl Links {
    /// The app's link `id`. A connection the app closed is no longer its link, though its slot
    /// stays until the socket has sent what was queued: the app may already have a new link
    /// under the same id (a path's next client), and that one must get the bytes sent to `id`.
    fn find(&mut self, id: LinkId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| match s {
            Slot::Free => false,
            Slot::Listener { id: i, .. } | Slot::Udp { id: i, .. } => *i == id,
            Slot::Conn(c) => c.id == id && !c.closing,
        })
    }

    fn conn(&mut self, id: LinkId) -> Option<&mut Conn> {
        match self.find(id)? {
            Slot::Conn(c) => Some(c),
            _ => None,
        }
    }

    fn put(&mut self, slot: Slot) {
        if let Some(free) = self.slots.iter_mut().find(|s| matches!(s, Slot::Free)) {
            *free = slot;
        }
    }

    fn port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == *EPHEMERAL.end() { *EPHEMERAL.start() } else { p + 1 };
        p
    }

    /// Whether `handle` is one of a listener's sockets (it goes back to listening when freed).
    fn listener_socket(&self, handle: SocketHandle) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Listener { sockets, .. } if sockets.contains(&handle)))
    }

    /// A connection the app closed (or that never came up): its socket is kept apart until it
    /// has closed. The next client is served meanwhile, as lwIP keeps a closing connection
    /// apart from the listening socket.
    fn release(&mut self, handle: SocketHandle) {
        if let Some(free) = self.closing.iter_mut().find(|c| c.is_none()) {
            *free = Some((handle, esp_hal::time::Instant::now()));
        }
    }

    /// A client socket for a new connection: a free one, else the one that has been closing
    /// longest (a peer that keeps its side open, as an HTTP server with keep-alive does, must
    /// not use up the pool; lwIP too reuses its oldest closing PCB).
    fn client_socket(&mut self) -> Option<SocketHandle> {
        if let Some(free) = self.client_pool.iter_mut().find_map(Option::take) {
            return Some(free);
        }
        let listener_socket = |h: SocketHandle| self.listener_socket(h);
        let oldest = (0..self.closing.len())
            .filter_map(|i| self.closing[i].map(|(h, since)| (i, h, since)))
            .filter(|(_, h, _)| !listener_socket(*h))
            .min_by_key(|(_, _, since)| *since)?;
        self.closing[oldest.0] = None;
        Some(oldest.1)
    }

    fn is_closing(&self, handle: SocketHandle) -> bool {
        self.closing.iter().flatten().any(|(h, _)| *h == handle)
    }

    /// Closed sockets go back where they came from; one that does not finish closing in a
    /// while is dropped, as lwIP bounds its closing states.
    fn reclaim(&mut self, sockets: &mut SocketSet<'_>) {
        for i in 0..self.closing.len() {
            let Some((handle, since)) = self.closing[i] else { continue };
            let s = sockets.get_mut::<tcp::Socket>(handle);
            // A listener's socket whose close is done on both sides waits out TIME_WAIT only
            // against stray segments: its listener needs it for the next client (a second tab
            // while the first one's socket stays open), as lwIP reuses TIME_WAIT PCBs.
            let time_wait = s.state() == tcp::State::TimeWait && self.listener_socket(handle);
            if s.is_open() && (time_wait || since.elapsed() > CLOSING_LIMIT) {
                s.abort();
            }
            if s.is_open() {
                continue;
            }
            self.closing[i] = None;
            if !self.listener_socket(handle)
                && let Some(free) = self.client_pool.iter_mut().find(|c| c.is_none())
            {
                *free = Some(handle);
            }
        }
    }
}

/// The app's requests, carried out at once on the sockets.
struct Pump<'a, 's, L: FnMut(&LogEvent<'_>)> {
    iface: &'a mut Interface,
    sockets: &'a mut SocketSet<'s>,
    links: &'a mut Links,
    log: &'a mut L,
}

impl<L: FnMut(&LogEvent<'_>)> Io for Pump<'_, '_, L> {
    fn listen(&mut self, listener: LinkId, port: u16) {
        let Some(sockets) = self.links.listen_pool.iter_mut().find_map(Option::take) else { return };
        for h in sockets {
            // (It cannot fail for a fresh socket and a non-zero port; the loop listens again.)
            let _ = self.sockets.get_mut::<tcp::Socket>(h).listen(port);
        }
        self.links.put(Slot::Listener { id: listener, port, sockets });
    }

    fn bind(&mut self, socket: LinkId, port: u16) {
        let Some(handle) = self.links.udp_pool.take() else { return };
        // (Binding a fresh socket to a non-zero port cannot fail.)
        let _ = self.sockets.get_mut::<udp::Socket>(handle).bind(port);
        self.links.put(Slot::Udp { id: socket, handle });
    }

    fn connect(&mut self, link: LinkId, to: Remote<'_>) {
        self.close(link);
        // No DNS here: a host is an IPv4 address written out.
        let endpoint = match to {
            Remote::Addr(core::net::SocketAddr::V4(a)) => {
                Ok(IpEndpoint::new(IpAddress::Ipv4(*a.ip()), a.port()))
            }
            Remote::Addr(core::net::SocketAddr::V6(_)) => Err(ConnectFailure::Refused),
            Remote::Host { host, port } => host
                .parse::<Ipv4Address>()
                .map(|ip| IpEndpoint::new(IpAddress::Ipv4(ip), port))
                .map_err(|_| ConnectFailure::Dns),
        };
        let Some(handle) = self.links.client_socket() else {
            self.links.failed = Some((link, ConnectFailure::Refused));
            return;
        };
        let local = self.links.port();
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.abort();
        socket.set_timeout(Some(CONNECT_TIMEOUT));
        match endpoint.and_then(|ep| {
            socket.connect(self.iface.context(), ep, local).map_err(|_| ConnectFailure::Refused)
        }) {
            Ok(()) => self.links.put(Slot::Conn(Conn {
                id: link,
                handle,
                out: Outbox::new(),
                connecting: true,
                gone: false,
                closing: false,
            })),
            Err(why) => {
                self.links.release(handle);
                self.links.failed = Some((link, why));
            }
        }
    }

    fn send(&mut self, link: LinkId, bytes: &[u8]) {
        let Some(c) = self.links.conn(link) else { return };
        let socket = self.sockets.get_mut::<tcp::Socket>(c.handle);
        c.out.drain_into(socket);
        let mut rest = bytes;
        // In order: straight into the socket only when nothing waits before these bytes.
        if c.out.len == 0
            && let Ok(n) = socket.send_slice(rest)
        {
            rest = &rest[n..];
        }
        let dropped = c.out.push(rest);
        if dropped > 0 {
            (self.log)(&LogEvent::Module(&NetLine::SendOverflow { dropped: dropped as u32 }));
        }
    }

    fn close(&mut self, link: LinkId) {
        if let Some(c) = self.links.conn(link) {
            c.closing = true;
        }
    }

    fn datagram(&mut self, socket: LinkId, to: core::net::SocketAddr, bytes: &[u8]) {
        let Some(Slot::Udp { handle, .. }) = self.links.find(socket) else { return };
        let core::net::SocketAddr::V4(to) = to else { return };
        let ep = IpEndpoint::new(IpAddress::Ipv4(*to.ip()), to.port());
        // A lost reply is what UDP does; the uploader retries or times out.
        let _ = self.sockets.get_mut::<udp::Socket>(*handle).send_slice(bytes, ep);
    }

    fn log(&mut self, line: &LogEvent<'_>) {
        (self.log)(line);
    }

    /// The harness counts exchanges on the emulator; the chip's log says the same.
    fn exchange_over(&mut self) {}
}

/// Serves the app on `dev` forever; resets into the new image after a completed update.
pub fn serve<D: Device, W: LinkWatch, L: FnMut(&LogEvent<'_>)>(
    dev: &mut D,
    link: &mut W,
    flash: &mut FlashStorage<'_>,
    app: &mut App,
    net: NetConfig,
    rng: &mut HwRng,
    log: &mut L,
) -> ! {
    let mut iface =
        Interface::new(Config::new(HardwareAddress::Ethernet(EthernetAddress(net.mac))), dev, now());
    let mut storage = [SocketStorage::EMPTY; LINKS + 1];
    let mut sockets = SocketSet::new(&mut storage[..]);
    #[cfg(feature = "wifi")]
    let mut dhcp = None;
    match net.addressing {
        Addressing::Static { ip, prefix, gateway } => {
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::new(Ipv4Address::from_octets(ip).into(), prefix));
            });
            let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::from_octets(gateway));
            log(&LogEvent::Module(&NetLine::NetAddress { ip, prefix, dhcp: false }));
        }
        #[cfg(feature = "wifi")]
        Addressing::Dhcp => dhcp = Some(sockets.add(smoltcp::socket::dhcpv4::Socket::new())),
    }
    // A listener's sockets take whole uploads in (8 KiB chunks arrive at once); the client
    // sockets carry downloads and uploads the device makes, and message sessions.
    let (mut rx_a, mut tx_a) = ([0u8; 16 * 1024], [0u8; 2 * 1024]);
    let (mut rx_b, mut tx_b) = ([0u8; 16 * 1024], [0u8; 2 * 1024]);
    let listen = [
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx_a[..]),
            tcp::SocketBuffer::new(&mut tx_a[..]),
        )),
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx_b[..]),
            tcp::SocketBuffer::new(&mut tx_b[..]),
        )),
    ];
    // The second listener's (the web server's): a browser's upload streams in through an 8 KiB
    // window; its answers are pages of up to 4 KiB (ElegantOTA's portal is 3.4 KiB), sent at
    // once: with 2 KiB here and the 2 KiB outbox the portal lost its end and Chromium waited.
    const ANSWER: usize = ota_core::proto::http_server::ANSWER_MAX;
    let (mut rx_c, mut tx_c) = ([0u8; 8 * 1024], [0u8; ANSWER]);
    let (mut rx_d, mut tx_d) = ([0u8; 8 * 1024], [0u8; ANSWER]);
    let listen_web = [
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx_c[..]),
            tcp::SocketBuffer::new(&mut tx_c[..]),
        )),
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx_d[..]),
            tcp::SocketBuffer::new(&mut tx_d[..]),
        )),
    ];
    let mut udp_rx_meta = [udp::PacketMetadata::EMPTY; 4];
    let mut udp_rx = [0u8; 512];
    let mut udp_tx_meta = [udp::PacketMetadata::EMPTY; 4];
    let mut udp_tx = [0u8; 256];
    let udp_handle = sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(&mut udp_rx_meta[..], &mut udp_rx[..]),
        udp::PacketBuffer::new(&mut udp_tx_meta[..], &mut udp_tx[..]),
    ));
    let (mut c0_rx, mut c0_tx) = ([0u8; 8 * 1024], [0u8; 2 * 1024]);
    let (mut c1_rx, mut c1_tx) = ([0u8; 8 * 1024], [0u8; 2 * 1024]);
    let (mut c2_rx, mut c2_tx) = ([0u8; 8 * 1024], [0u8; 2 * 1024]);
    let clients = [
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut c0_rx[..]),
            tcp::SocketBuffer::new(&mut c0_tx[..]),
        )),
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut c1_rx[..]),
            tcp::SocketBuffer::new(&mut c1_tx[..]),
        )),
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut c2_rx[..]),
            tcp::SocketBuffer::new(&mut c2_tx[..]),
        )),
    ];
    let mut links = Links {
        slots: core::array::from_fn(|_| Slot::Free),
        listen_pool: [Some(listen), Some(listen_web)],
        udp_pool: Some(udp_handle),
        client_pool: clients.map(Some),
        closing: [None; LISTENERS * PER_LISTENER + CLIENTS],
        // A random first port, as lwIP picks one (LWIP_RANDOMIZE_INITIAL_LOCAL_PORTS): after a
        // reset without FIN the peer (a broker) may still hold the old connection, and the same
        // four-tuple again would be taken for it and time out.
        next_port: {
            let mut b = [0u8; 2];
            rng.fill(&mut b);
            let span = EPHEMERAL.end() - EPHEMERAL.start() + 1;
            EPHEMERAL.start() + u16::from_le_bytes(b) % span
        },
        failed: None,
    };
    // Listening before the interface first runs: a connection that waited for the device to
    // boot (its SYN queued in the network) must find the port open, not get a reset.
    {
        let mut pump = Pump { iface: &mut iface, sockets: &mut sockets, links: &mut links, log: &mut *log };
        app.start(&mut Env { flash: &mut *flash, now_ms: now_ms(), rng: &mut *rng, io: &mut pump });
    }
    match net.addressing {
        Addressing::Static { ip, gateway, .. } => announce(dev, net.mac, ip, gateway),
        // The DHCP exchange introduces the device.
        #[cfg(feature = "wifi")]
        Addressing::Dhcp => {}
    }
    let mut buf = [0u8; 4096];
    // Set when an update completed: the device restarts once its links have sent their last
    // bytes, or after a short grace if a peer does not take them.
    let mut reboot_from: Option<esp_hal::time::Instant> = None;
    loop {
        link.check(&mut *log);
        iface.poll(now(), dev, &mut sockets);
        #[cfg(feature = "wifi")]
        if let Some(h) = dhcp {
            dhcp_update(&mut iface, sockets.get_mut::<smoltcp::socket::dhcpv4::Socket>(h), log);
        }
        pass(&mut iface, &mut sockets, &mut links, app, flash, rng, &mut buf, log);
        if app.reboot_requested::<FlashStorage<'_>>() {
            let since = *reboot_from.get_or_insert_with(esp_hal::time::Instant::now);
            // A closing socket whose data the peer acknowledged has nothing more to deliver
            // (its FIN may still wait for the peer's; a restart loses nothing of it).
            let flushed =
                links.closing.iter().flatten().all(|(h, _)| sockets.get::<tcp::Socket>(*h).send_queue() == 0)
                    && links.slots.iter().all(|s| match s {
                        Slot::Conn(c) => {
                            c.out.len == 0 && sockets.get::<tcp::Socket>(c.handle).send_queue() == 0
                        }
                        _ => true,
                    });
            if flushed || since.elapsed() > REBOOT_GRACE {
                // A path that restarts for its own reason (a mode switch) logged it already.
                if !app.reboot_announced::<FlashStorage<'_>>() {
                    log(&LogEvent::OtaRebooting);
                }
                esp_hal::system::software_reset();
            }
        }
    }
}

/// One pass over the links: what each socket has for the app, the app's timers, what the app
/// queued, closes.
#[allow(clippy::too_many_arguments)]
fn pass<L: FnMut(&LogEvent<'_>)>(
    iface: &mut Interface,
    sockets: &mut SocketSet<'_>,
    links: &mut Links,
    app: &mut App,
    flash: &mut FlashStorage<'_>,
    rng: &mut HwRng,
    buf: &mut [u8],
    log: &mut L,
) {
    // Calls the app with the sockets as its I/O.
    macro_rules! call {
        (|$app:ident, $env:ident| $body:expr) => {{
            let mut pump =
                Pump { iface: &mut *iface, sockets: &mut *sockets, links: &mut *links, log: &mut *log };
            let $app = &mut *app;
            let $env = &mut Env { flash: &mut *flash, now_ms: now_ms(), rng: &mut *rng, io: &mut pump };
            $body
        }};
    }
    if let Some((id, why)) = links.failed.take() {
        call!(|a, env| a.input(Input::ConnectFailed(id, why), env));
    }
    for i in 0..LINKS {
        match &mut links.slots[i] {
            Slot::Free => {}
            Slot::Udp { id, handle } => {
                let (id, handle) = (*id, *handle);
                let socket = sockets.get_mut::<udp::Socket>(handle);
                if let Ok((n, meta)) = socket.recv_slice(buf) {
                    let IpAddress::Ipv4(ip) = meta.endpoint.addr;
                    let from = core::net::SocketAddr::new(core::net::IpAddr::V4(ip), meta.endpoint.port);
                    call!(|a, env| a.input(Input::Datagram { socket: id, from, bytes: &buf[..n] }, env));
                }
            }
            Slot::Listener { id, port, sockets: socks } => {
                let (id, port, socks) = (*id, *port, *socks);
                for h in socks {
                    let s = sockets.get_mut::<tcp::Socket>(h);
                    let in_use = links.slots.iter().any(|s| matches!(s, Slot::Conn(c) if c.handle == h));
                    if in_use || links.is_closing(h) {
                        continue;
                    }
                    if !s.is_open() {
                        let _ = s.listen(port);
                        continue;
                    }
                    // The next client: connected, or already gone again (its session then hears
                    // the close).
                    if matches!(s.state(), tcp::State::Established | tcp::State::CloseWait)
                        && let Some(link) = call!(|a, env| a.accept(id, env))
                    {
                        links.put(Slot::Conn(Conn {
                            id: link,
                            handle: h,
                            out: Outbox::new(),
                            connecting: false,
                            gone: false,
                            closing: false,
                        }));
                    }
                }
            }
            Slot::Conn(c) => {
                let (id, handle) = (c.id, c.handle);
                let s = sockets.get_mut::<tcp::Socket>(handle);
                if c.connecting {
                    if s.state() == tcp::State::Established {
                        // Up: the paths keep their own timeouts (keep-alive, stall limits).
                        s.set_timeout(None);
                        c.connecting = false;
                        call!(|a, env| a.input(Input::Connected(id), env));
                    } else if !s.is_open() {
                        links.slots[i] = Slot::Free;
                        links.release(handle);
                        call!(|a, env| a.input(Input::ConnectFailed(id, ConnectFailure::Refused), env));
                    }
                } else if !c.gone && !c.closing {
                    if s.can_recv() {
                        // A few reads a pass: an upload's chunk is taken in as it comes.
                        for _ in 0..4 {
                            let s = sockets.get_mut::<tcp::Socket>(handle);
                            let Ok(n) = s.recv_slice(buf) else { break };
                            if n == 0 {
                                break;
                            }
                            call!(|a, env| a.input(Input::Data(id, &buf[..n]), env));
                        }
                    } else if !s.may_recv() || !s.is_open() {
                        // A peer that resets the connection sends no FIN: the app must still
                        // hear that it is gone.
                        c.gone = true;
                        call!(|a, env| a.input(Input::Closed(id), env));
                    }
                }
            }
        }
    }
    if app.deadline::<FlashStorage<'_>>(now_ms()).is_some_and(|d| d <= now_ms()) {
        call!(|a, env| a.poll(env));
    }
    // What the app queued, and the closes it asked for once that is out.
    for i in 0..LINKS {
        let Slot::Conn(c) = &mut links.slots[i] else { continue };
        let s = sockets.get_mut::<tcp::Socket>(c.handle);
        c.out.drain_into(s);
        if c.closing && (!s.is_open() || (c.out.len == 0 && s.send_queue() == 0)) {
            s.close();
            let handle = c.handle;
            links.slots[i] = Slot::Free;
            links.release(handle);
        }
    }
    links.reclaim(sockets);
}

/// Applies what the DHCP client learnt: address and default route, or their loss.
#[cfg(feature = "wifi")]
fn dhcp_update<L: FnMut(&LogEvent<'_>)>(
    iface: &mut Interface,
    socket: &mut smoltcp::socket::dhcpv4::Socket<'_>,
    log: &mut L,
) {
    use smoltcp::socket::dhcpv4::Event;
    match socket.poll() {
        None => {}
        Some(Event::Configured(config)) => {
            iface.update_ip_addrs(|addrs| {
                addrs.clear();
                let _ = addrs.push(IpCidr::Ipv4(config.address));
            });
            match config.router {
                Some(router) => {
                    let _ = iface.routes_mut().add_default_ipv4_route(router);
                }
                None => {
                    iface.routes_mut().remove_default_ipv4_route();
                }
            }
            log(&LogEvent::Module(&NetLine::NetAddress {
                ip: config.address.address().octets(),
                prefix: config.address.prefix_len(),
                dhcp: true,
            }));
        }
        Some(Event::Deconfigured) => {
            iface.update_ip_addrs(|addrs| addrs.clear());
            iface.routes_mut().remove_default_ipv4_route();
            log(&LogEvent::Module(&NetLine::NetAddressLost));
        }
    }
}
