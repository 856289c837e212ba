//! A PEM certificate (as provisioned in NVS) to DER.

/// Why a PEM text is no certificate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PemError {
    /// No `-----BEGIN CERTIFICATE-----` … `-----END CERTIFICATE-----`.
    NoCertificate,
    /// A character outside base64 between the markers.
    Base64,
    /// The certificate is longer than the buffer.
    TooLong,
}

impl core::fmt::Display for PemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PemError::NoCertificate => "no BEGIN/END CERTIFICATE block",
            PemError::Base64 => "a character outside base64",
            PemError::TooLong => "longer than the device keeps",
        })
    }
}

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// A base64 character's value (the standard alphabet; `None` for anything else).
pub(crate) fn sextet(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes the first certificate of `pem` into `out`; returns the DER's length.
pub fn decode_certificate(pem: &str, out: &mut [u8]) -> Result<usize, PemError> {
    let start = pem.find(BEGIN).ok_or(PemError::NoCertificate)? + BEGIN.len();
    let len = pem[start..].find(END).ok_or(PemError::NoCertificate)?;
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for c in pem[start..start + len].bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            break;
        }
        acc = (acc << 6) | sextet(c).ok_or(PemError::Base64)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n).ok_or(PemError::TooLong)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    if n == 0 {
        return Err(PemError::NoCertificate);
    }
    Ok(n)
}
