//! ArduinoOTA exchanges driven datagram by datagram and byte by byte against a RAM flash, with
//! the spec's authentication vectors.

use super::*;
use crate::flash::ram::RamFlash;
use crate::image_builder::{ImageSpec, build};
use crate::otadata::{OtaEntry, OtaState};
use crate::partition::PartitionTable;
use crate::session::{Session, Target};
use crate::testutil::esphome_4mb_table;
use crate::update::FlashSink;
use crate::writer::OtaConfig;
use core::net::{Ipv4Addr, SocketAddr};
use std::string::String;
use std::vec;
use std::vec::Vec;

const HOST: SocketAddr = SocketAddr::new(core::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40000);

fn hex_of(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    crate::hex::encode_lower(bytes, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn classic_md5_vector_from_the_spec() {
    let (hash, n) = auth::password_hash(AuthScheme::Md5, b"admin");
    assert_eq!(&hash[..n], b"21232f297a57a5a743894a0e4a801fc3");
    let mut out = [0u8; 32];
    auth::response(
        AuthScheme::Md5,
        &hash[..n],
        b"25f9e794323b453885f5181f1b624d0b",
        b"bc8ddca6b35014e4ad9a8107fba90c72",
        &mut out,
    );
    assert_eq!(&out, b"0f5acfa9c5393efcd9cbce6c0030aad0");
}

#[test]
fn pbkdf2_vector_from_the_spec() {
    let (hash, n) = auth::password_hash(AuthScheme::Pbkdf2Sha256, b"admin");
    assert_eq!(&hash[..n], b"8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918");
    let mut out = [0u8; 64];
    auth::response(
        AuthScheme::Pbkdf2Sha256,
        &hash[..n],
        b"15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225",
        b"b3b901ab3165b9aa56cdfa7443945ca1ffb248c65e25e34cb0b62fdcca961983",
        &mut out,
    );
    assert_eq!(&out, b"8dafea36c5fbf7189c7d118e3e1c739758729b3cc82d222dc8811159996bda24");
}

#[test]
fn invitation_fields_and_what_is_refused() {
    let i = parse_invitation(b"0 45678 20480 ebcbf9b3a29550898de71befd6309314\n").unwrap();
    assert_eq!((i.command, i.port, i.size), (0, 45678, 20480));
    assert_eq!(hex_of(&i.md5), "ebcbf9b3a29550898de71befd6309314");
    // Upper-case hex, no newline, extra spaces: still taken.
    assert!(parse_invitation(b"  0  1 2 EBCBF9B3A29550898DE71BEFD6309314").is_ok());
    let md5 = "ebcbf9b3a29550898de71befd6309314";
    let cases: &[(&str, InvitationError)] = &[
        ("", InvitationError::NoCommand),
        ("hello", InvitationError::NoCommand),
        ("7 1 2 x", InvitationError::UnknownCommand(7)),
        ("200 1 2 x", InvitationError::UnknownCommand(200)),
        ("0 x 2", InvitationError::Port),
        ("0 0 2 x", InvitationError::Port),
        ("0 70000 2 x", InvitationError::Port),
        ("0 1 big", InvitationError::Size),
        ("0 1 99999999999 x", InvitationError::NumberTooLarge),
        ("0 1 5000000000 x", InvitationError::NumberTooLarge),
        ("0 1 2 abc\n", InvitationError::Md5Length(3)),
        ("0 1 2 ebcbf9b3a29550898de71befd630931g", InvitationError::Md5NotHex),
    ];
    for (text, want) in cases {
        assert_eq!(parse_invitation(text.as_bytes()), Err(*want), "{text:?}");
    }
    assert!(parse_invitation(std::format!("100 1 2 {md5}").as_bytes()).is_ok());
}

#[test]
fn auth_answer_fields() {
    let a =
        parse_auth(b"200 bc8ddca6b35014e4ad9a8107fba90c72 0f5acfa9c5393efcd9cbce6c0030aad0\n", 32).unwrap();
    assert_eq!(a.cnonce(), b"bc8ddca6b35014e4ad9a8107fba90c72");
    assert_eq!(a.response(), b"0f5acfa9c5393efcd9cbce6c0030aad0");
    assert_eq!(parse_auth(b"0 1 2 3", 32), Err(InvitationError::AuthCommand(0)));
    assert_eq!(
        parse_auth(b"200 abc def", 32),
        Err(InvitationError::AuthParams { cnonce: 3, response: 3, expected: 32 })
    );
}

#[derive(Default)]
struct Recorder {
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
    connect: Option<SocketAddr>,
    sent: Vec<u8>,
    closed: bool,
    events: Vec<Event>,
}

impl Output for Recorder {
    fn datagram(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.datagrams.push((to, bytes.to_vec()));
    }
    fn connect(&mut self, to: SocketAddr) {
        self.connect = Some(to);
    }
    fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.closed = true;
    }
    fn event(&mut self, e: Event) {
        self.events.push(e);
    }
}

struct Counter(u8);
impl NonceSource for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
}

fn image(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    build(&spec, &mut v).unwrap();
    v
}

/// A device running v1 from ota_0, its ArduinoOTA server, and the tools to talk to it.
struct Bench {
    update: crate::session::UpdateSlot,
    flash: RamFlash,
    table: PartitionTable,
    session: Session<Server>,
    rng: Counter,
    out: Recorder,
}

impl Bench {
    fn new(config: Config<'_>) -> Self {
        let table = esphome_4mb_table();
        let mut flash = RamFlash::new(4 << 20);
        let v1 = image("1.0.0", 100);
        flash.data[0x10000..0x10000 + v1.len()].copy_from_slice(&v1);
        flash.data[0x9000..0x9020].copy_from_slice(&OtaEntry::new(1, OtaState::Valid).to_bytes());
        Bench {
            update: Default::default(),
            flash,
            table,
            session: Session::new(Server::new(config)),
            rng: Counter(0),
            out: Recorder::default(),
        }
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(&mut Server, &mut FlashSink<'_, RamFlash>, &mut Counter, &mut Recorder) -> R,
    ) -> R {
        let target = Target {
            table: &self.table,
            running: *self.table.ota(0).unwrap(),
            config: OtaConfig::default(),
            update: &self.update,
        };
        let (rng, out) = (&mut self.rng, &mut self.out);
        self.session.with(&mut self.flash, &target, |server, sink| f(server, sink, rng, out))
    }

    fn datagram(&mut self, text: &[u8]) {
        self.with(|s, sink, rng, out| s.datagram(HOST, text, false, sink, rng, out));
    }

    fn data(&mut self, bytes: &[u8], now: u64) {
        self.with(|s, sink, _, out| s.data(bytes, now, sink, out));
    }

    fn last_datagram(&self) -> &[u8] {
        &self.out.datagrams.last().expect("a datagram").1
    }

    fn otadata(&self) -> Vec<u8> {
        self.flash.data[0x9000..0xB000].to_vec()
    }
}

fn invitation(img: &[u8], port: u16) -> Vec<u8> {
    let d: [u8; 16] = Md5::digest(img).into();
    std::format!("0 {port} {} {}\n", img.len(), hex_of(&d)).into_bytes()
}

/// What an uploader answers to `AUTH <nonce>`, computed here independently of `auth`.
fn answer(scheme: AuthScheme, password: &str, nonce: &[u8]) -> Vec<u8> {
    use sha2::Sha256;
    let cnonce = match scheme {
        AuthScheme::Md5 => hex_of(&Md5::digest(b"firmware.bin-cnonce")),
        AuthScheme::Pbkdf2Sha256 => hex_of(&Sha256::digest(b"firmware.bin-cnonce")),
    };
    let nonce = core::str::from_utf8(nonce).unwrap();
    let response = match scheme {
        AuthScheme::Md5 => {
            let pass = hex_of(&Md5::digest(password.as_bytes()));
            hex_of(&Md5::digest(std::format!("{pass}:{nonce}:{cnonce}").as_bytes()))
        }
        AuthScheme::Pbkdf2Sha256 => {
            let pass = hex_of(&Sha256::digest(password.as_bytes()));
            let mut key = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(
                pass.as_bytes(),
                std::format!("{nonce}:{cnonce}").as_bytes(),
                10_000,
                &mut key,
            );
            hex_of(&Sha256::digest(std::format!("{}:{nonce}:{cnonce}", hex_of(&key)).as_bytes()))
        }
    };
    std::format!("200 {cnonce} {response}\n").into_bytes()
}

/// Runs a whole upload of `img` in 1024-byte pieces (as the ESP32 espota sends).
fn upload(b: &mut Bench, img: &[u8]) {
    assert_eq!(b.out.connect, Some(SocketAddr::new(HOST.ip(), 45678)));
    b.session.server.connected(0);
    for (i, piece) in img.chunks(1024).enumerate() {
        b.data(piece, i as u64);
    }
}

fn assert_switched_to_ota_1(b: &Bench) {
    assert!(b.session.server.reboot_requested());
    assert!(b.out.closed);
    assert!(b.out.sent.ends_with(b"OK"), "{:?}", String::from_utf8_lossy(&b.out.sent));
    let complete = b.out.events.iter().find_map(|e| match e {
        Event::Complete(s) => Some(*s),
        _ => None,
    });
    assert_eq!(complete.map(|s| (s.slot, s.seq)), Some((1, 2)));
}

#[test]
fn upload_without_a_password() {
    let img = image("2.0.0", 20_000);
    let mut b = Bench::new(Config::default());
    b.datagram(&invitation(&img, 45678));
    assert_eq!(b.out.datagrams, vec![(HOST, b"OK".to_vec())]);
    upload(&mut b, &img);
    assert_switched_to_ota_1(&b);
    // One decimal count per write of at most 1024 bytes here, then OK.
    let text = String::from_utf8(b.out.sent.clone()).unwrap();
    let expected: String = img.chunks(1024).map(|c| std::format!("{}", c.len())).collect::<String>() + "OK";
    assert_eq!(text, expected);
    let at = b.table.ota(1).unwrap().offset as usize;
    assert!(b.flash.data[at..at + img.len()] == img[..], "the image is in ota_1");
}

#[test]
fn upload_with_each_auth_scheme_and_a_wrong_password() {
    for scheme in [AuthScheme::Md5, AuthScheme::Pbkdf2Sha256] {
        let img = image("2.0.0", 5000);
        let mut b = Bench::new(Config { password: Some(b"admin"), auth: scheme });
        b.datagram(&invitation(&img, 45678));
        let reply = b.last_datagram().to_vec();
        assert!(reply.starts_with(b"AUTH "), "{reply:?}");
        assert_eq!(reply.len(), 5 + scheme.hex_len());
        b.datagram(&answer(scheme, "admin", &reply[5..]));
        assert_eq!(b.last_datagram(), b"OK");
        upload(&mut b, &img);
        assert_switched_to_ota_1(&b);

        let mut b = Bench::new(Config { password: Some(b"admin"), auth: scheme });
        let before = b.otadata();
        b.datagram(&invitation(&img, 45678));
        let nonce = b.last_datagram()[5..].to_vec();
        b.datagram(&answer(scheme, "wrong", &nonce));
        assert_eq!(b.last_datagram(), b"Authentication Failed");
        assert!(b.out.events.contains(&Event::AuthFailed));
        assert_eq!(b.out.connect, None);
        assert!(b.flash.ops.is_empty(), "no flash operation for a refused upload");
        assert_eq!(b.otadata(), before);
        // The device is idle again: a new invitation gets a fresh challenge.
        b.datagram(&invitation(&img, 45678));
        assert!(b.last_datagram().starts_with(b"AUTH "));
        assert_ne!(&b.last_datagram()[5..], &nonce[..]);
    }
}

#[test]
fn an_answer_of_the_wrong_shape_ends_the_exchange_without_a_word() {
    let img = image("2.0.0", 100);
    let mut b = Bench::new(Config { password: Some(b"admin"), auth: AuthScheme::Pbkdf2Sha256 });
    b.datagram(&invitation(&img, 45678));
    // A classic-length answer to a 64-character challenge.
    b.datagram(b"200 bc8ddca6b35014e4ad9a8107fba90c72 0f5acfa9c5393efcd9cbce6c0030aad0\n");
    assert_eq!(b.out.datagrams.len(), 1, "only the AUTH challenge was sent");
    assert!(matches!(b.out.events.last(), Some(Event::AuthMalformed(InvitationError::AuthParams { .. }))));
    b.datagram(&invitation(&img, 45678));
    b.datagram(b"0 1 2 3\n");
    assert_eq!(b.out.events.last(), Some(&Event::AuthUnexpectedCommand(0)));
    assert!(b.flash.ops.is_empty());
}

#[test]
fn an_md5_mismatch_never_switches_the_boot_slot() {
    let img = image("2.0.0", 5000);
    let mut b = Bench::new(Config::default());
    let before = b.otadata();
    let mut inv = invitation(&img, 45678);
    let at = inv.len() - 2;
    inv[at] = if inv[at] == b'0' { b'1' } else { b'0' };
    b.datagram(&inv);
    upload(&mut b, &img);
    assert!(b.out.sent.ends_with(b"MD5 Check Failed\r\n"));
    assert!(b.out.closed && !b.session.server.reboot_requested());
    assert!(b.out.events.contains(&Event::EndFailed { error: UpdateError::Md5, cause: None }));
    assert_eq!(b.otadata(), before);
    // The Update library withheld the head: the slot holds no valid header.
    let at = b.table.ota(1).unwrap().offset as usize;
    assert_eq!(&b.flash.data[at..at + 16], &[0xFF; 16]);
    assert_eq!(&b.flash.data[at + 16..at + img.len()], &img[16..]);
}

#[test]
fn an_oversized_image_is_refused_before_any_erase() {
    let mut b = Bench::new(Config::default());
    b.datagram(b"0 45678 2000000 ebcbf9b3a29550898de71befd6309314\n");
    // ESP32: OK first, then `Update.begin` fails and no back-connection comes.
    assert_eq!(b.last_datagram(), b"OK");
    assert_eq!(b.out.connect, None);
    assert!(matches!(
        b.out.events.last(),
        Some(Event::BeginFailed { error: UpdateError::Size, cause: Some(OtaError::InvalidSize { .. }) })
    ));
    assert!(b.flash.ops.is_empty(), "no erase or program: {:?}", b.flash.ops);
    assert!(!b.session.server.is_busy());
}

#[test]
fn a_wrong_first_byte_is_the_update_librarys_magic_error() {
    let mut img = image("2.0.0", 5000);
    img[0] = 0x00;
    let mut b = Bench::new(Config::default());
    b.datagram(&invitation(&img, 45678));
    upload(&mut b, &img);
    assert_eq!(b.out.sent, b"Wrong Magic Byte\r\n");
    assert!(matches!(b.out.events.last(), Some(Event::WriteFailed { error: UpdateError::MagicByte, .. })));
}

#[test]
fn a_closed_connection_and_a_silent_uploader_abort_the_update() {
    let img = image("2.0.0", 20_000);
    let mut b = Bench::new(Config::default());
    let before = b.otadata();
    b.datagram(&invitation(&img, 45678));
    b.session.server.connected(0);
    b.data(&img[..3000], 10);
    b.with(|s, sink, _, out| s.closed(sink, out));
    assert_eq!(b.out.events.last(), Some(&Event::ConnectionLost { received: 3000, size: img.len() as u32 }));
    assert!(!b.session.server.is_busy());
    assert_eq!(b.otadata(), before);

    // Silence: the last count goes out again three times, a second apart, then Receive Failed.
    let mut b = Bench::new(Config::default());
    b.datagram(&invitation(&img, 45678));
    b.session.server.connected(0);
    b.data(&img[..1000], 0);
    b.out.sent.clear();
    for t in [999, 1000, 1500, 2000, 3000] {
        b.with(|s, sink, _, out| s.poll(t, sink, out));
    }
    assert_eq!(b.out.sent, b"100010001000");
    assert_eq!(b.session.server.deadline(), Some(4000));
    b.with(|s, sink, _, out| s.poll(4000, sink, out));
    assert!(b.out.closed);
    assert_eq!(b.out.events.last(), Some(&Event::ReceiveFailed { received: 1000, size: img.len() as u32 }));
    // Nothing ever arrived: no retries, Receive Failed after one second.
    let mut b = Bench::new(Config::default());
    b.datagram(&invitation(&img, 45678));
    b.session.server.connected(0);
    b.with(|s, sink, _, out| s.poll(1000, sink, out));
    assert!(matches!(b.out.events.last(), Some(Event::ReceiveFailed { received: 0, .. })));
    assert!(b.out.sent.is_empty());
}

#[test]
fn a_second_invitation_during_a_transfer_is_ignored_and_the_transfer_completes() {
    let img = image("2.0.0", 20_000);
    let mut b = Bench::new(Config::default());
    b.datagram(&invitation(&img, 45678));
    b.session.server.connected(0);
    b.data(&img[..5000], 0);
    b.datagram(&invitation(&img, 50000));
    assert_eq!(b.out.events.last(), Some(&Event::Busy));
    assert_eq!(b.out.datagrams.len(), 1, "no answer to the second invitation");
    b.data(&img[5000..], 1);
    assert_switched_to_ota_1(&b);
    // Another update path writing: the invitation is refused the same way.
    let mut b = Bench::new(Config::default());
    b.with(|s, sink, rng, out| s.datagram(HOST, &invitation(&img, 45678), true, sink, rng, out));
    assert_eq!(b.out.events, vec![Event::Busy]);
    assert!(b.out.datagrams.is_empty());
}

#[test]
fn a_failed_back_connection_drops_the_update() {
    let img = image("2.0.0", 5000);
    let mut b = Bench::new(Config::default());
    b.datagram(&invitation(&img, 45678));
    b.with(|s, sink, _, out| s.connect_failed(sink, out));
    assert_eq!(b.out.events.last(), Some(&Event::ConnectFailed));
    assert!(!b.session.server.is_busy());
    assert!(b.flash.ops.is_empty(), "no erase or program: {:?}", b.flash.ops);
}

#[test]
fn counts_are_decimal_and_progress_lines_come_by_quarter() {
    let mut buf = [0u8; 10];
    assert_eq!(decimal(0, &mut buf), b"0");
    assert_eq!(decimal(1460, &mut buf), b"1460");
    assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    let mut lines: Vec<u8> = Vec::new();
    for k in 1..=100u32 {
        Event::Progress { written: 1460, received: k * 1460, size: 146_000 }.log(&mut |e: &LogEvent<'_>| {
            match e {
                LogEvent::OtaProgress { percent } => lines.push(*percent),
                _ => unreachable!(),
            }
        });
    }
    assert_eq!(lines, vec![25, 50, 75]);
    for e in UpdateError::ALL {
        assert_eq!(UpdateError::from_reply(&std::format!("{}\r\n", e.text())), Some(e));
        assert_eq!(UpdateError::by_name(e.name()), Some(e));
    }
}

#[test]
fn arduino_settings_from_nvs_or_built_in() {
    let built_in = settings::ArduinoSettings::built_in(None, AuthScheme::Md5);
    let page = crate::provision::provisioning_page(
        &crate::testutil::BASE_SETTINGS,
        &[&settings::Provision { password: Some("admin"), auth: AuthScheme::Pbkdf2Sha256 }],
    )
    .unwrap();
    let (mut flash, table) = crate::testutil::provisioned_flash(Some(&page));
    let s = built_in.load(&mut flash, &table, &mut |_: &crate::log::LogEvent<'_>| {});
    assert_eq!((s.password(), s.auth), (Some(&b"admin"[..]), AuthScheme::Pbkdf2Sha256));
    assert_eq!((s.password.from, s.auth_from), (crate::settings::Source::Nvs, crate::settings::Source::Nvs));
    assert_eq!(
        std::format!("{}", s.log_line(3232)),
        "ArduinoOTA on UDP port 3232: password set (nvs), auth pbkdf2 (nvs)"
    );
    // Provisioned without a password: none, whatever was built in.
    let page = crate::provision::provisioning_page(
        &crate::testutil::BASE_SETTINGS,
        &[&settings::Provision { password: None, auth: AuthScheme::Md5 }],
    )
    .unwrap();
    let (mut flash, table) = crate::testutil::provisioned_flash(Some(&page));
    let s = settings::ArduinoSettings::built_in(Some(b"x"), AuthScheme::Md5).load(
        &mut flash,
        &table,
        &mut |_: &crate::log::LogEvent<'_>| {},
    );
    assert_eq!(s.password(), None);
    // Nothing provisioned for ArduinoOTA: the built-in values, and the ESPHome page unchanged.
    let page = crate::provision::provisioning_page(&crate::testutil::BASE_SETTINGS, &[]).unwrap();
    let (mut flash, table) = crate::testutil::provisioned_flash(Some(&page));
    let s = settings::ArduinoSettings::built_in(Some(b"x"), AuthScheme::Md5).load(
        &mut flash,
        &table,
        &mut |_: &crate::log::LogEvent<'_>| {},
    );
    assert_eq!((s.password(), s.password.from), (Some(&b"x"[..]), crate::settings::Source::BuiltIn));
    // An auth value the device does not know is logged and ignored.
    let mut b = crate::nvs::PageBuilder::new(0);
    let ns = b.namespace(crate::settings::NAMESPACE).unwrap();
    b.u8(ns, settings::KEY_ARDUINO_AUTH, 9).unwrap();
    let (mut flash, table) = crate::testutil::provisioned_flash(Some(&b.finish()));
    let mut lines = std::vec::Vec::new();
    let s = built_in
        .load(&mut flash, &table, &mut |e: &crate::log::LogEvent<'_>| lines.push(std::format!("{e}")));
    assert_eq!(s.auth, AuthScheme::Md5);
    assert_eq!(lines, ["ignoring nvs otahil/arduino_auth: auth scheme 9 is not 1 (md5) or 2 (pbkdf2)"]);
}
