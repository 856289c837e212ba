//! The README's example scenario loads and plays as shown (issue #11: it used to fail at
//! `Auth failed`, and it reused a real scenario's name).

use otahil::emu::{EmuBackend, EmuProgram};
use otahil::{runner, scenario};
use std::path::Path;

fn readme_example() -> String {
    let readme = include_str!("../../README.md");
    let start =
        readme.find("```yaml\nname:").expect("the README has an example scenario") + "```yaml\n".len();
    let len = readme[start..].find("```").expect("the example ends");
    readme[start..start + len].to_string()
}

#[test]
fn the_readme_example_plays_on_the_emulator() {
    let text = readme_example();
    // As if it were a file in scenarios/, where its relative paths point from.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/readme-example.yaml");
    let s = scenario::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let taken: Vec<String> = otahil::scenario_files(path.parent().unwrap())
        .unwrap()
        .iter()
        .filter_map(|f| scenario::load(f).ok().map(|s| s.name))
        .collect();
    assert!(!taken.contains(&s.name), "the example must not reuse a real scenario's name ({})", s.name);
    let program =
        EmuProgram { program: env!("CARGO_BIN_EXE_otahil").into(), prefix_args: vec!["emu".into()] };
    let report = runner::run(&s, &EmuBackend { program }, &runner::RunOptions::default());
    assert_eq!(report.failure_details(), None);
    assert_eq!(report.snapshots.len(), 1);
}
