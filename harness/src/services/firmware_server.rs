//! The firmware HTTP server devices pull updates from, with the faults a fielded server or
//! network has: a body cut short or reset, a `Content-Length` that lies, a stall, a slow drip,
//! an error status, a redirect (or a loop of them), 304, a wrong `x-MD5`. It records every
//! request (line and headers, in order) so a scenario can check what the device sent.
//!
//! Plain TCP on loopback, one thread per connection, a free port chosen by the system; the
//! server stops when dropped. HTTPS listeners (rustls, each with its own certificate and TLS
//! versions, for the certificate faults) can be added beside the plain one; all of them answer
//! from the same routes and record into the same request log. Responses are written byte-exact by hand (no HTTP library), since
//! the faults are exactly what a library would not let a server do.

use md5::{Digest, Md5};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest request head the server reads.
const MAX_REQUEST: usize = 16 << 10;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop and stalls look at the stop flag.
const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// How an image's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Framing {
    #[default]
    ContentLength,
    /// `Transfer-Encoding: chunked`, chunks of this many bytes.
    Chunked(usize),
    /// No length: the body ends with the connection (HTTP/1.0 style).
    Close,
}

/// The `x-MD5` header sent with an image.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Md5Header {
    #[default]
    None,
    /// The body's real MD5.
    Correct,
    /// This text, whatever the body is (a wrong digest, or a malformed one).
    Value(String),
}

/// What a path answers.
#[derive(Clone, Debug)]
pub enum Response {
    Image {
        bytes: Arc<Vec<u8>>,
        framing: Framing,
        md5: Md5Header,
        range: RangeSupport,
    },
    /// A status with a short text body.
    Status(u16),
    /// A redirect (`status` 301, 302, 303, 307 or 308) to `location`.
    Redirect {
        status: u16,
        location: String,
    },
    NotModified,
}

/// How an image answers a `Range: bytes=first-[last]` request (without one: 200, the whole
/// image, whatever this says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RangeSupport {
    /// 206 with `Content-Range` and the bytes asked for (416 past the end), as nginx answers.
    /// Only with `Content-Length` framing; chunked and close-delimited images answer 200.
    #[default]
    Honour,
    /// 200 with the whole image: a server without range support.
    Ignore,
    /// 416 to every range.
    Unsatisfiable,
}

/// `Range: bytes=first-[last]` (one range; anything else is no range, as servers treat it).
fn requested_range(request: &Request) -> Option<(u64, Option<u64>)> {
    let v = request.header("range")?.trim();
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => None,
        l => Some(l.parse().ok()?),
    };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    Some((first, last))
}

/// What goes wrong while answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// The body stops after this many bytes and the connection is closed (FIN).
    Truncate { at: usize },
    /// The body stops after this many bytes and the connection is reset (RST).
    Reset { at: usize },
    /// `Content-Length` says this, whatever the body's length (the whole body is sent).
    WrongLength { claimed: u64 },
    /// After this many body bytes nothing is sent for `for_`, the connection held open; then the
    /// rest follows.
    Stall { at: usize, for_: Duration },
    /// The body goes out `chunk` bytes at a time, `every` apart.
    Drip { chunk: usize, every: Duration },
}

#[derive(Clone, Debug)]
pub struct Route {
    pub response: Response,
    pub fault: Fault,
}

impl Route {
    /// What the route answers, as a report's step label reads it: `v2, chunked by 4096, x-MD5
    /// (truncated at byte 9000)`, `status 404`, `redirect 302 to /b.bin`. `image` names the
    /// image served, when there is one.
    pub fn label(&self, image: &str) -> String {
        use std::fmt::Write;
        let mut l = String::new();
        match &self.response {
            Response::Image { framing, md5, range, .. } => {
                l.push_str(image);
                match framing {
                    Framing::ContentLength => {}
                    Framing::Chunked(n) => _ = write!(l, ", chunked by {n}"),
                    Framing::Close => l.push_str(", no length (ends with the connection)"),
                }
                match md5 {
                    Md5Header::None => {}
                    Md5Header::Correct => l.push_str(", x-MD5"),
                    Md5Header::Value(v) => _ = write!(l, ", x-MD5 {v}"),
                }
                match range {
                    RangeSupport::Honour => {}
                    RangeSupport::Ignore => l.push_str(", Range ignored"),
                    RangeSupport::Unsatisfiable => l.push_str(", Range refused (416)"),
                }
            }
            Response::Status(code) => _ = write!(l, "status {code}"),
            Response::Redirect { status, location } => _ = write!(l, "redirect {status} to {location}"),
            Response::NotModified => l.push_str("304 not modified"),
        }
        _ = match &self.fault {
            Fault::None => Ok(()),
            Fault::Truncate { at } => write!(l, " (truncated at byte {at})"),
            Fault::Reset { at } => write!(l, " (reset at byte {at})"),
            Fault::WrongLength { claimed } => write!(l, " (Content-Length claims {claimed})"),
            Fault::Stall { at, for_ } => write!(l, " (stalls {} at byte {at})", humantime(*for_)),
            Fault::Drip { chunk, every } => write!(l, " ({chunk} bytes every {})", humantime(*every)),
        };
        l
    }
}

/// A duration as a scenario writes it: `40s`, `250ms`.
fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A request as the device sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Names and values as sent, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header named `name` (case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Route>,
    requests: Vec<Request>,
}

pub struct FirmwareServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// A connection the server answers on: plain TCP, or TLS over it.
trait Conn: Read + Write {
    fn tcp(&self) -> &TcpStream;
    /// The response is complete: TLS says so (close_notify), then FIN.
    fn finish(&mut self) -> std::io::Result<()>;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()?;
        let _ = self.shutdown(std::net::Shutdown::Write);
        Ok(())
    }
}

type TlsStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

impl Conn for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.conn.send_close_notify();
        self.flush()?;
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        Ok(())
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl FirmwareServer {
    /// Listens on `ip` at a free port.
    pub fn start(ip: std::net::IpAddr) -> Result<FirmwareServer, ServerError> {
        let mut server = FirmwareServer {
            addr: SocketAddr::new(ip, 0),
            shared: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        server.addr = server.listen(ip, None)?;
        Ok(server)
    }

    /// Adds an HTTPS listener on `ip` at a free port, with `tls`'s certificate and versions.
    pub fn listen_tls(
        &mut self,
        ip: std::net::IpAddr,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<SocketAddr, ServerError> {
        self.listen(ip, Some(tls))
    }

    fn listen(
        &mut self,
        ip: std::net::IpAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<SocketAddr, ServerError> {
        let want = SocketAddr::new(ip, 0);
        let listener = TcpListener::bind(want).map_err(|source| ServerError::Bind { addr: want, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: want, source })?;
        listener.set_nonblocking(true).map_err(|source| ServerError::Bind { addr, source })?;
        let (s, st) = (self.shared.clone(), self.stop.clone());
        let thread = std::thread::Builder::new()
            .name("otahil-firmware-server".into())
            .spawn(move || accept_loop(&listener, tls.as_ref(), &s, &st))
            .expect("spawning a thread");
        tracing::debug!(%addr, "firmware server listening");
        self.threads.push(thread);
        Ok(addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What `path` answers from now on (a path with no route answers 404).
    pub fn route(&self, path: &str, route: Route) {
        lock(&self.shared).routes.insert(path.to_string(), route);
    }

    /// The requests so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared).requests.clone()
    }
}

impl Drop for FirmwareServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    tls: Option<&Arc<rustls::ServerConfig>>,
    shared: &Arc<Mutex<Shared>>,
    stop: &Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let (s, st, tls) = (shared.clone(), stop.clone(), tls.cloned());
                let _ = std::thread::Builder::new().name("otahil-firmware-conn".into()).spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let served = match tls {
                        None => serve_connection(stream, &s, &st),
                        Some(config) => rustls::ServerConnection::new(config)
                            .map_err(std::io::Error::other)
                            .and_then(|c| serve_connection(TlsStream::new(c, stream), &s, &st)),
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "firmware server connection ended");
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(e) => {
                tracing::warn!(error = %e, "firmware server accept failed");
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Reads one request head; `None` if the client sent none (or too much) in time.
fn read_request(stream: &mut impl Conn) -> std::io::Result<Option<Request>> {
    stream.tcp().set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 512];
    let started = Instant::now();
    while !buf.ends_with(b"\r\n\r\n") && !buf.ends_with(b"\n\n") {
        if buf.len() > MAX_REQUEST || started.elapsed() > REQUEST_TIMEOUT {
            return Ok(None);
        }
        // Byte by byte once a head is under way would be slow; read what is there, but a
        // request's body (none for GET) is not expected, so extra bytes are ignored.
        let n = stream.read(&mut byte)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target, version) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    Ok(Some(Request { method, target, version, headers }))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_connection(mut stream: impl Conn, shared: &Mutex<Shared>, stop: &AtomicBool) -> std::io::Result<()> {
    let Some(request) = read_request(&mut stream)? else { return Ok(()) };
    // The target's path (a query is the device's business): routes are by path.
    let path = request.target.split('?').next().unwrap_or("").to_string();
    let head_only = request.method.eq_ignore_ascii_case("HEAD");
    let asked = requested_range(&request);
    let route = {
        let mut s = lock(shared);
        s.requests.push(request);
        s.routes.get(&path).cloned()
    };
    let Route { response, fault } =
        route.unwrap_or(Route { response: Response::Status(404), fault: Fault::None });
    stream.tcp().set_nodelay(true)?;
    match response {
        Response::Status(code) => {
            let body = format!("{code} {}\n", reason(code));
            let head = format!(
                "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reason(code),
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            if !head_only {
                stream.write_all(body.as_bytes())?;
            }
        }
        Response::NotModified => {
            stream.write_all(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n")?
        }
        Response::Redirect { status, location } => {
            let head = format!(
                "HTTP/1.1 {status} {}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                reason(status)
            );
            stream.write_all(head.as_bytes())?;
        }
        Response::Image { bytes, framing, md5, range } => {
            let total = bytes.len() as u64;
            let ranged = match (asked, range, framing) {
                (Some(_), RangeSupport::Unsatisfiable, _) => Err(()),
                (Some((first, _)), RangeSupport::Honour, Framing::ContentLength) if first >= total => Err(()),
                (Some((first, last)), RangeSupport::Honour, Framing::ContentLength) => {
                    let last = last.map_or(total - 1, |l| l.min(total - 1));
                    Ok(Some((first, last)))
                }
                _ => Ok(None),
            };
            let Ok(ranged) = ranged else {
                let head = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes())?;
                return stream.finish();
            };
            let body: &[u8] = match ranged {
                Some((first, last)) => &bytes[first as usize..=last as usize],
                None => &bytes[..],
            };
            let mut head = match ranged {
                Some((first, last)) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {first}-{last}/{total}\r\n"
                ),
                None => String::from("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"),
            };
            match (framing, fault) {
                (Framing::ContentLength, Fault::WrongLength { claimed }) => {
                    head += &format!("Content-Length: {claimed}\r\n");
                }
                (Framing::ContentLength, _) => head += &format!("Content-Length: {}\r\n", body.len()),
                (Framing::Chunked(_), _) => head += "Transfer-Encoding: chunked\r\n",
                (Framing::Close, _) => {}
            }
            match &md5 {
                Md5Header::None => {}
                Md5Header::Correct => {
                    let d: [u8; 16] = Md5::digest(&bytes[..]).into();
                    head +=
                        &format!("x-MD5: {}\r\n", d.iter().map(|b| format!("{b:02x}")).collect::<String>());
                }
                Md5Header::Value(v) => head += &format!("x-MD5: {v}\r\n"),
            }
            head += "Connection: close\r\n\r\n";
            stream.write_all(head.as_bytes())?;
            if !head_only {
                send_body(&mut stream, body, framing, fault, stop)?;
                match fault {
                    // Dropped with a zero linger: RST, no FIN.
                    Fault::Reset { .. } => return Ok(()),
                    // FIN without TLS's close_notify: the body just stops.
                    Fault::Truncate { .. } => {
                        stream.flush()?;
                        let _ = stream.tcp().shutdown(std::net::Shutdown::Write);
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
    }
    // FIN now (after close_notify on TLS); the socket closes when the client has closed its side
    // or this thread ends.
    stream.finish()
}

/// Sleeps `d` in slices, returning early when the server stops.
fn wait(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
    }
    true
}

fn send_body(
    stream: &mut impl Conn,
    body: &[u8],
    framing: Framing,
    fault: Fault,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    // The body bytes that go out (a cut body is cut in its framing's payload).
    let end = match fault {
        Fault::Truncate { at } | Fault::Reset { at } => at.min(body.len()),
        _ => body.len(),
    };
    let piece = match fault {
        Fault::Drip { chunk, .. } => chunk.max(1),
        _ => 16 << 10,
    };
    let mut at = 0;
    while at < end {
        let mut n = piece.min(end - at);
        if let Fault::Stall { at: stall_at, for_ } = fault
            && at <= stall_at
            && stall_at < at + n
        {
            n = stall_at - at;
            if n == 0 {
                if !wait(for_, stop) {
                    return Ok(());
                }
                n = piece.min(end - at);
            }
        }
        let data = &body[at..at + n];
        match framing {
            Framing::Chunked(size) => {
                for c in data.chunks(size.max(1)) {
                    stream.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                    stream.write_all(c)?;
                    stream.write_all(b"\r\n")?;
                }
            }
            _ => stream.write_all(data)?,
        }
        at += n;
        if let Fault::Drip { every, .. } = fault
            && !wait(every, stop)
        {
            return Ok(());
        }
    }
    match fault {
        Fault::Reset { .. } => {
            stream.flush()?;
            reset(stream.tcp())
        }
        Fault::Truncate { .. } => Ok(()),
        _ => {
            if let Framing::Chunked(_) = framing {
                stream.write_all(b"0\r\n\r\n")?;
            }
            Ok(())
        }
    }
}

/// Closes with RST: SO_LINGER with a zero timeout, then the socket is dropped.
#[cfg(unix)]
fn reset(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn reset(_stream: &TcpStream) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;
