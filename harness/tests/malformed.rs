//! Malformed scenario files fail with file:line:col and a message, never a panic.

use otahil::scenario;
use std::path::Path;

fn load_err(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let e = scenario::load(&path).unwrap_err();
    assert_eq!(e.file, path);
    e.to_string().replace(&format!("{}", dir.path().display()), "DIR")
}

#[test]
fn unknown_key() {
    let e = load_err("a.yaml", "name: a\ndevice:\n  firmware: v1\n  colour: red\nsteps: []\n");
    assert!(e.starts_with("DIR/a.yaml:4:"), "{e}");
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn wrong_type() {
    let e = load_err(
        "b.yaml",
        "name: b\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok, erases: many }\n",
    );
    assert!(e.starts_with("DIR/b.yaml:4:"), "{e}");
}

#[test]
fn missing_image() {
    let e = load_err(
        "c.yaml",
        "name: c\ndevice: { firmware: v1 }\nsteps:\n  - boot\n  - ota: { image: firmware/v9.bin, expect: ok }\n",
    );
    assert!(e.starts_with("DIR/c.yaml:5:19: unknown image `firmware/v9.bin`"), "{e}");
}

#[test]
fn missing_field_and_bad_yaml() {
    let e = load_err("d.yaml", "name: d\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2 }\n");
    assert!(e.contains("d.yaml:4:") && e.contains("expect"), "{e}");
    let e =
        load_err("e.yaml", "name: e\ndevice: { firmware: v1 }\nsteps:\n  - ota: { image: v2, expect: ok\n");
    assert!(e.contains("e.yaml:"), "{e}");
    let e = load_err("f.yaml", "");
    assert!(e.contains("f.yaml"), "{e}");
}

#[test]
fn every_shipped_scenario_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let files = otahil::scenario_files(&dir).unwrap();
    assert!(files.len() >= 10, "found {} scenario files", files.len());
    for f in files {
        scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_password_the_device_cannot_store() {
    let long = "p".repeat(65);
    let e = load_err("g.yaml", &format!("name: g\ndevice:\n  firmware: v1\n  password: {long}\nsteps: []\n"));
    assert!(e.starts_with("DIR/g.yaml:4:13: password of 65 bytes: the device stores at most 64"), "{e}");
}

#[test]
fn elegant_ota_steps_say_what_they_need_and_refuse_faults_a_browser_has_not() {
    let e = load_err(
        "e1.yaml",
        "name: e1\ndevice: { firmware: v1 }\nsteps:\n  - ota: { via: elegant_ota, image: v2, expect: ok }\n",
    );
    assert!(e.starts_with("DIR/e1.yaml:4:") && e.contains("add `elegant_ota: {}` under `device`"), "{e}");
    let both = "name: e2\ndevice: { firmware: v1, web_form: {}, elegant_ota: {} }\nsteps:\n  - ota: { via: elegant_ota, image: v2, expect: ok }\n";
    let e = load_err("e2.yaml", both);
    assert!(e.starts_with("DIR/e2.yaml:4:") && e.contains("share port 80"), "{e}");
    let e = load_err(
        "e3.yaml",
        "name: e3\ndevice: { firmware: v1, elegant_ota: {} }\nsteps:\n  - ota: { via: elegant_ota, image: v2, hash: 'a b', expect: ok }\n",
    );
    assert!(e.starts_with("DIR/e3.yaml:4:") && e.contains("hash `a b`"), "{e}");
    let e = load_err(
        "e4.yaml",
        "name: e4\ndevice: { firmware: v1, elegant_ota: {} }\nsteps:\n  - ota: { via: elegant_ota, image: v2, browser: true, start: false, expect: ok }\n",
    );
    assert!(e.contains("start: the harness client's fault"), "{e}");
    let e =
        load_err("e5.yaml", "name: e5\ndevice: { firmware: v1, elegant_ota: { user: admin } }\nsteps: []\n");
    assert!(e.starts_with("DIR/e5.yaml:2:") && e.contains("user without password"), "{e}");
}
