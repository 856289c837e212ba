//! The emulator process: the device's ESPHome OTA port on a loopback TCP listener, its
//! ArduinoOTA port on a loopback UDP socket (and the device's back-connection from it), the pull
//! path's connections to its broker and firmware server, its serial log on stdout (and
//! optionally a file and a UART pty), the control channel on stdin.
//!
//! One thread runs the device and sleeps until a socket, the control channel, the UART or the
//! device's next deadline is ready (mio); another only reads stdin lines and wakes it. No socket
//! call blocks: connects finish in the background, and what a peer does not take waits in its
//! link ([`link`]), so a stalled peer costs only its own link. The ESPHome port keeps one
//! waiting client, as the chip's listener (backlog 1) does, and resets the others at once. One
//! update at a time, as on the chip, where each library's update loop holds the app's loop.

mod link;

use crate::CONTROL_PREFIX;
use crate::control::{self, Command, Message};
use crate::device::{
    ArduinoInput, ArduinoStep, Device, OtaSession, PullInput, PullStep, SessionInput, SessionStep,
};
use link::{Expired, Link, Read1};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use ota_core::proto::http_pull::ConnectError;
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
    /// The ESPHome OTA port (TCP).
    pub listen: SocketAddr,
    /// The ArduinoOTA invitation port (UDP).
    pub arduino_listen: SocketAddr,
    /// Start powered off (the harness powers on when a scenario says `boot`).
    pub start_off: bool,
    /// UART0 on a pseudo-terminal (the log, and the ROM loader in download boot mode).
    pub uart: Option<crate::uart::Uart>,
}

const LISTENER: Token = Token(0);
const UDP: Token = Token(1);
const ESPHOME: Token = Token(2);
const ARDUINO: Token = Token(3);
const BROKER: Token = Token(4);
const SERVER: Token = Token(5);
const COMMANDS: Token = Token(6);
const UART: Token = Token(7);

/// How long the device tries to reach the uploader for ArduinoOTA's back-connection
/// (arduino-esp32's `WiFiClient` connect timeout), its broker or the firmware server
/// (`esp_http_client`'s connect timeout is its `timeout_ms`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the loop keeps looking (without sleeping) for a peer's next bytes after it read
/// some: a request/response exchange (ArduinoOTA's count after every 1 KiB) then does not pay a
/// sleep and a wake-up per round trip. An idle device never spins.
const EXCHANGE_SPIN: Duration = Duration::from_micros(200);
/// How long a restart waits for the broker to take in the last bytes and close its side.
const LAST_BYTES_GRACE: Duration = Duration::from_millis(500);

fn control_line(device: &mut Device<Serial>, message: &Message) {
    let out = device.serial();
    let _ = writeln!(out.stdout, "{CONTROL_PREFIX}{message}");
    let _ = out.stdout.flush();
}

const SESSION_CLOSED: Message = Message::SessionClosed { refused: false };

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

/// The ESPHome port: a listener with the chip's backlog of one.
fn esphome_listener(addr: SocketAddr) -> io::Result<TcpListener> {
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

/// The ESPHome session in progress.
struct Connection {
    link: Link,
    session: OtaSession,
    accepted: Instant,
    last_input: Instant,
}

/// The pull path's restart after a completed update: the broker link takes the last bytes
/// and is half-closed; the device restarts once the broker has closed too (or the grace ends).
struct Restart {
    broker: Option<Link>,
    until: Instant,
    shut: bool,
}

/// The device's sockets.
struct Net {
    registry: Registry,
    listener: TcpListener,
    listener_ready: bool,
    udp: UdpSocket,
    udp_ready: bool,
    /// The ESPHome session in progress.
    conn: Option<Connection>,
    /// The one client the backlog holds while the device is busy.
    waiting: Option<TcpStream>,
    /// ArduinoOTA's back-connection to the uploader.
    arduino: Option<Link>,
    /// The pull path's connection to its MQTT broker.
    broker: Option<Link>,
    /// The pull path's connection to the firmware server.
    server: Option<Link>,
    restart: Option<Restart>,
}

impl Net {
    fn link(&mut self, token: Token) -> Option<&mut Link> {
        match token {
            ESPHOME => self.conn.as_mut().map(|c| &mut c.link),
            ARDUINO => self.arduino.as_mut(),
            BROKER => self.restart.as_mut().and_then(|r| r.broker.as_mut()).or(self.broker.as_mut()),
            SERVER => self.server.as_mut(),
            _ => None,
        }
    }

    fn links(&self) -> impl Iterator<Item = &Link> {
        let restart = self.restart.as_ref().and_then(|r| r.broker.as_ref());
        let conn = self.conn.as_ref().map(|c| &c.link);
        [conn, self.arduino.as_ref(), self.broker.as_ref(), self.server.as_ref(), restart]
            .into_iter()
            .flatten()
    }

    /// The device stops serving (power, reset): every client sees its connection drop.
    fn drop_connections(&mut self, device: &mut Device<Serial>) {
        if let Some(c) = self.conn.take() {
            c.link.close(&self.registry);
            control_line(device, &SESSION_CLOSED);
        }
        if let Some(w) = self.waiting.take() {
            let _ = w.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.arduino.take() {
            a.close(&self.registry);
            control_line(device, &SESSION_CLOSED);
        }
        // The pull's peers see the connections drop (the broker then publishes the will).
        for l in [self.broker.take(), self.server.take()].into_iter().flatten() {
            l.close(&self.registry);
        }
        if let Some(r) = self.restart.take()
            && let Some(b) = r.broker
        {
            b.close(&self.registry);
        }
    }

    /// Whether there is something to do without waiting. (A client waiting in the backlog is
    /// not: each round offers it to the device, which takes it once no update runs.)
    fn has_work(&self, uart_ready: bool) -> bool {
        uart_ready
            || self.listener_ready
            || self.udp_ready
            || self.links().any(|l| l.wants_read() || l.wants_flush() || l.in_exchange(EXCHANGE_SPIN))
    }

    /// When something is due without input: the device's timers, the ESPHome client's time, a
    /// connect or a stalled queue giving up, the end of a restart's grace.
    fn next_deadline(&self, device: &Device<Serial>) -> Option<Instant> {
        let session = self.conn.as_ref().and_then(|c| c.session.deadline(c.accepted, c.last_input));
        let restart = self.restart.as_ref().map(|r| r.until);
        let links = self.links().filter_map(Link::deadline).min();
        [device.next_deadline(), session, restart, links].into_iter().flatten().min()
    }
}

/// Runs until `quit` or the end of stdin.
pub fn serve(mut device: Device<Serial>, opts: ServeOptions) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = esphome_listener(opts.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let mut udp = UdpSocket::bind(opts.arduino_listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on UDP {}: {e}", opts.arduino_listen))?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    poll.registry().register(&mut udp, UDP, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), COMMANDS)?);
    let local = listener.local_addr()?;
    let arduino_local = udp.local_addr()?;
    let mut uart = opts.uart;
    if let Some(u) = &uart {
        poll.registry().register(&mut SourceFd(&u.raw_fd()), UART, Interest::READABLE)?;
    }
    let uart_path = uart.as_ref().and_then(|u| u.path());
    control_line(&mut device, &Message::Ready { listen: local, arduino: arduino_local, uart: uart_path });
    if !opts.start_off {
        device.power_on();
    }
    let commands = spawn_stdin_reader(waker);
    let mut net = Net {
        registry: poll.registry().try_clone()?,
        listener,
        listener_ready: true,
        udp,
        udp_ready: true,
        conn: None,
        waiting: None,
        arduino: None,
        broker: None,
        server: None,
        restart: None,
    };
    let mut uart_ready = uart.is_some();
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        log_cut(&mut device, &mut net);
        // Commands first: a power cut must land between two reads of an upload.
        loop {
            match commands.try_recv() {
                Ok(Some(line)) => {
                    if !command(&mut device, &mut net, uart.as_mut(), &line) {
                        return Ok(());
                    }
                }
                Ok(None) | Err(TryRecvError::Disconnected) => return Ok(()),
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
                }
                None => {}
            }
        }
        let downloading = uart.as_ref().is_some_and(|u| u.downloading());
        if !downloading {
            step_network(&mut device, &mut net, &mut buf)?;
        }
        let timeout = if uart_ready || (net.has_work(false) && !downloading) {
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
                LISTENER => net.listener_ready = true,
                UDP => net.udp_ready = true,
                UART => uart_ready = true,
                COMMANDS => {}
                token => {
                    if let Some(link) = net.link(token) {
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
    if net.restart.is_some() {
        // The device is restarting: nothing else happens until it has.
        restart_step(device, net, buf);
        return Ok(());
    }
    if device.arduino_due() {
        let step = device.arduino_input(ArduinoInput::Poll, false);
        apply_arduino(device, net, step);
    }
    if device.pull_due() {
        let step = device.pull_input(PullInput::Poll, false);
        apply_pull(device, net, step);
    }
    if net.udp_ready {
        arduino_datagram(device, net, buf)?;
    }
    arduino_connection(device, net, buf);
    pull_connections(device, net, buf);
    accept_clients(device, net)?;
    esphome_connection(device, net, buf);
    Ok(())
}

/// The restart after a pull: the broker takes the last bytes, then closes; the device restarts.
fn restart_step(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) {
    let Some(r) = net.restart.as_mut() else { return };
    let mut done = Instant::now() >= r.until;
    if let Some(b) = r.broker.as_mut() {
        let _ = b.on_writable();
        if !r.shut && b.is_flushed() {
            b.shutdown_write();
            r.shut = true;
        }
        if r.shut && b.drain(buf) {
            done = true;
        }
    } else {
        done = true;
    }
    if done {
        let r = net.restart.take().expect("checked above");
        if let Some(b) = r.broker {
            b.close(&net.registry);
        }
        device.reboot_after_update();
        let s = device.status();
        control_line(device, &Message::Rebooted(s));
    }
}

/// Takes new clients of the ESPHome port: a free device serves one, the backlog holds one
/// more, the rest are reset.
fn accept_clients(device: &mut Device<Serial>, net: &mut Net) -> anyhow::Result<()> {
    while net.listener_ready {
        match net.listener.accept() {
            Ok((stream, _)) => {
                if net.waiting.is_none() {
                    net.waiting = Some(stream);
                } else {
                    reset(stream);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => net.listener_ready = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if net.conn.is_none() && net.waiting.is_some() && !device.arduino_busy() && !device.pull_busy() {
            start_session(device, net)?;
        }
    }
    if net.conn.is_none() && net.waiting.is_some() && !device.arduino_busy() && !device.pull_busy() {
        start_session(device, net)?;
    }
    Ok(())
}

/// The waiting client becomes the session, or is refused when nothing serves OTA.
fn start_session(device: &mut Device<Serial>, net: &mut Net) -> anyhow::Result<()> {
    let Some(stream) = net.waiting.take() else { return Ok(()) };
    match device.accept() {
        Some(session) => {
            let link = Link::accepted(&net.registry, ESPHOME, stream)?;
            let now = Instant::now();
            net.conn = Some(Connection { link, session, accepted: now, last_input: now });
        }
        None => {
            // Nothing serves OTA (off, hung, bricked): the connection is refused.
            let _ = stream.shutdown(Shutdown::Both);
            control_line(device, &Message::SessionClosed { refused: true });
        }
    }
    Ok(())
}

/// Serves the ESPHome session: one read, queued replies, the client's time.
fn esphome_connection(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) {
    let Some(c) = net.conn.as_mut() else { return };
    let mut input = match c.link.on_writable() {
        Err(_) => Some(SessionInput::Closed),
        Ok(()) => None,
    };
    if input.is_none() {
        input = match c.link.read1(buf) {
            Read1::Data(bytes) => {
                c.last_input = Instant::now();
                Some(SessionInput::Data(bytes))
            }
            Read1::Closed => Some(SessionInput::Closed),
            Read1::Nothing => {
                let expired = c.session.expired(c.accepted.elapsed(), c.last_input.elapsed());
                let stalled = c.link.expired(Instant::now()).is_some();
                (expired || stalled).then_some(if stalled {
                    SessionInput::Closed
                } else {
                    SessionInput::TimedOut
                })
            }
        };
    }
    let Some(input) = input else { return };
    let step = device.session_input(&mut c.session, input);
    match step {
        SessionStep::Continue(reply) => {
            if !reply.is_empty() && c.link.send(&reply).is_err() {
                let step = device.session_input(&mut c.session, SessionInput::Closed);
                if let SessionStep::PowerLost(loss) = step {
                    report_loss(device, loss);
                }
                if let Some(c) = net.conn.take() {
                    c.link.close(&net.registry);
                }
                control_line(device, &SESSION_CLOSED);
            }
        }
        SessionStep::Close { reply, reboot } => {
            let mut c = net.conn.take().expect("the session is there");
            let _ = c.link.send(&reply);
            c.link.finish(&net.registry);
            control_line(device, &SESSION_CLOSED);
            if reboot {
                device.reboot_after_update();
                let s = device.status();
                control_line(device, &Message::Rebooted(s));
            }
        }
        SessionStep::PowerLost(loss) => {
            if let Some(c) = net.conn.take() {
                c.link.close(&net.registry);
            }
            report_loss(device, loss);
            control_line(device, &SESSION_CLOSED);
        }
    }
}

/// One datagram on the ArduinoOTA port. Datagrams to a device that is off are lost, as on
/// the chip.
fn arduino_datagram(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) -> anyhow::Result<()> {
    let (n, from) = match net.udp.recv_from(buf) {
        Ok(got) => got,
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            net.udp_ready = false;
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
    let other_update = net.conn.is_some() || device.pull_busy();
    let step = device.arduino_input(ArduinoInput::Datagram { from, bytes: &buf[..n] }, other_update);
    apply_arduino(device, net, step);
    Ok(())
}

/// ArduinoOTA's back-connection: its connect finishing, queued bytes, one read, its timeouts.
fn arduino_connection(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) {
    let Some(link) = net.arduino.as_mut() else { return };
    let input = if link.is_connecting() {
        let outcome = match link.connect_outcome() {
            Some(true) => Some(ArduinoInput::Connected),
            Some(false) => Some(ArduinoInput::ConnectFailed),
            None => link.expired(Instant::now()).map(|_| ArduinoInput::ConnectFailed),
        };
        if matches!(outcome, Some(ArduinoInput::ConnectFailed))
            && let Some(l) = net.arduino.take()
        {
            l.close(&net.registry);
        }
        outcome
    } else if link.on_writable().is_err() || link.expired(Instant::now()).is_some() {
        Some(ArduinoInput::Closed)
    } else {
        match link.read1(buf) {
            Read1::Data(bytes) => Some(ArduinoInput::Data(bytes)),
            Read1::Closed => Some(ArduinoInput::Closed),
            Read1::Nothing => None,
        }
    };
    let Some(input) = input else { return };
    if matches!(input, ArduinoInput::Closed)
        && let Some(l) = net.arduino.take()
    {
        l.close(&net.registry);
    }
    let step = device.arduino_input(input, false);
    apply_arduino(device, net, step);
}

/// Carries out what ArduinoOTA asked for; a connect it asks for finishes later.
fn apply_arduino(device: &mut Device<Serial>, net: &mut Net, mut step: ArduinoStep) {
    loop {
        if let Some(loss) = step.power_lost {
            if let Some(a) = net.arduino.take() {
                a.close(&net.registry);
            }
            report_loss(device, loss);
            control_line(device, &SESSION_CLOSED);
            return;
        }
        for (to, bytes) in &step.datagrams {
            // A lost reply is what UDP does; the uploader retries or times out.
            let _ = net.udp.send_to(bytes, *to);
        }
        if let Some(to) = step.connect {
            match Link::connect(&net.registry, ARDUINO, to, CONNECT_TIMEOUT) {
                Ok(link) => net.arduino = Some(link),
                Err(_) => {
                    step = device.arduino_input(ArduinoInput::ConnectFailed, false);
                    continue;
                }
            }
            return;
        }
        if !step.send.is_empty()
            && let Some(link) = net.arduino.as_mut()
            && link.send(&step.send).is_err()
            && !step.close
        {
            if let Some(l) = net.arduino.take() {
                l.close(&net.registry);
            }
            step = device.arduino_input(ArduinoInput::Closed, false);
            continue;
        }
        if step.close {
            if let Some(link) = net.arduino.take() {
                link.finish(&net.registry);
            }
            let reboot = step.reboot;
            let _ = device.arduino_input(ArduinoInput::Closed, false);
            control_line(device, &SESSION_CLOSED);
            if reboot {
                device.reboot_after_update();
                let s = device.status();
                control_line(device, &Message::Rebooted(s));
            }
            return;
        }
        if step.exchange_over {
            control_line(device, &SESSION_CLOSED);
        }
        return;
    }
}

#[derive(Clone, Copy)]
enum PullLink {
    Broker,
    Server,
}

impl PullLink {
    fn slot(self, net: &mut Net) -> &mut Option<Link> {
        match self {
            PullLink::Broker => &mut net.broker,
            PullLink::Server => &mut net.server,
        }
    }

    fn data(self, bytes: &[u8]) -> PullInput<'_> {
        match self {
            PullLink::Broker => PullInput::BrokerData(bytes),
            PullLink::Server => PullInput::ServerData(bytes),
        }
    }

    fn connected(self) -> PullInput<'static> {
        match self {
            PullLink::Broker => PullInput::BrokerConnected,
            PullLink::Server => PullInput::ServerConnected,
        }
    }

    fn connect_failed(self, why: ConnectError) -> PullInput<'static> {
        match self {
            PullLink::Broker => PullInput::BrokerConnectFailed,
            PullLink::Server => PullInput::ServerConnectFailed(why),
        }
    }

    fn closed(self) -> PullInput<'static> {
        match self {
            PullLink::Broker => PullInput::BrokerClosed,
            PullLink::Server => PullInput::ServerClosed,
        }
    }
}

/// The pull path's two connections: connects finishing, queued bytes, one read each, timeouts.
fn pull_connections(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) {
    for which in [PullLink::Broker, PullLink::Server] {
        let Some(link) = which.slot(net).as_mut() else { continue };
        let input = if link.is_connecting() {
            match link.connect_outcome() {
                Some(true) => Some(which.connected()),
                Some(false) => Some(which.connect_failed(ConnectError::Refused)),
                None => link.expired(Instant::now()).map(|_| which.connect_failed(ConnectError::Timeout)),
            }
        } else if link.on_writable().is_err() || link.expired(Instant::now()) == Some(Expired::Stalled) {
            Some(which.closed())
        } else {
            match link.read1(buf) {
                Read1::Data(bytes) => Some(which.data(bytes)),
                Read1::Closed => Some(which.closed()),
                Read1::Nothing => None,
            }
        };
        let Some(input) = input else { continue };
        if matches!(
            input,
            PullInput::BrokerConnectFailed
                | PullInput::ServerConnectFailed(_)
                | PullInput::BrokerClosed
                | PullInput::ServerClosed
        ) && let Some(l) = which.slot(net).take()
        {
            l.close(&net.registry);
        }
        let step = device.pull_input(input, net.conn.is_some());
        apply_pull(device, net, step);
    }
}

/// Carries out what the pull path asked for; the connects it asks for finish later.
fn apply_pull(device: &mut Device<Serial>, net: &mut Net, mut step: PullStep) {
    loop {
        if let Some(loss) = step.power_lost {
            for l in [net.broker.take(), net.server.take()].into_iter().flatten() {
                l.close(&net.registry);
            }
            report_loss(device, loss);
            return;
        }
        let mut lost = None;
        if !step.to_broker.is_empty()
            && let Some(l) = net.broker.as_mut()
            && l.send(&step.to_broker).is_err()
        {
            if let Some(l) = net.broker.take() {
                l.close(&net.registry);
            }
            lost = Some(PullLink::Broker);
        }
        if step.close_broker
            && let Some(l) = net.broker.take()
        {
            l.finish(&net.registry);
        }
        if !step.to_server.is_empty()
            && let Some(l) = net.server.as_mut()
            && l.send(&step.to_server).is_err()
        {
            if let Some(l) = net.server.take() {
                l.close(&net.registry);
            }
            lost = Some(PullLink::Server);
        }
        if step.close_server
            && let Some(l) = net.server.take()
        {
            l.close(&net.registry);
        }
        if step.reboot {
            // `esp_restart()` after the pull: the broker sees the connection go (no DISCONNECT),
            // after the `done` status queued above.
            if let Some(l) = net.server.take() {
                l.close(&net.registry);
            }
            let broker = net.broker.take();
            net.restart = Some(Restart { broker, until: Instant::now() + LAST_BYTES_GRACE, shut: false });
            return;
        }
        if let Some(to) = step.connect_broker {
            match Link::connect(&net.registry, BROKER, to, CONNECT_TIMEOUT) {
                Ok(link) => net.broker = Some(link),
                Err(_) => {
                    step = device.pull_input(PullInput::BrokerConnectFailed, false);
                    continue;
                }
            }
        }
        if let Some(to) = &step.connect_server {
            match resolve(to).and_then(|addr| {
                Link::connect(&net.registry, SERVER, addr, CONNECT_TIMEOUT).map_err(|_| ConnectError::Refused)
            }) {
                Ok(link) => net.server = Some(link),
                Err(why) => {
                    step = device.pull_input(PullInput::ServerConnectFailed(why), false);
                    continue;
                }
            }
        }
        if let Some(link) = lost {
            step = device.pull_input(link.closed(), false);
            continue;
        }
        return;
    }
}

/// The firmware server's address (scenarios name IP addresses: the lookup is immediate).
fn resolve(to: &crate::device::ServerAddr) -> Result<SocketAddr, ConnectError> {
    use std::net::ToSocketAddrs;
    (to.host.as_str(), to.port)
        .to_socket_addrs()
        .map_err(|_| ConnectError::Dns)?
        .next()
        .ok_or(ConnectError::Dns)
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
        return run(device, cmd, verb);
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
    run(device, cmd, verb)
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
