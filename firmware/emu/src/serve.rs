//! The emulator process: the device's OTA port on a loopback TCP listener, its serial log on
//! stdout (and optionally a file), the control channel on stdin. One thread runs the device;
//! another only reads stdin lines into a channel.

use crate::CONTROL_PREFIX;
use crate::control::{self, Command};
use crate::device::{Device, OtaSession, SessionInput, SessionStep};
use std::fs::File;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The serial port: stdout, plus a copy in a file when asked.
pub struct Serial {
    pub stdout: io::Stdout,
    pub file: Option<File>,
}

impl Write for Serial {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = &mut self.file {
            f.write_all(buf)?;
        }
        self.stdout.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()
    }
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Start powered off (the harness powers on when a scenario says `boot`).
    pub start_off: bool,
    /// A session with no bytes from the client for this long is dropped (as a device timeout).
    pub session_timeout: Duration,
}

struct Connection {
    stream: TcpStream,
    session: OtaSession,
    last_input: Instant,
}

fn control_line(device: &mut Device<Serial>, text: &str) {
    let out = device.serial();
    let _ = writeln!(out.stdout, "{CONTROL_PREFIX}{text}");
    let _ = out.stdout.flush();
}

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

/// Runs until `quit` or the end of stdin.
pub fn serve(mut device: Device<Serial>, opts: ServeOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    control_line(&mut device, &format!("ready listen={local}"));
    if !opts.start_off {
        device.power_on();
    }
    let commands = spawn_stdin_reader();
    let mut conn: Option<Connection> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Commands first: a power cut must land between two reads of an upload.
        loop {
            let wait = if conn.is_some() { Duration::ZERO } else { Duration::from_millis(2) };
            let line = match commands.recv_timeout(wait) {
                Ok(Some(line)) => line,
                Ok(None) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => break,
            };
            match control::parse(&line) {
                Err(e) => control_line(&mut device, &format!("err {e}")),
                Ok(cmd) => {
                    if matches!(cmd, Command::PowerOn | Command::PowerOff | Command::Reset) {
                        // The device stops serving: the client sees the connection drop.
                        if let Some(c) = conn.take() {
                            let _ = c.stream.shutdown(Shutdown::Both);
                            control_line(&mut device, "event session-closed");
                        }
                    }
                    match cmd {
                        Command::PowerOn => {
                            device.power_off();
                            device.power_on();
                            let s = device.status();
                            control_line(&mut device, &format!("ok power-on {s}"));
                        }
                        Command::PowerOff => {
                            device.power_off();
                            control_line(&mut device, "ok power-off");
                        }
                        Command::Reset => {
                            device.reset();
                            let s = device.status();
                            control_line(&mut device, &format!("ok reset {s}"));
                        }
                        Command::Status => {
                            let s = device.status();
                            control_line(&mut device, &format!("ok status {s}"));
                        }
                        Command::Cut(fault) => {
                            match fault {
                                Some(f) => device.flash_mut().arm(f),
                                None => device.flash_mut().disarm(),
                            }
                            control_line(&mut device, "ok cut");
                        }
                        Command::Quit => {
                            control_line(&mut device, "ok quit");
                            return Ok(());
                        }
                    }
                }
            }
        }
        if conn.is_none() {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(session) = device.accept() {
                        stream.set_nonblocking(false)?;
                        stream.set_read_timeout(Some(Duration::from_millis(2)))?;
                        stream.set_nodelay(true)?;
                        conn = Some(Connection { stream, session, last_input: Instant::now() });
                    } else {
                        // Nothing serves OTA (off, hung, bricked): the connection is refused.
                        let _ = stream.shutdown(Shutdown::Both);
                        control_line(&mut device, "event session-closed refused");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let c = conn.as_mut().expect("checked above");
        let input = match c.stream.read(&mut buf) {
            Ok(0) => SessionInput::Closed,
            Ok(n) => {
                c.last_input = Instant::now();
                SessionInput::Data(&buf[..n])
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if c.last_input.elapsed() < opts.session_timeout {
                    continue;
                }
                SessionInput::TimedOut
            }
            Err(_) => SessionInput::Closed,
        };
        let step = device.session_input(&mut c.session, input);
        match step {
            SessionStep::Continue(reply) => {
                if !reply.is_empty() && c.stream.write_all(&reply).is_err() {
                    let step = device.session_input(&mut c.session, SessionInput::Closed);
                    if let SessionStep::PowerLost(loss) = step {
                        report_loss(&mut device, loss);
                    }
                    conn = None;
                    control_line(&mut device, "event session-closed");
                }
            }
            SessionStep::Close { reply, reboot } => {
                let _ = c.stream.write_all(&reply);
                let _ = c.stream.shutdown(Shutdown::Write);
                conn = None;
                control_line(&mut device, "event session-closed");
                if reboot {
                    device.reboot_after_update();
                    let s = device.status();
                    control_line(&mut device, &format!("event rebooted {s}"));
                }
            }
            SessionStep::PowerLost(loss) => {
                let _ = c.stream.shutdown(Shutdown::Both);
                conn = None;
                report_loss(&mut device, loss);
                control_line(&mut device, "event session-closed");
            }
        }
    }
}

fn report_loss(device: &mut Device<Serial>, loss: crate::flash::PowerLoss) {
    let kind = match loss.kind {
        crate::flash::OpKind::Erase => "erase",
        crate::flash::OpKind::Program => "program",
    };
    control_line(
        device,
        &format!("event power-lost op={} kind={kind} addr={:#x} torn={}", loss.op, loss.addr, loss.torn),
    );
}
