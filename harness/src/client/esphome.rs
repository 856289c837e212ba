//! An ESPHome native OTA client (what `espota2.py` does), async on tokio, with the faults a
//! test wants to inject: wrong or missing password, a declared size or MD5 that lies, a
//! disconnect after N bytes, a slow sender. It reports the device's answer by its code's name.

use super::{Outcome, Phase, Progress, Upload, hex};
use md5::{Digest, Md5};
use ota_core::proto::esphome::{
    CHUNK_SIZE, CODE_NAMES, FEATURE_COMPRESSION, FEATURE_SHA256_AUTH, MAGIC, code, code_name,
};
use sha2::Sha256;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The outcome names of ESPHome's error codes.
pub fn error_names() -> Vec<&'static str> {
    CODE_NAMES.iter().filter(|(c, _)| *c >= 0x80).map(|(_, n)| *n).collect()
}

fn device_error(code: u8, phase: Phase) -> Outcome {
    Outcome::DeviceError {
        name: code_name(code).unwrap_or("undefined"),
        detail: format!("0x{code:02X}"),
        phase,
    }
}

fn unexpected(byte: u8, phase: Phase) -> Outcome {
    Outcome::Unexpected { detail: format!("byte 0x{byte:02X}"), phase }
}

struct Session<'p> {
    stream: TcpStream,
    sent: u64,
    progress: &'p Progress,
}

enum Stop {
    Outcome(Outcome),
}

impl Session<'_> {
    async fn read_byte(&mut self, phase: Phase) -> Result<u8, Stop> {
        self.progress.enter(phase);
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
            Err(Stop::Outcome(device_error(b, phase)))
        } else {
            Err(Stop::Outcome(unexpected(b, phase)))
        }
    }

    async fn send(&mut self, bytes: &[u8], phase: Phase) -> Result<(), Stop> {
        self.progress.enter(phase);
        self.stream.write_all(bytes).await.map_err(|e| {
            Stop::Outcome(Outcome::Interrupted { phase, sent: self.sent, detail: e.to_string() })
        })
    }
}

/// Runs one upload against `addr`, keeping `progress` up to date.
pub async fn upload(addr: SocketAddr, up: &Upload<'_>, progress: &Progress) -> Outcome {
    session(addr, up, progress).await
}

async fn session(addr: SocketAddr, up: &Upload<'_>, progress: &Progress) -> Outcome {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Interrupted { phase: Phase::Connect, sent: 0, detail: e.to_string() },
    };
    let _ = stream.set_nodelay(true);
    let mut s = Session { stream, sent: 0, progress };
    match run(&mut s, up).await {
        Ok(o) | Err(Stop::Outcome(o)) => o,
    }
}

async fn run(s: &mut Session<'_>, up: &Upload<'_>) -> Result<Outcome, Stop> {
    s.send(&MAGIC, Phase::Handshake).await?;
    s.expect(&[code::OK], Phase::Handshake).await?;
    let version = s.read_byte(Phase::Handshake).await?;
    if !(1..=2).contains(&version) {
        return Err(Stop::Outcome(unexpected(version, Phase::Handshake)));
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
        s.progress.add_sent(room as u64);
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
    Ok(Outcome::Ok { detail: format!("protocol v{version}, {acks} chunk acks") })
}
