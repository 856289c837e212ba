//! A sweep as a picture: every evaluated cut in order, clean cuts on the top row and torn ones
//! below, coloured by what the device did after it; each phase (write, switch, first boot) a
//! labelled segment, at least [`MIN_PHASE_WIDTH`] wide (the switch's 4 cuts would be a pixel of
//! 4,361 to scale); a tooltip per run of like cuts ("cuts 12-340, write, clean: booted old").
//! A rare outcome stays visible however many cuts there are: no run is drawn narrower than
//! [`MIN_RUN_WIDTH`], and narrow runs are drawn last, over their neighbours.

use super::esc;
use crate::report::{CutCell, SweepResult};
use std::fmt::Write;

const WIDTH: f64 = 960.0;
const MIN_RUN_WIDTH: f64 = 3.0;
const MIN_PHASE_WIDTH: f64 = 130.0;
const COLOURS: [&str; 3] = ["#8fb8ff", "#1a7f37", "#cf222e"];
const OUTCOMES: [&str; 3] = ["booted old", "booted new", "failed"];
const CLEAN_TOP: f64 = 30.0;
const TORN_TOP: f64 = 54.0;
const ROW_HEIGHT: f64 = 20.0;

/// Consecutive cuts of one row with the same phase and outcome.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    first: u64,
    last: u64,
    torn: bool,
    phase: &'static str,
    outcome: u8,
}

fn runs(cells: &[CutCell]) -> Vec<Run> {
    let mut sorted: Vec<&CutCell> = cells.iter().collect();
    sorted.sort_by_key(|c| (c.torn, c.cut));
    let mut runs: Vec<Run> = Vec::new();
    for c in sorted {
        match runs.last_mut() {
            Some(r)
                if r.torn == c.torn
                    && r.phase == c.phase
                    && r.outcome == c.outcome
                    && r.last + 1 == c.cut =>
            {
                r.last = c.cut;
            }
            _ => {
                runs.push(Run { first: c.cut, last: c.cut, torn: c.torn, phase: c.phase, outcome: c.outcome })
            }
        }
    }
    runs
}

/// A phase's cuts and where they are drawn.
#[derive(Debug)]
struct Segment {
    phase: &'static str,
    first: u64,
    last: u64,
    left: f64,
    width: f64,
}

/// The phases in cut order (from the clean row, which has every cut), each given its share of
/// the width by its cuts, but never less than [`MIN_PHASE_WIDTH`] (or the whole width
/// evenly, when there are too many phases for that).
fn segments(cells: &[CutCell]) -> Vec<Segment> {
    let mut clean: Vec<&CutCell> = cells.iter().filter(|c| !c.torn).collect();
    if clean.is_empty() {
        clean = cells.iter().collect();
    }
    clean.sort_by_key(|c| c.cut);
    let mut segs: Vec<Segment> = Vec::new();
    for c in clean {
        match segs.last_mut() {
            Some(s) if s.phase == c.phase => s.last = s.last.max(c.cut),
            _ => segs.push(Segment { phase: c.phase, first: c.cut, last: c.cut, left: 0.0, width: 0.0 }),
        }
    }
    let n = segs.len() as f64;
    let floor = MIN_PHASE_WIDTH.min(WIDTH / n.max(1.0));
    // Phases whose share is under the floor get the floor; the rest share what is left.
    let total: u64 = segs.iter().map(|s| s.last - s.first + 1).sum();
    let to_scale = |s: &Segment| (s.last - s.first + 1) as f64 * WIDTH / total.max(1) as f64;
    let small: Vec<bool> = segs.iter().map(|s| to_scale(s) < floor).collect();
    let small_count = small.iter().filter(|&&b| b).count() as f64;
    let large_cuts: u64 =
        segs.iter().zip(&small).filter(|(_, small)| !**small).map(|(s, _)| s.last - s.first + 1).sum();
    let rest = WIDTH - small_count * floor;
    let mut left = 10.0;
    for (s, small) in segs.iter_mut().zip(small) {
        s.width = match small {
            true => floor,
            false => (s.last - s.first + 1) as f64 * rest / large_cuts.max(1) as f64,
        };
        s.left = left;
        left += s.width;
    }
    segs
}

/// Where cut `cut` begins, with the segments' scales.
fn x_of(segs: &[Segment], cut: u64) -> f64 {
    let s = segs.iter().find(|s| cut <= s.last).or(segs.last());
    match s {
        Some(s) => s.left + (cut.saturating_sub(s.first)) as f64 * s.width / (s.last - s.first + 1) as f64,
        None => 10.0,
    }
}

/// `cut 7` or `cuts 12-340`.
fn cut_range(first: u64, last: u64) -> String {
    match first == last {
        true => format!("cut {first}"),
        false => format!("cuts {first}-{last}"),
    }
}

pub(super) fn svg(out: &mut String, sweep: &SweepResult) {
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
    let cuts = sweep.cells.iter().map(|c| c.cut).max().unwrap_or(0) + 1;
    let segs = segments(&sweep.cells);
    let x = |cut: u64| x_of(&segs, cut);
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"100\" role=\"img\" aria-label=\"per-cut outcomes\">",
        // Room on the right for the last phase's label.
        WIDTH + 80.0
    );
    let mut runs = runs(&sweep.cells);
    // Wide runs first: a narrow one (a rare outcome) is drawn over its neighbours.
    runs.sort_by_key(|r| std::cmp::Reverse(r.last - r.first));
    for r in &runs {
        let end = if r.last + 1 == cuts { 10.0 + WIDTH } else { x(r.last + 1) };
        let width = (end - x(r.first)).max(MIN_RUN_WIDTH);
        let centre = (x(r.first) + end) / 2.0;
        let left = (centre - width / 2.0).max(10.0);
        let cuts = cut_range(r.first, r.last);
        let _ = writeln!(
            out,
            "<rect x=\"{left:.2}\" y=\"{}\" width=\"{width:.2}\" height=\"{ROW_HEIGHT}\" fill=\"{}\"><title>{cuts}, {}, {}: {}</title></rect>",
            if r.torn { TORN_TOP } else { CLEAN_TOP },
            COLOURS[r.outcome.min(2) as usize],
            r.phase,
            if r.torn { "torn" } else { "clean" },
            OUTCOMES[r.outcome.min(2) as usize]
        );
    }
    // Each phase: a boundary where it begins and its name and cuts above it.
    for (i, s) in segs.iter().enumerate() {
        let cuts = cut_range(s.first, s.last);
        let _ = writeln!(
            out,
            "<line x1=\"{left:.1}\" y1=\"{}\" x2=\"{left:.1}\" y2=\"{}\" stroke=\"#24292f\" stroke-dasharray=\"3,2\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{}: {cuts}</text>",
            CLEAN_TOP - 10.0,
            TORN_TOP + ROW_HEIGHT + 2.0,
            s.left + 3.0,
            if i % 2 == 0 { 12 } else { 24 },
            esc(s.phase),
            left = s.left,
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"92\" font-size=\"11\">cut 0</text><text x=\"{:.1}\" y=\"92\" font-size=\"11\" text-anchor=\"end\">cut {}</text>",
        WIDTH + 10.0,
        cuts - 1
    );
    out.push_str("</svg>\n<p class=\"legend\">");
    for (colour, what) in COLOURS.iter().zip(OUTCOMES) {
        let _ = write!(out, "<span><i class=\"sw\" style=\"background:{colour}\"></i>{what}</span>");
    }
    out.push_str("<span>top row: clean cut; bottom row: torn; short phases drawn wider than to scale; point at a cell for its cuts</span></p>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(cut: u64, torn: bool, phase: &'static str, outcome: u8) -> CutCell {
        CutCell { cut, torn, phase, outcome }
    }

    #[test]
    fn like_cuts_merge_into_runs_per_row() {
        let cells = [
            cell(0, false, "write", 0),
            cell(1, false, "write", 0),
            cell(2, false, "switch", 0),
            cell(3, false, "switch", 1),
            cell(0, true, "write", 0),
            cell(1, true, "write", 2),
        ];
        let r = runs(&cells);
        assert_eq!(r.len(), 5, "{r:?}");
        assert_eq!(r[0], Run { first: 0, last: 1, torn: false, phase: "write", outcome: 0 });
        assert_eq!(r[2], Run { first: 3, last: 3, torn: false, phase: "switch", outcome: 1 });
    }

    /// The one cut of 4,361 that booted the new image is drawn wide enough to see, on top, and
    /// its tooltip names it.
    #[test]
    fn a_single_rare_cut_is_visible_and_named() {
        let mut cells: Vec<CutCell> = (0..4361).map(|c| cell(c, false, "write", 0)).collect();
        cells[4300].outcome = 1;
        let sweep = SweepResult { name: "s".into(), classes: vec![], cells };
        let mut out = String::new();
        svg(&mut out, &sweep);
        let rare = out.lines().find(|l| l.contains("<title>cut 4300, write, clean: booted new")).unwrap();
        let width: f64 = rare.split("width=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
        assert!(width >= MIN_RUN_WIDTH, "{rare}");
        let rare_at = out.find("cut 4300,").unwrap();
        assert!(out.find("cuts 0-4299").unwrap() < rare_at, "drawn after the wide run");
        assert!(out.contains("write: cuts 0-4360"), "the phase is marked");
    }

    /// A short phase after a long one gets room for its cuts and its name.
    #[test]
    fn short_phases_get_a_readable_width() {
        let mut cells: Vec<CutCell> = (0..4350).map(|c| cell(c, false, "write", 0)).collect();
        cells.extend((4350..4354).map(|c| cell(c, false, "switch", 0)));
        cells.extend((4354..4362).map(|c| cell(c, false, "first_boot", 0)));
        let segs = segments(&cells);
        assert_eq!(segs.iter().map(|s| s.phase).collect::<Vec<_>>(), ["write", "switch", "first_boot"]);
        assert_eq!((segs[1].width, segs[2].width), (MIN_PHASE_WIDTH, MIN_PHASE_WIDTH));
        let total: f64 = segs.iter().map(|s| s.width).sum();
        assert!((total - WIDTH).abs() < 1e-6, "{total}");
        assert!((x_of(&segs, 4350) - segs[1].left).abs() < 1e-6);
        assert!(x_of(&segs, 4349) < x_of(&segs, 4350));
    }
}
