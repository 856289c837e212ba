//! The board's serial log, read on its own thread: bytes from the log port split into lines,
//! kept across resets, and across a USB-JTAG-Serial port that disappears while the chip resets
//! and comes back (the thread reopens the path until it is there again). When the log port is
//! also the flashing port, the thread lets go of it while a flasher talks to the ROM loader.

use crate::tripwire::Tripwire;
use serialport::{ClearBuffer, SerialPort, TTYPort};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a missing port is looked for again.
const REOPEN_EVERY: Duration = Duration::from_millis(50);
/// How long a read waits before the thread looks at its commands again.
const READ_SLICE: Duration = Duration::from_millis(10);
/// The longest line kept whole; a UART spewing without newlines is cut into lines this long.
const MAX_LINE: usize = 4096;

enum Ctl {
    /// Close the port and say so (a flasher needs it).
    Release(Sender<()>),
    /// Open it again; what the port holds from before is dropped (the loader's answers).
    Take(Sender<()>),
}

/// What the reader does when the tripwire trips (a bench's power switch thrown).
pub type TripAction = Box<dyn FnOnce() + Send>;

/// The log port's reader thread and the lines it read.
pub struct Console {
    ctl: Sender<Ctl>,
    lines: Receiver<String>,
    thread: Option<JoinHandle<()>>,
    trip: Arc<Tripwire>,
    action: Arc<Mutex<Option<TripAction>>>,
}

impl Console {
    /// Starts reading `path` at `baud`. A port that cannot be opened yet is retried; the first
    /// lines wait in the channel until read.
    pub fn open(path: PathBuf, baud: u32) -> Console {
        let (ctl, ctl_rx) = mpsc::channel();
        let (tx, lines) = mpsc::channel();
        let trip: Arc<Tripwire> = Arc::default();
        let action: Arc<Mutex<Option<TripAction>>> = Arc::default();
        let sink = LineSink { tx, trip: trip.clone(), action: action.clone() };
        let thread = std::thread::Builder::new()
            .name("otahil-console".into())
            .spawn(move || read_loop(&path, baud, &ctl_rx, &sink))
            .expect("spawning a thread");
        Console { ctl, lines, thread: Some(thread), trip, action }
    }

    /// The reader runs `action` the moment a line matches `pattern` (then passes no more lines
    /// on until [`Console::take`] or [`Console::rearm`]).
    pub fn arm_trip(&self, pattern: regex::Regex, action: TripAction) {
        *self.action.lock().unwrap_or_else(|p| p.into_inner()) = Some(action);
        self.trip.arm(pattern);
    }

    pub fn disarm_trip(&self) {
        self.trip.disarm();
        self.action.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Whether `line` (just taken) is the one that tripped the wire.
    pub fn tripped_by(&self, line: &str) -> bool {
        self.trip.take_if_tripped_by(line)
    }

    /// The board is powered again: lines flow again.
    pub fn rearm(&self) {
        self.trip.clear_fired();
    }

    /// Closes the port until [`Console::take`]; returns once it is closed.
    pub fn release(&self) {
        let (done, wait) = mpsc::channel();
        if self.ctl.send(Ctl::Release(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(2));
        }
    }

    /// Opens the port again; returns once it is open (or found missing, then it is retried),
    /// so what the chip prints from now on is read.
    pub fn take(&self) {
        self.trip.clear_fired();
        let (done, wait) = mpsc::channel();
        if self.ctl.send(Ctl::Take(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(2));
        }
    }

    /// The next line, waiting at most `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // Dropping the command sender ends the thread at its next look.
        let (ctl, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.ctl, ctl));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(path: &Path, baud: u32) -> Option<TTYPort> {
    let port = serialport::new(path.to_string_lossy(), baud).timeout(READ_SLICE).open_native();
    match port {
        Ok(mut p) => {
            // A reset through the same port (DTR/RTS) opens it a second time.
            let _ = p.set_exclusive(false);
            Some(p)
        }
        Err(e) => {
            tracing::trace!(path = %path.display(), error = %e, "log port not there (yet)");
            None
        }
    }
}

/// Where the reader's lines go, past the tripwire.
struct LineSink {
    tx: Sender<String>,
    trip: Arc<Tripwire>,
    action: Arc<Mutex<Option<TripAction>>>,
}

impl LineSink {
    /// `false` once nobody listens.
    fn line(&self, text: String) -> bool {
        if self.trip.tripped() {
            // The power went at an earlier line: the rest is timing, not behaviour.
            return true;
        }
        if self.trip.trips(&text)
            && let Some(action) = self.action.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            action();
        }
        self.tx.send(text).is_ok()
    }
}

fn read_loop(path: &Path, baud: u32, ctl: &Receiver<Ctl>, tx: &LineSink) {
    let mut port: Option<TTYPort> = None;
    let mut released = false;
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match ctl.try_recv() {
            Ok(Ctl::Release(done)) => {
                port = None;
                released = true;
                let _ = done.send(());
            }
            Ok(Ctl::Take(done)) => {
                released = false;
                port = open(path, baud);
                if let Some(p) = &port {
                    let _ = p.clear(ClearBuffer::Input);
                }
                let _ = done.send(());
            }
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if released {
            std::thread::sleep(READ_SLICE);
            continue;
        }
        let Some(p) = port.as_mut() else {
            std::thread::sleep(REOPEN_EVERY);
            port = open(path, baud);
            continue;
        };
        match p.read(&mut buf) {
            Ok(0) => std::thread::sleep(READ_SLICE),
            Ok(n) => {
                for &b in &buf[..n] {
                    if b == b'\n' || line.len() >= MAX_LINE {
                        let text = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                        line.clear();
                        if !tx.line(text) {
                            return;
                        }
                        if b == b'\n' {
                            continue;
                        }
                    }
                    line.push(b);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // A USB-JTAG-Serial port goes away while the chip resets: wait for it.
                tracing::debug!(path = %path.display(), error = %e, "log port lost; reopening");
                port = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_are_split_kept_across_a_release_and_stale_bytes_dropped() {
        let (mut master, slave) = TTYPort::pair().expect("a pty pair");
        let path = PathBuf::from(slave.name().expect("a pty has a name"));
        let console = Console::open(path, 115_200);
        // Keep `slave` open so the master never sees the last reader go.
        master.write_all(b"I (1) app: one\r\nI (2) app: tw").unwrap();
        assert_eq!(console.next_line(Duration::from_secs(2)).as_deref(), Some("I (1) app: one"));
        master.write_all(b"o\n").unwrap();
        assert_eq!(console.next_line(Duration::from_secs(2)).as_deref(), Some("I (2) app: two"));
        console.release();
        master.write_all(b"\xc0\x01\x08stale loader answer\xc0").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // The pty holds the stale bytes for its next reader; taking the port drops them.
        console.take();
        std::thread::sleep(Duration::from_millis(50));
        master.write_all(b"I (3) app: three\n").unwrap();
        assert_eq!(console.next_line(Duration::from_secs(2)).as_deref(), Some("I (3) app: three"));
        assert_eq!(console.next_line(Duration::from_millis(50)), None);
        // A tripwire: the action runs in the reader at the matching line, later lines are dropped.
        let (thrown, seen) = mpsc::channel();
        console
            .arm_trip(regex::Regex::new("progress 50%").unwrap(), Box::new(move || thrown.send(()).unwrap()));
        master.write_all(b"I (4) ota: progress 50%\nI (5) ota: progress 75%\n").unwrap();
        assert!(seen.recv_timeout(Duration::from_secs(2)).is_ok(), "the switch was thrown");
        let line = console.next_line(Duration::from_secs(2)).unwrap();
        assert!(console.tripped_by(&line), "{line}");
        assert_eq!(console.next_line(Duration::from_millis(100)), None, "nothing after the cut");
        drop(slave);
    }
}
