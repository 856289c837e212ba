//! Snapshot files in insta's format, compared without insta for the CLI (`cargo test` uses
//! insta itself on the same files). A mismatch or a missing snapshot writes `NAME.snap.new`
//! for `cargo insta review`; nothing is ever accepted automatically.

use std::path::{Path, PathBuf};

/// Where insta's test (`harness/tests/scenarios.rs`) keeps its snapshots.
pub const INSTA_SOURCE: &str = "harness/tests/scenarios.rs";

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.snap"))
}

/// The content of an insta `.snap` file (everything after its header).
pub fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    Some(rest[end + 5..].to_string())
}

fn render(name: &str, content: &str) -> String {
    format!("---\nsource: {INSTA_SOURCE}\nexpression: {name}\n---\n{}\n", content.trim_end())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Matches,
    /// No snapshot yet: `.snap.new` written for review.
    New(PathBuf),
    /// Differs: `.snap.new` written; the first differing line, expected vs actual.
    Differs {
        new: PathBuf,
        line: usize,
        expected: String,
        actual: String,
    },
}

/// Compares `content` with the stored snapshot `name` in `dir`.
pub fn check(dir: &Path, name: &str, content: &str) -> std::io::Result<Verdict> {
    let stored = path(dir, name);
    let new = dir.join(format!("{name}.snap.new"));
    let Some(expected) = read(&stored) else {
        std::fs::create_dir_all(dir)?;
        std::fs::write(&new, render(name, content))?;
        return Ok(Verdict::New(new));
    };
    if expected.trim_end() == content.trim_end() {
        if new.exists() {
            std::fs::remove_file(&new)?;
        }
        return Ok(Verdict::Matches);
    }
    std::fs::write(&new, render(name, content))?;
    let (e, a): (Vec<&str>, Vec<&str>) =
        (expected.trim_end().lines().collect(), content.trim_end().lines().collect());
    let line = (0..e.len().max(a.len())).find(|&i| e.get(i) != a.get(i)).unwrap_or(0);
    Ok(Verdict::Differs {
        new,
        line: line + 1,
        expected: e.get(line).unwrap_or(&"<end>").to_string(),
        actual: a.get(line).unwrap_or(&"<end>").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_diff() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(check(dir.path(), "s", "a\nb\n").unwrap(), Verdict::New(_)));
        let new = dir.path().join("s.snap.new");
        std::fs::rename(&new, path(dir.path(), "s")).unwrap();
        assert_eq!(check(dir.path(), "s", "a\nb").unwrap(), Verdict::Matches);
        match check(dir.path(), "s", "a\nc\n").unwrap() {
            Verdict::Differs { line, expected, actual, .. } => {
                assert_eq!((line, expected.as_str(), actual.as_str()), (2, "b", "c"));
            }
            v => panic!("{v:?}"),
        }
    }
}
