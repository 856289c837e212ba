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

const README: &str = include_str!("../../README.md");

/// Issue #22: a newcomer's first screen says what otahil is, the two commands, a first scenario
/// and how to accept its snapshots.
#[test]
fn the_first_screen_has_the_commands_a_first_scenario_and_its_snapshots() {
    let first_screen: String = README.lines().take(45).collect::<Vec<_>>().join("\n");
    for want in [
        "cargo xtask hil ",
        "cargo test --workspace",
        "cargo xtask hil --scenarios my-scenarios",
        "otahil snapshots accept",
    ] {
        assert!(first_screen.contains(want), "`{want}` is not in the README's first 45 lines");
    }
}

/// The README's tables list every registered backend and update path.
#[test]
fn the_readme_lists_every_backend_and_update_path() {
    for b in otahil::backend::BACKENDS {
        assert!(README.contains(&format!("| `{}`", b.name)), "backend {} is not in the README", b.name);
    }
    for p in otahil::paths::PATHS {
        assert!(README.contains(&format!("| `{}`", p.name)), "update path {} is not in the README", p.name);
    }
}

/// Every relative link in the README and the docs pages leads to a file that exists.
#[test]
fn relative_links_lead_somewhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    let mut checked = 0;
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            if link.contains("://") || link.starts_with('#') {
                continue;
            }
            let target = page.parent().unwrap().join(link.split('#').next().unwrap());
            assert!(target.exists(), "{}: link to {link} leads nowhere", page.display());
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} links found");
}
