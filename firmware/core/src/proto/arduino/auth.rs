//! ArduinoOTA's two challenge-response schemes (spec: arduino-ota.md, "Authentication").
//!
//! Classic (ESP8266, arduino-esp32 ≤ 3.3.0): the device keeps `md5(password)` in hex, sends a
//! 32-character nonce and expects `md5(hash + ":" + nonce + ":" + cnonce)`.
//! PBKDF2 (arduino-esp32 ≥ 3.3.1, as its espota computes it): the device keeps
//! `sha256(password)` in hex, sends a 64-character nonce and expects
//! `sha256(hex(PBKDF2-HMAC-SHA256(hash, nonce + ":" + cnonce, 10000, 32)) + ":" + nonce + ":" + cnonce)`.

use super::NonceSource;
use crate::hex;
use md5::{Digest, Md5};
use sha2::Sha256;

/// PBKDF2 iterations of the 3.3.1+ scheme.
pub const PBKDF2_ROUNDS: u32 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum AuthScheme {
    /// MD5 challenge-response, 32-character nonce.
    #[default]
    Md5,
    /// PBKDF2-HMAC-SHA256, 64-character nonce.
    Pbkdf2Sha256,
}

impl AuthScheme {
    /// Length of the nonce, cnonce and response in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            AuthScheme::Md5 => 32,
            AuthScheme::Pbkdf2Sha256 => 64,
        }
    }

    /// The setting's value in NVS and its name in scenarios.
    pub fn code(self) -> u8 {
        match self {
            AuthScheme::Md5 => 1,
            AuthScheme::Pbkdf2Sha256 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(AuthScheme::Md5),
            2 => Some(AuthScheme::Pbkdf2Sha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthScheme::Md5 => "md5",
            AuthScheme::Pbkdf2Sha256 => "pbkdf2",
        }
    }
}

impl core::fmt::Display for AuthScheme {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The lowercase hex digest of `parts` joined by `:` (`out` is twice the digest's length).
fn joined_hex<D: Digest>(parts: &[&[u8]], out: &mut [u8]) {
    let mut h = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part);
    }
    hex::encode_lower(&h.finalize(), out);
}

/// The scheme's digest of `parts` joined by `:`, in hex (`out` is [`AuthScheme::hex_len`] long).
fn scheme_hex(scheme: AuthScheme, parts: &[&[u8]], out: &mut [u8]) {
    match scheme {
        AuthScheme::Md5 => joined_hex::<Md5>(parts, out),
        AuthScheme::Pbkdf2Sha256 => joined_hex::<Sha256>(parts, out),
    }
}

/// What the device keeps of the password: the hash in lowercase hex, and its length.
pub(super) fn password_hash(scheme: AuthScheme, password: &[u8]) -> ([u8; 64], usize) {
    let mut out = [0u8; 64];
    let n = scheme.hex_len();
    scheme_hex(scheme, &[password], &mut out[..n]);
    (out, n)
}

/// A fresh nonce in hex (`out` is [`AuthScheme::hex_len`] long).
pub(super) fn nonce<N: NonceSource>(scheme: AuthScheme, rng: &mut N, out: &mut [u8]) {
    let mut r = [0u8; 32];
    let mut text = [0u8; 10];
    let seed: &[u8] = match scheme {
        // The ESP32 hashes the decimal text of `micros()`; a random number stands in.
        AuthScheme::Md5 => {
            rng.fill(&mut r[..4]);
            super::decimal(u32::from_le_bytes([r[0], r[1], r[2], r[3]]), &mut text)
        }
        AuthScheme::Pbkdf2Sha256 => {
            rng.fill(&mut r);
            &r
        }
    };
    scheme_hex(scheme, &[seed], out);
}

/// The response the device expects, in hex (`out` is [`AuthScheme::hex_len`] long).
pub(super) fn response(
    scheme: AuthScheme,
    password_hash: &[u8],
    nonce: &[u8],
    cnonce: &[u8],
    out: &mut [u8],
) {
    match scheme {
        AuthScheme::Md5 => scheme_hex(scheme, &[password_hash, nonce, cnonce], out),
        AuthScheme::Pbkdf2Sha256 => {
            let mut salt = [0u8; 64 + 1 + 64];
            let salt_len = nonce.len() + 1 + cnonce.len();
            salt[..nonce.len()].copy_from_slice(nonce);
            salt[nonce.len()] = b':';
            salt[nonce.len() + 1..salt_len].copy_from_slice(cnonce);
            let mut key = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password_hash, &salt[..salt_len], PBKDF2_ROUNDS, &mut key);
            let mut key_hex = [0u8; 64];
            hex::encode_lower(&key, &mut key_hex);
            scheme_hex(scheme, &[&key_hex, nonce, cnonce], out);
        }
    }
}
