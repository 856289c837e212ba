//! The emulator's ESP32-C3 ROM serial loader under arbitrary host bytes, in ROM and in stub mode,
//! writing a strict NOR flash. Half the inputs are raw SLIP streams; the other half are
//! well-formed requests (opcode, words and payload from the input, the checksum right), which
//! reach the write, deflate and read-back paths. Properties: no panic; outside a READ_FLASH
//! stream every answer is a well-formed response frame (length counting data and status bytes;
//! four status bytes from the ROM, two from the stub) or the stub's `OHAI`; nothing is answered
//! after the loader exited.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_emu::flash::FileFlash;
use ota_emu::rom_loader::packet::{self, op};
use ota_emu::rom_loader::{Mode, RomLoader, slip};

const OPS: [u8; 22] = [
    op::FLASH_BEGIN,
    op::FLASH_DATA,
    op::FLASH_END,
    op::MEM_BEGIN,
    op::MEM_END,
    op::MEM_DATA,
    op::SYNC,
    op::WRITE_REG,
    op::READ_REG,
    op::SPI_SET_PARAMS,
    op::SPI_ATTACH,
    op::READ_FLASH_SLOW,
    op::CHANGE_BAUDRATE,
    op::FLASH_DEFL_BEGIN,
    op::FLASH_DEFL_DATA,
    op::FLASH_DEFL_END,
    op::SPI_FLASH_MD5,
    op::GET_SECURITY_INFO,
    op::ERASE_FLASH,
    op::ERASE_REGION,
    op::READ_FLASH,
    op::RUN_USER_CODE,
];

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

/// A small number or, rarely, any: sizes and offsets that land inside the 64 KiB flash.
fn word(data: &mut &[u8]) -> u32 {
    let b = take(data, 3);
    match b {
        [kind, x, y] if *kind < 200 => u32::from(*x) << 8 | u32::from(*y),
        [_, x, y] => u32::from_le_bytes([*x, *y, *x, *y]),
        _ => 0,
    }
}

fn structured(mut data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    while !data.is_empty() {
        let o = OPS[take(&mut data, 1).first().copied().unwrap_or(0) as usize % OPS.len()];
        let n_words = take(&mut data, 1).first().copied().unwrap_or(0) as usize % 6;
        let mut body: Vec<u8> = (0..n_words).flat_map(|_| word(&mut data).to_le_bytes()).collect();
        let mut checksum = 0;
        if matches!(o, op::FLASH_DATA | op::MEM_DATA | op::FLASH_DEFL_DATA) {
            let len = take(&mut data, 1).first().copied().unwrap_or(0) as usize;
            let payload = take(&mut data, len).to_vec();
            body = [payload.len() as u32, word(&mut data) % 8, 0, 0]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            body.extend_from_slice(&payload);
            checksum = packet::checksum(&payload);
        }
        if o == op::SYNC {
            body = ota_emu::rom_loader::sync_payload().to_vec();
        }
        slip::encode_into(&packet::request(o, &body, checksum), &mut wire);
    }
    wire
}

fn check_answers(bytes: &[u8], mode: Mode) {
    let mut d = slip::Decoder::default();
    d.feed(bytes, |f| {
        let f = f.expect("the loader's own frames decode");
        if f.first() != Some(&packet::RESPONSE) || f.len() < 8 {
            return; // OHAI, a READ_FLASH block or its MD5
        }
        let len = u16::from_le_bytes([f[2], f[3]]) as usize;
        assert_eq!(len, f.len() - 8, "response length field");
        let status = if mode == Mode::Rom { 4 } else { 2 };
        assert!(len >= status, "status bytes present");
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let wire = if mode & 1 == 1 { structured(rest) } else { rest.to_vec() };
    let mut flash = FileFlash::in_memory(vec![0xFF; 64 * 1024]);
    let mut loader = RomLoader::new([0xc4, 0x0a, 0x24, 0xfe, 0x10, 0x01], 64 * 1024);
    let mut exited = false;
    for piece in wire.chunks(((mode >> 1) as usize % 61) + 3) {
        let (before, was_reading) = (loader.mode(), loader.reading());
        let out = loader.receive(piece, &mut flash);
        if exited {
            assert!(out.bytes.is_empty(), "answered after the exit");
        }
        // A piece may switch ROM to stub midway (MEM_END), and a READ_FLASH stream's raw blocks
        // may look like anything: check the pieces with neither.
        if before == loader.mode() && !was_reading && !loader.reading() {
            check_answers(&out.bytes, before);
        }
        exited |= out.exit.is_some();
    }
});
