//! The OTA service: smoltcp on a link (QEMU's open_eth MAC, or Wi-Fi on a board): ESPHome OTA on
//! TCP port 3232 and ArduinoOTA on UDP port 3232 (`arduino_link`), `ota-core`'s servers writing
//! the inactive slot through esp-storage.
//! A tight polled loop: one 8 KiB chunk acknowledgement waits for nothing but the next poll.

use crate::arduino_link::ArduinoLink;
use crate::pull_link::PullLink;
use esp_storage::FlashStorage;
use ota_core::log::LogEvent;
use ota_core::partition::{Partition, PartitionTable};
use ota_core::proto::esphome::{Event, NonceSource, Output, Server, ServerConfig};
use ota_core::session::{Session, Target};
use ota_core::wifi::NetLine;
use ota_core::writer::OtaConfig;
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::Device;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

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
    pub port: u16,
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

/// Milliseconds since boot (ArduinoOTA's timeouts run on it).
pub fn now_ms() -> u64 {
    esp_hal::time::Instant::now().duration_since_epoch().as_millis()
}

/// Nonces from the chip's hardware random number generator.
pub struct HwRng(pub esp_hal::rng::Rng);

impl NonceSource for HwRng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.read(buf);
    }
}

impl ota_core::proto::arduino::NonceSource for HwRng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.read(buf);
    }
}

/// What a server wants sent and has not been taken by its socket yet.
pub struct Pending {
    bytes: [u8; 1024],
    len: usize,
}

impl Pending {
    pub fn new() -> Self {
        Pending { bytes: [0; 1024], len: 0 }
    }

    /// Queues `bytes`. A server sends a few bytes per chunk it receives; 1 KiB is never reached
    /// while the socket drains between reads.
    pub fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The socket took the first `n` bytes.
    pub fn consume(&mut self, n: usize) {
        self.bytes.copy_within(n..self.len, 0);
        self.len -= n;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

struct Reply<'l, L: FnMut(&LogEvent<'_>)> {
    pending: &'l mut Pending,
    log: &'l mut L,
}

impl<L: FnMut(&LogEvent<'_>)> Output for Reply<'_, L> {
    fn send(&mut self, bytes: &[u8]) {
        self.pending.push(bytes);
    }
    fn event(&mut self, e: Event) {
        if let Some(line) = e.log_event() {
            (self.log)(&line);
        }
    }
}

/// What the service serves with.
pub struct Service<'t> {
    pub table: &'t PartitionTable,
    /// The partition the app runs from.
    pub running: Partition,
    pub server: ServerConfig<'t>,
    /// ArduinoOTA's settings (its server keeps its own copy of the password hash).
    pub arduino: ota_core::proto::arduino::Config<'t>,
    pub ota: OtaConfig,
    pub net: NetConfig,
    /// The pull path's settings, when NVS names a broker.
    pub pull: Option<ota_core::proto::mqtt_pull::Settings<'t>>,
}

/// Serves OTA on `dev` forever; resets into the new image after a completed update.
pub fn serve<D: Device, W: LinkWatch, L: FnMut(&LogEvent<'_>)>(
    dev: &mut D,
    link: &mut W,
    flash: &mut FlashStorage<'_>,
    service: Service<'_>,
    rng: &mut HwRng,
    log: &mut L,
) -> ! {
    let Service { table, running, server: server_config, arduino, ota, net, pull: pull_settings } = service;
    let mut iface =
        Interface::new(Config::new(HardwareAddress::Ethernet(EthernetAddress(net.mac))), dev, now());
    let mut storage = [SocketStorage::EMPTY; 7];
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
    // ESPHome's port: two sockets, as behind ESPHome's `listen(1)`: one holds the session, the
    // other takes the next client, whose bytes wait in its buffer until the session ends. (With
    // one socket, a client that came while a session ran or was still closing got a reset.)
    let (mut rx_a, mut tx_a) = ([0u8; 16 * 1024], [0u8; 2 * 1024]);
    let (mut rx_b, mut tx_b) = ([0u8; 16 * 1024], [0u8; 2 * 1024]);
    let ports = [
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx_a[..]),
            tcp::SocketBuffer::new(&mut tx_a[..]),
        )),
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx_b[..]),
            tcp::SocketBuffer::new(&mut tx_b[..]),
        )),
    ];
    // Listening before the interface first runs: a connection that waited for the device to
    // boot (its SYN queued in the network) must find the port open, not get a reset.
    // (It cannot fail for a fresh socket and a non-zero port; the loop listens again if it did.)
    for h in ports {
        let _ = sockets.get_mut::<tcp::Socket>(h).listen(net.port);
    }
    // ArduinoOTA: invitations on UDP, and the device's own connection back to the uploader.
    let mut udp_rx_meta = [udp::PacketMetadata::EMPTY; 4];
    let mut udp_rx = [0u8; 512];
    let mut udp_tx_meta = [udp::PacketMetadata::EMPTY; 4];
    let mut udp_tx = [0u8; 256];
    let udp_handle = sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(&mut udp_rx_meta[..], &mut udp_rx[..]),
        udp::PacketBuffer::new(&mut udp_tx_meta[..], &mut udp_tx[..]),
    ));
    // (Binding a fresh socket to a non-zero port cannot fail.)
    let _ = sockets.get_mut::<udp::Socket>(udp_handle).bind(ota_core::proto::arduino::DEFAULT_PORT);
    let mut client_rx = [0u8; 4 * 1024];
    let mut client_tx = [0u8; 512];
    let client_handle = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(&mut client_rx[..]),
        tcp::SocketBuffer::new(&mut client_tx[..]),
    ));
    let mut arduino = ArduinoLink::new(udp_handle, client_handle, arduino);
    // The pull path: a connection to the broker and one to the firmware server.
    let (mut broker_rx, mut broker_tx) = ([0u8; 2 * 1024], [0u8; 2 * 1024]);
    let (mut server_rx, mut server_tx) = ([0u8; 8 * 1024], [0u8; 1024]);
    let broker_handle = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(&mut broker_rx[..]),
        tcp::SocketBuffer::new(&mut broker_tx[..]),
    ));
    let server_handle = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(&mut server_rx[..]),
        tcp::SocketBuffer::new(&mut server_tx[..]),
    ));
    let mut pull = pull_settings.as_ref().map(|_| {
        // The https handshakes' randomness is keyed from the hardware RNG once per boot.
        let mut tls_key = [0u8; 32];
        rng.0.read(&mut tls_key);
        PullLink::new(broker_handle, server_handle, tls_key)
    });
    log(&LogEvent::OtaListening { port: net.port });
    match net.addressing {
        Addressing::Static { ip, gateway, .. } => announce(dev, net.mac, ip, gateway),
        // The DHCP exchange introduces the device.
        #[cfg(feature = "wifi")]
        Addressing::Dhcp => {}
    }
    let target = Target { table, running, config: ota };
    let mut session: Option<Session<Server>> = None;
    // Which of `ports` holds the session, until the session ends.
    let mut active: Option<usize> = None;
    // When each of `ports` was released by its ended session while its connection still closed.
    let mut released_at: [Option<esp_hal::time::Instant>; 2] = [None, None];
    // When the session's connection was accepted and when its client last sent a byte (the
    // ESPHome timeouts, `Server::expired`).
    let (mut accepted_ms, mut input_ms) = (0u64, 0u64);
    let mut pending = Pending::new();
    // Set when a completed update closed its connection: the device restarts once the close is
    // done, or after a short grace (ESPHome waits ~110 ms) if the peer never finishes it.
    let mut reboot_from: Option<esp_hal::time::Instant> = None;
    loop {
        link.check(&mut *log);
        iface.poll(now(), dev, &mut sockets);
        #[cfg(feature = "wifi")]
        if let Some(h) = dhcp {
            dhcp_update(&mut iface, sockets.get_mut::<smoltcp::socket::dhcpv4::Socket>(h), log);
        }
        let pulling = pull.as_ref().is_some_and(PullLink::busy);
        if arduino.poll(
            &mut iface,
            &mut sockets,
            flash,
            &target,
            rng,
            session.is_some() || pulling,
            &mut *log,
        ) {
            log(&LogEvent::OtaRebooting);
            esp_hal::system::software_reset();
        }
        if let (Some(p), Some(settings)) = (pull.as_mut(), pull_settings.as_ref()) {
            let other = session.is_some() || arduino.busy();
            if p.poll(&mut iface, &mut sockets, flash, &target, settings, other, &mut *log) {
                log(&LogEvent::OtaRebooting);
                esp_hal::system::software_reset();
            }
            if p.busy() {
                // One update at a time: ESPHome's next client waits in the backlog.
                continue;
            }
        }
        if arduino.busy() {
            // ArduinoOTA's update loop holds the device: ESPHome's connection waits.
            continue;
        }
        if let Some(i) = active {
            let sock = sockets.get_mut::<tcp::Socket>(ports[i]);
            if let Some(since) = reboot_from
                && (!sock.is_open() || since.elapsed() > esp_hal::time::Duration::from_millis(300))
            {
                log(&LogEvent::OtaRebooting);
                esp_hal::system::software_reset();
            }
            if !sock.is_open() {
                // A peer that resets the connection (an RST, e.g. a client that closes with our
                // bytes unread) sends no FIN: the session must still hear that its client is gone.
                if let Some(session) = session.as_mut()
                    && !session.server.is_closed()
                {
                    let mut reply = Reply { pending: &mut pending, log: &mut *log };
                    session
                        .with(flash, &target, |server, sink| server.on_disconnect(false, sink, &mut reply));
                }
                session = None;
                pending.clear();
                active = None;
            }
        }
        for (i, h) in ports.into_iter().enumerate() {
            let sock = sockets.get_mut::<tcp::Socket>(h);
            // A released connection that has not finished closing in a while is dropped, as lwIP
            // bounds its closing states.
            if let Some(at) = released_at[i]
                && sock.is_open()
                && at.elapsed() > esp_hal::time::Duration::from_secs(2)
            {
                sock.abort();
            }
            if !sock.is_open() {
                released_at[i] = None;
                let _ = sock.listen(net.port);
            }
        }
        // The next client: connected, or already gone again (its session then hears the close).
        let waiting = |h: &smoltcp::iface::SocketHandle| {
            matches!(sockets.get::<tcp::Socket>(*h).state(), tcp::State::Established | tcp::State::CloseWait)
        };
        if active.is_none()
            && let Some(i) = ports.iter().position(waiting)
        {
            log(&LogEvent::OtaClientConnected);
            session = Some(Session::new(Server::new(server_config)));
            active = Some(i);
            (accepted_ms, input_ms) = (now_ms(), now_ms());
        }
        let Some(i) = active else { continue };
        let sock = sockets.get_mut::<tcp::Socket>(ports[i]);
        let Some(live) = session.as_mut() else { continue };
        let mut released = false;
        let mut reply = Reply { pending: &mut pending, log: &mut *log };
        let now = now_ms();
        if !live.server.is_closed() && sock.can_recv() {
            input_ms = now;
            let _ = sock.recv(|data| {
                live.with(flash, &target, |server, sink| server.feed(data, sink, rng, &mut reply));
                (data.len(), ())
            });
        } else if !live.server.is_closed() && !sock.may_recv() {
            live.with(flash, &target, |server, sink| server.on_disconnect(false, sink, &mut reply));
        } else if live.server.expired(now - accepted_ms, now - input_ms) {
            live.with(flash, &target, |server, sink| server.on_disconnect(true, sink, &mut reply));
        }
        let server = &live.server;
        if pending.len() > 0
            && let Ok(n) = sock.send_slice(pending.bytes())
        {
            pending.consume(n);
        }
        if server.is_closed()
            && pending.len() == 0
            && sock.send_queue() == 0
            && sock.state() != tcp::State::Closed
        {
            if server.reboot_requested() && reboot_from.is_none() {
                reboot_from = Some(esp_hal::time::Instant::now());
            }
            sock.close();
            if !server.reboot_requested() {
                // The session is over once its last byte is sent: the next client is served while
                // this connection finishes closing on its own, as lwIP keeps a closing connection
                // apart from the listening socket. (Waiting for the close let a FIN/FIN crossing
                // that left the socket closing hold the port's next client for good.)
                released_at[i] = Some(esp_hal::time::Instant::now());
                released = true;
            }
        }
        if released {
            session = None;
            active = None;
            pending.clear();
        }
    }
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
