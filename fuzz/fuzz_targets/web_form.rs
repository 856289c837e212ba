//! The upload form's server under arbitrary requests in arbitrary pieces, with disconnects and
//! time, writing a real (RAM) flash. Half the inputs begin with a well-formed multipart POST
//! head (with or without the device's credentials), so the body reaches `Update`. Properties: no
//! panic; every answer is one HTTP/1.1 response; an upload that did not complete leaves otadata
//! exactly as it was; with credentials set and not sent, or a request that is not a multipart
//! POST to `/update`, no flash operation happens at all; nothing outside the target slot and
//! otadata is ever written.
#![no_main]

use device::{BASE, CSV};
use libfuzzer_sys::fuzz_target;
use ota_core::proto::web_form::settings::Credentials;
use ota_core::proto::web_form::{Event, Output, Server, Site};
use ota_core::session::{Session, Target, UpdateSlot};
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;

mod device;

#[derive(Default)]
struct Out {
    sent: Vec<u8>,
    began: bool,
    complete: bool,
}

impl Output for Out {
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {}
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Line(ota_core::proto::web_form::lines::WebLine::Upload { .. }) => self.began = true,
            Event::Complete(_) => self.complete = true,
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
    let site = Site {
        credentials: if guarded { credentials.as_ref() } else { None },
        project: "fuzz",
        version: "1.0.0",
        slot_size: table.ota(1).unwrap().size,
        others_busy: cfg & 2 != 0,
    };
    let mut prefix = Vec::new();
    if cfg & 4 != 0 {
        let auth = if cfg & 8 != 0 { "Authorization: Basic YWRtaW46YWRtaW4=\r\n" } else { "" };
        prefix.extend_from_slice(
            format!(
                "POST /update HTTP/1.1\r\n{auth}Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"f.bin\"\r\n\r\n",
                ops.len() + 60
            )
            .as_bytes(),
        );
    }
    let update = UpdateSlot::default();
    let target = Target {
        table: &table,
        running: *table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &update,
    };
    let mut session = Session::new(Server::new(0));
    let mut out = Out::default();
    let mut now = 0u64;
    session.with(&mut flash, &target, |server, sink| {
        server.feed(&prefix, now, &site, sink, &mut out);
        while let Some((&op, rest)) = ops.split_first() {
            ops = rest;
            match op % 8 {
                0 => server.closed(sink, &mut out),
                1 => {
                    now += 1000 * (op as u64 >> 3);
                    server.poll(now, sink, &mut out);
                }
                _ => {
                    let n = (op as usize >> 3) * 97 + 1;
                    let n = n.min(ops.len());
                    let (bytes, rest) = ops.split_at(n);
                    ops = rest;
                    server.feed(bytes, now, &site, sink, &mut out);
                }
            }
        }
        server.closed(sink, &mut out);
    });
    if !out.sent.is_empty() {
        assert_eq!(device::http_answers(&out.sent), 1, "one answer per connection");
    }
    let after = flash.data();
    if !out.complete {
        assert_eq!(
            &after[0x9000..0xB000],
            &BASE[0x9000..0xB000],
            "otadata changed by an upload that did not complete"
        );
    }
    if !out.began {
        let c = flash.counters();
        assert_eq!((c.erases, c.programs), (0, 0), "flash touched without an upload begun");
    }
    if (guarded && cfg & 8 == 0) || cfg & 2 != 0 {
        assert!(!out.began, "an upload began without credentials or while another update ran");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});
