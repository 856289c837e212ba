//! Arbitrary byte streams, in arbitrary chunks, into the ESPHome OTA server writing a real
//! (RAM) flash. Properties: no panic; an update that did not complete leaves otadata exactly as
//! it was; a session that never authenticated performs no flash operation at all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_core::proto::esphome::{Event, NonceSource, Output, Server, ServerConfig};
use ota_core::update::FlashSink;
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;
use std::sync::LazyLock;

const CSV: &str = "otadata, data, ota, , 0x2000\napp0, app, ota_0, , 0x70000\napp1, app, ota_1, , 0x70000\n";

static BASE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut spec = ota_core::image_builder::ImageSpec::new("fuzz", "1.0.0");
    spec.payload_len = 1000;
    let mut app = vec![0; spec.image_len()];
    ota_core::image_builder::build(&spec, &mut app).unwrap();
    let mut image = ota_emu::mkflash::merged_image(&table, &app, 1 << 20).unwrap();
    image[0x9000..0x9020]
        .copy_from_slice(&ota_core::otadata::OtaEntry::new(1, ota_core::otadata::OtaState::Valid).to_bytes());
    image
});

struct Rng(u64);
impl NonceSource for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
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
    let mut rng = Rng(cfg as u64);
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
