//! The emulator process: the device's ESPHome OTA port on a loopback TCP listener, its
//! ArduinoOTA port on a loopback UDP socket (and the device's back-connections from it), its
//! serial log on stdout (and optionally a file), the control channel on stdin. One thread runs
//! the device; another only reads stdin lines into a channel. One update at a time, as on the
//! chip, where each library's update loop holds the app's loop until it is done.

use crate::CONTROL_PREFIX;
use crate::control::{self, Command, Message};
use crate::device::{
    ArduinoInput, ArduinoStep, Device, OtaSession, PullInput, PullStep, SessionInput, SessionStep,
};
use ota_core::proto::http_pull::ConnectError;
use std::fs::File;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
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

struct Connection {
    stream: TcpStream,
    session: OtaSession,
    accepted: Instant,
    last_input: Instant,
}

fn control_line(device: &mut Device<Serial>, message: &Message) {
    let out = device.serial();
    let _ = writeln!(out.stdout, "{CONTROL_PREFIX}{message}");
    let _ = out.stdout.flush();
}

const SESSION_CLOSED: Message = Message::SessionClosed { refused: false };

fn spawn_stdin_reader() -> Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// How long the device tries to reach the uploader for the back-connection (arduino-esp32's
/// `WiFiClient` connect timeout).
const ARDUINO_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The sockets of the device's network services.
struct Net {
    listener: TcpListener,
    udp: UdpSocket,
    /// The ESPHome session in progress.
    conn: Option<Connection>,
    /// ArduinoOTA's back-connection to the uploader.
    arduino: Option<TcpStream>,
    /// The pull path's connection to its MQTT broker.
    broker: Option<TcpStream>,
    /// The pull path's connection to the firmware server.
    server: Option<TcpStream>,
}

impl Net {
    /// The device stops serving (power, reset): every client sees its connection drop.
    fn drop_connections(&mut self, device: &mut Device<Serial>) {
        if let Some(c) = self.conn.take() {
            let _ = c.stream.shutdown(Shutdown::Both);
            control_line(device, &SESSION_CLOSED);
        }
        if let Some(a) = self.arduino.take() {
            let _ = a.shutdown(Shutdown::Both);
            control_line(device, &SESSION_CLOSED);
        }
        // The pull's peers see the connections drop (the broker then publishes the will).
        for s in [self.broker.take(), self.server.take()].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Runs until `quit` or the end of stdin.
pub fn serve(mut device: Device<Serial>, opts: ServeOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    listener.set_nonblocking(true)?;
    let udp = UdpSocket::bind(opts.arduino_listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on UDP {}: {e}", opts.arduino_listen))?;
    udp.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let arduino_local = udp.local_addr()?;
    let mut uart = opts.uart;
    let uart_path = uart.as_ref().and_then(|u| u.path());
    control_line(&mut device, &Message::Ready { listen: local, arduino: arduino_local, uart: uart_path });
    if !opts.start_off {
        device.power_on();
    }
    let commands = spawn_stdin_reader();
    let mut net = Net { listener, udp, conn: None, arduino: None, broker: None, server: None };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        log_cut(&mut device, &mut net);
        // Commands first: a power cut must land between two reads of an upload.
        loop {
            let busy = net.conn.is_some() || net.arduino.is_some() || net.server.is_some();
            let wait = if busy { Duration::ZERO } else { Duration::from_millis(1) };
            let line = match commands.recv_timeout(wait) {
                Ok(Some(line)) => line,
                Ok(None) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => break,
            };
            if !command(&mut device, &mut net, uart.as_mut(), &line) {
                return Ok(());
            }
        }
        if let Some(u) = uart.as_mut() {
            let downloading = u.downloading();
            let exit = u.poll(device.flash_mut(), |r| eprintln!("rom loader: {r}"))?;
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
            if downloading {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        let mut active = arduino_datagrams(&mut device, &mut net, &mut buf)?;
        active |= arduino_connection(&mut device, &mut net, &mut buf);
        active |= pull_connections(&mut device, &mut net, &mut buf);
        if device.arduino_busy() || device.pull_busy() {
            // ArduinoOTA's `_runUpdate` holds the device's loop, and one update runs at a time:
            // ESPHome waits in the backlog.
            if !active {
                std::thread::sleep(Duration::from_micros(200));
            }
            continue;
        }
        if net.conn.is_none() {
            match net.listener.accept() {
                Ok((stream, _)) => {
                    if let Some(session) = device.accept() {
                        stream.set_nonblocking(true)?;
                        stream.set_nodelay(true)?;
                        let now = Instant::now();
                        net.conn = Some(Connection { stream, session, accepted: now, last_input: now });
                    } else {
                        // Nothing serves OTA (off, hung, bricked): the connection is refused.
                        let _ = stream.shutdown(Shutdown::Both);
                        control_line(&mut device, &Message::SessionClosed { refused: true });
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        if !esphome_connection(&mut device, &mut net, &mut buf) && !active {
            std::thread::sleep(Duration::from_micros(200));
        }
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

/// Reads the ArduinoOTA port; true if a datagram came. Datagrams to a device that is off are
/// lost, as on the chip.
fn arduino_datagrams(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) -> anyhow::Result<bool> {
    let (n, from) = match net.udp.recv_from(buf) {
        Ok(got) => got,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let other_update = net.conn.is_some() || device.pull_busy();
    let step = device.arduino_input(ArduinoInput::Datagram { from, bytes: &buf[..n] }, other_update);
    apply_arduino(device, net, step);
    Ok(true)
}

/// Reads ArduinoOTA's back-connection and runs its timers; true if bytes came.
fn arduino_connection(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) -> bool {
    if device.arduino_due() {
        let step = device.arduino_input(ArduinoInput::Poll, false);
        apply_arduino(device, net, step);
    }
    let Some(stream) = net.arduino.as_mut() else { return false };
    let input = match stream.read(buf) {
        Ok(0) => ArduinoInput::Closed,
        Ok(n) => ArduinoInput::Data(&buf[..n]),
        Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
        Err(_) => ArduinoInput::Closed,
    };
    let closed = matches!(input, ArduinoInput::Closed);
    if closed {
        net.arduino = None;
    }
    let step = device.arduino_input(input, false);
    apply_arduino(device, net, step);
    !closed
}

/// Carries out what ArduinoOTA asked for, feeding the outcome of each socket call back to it.
fn apply_arduino(device: &mut Device<Serial>, net: &mut Net, mut step: ArduinoStep) {
    loop {
        if let Some(loss) = step.power_lost {
            if let Some(a) = net.arduino.take() {
                let _ = a.shutdown(Shutdown::Both);
            }
            report_loss(device, loss);
            control_line(device, &SESSION_CLOSED);
            return;
        }
        for (to, bytes) in &step.datagrams {
            // A lost reply is what UDP does; the uploader retries or times out.
            let _ = net.udp.send_to(bytes, to);
        }
        if let Some(to) = step.connect {
            let input = match TcpStream::connect_timeout(&to, ARDUINO_CONNECT_TIMEOUT) {
                Ok(stream) if stream.set_nonblocking(true).is_ok() => {
                    let _ = stream.set_nodelay(true);
                    net.arduino = Some(stream);
                    ArduinoInput::Connected
                }
                _ => ArduinoInput::ConnectFailed,
            };
            step = device.arduino_input(input, false);
            continue;
        }
        if !step.send.is_empty()
            && let Some(stream) = net.arduino.as_mut()
        {
            // Counts and texts are a few bytes: the socket takes them whole.
            let _ = stream.set_nonblocking(false);
            let sent = stream.write_all(&step.send);
            let _ = stream.set_nonblocking(true);
            if sent.is_err() && !step.close {
                net.arduino = None;
                step = device.arduino_input(ArduinoInput::Closed, false);
                continue;
            }
        }
        if step.close {
            if let Some(stream) = net.arduino.take() {
                let _ = stream.shutdown(Shutdown::Write);
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

/// How long the device tries to reach its broker or the firmware server (`esp_http_client`'s
/// connect timeout is its `timeout_ms`; loopback answers at once or never).
const PULL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a restart waits for the broker to take in the last bytes and close its side.
const LAST_BYTES_GRACE: Duration = Duration::from_millis(500);

/// Ends a connection so that what was written reaches the peer: a FIN after the data, then what
/// the peer still sends is read and dropped until it closes too (or the grace ends). Closing a
/// socket with unread bytes makes the kernel send a reset, and a peer that gets the reset before
/// it has read the last publication loses it (mosquitto lost the `done` status that way in 1 of 7
/// runs of a scenario). The chip's firmware likewise closes and waits before it restarts.
fn close_after_sending(s: TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LAST_BYTES_GRACE;
    let _ = s.set_nonblocking(false);
    let mut sink = [0u8; 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).is_err() {
            break;
        }
        match (&s).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Runs the pull path's timers and reads its two connections; true if bytes came.
fn pull_connections(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) -> bool {
    if device.pull_due() {
        let step = device.pull_input(PullInput::Poll, false);
        apply_pull(device, net, step);
    }
    let mut active = false;
    for link in [Link::Broker, Link::Server] {
        let slot = link.stream(net);
        let Some(stream) = slot.as_mut() else { continue };
        let input = match stream.read(buf) {
            Ok(0) => None,
            Ok(n) => {
                active = true;
                Some(link.data(&buf[..n]))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(_) => None,
        };
        let input = input.unwrap_or_else(|| {
            *slot = None;
            link.closed()
        });
        let step = device.pull_input(input, net.conn.is_some());
        apply_pull(device, net, step);
    }
    active
}

#[derive(Clone, Copy)]
enum Link {
    Broker,
    Server,
}

impl Link {
    fn stream(self, net: &mut Net) -> &mut Option<TcpStream> {
        match self {
            Link::Broker => &mut net.broker,
            Link::Server => &mut net.server,
        }
    }

    fn data(self, bytes: &[u8]) -> PullInput<'_> {
        match self {
            Link::Broker => PullInput::BrokerData(bytes),
            Link::Server => PullInput::ServerData(bytes),
        }
    }

    fn closed(self) -> PullInput<'static> {
        match self {
            Link::Broker => PullInput::BrokerClosed,
            Link::Server => PullInput::ServerClosed,
        }
    }
}

/// Carries out what the pull path asked for, feeding the outcome of each socket call back to it.
fn apply_pull(device: &mut Device<Serial>, net: &mut Net, mut step: PullStep) {
    loop {
        if let Some(loss) = step.power_lost {
            for s in [net.broker.take(), net.server.take()].into_iter().flatten() {
                let _ = s.shutdown(Shutdown::Both);
            }
            report_loss(device, loss);
            return;
        }
        let mut lost = None;
        if !step.to_broker.is_empty()
            && let Some(s) = net.broker.as_mut()
            && !write_blocking(s, &step.to_broker)
        {
            net.broker = None;
            lost = Some(Link::Broker);
        }
        if step.close_broker
            && let Some(s) = net.broker.take()
        {
            let _ = s.shutdown(Shutdown::Write);
        }
        if !step.to_server.is_empty()
            && let Some(s) = net.server.as_mut()
            && !write_blocking(s, &step.to_server)
        {
            net.server = None;
            lost = Some(Link::Server);
        }
        if step.close_server
            && let Some(s) = net.server.take()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        if step.reboot {
            // `esp_restart()` after the pull: the broker sees the connection go (no DISCONNECT),
            // after the `done` status written above.
            if let Some(s) = net.broker.take() {
                close_after_sending(s);
            }
            if let Some(s) = net.server.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
            device.reboot_after_update();
            let s = device.status();
            control_line(device, &Message::Rebooted(s));
            return;
        }
        if let Some(to) = step.connect_broker {
            let input = match TcpStream::connect_timeout(&to, PULL_CONNECT_TIMEOUT) {
                Ok(stream) if stream.set_nonblocking(true).is_ok() => {
                    let _ = stream.set_nodelay(true);
                    net.broker = Some(stream);
                    PullInput::BrokerConnected
                }
                _ => PullInput::BrokerConnectFailed,
            };
            step = device.pull_input(input, false);
            continue;
        }
        if let Some(to) = step.connect_server {
            let input = match connect_server(&to) {
                Ok(stream) => {
                    net.server = Some(stream);
                    PullInput::ServerConnected
                }
                Err(why) => PullInput::ServerConnectFailed(why),
            };
            step = device.pull_input(input, false);
            continue;
        }
        if let Some(link) = lost {
            step = device.pull_input(link.closed(), false);
            continue;
        }
        return;
    }
}

/// The firmware server's TCP connection (for https, ota-core's TLS layer runs over it, as on the
/// chip).
fn connect_server(to: &crate::device::ServerAddr) -> Result<TcpStream, ConnectError> {
    use std::net::ToSocketAddrs;
    let addr = (to.host.as_str(), to.port)
        .to_socket_addrs()
        .map_err(|_| ConnectError::Dns)?
        .next()
        .ok_or(ConnectError::Dns)?;
    let stream = TcpStream::connect_timeout(&addr, PULL_CONNECT_TIMEOUT).map_err(|e| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ConnectError::Timeout,
        _ => ConnectError::Refused,
    })?;
    stream.set_nonblocking(true).map_err(|_| ConnectError::Refused)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Serves the ESPHome session; true if bytes came.
fn esphome_connection(device: &mut Device<Serial>, net: &mut Net, buf: &mut [u8]) -> bool {
    let Some(c) = net.conn.as_mut() else { return false };
    let mut got_bytes = false;
    let input = match c.stream.read(buf) {
        Ok(0) => SessionInput::Closed,
        Ok(n) => {
            c.last_input = Instant::now();
            got_bytes = true;
            SessionInput::Data(&buf[..n])
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            if !c.session.expired(c.accepted.elapsed(), c.last_input.elapsed()) {
                return false;
            }
            SessionInput::TimedOut
        }
        Err(_) => SessionInput::Closed,
    };
    let step = device.session_input(&mut c.session, input);
    match step {
        SessionStep::Continue(reply) => {
            if !reply.is_empty() && !write_blocking(&mut c.stream, &reply) {
                let step = device.session_input(&mut c.session, SessionInput::Closed);
                if let SessionStep::PowerLost(loss) = step {
                    report_loss(device, loss);
                }
                net.conn = None;
                control_line(device, &SESSION_CLOSED);
            }
        }
        SessionStep::Close { reply, reboot } => {
            let _ = write_blocking(&mut c.stream, &reply);
            let _ = c.stream.shutdown(Shutdown::Write);
            net.conn = None;
            control_line(device, &SESSION_CLOSED);
            if reboot {
                device.reboot_after_update();
                let s = device.status();
                control_line(device, &Message::Rebooted(s));
            }
        }
        SessionStep::PowerLost(loss) => {
            let _ = c.stream.shutdown(Shutdown::Both);
            net.conn = None;
            report_loss(device, loss);
            control_line(device, &SESSION_CLOSED);
        }
    }
    got_bytes
}

/// Writes all of `bytes` on a non-blocking stream (replies are a few bytes).
fn write_blocking(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    let _ = stream.set_nonblocking(false);
    let ok = stream.write_all(bytes).is_ok();
    let _ = stream.set_nonblocking(true);
    ok
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
