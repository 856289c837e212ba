//! ASCII hex: lowercase as the ESPHome protocol sends digests and nonces, uppercase as
//! arduino-esp32 writes its sketch's SHA-256.

const DIGITS: &[u8; 16] = b"0123456789abcdef";
const UPPER_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

/// Writes the lowercase hex of `bytes` into `out` (which must be twice as long).
pub fn encode_lower(bytes: &[u8], out: &mut [u8]) {
    encode(bytes, out, DIGITS);
}

/// Writes the uppercase hex of `bytes` into `out` (which must be twice as long).
pub fn encode_upper(bytes: &[u8], out: &mut [u8]) {
    encode(bytes, out, UPPER_DIGITS);
}

fn encode(bytes: &[u8], out: &mut [u8], digits: &[u8; 16]) {
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = digits[(b >> 4) as usize];
        out[2 * i + 1] = digits[(b & 0xF) as usize];
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex (either case) into `out`; `None` if a character is not hex or the lengths differ.
pub fn decode(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(text[2 * i])? << 4) | nibble(text[2 * i + 1])?;
    }
    Some(())
}

/// Compares two byte strings in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut text = [0u8; 8];
        encode_lower(&[0xde, 0xad, 0x00, 0x7f], &mut text);
        assert_eq!(&text, b"dead007f");
        let mut back = [0u8; 4];
        decode(b"DEAD007f", &mut back).unwrap();
        assert_eq!(back, [0xde, 0xad, 0x00, 0x7f]);
        assert!(decode(b"zz", &mut [0u8; 1]).is_none());
        assert!(decode(b"abc", &mut [0u8; 1]).is_none());
    }

    #[test]
    fn ct_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
