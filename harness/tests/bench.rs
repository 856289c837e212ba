//! The bench path on every CI run: the device backend drives the emulator standing in for a
//! board (`fixtures/bench.emu.yaml`): espflash through its ROM loader on a pty, the log read
//! from the pty, resets and power through its control channel. Scenarios give the same
//! snapshots as on the emu backend.

mod common;

use otahil::backend::Backend;
use otahil::backend::device::DeviceBackend;
use otahil::emu::EmuProgram;
use otahil::{bench, runner, scenario};
use std::path::Path;

fn backend() -> DeviceBackend {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let b = bench::load(&root.join("fixtures/bench.emu.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let program =
        EmuProgram { program: env!("CARGO_BIN_EXE_otahil").into(), prefix_args: vec!["emu".into()] };
    DeviceBackend::with_emulator(b, &root.join("target/firmware"), Some(program))
        .expect("the stand-in needs no builds")
}

fn play(backend: &DeviceBackend, name: &str) -> otahil::report::ScenarioReport {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.yaml"));
    let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let report = runner::run(&s, backend, &runner::RunOptions::default());
    if let Some(details) = report.failure_details() {
        panic!("scenario {name} failed on the bench path: {details}");
    }
    common::assert_snapshots(&report);
    report
}

/// One board for several scenarios, as on a bench: the second flashing writes only the blocks
/// the first scenario changed; an exact power cut through the control channel; a reset while
/// the new image is unconfirmed; the identity the ROM reported.
#[test]
fn scenarios_play_through_the_bench_code_with_the_emu_snapshots() {
    let b = backend();
    play(&b, "happy-path");
    let first = b.last_write().expect("flashed");
    assert_eq!(first.written_blocks + first.skipped_blocks, 64, "4 MiB in 64 KiB blocks");
    let r = play(&b, "power-loss-mid-write");
    let second = b.last_write().expect("flashed");
    assert!(
        second.written_blocks < 64 && second.skipped_blocks > 0,
        "blocks that match are skipped: {second:?}"
    );
    assert!(r.steps.iter().all(|s| s.outcome == otahil::report::StepOutcome::Passed), "{:?}", r.steps);
    play(&b, "rollback-unconfirmed-reset");
    let board: std::collections::HashMap<String, String> = b.board().into_iter().collect();
    assert_eq!(board["board.mac"], "02:07:7a:c3:00:01");
    assert_eq!(board["board.chip"], "esp32c3");
    assert_eq!(board["board.flash_size"], "4 MiB");
}

/// `flash: unchanged` needs a read-back, which resets a bench's chip: the device would forget
/// the ArduinoOTA challenge it waits to see answered. The check is reported as not done, the
/// scenario passes, and its snapshots still match.
#[test]
fn a_flash_unchanged_check_is_reported_unchecked_on_a_bench() {
    let r = play(&backend(), "arduino-auth-md5");
    let skipped: Vec<_> = r
        .steps
        .iter()
        .filter_map(|s| match &s.outcome {
            otahil::report::StepOutcome::Skipped(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(skipped.len(), 2, "{:?}", r.steps);
    assert!(skipped.iter().all(|w| w.contains("`flash: unchanged` was not checked")), "{skipped:?}");
    assert!(r.snapshots.iter().any(|(n, _)| n.ends_with("-log")), "the log snapshot is compared");
}
