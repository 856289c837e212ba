//! OTA clients, one module per update path, each with the faults a test wants to inject. They
//! share one [`Upload`] description and one protocol-neutral [`Outcome`] that names the device's
//! answer in the protocol's own words (ESPHome's response codes, the Arduino `Update` library's
//! errors). [`UpdatePath`] is the registry: adding a path is one module and one variant.

pub mod arduino;
pub mod elegant_ota;
pub mod esphome;
pub mod web_form;
pub mod ws_ota;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

pub use ota_core::proto::UpdatePath;

/// The uploaders: the update paths where the harness sends the image to a port of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploader {
    /// `espota2.py`.
    Esphome,
    /// `espota.py`.
    Arduino,
}

impl Uploader {
    pub const ALL: [Uploader; 2] = [Uploader::Esphome, Uploader::Arduino];

    /// The device's update path this uploader speaks.
    pub fn path(self) -> UpdatePath {
        match self {
            Uploader::Esphome => UpdatePath::Esphome,
            Uploader::Arduino => UpdatePath::Arduino,
        }
    }

    /// The device's port this uploader connects (or sends its invitation) to.
    pub const fn port(self) -> crate::dut::Port {
        match self {
            Uploader::Esphome => crate::dut::Port::Tcp(ota_core::proto::esphome::DEFAULT_PORT),
            Uploader::Arduino => crate::dut::Port::Udp(ota_core::proto::arduino::DEFAULT_PORT),
        }
    }

    pub fn by_name(name: &str) -> Option<Uploader> {
        Self::ALL.into_iter().find(|u| u.path().name() == name)
    }
}

impl fmt::Display for Uploader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path().name())
    }
}

/// Options and faults only an ArduinoOTA uploader has.
#[derive(Debug, Clone)]
pub struct ArduinoFaults {
    /// How long to wait for an answer to a datagram and for the back-connection (espota's
    /// `--timeout`, 10 s).
    pub answer_timeout: Duration,
    /// How often the invitation is sent before giving up (espota: 10; a device still waiting
    /// for an earlier authentication answer takes the next invitation for one, and drops it).
    pub invitation_attempts: u32,
    /// Send this datagram instead of the invitation (a malformed one, an unknown command).
    pub raw_invitation: Option<String>,
    /// Send this datagram instead of the authentication answer (one of the wrong shape).
    pub raw_auth_answer: Option<String>,
    /// Invite the device to a port nobody listens on: its back-connection is refused.
    pub refuse_back_connection: bool,
    /// The invitation's command (0 flash, 100 filesystem).
    pub command: u32,
    /// Stop sending for this long after this many image bytes.
    pub stall: Option<(u64, Duration)>,
    /// Send the image without waiting for the device's counts.
    pub no_ack: bool,
    /// Mid-transfer, invite the device again from another port; it must not answer.
    pub second_invitation: bool,
}

impl Default for ArduinoFaults {
    fn default() -> Self {
        ArduinoFaults {
            answer_timeout: arduino::WAIT,
            invitation_attempts: arduino::INVITATION_ATTEMPTS,
            raw_invitation: None,
            raw_auth_answer: None,
            refuse_back_connection: false,
            command: ota_core::proto::arduino::CMD_FLASH,
            stall: None,
            no_ack: false,
            second_invitation: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub image: &'a [u8],
    /// The name the uploader gives the file (ArduinoOTA's cnonce includes it).
    pub file_name: &'a str,
    pub password: Option<&'a str>,
    /// ESPHome: offer SHA-256 authentication (feature bit 1), as ESPHome clients since 2025.10 do.
    pub offer_sha256: bool,
    /// Announce this size instead of the image's.
    pub declared_size: Option<u32>,
    /// Announce this MD5 (32 hex characters) instead of the image's.
    pub md5: Option<[u8; 32]>,
    /// Close the connection after sending this many image bytes.
    pub disconnect_after: Option<u64>,
    /// Pause between blocks.
    pub send_delay: Option<Duration>,
    /// For the whole session.
    pub timeout: Duration,
    /// Seed for the client nonce.
    pub seed: u64,
    pub arduino: ArduinoFaults,
}

/// Runs one upload on `path` against the device's endpoint for it. Never panics on what the
/// device does.
pub async fn upload(uploader: Uploader, endpoint: SocketAddr, up: &Upload<'_>) -> Outcome {
    let progress = Progress::default();
    let session = async {
        match uploader {
            Uploader::Esphome => esphome::upload(endpoint, up, &progress).await,
            Uploader::Arduino => arduino::upload(endpoint, up, &progress).await,
        }
    };
    let outcome = match tokio::time::timeout(up.timeout, session).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Interrupted {
            phase: progress.phase(),
            sent: progress.sent(),
            detail: format!("client timeout after {:?}", up.timeout),
        },
    };
    let ms = progress.started.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(%uploader, ms, sent = progress.sent(), %outcome, "upload done");
    outcome
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The device took the image and said so.
    Ok { detail: String },
    /// The device answered an error: its name in the protocol's words.
    DeviceError { name: &'static str, detail: String, phase: Phase },
    /// The connection ended with no answer.
    Interrupted { phase: Phase, sent: u64, detail: String },
    /// The device wants a password and none was given (the client stops, as the tools do).
    PasswordRequired,
    /// Something the protocol does not allow at that point.
    Unexpected { detail: String, phase: Phase },
    /// The client stopped after `disconnect_after` bytes, as asked.
    Disconnected { sent: u64 },
    /// A datagram got no answer (ArduinoOTA: a refused invitation is not answered).
    NoAnswer { phase: Phase, waited: Duration },
    /// The device accepted the invitation but never connected back (ArduinoOTA on ESP32: its
    /// `Update.begin` failed after it said `OK`).
    NoBackConnection { waited: Duration },
}

impl Outcome {
    /// The name a scenario's `expect` uses for this outcome.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::DeviceError { name, .. } => name,
            Outcome::Interrupted { .. } | Outcome::Disconnected { .. } => "interrupted",
            Outcome::PasswordRequired => "password_required",
            Outcome::Unexpected { .. } => "unexpected",
            Outcome::NoAnswer { .. } => "no_answer",
            Outcome::NoBackConnection { .. } => "no_back_connection",
        }
    }

    /// Image bytes that went to the device (for the speed a summary may print).
    pub fn sent(&self) -> Option<u64> {
        match self {
            Outcome::Interrupted { sent, .. } | Outcome::Disconnected { sent } => Some(*sent),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok { detail } => write!(f, "ok ({detail})"),
            Outcome::DeviceError { name, detail, phase } => {
                write!(f, "device error {name} ({detail}) during {phase}")
            }
            Outcome::Interrupted { phase, sent, detail } => {
                write!(f, "interrupted during {phase} after {sent} image bytes ({detail})")
            }
            Outcome::PasswordRequired => f.write_str("device requires a password, none given"),
            Outcome::Unexpected { detail, phase } => write!(f, "unexpected {detail} during {phase}"),
            Outcome::Disconnected { sent } => write!(f, "client disconnected after {sent} image bytes"),
            Outcome::NoAnswer { phase, waited } => write!(f, "no answer during {phase} within {waited:?}"),
            Outcome::NoBackConnection { waited } => {
                write!(f, "the device accepted but did not connect back within {waited:?}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Connect,
    Handshake,
    Invitation,
    Auth,
    BackConnection,
    Prepare,
    Md5,
    Data,
    End,
}

impl Phase {
    const ALL: [Phase; 9] = [
        Phase::Connect,
        Phase::Handshake,
        Phase::Invitation,
        Phase::Auth,
        Phase::BackConnection,
        Phase::Prepare,
        Phase::Md5,
        Phase::Data,
        Phase::End,
    ];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Handshake => "handshake",
            Phase::Invitation => "invitation",
            Phase::Auth => "authentication",
            Phase::BackConnection => "back-connection",
            Phase::Prepare => "prepare",
            Phase::Md5 => "md5",
            Phase::Data => "data",
            Phase::End => "end",
        })
    }
}

/// Where a session is, readable after its future was dropped by the overall timeout.
pub struct Progress {
    phase: AtomicU8,
    sent: AtomicU64,
    /// When the session started: each phase's start is traced (`RUST_LOG=otahil=debug`).
    started: std::time::Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { phase: AtomicU8::new(0), sent: AtomicU64::new(0), started: std::time::Instant::now() }
    }
}

impl Progress {
    pub fn enter(&self, phase: Phase) {
        let before = self.phase.swap(phase as u8, Ordering::Relaxed);
        if before != phase as u8 {
            let ms = self.started.elapsed().as_secs_f64() * 1e3;
            tracing::debug!(%phase, ms, sent = self.sent(), "upload phase");
        }
    }
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    pub fn phase(&self) -> Phase {
        Phase::ALL[self.phase.load(Ordering::Relaxed) as usize]
    }
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Base64 (RFC 4648, padded, no line breaks): Homie's servers' payloads, Basic credentials.
pub fn base64(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len() * 2];
    ota_core::hex::encode_lower(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc4648_with_padding() {
        assert_eq!(base64(b""), b"");
        assert_eq!(base64(b"f"), b"Zg==");
        assert_eq!(base64(b"fo"), b"Zm8=");
        assert_eq!(base64(b"foo"), b"Zm9v");
        assert_eq!(base64(b"foobar"), b"Zm9vYmFy");
        assert_eq!(base64(&[0xE9, 0xFF, 0x00, 0x01]), b"6f8AAQ==");
    }

    #[test]
    fn a_timeout_says_where_the_session_was() {
        let p = Progress::default();
        assert_eq!((p.phase(), p.sent()), (Phase::Connect, 0));
        p.enter(Phase::Data);
        p.add_sent(1024);
        p.add_sent(1024);
        assert_eq!((p.phase(), p.sent()), (Phase::Data, 2048));
        for phase in Phase::ALL {
            p.enter(phase);
            assert_eq!(p.phase(), phase);
        }
    }

    fn upload_of(image: &[u8], timeout: Duration) -> Upload<'_> {
        Upload {
            image,
            file_name: "v2.bin",
            password: None,
            offer_sha256: true,
            declared_size: None,
            md5: None,
            disconnect_after: None,
            send_delay: None,
            timeout,
            seed: 0,
            arduino: ArduinoFaults::default(),
        }
    }

    /// Issue #11 defect 3: a timeout says where the session stopped, not "end after 0 bytes".
    #[test]
    fn a_client_timeout_names_the_phase_and_the_bytes_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // A listener that accepts and never answers.
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = silent.local_addr().unwrap();
            let keep = tokio::spawn(async move { silent.accept().await.map(|(s, _)| s) });
            let image = vec![0xE9u8; 40_000];
            let o = upload(Uploader::Esphome, addr, &upload_of(&image, Duration::from_millis(300))).await;
            assert!(matches!(o, Outcome::Interrupted { phase: Phase::Handshake, sent: 0, .. }), "{o}");
            drop(keep);

            // A device that freezes after acknowledging the first 8 KiB chunk.
            let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = frozen.local_addr().unwrap();
            let device = tokio::spawn(async move {
                let (mut s, _) = frozen.accept().await.unwrap();
                let mut buf = [0u8; 5 + 1];
                s.read_exact(&mut buf[..5]).await.unwrap();
                s.write_all(&[0x00, 2]).await.unwrap();
                s.read_exact(&mut buf[5..]).await.unwrap();
                s.write_all(&[0x40, 0x41]).await.unwrap();
                let mut size_md5 = [0u8; 4 + 32];
                s.read_exact(&mut size_md5[..4]).await.unwrap();
                s.write_all(&[0x42]).await.unwrap();
                s.read_exact(&mut size_md5[4..]).await.unwrap();
                s.write_all(&[0x43]).await.unwrap();
                let mut chunk = [0u8; 8192];
                s.read_exact(&mut chunk).await.unwrap();
                s.write_all(&[0x47]).await.unwrap();
                // Frozen: reads nothing more, answers nothing, keeps the connection.
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(s);
            });
            let o = upload(Uploader::Esphome, addr, &upload_of(&image, Duration::from_millis(500))).await;
            assert!(matches!(o, Outcome::Interrupted { phase: Phase::Data, sent: 16_384, .. }), "{o}");
            assert!(o.to_string().contains("during data after 16384 image bytes"), "{o}");
            device.abort();
        });
    }

    #[test]
    fn outcome_names_are_the_protocols_words() {
        let e = Outcome::DeviceError { name: "md5_check_failed", detail: "x".into(), phase: Phase::End };
        assert_eq!(e.name(), "md5_check_failed");
        assert_eq!(Outcome::Disconnected { sent: 1 }.name(), "interrupted");
        assert!(esphome::error_names().contains(&"auth_invalid"));
        assert!(arduino::error_names().contains(&"md5_check_failed"));
        assert!(arduino::error_names().contains(&"auth_failed"));
        for u in Uploader::ALL {
            assert_eq!(Uploader::by_name(&u.to_string()), Some(u));
        }
        assert_eq!(Uploader::by_name("homie"), None, "Homie's server publishes, it uploads to no port");
    }
}
