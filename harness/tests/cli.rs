//! The `otahil` command line as a user meets it.

use std::process::Command;

fn otahil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otahil"))
}

/// Issue #11 defect 4: a refused upload shows no image size and no speed, as nothing was sent.
#[test]
fn an_upload_that_sent_nothing_claims_no_bytes_and_no_speed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = otahil()
        .args(["ota", "--addr", &format!("127.0.0.1:{port}"), "--image", "v2", "--timeout", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("interrupted during connect after 0 image bytes"), "{stdout}");
    assert!(stdout.contains("no image bytes sent"), "{stdout}");
    assert!(!stdout.contains("KiB/s"), "{stdout}");
}
