//! The emulator against peers that misbehave: a broker that stops reading, a broker that never
//! answers the handshake, clients that crowd the ESPHome port, and no peer at all. Each stalls
//! at most its own link, as on the chip, and an idle device sleeps. Network on loopback only;
//! every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{Emulator, PREFIX};

/// The emulator, powered on and serving, and where its ESPHome port is.
fn start(flash: &Path) -> (Emulator, SocketAddr) {
    let emu = Emulator::start(flash, &[]);
    let ready = emu.expect("ready tcp:3232=");
    let listen = ready.split_whitespace().find_map(|w| w.strip_prefix("tcp:3232=")).unwrap();
    let listen = listen.parse().unwrap();
    emu.expect("ota: listening on port");
    (emu, listen)
}

/// How long the control channel takes to answer `status`.
fn status_round_trip(emu: &mut Emulator) -> Option<Duration> {
    let asked = Instant::now();
    emu.command("status");
    emu.wait_for(&format!("{PREFIX}ok status"), Duration::from_secs(5)).map(|_| asked.elapsed())
}

/// A 4 MiB flash in `dir` with v1 in ota_0 and, when given, the pull path's broker provisioned.
fn board(dir: &Path, broker: Option<SocketAddr>) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let csv = std::fs::read_to_string(root.join("fixtures/partitions/esphome-4mb.csv")).unwrap();
    let table = ota_core::partition_csv::parse_csv(&csv).unwrap();
    let app = std::fs::read(root.join("fixtures/firmware/v1.bin")).unwrap();
    let mut image = ota_emu::mkflash::merged_image(&table, &app, 4 << 20).unwrap();
    let broker = broker.map(|b| b.to_string());
    let settings =
        ota_core::provision::Provision { protocol: 2, ..ota_core::provision::Provision::default() };
    let pull = broker.as_deref().map(|broker| ota_core::proto::mqtt_pull::settings::Provision {
        broker,
        ..ota_core::proto::mqtt_pull::settings::Provision::default()
    });
    let paths: Vec<&dyn ota_core::provision::PathProvision> =
        pull.iter().map(|p| p as &dyn ota_core::provision::PathProvision).collect();
    ota_emu::mkflash::provision_settings(&mut image, &table, &settings, &paths).unwrap();
    let flash = dir.join("flash.bin");
    std::fs::write(&flash, image).unwrap();
    flash
}

fn read_packet(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert!(head[1] < 128, "short packets only");
    let mut body = vec![0u8; head[1] as usize];
    s.read_exact(&mut body).unwrap();
    [&head[..], &body].concat()
}

/// A QoS 1 PUBLISH on a topic the device does not act on: it answers each with a PUBACK.
fn publish_qos1(id: u16) -> Vec<u8> {
    let topic = b"noise";
    let payload = b"x";
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(payload);
    [&[0x32, body.len() as u8][..], &body].concat()
}

/// Defect 1: a broker that floods the device and stops reading (so the device's PUBACKs back
/// up) must cost the device only that link: its control channel answers at once, and after
/// esp-mqtt's network timeout the link is dropped.
#[test]
fn a_broker_that_stops_reading_stalls_only_its_link() {
    let broker = TcpListener::bind("127.0.0.1:0").unwrap();
    // A small receive buffer, so the device's answers back up within a few hundred kilobytes.
    socket2::SockRef::from(&broker).set_recv_buffer_size(4096).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut emu, _) = start(&board(dir.path(), Some(broker.local_addr().unwrap())));
    let (mut conn, _) = broker.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_packet(&mut conn)[0], 0x10, "CONNECT");
    conn.write_all(&[0x20, 2, 0, 0]).unwrap();
    let subscribe = read_packet(&mut conn);
    assert_eq!(subscribe[0], 0x82, "SUBSCRIBE");
    conn.write_all(&[0x90, 3, subscribe[2], subscribe[3], 1]).unwrap();
    emu.expect("mqtt: connected, subscribed");
    // From here on nothing is read: a writer floods QoS 1 messages for 8 s at most.
    let mut flood = conn.try_clone().unwrap();
    flood.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let flooding = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(8);
        let batch: Vec<u8> = (1..=2000u16).flat_map(publish_qos1).collect();
        while Instant::now() < until {
            if flood.write_all(&batch).is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        let answered = status_round_trip(&mut emu);
        assert!(
            answered.is_some_and(|t| t < Duration::from_secs(1)),
            "the control channel waited {answered:?} behind a broker that does not read"
        );
    }
    flooding.join().unwrap();
    // esp-mqtt's MQTT_NETWORK_TIMEOUT_MS: the stalled link is given up, and the device tries again.
    emu.wait_for("mqtt: connection lost", Duration::from_secs(15)).expect("the stalled link is given up");
    drop(conn);
}

/// Defect 3: a broker whose port never completes the handshake (its accept queue is full, so
/// its SYNs go unanswered) must not hold the device while it tries to connect.
#[test]
fn a_connect_that_hangs_does_not_hold_the_device() {
    // backlog 0: the kernel's queue takes one connection; two fill it, and the next SYN waits.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<socket2::Socket> = (0..4)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let (mut emu, _) = start(&board(dir.path(), Some(addr)));
    // The device is connecting now (its first attempt right after boot).
    for _ in 0..5 {
        let answered = status_round_trip(&mut emu);
        assert!(
            answered.is_some_and(|t| t < Duration::from_secs(1)),
            "the control channel waited {answered:?} behind a connect (3 s before)"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(fillers);
}

/// Defect 4: the ESPHome port's backlog is the chip's (1): while a client holds the session,
/// one more may wait and the others are reset at once, rather than waiting silently.
#[test]
fn the_esphome_port_keeps_one_waiting_client_and_resets_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (_emu, listen) = start(&board(dir.path(), None));
    let holder = TcpStream::connect(listen).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut reset = 0;
    let mut crowd = Vec::new();
    for _ in 0..6 {
        match TcpStream::connect(listen) {
            Ok(c) => crowd.push(c),
            // Reset before the connect even returned: turned away too.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused) => {
                reset += 1
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for c in &mut crowd {
        c.set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        ))
        .unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => reset += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => reset += 1,
            _ => {}
        }
    }
    assert_eq!(reset, 5, "one client waits in the backlog, the other five are turned away");
    drop(holder);
}

/// The number of times the process has gone to sleep and been woken (`voluntary_ctxt_switches`
/// summed over its threads).
fn wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Defect 6: a device with nothing to do sleeps until something happens, instead of waking
/// every millisecond to look.
#[test]
fn an_idle_device_sleeps() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, _) = start(&board(dir.path(), None));
    std::thread::sleep(Duration::from_millis(300));
    let before = wakeups(emu.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let woke = wakeups(emu.child.id()) - before;
    assert!(woke < 20, "an idle device woke {woke} times in a second");
}
