//! A browser's upload to the `/update` form (what Chromium or `curl -F firmware=@v2.bin` send):
//! one `multipart/form-data` POST with the image as a file part, then the page the device
//! answers, read as a person reads it: the exact success text, or `Update error: …` (status
//! 200, as `HTTPUpdateServer` answers errors), or the status of a refusal. Faults: credentials
//! (none, wrong), the part's name, a `Content-Length` that lies, a disconnect or a stall after
//! N image bytes, a slow sender.

use super::{Outcome, Phase, Progress};
use ota_core::proto::arduino::UpdateError;
use ota_core::proto::web_form::pages::{ERROR_PREFIX, SUCCESS_PAGE};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The boundary the client sends (Chromium's form: `----WebKitFormBoundary` and 16 characters).
pub const BOUNDARY: &str = "----WebKitFormBoundaryotahilHarness";
/// What a browser writes per socket write, near enough.
const PIECE: usize = 16 * 1024;
/// The longest answer read (the pages are short; a device that sends more is cut off).
const ANSWER_MAX: usize = 64 * 1024;

/// One upload as a scenario describes it.
#[derive(Debug, Clone)]
pub struct FormUpload<'a> {
    /// Where the POST goes (`/update`; ElegantOTA's `/ota/upload`).
    pub path: &'a str,
    pub image: &'a [u8],
    pub file_name: &'a str,
    /// The form field's name (`firmware`, or `filesystem` for the other form).
    pub part: &'a str,
    /// Basic credentials sent with the request.
    pub credentials: Option<(&'a str, &'a str)>,
    /// Announce this `Content-Length` instead of the body's.
    pub content_length: Option<u64>,
    /// Close the connection after this many image bytes.
    pub disconnect_after: Option<u64>,
    /// Stop sending for this long after this many image bytes.
    pub stall: Option<(u64, Duration)>,
    /// Pause between pieces.
    pub send_delay: Option<Duration>,
    pub timeout: Duration,
}

/// The outcome names besides `ok`: `Update`'s errors as the page words them, and the refusals.
pub fn error_names() -> Vec<&'static str> {
    let mut names: Vec<_> = UpdateError::ALL.iter().map(|e| e.name()).collect();
    names.extend(["unauthorized", "busy", "bad_request", "not_found", "refused"]);
    names
}

/// The request head and the body's two ends around the image.
fn request(up: &FormUpload<'_>) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let part_head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        up.part, up.file_name
    )
    .into_bytes();
    let tail = format!("\r\n--{BOUNDARY}--\r\n").into_bytes();
    let length = up.content_length.unwrap_or((part_head.len() + up.image.len() + tail.len()) as u64);
    let auth = authorization(up.credentials);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: device\r\n{auth}Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n",
        up.path
    )
    .into_bytes();
    (head, part_head, tail)
}

/// The `Authorization` header line for Basic `credentials` (empty for none).
pub(crate) fn authorization(credentials: Option<(&str, &str)>) -> String {
    match credentials {
        Some((user, password)) => {
            let token =
                String::from_utf8_lossy(&super::base64(format!("{user}:{password}").as_bytes())).into_owned();
            format!("Authorization: Basic {token}\r\n")
        }
        None => String::new(),
    }
}

/// Runs the upload against `addr`. Never panics on what the device does.
pub async fn upload(addr: SocketAddr, up: &FormUpload<'_>) -> Outcome {
    match post(addr, up).await {
        Ok(answer) => judge(&answer),
        Err(outcome) => outcome,
    }
}

/// The POST: the device's whole answer, or how the exchange ended without one.
pub(crate) async fn post(addr: SocketAddr, up: &FormUpload<'_>) -> Result<Vec<u8>, Outcome> {
    let progress = Progress::default();
    match tokio::time::timeout(up.timeout, session(addr, up, &progress)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Outcome::Interrupted {
            phase: progress.phase(),
            sent: progress.sent(),
            detail: format!("client timeout after {:?}", up.timeout),
        }),
    }
}

async fn session(addr: SocketAddr, up: &FormUpload<'_>, progress: &Progress) -> Result<Vec<u8>, Outcome> {
    progress.enter(Phase::Connect);
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Err(Outcome::Interrupted { phase: Phase::Connect, sent: 0, detail: e.to_string() }),
    };
    let (head, part_head, tail) = request(up);
    progress.enter(Phase::Data);
    // The device may answer before the body is through (a refusal by its head): a failed write
    // is then no failure, the answer is.
    let sent = send_body(&mut stream, up, &head, &part_head, &tail, progress).await;
    if let Err(Stopped::Disconnected) = sent {
        return Err(Outcome::Disconnected { sent: progress.sent() });
    }
    progress.enter(Phase::End);
    let answer = read_answer(&mut stream).await;
    match (answer, sent) {
        (Ok(a), _) if !a.is_empty() => Ok(a),
        (_, Err(Stopped::Write(e))) => {
            Err(Outcome::Interrupted { phase: Phase::Data, sent: progress.sent(), detail: e })
        }
        (Ok(_), _) => Err(Outcome::Interrupted {
            phase: Phase::End,
            sent: progress.sent(),
            detail: "the device closed without an answer".into(),
        }),
        (Err(e), _) => {
            Err(Outcome::Interrupted { phase: Phase::End, sent: progress.sent(), detail: e.to_string() })
        }
    }
}

enum Stopped {
    /// As the scenario asked.
    Disconnected,
    Write(String),
}

async fn send_body(
    stream: &mut TcpStream,
    up: &FormUpload<'_>,
    head: &[u8],
    part_head: &[u8],
    tail: &[u8],
    progress: &Progress,
) -> Result<(), Stopped> {
    let write = |e: std::io::Error| Stopped::Write(e.to_string());
    stream.write_all(head).await.map_err(write)?;
    stream.write_all(part_head).await.map_err(write)?;
    let mut at = 0u64;
    let mut stalled = false;
    for piece in up.image.chunks(PIECE) {
        let mut piece = piece;
        if let Some(n) = up.disconnect_after
            && at + piece.len() as u64 >= n
        {
            piece = &piece[..(n - at) as usize];
            stream.write_all(piece).await.map_err(write)?;
            progress.add_sent(piece.len() as u64);
            let _ = stream.shutdown().await;
            return Err(Stopped::Disconnected);
        }
        if let Some((after, pause)) = up.stall
            && !stalled
            && at + piece.len() as u64 > after
        {
            let (before, rest) = piece.split_at((after - at) as usize);
            stream.write_all(before).await.map_err(write)?;
            progress.add_sent(before.len() as u64);
            at += before.len() as u64;
            tokio::time::sleep(pause).await;
            stalled = true;
            piece = rest;
        }
        stream.write_all(piece).await.map_err(write)?;
        progress.add_sent(piece.len() as u64);
        at += piece.len() as u64;
        if let Some(d) = up.send_delay {
            tokio::time::sleep(d).await;
        }
    }
    stream.write_all(tail).await.map_err(write)?;
    Ok(())
}

/// Reads until the device closes (every answer of the form closes its connection).
pub(crate) async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok(answer),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() >= ANSWER_MAX {
                    return Ok(answer);
                }
            }
            // A reset after a whole answer (the device closed with our bytes unread) is its end.
            Err(_) if !answer.is_empty() => return Ok(answer),
            Err(e) => return Err(e),
        }
    }
}

/// What the page says, by its status and body.
fn judge(answer: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Unexpected {
            detail: format!("an answer without a whole head: {text:?}"),
            phase: Phase::End,
        };
    };
    let status: Option<u16> =
        head.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|s| s.parse().ok());
    let detail = |s: u16| format!("{s} {}", body.trim_end());
    let error_of_body = || body.strip_prefix(ERROR_PREFIX).and_then(UpdateError::from_reply);
    match status {
        Some(200) if body == SUCCESS_PAGE => Outcome::Ok { detail: "Update Success! Rebooting...".into() },
        Some(s @ (200 | 413)) if error_of_body().is_some() => Outcome::DeviceError {
            name: error_of_body().map_or("refused", |e| e.name()),
            detail: detail(s),
            phase: Phase::End,
        },
        Some(401) => Outcome::DeviceError { name: "unauthorized", detail: detail(401), phase: Phase::End },
        Some(503) => Outcome::DeviceError { name: "busy", detail: detail(503), phase: Phase::End },
        Some(404) => Outcome::DeviceError { name: "not_found", detail: detail(404), phase: Phase::End },
        Some(s @ (400 | 411 | 431 | 505)) => {
            Outcome::DeviceError { name: "bad_request", detail: detail(s), phase: Phase::End }
        }
        Some(s) => Outcome::Unexpected { detail: detail(s), phase: Phase::End },
        None => Outcome::Unexpected { detail: format!("not an HTTP answer: {head:?}"), phase: Phase::End },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_read_as_a_person_reads_it() {
        let ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{SUCCESS_PAGE}", SUCCESS_PAGE.len());
        assert_eq!(judge(ok.as_bytes()).name(), "ok");
        let e = judge(b"HTTP/1.1 200 OK\r\n\r\nUpdate error: Decryption error\r\n");
        assert_eq!(e.name(), "decryption_error");
        let e = judge(b"HTTP/1.1 413 Content Too Large\r\n\r\nUpdate error: Not Enough Space\r\n");
        assert_eq!(e.name(), "not_enough_space");
        assert_eq!(judge(b"HTTP/1.1 401 Unauthorized\r\n\r\n").name(), "unauthorized");
        assert_eq!(judge(b"HTTP/1.1 200 OK\r\n\r\nhello").name(), "unexpected");
        assert_eq!(judge(b"garbage").name(), "unexpected");
        for name in ["ok", "unauthorized", "decryption_error", "busy"] {
            assert!(name == "ok" || error_names().contains(&name), "{name}");
        }
    }

    #[test]
    fn the_request_is_a_browsers_multipart_post() {
        let up = FormUpload {
            path: "/update",
            image: b"IMAGE",
            file_name: "v2.bin",
            part: "firmware",
            credentials: Some(("admin", "admin")),
            content_length: None,
            disconnect_after: None,
            stall: None,
            send_delay: None,
            timeout: Duration::from_secs(1),
        };
        let (head, part, tail) = request(&up);
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("Authorization: Basic YWRtaW46YWRtaW4=\r\n"), "the spec's vector: {head}");
        let body_len = part.len() + 5 + tail.len();
        assert!(head.contains(&format!("Content-Length: {body_len}\r\n")));
        assert!(String::from_utf8(part).unwrap().contains("name=\"firmware\"; filename=\"v2.bin\""));
    }
}
