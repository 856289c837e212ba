//! ElegantOTA's server under arbitrary requests in arbitrary pieces over several connections,
//! the update a start opened carried from one to the next as the device's service carries it,
//! with disconnects and time, writing a real (RAM) flash. Inputs may begin with a well-formed
//! start (with or without the credentials, with or without a hash) and upload head, so the body
//! reaches `Update`. Properties: no panic; every connection answers at most one HTTP/1.1
//! response; otadata changes only with a completed upload; with credentials set and never sent,
//! no flash operation happens; nothing outside the target slot and otadata is ever written.
#![no_main]

use device::{BASE, CSV};
use libfuzzer_sys::fuzz_target;
use ota_core::proto::elegant_ota::{Event, Opened, Output, Server, Site};
use ota_core::proto::web_form::settings::Credentials;
use ota_core::session::{Session, Target, UpdateSlot};
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;

mod device;

#[derive(Default)]
struct Out {
    sent: Vec<u8>,
    complete: bool,
    opened: Option<Option<Opened>>,
}

impl Output for Out {
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {}
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Complete(_) => self.complete = true,
            Event::Opened(o) => self.opened = Some(Some(o)),
            Event::OpenedTaken => self.opened = Some(None),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut ops)) = data.split_first() else { return };
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut flash = FileFlash::in_memory(BASE.clone());
    let credentials = Credentials::new("admin", "admin");
    let guarded = cfg & 1 != 0;
    let auth = if cfg & 8 != 0 { "Authorization: Basic YWRtaW46YWRtaW4=\r\n" } else { "" };
    let mut opened: Option<Opened> = None;
    let update = UpdateSlot::default();
    let target = Target {
        table: &table,
        running: *table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &update,
    };
    let mut complete = false;
    let mut now = 0u64;
    // The first connection may be a well-formed start, the second a well-formed upload head.
    let mut prefixes = Vec::new();
    if cfg & 4 != 0 {
        let hash = if cfg & 16 != 0 { "&hash=0123456789abcdef0123456789abcdef" } else { "" };
        prefixes.push(format!("GET /ota/start?mode=fr{hash} HTTP/1.1\r\n{auth}\r\n").into_bytes());
        prefixes.push(
            format!(
                "POST /ota/upload HTTP/1.1\r\n{auth}Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\n",
                ops.len() + 60
            )
            .into_bytes(),
        );
    }
    prefixes.reverse();
    let mut connections = 0;
    while connections < 8 && (!ops.is_empty() || !prefixes.is_empty()) {
        connections += 1;
        let site = Site {
            credentials: if guarded { credentials.as_ref() } else { None },
            slot_size: table.ota(1).unwrap().size,
            running_len: 4096,
            others_busy: cfg & 2 != 0,
            opened,
        };
        let prefix = prefixes.pop().unwrap_or_default();
        let mut session = Session::new(Server::new(now));
        let mut out = Out::default();
        session.with(&mut flash, &target, |server, sink| {
            server.feed(&prefix, now, &site, sink, &mut out);
            while let Some((&op, rest)) = ops.split_first() {
                ops = rest;
                match op % 8 {
                    0 => break,
                    1 => {
                        now += 1000 * (op as u64 >> 3);
                        server.poll(now, sink, &mut out);
                    }
                    _ => {
                        let n = ((op as usize >> 3) * 97 + 1).min(ops.len());
                        let (bytes, rest) = ops.split_at(n);
                        ops = rest;
                        server.feed(bytes, now, &site, sink, &mut out);
                    }
                }
                if server.is_closed() {
                    break;
                }
            }
            server.closed(sink, &mut out);
        });
        if let Some(o) = out.opened {
            opened = o;
        }
        complete |= out.complete;
        if !out.sent.is_empty() {
            assert_eq!(device::http_answers(&out.sent), 1, "one answer per connection");
        }
    }
    let after = flash.data();
    if !complete {
        assert_eq!(
            &after[0x9000..0xB000],
            &BASE[0x9000..0xB000],
            "otadata changed by an upload that did not complete"
        );
    }
    if guarded && cfg & 8 == 0 {
        let c = flash.counters();
        assert_eq!((c.erases, c.programs), (0, 0), "flash touched without the credentials");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});
