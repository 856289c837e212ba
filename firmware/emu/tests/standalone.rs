//! `ota-emu` run by a person, not the harness.

use std::process::{Command, Stdio};

mod common;
use common::v1_board;

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
