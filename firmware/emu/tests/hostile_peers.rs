//! The emulator against peers that misbehave: a broker that stops reading, a broker that never
//! answers the handshake, clients that crowd the ESPHome port, and no peer at all. Each stalls
//! at most its own link, as on the chip, and an idle device sleeps. Network on loopback only;
//! every wait is bounded.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const PREFIX: &str = "#otahil ";

struct Emulator {
    child: Child,
    stdin: ChildStdin,
    stdout: Receiver<String>,
    listen: SocketAddr,
}

impl Emulator {
    /// `ota-emu run` on `flash`, powered on and serving.
    fn start(flash: &Path) -> Emulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
            .args(["run", "--listen", "127.0.0.1:0", "--arduino-listen", "127.0.0.1:0", "--flash"])
            .arg(flash)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ota-emu starts");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, stdout) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut emu = Emulator { child, stdin, stdout, listen: "0.0.0.0:0".parse().unwrap() };
        let ready = emu.expect("ready listen=", Duration::from_secs(10));
        let listen = ready.split_whitespace().find_map(|w| w.strip_prefix("listen=")).unwrap();
        emu.listen = listen.parse().unwrap();
        emu.expect("ota: listening on port", Duration::from_secs(10));
        emu
    }

    /// The first stdout line containing `text` within `wait`, or `None`.
    fn wait_for(&self, text: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        while let Ok(line) = self.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(text) {
                return Some(line);
            }
        }
        None
    }

    fn expect(&self, text: &str, wait: Duration) -> String {
        self.wait_for(text, wait).unwrap_or_else(|| panic!("no line with `{text}` within {wait:?}"))
    }

    /// How long the control channel takes to answer `status`.
    fn status_round_trip(&mut self) -> Option<Duration> {
        let asked = Instant::now();
        writeln!(self.stdin, "status").unwrap();
        self.wait_for(&format!("{PREFIX}ok status"), Duration::from_secs(5)).map(|_| asked.elapsed())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 4 MiB flash in `dir` with v1 in ota_0 and, when given, the pull path's broker provisioned.
fn board(dir: &Path, broker: Option<SocketAddr>) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let csv = std::fs::read_to_string(root.join("fixtures/partitions/esphome-4mb.csv")).unwrap();
    let table = ota_core::partition_csv::parse_csv(&csv).unwrap();
    let app = std::fs::read(root.join("fixtures/firmware/v1.bin")).unwrap();
    let mut image = ota_emu::mkflash::merged_image(&table, &app, 4 << 20).unwrap();
    let broker = broker.map(|b| b.to_string());
    let settings = ota_core::provision::Provision {
        protocol: 2,
        mqtt: broker.as_deref().map(|broker| ota_core::provision::MqttProvision {
            broker,
            ..ota_core::provision::MqttProvision::default()
        }),
        ..ota_core::provision::Provision::default()
    };
    ota_emu::mkflash::provision_settings(&mut image, &table, &settings).unwrap();
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
    let mut emu = Emulator::start(&board(dir.path(), Some(broker.local_addr().unwrap())));
    let (mut conn, _) = broker.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_packet(&mut conn)[0], 0x10, "CONNECT");
    conn.write_all(&[0x20, 2, 0, 0]).unwrap();
    let subscribe = read_packet(&mut conn);
    assert_eq!(subscribe[0], 0x82, "SUBSCRIBE");
    conn.write_all(&[0x90, 3, subscribe[2], subscribe[3], 1]).unwrap();
    emu.expect("mqtt: connected, subscribed", Duration::from_secs(10));
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
        let answered = emu.status_round_trip();
        assert!(
            answered.is_some_and(|t| t < Duration::from_secs(1)),
            "the control channel waited {answered:?} behind a broker that does not read"
        );
    }
    flooding.join().unwrap();
    // esp-mqtt's MQTT_NETWORK_TIMEOUT_MS: the stalled link is given up, and the device tries again.
    emu.expect("mqtt: connection lost", Duration::from_secs(15));
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
    let mut emu = Emulator::start(&board(dir.path(), Some(addr)));
    // The device is connecting now (its first attempt right after boot).
    for _ in 0..5 {
        let answered = emu.status_round_trip();
        assert!(
            answered.is_some_and(|t| t < Duration::from_millis(500)),
            "the control channel waited {answered:?} behind a connect"
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
    let emu = Emulator::start(&board(dir.path(), None));
    let holder = TcpStream::connect(emu.listen).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut reset = 0;
    let mut crowd = Vec::new();
    for _ in 0..6 {
        match TcpStream::connect(emu.listen) {
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
    let emu = Emulator::start(&board(dir.path(), None));
    std::thread::sleep(Duration::from_millis(300));
    let before = wakeups(emu.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let woke = wakeups(emu.child.id()) - before;
    assert!(woke < 20, "an idle device woke {woke} times in a second");
}
