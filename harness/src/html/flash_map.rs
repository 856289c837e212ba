//! A partition state as a picture: the flash to scale (the bootloader and table area, then every
//! partition, each labelled: inside when it is wide enough, else below with a leader line), how
//! much of each app slot its image fills, the slot that boots and why, both otadata copies, what
//! each slot holds, and a legend.

use super::esc;
use crate::inspect::{Boots, FlashMap, SlotImage, TableState};
use std::fmt::Write;

const WIDTH: f64 = 960.0;
const BAR_TOP: f64 = 20.0;
const BAR_HEIGHT: f64 = 40.0;
/// Rows of labels for regions too narrow to hold theirs.
const CALLOUT_ROWS: [f64; 3] = [76.0, 90.0, 104.0];

/// Partition colours by kind, also the legend's.
const APP: &str = "#cfe2ff";
const OTADATA: &str = "#ffe8a3";
const NVS: &str = "#d3f9d8";
const OTHER: &str = "#e9ecef";
const BOOT_AREA: &str = "#ced4da";
const FILL: &str = "#6ea8fe";
const BOOTS: &str = "#1a7f37";

fn partition_colour(type_name: &str, subtype: &str) -> &'static str {
    match (type_name, subtype) {
        ("app", _) => APP,
        (_, "ota") => OTADATA,
        (_, "nvs") => NVS,
        _ => OTHER,
    }
}

/// A region of the bar and its label.
struct Region<'a> {
    offset: u32,
    size: u32,
    label: &'a str,
}

/// Roughly how wide `text` is at 11 px.
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * 6.5 + 8.0
}

pub(super) fn svg(out: &mut String, map: &FlashMap) {
    let t: &TableState = match &map.table {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "<p class=\"fail\">partition table invalid: {}</p>", esc(e));
            return;
        }
    };
    let scale = WIDTH / map.flash_size.max(1) as f64;
    let x = |offset: u32| 10.0 + offset as f64 * scale;
    let status_top = CALLOUT_ROWS[2] + 22.0;
    let height = status_top as usize + 50 + 18 * t.slots.len();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"flash map\">",
        WIDTH + 20.0
    );
    // The second-stage bootloader and the partition table live before the first partition.
    let first = t.partitions.iter().map(|p| p.offset).min().unwrap_or(0);
    let mut regions = vec![Region { offset: 0, size: first, label: "boot+table" }];
    let _ = writeln!(
        out,
        "<rect x=\"{:.1}\" y=\"{BAR_TOP}\" width=\"{:.1}\" height=\"{BAR_HEIGHT}\" fill=\"{BOOT_AREA}\" stroke=\"#555\"><title>bootloader and partition table, 0x0 to {first:#x}</title></rect>",
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
            "<rect x=\"{:.1}\" y=\"{BAR_TOP}\" width=\"{w:.1}\" height=\"{BAR_HEIGHT}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"{}\"><title>{} {} {} at {:#x}, {} bytes</title></rect>",
            x(p.offset),
            partition_colour(&p.type_name, &p.subtype_name),
            if boots_here { BOOTS } else { "#555" },
            if boots_here { 4 } else { 1 },
            esc(&p.label),
            esc(&p.type_name),
            esc(&p.subtype_name),
            p.offset,
            p.size
        );
        // How much of the slot its image fills, as a strip along the bottom.
        let image = t.slots.iter().find(|s| Some(&s.name) == p.slot.as_ref()).map(|s| &s.image);
        if let Some(SlotImage::Valid { len, .. }) = image {
            let _ = writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"8\" fill=\"{FILL}\"><title>{}: image of {len} bytes, {:.0}% of the slot</title></rect>",
                x(p.offset),
                BAR_TOP + BAR_HEIGHT - 9.0,
                (f64::from(*len) * scale).max(1.0),
                esc(&p.label),
                f64::from(*len) * 100.0 / f64::from(p.size.max(1))
            );
        }
        regions.push(Region { offset: p.offset, size: p.size, label: &p.label });
    }
    labels(out, &regions, scale);
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
        "<text x=\"10\" y=\"{status_top}\" font-size=\"13\" font-weight=\"600\" fill=\"{}\">bootloader selects {} ({}); {}</text>",
        if booting.is_some() { BOOTS } else { "#cf222e" },
        esc(&t.selects),
        esc(&t.reason),
        esc(&boots)
    );
    let otadata_y = status_top + 20.0;
    match &t.otadata {
        Some([c0, c1]) => {
            let _ = writeln!(
                out,
                "<text x=\"10\" y=\"{otadata_y}\" font-size=\"12\">otadata copy0: {}   copy1: {}</text>",
                esc(c0),
                esc(c1)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "<text x=\"10\" y=\"{otadata_y}\" font-size=\"12\">no otadata partition</text>"
            );
        }
    }
    for (i, slot) in t.slots.iter().enumerate() {
        let y = otadata_y + 24.0 + 18.0 * i as f64;
        let size = t.partitions.iter().find(|p| p.slot.as_ref() == Some(&slot.name)).map_or(0, |p| p.size);
        let (colour, text) = match &slot.image {
            SlotImage::Erased => ("#6e7781", "erased".to_string()),
            SlotImage::Valid { project, version, len, .. } => (
                BOOTS,
                format!(
                    "valid: {project} {version}, {len} of {size} bytes ({:.0}% full)",
                    f64::from(*len) * 100.0 / f64::from(size.max(1))
                ),
            ),
            SlotImage::Invalid { kind, .. } => ("#cf222e", format!("invalid ({kind})")),
        };
        let _ = writeln!(
            out,
            "<rect x=\"10\" y=\"{:.0}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"28\" y=\"{y:.0}\" font-size=\"12\">{} ({}): {}</text>",
            y - 10.0,
            esc(&slot.name),
            esc(&slot.label),
            esc(&text)
        );
    }
    out.push_str("</svg>\n");
    legend(out);
}

/// Each region's label: inside when it fits, else in a row below with a line up to the region
/// (rows taken in turn, so neighbours' labels do not overlap).
fn labels(out: &mut String, regions: &[Region<'_>], scale: f64) {
    let x = |offset: u32| 10.0 + offset as f64 * scale;
    // Where each callout row is free from.
    let mut free_from = [f64::MIN; 3];
    for r in regions {
        let w = r.size as f64 * scale;
        if w >= text_width(r.label) {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
                x(r.offset) + 4.0,
                BAR_TOP + 18.0,
                esc(r.label)
            );
            continue;
        }
        let centre = x(r.offset) + w / 2.0;
        let row = (0..CALLOUT_ROWS.len()).find(|&i| free_from[i] <= centre).unwrap_or_else(|| {
            // All taken this far right: the row that frees up first.
            (0..CALLOUT_ROWS.len()).min_by(|&a, &b| free_from[a].total_cmp(&free_from[b])).unwrap_or(0)
        });
        let y = CALLOUT_ROWS[row];
        let start = centre.max(free_from[row]);
        free_from[row] = start + text_width(r.label);
        let _ = writeln!(
            out,
            "<line x1=\"{centre:.1}\" y1=\"{:.1}\" x2=\"{centre:.1}\" y2=\"{:.1}\" stroke=\"#555\" stroke-width=\"0.8\"/><text x=\"{start:.1}\" y=\"{y:.1}\" font-size=\"11\">{}</text>",
            BAR_TOP + BAR_HEIGHT,
            y - 10.0,
            esc(r.label)
        );
    }
}

fn legend(out: &mut String) {
    out.push_str("<p class=\"legend\">");
    for (colour, what) in [
        (BOOT_AREA, "bootloader and partition table"),
        (APP, "app slot"),
        (FILL, "its image (share of the slot)"),
        (OTADATA, "otadata"),
        (NVS, "nvs"),
        (OTHER, "other data"),
    ] {
        let _ = write!(out, "<span><i class=\"sw\" style=\"background:{colour}\"></i>{what}</span>");
    }
    let _ = writeln!(
        out,
        "<span><i class=\"sw\" style=\"border:3px solid {BOOTS}\"></i>the slot that boots</span></p>"
    );
}
