//! Results: per step and per scenario, the summary table, and JUnit XML.

use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Passed,
    /// The backend lacks a capability the step needs.
    Skipped(String),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct StepReport {
    pub line: u64,
    pub label: String,
    pub outcome: StepOutcome,
    pub duration: Duration,
}

/// A file a step kept for people to look at (a browser's screenshot of the final page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// What it shows.
    pub label: String,
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub name: String,
    /// The scenario's `about:`, what it shows.
    pub about: Option<String>,
    pub file: String,
    pub backend: String,
    pub duration: Duration,
    pub steps: Vec<StepReport>,
    /// Steps that never ran because an earlier one failed (or the device did not start):
    /// their line and label.
    pub not_run: Vec<(u64, String)>,
    /// Set when the scenario could not run at all (bad file, backend failed to start).
    pub error: Option<String>,
    /// Set when the backend cannot play this scenario: the reason (not a pass, not a failure).
    pub skipped: Option<String>,
    /// The last serial lines, kept when something failed.
    pub log_tail: Vec<String>,
    /// (snapshot name, content), in the order taken.
    pub snapshots: Vec<(String, String)>,
    /// Snapshots taken after a step this backend skipped: the state differs from the stored one.
    pub snapshots_after_skip: Vec<String>,
    /// Each differing snapshot as a unified diff against the stored one.
    pub snapshot_diffs: Vec<String>,
    /// Figures and logs worth printing (sweep rates, a reproduced cut's log).
    pub notes: Vec<String>,
    /// The decoded partition state behind each partitions snapshot, for pictures.
    pub flash_maps: Vec<(String, crate::inspect::FlashMap)>,
    /// Each sweep's outcome classes, and its cuts when pictures were asked for.
    pub sweeps: Vec<SweepResult>,
    /// The serial log since the last boot, normalised, as the log snapshot shows it.
    pub log: String,
    /// Files the steps kept (screenshots), in the order kept.
    pub artifacts: Vec<Artifact>,
}

/// What a run was: when, by which otahil, on which backend and board; the head of a report.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// When the run started, `2026-12-07 11:30:00 UTC`.
    pub started: String,
    pub version: String,
    /// The checkout the run played (`git describe --always --dirty`), when there is one.
    pub commit: Option<String>,
    pub backend: String,
    /// The board's identity on a bench (`board.mac`, `board.chip`, …).
    pub board: Vec<(String, String)>,
}

/// `time` as `YYYY-MM-DD HH:MM:SS UTC` (the civil calendar from days since 1970, H. Hinnant's
/// algorithm; no time-zone data needed).
pub fn utc_text(time: std::time::SystemTime) -> String {
    let secs = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest / 60 % 60, rest % 60)
}

/// One outcome class of a sweep: where the cut was (phase) and what the device did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepClass {
    pub phase: &'static str,
    /// `booted old`, `booted new`, or `failed`.
    pub outcome: &'static str,
    pub cuts: u64,
}

/// One evaluated cut, for the per-cut picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutCell {
    pub cut: u64,
    pub torn: bool,
    pub phase: &'static str,
    /// 0: booted old, 1: booted new, 2: failed.
    pub outcome: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepResult {
    pub name: String,
    pub classes: Vec<SweepClass>,
    pub cells: Vec<CutCell>,
}

impl ScenarioReport {
    /// What failed: a step first (the cause), then the scenario's own error (a start failure,
    /// snapshots that differ).
    pub fn failure(&self) -> Option<String> {
        let step = self.steps.iter().enumerate().find_map(|(i, s)| match &s.outcome {
            StepOutcome::Failed(m) => Some(format!("step {} (line {}, {}): {m}", i + 1, s.line, s.label)),
            _ => None,
        });
        step.or_else(|| self.error.clone())
    }

    pub fn passed(&self) -> bool {
        self.failure().is_none()
    }

    pub fn skipped_steps(&self) -> usize {
        self.steps.iter().filter(|s| matches!(s.outcome, StepOutcome::Skipped(_))).count()
    }

    /// A multi-line explanation of the failure, with the last log lines.
    pub fn failure_details(&self) -> Option<String> {
        let mut out = self.failure()?;
        if !self.log_tail.is_empty() {
            out.push_str("\n  last serial lines:");
            for l in &self.log_tail {
                let _ = write!(out, "\n    | {l}");
            }
        }
        Some(out)
    }
}

/// Whether output to a stream that `is_terminal` should be coloured: yes, unless `NO_COLOR` is
/// set to anything non-empty (no-color.org).
pub fn colour_wanted(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The table printed after a run; `colour`: PASS, FAIL and SKIP in green, red and yellow (for a
/// terminal, unless `NO_COLOR` is set: [`colour_wanted`]).
pub fn summary(reports: &[ScenarioReport], colour: bool) -> String {
    let paint =
        |code: &str, word: &str| if colour { format!("\x1b[{code}m{word}\x1b[0m") } else { word.to_string() };
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(8).max(8);
    let mut out = String::new();
    let _ = writeln!(out, "{:<width$}  {:<7}  {:>6}  {:>10}  result", "scenario", "backend", "steps", "time");
    for r in reports {
        let result = match r.failure() {
            None if r.skipped.is_some() => {
                format!("{}  {}", paint("33", "SKIP"), r.skipped.as_deref().unwrap_or_default())
            }
            None if r.skipped_steps() > 0 => {
                format!("{} ({} step(s) skipped)", paint("32", "PASS"), r.skipped_steps())
            }
            None => paint("32", "PASS"),
            Some(f) => format!("{}  {f}", paint("31", "FAIL")),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<7}  {:>6}  {:>10}  {result}",
            r.name,
            r.backend,
            r.steps.len(),
            ms(r.duration)
        );
    }
    let skipped = reports.iter().filter(|r| r.skipped.is_some()).count();
    let passed = reports.iter().filter(|r| r.passed()).count() - skipped;
    let total: Duration = reports.iter().map(|r| r.duration).sum();
    let failed = reports.len() - passed - skipped;
    let _ = writeln!(out, "{passed} passed, {failed} failed, {skipped} skipped ({} in scenarios)", ms(total));
    out
}

fn xml_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => format!("&#{};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: one testsuite, one testcase per scenario; `properties` (the board's identity on
/// a bench) on the suite.
pub fn junit(reports: &[ScenarioReport], properties: &[(String, String)]) -> String {
    let classes = reports.iter().flat_map(|r| &r.sweeps).flat_map(|s| &s.classes);
    let class_failures = classes.clone().filter(|c| c.outcome == "failed").count();
    let tests = reports.len() + classes.count();
    let failures = reports.iter().filter(|r| !r.passed()).count() + class_failures;
    let total: Duration = reports.iter().map(|r| r.duration).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"otahil\" tests=\"{tests}\" failures=\"{failures}\" time=\"{:.3}\">",
        total.as_secs_f64()
    );
    if !properties.is_empty() {
        out.push_str("  <properties>\n");
        for (name, value) in properties {
            let _ = writeln!(
                out,
                "    <property name=\"{}\" value=\"{}\"/>",
                xml_escape(name),
                xml_escape(value)
            );
        }
        out.push_str("  </properties>\n");
    }
    for r in reports {
        let _ = write!(
            out,
            "  <testcase classname=\"otahil.{}\" name=\"{}\" file=\"{}\" time=\"{:.3}\"",
            xml_escape(&r.backend),
            xml_escape(&r.name),
            xml_escape(&r.file),
            r.duration.as_secs_f64()
        );
        match r.failure_details() {
            None if r.skipped.is_some() => {
                let _ = writeln!(
                    out,
                    ">\n    <skipped message=\"{}\"/>\n  </testcase>",
                    xml_escape(r.skipped.as_deref().unwrap_or_default())
                );
            }
            None if r.skipped_steps() > 0 => {
                let reasons: Vec<String> = r
                    .steps
                    .iter()
                    .filter_map(|s| match &s.outcome {
                        StepOutcome::Skipped(why) => {
                            Some(format!("line {}: {} skipped: {why}", s.line, s.label))
                        }
                        _ => None,
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    ">\n    <system-out>{}</system-out>\n  </testcase>",
                    xml_escape(&reasons.join("\n"))
                );
            }
            None => out.push_str("/>\n"),
            Some(details) => {
                let first = details.lines().next().unwrap_or_default();
                let _ = writeln!(
                    out,
                    ">\n    <failure message=\"{}\">{}</failure>\n  </testcase>",
                    xml_escape(first),
                    xml_escape(&details)
                );
            }
        }
    }
    for r in reports {
        for sw in &r.sweeps {
            for c in &sw.classes {
                let _ = write!(
                    out,
                    "  <testcase classname=\"otahil.{}.{}\" name=\"{}: cut in {}, {} ({} cuts)\" file=\"{}\" time=\"0.000\"",
                    xml_escape(&r.backend),
                    xml_escape(&r.name),
                    xml_escape(&sw.name),
                    c.phase,
                    c.outcome,
                    c.cuts,
                    xml_escape(&r.file)
                );
                if c.outcome == "failed" {
                    let _ = writeln!(
                        out,
                        ">\n    <failure message=\"{} cuts in the {} phase broke the device\"/>\n  </testcase>",
                        c.cuts, c.phase
                    );
                } else {
                    out.push_str("/>\n");
                }
            }
        }
    }
    out.push_str("</testsuite>\n");
    out
}

/// Why JUnit files could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{file}: not a JUnit file otahil wrote (no <testsuite tests=… failures=… time=…>)")]
    NotOurs { file: String },
}

/// Several runs' JUnit files (the shards of a partitioned run) as one document: a
/// `<testsuites>` with the totals, holding each file's `<testsuite>` as it was.
pub fn merge_junit(files: &[(String, String)]) -> Result<String, MergeError> {
    let (mut tests, mut failures, mut time) = (0u64, 0u64, 0f64);
    let mut suites = Vec::new();
    for (name, text) in files {
        let not_ours = || MergeError::NotOurs { file: name.clone() };
        let start = text.find("<testsuite ").ok_or_else(not_ours)?;
        let end = text.rfind("</testsuite>").ok_or_else(not_ours)? + "</testsuite>".len();
        let suite = &text[start..end];
        let open = &suite[..suite.find('>').ok_or_else(not_ours)?];
        let attr = |key: &str| {
            let at = open.find(&format!(" {key}=\"")).ok_or_else(not_ours)? + key.len() + 3;
            let len = open[at..].find('"').ok_or_else(not_ours)?;
            Ok::<&str, MergeError>(&open[at..at + len])
        };
        tests += attr("tests")?.parse::<u64>().map_err(|_| not_ours())?;
        failures += attr("failures")?.parse::<u64>().map_err(|_| not_ours())?;
        time += attr("time")?.parse::<f64>().map_err(|_| not_ours())?;
        suites.push(suite);
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"otahil\" tests=\"{tests}\" failures=\"{failures}\" time=\"{time:.3}\">"
    );
    for suite in suites {
        out.push_str(suite);
        out.push('\n');
    }
    out.push_str("</testsuites>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, outcome: StepOutcome) -> ScenarioReport {
        ScenarioReport {
            name: name.into(),
            about: None,
            file: format!("scenarios/{name}.yaml"),
            backend: "emu".into(),
            duration: Duration::from_millis(12),
            steps: vec![StepReport { line: 4, label: "boot".into(), outcome, duration: Duration::ZERO }],
            not_run: vec![],
            error: None,
            skipped: None,
            log_tail: vec!["I (1) boot: <x>".into()],
            snapshots: vec![],
            snapshots_after_skip: vec![],
            snapshot_diffs: vec![],
            notes: vec![],
            flash_maps: vec![],
            sweeps: vec![],
            log: String::new(),
            artifacts: vec![],
        }
    }

    /// One JUnit testcase per sweep outcome class; a failing class fails.
    #[test]
    fn junit_has_a_testcase_per_sweep_outcome_class() {
        let mut r = report("sweepy", StepOutcome::Passed);
        r.sweeps.push(SweepResult {
            name: "sweepy-1-sweep".into(),
            classes: vec![
                SweepClass { phase: "write", outcome: "booted old", cuts: 8710 },
                SweepClass { phase: "first_boot", outcome: "booted new", cuts: 1 },
                SweepClass { phase: "switch", outcome: "failed", cuts: 2 },
            ],
            cells: vec![],
        });
        let x = junit(&[r], &[]);
        assert!(x.contains("tests=\"4\" failures=\"1\""), "{x}");
        assert!(x.contains("name=\"sweepy-1-sweep: cut in write, booted old (8710 cuts)\""), "{x}");
        assert!(x.contains("<failure message=\"2 cuts in the switch phase broke the device\"/>"), "{x}");
    }

    #[test]
    fn summary_and_junit() {
        let reports = [report("a", StepOutcome::Passed), report("b&c", StepOutcome::Failed("boom".into()))];
        let s = summary(&reports, false);
        assert!(summary(&reports, true).contains("\x1b[3"), "coloured when asked");
        assert!(!s.contains('\x1b'));
        assert!(s.contains("1 passed, 1 failed, 0 skipped"), "{s}");
        assert!(s.contains("FAIL  step 1 (line 4, boot): boom"), "{s}");
        let x = junit(&reports, &[]);
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(!x.contains("<properties>"), "{x}");
        assert!(x.contains("name=\"b&amp;c\""), "{x}");
        assert!(x.contains("I (1) boot: &lt;x&gt;"), "{x}");
        let skipped = junit(&[report("s", StepOutcome::Skipped("no power switch".into()))], &[]);
        assert!(skipped.contains("skipped: no power switch"), "{skipped}");
        let board = [("board.mac".to_string(), "02:07:7a:c3:00:01".to_string())];
        let x = junit(&reports, &board);
        assert!(
            x.contains("<properties>\n    <property name=\"board.mac\" value=\"02:07:7a:c3:00:01\"/>"),
            "{x}"
        );
    }

    #[test]
    fn utc_dates_on_the_civil_calendar() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(utc_text(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        // A leap day, and the end of a century year that is one (2000).
        assert_eq!(utc_text(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_text(UNIX_EPOCH + Duration::from_secs(1_796_643_599)), "2026-12-07 11:39:59 UTC");
    }

    /// The shards' JUnit files make one document whose totals are the shards' sums.
    #[test]
    fn shards_junit_files_merge_into_one() {
        let a = junit(&[report("a", StepOutcome::Passed), report("b", StepOutcome::Failed("x".into()))], &[]);
        let b = junit(&[report("c", StepOutcome::Passed)], &[("board.mac".into(), "02:00".into())]);
        let merged = merge_junit(&[("a.xml".into(), a), ("b.xml".into(), b)]).unwrap();
        assert!(
            merged.contains("<testsuites name=\"otahil\" tests=\"3\" failures=\"1\" time=\"0.036\">"),
            "{merged}"
        );
        assert_eq!(merged.matches("<testsuite ").count(), 2);
        assert!(merged.contains("name=\"c\"") && merged.contains("board.mac"));
        assert_eq!(merged.matches("<?xml").count(), 1);
        let e = merge_junit(&[("x.xml".into(), "<html/>".into())]).unwrap_err();
        assert!(e.to_string().starts_with("x.xml: not a JUnit file otahil wrote"), "{e}");
    }
}
