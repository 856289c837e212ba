//! Serial capture: every line the device printed, boot boundaries, `expect_log` matching, and
//! the normalisation that makes a log the same on every run and every backend.

use ota_core::log::Milestone;
use regex::Regex;
use std::sync::LazyLock;

/// The lines of one scenario run, with a cursor that `expect_log` and reboots move.
#[derive(Debug, Default)]
pub struct SerialLog {
    pub lines: Vec<String>,
    cursor: usize,
}

impl SerialLog {
    pub fn push(&mut self, line: String) {
        self.lines.push(line);
    }

    /// The device is about to (re)boot: later expectations only look at what it prints next.
    pub fn mark_boot(&mut self) {
        self.cursor = self.lines.len();
    }

    /// The first line after the cursor that matches; the cursor moves past it.
    pub fn find(&mut self, pattern: &Regex) -> Option<String> {
        let i = self.lines[self.cursor..].iter().position(|l| pattern.is_match(l))?;
        self.cursor += i + 1;
        Some(self.lines[self.cursor - 1].clone())
    }

    /// Whether any line after the cursor matches (the cursor stays).
    pub fn contains(&self, pattern: &Regex) -> bool {
        self.lines[self.cursor..].iter().any(|l| pattern.is_match(l))
    }

    /// The last `n` lines, for failure reports.
    pub fn tail(&self, n: usize) -> &[String] {
        &self.lines[self.lines.len().saturating_sub(n)..]
    }
}

/// Whether `line` ends a boot: the app serves OTA, hangs in its self-test, or halts.
pub fn ends_boot(line: &str) -> bool {
    matches!(Milestone::of(line), Some(Milestone::Serving | Milestone::SelfTestHung | Milestone::Halted))
}

/// Whether `line` is the device announcing that it restarts by itself: `Some(true)` after a
/// completed update, `Some(false)` for the boot guard's rollback.
pub fn announced_reboot(line: &str) -> Option<bool> {
    match Milestone::of(line) {
        Some(Milestone::RebootIntoUpdate) => Some(true),
        Some(Milestone::RebootForRollback) => Some(false),
        _ => None,
    }
}

static CATALOGUE_LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([EWI]) \((\d+)\) ([a-z_][a-z0-9_]*): (.*)$").expect("static regex"));

/// The log as a snapshot sees it: the app's catalogue lines and the bootloader lines whose text
/// is ESP-IDF's (so ROM banners, the real bootloader's table dump and the emulator's selection
/// details, which differ between backends, drop out), timestamps replaced by `T`.
pub fn normalise(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        if let Some(c) = CATALOGUE_LINE.captures(line)
            && (ota_core::log::APP_TAGS.contains(&&c[3])
                || (&c[3] == "boot" && ota_core::log::ESP_IDF_BOOT_TEXTS.iter().any(|t| c[4].starts_with(t))))
        {
            out.push_str(&format!("{} (T) {}: {}\n", &c[1], &c[3], &c[4]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_keeps_catalogue_lines_only() {
        let lines = vec![
            "ESP-ROM:esp32c3-api1-20210207".to_string(),
            "I (14) boot: Partition Table:".to_string(),
            "I (0) boot: otadata[1] seq=2 state=NEW selects ota_1".to_string(),
            "I (123) boot: Loaded app from partition at offset 0x10000".to_string(),
            "W (5) ota: Auth failed! Passwords do not match".to_string(),
            "I (9) wifi: connected".to_string(),
        ];
        assert_eq!(
            normalise(&lines),
            "I (T) boot: Loaded app from partition at offset 0x10000\nW (T) ota: Auth failed! Passwords do not match\n"
        );
    }

    #[test]
    fn reboots_the_device_announces_and_ends_of_boot() {
        assert_eq!(announced_reboot("I (9) ota: Rebooting into the new image..."), Some(true));
        assert_eq!(announced_reboot("I (9) rollback: Rebooting..."), Some(false));
        assert_eq!(announced_reboot("I (9) ota: client connected"), None);
        assert!(ends_boot("I (1) ota: listening on port 3232"));
        assert!(!ends_boot("I (0) app: running ota_0 (app0): otahil-fw version 1.0.0"));
    }

    #[test]
    fn cursor_moves_past_matches_and_boots() {
        let mut log = SerialLog::default();
        log.push("I (1) app: running ota_0 (app0): x version 1.0.0".into());
        let re = Regex::new("version 1").unwrap();
        assert!(log.find(&re).is_some());
        assert!(log.find(&re).is_none(), "a line matches once");
        log.push("I (1) app: running ota_0 (app0): x version 1.0.0".into());
        log.mark_boot();
        assert!(!log.contains(&re));
    }
}
