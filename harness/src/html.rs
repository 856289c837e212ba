//! The HTML report: one self-contained file (no scripts, no external resources) a CI user opens
//! in a browser. At the top what the run was (when, which otahil and checkout, backend, board),
//! the summary with failures first and a filter (all, failed, skipped, passed: radio buttons and
//! CSS, so it works with scripts off); then per scenario its `about:`, its steps with outcome and
//! time (skipped steps with the reason, steps a failure left unplayed as not run), snapshot
//! differences as diffs, each partition state as a flash map ([`flash_map`]), each sweep as a
//! picture of every cut ([`sweep`]), and the normalised serial log.

mod flash_map;
mod sweep;

use crate::report::{RunInfo, ScenarioReport, StepOutcome};
use std::fmt::Write;

pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.skip{color:#9a6700;font-weight:600}
.notrun{color:#6e7781}.about{max-width:960px;color:#444}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}
pre.diff .add{color:#1a7f37;background:#e6ffec}pre.diff .del{color:#cf222e;background:#ffebe9}pre.diff .hunk{color:#0550ae}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px;border:1px solid #555}
input.show{position:absolute;opacity:0}label.show{display:inline-block;border:1px solid #999;border-radius:4px;padding:2px 10px;margin:0 6px 8px 0;cursor:pointer}
input.show:checked+label.show{background:#24292f;color:#fff}input.show:focus-visible+label.show{outline:2px solid #0969da}
#show-fail:checked~.results .r-pass,#show-fail:checked~.results .r-skip{display:none}
#show-skip:checked~.results .r-pass,#show-skip:checked~.results .r-fail{display:none}
#show-pass:checked~.results .r-fail,#show-pass:checked~.results .r-skip{display:none}";

/// What a scenario's result is: its class (`fail`, `skip`, `pass`) and the summary's text.
fn result_of(r: &ScenarioReport) -> (&'static str, String) {
    if let Some(why) = &r.skipped {
        return ("skip", format!("SKIP {why}"));
    }
    match r.failure() {
        Some(f) => ("fail", format!("FAIL {f}")),
        None if r.skipped_steps() > 0 => ("pass", format!("PASS ({} step(s) skipped)", r.skipped_steps())),
        None => ("pass", "PASS".into()),
    }
}

/// The report for `reports` of the run `info` as one HTML document.
pub fn report(reports: &[ScenarioReport], info: &RunInfo) -> String {
    // Failures first, then skips, then passes; the run's order within each.
    let mut order: Vec<&ScenarioReport> = reports.iter().collect();
    let rank = |r: &ScenarioReport| match result_of(r).0 {
        "fail" => 0,
        "skip" => 1,
        _ => 2,
    };
    order.sort_by_key(|r| rank(r));
    let count = |class: &str| reports.iter().filter(|r| result_of(r).0 == class).count();
    let (failed, skipped, passed) = (count("fail"), count("skip"), count("pass"));
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>otahil report</title><style>{STYLE}</style></head><body>\n\
         <h1>otahil: {passed} passed, {failed} failed, {skipped} skipped</h1>\n"
    );
    run_info(&mut out, info);
    let filters = [
        ("all", format!("all ({})", reports.len())),
        ("fail", format!("failed ({failed})")),
        ("skip", format!("skipped ({skipped})")),
        ("pass", format!("passed ({passed})")),
    ];
    for (i, (id, text)) in filters.iter().enumerate() {
        let _ = writeln!(
            out,
            "<input type=\"radio\" class=\"show\" name=\"show\" id=\"show-{id}\"{}><label class=\"show\" for=\"show-{id}\">{}</label>",
            if i == 0 { " checked" } else { "" },
            esc(text)
        );
    }
    out.push_str("<div class=\"results\">\n");
    out.push_str(
        "<table><tr><th>scenario</th><th>backend</th><th>steps</th><th>time</th><th>result</th></tr>\n",
    );
    for r in &order {
        let (class, text) = result_of(r);
        let _ = writeln!(
            out,
            "<tr class=\"r-{class}\"><td><a href=\"#{id}\">{name}</a></td><td>{backend}</td><td>{steps}</td><td>{ms:.1} ms</td><td class=\"{class}\">{text}</td></tr>",
            id = esc(&r.name),
            name = esc(&r.name),
            backend = esc(&r.backend),
            steps = r.steps.len(),
            ms = r.duration.as_secs_f64() * 1000.0,
            text = esc(&text),
        );
    }
    out.push_str("</table>\n");
    for r in &order {
        scenario(&mut out, r);
    }
    out.push_str("</div></body></html>\n");
    out
}

/// When, what and where the run was.
fn run_info(out: &mut String, info: &RunInfo) {
    out.push_str("<table class=\"info\">\n");
    let mut row = |name: &str, value: &str| {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(value));
    };
    row("started", &info.started);
    row("otahil", &info.version);
    row("checkout", info.commit.as_deref().unwrap_or("not a git checkout"));
    row("backend", &info.backend);
    for (name, value) in &info.board {
        row(name, value);
    }
    out.push_str("</table>\n");
}

fn scenario(out: &mut String, r: &ScenarioReport) {
    let (class, text) = result_of(r);
    let _ = writeln!(
        out,
        "<section class=\"r-{class}\"><h2 id=\"{}\">{} <span class=\"{class}\">{}</span></h2>",
        esc(&r.name),
        esc(&r.name),
        esc(text.split(' ').next().unwrap_or_default()),
    );
    if let Some(about) = &r.about {
        let _ = writeln!(out, "<p class=\"about\">{}</p>", esc(about.trim()));
    }
    let _ = writeln!(
        out,
        "<p>{} on {}, {:.1} ms</p>",
        esc(&r.file),
        esc(&r.backend),
        r.duration.as_secs_f64() * 1000.0
    );
    out.push_str("<table><tr><th>line</th><th>step</th><th>time</th><th>outcome</th></tr>\n");
    for s in &r.steps {
        let (class, outcome) = match &s.outcome {
            StepOutcome::Passed => ("pass", "passed".to_string()),
            StepOutcome::Skipped(why) => ("skip", format!("skipped: {why}")),
            StepOutcome::Failed(why) => ("fail", format!("failed: {why}")),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.1} ms</td><td class=\"{class}\">{}</td></tr>",
            s.line,
            esc(&s.label),
            s.duration.as_secs_f64() * 1000.0,
            esc(&outcome)
        );
    }
    let why_not = match r.steps.len() {
        0 => "not run: the device did not start".to_string(),
        n => format!("not run: step {n} failed"),
    };
    for (line, label) in &r.not_run {
        let _ = writeln!(
            out,
            "<tr class=\"notrun\"><td>{line}</td><td>{}</td><td></td><td>{}</td></tr>",
            esc(label),
            esc(&why_not)
        );
    }
    out.push_str("</table>\n");
    if let Some(e) = &r.error {
        let _ = writeln!(out, "<p class=\"fail\">{}</p>", esc(e));
    }
    for d in &r.snapshot_diffs {
        diff(out, d);
    }
    for (name, map) in &r.flash_maps {
        let _ = writeln!(out, "<h3>{}</h3>", esc(name));
        flash_map::svg(out, map);
        let _ = writeln!(out, "<pre>{}</pre>", esc(&map.to_text()));
    }
    for s in &r.sweeps {
        sweep::svg(out, s);
    }
    for a in &r.artifacts {
        let href = esc(&a.path.to_string_lossy());
        let _ = writeln!(
            out,
            "<figure><a href=\"{href}\"><img src=\"{href}\" alt=\"{label}\" width=\"480\"></a><figcaption>{label}</figcaption></figure>",
            label = esc(&a.label)
        );
    }
    if !r.log.is_empty() {
        let _ = writeln!(out, "<h3>serial log (normalised)</h3><pre>{}</pre>", esc(&r.log));
    }
    out.push_str("</section>\n");
}

/// A snapshot difference (a unified diff under its title line), added and removed lines marked.
fn diff(out: &mut String, text: &str) {
    let mut lines = text.lines();
    let title = lines.next().unwrap_or_default().trim_end_matches(':');
    let _ = writeln!(out, "<h3 class=\"fail\">{}</h3><pre class=\"diff\">", esc(title));
    for line in lines {
        let class = match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => "add",
            Some(b'-') if !line.starts_with("---") => "del",
            Some(b'@') => "hunk",
            _ => "",
        };
        match class {
            "" => {
                let _ = writeln!(out, "{}", esc(line));
            }
            c => {
                let _ = writeln!(out, "<span class=\"{c}\">{}</span>", esc(line));
            }
        }
    }
    out.push_str("</pre>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CutCell, StepReport, SweepClass, SweepResult};
    use std::time::Duration;

    #[test]
    fn a_self_contained_page_with_every_part() {
        let csv = include_str!("../../fixtures/partitions/esphome-4mb.csv");
        let table = ota_core::partition_csv::parse_csv(csv).unwrap();
        let app = crate::fixtures::find("v1").unwrap().bytes();
        let dump = ota_emu::mkflash::merged_image(&table, &app, 4 << 20).unwrap();
        let r = ScenarioReport {
            name: "a<b".into(),
            about: Some("What <a> shows.".into()),
            file: "scenarios/a.yaml".into(),
            backend: "emu".into(),
            duration: Duration::from_millis(12),
            steps: vec![
                StepReport {
                    line: 4,
                    label: "boot".into(),
                    outcome: StepOutcome::Passed,
                    duration: Duration::ZERO,
                },
                StepReport {
                    line: 5,
                    label: "ota v2".into(),
                    outcome: StepOutcome::Skipped("no power switch".into()),
                    duration: Duration::ZERO,
                },
            ],
            not_run: vec![],
            error: None,
            skipped: None,
            log_tail: vec![],
            snapshots: vec![],
            snapshots_after_skip: vec![],
            snapshot_diffs: vec![],
            notes: vec![],
            flash_maps: vec![("a-1-partitions".into(), crate::inspect::flash_map(&dump))],
            sweeps: vec![SweepResult {
                name: "a-2-sweep".into(),
                classes: vec![SweepClass { phase: "write", outcome: "booted old", cuts: 2 }],
                cells: vec![
                    CutCell { cut: 0, torn: false, phase: "write", outcome: 0 },
                    CutCell { cut: 1, torn: true, phase: "write", outcome: 2 },
                ],
            }],
            log: "I (T) app: running ota_0".into(),
            artifacts: vec![],
        };
        let mut failed = r.clone();
        failed.name = "broken".into();
        failed.steps[1].outcome = StepOutcome::Failed("no status `done` within 30s".into());
        failed.not_run = vec![(9, "snapshot partitions".into())];
        failed.snapshot_diffs =
            vec!["snapshot broken-1-log:\n--- stored\n+++ new\n@@ -1 +1 @@\n-old line\n+new line\n".into()];
        let info = RunInfo {
            started: "2026-12-07 11:30:00 UTC".into(),
            version: "0.1.0".into(),
            commit: Some("c33f523".into()),
            backend: "emu".into(),
            board: vec![("board.mac".into(), "02:07:7a:c3:00:01".into())],
        };
        let html = report(&[r, failed], &info);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("http-equiv"));
        assert!(html.contains("a&lt;b"), "names are escaped");
        assert!(html.contains("What &lt;a&gt; shows."), "the scenario's about");
        for fact in ["2026-12-07 11:30:00 UTC", "c33f523", "board.mac", "02:07:7a:c3:00:01"] {
            assert!(html.contains(fact), "run information: {fact}");
        }
        assert!(html.contains("skipped: no power switch"));
        assert!(html.contains("bootloader selects ota_0"));
        assert!(html.contains("valid: otahil-fw 1.0.0"));
        assert!(html.contains("% full)"), "each slot's fill");
        assert!(html.contains("the slot that boots"), "the flash map's legend");
        assert!(html.contains("per-cut outcomes") && html.contains("#cf222e"));
        assert!(html.contains("I (T) app: running ota_0"));
        // Failures first, in the summary and the sections; a filter to show only them.
        let rows: Vec<&str> = html.lines().filter(|l| l.starts_with("<tr class=\"r-")).collect();
        assert!(rows[0].contains(">broken<") && rows[1].contains(">a&lt;b<"), "{rows:?}");
        assert!(
            html.find("<section class=\"r-fail\">").unwrap()
                < html.find("<section class=\"r-pass\">").unwrap()
        );
        assert!(html.contains("id=\"show-fail\"") && html.contains("#show-fail:checked~.results .r-pass"));
        assert!(html.contains("not run: step 2 failed"), "steps after a failure are listed");
        assert!(
            html.contains("<span class=\"del\">-old line</span>")
                && html.contains("<span class=\"add\">+new line</span>")
        );
    }
}
