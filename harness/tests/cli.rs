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

/// `otahil inspect` fails on a dump without a valid partition table, and passes on a good one.
#[test]
fn inspect_fails_on_a_dump_without_a_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.bin");
    std::fs::write(&blank, vec![0xFFu8; 1 << 20]).unwrap();
    let out = otahil().arg("inspect").arg(&blank).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("partition_table: INVALID"));
    let good = dir.path().join("good.bin");
    let csv = include_str!("../../fixtures/partitions/esphome-4mb.csv");
    let table = ota_core::partition_csv::parse_csv(csv).unwrap();
    let app = otahil::fixtures::find("v1").unwrap().bytes();
    std::fs::write(&good, ota_emu::mkflash::merged_image(&table, &app, 4 << 20).unwrap()).unwrap();
    let out = otahil().arg("inspect").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Issue #22: a valid table with nothing bootable is a failure too.
    let empty = dir.path().join("empty.bin");
    let mut image = ota_emu::mkflash::merged_image(&table, &app, 4 << 20).unwrap();
    let slot = table.by_label("app0").unwrap();
    image[slot.offset as usize..slot.end() as usize].fill(0xFF);
    std::fs::write(&empty, &image).unwrap();
    let out = otahil().arg("inspect").arg(&empty).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("boots: NOTHING"), "{text}");

    // Issue #22: both otadata copies torn on a layout without factory: the bootloader tries
    // every slot; no factory slot is named.
    let torn = dir.path().join("torn.bin");
    let mut image = ota_emu::mkflash::merged_image(&table, &app, 4 << 20).unwrap();
    let otadata = table.otadata().unwrap();
    for copy in [0usize, 4096] {
        let at = otadata.offset as usize + copy;
        image[at..at + 4].copy_from_slice(&1u32.to_le_bytes()); // seq 1
        image[at + 24..at + 28].copy_from_slice(&2u32.to_le_bytes()); // VALID
        image[at + 28..at + 32].copy_from_slice(&0u32.to_le_bytes()); // a CRC that does not match
    }
    std::fs::write(&torn, &image).unwrap();
    let out = otahil().arg("inspect").arg(&torn).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("selects: every app slot in order # otadata invalid (CRC) and no factory"),
        "{text}"
    );
    assert!(text.contains("  boots: ota_0\n"), "{text}");
    assert!(!text.contains("factory does not verify"), "{text}");
}

/// `otahil emu --help` names itself; `make-flash` refuses an app file that is no app image.
#[test]
fn the_embedded_emulator_names_itself_and_make_flash_refuses_a_non_image() {
    let out = otahil().args(["emu", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: otahil emu"), "{help}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not an image at all").unwrap();
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/partitions/esphome-4mb.csv");
    let out = otahil()
        .args(["emu", "make-flash", "--partitions", csv, "--app"])
        .arg(&junk)
        .arg("--out")
        .arg(dir.path().join("flash.bin"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not an ESP32-C3 app image"), "{err}");
    assert!(!dir.path().join("flash.bin").exists());
}

/// `--addr` takes a host name (a board's `.local` name, `localhost`), and says what it expected.
#[test]
fn ota_addr_takes_host_names() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = otahil()
        .args(["ota", "--addr", &format!("localhost:{port}"), "--image", "v2", "--timeout", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted during connect"), "{stdout}");
    let out = otahil().args(["ota", "--addr", "no-port-here", "--image", "v2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--addr `no-port-here`: expected HOST:PORT"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn check_validates_a_bench_file_at_its_place() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("fixtures/bench.example.yaml");
    let out =
        otahil().current_dir(&root).args(["check", "scenarios", "--bench"]).arg(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("bench lab-c3-1 ok"), "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bench.yaml");
    std::fs::write(&bad, "name: b\nport: /dev/ttyACM0\naddress: 10.0.0.2\nbaud: 7\n").unwrap();
    let out = otahil().current_dir(&root).args(["check", "scenarios", "--bench"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bench.yaml:4:7: baud 7: expected 9600 to 3000000"), "{stderr}");
}

/// `--mosquitto` names a program the harness runs: one that cannot run fails the pull scenario
/// with the program's name and the reason (not a panic, not a skip); it and `--mqtt-broker`
/// exclude each other.
#[test]
fn a_mosquitto_that_cannot_run_fails_the_scenario_saying_why() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = otahil()
        .current_dir(root)
        .args(["run", "--scenario", "pull-happy-path", "--mosquitto", "/nonexistent/mosquitto"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL") && stdout.contains("cannot start /nonexistent/mosquitto"), "{stdout}");

    let out = otahil()
        .current_dir(root)
        .args(["run", "--mosquitto", "/usr/sbin/mosquitto", "--mqtt-broker", "mqtt://127.0.0.1:1883"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// `otahil backend NAME` is what `cargo xtask hil` asks before it builds anything: the firmware
/// the device runs, and a clear error for a backend that cannot run here or does not exist.
#[test]
fn a_backend_says_what_firmware_it_runs_and_whether_it_can_run_here() {
    let out = otahil().args(["backend", "emu"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout, "backend: emu\nfirmware: fixtures\nready: yes\n");
    let out = otahil().args(["backend", "device"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("firmware: bench\n"));
    let out = otahil().args(["backend", "qemu"]).env("ESP_QEMU", "/nonexistent/qemu").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot use the qemu backend: no QEMU (/nonexistent/qemu"), "{stderr}");
    let out = otahil().args(["backend", "bench-of-dreams"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("expected one of emu, qemu, device"), "{stderr}");
}

/// Issue #22: a team's own scenarios in a directory of their own. A failing step is named
/// first and leaves no pending snapshot; once it passes, its new snapshots wait next to the
/// scenarios (made for them, and said) until `otahil snapshots accept`; then the run is green.
/// A `--snapshots` directory that does not exist is an error, never made.
#[test]
fn own_scenarios_fail_on_their_step_then_their_snapshots_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios = dir.path().join("mine");
    std::fs::create_dir(&scenarios).unwrap();
    let file = scenarios.join("first.yaml");
    let scenario = |expect: &str| {
        format!(
            "name: mine\ndevice: {{ firmware: v1 }}\nsteps:\n  - boot\n  - ota: {{ image: v2, expect: ok }}\n  - expect_log: {{ pattern: '{expect}', timeout: 300ms }}\n  - snapshot: [partitions]\n"
        )
    };
    let run = |extra: &[&str]| {
        let out = otahil()
            .current_dir(dir.path())
            .args(["run", "--scenarios", "mine"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::write(&file, scenario("version 9.9.9")).unwrap();
    let (ok, stdout, _) = run(&[]);
    assert!(!ok);
    assert!(stdout.contains("FAIL  step 3 (line 6, expect_log"), "the step, not a snapshot: {stdout}");
    assert!(!scenarios.join("snapshots").exists(), "a failed scenario writes no snapshot");

    std::fs::write(&file, scenario("2\\.0\\.0")).unwrap();
    let (ok, stdout, _) = run(&[]);
    assert!(!ok, "a new snapshot is not accepted by itself");
    assert!(stdout.contains("new snapshot mine-1-partitions"), "{stdout}");
    assert!(stdout.contains("made mine/snapshots for the new snapshots"), "{stdout}");
    assert!(stdout.contains("otahil snapshots review --scenarios mine"), "{stdout}");
    let pending = scenarios.join("snapshots/mine-1-partitions.snap.new");
    assert!(pending.exists());

    let review = otahil()
        .current_dir(dir.path())
        .args(["snapshots", "review", "--scenarios", "mine"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&review.stdout);
    assert!(shown.contains("new snapshot mine-1-partitions") && shown.contains("+otadata:"), "{shown}");
    let accept = otahil()
        .current_dir(dir.path())
        .args(["snapshots", "accept", "--scenarios", "mine", "--scenario", "mine"])
        .output()
        .unwrap();
    assert!(accept.status.success());
    assert!(!pending.exists() && scenarios.join("snapshots/mine-1-partitions.snap").exists());
    let (ok, stdout, _) = run(&[]);
    assert!(ok, "{stdout}");

    let (ok, _, stderr) = run(&["--snapshots", "typo"]);
    assert!(!ok);
    assert!(stderr.contains("--snapshots typo: no such directory"), "{stderr}");
    assert!(!dir.path().join("typo").exists());
    // A report with nowhere to go is refused before the run, not after it.
    let (ok, stdout, stderr) = run(&["--junit", "gone/junit.xml"]);
    assert!(!ok);
    assert!(stderr.contains("--junit gone/junit.xml: no directory gone"), "{stderr}");
    assert!(!stdout.contains("PASS"), "nothing ran: {stdout}");
}

/// Issue #22: options that cannot apply are refused, not ignored: `--cut` on a scenario
/// without a sweep (it passed, its snapshots silently skipped), `--bench` with a backend that
/// has no board.
#[test]
fn options_that_cannot_apply_are_refused() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out =
        otahil().current_dir(root).args(["run", "--scenario", "happy-path", "--cut", "3"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--cut 3 replays one cut of a sweep, and happy-path has no sweep step"), "{err}");
    let out = otahil()
        .current_dir(root)
        .args(["run", "--scenario", "happy-path", "--bench", "fixtures/bench.emu.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the emu backend has none (add --backend device)"), "{err}");
}

/// Issue #22: scenarios run in the order the command line names them (they ran in the
/// directory's order), and the summary is plain text when it goes to a file or pipe.
#[test]
fn scenarios_run_in_the_order_given() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = otahil()
        .current_dir(root)
        .args(["run", "--scenario", "truncated-upload", "--scenario", "happy-path"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let (t, h) = (stdout.find("truncated-upload ").unwrap(), stdout.find("happy-path ").unwrap());
    assert!(t < h, "{stdout}");
    assert!(!stdout.contains('\x1b'), "no colour codes in a pipe: {stdout}");
}

/// Issue #23: `--partition K/N` splits the project's scenarios into N shards that together play
/// each exactly once; `--list` names a shard's scenarios without playing them.
#[test]
fn partitions_split_the_scenarios_into_disjoint_shards() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let list = |extra: &[&str]| {
        let out = otahil().current_dir(root).args(["run", "--list"]).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let all = list(&[]);
    assert!(all.len() > 40 && all.contains(&"happy-path".to_string()), "{all:?}");
    let mut shards: Vec<String> = Vec::new();
    for k in 1..=3 {
        let shard = list(&["--partition", &format!("{k}/3")]);
        assert!(!shard.is_empty(), "shard {k}/3 is empty");
        shards.extend(shard);
    }
    let mut sorted = shards.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), shards.len(), "a scenario in two shards");
    let mut want = all.clone();
    want.sort();
    assert_eq!(sorted, want, "the shards together are every scenario");
    // FNV-1a of the name decides: happy-path is in shard 4 of 4, on every machine.
    assert!(list(&["--partition", "hash:4/4"]).contains(&"happy-path".to_string()));
    let out = otahil().current_dir(root).args(["run", "--list", "--partition", "0/2"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected K/N (or hash:K/N) with 1 ≤ K ≤ N"));
}
