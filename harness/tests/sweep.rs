//! The sweep can fail: a broken writer is caught, with a reproduction line that works.

use otahil::emu::{EmuBackend, EmuProgram};
use otahil::report::StepOutcome;
use otahil::runner::{self, RunOptions};
use otahil::scenario;
use std::path::Path;

fn backend() -> EmuBackend {
    let program =
        EmuProgram { program: env!("CARGO_BIN_EXE_otahil").into(), prefix_args: vec!["emu".into()] };
    EmuBackend { program }
}

#[test]
fn a_broken_writer_fails_the_sweep_with_a_reproduction() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/broken-writer-sweep.yaml");
    let s = scenario::load(&path).unwrap();
    let report = runner::run(&s, &backend(), &RunOptions::default());
    let failure = report.failure().expect("the sweep must fail");
    assert!(failure.contains("bootloader fallback"), "{failure}");
    let repro = failure.lines().find_map(|l| l.trim().strip_prefix("reproduce: ")).expect(&failure);
    // The scenario is not in the project's `scenarios/`: the line names its directory.
    let dir = path.parent().unwrap().display().to_string();
    let expected = format!("cargo xtask hil --scenarios {dir} --scenario broken-writer-sweep --cut ");
    assert!(repro.starts_with(&expected), "{repro}");

    // Run exactly what the line says (in-process): the same cut fails again and shows its log.
    let words: Vec<&str> = repro.split_whitespace().collect();
    let cut: u64 = words[words.iter().position(|w| *w == "--cut").unwrap() + 1].parse().unwrap();
    let torn = words.contains(&"--torn");
    let seed: u64 = words[words.iter().position(|w| *w == "--seed").unwrap() + 1].parse().unwrap();
    let again = runner::run(
        &s,
        &backend(),
        &RunOptions { only_cut: Some((cut, torn)), seed: Some(seed), ..RunOptions::default() },
    );
    let step = &again.steps[1];
    assert!(
        matches!(&step.outcome, StepOutcome::Failed(m) if m.contains("1 of 1 cuts")),
        "{:?}",
        step.outcome
    );
    assert!(again.notes.iter().any(|n| n.contains("is not bootable")), "{:?}", again.notes);
}
