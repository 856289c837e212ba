//! The ESP32-C3 ROM serial loader, as a sans-IO state machine: SLIP-framed requests in, SLIP
//! bytes out, the flash written through the strict NOR model. It answers what espflash and
//! esptool send in download boot mode (shared/spec/bench-and-rom-loader.md §2), with the ROM's
//! semantics until a flasher stub is "uploaded" (MEM_BEGIN/DATA/END with an entry point: no code
//! runs here; the loader answers `OHAI` and from then on speaks as the stub does: two status
//! bytes, raw MD5, compressed writes with just-in-time erase, READ_FLASH with flow control,
//! ERASE_FLASH/ERASE_REGION).
//!
//! Supported: SYNC (eight replies), READ_REG/WRITE_REG (chip magic, eFuse MAC and revision,
//! the SPI1 RDID sequence of espflash's flash-size detection), GET_SECURITY_INFO (chip id 5),
//! SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE (a pty has no baud rate), FLASH_BEGIN/DATA/END,
//! FLASH_DEFL_BEGIN/DATA/END (zlib), MEM_BEGIN/DATA/END, SPI_FLASH_MD5, READ_FLASH_SLOW (ROM),
//! ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE (stub). Anything else gets status 1 with
//! the ROM's 0x05 or the stub's 0xFF; a bad checksum, length, sequence or address gets the error
//! byte the ROM or stub sends for it. Nothing panics on any input (fuzz target `rom_loader`).

pub mod chip;
pub mod packet;
pub mod port;
pub mod slip;

use embedded_storage::nor_flash::NorFlash;
use md5::{Digest, Md5};
use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush, MZStatus};
use packet::{Failure, Request, RequestError, op};

/// The SYNC payload: `07 07 12 20` and 32 × `0x55`.
pub fn sync_payload() -> [u8; 36] {
    let mut p = [0x55u8; 36];
    p[..4].copy_from_slice(&[0x07, 0x07, 0x12, 0x20]);
    p
}

/// The value field of the ROM's SYNC replies (the stub's is 0).
pub const ROM_SYNC_VALUE: u32 = 0x2012_0707;
/// What a freshly started stub sends, unasked.
pub const STUB_HELLO: &[u8] = b"OHAI";
const SECTOR: u32 = 4096;
/// READ_FLASH_SLOW's largest answer.
const SLOW_READ_MAX: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Rom,
    Stub,
}

/// The loader hands the chip back: to a reset (boot from flash) or straight into the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Reboot,
    RunUserCode,
}

/// A frame the loader did not take, and why (for the log; the host sees no answer to it, or an
/// error status when its opcode could be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("SLIP: {0}")]
    Slip(#[from] slip::SlipError),
    #[error("request: {0}")]
    Request(#[from] RequestError),
    #[error("command {op:#04x} failed: {failure}")]
    Command { op: u8, failure: Failure },
}

/// What one call produced.
#[derive(Debug, Default)]
pub struct Output {
    /// SLIP-encoded bytes for the host.
    pub bytes: Vec<u8>,
    pub exit: Option<Exit>,
    pub rejected: Vec<Rejected>,
}

/// A flash write between FLASH_BEGIN (or FLASH_DEFL_BEGIN) and its END.
struct Write {
    offset: u32,
    /// Bytes the host announced (raw: blocks × block size; deflated: the uncompressed size).
    size: u32,
    block_size: u32,
    blocks: u32,
    next_seq: u32,
    /// Bytes written so far, from `offset`.
    written: u32,
    /// Bytes short of a whole 4-byte word, held until more come or the write ends.
    tail: Vec<u8>,
    /// Sectors before this address are erased for this write.
    erased_to: u32,
    inflate: Option<Box<InflateState>>,
}

struct MemLoad {
    blocks: u32,
    block_size: u32,
    next_seq: u32,
}

/// A stub READ_FLASH in progress: one packet in flight, as espflash expects.
struct ReadBack {
    next: u32,
    end: u32,
    block: u32,
    sent: u32,
    md5: Md5,
}

pub struct RomLoader {
    decoder: slip::Decoder,
    mode: Mode,
    regs: chip::Registers,
    write: Option<Write>,
    mem: Option<MemLoad>,
    read: Option<ReadBack>,
    /// The loader has exited; bytes after that are not its business.
    exited: bool,
}

impl RomLoader {
    pub fn new(mac: [u8; 6], flash_size: usize) -> RomLoader {
        RomLoader {
            decoder: slip::Decoder::default(),
            mode: Mode::Rom,
            regs: chip::Registers::new(mac, flash_size),
            write: None,
            mem: None,
            read: None,
            exited: false,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A stub READ_FLASH is streaming: its raw data frames come between the answers.
    pub fn reading(&self) -> bool {
        self.read.is_some()
    }

    /// Takes bytes from the host; returns the answers and whether the loader exited.
    pub fn receive<F: NorFlash>(&mut self, bytes: &[u8], flash: &mut F) -> Output {
        let mut out = Output::default();
        let mut frames = Vec::new();
        self.decoder.feed(bytes, |f| frames.push(f.map(<[u8]>::to_vec)));
        for frame in frames {
            if self.exited {
                break;
            }
            match frame {
                Ok(f) => self.frame(&f, flash, &mut out),
                Err(e) => out.rejected.push(e.into()),
            }
        }
        out
    }

    fn send(&self, frame: &[u8], out: &mut Output) {
        slip::encode_into(frame, &mut out.bytes);
    }

    fn status(&self, failure: Option<Failure>) -> Vec<u8> {
        let (status, error) = match failure {
            None => (0, 0),
            Some(f) if self.mode == Mode::Rom => (1, f.rom_code()),
            Some(f) => (1, f.stub_code()),
        };
        match self.mode {
            Mode::Rom => vec![status, error, 0, 0],
            Mode::Stub => vec![status, error],
        }
    }

    fn reply(&self, op: u8, value: u32, data: &[u8], failure: Option<Failure>, out: &mut Output) {
        let frame = packet::response(op, value, data, &self.status(failure));
        self.send(&frame, out);
    }

    fn frame<F: NorFlash>(&mut self, frame: &[u8], flash: &mut F, out: &mut Output) {
        if self.read.is_some() {
            // The host acknowledges each packet with the total it has (4 bytes; a request is 8+).
            if frame.len() == 4 {
                self.read_ack(frame, flash, out);
                return;
            }
            // The host moved on: the read is abandoned.
            self.read = None;
        }
        let req = match Request::parse(frame) {
            Ok(r) => r,
            Err(e) => {
                if let RequestError::LengthMismatch { op, .. } = e {
                    self.reply(op, 0, &[], Some(Failure::InvalidMessage), out);
                }
                out.rejected.push(e.into());
                return;
            }
        };
        let op = req.op;
        match self.command(&req, flash, out) {
            Ok(Some((value, data))) => self.reply(op, value, &data, None, out),
            Ok(None) => {}
            Err(failure) => {
                self.reply(op, 0, &[], Some(failure), out);
                out.rejected.push(Rejected::Command { op, failure });
            }
        }
    }

    /// Runs one request: `Ok(Some((value, data)))` to answer, `Ok(None)` when the answer was
    /// sent already (SYNC's eight, READ_FLASH's stream).
    fn command<F: NorFlash>(
        &mut self,
        req: &Request<'_>,
        flash: &mut F,
        out: &mut Output,
    ) -> Result<Option<(u32, Vec<u8>)>, Failure> {
        let stub = self.mode == Mode::Stub;
        let word = |n: usize| req.word(n).ok_or(Failure::BadDataLength);
        let done = Ok(Some((0, Vec::new())));
        match req.op {
            op::SYNC => {
                if req.data != sync_payload() {
                    return Err(Failure::InvalidMessage);
                }
                let value = if stub { 0 } else { ROM_SYNC_VALUE };
                for _ in 0..8 {
                    self.reply(op::SYNC, value, &[], None, out);
                }
                Ok(None)
            }
            op::READ_REG => {
                exact(req, 4)?;
                Ok(Some((self.regs.read(word(0)?), Vec::new())))
            }
            op::WRITE_REG => {
                if req.data.is_empty() || !req.data.len().is_multiple_of(16) {
                    return Err(Failure::BadDataLength);
                }
                for n in 0..req.data.len() / 16 {
                    self.regs.write(word(n * 4)?, word(n * 4 + 1)?, word(n * 4 + 2)?);
                }
                done
            }
            op::GET_SECURITY_INFO => {
                exact(req, 0)?;
                Ok(Some((0, self.regs.security_info().to_vec())))
            }
            op::SPI_ATTACH => {
                if req.data.len() != 4 && req.data.len() != 8 {
                    return Err(Failure::BadDataLength);
                }
                done
            }
            op::SPI_SET_PARAMS => {
                exact(req, 24)?;
                done
            }
            op::CHANGE_BAUDRATE => {
                exact(req, 8)?;
                done
            }
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN => {
                self.begin(req, flash)?;
                done
            }
            op::FLASH_DATA | op::FLASH_DEFL_DATA => {
                self.data(req, flash)?;
                done
            }
            op::FLASH_END | op::FLASH_DEFL_END => {
                let flag = if req.data.is_empty() { 0 } else { word(0)? };
                let write = self.write.take().ok_or(Failure::NotInFlashMode)?;
                finish(write, req.op == op::FLASH_DEFL_END && stub, flash)?;
                self.reply(req.op, 0, &[], None, out);
                // The ROM leaves the loader either way; the stub only when asked to reboot.
                if !stub || flag == 0 {
                    out.exit = Some(if flag == 0 { Exit::Reboot } else { Exit::RunUserCode });
                    self.exited = true;
                }
                Ok(None)
            }
            op::MEM_BEGIN => {
                exact(req, 16)?;
                let (blocks, block_size) = (word(1)?, word(2)?);
                self.mem = Some(MemLoad { blocks, block_size, next_seq: 0 });
                done
            }
            op::MEM_DATA => {
                let payload = checked_payload(req)?;
                let mem = self.mem.as_mut().ok_or(Failure::NotInFlashMode)?;
                if word(1)? != mem.next_seq
                    || mem.next_seq >= mem.blocks
                    || payload.len() as u32 > mem.block_size
                {
                    return Err(Failure::BadBlock);
                }
                mem.next_seq += 1;
                done
            }
            op::MEM_END => {
                exact(req, 8)?;
                self.mem.take().ok_or(Failure::NotInFlashMode)?;
                let (no_entry, _entry) = (word(0)?, word(1)?);
                self.reply(op::MEM_END, 0, &[], None, out);
                if no_entry == 0 {
                    // The uploaded code (a flasher stub) starts and says hello.
                    self.mode = Mode::Stub;
                    self.send(STUB_HELLO, out);
                }
                Ok(None)
            }
            op::SPI_FLASH_MD5 => {
                exact(req, 16)?;
                let digest = md5_of(flash, word(0)?, word(1)?)?;
                if stub {
                    Ok(Some((0, digest.to_vec())))
                } else {
                    let mut hex = [0u8; 32];
                    ota_core::hex::encode_lower(&digest, &mut hex);
                    Ok(Some((0, hex.to_vec())))
                }
            }
            op::READ_FLASH_SLOW if !stub => {
                // espflash sends two more words than esptool; both are fine.
                if req.data.len() != 8 && req.data.len() != 16 {
                    return Err(Failure::BadDataLength);
                }
                let (offset, len) = (word(0)?, word(1)?);
                if len > SLOW_READ_MAX {
                    return Err(Failure::ReadLength);
                }
                Ok(Some((0, read_range(flash, offset, len)?)))
            }
            op::ERASE_FLASH | op::ERASE_REGION | op::READ_FLASH | op::RUN_USER_CODE if !stub => {
                Err(Failure::InvalidMessage)
            }
            op::ERASE_FLASH => {
                exact(req, 0)?;
                let cap = flash.capacity() as u32;
                flash.erase(0, cap).map_err(|_| Failure::FlashWrite)?;
                done
            }
            op::ERASE_REGION => {
                exact(req, 8)?;
                let (offset, size) = (word(0)?, word(1)?);
                if !offset.is_multiple_of(SECTOR) || !size.is_multiple_of(SECTOR) {
                    return Err(Failure::BadDataLength);
                }
                let end = offset.checked_add(size).filter(|e| *e as usize <= flash.capacity());
                flash.erase(offset, end.ok_or(Failure::FlashWrite)?).map_err(|_| Failure::FlashWrite)?;
                done
            }
            op::READ_FLASH => {
                exact(req, 16)?;
                let (offset, len, block) = (word(0)?, word(1)?, word(2)?);
                let end = offset.checked_add(len).filter(|e| *e as usize <= flash.capacity());
                let end = end.ok_or(Failure::FlashRead)?;
                if block == 0 || block > 0x4000 {
                    return Err(Failure::BadBlock);
                }
                self.reply(op::READ_FLASH, 0, &[], None, out);
                self.read = Some(ReadBack { next: offset, end, block, sent: 0, md5: Md5::new() });
                self.read_send(flash, out);
                Ok(None)
            }
            op::RUN_USER_CODE => {
                self.reply(op::RUN_USER_CODE, 0, &[], None, out);
                out.exit = Some(Exit::RunUserCode);
                self.exited = true;
                Ok(None)
            }
            _ => Err(if stub { Failure::NotImplemented } else { Failure::InvalidMessage }),
        }
    }

    fn begin<F: NorFlash>(&mut self, req: &Request<'_>, flash: &mut F) -> Result<(), Failure> {
        // The C3 ROM takes a fifth word (encrypted write); the stub four.
        if req.data.len() != 16 && req.data.len() != 20 {
            return Err(Failure::BadDataLength);
        }
        let w = |n| req.word(n).ok_or(Failure::BadDataLength);
        let (size, blocks, block_size, offset) = (w(0)?, w(1)?, w(2)?, w(3)?);
        let deflated = req.op == op::FLASH_DEFL_BEGIN;
        let span = if deflated { size } else { size.max(blocks.saturating_mul(block_size)) };
        let end = offset.checked_add(span).filter(|e| *e as usize <= flash.capacity());
        let end = end.ok_or(Failure::Failed)?;
        if block_size == 0 || block_size > 0x4000 {
            return Err(Failure::BadBlock);
        }
        let mut erased_to = offset - offset % SECTOR;
        if self.mode == Mode::Rom {
            // The ROM erases the whole region up front; the stub as the data comes.
            let to = end.div_ceil(SECTOR).saturating_mul(SECTOR).min(flash.capacity() as u32);
            if to > erased_to {
                flash.erase(erased_to, to).map_err(|_| Failure::FlashWrite)?;
            }
            erased_to = to;
        }
        self.write = Some(Write {
            offset,
            size: if deflated { size } else { blocks.saturating_mul(block_size) },
            block_size,
            blocks,
            next_seq: 0,
            written: 0,
            tail: Vec::new(),
            erased_to,
            inflate: deflated.then(|| InflateState::new_boxed(DataFormat::Zlib)),
        });
        Ok(())
    }

    fn data<F: NorFlash>(&mut self, req: &Request<'_>, flash: &mut F) -> Result<(), Failure> {
        let payload = checked_payload(req)?;
        let seq = req.word(1).ok_or(Failure::BadDataLength)?;
        let w = self.write.as_mut().ok_or(Failure::NotInFlashMode)?;
        if (req.op == op::FLASH_DEFL_DATA) != w.inflate.is_some() {
            return Err(Failure::NotInFlashMode);
        }
        if seq != w.next_seq || seq >= w.blocks || payload.len() as u32 > w.block_size {
            return Err(Failure::BadBlock);
        }
        w.next_seq += 1;
        let Some(mut state) = w.inflate.take() else { return put(w, payload, flash) };
        let result = inflate_into(w, &mut state, payload, flash);
        w.inflate = Some(state);
        result
    }

    fn read_send<F: NorFlash>(&mut self, flash: &mut F, out: &mut Output) {
        let Some(r) = self.read.as_mut() else { return };
        if r.next >= r.end {
            let digest = std::mem::take(&mut r.md5).finalize();
            self.read = None;
            self.send(&digest, out);
            return;
        }
        let n = r.block.min(r.end - r.next);
        match read_range(flash, r.next, n) {
            Ok(bytes) => {
                r.md5.update(&bytes);
                r.next += n;
                r.sent += n;
                let frame = bytes;
                self.send(&frame, out);
            }
            Err(failure) => {
                self.read = None;
                out.rejected.push(Rejected::Command { op: op::READ_FLASH, failure });
            }
        }
    }

    fn read_ack<F: NorFlash>(&mut self, frame: &[u8], flash: &mut F, out: &mut Output) {
        let total = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let Some(r) = self.read.as_ref() else { return };
        if total != r.sent {
            self.read = None;
            out.rejected.push(Rejected::Command { op: op::READ_FLASH, failure: Failure::BadDataLength });
            return;
        }
        self.read_send(flash, out);
    }
}

/// Inflates one DEFL_DATA payload and writes what comes out.
fn inflate_into<F: NorFlash>(
    w: &mut Write,
    state: &mut InflateState,
    payload: &[u8],
    flash: &mut F,
) -> Result<(), Failure> {
    let mut input = payload;
    let mut buf = vec![0u8; 0x4000];
    loop {
        let r = inflate(state, input, &mut buf, MZFlush::None);
        input = &input[r.bytes_consumed..];
        put(w, &buf[..r.bytes_written], flash)?;
        match r.status {
            Ok(MZStatus::StreamEnd) => return Ok(()),
            Ok(_) if input.is_empty() && r.bytes_written < buf.len() => return Ok(()),
            Ok(_) => {}
            // No progress possible: the block is used up, the rest comes in the next one.
            Err(miniz_oxide::MZError::Buf) => return Ok(()),
            Err(_) => return Err(Failure::Inflate),
        }
    }
}

/// The request's data must be exactly `n` bytes.
fn exact(req: &Request<'_>, n: usize) -> Result<(), Failure> {
    if req.data.len() == n { Ok(()) } else { Err(Failure::BadDataLength) }
}

/// A DATA command's payload after its 16-byte header, its length and checksum checked.
fn checked_payload<'a>(req: &Request<'a>) -> Result<&'a [u8], Failure> {
    let len = req.word(0).ok_or(Failure::BadDataLength)? as usize;
    let payload = req.data.get(16..).ok_or(Failure::BadDataLength)?;
    if payload.len() != len {
        return Err(Failure::BadDataLength);
    }
    if packet::checksum(payload) != req.checksum {
        return Err(Failure::BadChecksum);
    }
    Ok(payload)
}

/// Writes `bytes` after what `w` has written, erasing sectors just before they are needed and
/// holding back an unaligned tail.
fn put<F: NorFlash>(w: &mut Write, bytes: &[u8], flash: &mut F) -> Result<(), Failure> {
    if bytes.is_empty() {
        return Ok(());
    }
    let total = w.written as u64 + w.tail.len() as u64 + bytes.len() as u64;
    if total > w.size as u64 {
        return Err(Failure::TooMuchData);
    }
    w.tail.extend_from_slice(bytes);
    let whole = w.tail.len() / 4 * 4;
    if whole == 0 {
        return Ok(());
    }
    let chunk: Vec<u8> = w.tail.drain(..whole).collect();
    program(w, &chunk, flash)
}

fn program<F: NorFlash>(w: &mut Write, chunk: &[u8], flash: &mut F) -> Result<(), Failure> {
    let at = w.offset.checked_add(w.written).ok_or(Failure::FlashWrite)?;
    let end = at.checked_add(chunk.len() as u32).ok_or(Failure::FlashWrite)?;
    if end > w.erased_to {
        let to = end.div_ceil(SECTOR).saturating_mul(SECTOR).min(flash.capacity() as u32);
        flash.erase(w.erased_to, to).map_err(|_| Failure::FlashWrite)?;
        w.erased_to = to;
    }
    flash.write(at, chunk).map_err(|_| Failure::FlashWrite)?;
    w.written += chunk.len() as u32;
    Ok(())
}

/// Ends a write: the tail padded with 0xFF to a whole word. A stub's deflated write must have
/// produced exactly the announced size.
fn finish<F: NorFlash>(mut w: Write, exact_size: bool, flash: &mut F) -> Result<(), Failure> {
    if !w.tail.is_empty() {
        let mut last = std::mem::take(&mut w.tail);
        let real = last.len() as u32;
        last.resize(4, 0xFF);
        program(&mut w, &last, flash)?;
        w.written = w.written - 4 + real;
    }
    if exact_size && w.written != w.size {
        return Err(Failure::NotEnoughData);
    }
    Ok(())
}

/// `len` bytes at `offset`, read in the flash's 4-byte words.
fn read_range<F: NorFlash>(flash: &mut F, offset: u32, len: u32) -> Result<Vec<u8>, Failure> {
    let end =
        offset.checked_add(len).filter(|e| *e as usize <= flash.capacity()).ok_or(Failure::FlashRead)?;
    let start = offset - offset % 4;
    let stop = end.div_ceil(4) * 4;
    let stop = stop.min(flash.capacity() as u32 / 4 * 4);
    if stop < end {
        return Err(Failure::FlashRead);
    }
    let mut buf = vec![0u8; (stop - start) as usize];
    flash.read(start, &mut buf).map_err(|_| Failure::FlashRead)?;
    let from = (offset - start) as usize;
    Ok(buf[from..from + len as usize].to_vec())
}

fn md5_of<F: NorFlash>(flash: &mut F, offset: u32, len: u32) -> Result<[u8; 16], Failure> {
    let mut h = Md5::new();
    let mut at = offset;
    let end = offset.checked_add(len).ok_or(Failure::FlashRead)?;
    while at < end {
        let n = (end - at).min(0x1_0000);
        h.update(read_range(flash, at, n)?);
        at += n;
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests;
