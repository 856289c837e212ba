//! Arbitrary byte streams, in arbitrary chunks, into the ESPHome OTA server writing a real
//! (RAM) flash. Properties: no panic; an update that did not complete leaves otadata exactly as
//! it was; a session that never authenticated performs no flash operation at all.
#![no_main]

use device::{BASE, CSV, Lcg};
use libfuzzer_sys::fuzz_target;
use ota_core::proto::esphome::{Event, NonceSource, Output, Server, ServerConfig};
use ota_core::update::FlashSink;
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;

mod device;

struct Rng(Lcg);
impl NonceSource for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }
}

#[derive(Default)]
struct Out {
    authenticated: bool,
}
impl Output for Out {
    fn send(&mut self, _bytes: &[u8]) {}
    fn event(&mut self, e: Event) {
        if let Event::AuthOk | Event::Begin { .. } = e {
            self.authenticated = true;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else { return };
    let Some((&chunking, stream)) = rest.split_first() else { return };
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut flash = FileFlash::in_memory(BASE.clone());
    let password: Option<&[u8]> = if cfg & 1 != 0 { Some(b"pw") } else { None };
    let mut server =
        Server::new(ServerConfig { password, version: 1 + (cfg >> 1 & 1), sha256: cfg & 4 != 0 });
    let mut pending = None;
    let mut out = Out::default();
    let mut rng = Rng(Lcg(cfg as u64));
    {
        let running = *table.ota(0).unwrap();
        let mut backend = FlashSink::new(&mut flash, &table, running, OtaConfig::default(), &mut pending);
        let step = 1 + chunking as usize;
        for piece in stream.chunks(step) {
            server.feed(piece, &mut backend, &mut rng, &mut out);
        }
        server.on_disconnect(cfg & 8 != 0, &mut backend, &mut out);
    }
    assert!(server.is_closed());
    let after = flash.data();
    if !server.reboot_requested() {
        assert_eq!(
            &after[0x9000..0xB000],
            &BASE[0x9000..0xB000],
            "otadata changed by an update that did not complete"
        );
    }
    if !out.authenticated {
        let c = flash.counters();
        assert_eq!((c.erases, c.programs), (0, 0), "flash touched before authentication");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});
