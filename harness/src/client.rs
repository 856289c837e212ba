//! An ESPHome native OTA client (what `espota2.py` does), async on tokio, with the faults a
//! test wants to inject: wrong or missing password, a declared size or MD5 that lies, a
//! disconnect after N bytes, a slow sender. It reports the device's answer by name.

use md5::{Digest, Md5};
use ota_core::proto::esphome::{CHUNK_SIZE, FEATURE_COMPRESSION, FEATURE_SHA256_AUTH, MAGIC, code};
use sha2::Sha256;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub image: &'a [u8],
    pub password: Option<&'a str>,
    /// Offer SHA-256 authentication (feature bit 1), as ESPHome clients since 2025.10 do.
    pub offer_sha256: bool,
    /// Announce this size instead of the image's.
    pub declared_size: Option<u32>,
    /// Announce this MD5 (32 hex characters) instead of the image's.
    pub md5: Option<[u8; 32]>,
    /// Close the connection after sending this many image bytes.
    pub disconnect_after: Option<u64>,
    /// Pause between 8 KiB blocks.
    pub send_delay: Option<Duration>,
    /// For the whole session.
    pub timeout: Duration,
    /// Seed for the client nonce.
    pub seed: u64,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `UPDATE_END_OK` received and the final acknowledgement sent.
    Ok { version: u8, acks: u32 },
    /// The device answered an error code.
    DeviceError { code: u8, phase: Phase },
    /// The connection ended with no answer.
    Interrupted { phase: Phase, sent: u64, detail: String },
    /// The device wants a password and none was given (the client closes, as espota2 does).
    PasswordRequired,
    /// A byte the protocol does not allow at that point.
    Unexpected { byte: u8, phase: Phase },
    /// The client stopped after `disconnect_after` bytes, as asked.
    Disconnected { sent: u64 },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok { version, acks } => write!(f, "ok (protocol v{version}, {acks} chunk acks)"),
            Outcome::DeviceError { code, phase } => write!(
                f,
                "device error {} (0x{code:02X}) during {phase}",
                ota_core::proto::esphome::code_name(*code).unwrap_or("undefined")
            ),
            Outcome::Interrupted { phase, sent, detail } => {
                write!(f, "interrupted during {phase} after {sent} image bytes ({detail})")
            }
            Outcome::PasswordRequired => f.write_str("device requires a password, none given"),
            Outcome::Unexpected { byte, phase } => write!(f, "unexpected byte 0x{byte:02X} during {phase}"),
            Outcome::Disconnected { sent } => write!(f, "client disconnected after {sent} image bytes"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Handshake,
    Auth,
    Prepare,
    Md5,
    Data,
    End,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Handshake => "handshake",
            Phase::Auth => "authentication",
            Phase::Prepare => "prepare",
            Phase::Md5 => "md5",
            Phase::Data => "data",
            Phase::End => "end",
        })
    }
}

struct Session {
    stream: TcpStream,
    sent: u64,
}

enum Stop {
    Outcome(Outcome),
}

impl Session {
    async fn read_byte(&mut self, phase: Phase) -> Result<u8, Stop> {
        let mut b = [0u8; 1];
        match self.stream.read_exact(&mut b).await {
            Ok(_) => Ok(b[0]),
            Err(e) => {
                Err(Stop::Outcome(Outcome::Interrupted { phase, sent: self.sent, detail: e.to_string() }))
            }
        }
    }

    /// Reads one byte that must be `want`; an error code is reported as the device's answer.
    async fn expect(&mut self, want: &[u8], phase: Phase) -> Result<u8, Stop> {
        let b = self.read_byte(phase).await?;
        if want.contains(&b) {
            Ok(b)
        } else if b >= 0x80 {
            Err(Stop::Outcome(Outcome::DeviceError { code: b, phase }))
        } else {
            Err(Stop::Outcome(Outcome::Unexpected { byte: b, phase }))
        }
    }

    async fn send(&mut self, bytes: &[u8], phase: Phase) -> Result<(), Stop> {
        self.stream.write_all(bytes).await.map_err(|e| {
            Stop::Outcome(Outcome::Interrupted { phase, sent: self.sent, detail: e.to_string() })
        })
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len() * 2];
    ota_core::hex::encode_lower(bytes, &mut out);
    out
}

/// Runs one upload against `addr`. Never panics on what the device does.
pub async fn upload(addr: SocketAddr, up: &Upload<'_>) -> Outcome {
    match tokio::time::timeout(up.timeout, session(addr, up)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Interrupted {
            phase: Phase::End,
            sent: 0,
            detail: format!("client timeout after {:?}", up.timeout),
        },
    }
}

async fn session(addr: SocketAddr, up: &Upload<'_>) -> Outcome {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Interrupted { phase: Phase::Connect, sent: 0, detail: e.to_string() },
    };
    let _ = stream.set_nodelay(true);
    let mut s = Session { stream, sent: 0 };
    match run(&mut s, up).await {
        Ok(o) | Err(Stop::Outcome(o)) => o,
    }
}

async fn run(s: &mut Session, up: &Upload<'_>) -> Result<Outcome, Stop> {
    s.send(&MAGIC, Phase::Handshake).await?;
    s.expect(&[code::OK], Phase::Handshake).await?;
    let version = s.read_byte(Phase::Handshake).await?;
    if !(1..=2).contains(&version) {
        return Err(Stop::Outcome(Outcome::Unexpected { byte: version, phase: Phase::Handshake }));
    }
    let features = FEATURE_COMPRESSION | if up.offer_sha256 { FEATURE_SHA256_AUTH } else { 0 };
    s.send(&[features], Phase::Handshake).await?;
    s.expect(&[code::HEADER_OK, code::SUPPORTS_COMPRESSION], Phase::Handshake).await?;
    let auth = s.expect(&[code::AUTH_OK, code::REQUEST_AUTH, code::REQUEST_SHA256_AUTH], Phase::Auth).await?;
    if auth != code::AUTH_OK {
        let Some(password) = up.password else {
            return Ok(Outcome::PasswordRequired);
        };
        let n = if auth == code::REQUEST_SHA256_AUTH { 64 } else { 32 };
        let mut nonce = vec![0u8; n];
        s.stream.read_exact(&mut nonce).await.map_err(|e| {
            Stop::Outcome(Outcome::Interrupted { phase: Phase::Auth, sent: 0, detail: e.to_string() })
        })?;
        let mut rng = ota_emu::flash::SplitMix(up.seed);
        let raw: Vec<u8> = (0..n / 2).map(|_| rng.byte()).collect();
        let cnonce = hex(&raw);
        let answer = if n == 64 {
            let mut h = Sha256::new();
            h.update(password.as_bytes());
            h.update(&nonce);
            h.update(&cnonce);
            hex(&h.finalize())
        } else {
            let mut h = Md5::new();
            h.update(password.as_bytes());
            h.update(&nonce);
            h.update(&cnonce);
            hex(&h.finalize())
        };
        s.send(&cnonce, Phase::Auth).await?;
        s.send(&answer, Phase::Auth).await?;
        s.expect(&[code::AUTH_OK], Phase::Auth).await?;
    }
    let size = up.declared_size.unwrap_or(up.image.len() as u32);
    s.send(&size.to_be_bytes(), Phase::Prepare).await?;
    s.expect(&[code::UPDATE_PREPARE_OK], Phase::Prepare).await?;
    let md5: Vec<u8> = match up.md5 {
        Some(m) => m.to_vec(),
        None => hex(&Md5::digest(up.image)),
    };
    s.send(&md5, Phase::Md5).await?;
    s.expect(&[code::BIN_MD5_OK], Phase::Md5).await?;
    let limit = up.disconnect_after.unwrap_or(u64::MAX);
    let mut acks = 0;
    for block in up.image.chunks(CHUNK_SIZE as usize) {
        let room = (limit - s.sent).min(block.len() as u64) as usize;
        s.send(&block[..room], Phase::Data).await?;
        s.sent += room as u64;
        if s.sent == limit {
            let _ = s.stream.shutdown().await;
            return Ok(Outcome::Disconnected { sent: s.sent });
        }
        if version == 2 {
            s.expect(&[code::CHUNK_OK], Phase::Data).await?;
            acks += 1;
        }
        if let Some(d) = up.send_delay {
            tokio::time::sleep(d).await;
        }
    }
    s.expect(&[code::RECEIVE_OK], Phase::End).await?;
    s.expect(&[code::UPDATE_END_OK], Phase::End).await?;
    s.send(&[code::OK], Phase::End).await?;
    let _ = s.stream.shutdown().await;
    Ok(Outcome::Ok { version, acks })
}
