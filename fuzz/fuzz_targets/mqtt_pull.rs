//! The pull agent (MQTT trigger, HTTP pull, status) under arbitrary broker and server bytes,
//! connection events and time, writing a real (RAM) flash through the session type the emulator
//! and the chip use. Properties: no panic; otadata changes only with a completed pull; only the
//! update slot and otadata are ever written; every status the device publishes is one of ours.
//! With flag bit 2 the device has a CA, and https triggers run the TLS engine on the server bytes.
#![no_main]

use device::{BASE, CSV};
use libfuzzer_sys::fuzz_target;
use ota_core::log::LogEvent;
use ota_core::proto::http_pull::{ConnectError, Endpoint};
use ota_core::proto::mqtt_pull::settings::{MqttSettings, parse_broker};
use ota_core::proto::mqtt_pull::{Agent, Link, Output, RunningFacts, Settings};
use ota_core::session::{Session, Target};
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;

mod device;

/// Stands for a provisioned CA: a DER SEQUENCE (its contents matter only once a certificate
/// arrives, which random bytes never get to with a valid signature).
const FUZZ_CA: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x00];

#[derive(Default)]
struct Out {
    to_broker: Vec<u8>,
}

impl Output for Out {
    fn connect_broker(&mut self, _to: core::net::SocketAddr) {}
    fn connect_server(&mut self, _to: Endpoint<'_>) {}
    fn send(&mut self, link: Link, bytes: &[u8]) {
        if link == Link::Broker {
            self.to_broker.extend_from_slice(bytes);
        }
    }
    fn close(&mut self, _link: Link) {}
    fn log(&mut self, line: &LogEvent<'_>) {
        // Every line renders (the catalogue's formatting must not panic on any value).
        let _ = line.to_string();
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

/// The device's PUBLISH packets on the state topic carry our status JSON.
fn check_statuses(bytes: &[u8]) {
    let mut rest = bytes;
    while let Some(&first) = rest.first() {
        let (mut len, mut used) = (0usize, 1);
        for i in 0..4 {
            let b = rest[1 + i];
            len |= ((b & 0x7F) as usize) << (7 * i);
            used += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let body = &rest[used..used + len];
        if first >> 4 == 3 {
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let qos = (first >> 1) & 3;
            let payload = &body[2 + topic_len + if qos > 0 { 2 } else { 0 }..];
            let text = core::str::from_utf8(payload).expect("a status is UTF-8");
            assert!(text.starts_with("{\"state\":\"") && text.ends_with('}'), "not our status: {text}");
        }
        rest = &rest[used + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut ops)) = data.split_first() else { return };
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut flash = FileFlash::in_memory(BASE.clone());
    let version_check = match flags & 3 {
        0 => ota_core::proto::http_pull::VersionCheck::None,
        1 => ota_core::proto::http_pull::VersionCheck::SkipSame,
        _ => ota_core::proto::http_pull::VersionCheck::RefuseDowngrade,
    };
    let mut nvs = MqttSettings {
        broker: parse_broker("10.0.2.2:1883"),
        version_check,
        resume: flags & 8 != 0,
        ..MqttSettings::default()
    };
    if flags & 4 != 0 {
        // A CA, so that an https trigger's handshake runs and the server's bytes reach the TLS
        // engine (random bytes never get past the server's signature; everything before it is
        // parsed, and must not panic).
        nvs.ca[..FUZZ_CA.len()].copy_from_slice(FUZZ_CA);
        nvs.ca_len = FUZZ_CA.len();
    }
    let facts = RunningFacts {
        mac: [2, 7, 0x7a, 0xc3, 0, 1],
        free_space: 0x70000,
        sketch_size: 1000,
        sketch_md5: [0; 16],
        sketch_sha256: [0; 32],
        chip_size: 1 << 20,
    };
    let settings = Settings::from_nvs(&nvs, "otahil_c30001", "1.0.0", &facts).expect("a broker");
    let update = ota_core::session::UpdateSlot::default();
    let target = Target {
        table: &table,
        running: *table.ota(0).unwrap(),
        config: OtaConfig::default(),
        update: &update,
    };
    let mut session = Session::new(Agent::default());
    let mut out = Out::default();
    let mut now = 0u64;
    session.with(&mut flash, &target, |agent, sink| {
        agent.start(&settings, &mut out);
        while let Some((&op, rest)) = ops.split_first() {
            ops = rest;
            match op % 8 {
                0 => agent.broker_connected(&settings, now, &mut out),
                1 | 4 => {
                    let len = take(&mut ops, 2);
                    let n = len.iter().fold(0usize, |v, b| v << 8 | *b as usize);
                    let bytes = take(&mut ops, n);
                    if op % 8 == 1 {
                        agent.broker_data(&settings, bytes, now, op & 0x80 != 0, sink, &mut out);
                    } else {
                        agent.server_data(&settings, bytes, now, sink, &mut out);
                    }
                }
                2 => agent.broker_closed(now, &mut out),
                3 => agent.server_connected(&settings, now, sink, &mut out),
                5 => agent.server_closed(&settings, now, sink, &mut out),
                6 => agent.server_connect_failed(&settings, ConnectError::Refused, now, sink, &mut out),
                _ => {
                    now += 100 * (op >> 3) as u64;
                    agent.poll(&settings, now, sink, &mut out);
                }
            }
        }
    });
    check_statuses(&out.to_broker);
    let after = flash.data();
    if !session.server.reboot_requested() {
        assert_eq!(&after[0x9000..0xB000], &BASE[0x9000..0xB000], "otadata changed without a completed pull");
    }
    assert_eq!(&after[..0x9000], &BASE[..0x9000], "bootloader/table area touched");
    assert_eq!(&after[0x10000..0x80000], &BASE[0x10000..0x80000], "the running slot was touched");
});
