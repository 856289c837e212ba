//! The HTML report: one self-contained file (no scripts, no external resources) a CI user opens
//! in a browser — the summary table; per scenario its steps with outcome and time (skipped steps
//! with the reason), the normalised serial log, each partition state with a flash map picture
//! (partitions to scale, which slot boots and why, both otadata copies, every slot's image), and
//! for sweeps a picture of every cut's outcome.

use crate::inspect::{Boots, FlashMap, SlotImage, TableState};
use crate::report::{ScenarioReport, StepOutcome, SweepResult};
use std::fmt::Write;

fn esc(text: &str) -> String {
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
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px}";

/// The report for `reports` as one HTML document.
pub fn report(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    let passed = reports.iter().filter(|r| r.passed() && r.skipped.is_none()).count();
    let skipped = reports.iter().filter(|r| r.skipped.is_some()).count();
    let failed = reports.len() - passed - skipped;
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>otahil report</title><style>{STYLE}</style></head><body>\n\
         <h1>otahil: {passed} passed, {failed} failed, {skipped} skipped</h1>\n"
    );
    out.push_str(
        "<table><tr><th>scenario</th><th>backend</th><th>steps</th><th>time</th><th>result</th></tr>\n",
    );
    for r in reports {
        let (class, text) = result_of(r);
        let _ = writeln!(
            out,
            "<tr><td><a href=\"#{id}\">{name}</a></td><td>{backend}</td><td>{steps}</td><td>{ms:.1} ms</td><td class=\"{class}\">{text}</td></tr>",
            id = esc(&r.name),
            name = esc(&r.name),
            backend = esc(&r.backend),
            steps = r.steps.len(),
            ms = r.duration.as_secs_f64() * 1000.0,
            text = esc(&text),
        );
    }
    out.push_str("</table>\n");
    for r in reports {
        scenario(&mut out, r);
    }
    out.push_str("</body></html>\n");
    out
}

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

fn scenario(out: &mut String, r: &ScenarioReport) {
    let (class, text) = result_of(r);
    let _ = writeln!(
        out,
        "<h2 id=\"{}\">{} <span class=\"{class}\">{}</span></h2>\n<p>{} on {}</p>",
        esc(&r.name),
        esc(&r.name),
        esc(text.split(' ').next().unwrap_or_default()),
        esc(&r.file),
        esc(&r.backend)
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
    out.push_str("</table>\n");
    if let Some(e) = &r.error {
        let _ = writeln!(out, "<p class=\"fail\">{}</p>", esc(e));
    }
    for (name, map) in &r.flash_maps {
        let _ = writeln!(out, "<h3>{}</h3>", esc(name));
        flash_map_svg(out, map);
        let _ = writeln!(out, "<pre>{}</pre>", esc(&map.to_text()));
    }
    for sweep in &r.sweeps {
        sweep_svg(out, sweep);
    }
    if !r.log.is_empty() {
        let _ = writeln!(out, "<h3>serial log (normalised)</h3><pre>{}</pre>", esc(&r.log));
    }
}

const WIDTH: f64 = 960.0;

fn partition_colour(type_name: &str, subtype: &str) -> &'static str {
    match (type_name, subtype) {
        ("app", _) => "#cfe2ff",
        (_, "ota") => "#ffe8a3",
        (_, "nvs") => "#d3f9d8",
        _ => "#e9ecef",
    }
}

/// The flash to scale (bootloader and table area, then every partition), the slot that boots
/// and why, both otadata copies, and what each app slot holds.
fn flash_map_svg(out: &mut String, map: &FlashMap) {
    let t: &TableState = match &map.table {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "<p class=\"fail\">partition table invalid: {}</p>", esc(e));
            return;
        }
    };
    let scale = WIDTH / map.flash_size.max(1) as f64;
    let x = |offset: u32| 10.0 + offset as f64 * scale;
    let height = 150 + 18 * t.slots.len();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"flash map\">",
        WIDTH + 20.0
    );
    // The bootloader and partition table live before the first partition.
    let first = t.partitions.iter().map(|p| p.offset).min().unwrap_or(0);
    let _ = writeln!(
        out,
        "<rect x=\"{:.1}\" y=\"20\" width=\"{:.1}\" height=\"40\" fill=\"#dee2e6\" stroke=\"#555\"/>",
        x(0),
        (x(first) - x(0)).max(1.0)
    );
    let booting = match &t.boots {
        Boots::Selected(s) => Some(s.as_str()),
        Boots::Fallback { boots, .. } => Some(boots.as_str()),
        Boots::Nothing => None,
    };
    for p in &t.partitions {
        let w = (p.size as f64 * scale).max(1.0);
        let boots_here = p.slot.as_deref().is_some_and(|s| Some(s) == booting);
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"20\" width=\"{w:.1}\" height=\"40\" fill=\"{}\" stroke=\"{}\" stroke-width=\"{}\"><title>{} {} {} at {:#x}, {} bytes</title></rect>",
            x(p.offset),
            partition_colour(&p.type_name, &p.subtype_name),
            if boots_here { "#1a7f37" } else { "#555" },
            if boots_here { 4 } else { 1 },
            esc(&p.label),
            esc(&p.type_name),
            esc(&p.subtype_name),
            p.offset,
            p.size
        );
        if w > 40.0 {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"44\" font-size=\"11\">{}</text>",
                x(p.offset) + 4.0,
                esc(&p.label)
            );
        }
    }
    let _ = writeln!(out, "<text x=\"10\" y=\"14\" font-size=\"11\">0x0</text>");
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"14\" font-size=\"11\" text-anchor=\"end\">{:#x}</text>",
        WIDTH + 10.0,
        map.flash_size
    );
    let boots = match &t.boots {
        Boots::Selected(s) => format!("boots {s}"),
        Boots::Fallback { boots, selected } => {
            format!("boots {boots} (fallback: {selected} does not verify)")
        }
        Boots::Nothing => "boots NOTHING: bricked".into(),
    };
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"82\" font-size=\"13\" font-weight=\"600\" fill=\"{}\">bootloader selects {} ({}); {}</text>",
        if booting.is_some() { "#1a7f37" } else { "#cf222e" },
        esc(&t.selects),
        esc(&t.reason),
        esc(&boots)
    );
    match &t.otadata {
        Some([c0, c1]) => {
            let _ = writeln!(
                out,
                "<text x=\"10\" y=\"102\" font-size=\"12\">otadata copy0: {}   copy1: {}</text>",
                esc(c0),
                esc(c1)
            );
        }
        None => {
            let _ = writeln!(out, "<text x=\"10\" y=\"102\" font-size=\"12\">no otadata partition</text>");
        }
    }
    for (i, slot) in t.slots.iter().enumerate() {
        let y = 126 + 18 * i;
        let (colour, text) = match &slot.image {
            SlotImage::Erased => ("#6e7781", "erased".to_string()),
            SlotImage::Valid { project, version, .. } => ("#1a7f37", format!("valid: {project} {version}")),
            SlotImage::Invalid { kind, .. } => ("#cf222e", format!("invalid ({kind})")),
        };
        let _ = writeln!(
            out,
            "<rect x=\"10\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"28\" y=\"{}\" font-size=\"12\">{} ({}): {}</text>",
            y - 10,
            y,
            esc(&slot.name),
            esc(&slot.label),
            esc(&text)
        );
    }
    out.push_str("</svg>\n");
}

/// Every evaluated cut as one cell, in order (clean and torn variants in two rows), coloured by
/// what the device did after it.
fn sweep_svg(out: &mut String, sweep: &SweepResult) {
    let _ = writeln!(out, "<h3>{}</h3>", esc(&sweep.name));
    out.push_str("<table><tr><th>cut in</th><th>outcome</th><th>cuts</th></tr>\n");
    for c in &sweep.classes {
        let class = if c.outcome == "failed" { "fail" } else { "pass" };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            c.phase, c.outcome, c.cuts
        );
    }
    out.push_str("</table>\n");
    if sweep.cells.is_empty() {
        return;
    }
    const COLOURS: [&str; 3] = ["#8fb8ff", "#1a7f37", "#cf222e"];
    let cuts = sweep.cells.iter().map(|c| c.cut).max().unwrap_or(0) + 1;
    let cell = (WIDTH / cuts as f64).max(0.2);
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"70\" role=\"img\" aria-label=\"per-cut outcomes\">",
        WIDTH + 20.0
    );
    for c in &sweep.cells {
        let y = if c.torn { 32 } else { 10 };
        let _ = writeln!(
            out,
            "<rect x=\"{:.2}\" y=\"{y}\" width=\"{:.2}\" height=\"20\" fill=\"{}\"/>",
            10.0 + c.cut as f64 * cell,
            cell.max(0.5),
            COLOURS[c.outcome.min(2) as usize]
        );
    }
    out.push_str("</svg>\n<p class=\"legend\">");
    for (colour, what) in COLOURS.iter().zip(["booted old", "booted new", "failed"]) {
        let _ = write!(out, "<span><i class=\"sw\" style=\"background:{colour}\"></i>{what}</span>");
    }
    out.push_str("<span>top row: clean cut; bottom row: torn</span></p>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CutCell, StepReport, SweepClass};
    use std::time::Duration;

    #[test]
    fn a_self_contained_page_with_every_part() {
        let csv = include_str!("../../fixtures/partitions/esphome-4mb.csv");
        let table = ota_core::partition_csv::parse_csv(csv).unwrap();
        let app = crate::fixtures::find("v1").unwrap().bytes();
        let dump = ota_emu::mkflash::merged_image(&table, &app, 4 << 20).unwrap();
        let r = ScenarioReport {
            name: "a<b".into(),
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
        };
        let html = report(&[r]);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("http-equiv"));
        assert!(html.contains("a&lt;b"), "names are escaped");
        assert!(html.contains("skipped: no power switch"));
        assert!(html.contains("bootloader selects ota_0"));
        assert!(html.contains("valid: otahil-fw 1.0.0"));
        assert!(html.contains("per-cut outcomes") && html.contains("#cf222e"));
        assert!(html.contains("I (T) app: running ota_0"));
    }
}
