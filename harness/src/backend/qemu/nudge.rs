//! Wakes QEMU's main loop at a steady rate while the device runs.
//!
//! QEMU polls slirp's host sockets from its main loop, with a poll set it computes before each
//! sleep. When a guest packet changes a socket's state (the SYN-ACK that completes a forwarded
//! connection, the SYN of a connection the guest opens), the change happens on the vCPU thread
//! and nothing wakes the main loop: it sleeps out its timeout (499 ms while TCP connections are
//! open, libslirp's slow timer) before it polls the new socket. `strace` of QEMU 8.1.3 with
//! libslirp 4.7.0 shows it: `accept()` of the forwarded connection, a `ppoll` without the new
//! socket that times out 499 ms later, only then the `recvfrom` of the client's first bytes.
//! Every ESPHome upload lost 500 ms before its first answer, and an ArduinoOTA invitation's
//! answer could come after an uploader's 300 ms answer timeout.
//!
//! A QMP command is dispatched in the main loop's context, so each one wakes it; `query-status`
//! changes nothing. The guest and its timing are untouched: this only bounds how stale the main
//! loop's view of slirp's sockets gets, to about [`INTERVAL`].

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the main loop is woken.
pub const INTERVAL: Duration = Duration::from_millis(5);
/// How long QEMU gets to open its QMP socket after it was started.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);

/// The QEMU arguments that open the QMP socket the nudger talks to at `socket`.
pub fn qemu_args(socket: &Path) -> [String; 2] {
    ["-qmp".into(), format!("unix:{},server=on,wait=off", socket.display())]
}

/// A QMP command to run, and where its outcome goes.
type Request = (&'static str, Sender<Result<(), QmpError>>);

/// Why a QMP command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QmpError {
    #[error("the QMP connection is gone")]
    Gone,
    #[error("no answer to QMP `{command}` within {timeout:?}")]
    NoAnswer { command: &'static str, timeout: Duration },
    /// QEMU's answer, as it gave it.
    #[error("QEMU refused it: {0}")]
    Refused(String),
}

/// Sends `query-status` to QEMU's QMP socket every [`INTERVAL`] until dropped, connecting again
/// to each new process on the same socket path; on the same connection (QMP takes one client),
/// runs the commands the backend asks for.
pub struct Nudger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    requests: Sender<Request>,
}

impl Nudger {
    pub fn start(socket: PathBuf) -> Nudger {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (requests, incoming) = channel();
        let thread = std::thread::spawn(move || {
            // QEMU going away ends a connection; the next process (after a guest reset) opens
            // the socket again. Anything else only costs speed.
            while !flag.load(Ordering::Relaxed) {
                if let Err(e) = nudge(&socket, &flag, &incoming) {
                    if gone(&e) {
                        continue;
                    }
                    if !flag.load(Ordering::Relaxed) {
                        tracing::warn!(
                            "QEMU's main loop is not nudged ({e}): forwarded connections may start up to 0.5 s late"
                        );
                    }
                    return;
                }
            }
        });
        Nudger { stop, thread: Some(thread), requests }
    }

    /// Runs QMP command `command` (`stop`, `cont`) and waits for QEMU's answer.
    pub fn execute(&self, command: &'static str, timeout: Duration) -> Result<(), QmpError> {
        let (tx, rx) = channel();
        self.requests.send((command, tx)).map_err(|_| QmpError::Gone)?;
        rx.recv_timeout(timeout).map_err(|_| QmpError::NoAnswer { command, timeout })?
    }
}

impl Drop for Nudger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `e` is QEMU going away mid-connection (a guest reset ends its process).
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
    )
}

fn connect(socket: &Path, stop: &AtomicBool) -> std::io::Result<Option<UnixStream>> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Reads lines until one of them contains `want`.
fn read_until(reader: &mut BufReader<UnixStream>, want: &str) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "QMP socket closed"));
        }
        if line.contains(want) {
            return Ok(());
        }
    }
}

/// The `id` the backend's own commands carry, to tell their answers from the nudges'.
const ID: &str = "otahil";

fn nudge(socket: &Path, stop: &AtomicBool, requests: &Receiver<Request>) -> std::io::Result<()> {
    let Some(stream) = connect(socket, stop)? else { return Ok(()) };
    stream.set_read_timeout(Some(GREETING_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    read_until(&mut reader, "\"QMP\"")?;
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    read_until(&mut reader, "\"return\"")?;
    let mut pending: Option<Sender<Result<(), QmpError>>> = None;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        if pending.is_none()
            && let Ok((command, reply)) = requests.try_recv()
        {
            writer.write_all(format!("{{\"execute\":\"{command}\",\"id\":\"{ID}\"}}\n").as_bytes())?;
            pending = Some(reply);
        }
        writer.write_all(b"{\"execute\":\"query-status\"}\n")?;
        // Read the answers (QEMU stops reading a client whose answers pile up) until the next
        // nudge is due.
        let next = Instant::now() + INTERVAL;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            reader.get_ref().set_read_timeout(Some(left))?;
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) if line.ends_with('\n') => {
                    if line.contains(&format!("\"{ID}\""))
                        && let Some(reply) = pending.take()
                    {
                        let _ = reply.send(if line.contains("\"return\"") {
                            Ok(())
                        } else {
                            Err(QmpError::Refused(line.trim().to_string()))
                        });
                    }
                    line.clear();
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in QMP server: greets, takes the capabilities negotiation, answers every command.
    fn fake_qmp(listener: UnixListener, commands: std::sync::mpsc::Sender<String>) {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        writer.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").unwrap();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            // QMP echoes a command's id in its answer.
            let answer = match line.contains("\"id\"") {
                true => "{\"return\": {}, \"id\": \"otahil\"}\r\n",
                false => "{\"return\": {}}\r\n",
            };
            let _ = commands.send(line);
            if writer.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    #[test]
    fn negotiates_then_sends_a_harmless_query_at_a_steady_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || fake_qmp(listener, tx));
        let nudger = Nudger::start(path);
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, "{\"execute\":\"qmp_capabilities\"}");
        for _ in 0..3 {
            let next = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(next, "{\"execute\":\"query-status\"}");
        }
        nudger.execute("stop", Duration::from_secs(5)).expect("answered");
        let sent: Vec<String> = rx.try_iter().collect();
        assert!(sent.contains(&"{\"execute\":\"stop\",\"id\":\"otahil\"}".to_string()), "{sent:?}");
        drop(nudger);
    }

    #[test]
    fn stops_when_dropped_before_qemu_opened_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let nudger = Nudger::start(dir.path().join("never.sock"));
        let t = Instant::now();
        drop(nudger);
        assert!(t.elapsed() < CONNECT_TIMEOUT, "drop waited for the connect timeout");
    }
}
