//! Every command of the loader, as a host (espflash, esptool) drives it, through SLIP on the
//! strict NOR flash model; bad checksums, lengths, sequences and opcodes answered with the
//! ROM's or the stub's status bytes; random input never panics.

use super::packet::{self, op};
use super::*;
use crate::flash::FileFlash;

const MAC: [u8; 6] = [0xc4, 0x0a, 0x24, 0xfe, 0x10, 0x01];
const FLASH_SIZE: usize = 64 * 1024;

/// A response frame taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    op: u8,
    value: u32,
    data: Vec<u8>,
    status: u8,
    error: u8,
}

struct Host {
    loader: RomLoader,
    flash: FileFlash,
    exit: Option<Exit>,
    rejected: Vec<Rejected>,
}

impl Host {
    fn new() -> Host {
        Host {
            loader: RomLoader::new(MAC, FLASH_SIZE),
            flash: FileFlash::in_memory(vec![0xA5; FLASH_SIZE]),
            exit: None,
            rejected: Vec::new(),
        }
    }

    /// Sends raw bytes; returns the frames that came back.
    fn raw(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let out = self.loader.receive(bytes, &mut self.flash);
        self.exit = self.exit.or(out.exit);
        self.rejected.extend(out.rejected);
        let mut frames = Vec::new();
        slip::Decoder::default()
            .feed(&out.bytes, |f| frames.push(f.expect("the loader's own SLIP").to_vec()));
        frames
    }

    fn frames(&mut self, op: u8, data: &[u8], checksum: u32) -> Vec<Vec<u8>> {
        self.raw(&slip::encode(&packet::request(op, data, checksum)))
    }

    fn answers(&mut self, op: u8, data: &[u8], checksum: u32) -> Vec<Answer> {
        let status_len = if self.loader.mode() == Mode::Rom { 4 } else { 2 };
        self.frames(op, data, checksum).into_iter().map(|f| parse(&f, status_len)).collect()
    }

    /// One command that must get exactly one answer.
    fn ask(&mut self, op: u8, data: &[u8]) -> Answer {
        let mut a = self.answers(op, data, 0);
        assert_eq!(a.len(), 1, "one answer to {op:#04x}: {a:?}");
        a.remove(0)
    }

    fn data_block(&mut self, op: u8, seq: u32, payload: &[u8]) -> Answer {
        let mut data = words(&[payload.len() as u32, seq, 0, 0]);
        data.extend_from_slice(payload);
        let mut a = self.answers(op, &data, packet::checksum(payload));
        assert_eq!(a.len(), 1);
        a.remove(0)
    }

    fn flash_bytes(&self, offset: u32, len: usize) -> Vec<u8> {
        self.flash.data()[offset as usize..offset as usize + len].to_vec()
    }

    /// MEM_BEGIN/DATA/END as espflash uploads its stub; returns the frames after MEM_END.
    fn start_stub(&mut self) -> Vec<Vec<u8>> {
        assert!(ok(&self.ask(op::MEM_BEGIN, &words(&[8, 1, 0x1800, 0x4038_0000]))));
        assert!(ok(&self.data_block(op::MEM_DATA, 0, &[0x13; 8])));
        self.frames(op::MEM_END, &words(&[0, 1_077_415_578]), 0)
    }
}

fn parse(f: &[u8], status_len: usize) -> Answer {
    assert_eq!(f[0], packet::RESPONSE, "a response: {f:02x?}");
    let len = u16::from_le_bytes([f[2], f[3]]) as usize;
    assert_eq!(len, f.len() - 8, "the length counts data and status");
    let body = &f[8..];
    let (data, status) = body.split_at(body.len() - status_len);
    Answer {
        op: f[1],
        value: u32::from_le_bytes([f[4], f[5], f[6], f[7]]),
        data: data.to_vec(),
        status: status[0],
        error: status[1],
    }
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ok(a: &Answer) -> bool {
    (a.status, a.error) == (0, 0)
}

fn failed(a: &Answer, error: u8) -> bool {
    (a.status, a.error) == (1, error)
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = crate::flash::SplitMix(seed);
    (0..len).map(|_| rng.byte()).collect()
}

#[test]
fn sync_gets_eight_rom_replies_and_a_wrong_sync_payload_an_invalid_message() {
    let mut h = Host::new();
    let a = h.answers(op::SYNC, &sync_payload(), 0);
    assert_eq!(a.len(), 8, "espflash fails with seven");
    assert!(a.iter().all(|a| a.op == op::SYNC && a.value == ROM_SYNC_VALUE && ok(a)));
    let a = h.ask(op::SYNC, &[0x07, 0x07, 0x12, 0x20]);
    assert!(failed(&a, 0x05), "{a:?}");
}

#[test]
fn registers_identify_an_esp32c3_with_its_mac_and_flash_size() {
    let mut h = Host::new();
    assert_eq!(h.ask(op::READ_REG, &words(&[chip::MAGIC_ADDR])).value, chip::MAGIC_ECO3);
    assert_eq!(h.ask(op::READ_REG, &words(&[chip::EFUSE_MAC0])).value, 0x24fe_1001);
    let info = h.ask(op::GET_SECURITY_INFO, &[]);
    assert!(ok(&info));
    assert_eq!(info.data.len(), 20);
    assert_eq!(u32::from_le_bytes(info.data[12..16].try_into().unwrap()), chip::CHIP_ID);
    // espflash's flash-size detection: SPI1 user command 0x9F, then W0.
    let set = |addr, value| words(&[addr, value, u32::MAX, 0]);
    assert!(ok(&h.ask(op::WRITE_REG, &set(chip::SPI1_USR2, 7 << 28 | 0x9F))));
    assert!(ok(&h.ask(op::WRITE_REG, &set(chip::SPI1_CMD, chip::SPI1_CMD_USR))));
    assert_eq!(h.ask(op::READ_REG, &words(&[chip::SPI1_CMD])).value & chip::SPI1_CMD_USR, 0);
    let w0 = h.ask(op::READ_REG, &words(&[chip::SPI1_W0])).value;
    assert_eq!(w0, 0xC8 | 0x40 << 8 | 16 << 16, "a 64 KiB test flash: size id 16");
    assert!(failed(&h.ask(op::WRITE_REG, &[0; 12]), 0x06), "WRITE_REG takes 16-byte groups");
    assert!(ok(&h.ask(op::SPI_ATTACH, &[0; 8])));
    assert!(ok(&h.ask(op::SPI_SET_PARAMS, &[0; 24])));
    assert!(ok(&h.ask(op::CHANGE_BAUDRATE, &words(&[921_600, 0]))));
    assert!(failed(&h.ask(op::CHANGE_BAUDRATE, &[0; 3]), 0x06));
}

#[test]
fn the_rom_writes_verifies_and_reboots() {
    let mut h = Host::new();
    let img = image(0x1400, 7);
    let blocks = img.chunks(0x400).count() as u32;
    let a = h.ask(op::FLASH_BEGIN, &words(&[img.len() as u32, blocks, 0x400, 0x2000, 0]));
    assert!(ok(&a), "{a:?}");
    for (seq, block) in img.chunks(0x400).enumerate() {
        assert!(ok(&h.data_block(op::FLASH_DATA, seq as u32, block)));
    }
    assert_eq!(h.flash_bytes(0x2000, img.len()), img);
    assert_eq!(h.flash_bytes(0x1000, 16), vec![0xA5; 16], "the sector before is untouched");
    let md5 = h.ask(op::SPI_FLASH_MD5, &words(&[0x2000, img.len() as u32, 0, 0]));
    let mut want = [0u8; 32];
    ota_core::hex::encode_lower(&Md5::digest(&img), &mut want);
    assert_eq!(md5.data, want, "the ROM answers 32 hex digits");
    let end = h.ask(op::FLASH_END, &words(&[0]));
    assert!(ok(&end));
    assert_eq!(h.exit, Some(Exit::Reboot), "FLASH_END ends the ROM session");
    assert!(h.frames(op::SYNC, &sync_payload(), 0).is_empty(), "nobody answers after the exit");
}

#[test]
fn bad_data_blocks_are_refused_with_the_roms_error_bytes_and_not_written() {
    let mut h = Host::new();
    let block = image(0x400, 9);
    assert!(failed(&h.data_block(op::FLASH_DATA, 0, &block), 0x06), "no FLASH_BEGIN yet");
    assert!(ok(&h.ask(op::FLASH_BEGIN, &words(&[0x800, 2, 0x400, 0x1000, 0]))));
    // A wrong checksum.
    let mut data = words(&[block.len() as u32, 0, 0, 0]);
    data.extend_from_slice(&block);
    let a = h.answers(op::FLASH_DATA, &data, packet::checksum(&block) ^ 1).remove(0);
    assert!(failed(&a, 0x07), "{a:?}");
    assert_eq!(h.flash_bytes(0x1000, 4), [0xFF; 4], "erased by FLASH_BEGIN, nothing written");
    // A length word that does not match the payload.
    let mut short = words(&[0x3FF, 0, 0, 0]);
    short.extend_from_slice(&block);
    assert!(failed(&h.answers(op::FLASH_DATA, &short, packet::checksum(&block)).remove(0), 0x06));
    // Out of sequence, then too many blocks.
    assert!(failed(&h.data_block(op::FLASH_DATA, 1, &block), 0x06));
    assert!(ok(&h.data_block(op::FLASH_DATA, 0, &block)));
    assert!(ok(&h.data_block(op::FLASH_DATA, 1, &block)));
    assert!(failed(&h.data_block(op::FLASH_DATA, 2, &block), 0x06));
    // A region past the end of the flash.
    assert!(failed(&h.ask(op::FLASH_BEGIN, &words(&[0x2000, 8, 0x400, 0xF000, 0])), 0x06));
    assert!(h.rejected.iter().all(|r| matches!(r, Rejected::Command { .. })));
}

#[test]
fn a_header_whose_length_lies_gets_an_invalid_message_and_noise_no_answer() {
    let mut h = Host::new();
    let mut f = packet::request(op::READ_REG, &words(&[chip::MAGIC_ADDR]), 0);
    f[2] = 9;
    let a = h.raw(&slip::encode(&f));
    assert_eq!(a.len(), 1);
    assert!(failed(&parse(&a[0], 4), 0x05));
    assert!(h.raw(&slip::encode(&[0x00, 0x0A, 0x00])).is_empty(), "too short for a header");
    assert!(h.raw(&slip::encode(&[0x01; 12])).is_empty(), "a response is not a request");
    assert!(h.raw(&[slip::END, 1, slip::ESC, 7, slip::END]).is_empty(), "a bad escape");
    let kinds: Vec<String> = h.rejected.iter().map(|r| r.to_string()).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(kinds[0].contains("header says 9 data bytes, the frame holds 4"), "{kinds:?}");
}

#[test]
fn unknown_opcodes_get_0x05_from_the_rom_and_0xff_from_the_stub() {
    let mut h = Host::new();
    assert!(failed(&h.ask(0x42, &[]), 0x05));
    assert!(failed(&h.ask(op::ERASE_FLASH, &[]), 0x05), "a stub command in ROM mode");
    h.start_stub();
    assert!(failed(&h.ask(0x42, &[]), 0xFF));
    assert!(failed(&h.ask(op::READ_FLASH_SLOW, &words(&[0, 64])), 0xFF), "the stub has READ_FLASH");
}

#[test]
fn the_rom_reads_64_bytes_at_a_time() {
    let mut h = Host::new();
    let a = h.ask(op::READ_FLASH_SLOW, &words(&[0x1002, 64, 64, 1]));
    assert!(ok(&a));
    assert_eq!(a.data, vec![0xA5; 64]);
    assert!(failed(&h.ask(op::READ_FLASH_SLOW, &words(&[0, 65])), 0x0A));
    assert!(failed(&h.ask(op::READ_FLASH_SLOW, &words(&[FLASH_SIZE as u32 - 4, 64])), 0x09));
}

#[test]
fn the_stand_in_stub_says_ohai_then_answers_as_the_stub() {
    let mut h = Host::new();
    let frames = h.start_stub();
    assert_eq!(frames.len(), 2, "MEM_END's answer, then the stub's greeting");
    assert!(ok(&parse(&frames[0], 4)), "the ROM answers MEM_END");
    assert_eq!(frames[1], STUB_HELLO);
    assert_eq!(h.loader.mode(), Mode::Stub);
    let a = h.answers(op::SYNC, &sync_payload(), 0);
    assert!(a.iter().all(|a| a.value == 0 && ok(a)), "two status bytes, value 0");
    assert!(failed(&h.ask(op::MEM_END, &words(&[0, 0])), 0xC6), "no MEM_BEGIN");
}

#[test]
fn the_stub_writes_deflated_blocks_erasing_just_in_time() {
    let mut h = Host::new();
    h.start_stub();
    let img = image(0x3003, 11);
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&img, 6);
    let blocks: Vec<&[u8]> = z.chunks(0x400).collect();
    let begin = words(&[img.len() as u32, blocks.len() as u32, 0x400, 0x4000]);
    assert!(ok(&h.ask(op::FLASH_DEFL_BEGIN, &begin)));
    assert_eq!(h.flash_bytes(0x4000, 4), [0xA5; 4], "the stub erases as data comes");
    for (seq, b) in blocks.iter().enumerate() {
        assert!(ok(&h.data_block(op::FLASH_DEFL_DATA, seq as u32, b)));
    }
    assert!(ok(&h.ask(op::FLASH_DEFL_END, &words(&[1]))));
    assert_eq!(h.exit, None, "the stub stays after FLASH_DEFL_END without reboot");
    assert_eq!(h.flash_bytes(0x4000, img.len()), img);
    let tail = h.flash_bytes(0x7000, 8);
    assert_eq!(&tail[3..], &[0xFF; 5], "padded with 0xFF to the word, the sector erased");
    assert_eq!(h.flash_bytes(0x8000, 4), [0xA5; 4], "nothing erased past the data");
    let md5 = h.ask(op::SPI_FLASH_MD5, &words(&[0x4000, img.len() as u32, 0, 0]));
    assert_eq!(md5.data, Md5::digest(&img).to_vec(), "the stub answers 16 raw bytes");
}

#[test]
fn the_stub_refuses_corrupt_deflate_data_and_a_short_write() {
    let mut h = Host::new();
    h.start_stub();
    assert!(ok(&h.ask(op::FLASH_DEFL_BEGIN, &words(&[0x100, 1, 0x400, 0]))));
    assert!(failed(&h.data_block(op::FLASH_DEFL_DATA, 0, &[0x78, 0x9c, 0xFF, 0xFF, 0xFF]), 0xC7));
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&[0x5A; 0x80], 6);
    assert!(ok(&h.ask(op::FLASH_DEFL_BEGIN, &words(&[0x100, 1, 0x400, 0]))));
    assert!(ok(&h.data_block(op::FLASH_DEFL_DATA, 0, &z)));
    assert!(failed(&h.ask(op::FLASH_DEFL_END, &words(&[1])), 0xC8), "0x80 of 0x100 bytes");
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&[0x5A; 0x200], 6);
    assert!(ok(&h.ask(op::FLASH_DEFL_BEGIN, &words(&[0x100, 1, 0x400, 0]))));
    assert!(failed(&h.data_block(op::FLASH_DEFL_DATA, 0, &z), 0xC9), "more than announced");
}

#[test]
fn the_stub_reads_back_one_packet_in_flight_then_the_md5() {
    let mut h = Host::new();
    h.start_stub();
    let want = h.flash_bytes(0x1000, 0x900);
    let mut frames = h.frames(op::READ_FLASH, &words(&[0x1000, 0x900, 0x400, 64]), 0);
    assert_eq!(frames.len(), 2, "the ack, then only the first packet despite max_in_flight 64");
    assert!(ok(&parse(&frames.remove(0), 2)));
    let mut got = frames.remove(0);
    while got.len() < want.len() {
        let more = h.raw(&slip::encode(&(got.len() as u32).to_le_bytes()));
        assert_eq!(more.len(), 1);
        got.extend(&more[0]);
    }
    assert_eq!(got, want);
    let md5 = h.raw(&slip::encode(&(got.len() as u32).to_le_bytes()));
    assert_eq!(md5, [Md5::digest(&want).to_vec()]);
    // A wrong total ends the read; the next request is served.
    h.frames(op::READ_FLASH, &words(&[0, 0x800, 0x400, 1]), 0);
    assert!(h.raw(&slip::encode(&7u32.to_le_bytes())).is_empty());
    assert!(ok(&h.ask(op::READ_REG, &words(&[chip::MAGIC_ADDR]))));
}

#[test]
fn the_stub_erases_aligned_regions_and_the_whole_flash() {
    let mut h = Host::new();
    h.start_stub();
    assert!(ok(&h.ask(op::ERASE_REGION, &words(&[0x1000, 0x2000]))));
    assert_eq!(h.flash_bytes(0x1000, 0x2000), vec![0xFF; 0x2000]);
    assert_eq!(h.flash_bytes(0x3000, 4), [0xA5; 4]);
    assert!(failed(&h.ask(op::ERASE_REGION, &words(&[0x1001, 0x1000])), 0xC0));
    assert!(failed(&h.ask(op::ERASE_REGION, &words(&[0xF000, 0x2000])), 0xC4));
    assert!(ok(&h.ask(op::ERASE_FLASH, &[])));
    assert_eq!(h.flash_bytes(0xF000, 16), vec![0xFF; 16]);
    let a = h.frames(op::RUN_USER_CODE, &[], 0);
    assert_eq!(a.len(), 1);
    assert_eq!(h.exit, Some(Exit::RunUserCode));
}

#[test]
fn random_bytes_and_mangled_requests_never_panic() {
    let seed = std::env::var("OTAHIL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED);
    let mut rng = crate::flash::SplitMix(seed);
    let ops = [
        0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0E, 0x10, 0x11, 0x12, 0x13, 0xD0, 0xD1, 0xD2,
    ];
    for round in 0..2000 {
        let mut h = Host::new();
        if round % 2 == 1 {
            h.start_stub();
        }
        for _ in 0..8 {
            let op = ops[rng.byte() as usize % ops.len()];
            let len = rng.byte() as usize % 40;
            let data: Vec<u8> =
                (0..len).map(|_| if rng.byte() < 200 { rng.byte() % 4 } else { rng.byte() }).collect();
            let check = rng.byte() as u32;
            let _ = h.frames(op, &data, check);
            let noise: Vec<u8> = (0..rng.byte() % 16).map(|_| rng.byte()).collect();
            let _ = h.raw(&noise);
        }
    }
    eprintln!("rom loader random input: seed {seed} (OTAHIL_SEED to change)");
}
