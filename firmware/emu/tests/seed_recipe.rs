//! The MQTT-triggered pull's own recipe, played against `ota-emu` with the tools its users
//! have: mosquitto as the broker, `python3 -m http.server` serving the image, `mosquitto_pub`
//! sending the trigger and `mosquitto_sub` watching the statuses (docs/own-tools.md, "Point your
//! own tools at an emulated device"). Skipped, saying why, where a tool is missing.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Kills the process when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn program(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Command::new(p).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
        .map(|p| p.to_string())
}

/// Waits until something accepts connections on `port`.
fn listening(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_seed_recipe_updates_the_emulated_device() {
    let (Some(mosquitto), Some(publish), Some(subscribe), Some(python)) = (
        program(&["mosquitto", "/usr/sbin/mosquitto"]),
        program(&["mosquitto_pub"]),
        program(&["mosquitto_sub"]),
        program(&["python3"]),
    ) else {
        eprintln!(
            "SKIP the seed recipe: it needs mosquitto, mosquitto_pub, mosquitto_sub (Debian: mosquitto, mosquitto-clients) and python3"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let _broker = Killed(
        Command::new(&mosquitto)
            .args(["-p", &mqtt.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _server = Killed(
        Command::new(&python)
            .args(["-m", "http.server", &http.to_string(), "--bind", "127.0.0.1"])
            .current_dir(root.join("fixtures/firmware"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(listening(mqtt) && listening(http), "mosquitto or the HTTP server did not start");
    let flash = dir.path().join("flash.bin");
    let made = common::make_flash(&flash, &["--mqtt-broker", &format!("127.0.0.1:{mqtt}")]);
    assert!(made.status.success());
    let mut statuses = Killed(
        Command::new(&subscribe)
            .args(["-p", &mqtt.to_string(), "-t", "/switch/state/root"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = BufReader::new(statuses.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // stdin stays open (and piped) while the device runs: its end would stop the emulator.
    let _device = Killed(
        Command::new(env!("CARGO_BIN_EXE_ota-emu"))
            .args(["run", "--flash"])
            .arg(&flash)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let next = |want: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(want) => return l,
                Ok(_) => {}
                Err(_) => panic!("no status with {want} within 20 s"),
            }
        }
    };
    next(r#""state":"online""#);
    let trigger = format!(r#"{{"type":"ota_trigger","url":"http://127.0.0.1:{http}/v2.bin"}}"#);
    let sent = Command::new(&publish)
        .args(["-p", &mqtt.to_string(), "-t", "/switch/cmd/root", "-m", &trigger])
        .status()
        .unwrap();
    assert!(sent.success());
    next(r#""state":"downloading""#);
    next(r#""state":"done""#);
    let back = next(r#""state":"online""#);
    assert!(back.contains(r#""fw":"2.0.0""#), "the device runs v2 after its restart: {back}");
}
