//! An ArduinoOTA uploader (what `espota.py` does for an ESP32), async on tokio, with the faults a
//! test wants to inject: wrong or missing password, an MD5 or size that lies, a truncated
//! upload, a disconnect after N bytes, a stall, no waiting for the device's counts, a second
//! invitation while the first transfer runs, a malformed invitation.
//!
//! It listens on a TCP port of its own, invites the device by UDP, answers an `AUTH` challenge
//! in whichever scheme the nonce's length announces (32 characters: MD5, 64: PBKDF2, as the 2025
//! espota does), waits for the device to connect back and sends the image in 1024-byte chunks,
//! reading the device's counts after each. The authentication formulas are written here again
//! on purpose, apart from the device's, so each checks the other.

use super::{Outcome, Phase, Progress, Upload, hex};
use md5::{Digest, Md5};
use ota_core::proto::arduino::{CMD_AUTH, UpdateError};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// espota (ESP32) sends the image in chunks of this size and reads a reply after each.
pub const CHUNK: usize = 1024;
/// How long espota waits for an answer to a datagram, for the back-connection and for a count.
pub const WAIT: Duration = Duration::from_secs(10);
/// espota (ESP32) sends the invitation up to this many times.
pub const INVITATION_ATTEMPTS: u32 = 10;
/// How long the second invitation of `second_invitation` waits to be (wrongly) answered.
const SECOND_INVITATION_WAIT: Duration = Duration::from_millis(500);

/// The outcome names of ArduinoOTA: the `Update` library's errors, a refused password, and
/// what an uploader sees of a device that says nothing.
pub fn error_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = UpdateError::ALL.iter().map(|e| e.name()).collect();
    names.extend(["auth_failed", "no_answer", "no_back_connection", "unexpected"]);
    names
}

fn unspecified(like: &SocketAddr) -> IpAddr {
    match like {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn io_interrupted(phase: Phase, progress: &Progress, e: impl std::fmt::Display) -> Outcome {
    Outcome::Interrupted { phase, sent: progress.sent(), detail: e.to_string() }
}

/// Sends `datagram` on `udp` and waits up to `wait` for one answer.
async fn ask(udp: &UdpSocket, datagram: &[u8], phase: Phase, wait: Duration) -> Result<Vec<u8>, Outcome> {
    udp.send(datagram).await.map_err(|e| Outcome::Interrupted { phase, sent: 0, detail: e.to_string() })?;
    let mut buf = vec![0u8; 256];
    match tokio::time::timeout(wait, udp.recv(&mut buf)).await {
        Ok(Ok(n)) => {
            buf.truncate(n);
            Ok(buf)
        }
        Ok(Err(e)) => Err(Outcome::Interrupted { phase, sent: 0, detail: e.to_string() }),
        Err(_) => Err(Outcome::NoAnswer { phase, waited: wait }),
    }
}

/// The answer to `AUTH <nonce>`.
fn auth_answer(up: &Upload<'_>, password: &str, nonce: &str, md5_hex: &str, device: IpAddr) -> Vec<u8> {
    let size = up.declared_size.unwrap_or(up.image.len() as u32);
    let seed_text = format!("{}{size}{md5_hex}{device}", up.file_name);
    let text = |b: Vec<u8>| String::from_utf8(b).expect("hex is ASCII");
    let (cnonce, response) = if nonce.len() == 64 {
        let cnonce = text(hex(&Sha256::digest(seed_text.as_bytes())));
        let password_hash = text(hex(&Sha256::digest(password.as_bytes())));
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            password_hash.as_bytes(),
            format!("{nonce}:{cnonce}").as_bytes(),
            10_000,
            &mut key,
        );
        let key_hex = text(hex(&key));
        let response = text(hex(&Sha256::digest(format!("{key_hex}:{nonce}:{cnonce}").as_bytes())));
        (cnonce, response)
    } else {
        let cnonce = text(hex(&Md5::digest(seed_text.as_bytes())));
        let password_hash = text(hex(&Md5::digest(password.as_bytes())));
        let response = text(hex(&Md5::digest(format!("{password_hash}:{nonce}:{cnonce}").as_bytes())));
        (cnonce, response)
    };
    format!("{CMD_AUTH} {cnonce} {response}\n").into_bytes()
}

/// What the device's replies on the back-connection say once the counts are taken off.
enum Reply {
    Counts,
    /// The start of `OK` or of an error text: the rest is still on its way (TCP may cut a
    /// reply anywhere, and the device's counts can fill a read).
    Incomplete,
    Ok,
    Error(UpdateError),
    Other(String),
}

fn read_replies(text: &str) -> Reply {
    let rest = text.trim_start_matches(|c: char| c.is_ascii_digit());
    if rest.is_empty() {
        Reply::Counts
    } else if rest.starts_with("OK") {
        Reply::Ok
    } else if let Some(e) = UpdateError::from_reply(rest) {
        Reply::Error(e)
    } else if "OK".starts_with(rest) || UpdateError::ALL.iter().any(|e| e.text().starts_with(rest)) {
        Reply::Incomplete
    } else {
        Reply::Other(rest.trim().to_string())
    }
}

fn reply_outcome(reply: Reply, phase: Phase, progress: &Progress, chunks: u64) -> Option<Outcome> {
    match reply {
        Reply::Counts | Reply::Incomplete => None,
        Reply::Ok => Some(Outcome::Ok { detail: format!("{chunks} chunks, {} bytes", progress.sent()) }),
        Reply::Error(e) => Some(Outcome::DeviceError { name: e.name(), detail: e.text().to_string(), phase }),
        Reply::Other(text) => Some(Outcome::Unexpected { detail: format!("reply `{text}`"), phase }),
    }
}

/// Runs one upload against the device's invitation port `device`.
pub async fn upload(device: SocketAddr, up: &Upload<'_>, progress: &Progress) -> Outcome {
    match run(device, up, progress).await {
        Ok(o) | Err(o) => o,
    }
}

async fn run(device: SocketAddr, up: &Upload<'_>, progress: &Progress) -> Result<Outcome, Outcome> {
    progress.enter(Phase::Invitation);
    let listener = TcpListener::bind(SocketAddr::new(unspecified(&device), 0))
        .await
        .map_err(|e| io_interrupted(Phase::Invitation, progress, e))?;
    let port = listener.local_addr().map_err(|e| io_interrupted(Phase::Invitation, progress, e))?.port();
    // A port nobody listens on any more: the device's back-connection is refused.
    let listener = (!up.arduino.refuse_back_connection).then_some(listener);
    let udp = UdpSocket::bind(SocketAddr::new(unspecified(&device), 0))
        .await
        .map_err(|e| io_interrupted(Phase::Invitation, progress, e))?;
    udp.connect(device).await.map_err(|e| io_interrupted(Phase::Invitation, progress, e))?;
    let md5_hex = match up.md5 {
        Some(m) => String::from_utf8_lossy(&m).into_owned(),
        None => String::from_utf8(hex(&Md5::digest(up.image))).expect("hex is ASCII"),
    };
    let size = up.declared_size.unwrap_or(up.image.len() as u32);
    let invitation = match &up.arduino.raw_invitation {
        Some(raw) => raw.clone(),
        None => format!("{} {port} {size} {md5_hex}\n", up.arduino.command),
    };
    let wait = up.arduino.answer_timeout;
    let mut attempt = 1;
    let reply = loop {
        match ask(&udp, invitation.as_bytes(), Phase::Invitation, wait).await {
            Err(Outcome::NoAnswer { .. }) if attempt < up.arduino.invitation_attempts => attempt += 1,
            Err(Outcome::NoAnswer { phase, .. }) => {
                return Ok(Outcome::NoAnswer { phase, waited: wait * attempt });
            }
            other => break other?,
        }
    };
    if reply.starts_with(b"AUTH ") {
        progress.enter(Phase::Auth);
        let Some(password) = up.password else { return Ok(Outcome::PasswordRequired) };
        let nonce = String::from_utf8_lossy(&reply[5..]).trim().to_string();
        if nonce.len() != 32 && nonce.len() != 64 {
            return Ok(Outcome::Unexpected {
                detail: format!("nonce of {} characters (expected 32 or 64)", nonce.len()),
                phase: Phase::Auth,
            });
        }
        let answer = match &up.arduino.raw_auth_answer {
            Some(raw) => raw.clone().into_bytes(),
            None => auth_answer(up, password, &nonce, &md5_hex, device.ip()),
        };
        let reply = ask(&udp, &answer, Phase::Auth, wait).await?;
        if reply.starts_with(b"Authentication Failed") {
            return Ok(Outcome::DeviceError {
                name: "auth_failed",
                detail: "Authentication Failed".into(),
                phase: Phase::Auth,
            });
        }
        if reply != b"OK" {
            return Ok(Outcome::Unexpected {
                detail: format!("answer `{}`", String::from_utf8_lossy(&reply)),
                phase: Phase::Auth,
            });
        }
    } else if reply != b"OK" {
        return Ok(Outcome::Unexpected {
            detail: format!("answer `{}`", String::from_utf8_lossy(&reply)),
            phase: Phase::Invitation,
        });
    }
    progress.enter(Phase::BackConnection);
    let Some(listener) = listener else {
        return Ok(Outcome::NoBackConnection { waited: Duration::ZERO });
    };
    let stream = match tokio::time::timeout(wait, listener.accept()).await {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(e)) => return Err(io_interrupted(Phase::BackConnection, progress, e)),
        Err(_) => return Ok(Outcome::NoBackConnection { waited: wait }),
    };
    let _ = stream.set_nodelay(true);
    transfer(stream, device, up, progress).await
}

async fn transfer(
    mut stream: TcpStream,
    device: SocketAddr,
    up: &Upload<'_>,
    progress: &Progress,
) -> Result<Outcome, Outcome> {
    progress.enter(Phase::Data);
    let limit = up.disconnect_after.unwrap_or(u64::MAX);
    let stall = up.arduino.stall;
    let mut stalled = false;
    let mut second_invited = false;
    let mut replies = String::new();
    let mut chunks = 0u64;
    for chunk in up.image.chunks(CHUNK) {
        let sent = progress.sent();
        let room = (limit - sent).min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..room]).await.map_err(|e| io_interrupted(Phase::Data, progress, e))?;
        progress.add_sent(room as u64);
        chunks += 1;
        if progress.sent() == limit {
            let _ = stream.shutdown().await;
            return Ok(Outcome::Disconnected { sent: progress.sent() });
        }
        if let Some((after, pause)) = stall
            && !stalled
            && progress.sent() >= after
        {
            stalled = true;
            tokio::time::sleep(pause).await;
        }
        if !up.arduino.no_ack
            && let Some(o) = read_reply(&mut stream, &mut replies, Phase::Data, progress, chunks).await
        {
            return Ok(o);
        }
        // After the device answered for the chunk that crossed half the image, so its log
        // order is the same on every run.
        if up.arduino.second_invitation && !second_invited && progress.sent() * 2 >= up.image.len() as u64 {
            second_invited = true;
            if let Some(o) = second_invitation(device, up).await {
                return Ok(o);
            }
        }
        if let Some(d) = up.send_delay {
            tokio::time::sleep(d).await;
        }
    }
    // Everything is sent: read until the device says OK or an error, or closes.
    progress.enter(Phase::End);
    loop {
        if let Some(o) = read_reply(&mut stream, &mut replies, Phase::End, progress, chunks).await {
            return Ok(o);
        }
    }
}

/// Reads what the device sent next onto `replies`: the outcome once they decide one (OK, an
/// error, the connection closed, or nothing within [`WAIT`]), `None` while they are counts.
async fn read_reply(
    stream: &mut TcpStream,
    replies: &mut String,
    phase: Phase,
    progress: &Progress,
    chunks: u64,
) -> Option<Outcome> {
    let mut buf = [0u8; 64];
    let n = match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) => {
            return Some(end_without_ok(replies, progress, chunks, "the device closed the connection"));
        }
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Some(end_without_ok(replies, progress, chunks, &e.to_string())),
        Err(_) => return Some(Outcome::NoAnswer { phase, waited: WAIT }),
    };
    replies.push_str(&String::from_utf8_lossy(&buf[..n]));
    reply_outcome(read_replies(replies), phase, progress, chunks)
}

/// The connection ended: whatever the device said last decides.
fn end_without_ok(replies: &str, progress: &Progress, chunks: u64, detail: &str) -> Outcome {
    reply_outcome(read_replies(replies), progress.phase(), progress, chunks).unwrap_or_else(|| {
        Outcome::Interrupted { phase: progress.phase(), sent: progress.sent(), detail: detail.to_string() }
    })
}

/// Invites the device again from another port while it is busy: an answer is wrong.
async fn second_invitation(device: SocketAddr, up: &Upload<'_>) -> Option<Outcome> {
    let udp = UdpSocket::bind(SocketAddr::new(unspecified(&device), 0)).await.ok()?;
    udp.connect(device).await.ok()?;
    let md5_hex = String::from_utf8(hex(&Md5::digest(up.image))).expect("hex is ASCII");
    let invitation = format!("0 1 {} {md5_hex}\n", up.image.len());
    match ask(&udp, invitation.as_bytes(), Phase::Invitation, SECOND_INVITATION_WAIT).await {
        Err(Outcome::NoAnswer { .. }) => None,
        Ok(reply) => Some(Outcome::Unexpected {
            detail: format!(
                "answer `{}` to a second invitation during the transfer",
                String::from_utf8_lossy(&reply)
            ),
            phase: Phase::Data,
        }),
        Err(other) => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_counts_then_ok_or_the_update_librarys_text() {
        assert!(matches!(read_replies("10241024"), Reply::Counts));
        assert!(matches!(read_replies("1024OK"), Reply::Ok));
        // A reply cut by TCP (or by a read full of counts) is waited for, not judged.
        assert!(matches!(read_replies("10241024O"), Reply::Incomplete));
        assert!(matches!(read_replies("1024MD5 Che"), Reply::Incomplete));
        assert!(matches!(read_replies("1024OX"), Reply::Other(t) if t == "OX"));
        assert!(matches!(read_replies("1024MD5 Check Failed\r\n"), Reply::Error(UpdateError::Md5)));
        assert!(matches!(read_replies("Wrong Magic Byte\r\n"), Reply::Error(UpdateError::MagicByte)));
        assert!(matches!(read_replies("1024hello"), Reply::Other(t) if t == "hello"));
    }

    /// The spec's vectors, through the uploader's own formulas.
    #[test]
    fn answers_match_the_spec_vectors() {
        let image = vec![0u8; 20480];
        let up = Upload {
            image: &image,
            file_name: "firmware.bin",
            password: Some("admin"),
            offer_sha256: false,
            declared_size: None,
            md5: None,
            disconnect_after: None,
            send_delay: None,
            timeout: Duration::from_secs(1),
            seed: 0,
            arduino: Default::default(),
        };
        let ip: IpAddr = "192.168.1.50".parse().unwrap();
        let md5 = "ebcbf9b3a29550898de71befd6309314";
        let a = auth_answer(&up, "admin", "25f9e794323b453885f5181f1b624d0b", md5, ip);
        assert_eq!(a, b"200 bc8ddca6b35014e4ad9a8107fba90c72 0f5acfa9c5393efcd9cbce6c0030aad0\n");
        let nonce = "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225";
        let a = String::from_utf8(auth_answer(&up, "admin", nonce, md5, ip)).unwrap();
        assert_eq!(
            a,
            "200 b3b901ab3165b9aa56cdfa7443945ca1ffb248c65e25e34cb0b62fdcca961983 \
             8dafea36c5fbf7189c7d118e3e1c739758729b3cc82d222dc8811159996bda24\n"
        );
    }
}
