//! ArduinoOTA's device side under arbitrary datagrams, back-connection events, bytes and time,
//! writing a real (RAM) flash. Properties: no panic; the invitation and auth parsers accept only
//! well-formed fields; an update that did not complete leaves otadata exactly as it was; with a
//! password set (which the fuzzer cannot answer) no flash operation happens at all; nothing
//! outside the target slot and otadata is ever written.
#![no_main]

use core::net::SocketAddr;
use device::{BASE, CSV, Lcg};
use libfuzzer_sys::fuzz_target;
use ota_core::proto::arduino::{
    AuthScheme, Config, Event, NonceSource, Output, Server, parse_auth, parse_invitation,
};
use ota_core::session::{Session, Target};
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
    begun: bool,
    complete: bool,
}
impl Output for Out {
    fn datagram(&mut self, _to: SocketAddr, _bytes: &[u8]) {}
    fn connect(&mut self, _to: SocketAddr) {}
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, e: Event) {
        match e {
            Event::Begin { .. } => self.begun = true,
            Event::Complete(_) => self.complete = true,
            _ => {}
        }
    }
}

/// Takes `n` bytes (fewer at the end of the input).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut ops)) = data.split_first() else { return };
    // The parsers on their own: whatever they accept is well formed.
    if let Ok(i) = parse_invitation(ops) {
        assert!(i.port != 0 && (i.command == 0 || i.command == 100));
    }
    if let Ok(a) = parse_auth(ops, 32) {
        assert_eq!((a.cnonce().len(), a.response().len()), (32, 32));
    }
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut flash = FileFlash::in_memory(BASE.clone());
    let password: Option<&[u8]> = if cfg & 1 != 0 { Some(b"pw") } else { None };
    let auth = if cfg & 2 != 0 { AuthScheme::Pbkdf2Sha256 } else { AuthScheme::Md5 };
    let mut session = Session::new(Server::new(Config { password, auth }));
    let mut out = Out::default();
    let mut rng = Rng(Lcg(cfg as u64));
    let host: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut now = 0u64;
    let update = ota_core::session::UpdateSlot::default();
    let target = Target {
        table: &table,
        running: *table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &update,
    };
    session.with(&mut flash, &target, |server, sink| {
        while let Some((&op, rest)) = ops.split_first() {
            ops = rest;
            match op % 6 {
                0 => {
                    let n = take(&mut ops, 1).first().copied().unwrap_or(0) as usize;
                    let datagram = take(&mut ops, n);
                    server.datagram(host, datagram, op & 0x80 != 0, sink, &mut rng, &mut out);
                }
                1 => server.connected(now),
                2 => server.connect_failed(sink, &mut out),
                3 => {
                    let len = take(&mut ops, 2);
                    let n = len.iter().fold(0usize, |v, b| v << 8 | *b as usize);
                    let bytes = take(&mut ops, n);
                    server.data(bytes, now, sink, &mut out);
                }
                4 => server.closed(sink, &mut out),
                _ => {
                    now += 100 * op as u64;
                    server.poll(now, sink, &mut out);
                }
            }
        }
        server.closed(sink, &mut out);
    });
    let after = flash.data();
    if !out.complete {
        assert_eq!(
            &after[0x9000..0xB000],
            &BASE[0x9000..0xB000],
            "otadata changed by an update that did not complete"
        );
    }
    if password.is_some() || !out.begun {
        let c = flash.counters();
        assert_eq!((c.erases, c.programs), (0, 0), "flash touched without an accepted invitation");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});
