//! `ota-emu` run by a person, not the harness.

use std::process::{Command, Stdio};

mod common;
use common::{make_flash, v1_board};

/// Issue #22: `ota-emu run < /dev/null` used to exit 0 at once without a word. It still stops
/// (the end of stdin is how a harness that goes away takes its emulators with it), and says
/// why and how to keep it running. With stdin open it runs and answers.
#[test]
fn a_closed_control_channel_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let flash = v1_board(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
        .args(["run", "--listen", "127.0.0.1:0", "--flash"])
        .arg(&flash)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(ota_emu::serve::STDIN_ENDED), "{stderr}");
    // Commands, then the end of stdin: no such word (it would clutter every harness run),
    // and the device stops. Ten times: the end's wake-up used to be lost about one run in
    // three when the reader's thread ended first, and the emulator slept for good.
    for run in 0..10 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
            .args(["run", "--listen", "127.0.0.1:0", "--flash"])
            .arg(&flash)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"status\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("run {run}: the emulator did not stop within 10 s of the end of stdin");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("#otahil ok status"), "run {run}: it answered");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("ended before any command"));
    }
}

/// Issue #22: `make-flash` provisions every setting a scenario's `device:` can, through the same
/// per-path code, and the device boots with them; what the device would refuse is refused.
#[test]
fn make_flash_provisions_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let flash = dir.path().join("flash.bin");
    let make = |extra: &[&str]| make_flash(&flash, extra);
    let made = make(&[
        "--password",
        "pw",
        "--arduino-password",
        "ap",
        "--arduino-auth",
        "pbkdf2",
        "--mqtt-broker",
        "127.0.0.1:9",
        "--mqtt-command-topic",
        "/fleet/cmd",
        "--version-check",
        "skip-same",
        "--homie-broker",
        "127.0.0.1:9",
        "--homie1-broker",
        "127.0.0.1:9",
        "--homie-id",
        "bench-1",
        "--homie-ota",
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
        .args(["run", "--listen", "127.0.0.1:0", "--flash"])
        .arg(&flash)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"status\n").unwrap();
    let out = String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned();
    for line in [
        "config: OTA password set (nvs), protocol 2 (nvs)",
        "password set (nvs), auth pbkdf2 (nvs)",
        "MQTT broker set (nvs), commands on /fleet/cmd",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(out.contains("bench-1"), "the Homie id: {out}");
    let refused = make(&["--homie1-broker", "127.0.0.1", "--homie1-url", "https://10.0.2.2/ota"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("Homie 1.x OTA server: expected http://host[:port]/path"), "{err}");
    let refused = make(&["--homie-id", "x"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("need --homie-broker or --homie1-broker"));
}

/// Issue #22: an error whose message quotes its cause printed the cause twice ("…: No such file
/// or directory (os error 2): No such file or directory (os error 2)").
#[test]
fn an_error_names_its_cause_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_ota-emu"))
        .args(["run", "--listen", "127.0.0.1:0", "--flash", "/nonexistent/flash.bin"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open flash file /nonexistent/flash.bin"), "{stderr}");
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
}
