//! The server against the device's own pull client (ota-core's `http_pull`, the one the
//! emulator and the chip run), over real loopback sockets, writing an in-memory flash: each
//! fault ends the way the spec says, and the request the device sent is on record.

use super::*;
use ota_core::proto::http_pull::{Client, Config, ConnectError, DeviceFacts, Endpoint, Event, Output};
use ota_core::session::{Session, Target};
use ota_core::writer::OtaConfig;
use ota_emu::flash::FileFlash;
use std::net::IpAddr;

const CSV: &str = "otadata, data, ota, , 0x2000\napp0, app, ota_0, , 0x70000\napp1, app, ota_1, , 0x70000\n";

fn app(version: &str, payload: u32) -> Vec<u8> {
    let mut spec = ota_core::image_builder::ImageSpec::new("otahil", version);
    spec.payload_len = payload;
    let mut v = vec![0; spec.image_len()];
    ota_core::image_builder::build(&spec, &mut v).unwrap();
    v
}

/// A 1 MiB flash running v1 from ota_0.
fn base() -> (ota_core::partition::PartitionTable, Vec<u8>) {
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut image = ota_emu::mkflash::merged_image(&table, &app("1.0.0", 1000), 1 << 20).unwrap();
    image[0x9000..0x9020]
        .copy_from_slice(&ota_core::otadata::OtaEntry::new(1, ota_core::otadata::OtaState::Valid).to_bytes());
    (table, image)
}

/// The device's side of the socket, as a thin adapter would be: connect, send, read, close,
/// and the clock, all handed to the sans-IO client.
#[derive(Default)]
struct Net {
    want: Option<(String, u16)>,
    stream: Option<TcpStream>,
    outbox: Vec<u8>,
    close: bool,
    events: Vec<String>,
}

impl Output for Net {
    fn connect(&mut self, to: Endpoint<'_>) {
        assert!(!to.tls, "these tests are plain HTTP");
        self.want = Some((to.host.to_string(), to.port));
    }
    fn send(&mut self, bytes: &[u8]) {
        self.outbox.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn event(&mut self, e: Event<'_>) {
        if !matches!(e, Event::Progress { .. }) {
            self.events.push(format!("{e:?}"));
        }
    }
}

/// Pulls `url` to the end (or `limit`), returning the events and the flash after.
fn pull(cfg: &Config<'_>, url: &str, limit: Duration) -> (Vec<String>, Vec<u8>, Vec<u8>) {
    let (table, image) = base();
    let mut flash = FileFlash::in_memory(image.clone());
    let events = pull_on(&table, &mut flash, cfg, url, 0, limit);
    (events, image, flash.data().to_vec())
}

/// Pulls `url` from byte `from` on into `flash`, returning the events.
fn pull_on(
    table: &ota_core::partition::PartitionTable,
    flash: &mut FileFlash,
    cfg: &Config<'_>,
    url: &str,
    from: u32,
    limit: Duration,
) -> Vec<String> {
    let mut session = Session::new(Client::default());
    let mut net = Net::default();
    let started = Instant::now();
    let now = || started.elapsed().as_millis() as u64;
    let update = ota_core::session::UpdateSlot::default();
    let target =
        Target { table, running: *table.ota(0).unwrap(), config: OtaConfig::default(), update: &update };
    session.with(flash, &target, |client, sink| {
        client.start_at(url, from, &mut net);
        let mut buf = [0u8; 4096];
        while client.is_busy() && started.elapsed() < limit {
            // A close asked for before a new connection (a redirect) applies to the old one.
            if net.close {
                net.close = false;
                net.stream = None;
            }
            if let Some((host, port)) = net.want.take() {
                net.stream = None;
                match TcpStream::connect((host.as_str(), port)) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                        net.stream = Some(s);
                        client.connected(cfg, now(), &mut net);
                    }
                    Err(_) => client.connect_failed(ConnectError::Refused, sink, &mut net),
                }
            }
            if let Some(s) = net.stream.as_mut()
                && !net.outbox.is_empty()
            {
                s.write_all(&net.outbox).unwrap();
                net.outbox.clear();
            }
            if net.close {
                continue;
            }
            let Some(s) = net.stream.as_mut() else {
                client.poll(cfg, now(), sink, &mut net);
                continue;
            };
            match s.read(&mut buf) {
                Ok(0) => {
                    net.stream = None;
                    client.closed(cfg, sink, &mut net);
                }
                Ok(n) => client.data(cfg, &buf[..n], now(), sink, &mut net),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    client.poll(cfg, now(), sink, &mut net)
                }
                Err(_) => {
                    // A reset: the read fails as `data read -1` does.
                    net.stream = None;
                    client.closed(cfg, sink, &mut net);
                }
            }
        }
    });
    net.events
}

fn image_route(bytes: &[u8], framing: Framing, fault: Fault) -> Route {
    Route {
        response: Response::Image {
            bytes: Arc::new(bytes.to_vec()),
            framing,
            md5: Md5Header::None,
            range: RangeSupport::Honour,
        },
        fault,
    }
}

fn server() -> FirmwareServer {
    FirmwareServer::start(IpAddr::from([127, 0, 0, 1])).unwrap()
}

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn the_device_pulls_v2_whatever_the_framing_and_its_request_is_recorded() {
    let s = server();
    let v2 = app("2.0.0", 60_000);
    let cfg = Config::esp_https_ota("1.0.0");
    for framing in [Framing::ContentLength, Framing::Chunked(1000), Framing::Close] {
        s.route("/v2.bin", image_route(&v2, framing, Fault::None));
        let (events, _, after) = pull(&cfg, &s.url("/v2.bin?fleet=a"), LIMIT);
        assert!(events.last().unwrap().starts_with("Complete(Switched { slot: 1"), "{framing:?}: {events:?}");
        assert_eq!(&after[0x80000..0x80000 + v2.len()], &v2[..]);
    }
    let r = &s.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str(), r.version.as_str()),
        ("GET", "/v2.bin?fleet=a", "HTTP/1.1")
    );
    assert_eq!(r.header("user-agent"), Some("ESP32 HTTP Client/1.0"));
    assert_eq!(r.header("Host"), Some(s.addr().to_string().as_str()));
}

#[test]
fn cut_reset_lying_and_stalled_bodies_never_switch_the_boot_slot() {
    let s = server();
    let v2 = app("2.0.0", 60_000);
    let mut cfg = Config::esp_https_ota("1.0.0");
    cfg.stall_limit_ms = 300;
    let cases = [
        (Fault::Truncate { at: 30_000 }, "Failed(Truncated { received: 30000 })"),
        (Fault::Reset { at: 30_000 }, "Failed(Truncated"),
        (Fault::WrongLength { claimed: v2.len() as u64 + 100 }, "Failed(Truncated"),
        (Fault::WrongLength { claimed: v2.len() as u64 - 100 }, "Failed(Ota(Validate("),
        (Fault::Stall { at: 20_000, for_: Duration::from_secs(3) }, "Failed(Stalled { received: 20000 })"),
    ];
    for (fault, want) in cases {
        s.route("/v2.bin", image_route(&v2, Framing::ContentLength, fault));
        let (events, before, after) = pull(&cfg, &s.url("/v2.bin"), LIMIT);
        assert!(events.last().unwrap().starts_with(want), "{fault:?}: {events:?}");
        assert_eq!(&after[0x9000..0xB000], &before[0x9000..0xB000], "{fault:?}: otadata changed");
        assert_eq!(&after[..0x80000], &before[..0x80000], "{fault:?}: outside the target slot");
    }
    // A slow drip within the stall limit completes.
    s.route(
        "/v2.bin",
        image_route(
            &v2,
            Framing::ContentLength,
            Fault::Drip { chunk: 8192, every: Duration::from_millis(20) },
        ),
    );
    let (events, _, _) = pull(&cfg, &s.url("/v2.bin"), LIMIT);
    assert!(events.last().unwrap().starts_with("Complete("), "{events:?}");
}

#[test]
fn statuses_redirects_and_their_loop() {
    let s = server();
    let v2 = app("2.0.0", 4000);
    let cfg = Config::esp_https_ota("1.0.0");
    s.route("/v2.bin", image_route(&v2, Framing::ContentLength, Fault::None));
    s.route(
        "/old",
        Route {
            response: Response::Redirect { status: 302, location: "/v2.bin".into() },
            fault: Fault::None,
        },
    );
    s.route(
        "/loop",
        Route { response: Response::Redirect { status: 301, location: "/loop".into() }, fault: Fault::None },
    );
    s.route("/broken", Route { response: Response::Status(500), fault: Fault::None });
    let (events, _, _) = pull(&cfg, &s.url("/old"), LIMIT);
    assert!(events.iter().any(|e| e.starts_with("Redirected { to: \"http://127.0.0.1:")), "{events:?}");
    assert!(events.last().unwrap().starts_with("Complete("));
    for (path, want) in [
        ("/loop", "Failed(TooManyRedirects)"),
        ("/broken", "Failed(Status(500))"),
        ("/missing", "Failed(Status(404))"),
    ] {
        let (events, before, after) = pull(&cfg, &s.url(path), LIMIT);
        assert_eq!(events.last().unwrap(), want);
        assert_eq!(after, before, "{path}: flash changed");
    }
    // 11 requests for the loop: the first and ten redirects.
    assert_eq!(s.requests().iter().filter(|r| r.target == "/loop").count(), 11);
}

#[test]
fn the_arduino_updater_304_x_md5_and_its_headers() {
    let s = server();
    let v2 = app("2.0.0", 20_000);
    let facts = DeviceFacts {
        sta_mac: [2, 7, 0x7a, 0xc3, 0, 1],
        ap_mac: [2, 7, 0x7a, 0xc3, 0, 2],
        free_space: 0x70000,
        sketch_size: 4096,
        sketch_md5: None,
        sketch_sha256: None,
        chip_size: 1 << 20,
        sdk_version: "v5.5.5",
        version: "1.0.0",
    };
    let cfg = Config::arduino(facts, "1.0.0");
    let with_md5 = |md5| Route {
        response: Response::Image {
            bytes: Arc::new(v2.clone()),
            framing: Framing::ContentLength,
            md5,
            range: RangeSupport::Honour,
        },
        fault: Fault::None,
    };
    s.route("/update", with_md5(Md5Header::Correct));
    let (events, _, _) = pull(&cfg, &s.url("/update"), LIMIT);
    assert!(events.last().unwrap().starts_with("Complete("), "{events:?}");
    s.route("/update", with_md5(Md5Header::Value("00000000000000000000000000000000".into())));
    let (events, before, after) = pull(&cfg, &s.url("/update"), LIMIT);
    assert_eq!(events.last().unwrap(), "Failed(Update(Md5))");
    assert_eq!(&after[0x9000..0xB000], &before[0x9000..0xB000]);
    s.route("/update", Route { response: Response::NotModified, fault: Fault::None });
    let (events, before, after) = pull(&cfg, &s.url("/update"), LIMIT);
    assert_eq!(events.last().unwrap(), "NoUpdate");
    assert_eq!(after, before);
    let r = s.requests().pop().unwrap();
    assert_eq!(r.version, "HTTP/1.0");
    assert_eq!(r.header("x-ESP32-STA-MAC"), Some("02:07:7A:C3:00:01"));
    assert_eq!(r.header("x-ESP32-version"), Some("1.0.0"));
    assert_eq!(r.header("x-ESP32-mode"), Some("sketch"));
}

/// The HTTPS listeners against the device's own TLS link (ota-core's `tls`), over loopback.
mod tls {
    use super::*;
    use crate::services::test_pki::{CertKind, TestPki};
    use ota_core::tls::{TlsLink, TlsState, Trust};

    /// The device's side: a TLS session over a real socket; returns the link when the server
    /// has closed (or the handshake failed) and the plaintext received.
    fn fetch(addr: SocketAddr, ca_der: &[u8], path: &str) -> (TlsState, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut link = TlsLink::start("127.0.0.1", Trust { ca_der, now_unix: None }, [9; 32]);
        let mut sent_request = false;
        let mut plaintext = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let out = link.take_outbound();
            stream.write_all(&out).unwrap();
            match link.state() {
                TlsState::Open if !sent_request => {
                    link.send(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
                    link.flush();
                    sent_request = true;
                    continue;
                }
                TlsState::Failed(_) | TlsState::Closed => break,
                _ => {}
            }
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                link.peer_closed();
            } else {
                link.received(&buf[..n]);
            }
            plaintext.extend(link.take_received());
        }
        plaintext.extend(link.take_received());
        (link.state(), plaintext)
    }

    fn ca_der(pki: &TestPki) -> Vec<u8> {
        let mut der = vec![0u8; ota_core::proto::mqtt_pull::settings::MAX_CA_DER];
        let n = ota_core::pem::decode_certificate(pki.ca_pem(), &mut der).unwrap();
        der.truncate(n);
        der
    }

    #[test]
    fn the_trusted_listener_serves_an_image_to_the_device_tls_link() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let pki = TestPki::new(&[loopback]).unwrap();
        let mut server = FirmwareServer::start(loopback).unwrap();
        let addr = server.listen_tls(loopback, pki.server_config(CertKind::Trusted)).unwrap();
        let v2 = app("2.0.0", 40_000);
        let bytes = Arc::new(v2.clone());
        server.route(
            "/v2.bin",
            Route {
                response: Response::Image {
                    bytes,
                    framing: Framing::ContentLength,
                    md5: Md5Header::None,
                    range: RangeSupport::Honour,
                },
                fault: Fault::None,
            },
        );
        let (state, got) = fetch(addr, &ca_der(&pki), "/v2.bin");
        assert_eq!(state, TlsState::Closed);
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(got.ends_with(&v2), "the whole body, decrypted");
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn a_truncated_body_over_tls_ends_without_close_notify() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let pki = TestPki::new(&[loopback]).unwrap();
        let mut server = FirmwareServer::start(loopback).unwrap();
        let addr = server.listen_tls(loopback, pki.server_config(CertKind::Trusted)).unwrap();
        let bytes = Arc::new(app("2.0.0", 40_000));
        server.route(
            "/cut.bin",
            Route {
                response: Response::Image {
                    bytes,
                    framing: Framing::ContentLength,
                    md5: Md5Header::None,
                    range: RangeSupport::Honour,
                },
                fault: Fault::Truncate { at: 10_000 },
            },
        );
        let (state, got) = fetch(addr, &ca_der(&pki), "/cut.bin");
        assert_eq!(state, TlsState::Closed);
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(got.len() - head_end, 10_000, "the body stops where the fault says");
    }

    #[test]
    fn the_fault_listeners_are_refused_by_the_device_before_any_request() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let pki = TestPki::new(&[loopback]).unwrap();
        let mut server = FirmwareServer::start(loopback).unwrap();
        for (kind, why) in [
            (CertKind::UntrustedCa, ota_core::proto::http_pull::TlsFailure::UnknownIssuer),
            (CertKind::WrongName, ota_core::proto::http_pull::TlsFailure::WrongName),
            (CertKind::Tls12Only, ota_core::proto::http_pull::TlsFailure::Handshake),
        ] {
            let addr = server.listen_tls(loopback, pki.server_config(kind)).unwrap();
            let (state, got) = fetch(addr, &ca_der(&pki), "/v2.bin");
            assert_eq!(state, TlsState::Failed(why), "{kind:?}");
            assert!(got.is_empty());
        }
        assert!(server.requests().is_empty());
    }
}

#[test]
fn a_download_cut_short_resumes_with_range_and_a_server_that_ignores_it_starts_again() {
    const NVS_CSV: &str = "nvs, data, nvs, , 0x3000\notadata, data, ota, , 0x2000\napp0, app, ota_0, , 0x70000\napp1, app, ota_1, , 0x70000\n";
    let table = ota_core::partition_csv::parse_csv(NVS_CSV).unwrap();
    let nvs = *table.nvs().unwrap();
    let slot = table.ota(1).unwrap().offset as usize;
    let fresh = || {
        let mut image = ota_emu::mkflash::merged_image(&table, &app("1.0.0", 1000), 1 << 20).unwrap();
        let od = table.otadata().unwrap().offset as usize;
        image[od..od + 32].copy_from_slice(
            &ota_core::otadata::OtaEntry::new(1, ota_core::otadata::OtaState::Valid).to_bytes(),
        );
        FileFlash::in_memory(image)
    };
    let s = server();
    let v2 = app("2.0.0", 60_000);
    let url = s.url("/v2.bin");
    let mut cfg = Config::esp_https_ota("1.0.0");
    cfg.resume = true;
    let mut record = [0u8; 400];

    for (range, want) in [
        (RangeSupport::Honour, "Resumed { at: "),
        (RangeSupport::Ignore, "RangeIgnored { status: 200 }"),
        (RangeSupport::Unsatisfiable, "RangeIgnored { status: 416 }"),
    ] {
        let mut flash = fresh();
        let before = flash.data().to_vec();
        s.route("/v2.bin", image_route(&v2, Framing::ContentLength, Fault::Truncate { at: 30_000 }));
        let events = pull_on(&table, &mut flash, &cfg, &url, 0, LIMIT);
        assert!(events.last().unwrap().starts_with("Failed(Truncated { received: 30000 })"), "{events:?}");
        // The record: this URL, a whole number of KiB no further than the bytes in the slot.
        let (recorded, at) = ota_core::resume::load(&mut flash, &nvs, &mut record).expect("a record");
        assert_eq!(recorded, url);
        assert!(at % 1024 == 0 && (4096..=30_000).contains(&at), "{at}");
        assert_eq!(&flash.data()[slot..slot + at as usize], &v2[..at as usize]);
        assert_eq!(flash.data()[..0x9000], before[..0x9000]);

        let mut route = image_route(&v2, Framing::ContentLength, Fault::None);
        if let Response::Image { range: r, .. } = &mut route.response {
            *r = range;
        }
        s.route("/v2.bin", route);
        let first_request = s.requests().len();
        let events = pull_on(&table, &mut flash, &cfg, &url, at, LIMIT);
        assert!(events.iter().any(|e| e.starts_with(want)), "{range:?}: {events:?}");
        assert!(events.last().unwrap().starts_with("Complete(Switched { slot: 1"), "{range:?}: {events:?}");
        assert_eq!(&flash.data()[slot..slot + v2.len()], &v2[..], "{range:?}");
        assert_eq!(ota_core::resume::load(&mut flash, &nvs, &mut record), None, "{range:?}: record kept");
        let requests = s.requests();
        let asked = format!("bytes={at}-");
        assert_eq!(requests[first_request].header("range"), Some(asked.as_str()), "{range:?}");
        if range == RangeSupport::Unsatisfiable {
            assert_eq!(requests.len(), first_request + 2, "{range:?}: one more request, without Range");
            assert_eq!(requests[first_request + 1].header("range"), None);
        }
        if range == RangeSupport::Honour {
            assert!(
                events
                    .iter()
                    .any(|e| e.starts_with(&format!("Resumed {{ at: {at}, size: Some({})", v2.len())))
            );
        }
    }
}

#[test]
fn an_image_that_fails_verification_leaves_no_record_to_resume() {
    const NVS_CSV: &str = "nvs, data, nvs, , 0x3000\notadata, data, ota, , 0x2000\napp0, app, ota_0, , 0x70000\napp1, app, ota_1, , 0x70000\n";
    let table = ota_core::partition_csv::parse_csv(NVS_CSV).unwrap();
    let nvs = *table.nvs().unwrap();
    let mut flash =
        FileFlash::in_memory(ota_emu::mkflash::merged_image(&table, &app("1.0.0", 1000), 1 << 20).unwrap());
    let s = server();
    let mut v2 = app("2.0.0", 60_000);
    let last = v2.len() - 1;
    v2[last] ^= 0xFF; // the SHA-256 no longer matches
    s.route("/v2.bin", image_route(&v2, Framing::ContentLength, Fault::None));
    let mut cfg = Config::esp_https_ota("1.0.0");
    cfg.resume = true;
    let events = pull_on(&table, &mut flash, &cfg, &s.url("/v2.bin"), 0, LIMIT);
    assert!(events.last().unwrap().starts_with("Failed(Ota(Validate("), "{events:?}");
    let mut record = [0u8; 400];
    assert_eq!(ota_core::resume::load(&mut flash, &nvs, &mut record), None);
}
