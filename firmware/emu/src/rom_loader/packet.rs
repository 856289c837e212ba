//! The loader's packets inside SLIP frames (Espressif's serial protocol, esptool `loader.py`).
//! A request is `00 op len:u16 checksum:u32 data`; a response `01 op len:u16 value:u32 data`,
//! its status bytes counted in `len` and ending `data`: four from the ROM (`status error 0 0`),
//! two from the flasher stub.

/// Opcodes.
pub mod op {
    pub const FLASH_BEGIN: u8 = 0x02;
    pub const FLASH_DATA: u8 = 0x03;
    pub const FLASH_END: u8 = 0x04;
    pub const MEM_BEGIN: u8 = 0x05;
    pub const MEM_END: u8 = 0x06;
    pub const MEM_DATA: u8 = 0x07;
    pub const SYNC: u8 = 0x08;
    pub const WRITE_REG: u8 = 0x09;
    pub const READ_REG: u8 = 0x0A;
    pub const SPI_SET_PARAMS: u8 = 0x0B;
    pub const SPI_ATTACH: u8 = 0x0D;
    pub const READ_FLASH_SLOW: u8 = 0x0E;
    pub const CHANGE_BAUDRATE: u8 = 0x0F;
    pub const FLASH_DEFL_BEGIN: u8 = 0x10;
    pub const FLASH_DEFL_DATA: u8 = 0x11;
    pub const FLASH_DEFL_END: u8 = 0x12;
    pub const SPI_FLASH_MD5: u8 = 0x13;
    pub const GET_SECURITY_INFO: u8 = 0x14;
    // The flasher stub's own.
    pub const ERASE_FLASH: u8 = 0xD0;
    pub const ERASE_REGION: u8 = 0xD1;
    pub const READ_FLASH: u8 = 0xD2;
    pub const RUN_USER_CODE: u8 = 0xD3;
}

/// Request directions and response marker.
pub const REQUEST: u8 = 0x00;
pub const RESPONSE: u8 = 0x01;
pub const HEADER_LEN: usize = 8;
/// The seed of the data checksum (XOR of every payload byte).
pub const CHECKSUM_SEED: u8 = 0xEF;

/// Why a command failed, with the error byte the ROM or the stub sends for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("invalid message (unknown command or wrong length)")]
    InvalidMessage,
    #[error("command failed")]
    Failed,
    #[error("data checksum mismatch")]
    BadChecksum,
    #[error("flash write error")]
    FlashWrite,
    #[error("flash read error")]
    FlashRead,
    #[error("flash read length error")]
    ReadLength,
    #[error("deflate (zlib) data error")]
    Inflate,
    #[error("data length does not match the command")]
    BadDataLength,
    #[error("block size or sequence does not match FLASH_BEGIN")]
    BadBlock,
    #[error("no write in progress (FLASH_BEGIN or MEM_BEGIN first)")]
    NotInFlashMode,
    #[error("more data than announced")]
    TooMuchData,
    #[error("fewer bytes written than announced")]
    NotEnoughData,
    #[error("command not implemented here")]
    NotImplemented,
}

impl Failure {
    /// The ROM's error byte (esptool's serial-protocol.rst, "Status bytes").
    pub fn rom_code(self) -> u8 {
        match self {
            Failure::InvalidMessage | Failure::NotImplemented => 0x05,
            Failure::Failed | Failure::BadDataLength | Failure::BadBlock | Failure::NotInFlashMode => 0x06,
            Failure::BadChecksum => 0x07,
            Failure::FlashWrite | Failure::TooMuchData | Failure::NotEnoughData => 0x08,
            Failure::FlashRead => 0x09,
            Failure::ReadLength => 0x0A,
            Failure::Inflate => 0x0B,
        }
    }

    /// The flasher stub's error byte (`ESP_*` codes 0xC0–0xC9, 0xFF).
    pub fn stub_code(self) -> u8 {
        match self {
            Failure::BadDataLength | Failure::InvalidMessage | Failure::ReadLength => 0xC0,
            Failure::BadChecksum => 0xC1,
            Failure::BadBlock => 0xC2,
            Failure::Failed | Failure::FlashWrite | Failure::FlashRead => 0xC4,
            Failure::NotInFlashMode => 0xC6,
            Failure::Inflate => 0xC7,
            Failure::NotEnoughData => 0xC8,
            Failure::TooMuchData => 0xC9,
            Failure::NotImplemented => 0xFF,
        }
    }
}

/// A request as sent by esptool or espflash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub op: u8,
    pub checksum: u32,
    pub data: &'a [u8],
}

/// Why a frame is not a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}-byte frame is shorter than the 8-byte header")]
    Short(usize),
    #[error("direction byte {0:#04x} (a request starts with 0x00)")]
    NotARequest(u8),
    #[error("header says {said} data bytes, the frame holds {holds}")]
    LengthMismatch { op: u8, said: usize, holds: usize },
}

impl<'a> Request<'a> {
    pub fn parse(frame: &'a [u8]) -> Result<Request<'a>, RequestError> {
        if frame.len() < HEADER_LEN {
            return Err(RequestError::Short(frame.len()));
        }
        if frame[0] != REQUEST {
            return Err(RequestError::NotARequest(frame[0]));
        }
        let op = frame[1];
        let said = u16::from_le_bytes([frame[2], frame[3]]) as usize;
        let data = &frame[HEADER_LEN..];
        if said != data.len() {
            return Err(RequestError::LengthMismatch { op, said, holds: data.len() });
        }
        let checksum = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        Ok(Request { op, checksum, data })
    }

    /// The `n`th little-endian word of the data, if the data holds it.
    pub fn word(&self, n: usize) -> Option<u32> {
        let b = self.data.get(n * 4..n * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The XOR checksum over `payload`, seeded with 0xEF, as the header carries it.
pub fn checksum(payload: &[u8]) -> u32 {
    payload.iter().fold(CHECKSUM_SEED, |acc, b| acc ^ b) as u32
}

/// A response frame (unescaped): `value`, `data`, then the status bytes.
pub fn response(op: u8, value: u32, data: &[u8], status: &[u8]) -> Vec<u8> {
    let len = (data.len() + status.len()) as u16;
    let mut f = Vec::with_capacity(HEADER_LEN + len as usize);
    f.extend_from_slice(&[RESPONSE, op]);
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&value.to_le_bytes());
    f.extend_from_slice(data);
    f.extend_from_slice(status);
    f
}

/// A request frame (unescaped), as a host sends it; the checksum over `payload_for_checksum`.
pub fn request(op: u8, data: &[u8], checksum_value: u32) -> Vec<u8> {
    let mut f = vec![REQUEST, op];
    f.extend_from_slice(&(data.len() as u16).to_le_bytes());
    f.extend_from_slice(&checksum_value.to_le_bytes());
    f.extend_from_slice(data);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_headers_say_what_is_wrong() {
        let f = request(op::READ_REG, &0x4000_1000u32.to_le_bytes(), 0);
        let r = Request::parse(&f).unwrap();
        assert_eq!((r.op, r.word(0), r.word(1)), (op::READ_REG, Some(0x4000_1000), None));
        assert_eq!(Request::parse(&f[..7]), Err(RequestError::Short(7)));
        let mut resp = f.clone();
        resp[0] = RESPONSE;
        assert_eq!(Request::parse(&resp), Err(RequestError::NotARequest(1)));
        let e = Request::parse(&f[..10]).unwrap_err();
        assert_eq!(e, RequestError::LengthMismatch { op: op::READ_REG, said: 4, holds: 2 });
        assert_eq!(e.to_string(), "header says 4 data bytes, the frame holds 2");
    }

    #[test]
    fn checksum_is_xor_seeded_with_0xef_and_responses_count_status_bytes() {
        assert_eq!(checksum(&[]), 0xEF);
        assert_eq!(checksum(&[0xEF]), 0);
        assert_eq!(checksum(&[1, 2, 4]), 0xEF ^ 7);
        let r = response(op::SYNC, 7, &[], &[0, 0, 0, 0]);
        assert_eq!(r, [1, op::SYNC, 4, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn every_failure_has_a_rom_and_a_stub_error_byte() {
        assert_eq!(Failure::BadChecksum.rom_code(), 0x07);
        assert_eq!(Failure::InvalidMessage.rom_code(), 0x05);
        assert_eq!(Failure::NotImplemented.stub_code(), 0xFF);
        assert_eq!(Failure::Inflate.stub_code(), 0xC7);
    }
}
