//! Every scenario under `scenarios/` played on the emulator, its snapshots checked by insta.

mod common;

use otahil::emu::{EmuBackend, EmuProgram};
use otahil::runner;
use otahil::scenario;
use rstest::rstest;
use std::path::PathBuf;

fn backend() -> EmuBackend {
    // The otahil binary embeds the emulator (`otahil emu …`); cargo builds it for this test.
    let program =
        EmuProgram { program: env!("CARGO_BIN_EXE_otahil").into(), prefix_args: vec!["emu".into()] };
    EmuBackend { program }
}

#[rstest]
fn plays(#[files("../scenarios/*.yaml")] path: PathBuf) {
    let s = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let report = runner::run(&s, &backend(), &runner::RunOptions::default());
    if let Some(why) = &report.skipped {
        // Browser steps in a build without them: CI plays those with `cargo xtask hil --browser`.
        eprintln!("scenario {} skipped: {why}", s.name);
        return;
    }
    if let Some(details) = report.failure_details() {
        panic!("scenario {} failed: {details}", s.name);
    }
    common::assert_snapshots(&report);
}
