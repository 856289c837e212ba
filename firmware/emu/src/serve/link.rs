//! One TCP connection of the device, never blocking: a connect completes in the background
//! (or gives up after its timeout), what the peer does not take yet waits in a queue, and a
//! queue that has not moved for the network timeout ends the link. While bytes wait, the link
//! is not read, as on the chip, where the task that owns the socket is blocked writing.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

/// esp-mqtt's `MQTT_NETWORK_TIMEOUT_MS` (and the transports' write timeout on the chip): how
/// long bytes may wait for a peer that does not read before the link is given up.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Link {
    stream: TcpStream,
    /// Bytes the peer has not taken yet.
    queue: Vec<u8>,
    /// Since when the queue has waited.
    stalled_since: Option<Instant>,
    /// A connect under way, and when it gives up.
    connecting: Option<Instant>,
    /// The socket said it is readable, and no read has found it empty since.
    readable: bool,
    /// The socket said it is writable (or connected) since the last check.
    writable: bool,
    /// When a read last brought bytes.
    last_data: Option<Instant>,
}

/// What one read found.
pub enum Read1<'b> {
    Data(&'b [u8]),
    /// Nothing now (or bytes wait to go out first).
    Nothing,
    Closed,
}

/// Why a link gave up on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    Connect,
    Stalled,
}

impl Link {
    /// Starts connecting to `to`; `Err` when the attempt fails at once.
    pub fn connect(registry: &Registry, token: Token, to: SocketAddr, timeout: Duration) -> io::Result<Link> {
        let mut stream = TcpStream::connect(to)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Link {
            stream,
            queue: Vec::new(),
            stalled_since: None,
            connecting: Some(Instant::now() + timeout),
            readable: false,
            writable: false,
            last_data: None,
        })
    }

    /// A connection a listener accepted.
    pub fn accepted(registry: &Registry, token: Token, mut stream: TcpStream) -> io::Result<Link> {
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = stream.set_nodelay(true);
        // Whatever the peer sent while it waited is there to read.
        Ok(Link {
            stream,
            queue: Vec::new(),
            stalled_since: None,
            connecting: None,
            readable: true,
            writable: true,
            last_data: None,
        })
    }

    /// What the event loop saw for this link's token.
    pub fn ready(&mut self, event: &mio::event::Event) {
        self.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        self.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
    }

    pub fn is_connecting(&self) -> bool {
        self.connecting.is_some()
    }

    /// A connect that has finished: `Some(true)` connected, `Some(false)` failed, `None` not yet.
    pub fn connect_outcome(&mut self) -> Option<bool> {
        self.connecting?;
        if !self.writable {
            return None;
        }
        self.writable = false;
        if let Ok(Some(_)) | Err(_) = self.stream.take_error() {
            self.connecting = None;
            return Some(false);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connecting = None;
                let _ = self.stream.set_nodelay(true);
                Some(true)
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => None,
            Err(_) => {
                self.connecting = None;
                Some(false)
            }
        }
    }

    /// Queues `bytes` and sends what the socket takes now. `Err`: the connection is gone.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.queue.extend_from_slice(bytes);
        self.flush()
    }

    /// Sends what the socket takes of the queue. `Err`: the connection is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut sent = 0;
        let result = loop {
            if sent == self.queue.len() {
                break Ok(());
            }
            match self.stream.write(&self.queue[sent..]) {
                Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.queue.drain(..sent);
        if self.queue.is_empty() {
            self.stalled_since = None;
        } else if sent > 0 || self.stalled_since.is_none() {
            self.stalled_since = Some(Instant::now());
        }
        result
    }

    /// Whether a read would do something now: bytes may be there and none wait to go out.
    pub fn wants_read(&self) -> bool {
        self.readable && self.queue.is_empty() && self.connecting.is_none()
    }

    /// Whether a read brought bytes within `window`: a peer in the middle of an exchange, whose
    /// next bytes are worth a look before the loop goes to sleep.
    pub fn in_exchange(&self, window: Duration) -> bool {
        self.last_data.is_some_and(|t| t.elapsed() < window)
    }

    /// Whether bytes wait and the socket may take some.
    pub fn wants_flush(&self) -> bool {
        self.writable && !self.queue.is_empty()
    }

    /// One read (the loop interleaves reads with control commands, so a power cut lands
    /// between two reads of an upload).
    pub fn read1<'b>(&mut self, buf: &'b mut [u8]) -> Read1<'b> {
        if !self.wants_read() {
            return Read1::Nothing;
        }
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Read1::Closed,
                Ok(n) => {
                    self.last_data = Some(Instant::now());
                    Read1::Data(&buf[..n])
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    Read1::Nothing
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => Read1::Closed,
            };
        }
    }

    /// Handles a writable edge: the queue goes out as far as the socket takes it.
    pub fn on_writable(&mut self) -> io::Result<()> {
        if !self.writable || self.connecting.is_some() {
            return Ok(());
        }
        self.writable = false;
        self.flush()
    }

    /// When this link gives up on its own, if it may.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.connecting, self.stalled_since) {
            (Some(until), _) => Some(until),
            (None, Some(since)) => Some(since + NETWORK_TIMEOUT),
            (None, None) => None,
        }
    }

    pub fn expired(&self, now: Instant) -> Option<Expired> {
        match (self.connecting, self.stalled_since) {
            (Some(until), _) if now >= until => Some(Expired::Connect),
            (None, Some(since)) if now >= since + NETWORK_TIMEOUT => Some(Expired::Stalled),
            _ => None,
        }
    }

    /// Ends the link at once: both directions, queued bytes dropped.
    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Sends what the socket takes now, then a FIN: the peer reads the reply, then the end.
    pub fn finish(mut self, registry: &Registry) {
        let _ = self.flush();
        let _ = registry.deregister(&mut self.stream);
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Whether every queued byte has gone to the socket.
    pub fn is_flushed(&self) -> bool {
        self.queue.is_empty()
    }

    /// A FIN, keeping the link to read what the peer still sends until it closes too: closing
    /// with unread bytes would send a reset, and a peer that gets the reset first loses what it
    /// had not read yet.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads and drops what the peer sends: `true` once it has closed its side (or failed).
    pub fn drain(&mut self, buf: &mut [u8]) -> bool {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return false;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}
