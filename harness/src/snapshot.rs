//! Snapshot files in insta's format, compared without insta for the CLI (`cargo test` uses
//! insta itself on the same files). A mismatch or a missing snapshot writes `NAME.snap.new`;
//! nothing is ever accepted automatically: `otahil snapshots review|accept|reject` (or
//! `cargo insta review`) decides.

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
    /// Differs: `.snap.new` written; the first differing line, expected vs actual, and the
    /// difference as a unified diff.
    Differs {
        new: PathBuf,
        line: usize,
        expected: String,
        actual: String,
        diff: String,
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
        diff: diff(&expected, content),
    })
}

/// `old` to `new` as a unified diff (3 lines of context), `-` for the stored lines and `+` for
/// the new ones.
pub fn diff(old: &str, new: &str) -> String {
    let (old, new) = (format!("{}\n", old.trim_end()), format!("{}\n", new.trim_end()));
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header("stored", "new")
        .to_string()
}

/// A snapshot waiting for a decision: its `.snap.new` and the stored `.snap` it would replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub name: String,
    pub new: PathBuf,
    pub stored: PathBuf,
}

impl Pending {
    /// The stored content (`None`: a new snapshot) and the new one.
    pub fn contents(&self) -> (Option<String>, String) {
        (read(&self.stored), read(&self.new).unwrap_or_default())
    }

    /// The new snapshot replaces the stored one.
    pub fn accept(&self) -> std::io::Result<()> {
        std::fs::rename(&self.new, &self.stored)
    }

    pub fn reject(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.new)
    }
}

/// The snapshots in `dir` waiting for a decision, by name; only `scenario`'s when given
/// (its snapshots are named `SCENARIO-N-KIND`).
pub fn pending(dir: &Path, scenario: Option<&str>) -> std::io::Result<Vec<Pending>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let new = entry?.path();
        let Some(name) = new.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".snap.new"))
        else {
            continue;
        };
        if let Some(s) = scenario
            && !of_scenario(name, s)
        {
            continue;
        }
        out.push(Pending { name: name.to_string(), stored: path(dir, name), new: new.clone() });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether snapshot `name` is one of `scenario`'s (`SCENARIO-N-…`).
fn of_scenario(name: &str, scenario: &str) -> bool {
    name.strip_prefix(scenario)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
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

    #[test]
    fn pending_snapshots_are_accepted_or_rejected_by_scenario() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a-1-log", "a-2-partitions", "ab-1-log", "a-b-1-log"] {
            check(dir.path(), name, "x\n").unwrap();
        }
        let names = |p: Vec<Pending>| p.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(
            names(pending(dir.path(), None).unwrap()),
            ["a-1-log", "a-2-partitions", "a-b-1-log", "ab-1-log"]
        );
        assert_eq!(names(pending(dir.path(), Some("a")).unwrap()), ["a-1-log", "a-2-partitions"]);
        assert_eq!(names(pending(dir.path(), Some("a-b")).unwrap()), ["a-b-1-log"]);
        for p in pending(dir.path(), Some("a")).unwrap() {
            assert_eq!(p.contents(), (None, "x\n".to_string()));
            p.accept().unwrap();
        }
        assert_eq!(check(dir.path(), "a-1-log", "x").unwrap(), Verdict::Matches);
        let Verdict::Differs { diff, .. } = check(dir.path(), "a-1-log", "y\n").unwrap() else { panic!() };
        assert!(diff.contains("-x\n+y\n"), "{diff}");
        for p in pending(dir.path(), None).unwrap() {
            p.reject().unwrap();
        }
        assert!(pending(dir.path(), None).unwrap().is_empty());
        assert_eq!(
            read(&path(dir.path(), "a-1-log")).unwrap().trim_end(),
            "x",
            "a rejection keeps the stored one"
        );
    }
}
