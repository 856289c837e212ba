//! The device's HTTP(S) pull (both flavours) under arbitrary server bytes, closes and time,
//! writing a real (RAM) flash. Properties: no panic; without a completed update otadata is
//! exactly as it was; nothing is erased or programmed unless the body began with an ESP32-C3
//! image header; nothing outside the target slot and otadata is ever written.
#![no_main]

use device::{BASE, CSV};
use libfuzzer_sys::fuzz_target;
use ota_core::proto::http_pull::{Client, Config, DeviceFacts, Endpoint, Event, Output, VersionCheck};
use ota_core::session::{Session, Target};
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;

mod device;

#[derive(Default)]
struct Out {
    begun: bool,
    complete: bool,
}

impl Output for Out {
    fn connect(&mut self, _to: Endpoint<'_>) {}
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Begin { .. } => self.begun = true,
            Event::Complete(_) => self.complete = true,
            _ => {}
        }
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut ops)) = data.split_first() else { return };
    let facts = DeviceFacts {
        sta_mac: [2, 0, 0, 0, 0, 1],
        ap_mac: [2, 0, 0, 0, 0, 2],
        free_space: 0x70000,
        sketch_size: 4096,
        sketch_md5: None,
        sketch_sha256: None,
        chip_size: 1 << 20,
        sdk_version: "v5.5.5",
        version: "1.0.0",
    };
    let mut cfg =
        if flags & 1 != 0 { Config::arduino(facts, "1.0.0") } else { Config::esp_https_ota("1.0.0") };
    cfg.version_check = match flags >> 1 & 3 {
        0 => VersionCheck::None,
        1 => VersionCheck::SkipSame,
        _ => VersionCheck::RefuseDowngrade,
    };
    cfg.follow_redirects = flags & 8 != 0;
    // Resumption: checkpoints go to NVS; with 64 the pull starts as a resume at byte 4096.
    cfg.resume = flags & 32 != 0;
    let resume_from = if flags & 64 != 0 { 4096 } else { 0 };
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut flash = FileFlash::in_memory(BASE.clone());
    let mut session = Session::new(Client::default());
    let mut out = Out::default();
    let mut now = 0u64;
    let mut first_body_byte_seen = false;
    let update = ota_core::session::UpdateSlot::default();
    let target = Target {
        table: &table,
        running: *table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &update,
    };
    session.with(&mut flash, &target, |client, sink| {
        let url = if flags & 16 != 0 { "https://h/v2.bin" } else { "http://h:8080/v2.bin" };
        client.start_at(url, resume_from, &mut out);
        while let Some((&op, rest)) = ops.split_first() {
            ops = rest;
            match op % 4 {
                0 => client.connected(&cfg, now, &mut out),
                1 => {
                    let len = take(&mut ops, 2);
                    let n = len.iter().fold(0usize, |v, b| v << 8 | *b as usize);
                    let bytes = take(&mut ops, n);
                    first_body_byte_seen |= bytes.contains(&0xE9);
                    client.data(&cfg, bytes, now, sink, &mut out);
                }
                2 => client.closed(&cfg, sink, &mut out),
                _ => {
                    now += 1000 * op as u64;
                    client.poll(&cfg, now, sink, &mut out);
                }
            }
        }
        client.closed(&cfg, sink, &mut out);
    });
    let after = flash.data();
    if !out.complete {
        assert_eq!(&after[0x9000..0xB000], &BASE[0x9000..0xB000], "otadata changed without a completed pull");
    }
    // A resumed body has no header to check (it is in the slot already): only a fresh pull
    // promises no write before one.
    if resume_from == 0 && (!out.begun || !first_body_byte_seen) {
        let c = flash.counters();
        assert_eq!((c.erases, c.programs), (0, 0), "flash touched before an image header checked out");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});
