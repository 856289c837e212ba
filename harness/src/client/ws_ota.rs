//! A browser's script at the WebSocket OTA page, as it talks to the device: the socket opened
//! at `/ota/ws`, `otaSize`, then each chunk the device asks for by offset as one binary frame,
//! `otaEnd`, the restart (`otaRestartEsp`); after the restart, the page's answer to
//! `otaCheckRollback`. Frames are core's ([`ota_core::proto::http_server::websocket`]), masked
//! as a client masks them. Faults: the declared size, chunks of another size than asked, a
//! cancel half-way, a disconnect, a second tab that asks for an update during this one.

use super::{Outcome, Phase};
use ota_core::proto::http_server::websocket::{
    FrameEvent, FrameReader, Opcode, accept_key, apply_mask, frame_head,
};
use ota_core::proto::ws_ota::{SOCKET_PATH, parse_message};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// What the page does once the new image runs again after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing: the page is closed after the restart.
    Leave,
    /// `#otaVerifyApp`: `otaProcessRollback false`.
    Keep,
    /// `#otaRollback`: `otaProcessRollback true`; the device restarts into the old image.
    RollBack,
}

/// One update through the page as a scenario describes it.
#[derive(Debug, Clone)]
pub struct PageUpload<'a> {
    pub image: &'a [u8],
    /// Sent as `otaSize` instead of the image's length (a number, or any JSON value's text).
    pub declared_size: Option<String>,
    /// Answer every `otaGetChunk` with this many bytes instead of the size asked for.
    pub chunk_size: Option<usize>,
    /// Send `otaCancel` once this many bytes are sent.
    pub cancel_after: Option<u64>,
    /// Close the socket after this many image bytes (mid-frame).
    pub disconnect_after: Option<u64>,
    /// After the first chunk, a second socket (another tab) sends `otaSize`: it must be
    /// refused while this one writes.
    pub second_tab: bool,
    pub then: Then,
    pub timeout: Duration,
    /// Seeds the frames' masks.
    pub seed: u64,
}

/// The outcome names besides `ok`: the device's `otaError` texts and the page's own ends.
pub fn error_names() -> Vec<&'static str> {
    let mut names: Vec<_> = ERRORS.iter().map(|(_, n)| *n).collect();
    names.extend(["cancelled", "no_rollback_offered", "not_found", "refused"]);
    names
}

/// `otaError` texts by outcome name.
const ERRORS: [(&str, &str); 6] = [
    ("Error ota size = 0", "size_zero"),
    ("Error start ota", "start_failed"),
    ("Error write ota", "write_failed"),
    ("Error end ota", "end_failed"),
    ("Error json str", "bad_message"),
    ("Error command", "error_command"),
];

/// The outcome name of an `otaError` text.
pub fn error_name(text: &str) -> Option<&'static str> {
    ERRORS.iter().find(|(t, _)| *t == text).map(|(_, n)| *n)
}

/// The handshake's key (a browser's is random; the device answers any well-formed one).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A message from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    /// `{"name":…,"value":…}` read as the page reads it.
    Command {
        name: String,
        value: String,
    },
    Close,
    Other(String),
}

/// The page's socket.
struct Socket {
    stream: TcpStream,
    reader: FrameReader,
    messages: VecDeque<Message>,
    mask: u32,
}

impl Socket {
    /// Connects and upgrades; `Err` with what went wrong.
    async fn open(addr: SocketAddr, seed: u64) -> Result<Socket, String> {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).ok();
        let request = format!(
            "GET {SOCKET_PATH} HTTP/1.1\r\nHost: device\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("handshake: {e}"))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                Ok(_) => return Err("the device closed the connection before its handshake answer".into()),
                Err(e) => return Err(format!("handshake: {e}")),
            }
            if head.len() > 4096 {
                return Err("a handshake answer longer than 4 KiB".into());
            }
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101 ") {
            return Err(format!("not upgraded: {}", head.lines().next().unwrap_or("")));
        }
        let accept = format!("Sec-WebSocket-Accept: {}\r\n", String::from_utf8_lossy(&accept_key(KEY)));
        if !head.contains(&accept) {
            return Err(format!("a wrong Sec-WebSocket-Accept: {head:?}"));
        }
        Ok(Socket {
            stream,
            reader: FrameReader::new(false),
            messages: VecDeque::new(),
            mask: seed as u32 | 1,
        })
    }

    async fn frame(&mut self, opcode: Opcode, payload: &[u8]) -> std::io::Result<()> {
        self.frame_part(opcode, payload, payload.len()).await
    }

    /// Sends a frame of `len` bytes whose first `payload.len()` go out (all of them unless the
    /// scenario disconnects mid-frame).
    async fn frame_part(&mut self, opcode: Opcode, payload: &[u8], len: usize) -> std::io::Result<()> {
        // A fresh mask per frame, as browsers do (xorshift from the seed).
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let mask = self.mask.to_be_bytes();
        let mut head = [0u8; 14];
        let mut bytes = frame_head(true, opcode, len as u64, Some(mask), &mut head).to_vec();
        let mut body = payload.to_vec();
        apply_mask(&mut body, mask, 0);
        bytes.extend_from_slice(&body);
        self.stream.write_all(&bytes).await
    }

    async fn command(&mut self, name: &str, value: &str) -> std::io::Result<()> {
        let text = format!(r#"{{"name":"{name}","value":{value}}}"#);
        self.frame(Opcode::Text, text.as_bytes()).await
    }

    /// The device's next message; `None` when the connection ended.
    async fn next(&mut self) -> std::io::Result<Option<Message>> {
        loop {
            if let Some(m) = self.messages.pop_front() {
                return Ok(Some(m));
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            let (messages, mut payload, mut opcode) = (&mut self.messages, Vec::new(), Opcode::Text);
            self.reader
                .feed(&buf[..n], &mut |e| match e {
                    FrameEvent::Start(f) => {
                        payload.clear();
                        opcode = f.opcode;
                    }
                    FrameEvent::Payload(p) => payload.extend_from_slice(p),
                    FrameEvent::End(_) => messages.push_back(match opcode {
                        Opcode::Close => Message::Close,
                        _ => {
                            let text = String::from_utf8_lossy(&payload).into_owned();
                            match parse_message(&text) {
                                Ok((name, value)) => Message::Command {
                                    name: name.to_string(),
                                    value: value.unwrap_or("").to_string(),
                                },
                                Err(_) => Message::Other(text),
                            }
                        }
                    }),
                })
                .map_err(|e| std::io::Error::other(e.reason()))?;
        }
    }

    /// Waits (up to `wait`) for the device to end the connection.
    async fn until_closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match timeout(deadline.saturating_duration_since(Instant::now()), self.next()).await {
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Ok(Ok(Some(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Runs the update against `addr`. Never panics on what the device does.
pub async fn upload(addr: SocketAddr, up: &PageUpload<'_>) -> Outcome {
    let sent = std::sync::atomic::AtomicU64::new(0);
    match timeout(up.timeout, run(addr, up, &sent)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Interrupted {
            phase: Phase::Data,
            sent: sent.load(std::sync::atomic::Ordering::Relaxed),
            detail: format!("client timeout after {:?}", up.timeout),
        },
    }
}

async fn run(addr: SocketAddr, up: &PageUpload<'_>, sent: &std::sync::atomic::AtomicU64) -> Outcome {
    let io = |phase: Phase| {
        move |e: std::io::Error| Outcome::Interrupted { phase, sent: 0, detail: e.to_string() }
    };
    let mut ws = match Socket::open(addr, up.seed).await {
        Ok(ws) => ws,
        Err(detail) => return Outcome::Interrupted { phase: Phase::Handshake, sent: 0, detail },
    };
    let size = up.declared_size.clone().unwrap_or_else(|| up.image.len().to_string());
    if let Err(e) = ws.command("otaSize", &size).await {
        return io(Phase::Prepare)(e);
    }
    let mut total = 0u64;
    let mut second_tab = up.second_tab;
    let mut cancelled = false;
    loop {
        let message = match ws.next().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let detail = "the device closed the socket without a word".to_string();
                return Outcome::Interrupted { phase: Phase::Data, sent: total, detail };
            }
            Err(e) => return Outcome::Interrupted { phase: Phase::Data, sent: total, detail: e.to_string() },
        };
        let (name, value) = match message {
            Message::Command { name, value } => (name, value),
            Message::Close => {
                let detail = "the device closed the socket".to_string();
                return Outcome::Interrupted { phase: Phase::Data, sent: total, detail };
            }
            Message::Other(text) => {
                return Outcome::Unexpected {
                    detail: format!("not the page's JSON: {text:?}"),
                    phase: Phase::Data,
                };
            }
        };
        match name.as_str() {
            "otaSetChunkSize" => {}
            "otaGetChunk" => {
                if cancelled {
                    continue;
                }
                let Ok(offset) = value.trim().parse::<usize>() else {
                    return Outcome::Unexpected {
                        detail: format!("otaGetChunk {value:?}"),
                        phase: Phase::Data,
                    };
                };
                if up.cancel_after.is_some_and(|n| total >= n) {
                    if let Err(e) = ws.command("otaCancel", r#""""#).await {
                        return io(Phase::Data)(e);
                    }
                    cancelled = true;
                    continue;
                }
                let want = up.chunk_size.unwrap_or(ota_core::proto::ws_ota::CHUNK_SIZE as usize);
                let chunk = up.image.get(offset..(offset + want).min(up.image.len())).unwrap_or(&[]);
                if let Some(cut) = up.disconnect_after
                    && total + chunk.len() as u64 >= cut
                {
                    let part = (cut - total) as usize;
                    let _ = ws.frame_part(Opcode::Binary, &chunk[..part], chunk.len()).await;
                    let _ = ws.stream.shutdown().await;
                    return Outcome::Disconnected { sent: cut };
                }
                if let Err(e) = ws.frame(Opcode::Binary, chunk).await {
                    return io(Phase::Data)(e);
                }
                total += chunk.len() as u64;
                sent.store(total, std::sync::atomic::Ordering::Relaxed);
                if second_tab {
                    second_tab = false;
                    if let Some(outcome) = second_tab_refused(addr, up).await {
                        return outcome;
                    }
                }
            }
            "otaEnd" => return after_end(addr, ws, up, total).await,
            "otaCancel" => {
                return Outcome::DeviceError { name: "cancelled", detail: value, phase: Phase::Data };
            }
            "otaError" => {
                let name = error_name(&value).unwrap_or("refused");
                let _ = ws.frame(Opcode::Close, &1000u16.to_be_bytes()).await;
                return Outcome::DeviceError { name, detail: value, phase: Phase::Data };
            }
            other => {
                return Outcome::Unexpected {
                    detail: format!("`{other}` during the upload"),
                    phase: Phase::Data,
                };
            }
        }
    }
}

/// Another tab opens the page and starts an update while this one writes: the device must
/// refuse it (`Error start ota`). `Some` with the outcome when it did not.
async fn second_tab_refused(addr: SocketAddr, up: &PageUpload<'_>) -> Option<Outcome> {
    let mut tab = match Socket::open(addr, up.seed ^ 0x5eed).await {
        Ok(t) => t,
        Err(detail) => {
            let detail = format!("the second tab could not open the page's socket: {detail}");
            return Some(Outcome::Unexpected { detail, phase: Phase::Data });
        }
    };
    if let Err(e) = tab.command("otaSize", &up.image.len().to_string()).await {
        return Some(Outcome::Unexpected { detail: format!("second tab: {e}"), phase: Phase::Data });
    }
    let answer = timeout(Duration::from_secs(5), tab.next()).await;
    match answer {
        Ok(Ok(Some(Message::Command { name, value })))
            if name == "otaError" && value == "Error start ota" =>
        {
            None
        }
        other => Some(Outcome::Unexpected {
            detail: format!("a second tab's otaSize during an update was answered {other:?}"),
            phase: Phase::Data,
        }),
    }
}

/// `otaEnd`: the restart pressed, then (per `then`) the page's answer to the new image.
async fn after_end(addr: SocketAddr, mut ws: Socket, up: &PageUpload<'_>, sent: u64) -> Outcome {
    let restart_wait = Duration::from_secs(10);
    if let Err(e) = ws.command("otaRestartEsp", r#""""#).await {
        return Outcome::Interrupted { phase: Phase::End, sent, detail: format!("otaRestartEsp: {e}") };
    }
    if !ws.until_closed(restart_wait).await {
        let detail = format!("the device did not restart within {restart_wait:?} of otaRestartEsp");
        return Outcome::Unexpected { detail, phase: Phase::End };
    }
    let answer = match up.then {
        Then::Leave => return Outcome::Ok { detail: format!("otaEnd OK after {sent} bytes; restarted") },
        Then::Keep => "false",
        Then::RollBack => "true",
    };
    // The page reloads until the device is back (the original: every 2 s).
    let mut page = loop {
        match Socket::open(addr, up.seed ^ 0x0b0a).await {
            Ok(ws) => break ws,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    match timeout(Duration::from_secs(2), page.next()).await {
        Ok(Ok(Some(Message::Command { name, .. }))) if name == "otaCheckRollback" => {}
        other => {
            let detail = format!("the new image's page offered no rollback (first message: {other:?})");
            return Outcome::DeviceError { name: "no_rollback_offered", detail, phase: Phase::End };
        }
    }
    if let Err(e) = page.command("otaProcessRollback", &format!("\"{answer}\"")).await {
        return Outcome::Interrupted { phase: Phase::End, sent, detail: format!("otaProcessRollback: {e}") };
    }
    if up.then == Then::RollBack {
        if !page.until_closed(restart_wait).await {
            let detail = "the device did not restart after otaProcessRollback true".to_string();
            return Outcome::Unexpected { detail, phase: Phase::End };
        }
        return Outcome::Ok { detail: "otaEnd OK; restarted; rolled back from the page".into() };
    }
    // Keep: no answer comes; the page is closed as a person leaves it.
    let _ = page.frame(Opcode::Close, &1000u16.to_be_bytes()).await;
    page.until_closed(Duration::from_secs(2)).await;
    Outcome::Ok { detail: "otaEnd OK; restarted; kept from the page".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_error_text_has_an_outcome_name() {
        for (text, name) in ERRORS {
            assert_eq!(error_name(text), Some(name));
            assert!(error_names().contains(&name));
        }
        assert_eq!(error_name("Error something else"), None);
    }
}
