//! The emulator process: the device's ports on loopback (its TCP listeners and UDP sockets,
//! each device port mapped to a host address), the connections the device opens, its serial log
//! on stdout (and optionally a file and a UART pty), the control channel on stdin.
//!
//! One thread runs the device and sleeps until a socket, the control channel, the UART or the
//! app's next deadline is ready (mio); another only reads stdin lines and wakes it. This loop
//! knows no update path: it carries out the app's [`Action`]s on links named by the app and
//! reports what happened to them ([`Input`]). No socket call blocks: connects finish in the
//! background, and what a peer does not take waits in its link ([`link`]), so a stalled peer
//! costs only its own link. A listener keeps one waiting client, as the chip's (backlog 1)
//! does, and resets the others at once.

mod link;

use crate::CONTROL_PREFIX;
use crate::control::{self, Command, Message};
use crate::device::{Action, ConnectTo, Device, Step};
use link::{Link, Read1};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use ota_core::io::{ConnectFailure, Input, LinkId, Port};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// The serial port: stdout, plus a copy in a file and on the UART's pty when asked.
pub struct Serial {
    pub stdout: io::Stdout,
    pub file: Option<File>,
    pub uart: Option<crate::uart::LogPort>,
}

impl Write for Serial {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = &mut self.file {
            f.write_all(buf)?;
        }
        if let Some(u) = &mut self.uart {
            u.write_all(buf)?;
        }
        self.stdout.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()
    }
}

pub struct ServeOptions {
    /// The device's ports and the host addresses they are reached at.
    pub ports: Vec<(Port, SocketAddr)>,
    /// Start powered off (the harness powers on when a scenario says `boot`).
    pub start_off: bool,
    /// UART0 on a pseudo-terminal (the log, and the ROM loader in download boot mode).
    pub uart: Option<crate::uart::Uart>,
}

const COMMANDS: Token = Token(0);
const UART: Token = Token(1);
/// Listeners and UDP sockets take the tokens from here, connections the ones after them.
const FIRST_PORT_TOKEN: usize = 16;
const FIRST_LINK_TOKEN: usize = 1 << 16;

/// How long the device tries to reach a peer (arduino-esp32's `WiFiClient` connect timeout,
/// `esp_http_client`'s `timeout_ms`, the MQTT client's network timeout order of magnitude).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the loop keeps looking (without sleeping) for a peer's next bytes after it read
/// some: a request/response exchange (ArduinoOTA's count after every 1 KiB) then does not pay a
/// sleep and a wake-up per round trip. An idle device never spins.
const EXCHANGE_SPIN: Duration = Duration::from_micros(200);
/// How long a half-closed link of an earlier boot is read, at most, before it is closed.
const LINGER_LIMIT: Duration = Duration::from_secs(10);
/// How long a restart waits, at most, for its peers to read the device's last bytes and close.
const LAST_BYTES_GRACE: Duration = Duration::from_millis(500);

fn control_line(device: &mut Device<Serial>, message: &Message) {
    let out = device.serial();
    let _ = writeln!(out.stdout, "{CONTROL_PREFIX}{message}");
    let _ = out.stdout.flush();
}

const SESSION_CLOSED: Message = Message::SessionClosed { refused: false };

/// Said when stdin ends before any control command.
pub const STDIN_ENDED: &str = "ota-emu: stdin (the control channel) ended before any command, so the device stops; keep stdin open to run it, e.g. `sleep infinity | ota-emu run …`";

/// Reads stdin lines on a thread of their own, waking the device's loop for each.
fn spawn_stdin_reader(waker: Arc<Waker>) -> Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
        let _ = waker.wake();
    });
    rx
}

/// A TCP listener with the chip's backlog of one.
fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Turns a client away as a full backlog on the chip does: a reset, not a silent wait.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// A device TCP port, bound on the host for the process's life (its address stays the same
/// across the device's boots); the app listens on it by naming it.
struct Listener {
    device_port: u16,
    socket: TcpListener,
    ready: bool,
    /// The one client the backlog holds until the app takes it.
    waiting: Option<TcpStream>,
    /// The app's link for it, while the app listens.
    link: Option<LinkId>,
}

/// A device UDP port, bound on the host for the process's life.
struct Datagrams {
    device_port: u16,
    socket: UdpSocket,
    ready: bool,
    link: Option<LinkId>,
}

/// One of the app's connections.
struct Conn {
    link: Link,
    token: Token,
    /// `Closed` was reported: the app closes it; it is read no more.
    gone: bool,
}

/// The restart after a completed update: every open connection hands its last bytes to its
/// socket and is half-closed; the device restarts once every peer has read to that end and
/// closed its side too (or the grace ends; links still open then linger, see
/// [`Net::lingering`]). A chip takes hundreds of milliseconds to boot and join the network
/// again, so its peers have read its last words before it reconnects; an emulated device that
/// reconnected at once could reach a broker before the broker read its last session's last
/// packets, and a broker that takes a client id over drops what the old socket still held (a
/// Homie `200`, an ESP-IDF `success` status).
struct Restart {
    links: Vec<Closing>,
    until: Instant,
}

/// A link of a restart: `fin` once its last bytes went to the socket and its side is shut.
struct Closing {
    link: Link,
    fin: bool,
}

impl Closing {
    /// A link the restart closes: what its socket takes now, then the FIN if that was all.
    fn start(link: Link) -> Closing {
        let mut c = Closing { link, fin: false };
        c.send_rest();
        c
    }

    /// Hands queued bytes to the socket and shuts the device's side once they are all there.
    fn send_rest(&mut self) {
        if !self.fin {
            let _ = self.link.flush();
            if self.link.is_flushed() {
                self.link.shutdown_write();
                self.fin = true;
            }
        }
    }

    /// [`Closing::send_rest`], then reads what the peer still sends: `true` once the peer has
    /// closed its side too.
    fn step(&mut self, buf: &mut [u8]) -> bool {
        self.send_rest();
        self.fin && self.link.drain(buf)
    }
}

impl Restart {
    fn close(self, registry: &Registry) {
        for c in self.links {
            c.link.close(registry);
        }
    }
}

/// The device's sockets.
struct Net {
    registry: Registry,
    listeners: Vec<Listener>,
    datagrams: Vec<Datagrams>,
    conns: BTreeMap<LinkId, Conn>,
    next_token: usize,
    /// What the transport has to tell the app after the current call (a connect or a write
    /// that failed at once): told on the next round, never from inside a call.
    inbox: VecDeque<OwnedInput>,
    restart: Option<Restart>,
    /// Links of an earlier boot whose peers had not closed by the end of the restart's grace:
    /// half-closed, read and dropped until their peers close (or [`LINGER_LIMIT`]). A socket
    /// closed with unread bytes would reset and make its peer lose the device's last bytes.
    lingering: Vec<(Link, Instant)>,
}

/// An [`Input`] the transport keeps for later.
#[derive(Clone, Copy, Debug)]
enum OwnedInput {
    ConnectFailed(LinkId, ConnectFailure),
    Closed(LinkId),
}

impl Net {
    fn conn_by_token(&mut self, token: Token) -> Option<&mut Link> {
        self.conns.values_mut().find(|c| c.token == token).map(|c| &mut c.link)
    }

    /// The device stops serving (power, reset): every peer sees its connection drop, and a
    /// client whose exchange was open has it end.
    fn drop_connections(&mut self, device: &mut Device<Serial>) {
        let exchange_open = device.exchange_open();
        for (_, c) in std::mem::take(&mut self.conns) {
            c.link.close(&self.registry);
        }
        for l in &mut self.listeners {
            if let Some(w) = l.waiting.take() {
                let _ = w.shutdown(Shutdown::Both);
            }
            l.link = None;
        }
        for d in &mut self.datagrams {
            d.link = None;
        }
        self.inbox.clear();
        if let Some(r) = self.restart.take() {
            r.close(&self.registry);
        }
        if exchange_open {
            control_line(device, &SESSION_CLOSED);
        }
    }

    /// Whether there is something to do without waiting. (A client waiting in a backlog is
    /// not: each round offers it to the app, which takes it once no update runs.)
    fn has_work(&self) -> bool {
        !self.inbox.is_empty()
            || self.restart.as_ref().is_some_and(|r| r.links.is_empty())
            || self.listeners.iter().any(|l| l.ready)
            || self.datagrams.iter().any(|d| d.ready)
            || self.conns.values().any(|c| {
                !c.gone && (c.link.wants_read() || c.link.wants_flush() || c.link.in_exchange(EXCHANGE_SPIN))
            })
    }

    /// When something is due without input: the app's timers, a connect or a stalled queue
    /// giving up, the end of a restart's grace.
    fn next_deadline(&self, device: &Device<Serial>) -> Option<Instant> {
        let restart = self.restart.as_ref().map(|r| r.until);
        let links = self.conns.values().filter(|c| !c.gone).filter_map(|c| c.link.deadline()).min();
        let lingering = self.lingering.iter().map(|(_, since)| *since + LINGER_LIMIT).min();
        [device.next_deadline(), restart, links, lingering].into_iter().flatten().min()
    }
}

/// Runs until `quit` or the end of stdin.
pub fn serve(mut device: Device<Serial>, opts: ServeOptions) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    // Listeners take the first port tokens and UDP sockets the ones after them (see the event
    // loop), whatever order the ports come in.
    let tcp = opts.ports.iter().filter_map(|&(p, a)| match p {
        Port::Tcp(n) => Some((n, a)),
        Port::Udp(_) => None,
    });
    let udp = opts.ports.iter().filter_map(|&(p, a)| match p {
        Port::Udp(n) => Some((n, a)),
        Port::Tcp(_) => None,
    });
    let mut tokens = (FIRST_PORT_TOKEN..).map(Token);
    let mut ports = Vec::new();
    let mut listeners = Vec::new();
    for (device_port, addr) in tcp {
        let mut socket = listener(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        poll.registry().register(&mut socket, tokens.next().expect("endless"), Interest::READABLE)?;
        ports.push((Port::Tcp(device_port), socket.local_addr()?));
        listeners.push(Listener { device_port, socket, ready: true, waiting: None, link: None });
    }
    let mut datagrams = Vec::new();
    for (device_port, addr) in udp {
        let mut socket =
            UdpSocket::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on UDP {addr}: {e}"))?;
        poll.registry().register(&mut socket, tokens.next().expect("endless"), Interest::READABLE)?;
        ports.push((Port::Udp(device_port), socket.local_addr()?));
        datagrams.push(Datagrams { device_port, socket, ready: true, link: None });
    }
    let waker = Arc::new(Waker::new(poll.registry(), COMMANDS)?);
    let mut uart = opts.uart;
    if let Some(u) = &uart {
        poll.registry().register(&mut SourceFd(&u.raw_fd()), UART, Interest::READABLE)?;
    }
    let uart_path = uart.as_ref().and_then(|u| u.path());
    control_line(&mut device, &Message::Ready { ports, uart: uart_path });
    let mut net = Net {
        registry: poll.registry().try_clone()?,
        listeners,
        datagrams,
        conns: BTreeMap::new(),
        next_token: FIRST_LINK_TOKEN,
        inbox: VecDeque::new(),
        restart: None,
        lingering: Vec::new(),
    };
    if !opts.start_off {
        device.power_on();
        let step = device.take_step();
        apply(&mut device, &mut net, step);
    }
    // The loop keeps a handle on the waker: the reader's last wake (the end of stdin) comes as
    // its thread ends, and were its handle the last, the waker's fd would close with it and
    // the wake-up could be lost, leaving the loop asleep for good.
    let commands = spawn_stdin_reader(Arc::clone(&waker));
    let mut uart_ready = uart.is_some();
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 16 * 1024];
    let mut commanded = false;
    loop {
        log_cut(&mut device, &mut net);
        // Commands first: a power cut must land between two reads of an upload.
        loop {
            match commands.try_recv() {
                Ok(Some(line)) => {
                    commanded = true;
                    if !command(&mut device, &mut net, uart.as_mut(), &line) {
                        return Ok(());
                    }
                }
                Ok(None) | Err(TryRecvError::Disconnected) => {
                    // The end of stdin stops the device (a harness that goes away takes its
                    // emulators with it); before any command, that is a user's `< /dev/null`.
                    if !commanded {
                        eprintln!("{}", STDIN_ENDED);
                    }
                    return Ok(());
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if uart_ready && let Some(u) = uart.as_mut() {
            let (read, exit) = u.poll(device.flash_mut(), |r| eprintln!("rom loader: {r}"))?;
            uart_ready = read;
            match exit {
                // A reboot re-reads the boot strap, still held in download mode: the ROM loader
                // again (esptool's `--after no-reset` from the stub relies on it).
                Some(crate::rom_loader::Exit::Reboot) => u.enter_download(device.flash().data().len()),
                Some(_) => {
                    // The flasher had the loader run the app: the chip boots what is in flash.
                    device.power_off();
                    device.power_on();
                    let status = device.status();
                    control_line(&mut device, &Message::Rebooted(status));
                    let step = device.take_step();
                    apply(&mut device, &mut net, step);
                }
                None => {}
            }
        }
        let downloading = uart.as_ref().is_some_and(|u| u.downloading());
        if !downloading {
            step_network(&mut device, &mut net, &mut buf)?;
        }
        let timeout = if uart_ready || (net.has_work() && !downloading) {
            Some(Duration::ZERO)
        } else if downloading {
            None
        } else {
            net.next_deadline(&device).map(|d| d.saturating_duration_since(Instant::now()))
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for event in events.iter() {
            match event.token() {
                UART => uart_ready = true,
                COMMANDS => {}
                Token(t) if t < FIRST_LINK_TOKEN => {
                    let i = t - FIRST_PORT_TOKEN;
                    match net.listeners.get_mut(i) {
                        Some(l) => l.ready = true,
                        None => {
                            if let Some(d) = net.datagrams.get_mut(i - net.listeners.len()) {
                                d.ready = true;
                            }
                        }
                    }
                }
                token => {
                    if let Some(link) = net.conn_by_token(token) {
                        link.ready(event);
                    }
                }
            }
        }
    }
}

/// One round over the device's sockets and timers: at most one read per connection, so
/// control commands come between any two reads.
fn step_network(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) -> anyhow::Result<()> {
    linger(net, buf);
    if net.restart.is_some() {
        // The device is restarting: nothing else happens until it has.
        restart_step(device, net, buf);
        return Ok(());
    }
    while let Some(input) = net.inbox.pop_front() {
        let step = match input {
            OwnedInput::ConnectFailed(link, why) => device.input(Input::ConnectFailed(link, why)),
            OwnedInput::Closed(link) => device.input(Input::Closed(link)),
        };
        apply(device, net, step);
    }
    if device.next_deadline().is_some_and(|d| d <= Instant::now()) {
        let step = device.poll();
        apply(device, net, step);
    }
    for i in 0..net.datagrams.len() {
        if net.datagrams[i].ready {
            datagram(device, net, i, buf)?;
        }
    }
    connections(device, net, buf);
    for i in 0..net.listeners.len() {
        accept_clients(device, net, i)?;
    }
    Ok(())
}

/// Links of earlier boots: what their peers send is read and dropped; closed once the peer
/// closes, or after [`LINGER_LIMIT`].
fn linger(net: &mut Net, buf: &mut [u8]) {
    let mut kept = Vec::with_capacity(net.lingering.len());
    for (mut l, since) in std::mem::take(&mut net.lingering) {
        if l.drain(buf) || since.elapsed() >= LINGER_LIMIT {
            l.close(&net.registry);
        } else {
            kept.push((l, since));
        }
    }
    net.lingering = kept;
}

/// The restart after an update (see [`Restart`]): each link hands its last bytes to its socket
/// and is half-closed; the device restarts once every peer has closed its side too, or the
/// grace is over.
fn restart_step(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) {
    let Some(r) = net.restart.as_mut() else { return };
    let timed_out = Instant::now() >= r.until;
    // Any event wakes the loop; every link of the restart is looked at each round.
    let mut open = Vec::new();
    for mut c in std::mem::take(&mut r.links) {
        if c.step(buf) {
            c.link.close(&net.registry);
        } else {
            open.push(c);
        }
    }
    r.links = open;
    if !timed_out && !r.links.is_empty() {
        return;
    }
    let Some(r) = net.restart.take() else { return };
    // Past the grace: a peer still reading (or keeping its side open) has the device's last
    // bytes and its FIN queued; the link lingers so a reset does not take them from it.
    for c in r.links {
        if c.fin {
            net.lingering.push((c.link, Instant::now()));
        } else {
            c.link.close(&net.registry);
        }
    }
    for l in &mut net.listeners {
        l.link = None;
    }
    for d in &mut net.datagrams {
        d.link = None;
    }
    device.reboot_after_update();
    let s = device.status();
    control_line(device, &Message::Rebooted(s));
    let step = device.take_step();
    apply(device, net, step);
}

/// Takes new clients of a listener: the app takes one when it can, the backlog holds one
/// more, the rest are reset.
fn accept_clients(device: &mut Device<Serial>, net: &mut Net, i: usize) -> anyhow::Result<()> {
    loop {
        let l = &mut net.listeners[i];
        if l.ready {
            match l.socket.accept() {
                Ok((stream, _)) => {
                    if l.waiting.is_none() {
                        l.waiting = Some(stream);
                    } else {
                        reset(stream);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => l.ready = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        offer_waiting(device, net, i)?;
        if !net.listeners[i].ready {
            return Ok(());
        }
    }
}

/// The waiting client becomes one of the app's connections, waits on, or is refused when
/// nothing serves OTA.
fn offer_waiting(device: &mut Device<Serial>, net: &mut Net, i: usize) -> anyhow::Result<()> {
    let l = &mut net.listeners[i];
    if l.waiting.is_none() {
        return Ok(());
    }
    if !device.serving() {
        // Nothing serves OTA (off, hung, bricked): the connection is refused.
        if let Some(stream) = l.waiting.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        control_line(device, &Message::SessionClosed { refused: true });
        return Ok(());
    }
    let Some(listener) = l.link else { return Ok(()) };
    let (taken, step) = device.accept(listener);
    if let Some(link) = taken
        && let Some(stream) = net.listeners[i].waiting.take()
    {
        let token = Token(net.next_token);
        net.next_token += 1;
        let conn = Link::accepted(&net.registry, token, stream)?;
        net.conns.insert(link, Conn { link: conn, token, gone: false });
    }
    apply(device, net, step);
    Ok(())
}

/// One datagram on a device UDP port. Datagrams to a port nothing listens on (a device that
/// is off) are lost, as on the chip.
fn datagram(device: &mut Device<Serial>, net: &mut Net, i: usize, buf: &mut [u8]) -> anyhow::Result<()> {
    let d = &mut net.datagrams[i];
    let (n, from) = match d.socket.recv_from(buf) {
        Ok(got) => got,
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            d.ready = false;
            return Ok(());
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused | ErrorKind::Interrupted
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let Some(socket) = d.link else { return Ok(()) };
    let step = device.input(Input::Datagram { socket, from, bytes: &buf[..n] });
    apply(device, net, step);
    Ok(())
}

/// Every connection: its connect finishing, queued bytes, one read, its timeouts.
fn connections(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) {
    let ids: Vec<LinkId> = net.conns.keys().copied().collect();
    for id in ids {
        let Some(c) = net.conns.get_mut(&id) else { continue };
        if c.gone {
            continue;
        }
        let link = &mut c.link;
        let now = Instant::now();
        let input = if link.is_connecting() {
            let failed = match link.connect_outcome() {
                Some(true) => None,
                Some(false) => Some(ConnectFailure::Refused),
                None if link.expired(now).is_some() => Some(ConnectFailure::Timeout),
                None => continue,
            };
            match failed {
                None => Input::Connected(id),
                Some(why) => {
                    if let Some(c) = net.conns.remove(&id) {
                        c.link.close(&net.registry);
                    }
                    Input::ConnectFailed(id, why)
                }
            }
        } else if link.on_writable().is_err() || link.expired(now).is_some() {
            c.gone = true;
            Input::Closed(id)
        } else {
            match link.read1(buf) {
                Read1::Data(bytes) => Input::Data(id, bytes),
                Read1::Closed => {
                    c.gone = true;
                    Input::Closed(id)
                }
                Read1::Nothing => continue,
            }
        };
        let step = device.input(input);
        apply(device, net, step);
    }
}

/// Carries out what the app asked for; connects finish later, failures are told next round.
fn apply(device: &mut Device<Serial>, net: &mut Net, step: Step) {
    if let Some(loss) = step.power_lost {
        for (_, c) in std::mem::take(&mut net.conns) {
            c.link.close(&net.registry);
        }
        net.inbox.clear();
        report_loss(device, loss);
        if step.exchange_cut {
            control_line(device, &SESSION_CLOSED);
        }
        return;
    }
    for action in step.actions {
        match action {
            Action::Listen { listener, port } => {
                match net.listeners.iter_mut().find(|l| l.device_port == port) {
                    Some(l) => l.link = Some(listener),
                    None => {
                        eprintln!("ota-emu: the device listens on TCP port {port}, which has no host address")
                    }
                }
            }
            Action::Bind { socket, port } => match net.datagrams.iter_mut().find(|d| d.device_port == port) {
                Some(d) => d.link = Some(socket),
                None => eprintln!("ota-emu: the device binds UDP port {port}, which has no host address"),
            },
            Action::Connect { link, to } => {
                if let Some(old) = net.conns.remove(&link) {
                    old.link.close(&net.registry);
                }
                let addr = match resolve(&to) {
                    Ok(a) => a,
                    Err(why) => {
                        net.inbox.push_back(OwnedInput::ConnectFailed(link, why));
                        continue;
                    }
                };
                let token = Token(net.next_token);
                net.next_token += 1;
                match Link::connect(&net.registry, token, addr, CONNECT_TIMEOUT) {
                    Ok(l) => {
                        net.conns.insert(link, Conn { link: l, token, gone: false });
                    }
                    Err(_) => net.inbox.push_back(OwnedInput::ConnectFailed(link, ConnectFailure::Refused)),
                }
            }
            Action::Send { link, bytes } => {
                if let Some(c) = net.conns.get_mut(&link)
                    && c.link.send(&bytes).is_err()
                    && !c.gone
                {
                    c.gone = true;
                    net.inbox.push_back(OwnedInput::Closed(link));
                }
            }
            Action::Close { link } => {
                if let Some(c) = net.conns.remove(&link) {
                    c.link.finish(&net.registry);
                }
                net.inbox.retain(|i| !matches!(i, OwnedInput::Closed(l) if *l == link));
            }
            Action::Datagram { socket, to, bytes } => {
                if let Some(d) = net.datagrams.iter().find(|d| d.link == Some(socket)) {
                    // A lost datagram is what UDP does; the peer retries or times out.
                    let _ = d.socket.send_to(&bytes, to);
                }
            }
            Action::ExchangeOver => control_line(device, &SESSION_CLOSED),
        }
    }
    if step.reboot {
        // `esp_restart()` after the update: the peers see their connections end after the
        // last bytes queued above.
        let links: Vec<Link> = std::mem::take(&mut net.conns).into_values().map(|c| c.link).collect();
        net.inbox.clear();
        // What the sockets take now is followed by a FIN at once; the restart then waits for
        // the peers to read it (the loop sleeps until one of them does, or can take more).
        let open = links.into_iter().map(Closing::start).collect();
        net.restart = Some(Restart { links: open, until: Instant::now() + LAST_BYTES_GRACE });
    }
}

/// An outgoing connection's address (scenarios name IP addresses: the lookup is immediate).
fn resolve(to: &ConnectTo) -> Result<SocketAddr, ConnectFailure> {
    use std::net::ToSocketAddrs;
    match to {
        ConnectTo::Addr(a) => Ok(*a),
        ConnectTo::Host { host, port } => (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|_| ConnectFailure::Dns)?
            .next()
            .ok_or(ConnectFailure::Dns),
    }
}

/// One control command; `false` to quit.
fn command(
    device: &mut Device<Serial>,
    net: &mut Net,
    uart: Option<&mut crate::uart::Uart>,
    line: &str,
) -> bool {
    let cmd = match control::parse_command(line) {
        Err(e) => {
            control_line(device, &Message::Err(e.to_string()));
            return true;
        }
        Ok(cmd) => cmd,
    };
    let verb = cmd.verb();
    if matches!(cmd, Command::PowerOn | Command::PowerOff | Command::Reset | Command::Download) {
        net.drop_connections(device);
    }
    let Some(uart) = uart else {
        if cmd == Command::Download {
            control_line(device, &Message::Err("no UART to download over: start with --uart-pty".into()));
            return true;
        }
        return run_and_start(device, net, cmd, verb);
    };
    match cmd {
        Command::Download => {
            device.power_off();
            uart.enter_download(device.flash().data().len());
        }
        Command::PowerOn | Command::PowerOff | Command::Reset => uart.leave_download(),
        _ => {}
    }
    if cmd == Command::Download {
        control_line(device, &Message::Ok { verb, status: Some(device.status()) });
        return true;
    }
    run_and_start(device, net, cmd, verb)
}

/// Carries out the command; a device it powered on starts its app's links.
fn run_and_start(device: &mut Device<Serial>, net: &mut Net, cmd: Command, verb: control::Verb) -> bool {
    let booted = matches!(cmd, Command::PowerOn | Command::Reset);
    let go_on = run(device, cmd, verb);
    if booted {
        let step = device.take_step();
        apply(device, net, step);
    }
    go_on
}

/// Carries out a command that does not involve the UART.
fn run(device: &mut Device<Serial>, cmd: Command, verb: control::Verb) -> bool {
    match cmd {
        Command::PowerOn => {
            device.power_off();
            device.power_on();
        }
        Command::PowerOff => device.power_off(),
        Command::Reset => device.reset(),
        Command::Status | Command::Quit | Command::Download => {}
        Command::Cut(fault) => {
            device.arm_log_cut(None);
            match fault {
                Some(f) => device.flash_mut().arm(f),
                None => device.flash_mut().disarm(),
            }
        }
        Command::CutAtLog(ref pattern) => match regex::Regex::new(pattern) {
            Ok(re) => {
                device.flash_mut().disarm();
                device.arm_log_cut(Some(re));
            }
            Err(e) => {
                control_line(device, &Message::Err(format!("cut at-log: not a regex: {e}")));
                return true;
            }
        },
    }
    let status = matches!(cmd, Command::PowerOn | Command::Reset | Command::Status).then(|| device.status());
    control_line(device, &Message::Ok { verb, status });
    cmd != Command::Quit
}

/// A cut armed at a log line that fired: if no flash operation was cut after the line (that
/// one is reported where it happened), the device was idle and goes off now.
fn log_cut(device: &mut Device<Serial>, net: &mut Net) {
    if device.take_log_cut().is_none() {
        return;
    }
    // A boot's flash operation it stopped (an update's was reported by its session).
    if let Some(loss) = device.flash().power_loss() {
        report_loss(device, loss);
        return;
    }
    if matches!(device.power(), crate::device::Power::Off) {
        return;
    }
    net.drop_connections(device);
    device.power_off();
    control_line(device, &Message::PowerLostIdle);
}

fn report_loss(device: &mut Device<Serial>, loss: crate::flash::PowerLoss) {
    // A cut at a log line that stopped this operation is reported here, once.
    let _ = device.take_log_cut();
    let message = Message::PowerLost { op: loss.op, kind: loss.kind, addr: loss.addr, torn: loss.torn };
    control_line(device, &message);
}
