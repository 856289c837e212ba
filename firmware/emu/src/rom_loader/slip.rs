//! SLIP framing (RFC 1055) as the ESP32 ROM loader uses it: every frame starts and ends with
//! `0xC0`; inside, `0xC0` is sent as `DB DC` and `0xDB` as `DB DD`.

pub const END: u8 = 0xC0;
pub const ESC: u8 = 0xDB;
pub const ESC_END: u8 = 0xDC;
pub const ESC_ESC: u8 = 0xDD;

/// The longest frame the decoder keeps: a 16 KiB stub data block plus its header, escaped bytes
/// counted once. A longer frame is dropped whole.
pub const MAX_FRAME: usize = 0x4000 + 64;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlipError {
    #[error("escape byte 0xDB followed by {0:#04x} (expected 0xDC or 0xDD): frame dropped")]
    BadEscape(u8),
    #[error("frame longer than {MAX_FRAME} bytes: dropped")]
    TooLong,
}

/// Appends `frame`, SLIP-encoded with both delimiters, to `out`.
pub fn encode_into(frame: &[u8], out: &mut Vec<u8>) {
    out.reserve(frame.len() + 2);
    out.push(END);
    for &b in frame {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            b => out.push(b),
        }
    }
    out.push(END);
}

pub fn encode(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(frame, &mut out);
    out
}

/// A streaming decoder: bytes in any pieces, whole frames out. Bytes outside a frame (line
/// noise, a boot log) are ignored; an empty frame (two `0xC0` in a row) is no frame.
#[derive(Default)]
pub struct Decoder {
    frame: Vec<u8>,
    in_frame: bool,
    escaped: bool,
    /// The current frame is bad; skip to its end.
    dropping: bool,
}

impl Decoder {
    /// Feeds `bytes`; calls `on_frame` with each complete frame or the error that dropped it.
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Result<&[u8], SlipError>)) {
        for &b in bytes {
            if b == END {
                if self.in_frame && !self.dropping && !self.escaped && !self.frame.is_empty() {
                    on_frame(Ok(&self.frame));
                }
                // A 0xC0 both ends a frame and may start the next one.
                self.frame.clear();
                self.in_frame = true;
                self.escaped = false;
                self.dropping = false;
                continue;
            }
            if !self.in_frame || self.dropping {
                continue;
            }
            let byte = if self.escaped {
                self.escaped = false;
                match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    other => {
                        self.dropping = true;
                        on_frame(Err(SlipError::BadEscape(other)));
                        continue;
                    }
                }
            } else if b == ESC {
                self.escaped = true;
                continue;
            } else {
                b
            };
            if self.frame.len() == MAX_FRAME {
                self.dropping = true;
                on_frame(Err(SlipError::TooLong));
                continue;
            }
            self.frame.push(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, SlipError>> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.feed(bytes, |f| out.push(f.map(<[u8]>::to_vec)));
        out
    }

    #[test]
    fn escapes_both_special_bytes_and_round_trips() {
        let frame = [0x01, END, 0x02, ESC, 0x03];
        let wire = encode(&frame);
        assert_eq!(wire, [END, 0x01, ESC, ESC_END, 0x02, ESC, ESC_ESC, 0x03, END]);
        assert_eq!(decode_all(&wire), [Ok(frame.to_vec())]);
    }

    #[test]
    fn frames_split_anywhere_and_noise_between_frames_are_handled() {
        let mut wire = b"boot log line\r\n".to_vec();
        wire.extend(encode(&[1, 2, 3]));
        wire.extend(encode(&[END, ESC]));
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for b in &wire {
            d.feed(std::slice::from_ref(b), |f| out.push(f.map(<[u8]>::to_vec)));
        }
        assert_eq!(out, [Ok(vec![1, 2, 3]), Ok(vec![END, ESC])]);
    }

    #[test]
    fn a_bad_escape_drops_only_its_frame() {
        let mut wire = vec![END, 1, ESC, 0x42, 2, END];
        wire.extend(encode(&[7]));
        assert_eq!(decode_all(&wire), [Err(SlipError::BadEscape(0x42)), Ok(vec![7])]);
    }

    #[test]
    fn an_overlong_frame_is_dropped_and_the_next_one_decodes() {
        let mut wire = encode(&vec![0x11; MAX_FRAME + 1]);
        wire.extend(encode(&[9]));
        assert_eq!(decode_all(&wire), [Err(SlipError::TooLong), Ok(vec![9])]);
        assert_eq!(decode_all(&encode(&vec![0x11; MAX_FRAME])).len(), 1);
    }

    #[test]
    fn empty_frames_and_a_frame_cut_by_a_delimiter_after_an_escape_yield_nothing() {
        assert!(decode_all(&[END, END, END]).is_empty());
        assert!(decode_all(&[END, 1, ESC, END]).is_empty());
    }
}
