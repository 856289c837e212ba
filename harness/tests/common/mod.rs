//! What several scenario tests share: checking a run's snapshots against the stored files.

use otahil::report::ScenarioReport;

/// Every snapshot the run took, checked by insta against `harness/tests/snapshots/` (the same
/// files whichever backend produced them).
pub fn assert_snapshots(report: &ScenarioReport) {
    let mut settings = insta::Settings::clone_current();
    // Relative to the test files, not to this module.
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(false);
    settings.bind(|| {
        for (name, content) in &report.snapshots {
            insta::assert_snapshot!(name.as_str(), content);
        }
    });
}
