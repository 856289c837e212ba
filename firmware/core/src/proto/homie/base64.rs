//! Base64 decoding as Homie's OTA handler does it, streamed: the text comes in pieces, and `=`
//! is allowed only within the message's last two characters.

/// A character base64 does not have, or `=` before the last two characters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Base64Error;

/// The characters of an unfinished group of four, between pieces.
#[derive(Clone, Copy, Default, Debug)]
pub struct Base64 {
    carry: [u8; 3],
    carried: usize,
}

fn value(c: u8) -> Option<u8> {
    crate::pem::sextet(c).map(|v| v as u8)
}

impl Base64 {
    /// Decodes `text`, the message's characters from `pos` of `total`, into `out` (which must
    /// hold 3 bytes per 4 characters of `text` and the carry: 96 bytes for 128 characters);
    /// returns how many bytes it wrote. The last group may end in one or two `=`.
    pub fn decode(
        &mut self,
        text: &[u8],
        pos: u32,
        total: u32,
        out: &mut [u8],
    ) -> Result<usize, Base64Error> {
        let mut n = 0;
        for (i, &c) in text.iter().enumerate() {
            let at = pos + i as u32;
            if c == b'=' {
                if at + 2 < total {
                    return Err(Base64Error);
                }
            } else if value(c).is_none() || self.pad_seen() {
                return Err(Base64Error);
            }
            if self.carried < 3 {
                self.carry[self.carried] = c;
                self.carried += 1;
                continue;
            }
            let group = [self.carry[0], self.carry[1], self.carry[2], c];
            self.carried = 0;
            n += decode_group(group, &mut out[n..])?;
        }
        Ok(n)
    }

    fn pad_seen(&self) -> bool {
        self.carry[..self.carried].contains(&b'=')
    }
}

/// One group of four characters (the last may end in `=` or `==`).
fn decode_group(g: [u8; 4], out: &mut [u8]) -> Result<usize, Base64Error> {
    let v = |c: u8| value(c).ok_or(Base64Error);
    let (a, b) = (v(g[0])?, v(g[1])?);
    out[0] = a << 2 | b >> 4;
    match (g[2], g[3]) {
        (b'=', b'=') => Ok(1),
        (b'=', _) => Err(Base64Error),
        (c, b'=') => {
            let c = v(c)?;
            out[1] = b << 4 | c >> 2;
            Ok(2)
        }
        (c, d) => {
            let (c, d) = (v(c)?, v(d)?);
            out[1] = b << 4 | c >> 2;
            out[2] = c << 6 | d;
            Ok(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn decode_in(text: &[u8], split: usize) -> Result<Vec<u8>, Base64Error> {
        let mut b = Base64::default();
        let mut all = Vec::new();
        for (i, piece) in text.chunks(split).enumerate() {
            let mut out = [0u8; 96];
            let n = b.decode(piece, (i * split) as u32, text.len() as u32, &mut out)?;
            all.extend_from_slice(&out[..n]);
        }
        Ok(all)
    }

    /// The spec's vectors: one 0xE9 byte is `6Q==`; an image starting E9 03 02 20 encodes to
    /// text starting `6QMCIAAB`.
    #[test]
    fn decodes_the_specs_vectors_at_every_split() {
        for split in [1, 2, 3, 4, 5, 128] {
            assert_eq!(decode_in(b"6Q==", split), Ok(vec![0xE9]));
            assert_eq!(decode_in(b"6QMCIAAB", split), Ok(vec![0xE9, 0x03, 0x02, 0x20, 0x00, 0x01]));
            assert_eq!(decode_in(b"6QM=", split), Ok(vec![0xE9, 0x03]));
        }
    }

    #[test]
    fn refuses_what_homie_refuses() {
        for bad in [&b"6Q=A"[..], b"6=QA6QAA", b"6Q!A", b"6Q A", b"6Q==6QAA"] {
            assert_eq!(decode_in(bad, 3), Err(Base64Error), "{}", std::string::String::from_utf8_lossy(bad));
        }
    }
}
