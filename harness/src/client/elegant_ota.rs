//! A browser at ElegantOTA's portal, as its script talks to the device: `GET /ota/start` with
//! the mode and the file's MD5, then one `multipart/form-data` POST of the file to
//! `/ota/upload` (the same request as the upload form's, [`super::web_form`]), each on its own
//! connection. The answers are text: `OK`, or 400 with `Update`'s words. Faults: credentials,
//! the mode, the hash (none, malformed, wrong), no start at all, and the upload's wire faults.

use super::web_form::{FormUpload, authorization, post, read_answer};
use super::{Outcome, Phase};
use ota_core::proto::arduino::UpdateError;
use ota_core::proto::elegant_ota::pages::{BAD_HASH, BUSY, NOT_STARTED};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The `/ota/start` request before the upload.
#[derive(Debug, Clone)]
pub struct Start<'a> {
    /// `fr` (firmware) or `fs` (filesystem), as the page sends them.
    pub mode: &'a str,
    /// The `hash` parameter (`None`: left out).
    pub hash: Option<String>,
}

/// One update through the portal as a scenario describes it.
#[derive(Debug, Clone)]
pub struct PortalUpload<'a> {
    /// `None`: the upload alone, with no start before it.
    pub start: Option<Start<'a>>,
    /// The upload (path `/ota/upload`, part `file`).
    pub upload: FormUpload<'a>,
}

/// The outcome names besides `ok`: `Update`'s errors and the portal's refusals.
pub fn error_names() -> Vec<&'static str> {
    let mut names: Vec<_> = UpdateError::ALL.iter().map(|e| e.name()).collect();
    names.extend(["unauthorized", "busy", "bad_hash", "not_started", "bad_request", "not_found", "refused"]);
    names
}

/// The outcome name of a failure text the portal shows (a 400's body, or what the page prints
/// after `Update failed: `): the portal's refusals, then `Update`'s errors.
pub fn error_name(text: &str) -> Option<&'static str> {
    match text.trim() {
        BAD_HASH => Some("bad_hash"),
        NOT_STARTED => Some("not_started"),
        BUSY => Some("busy"),
        t => UpdateError::from_reply(t).map(|e| e.name()),
    }
}

/// Runs the start and the upload against `addr`. Never panics on what the device does.
pub async fn upload(addr: SocketAddr, up: &PortalUpload<'_>) -> Outcome {
    if let Some(start) = &up.start {
        let answer = match tokio::time::timeout(up.upload.timeout, get_start(addr, start, &up.upload)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                return Outcome::Interrupted { phase: Phase::Prepare, sent: 0, detail: e.to_string() };
            }
            Err(_) => {
                let detail = format!("no answer to /ota/start within {:?}", up.upload.timeout);
                return Outcome::Interrupted { phase: Phase::Prepare, sent: 0, detail };
            }
        };
        let outcome = judge(&answer, Phase::Prepare);
        if !matches!(outcome, Outcome::Ok { .. }) {
            return outcome;
        }
    }
    match post(addr, &up.upload).await {
        Ok(answer) => judge(&answer, Phase::End),
        Err(outcome) => outcome,
    }
}

async fn get_start(addr: SocketAddr, start: &Start<'_>, upload: &FormUpload<'_>) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    let hash = start.hash.as_deref().map(|h| format!("&hash={h}")).unwrap_or_default();
    let request = format!(
        "GET /ota/start?mode={}{hash} HTTP/1.1\r\nHost: device\r\n{}Connection: close\r\n\r\n",
        start.mode,
        authorization(upload.credentials)
    );
    stream.write_all(request.as_bytes()).await?;
    read_answer(&mut stream).await
}

/// What an answer says, by its status and text.
fn judge(answer: &[u8], phase: Phase) -> Outcome {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Unexpected { detail: format!("an answer without a whole head: {text:?}"), phase };
    };
    let status: Option<u16> =
        head.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|s| s.parse().ok());
    let body = body.trim_end();
    let error =
        |name: &'static str, s: u16| Outcome::DeviceError { name, detail: format!("{s} {body}"), phase };
    match status {
        Some(200) if body == "OK" => Outcome::Ok { detail: "OK".into() },
        Some(400) => error(error_name(body).unwrap_or("bad_request"), 400),
        Some(401) => error("unauthorized", 401),
        Some(413) => error(UpdateError::Space.name(), 413),
        Some(404) => error("not_found", 404),
        Some(s @ (405 | 411 | 431 | 505)) => error("bad_request", s),
        Some(s) => Outcome::Unexpected { detail: format!("{s} {body}"), phase },
        None => Outcome::Unexpected { detail: format!("not an HTTP answer: {head:?}"), phase },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_status_and_text() {
        let read = |a: &str| judge(a.as_bytes(), Phase::End).name();
        assert_eq!(read("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"), "ok");
        assert_eq!(read(&format!("HTTP/1.1 400 Bad Request\r\n\r\n{BAD_HASH}")), "bad_hash");
        assert_eq!(read(&format!("HTTP/1.1 400 Bad Request\r\n\r\n{NOT_STARTED}")), "not_started");
        assert_eq!(read("HTTP/1.1 400 Bad Request\r\n\r\nMD5 Check Failed"), "md5_check_failed");
        assert_eq!(read("HTTP/1.1 400 Bad Request\r\n\r\nDecryption error"), "decryption_error");
        assert_eq!(read("HTTP/1.1 400 Bad Request\r\n\r\nPartition Could Not be Found"), "no_partition");
        assert_eq!(read("HTTP/1.1 401 Unauthorized\r\n\r\n"), "unauthorized");
        assert_eq!(read("HTTP/1.1 200 OK\r\n\r\nFAIL"), "unexpected");
        for name in ["bad_hash", "not_started", "md5_check_failed", "decryption_error", "unauthorized"] {
            assert!(error_names().contains(&name), "{name}");
        }
    }
}
