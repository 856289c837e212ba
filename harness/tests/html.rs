//! The HTML report, opened in a real browser: Debian's headless chromium renders it and the
//! screenshot is kept (`target/otahil-report.png`). Skipped, saying why, where there is no
//! chromium.

use otahil::emu::{EmuBackend, EmuProgram};
use otahil::{runner, scenario};
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Ok(p.into());
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string()));
        }
    }
    Err("no chromium on PATH (Debian: apt-get install chromium; or set CHROMIUM)".into())
}

#[test]
fn the_html_report_renders_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let program =
        EmuProgram { program: env!("CARGO_BIN_EXE_otahil").into(), prefix_args: vec!["emu".into()] };
    let backend = EmuBackend { program };
    let options = runner::RunOptions { keep_cuts: true, ..runner::RunOptions::default() };
    let reports: Vec<_> = ["happy-path", "power-loss-mid-write", "power-cut-sweep"]
        .iter()
        .map(|name| {
            let s = scenario::load(&root.join(format!("scenarios/{name}.yaml"))).unwrap();
            runner::run(&s, &backend, &options)
        })
        .collect();
    for r in &reports {
        assert_eq!(r.failure_details(), None, "{}", r.name);
    }
    let info = otahil::report::RunInfo {
        started: otahil::report::utc_text(std::time::SystemTime::now()),
        version: env!("CARGO_PKG_VERSION").into(),
        commit: None,
        backend: "emu".into(),
        board: vec![],
    };
    let html = otahil::html::report(&reports, &info);
    assert!(html.contains("bootloader selects ota_1"), "the happy path's flash map");
    assert!(html.contains("per-cut outcomes"), "the sweep's picture");
    let target = root.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let page = target.join("otahil-report.html");
    std::fs::write(&page, &html).unwrap();
    let browser = match chromium() {
        Ok(b) => b,
        Err(why) => {
            println!("SKIPPED screenshot of the HTML report: {why}");
            return;
        }
    };
    let shot = target.join("otahil-report.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,1600"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .expect("chromium starts");
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real picture ({} bytes)", png.len());
    println!("screenshot of the HTML report: {}", shot.display());
}
