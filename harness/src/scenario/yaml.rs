//! Reading scenario YAML, whatever the step: errors with file, line and column, the loader's
//! messages in the scenario's words, durations, images, and an `ota:` step's options kept as
//! written ([`Options`]) so the step's update path reads its own. Knows no update path.

use crate::fixtures;
use serde::Deserialize;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A scenario that cannot be loaded: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            // Not at a place in the file (it could not be read at all).
            0 => write!(f, "{}: {}", self.file.display(), self.message),
            _ => write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message),
        }
    }
}

/// An image resolved from a fixture name or a file.
#[derive(Clone)]
pub struct Image {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({}, {} bytes)", self.name, self.bytes.len())
    }
}

/// Where a scenario is read from: errors name the file, relative image and table paths start
/// at its directory.
pub struct Ctx<'a> {
    pub file: &'a Path,
    pub dir: &'a Path,
}

impl Ctx<'_> {
    pub fn err<T>(&self, line: u64, column: u64, message: impl Into<String>) -> Result<T, ScenarioError> {
        Err(ScenarioError { file: self.file.to_path_buf(), line, column, message: message.into() })
    }

    pub fn at<T, U>(&self, s: &Spanned<U>, message: impl Into<String>) -> Result<T, ScenarioError> {
        self.err(s.referenced.line(), s.referenced.column(), message)
    }

    pub fn image(&self, s: &Spanned<String>) -> Result<Image, ScenarioError> {
        if let Some(f) = fixtures::find(&s.value) {
            return Ok(Image { name: s.value.clone(), bytes: f.bytes() });
        }
        let path = self.dir.join(&s.value);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Image { name: s.value.clone(), bytes }),
            Err(e) => self.at(
                s,
                format!(
                    "unknown image `{}`: expected a fixture ({}) or a file relative to the scenario ({}: {e})",
                    s.value,
                    fixtures::names(),
                    path.display()
                ),
            ),
        }
    }

    /// The duration at `s`, its errors naming it `what`.
    pub fn duration(&self, what: &str, s: &Spanned<DurationText>) -> Result<Duration, ScenarioError> {
        parse_duration(&s.value.0).or_else(|e| self.at(s, duration_message(what, &s.value.0, e)))
    }
}

/// A duration as written: text such as `5s`, or a bare number kept as text so that its
/// check can say which unit it lacks (instead of "expected a string").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `500ms`, `5s`, `1m` or `1h`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        d.deserialize_any(Text)
    }
}

/// The longest any step may wait or pause: longer is a mistake in the scenario, never a plan
/// (and a time that large would overflow the clock it is added to).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a duration does not load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    /// Not a number and a unit.
    NotADuration,
    /// A number without its unit (`5`).
    MissingUnit,
    /// More than [`MAX_DURATION`].
    TooLong,
}

/// `500ms`, `5s`, `1.5s`, `2m`, `1h`, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.parse::<f64>().is_ok() {
        return Err(DurationError::MissingUnit);
    }
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| t.split_at(i))
        .ok_or(DurationError::NotADuration)?;
    let value: f64 = num.trim().parse().map_err(|_| DurationError::NotADuration)?;
    if !value.is_finite() || value < 0.0 {
        return Err(DurationError::NotADuration);
    }
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(DurationError::NotADuration),
    };
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(DurationError::TooLong);
    }
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::TooLong)
}

/// The message for a duration that does not load.
pub fn duration_message(what: &str, text: &str, e: DurationError) -> String {
    match e {
        DurationError::NotADuration => {
            format!("{what} `{text}`: expected a duration such as `500ms`, `5s`, `1m` or `1h`")
        }
        DurationError::MissingUnit => {
            let n = text.trim();
            format!("{what} `{n}`: a duration needs its unit: `{n}s`, `{n}ms`, `{n}m` or `{n}h`")
        }
        DurationError::TooLong => {
            format!("{what} `{text}`: longer than the {} h a step may take", MAX_DURATION.as_secs() / 3600)
        }
    }
}

/// Drops a leading `line N column M: ` that the YAML library puts in its messages.
/// Where a YAML document (a scenario, a bench file) failed to load, and why, in words a user of
/// the file understands.
pub(crate) fn yaml_error(e: &serde_saphyr::Error) -> (u64, u64, String) {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    // The library's message carries a rendered snippet and its own position; keep the first line
    // without them (the position is ours, in front).
    let first = e.to_string().lines().next().unwrap_or("invalid YAML").to_string();
    (line, column, in_scenario_words(strip_position(first.strip_prefix("error: ").unwrap_or(&first))))
}

fn strip_position(message: &str) -> &str {
    let Some(rest) = message.strip_prefix("line ") else { return message };
    match rest.find(": ") {
        Some(i) if rest[..i].split_whitespace().all(|w| w == "column" || w.parse::<u64>().is_ok()) => {
            &rest[i + 2..]
        }
        _ => message,
    }
}

/// The YAML library's message in the scenario's words: what was expected, without the
/// library's internals (its type names, its options, its budgets).
pub(crate) fn in_scenario_words(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!("key `{key}` appears twice in the same mapping");
    }
    if message.contains("untagged enum RawExpectLog") {
        return "expect_log: expected a regex such as 'ota: listening' or { pattern, timeout, absent }"
            .into();
    }
    if message.contains("untagged enum RawSnapshot") {
        return "snapshot: expected `partitions`, `log` or a list of them".into();
    }
    if message.contains("externally tagged enum expected scalar or mapping") {
        return "a step: expected a step name (boot, power_on, power_off, reset) or a mapping such as `ota: {…}`"
            .into();
    }
    if message.contains("budget") {
        return "the document is too large or nests too deep (aliases that expand to more than the loader allows)"
            .into();
    }
    for (ty, what) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("bool", "true or false"),
    ] {
        if message == format!("invalid {ty}") || message.starts_with(&format!("invalid {ty}:")) {
            return format!("expected {what}");
        }
    }
    message.to_string()
}

/// The text of a YAML file (a scenario, a bench file), or why it cannot be read.
pub(crate) fn read_text(path: &Path) -> Result<String, ScenarioError> {
    std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })
}

/// A mapping's entries as written, each key and value with its place: an `ota:` step's options
/// are read in two parts, the step's own keys by the scenario loader and the rest by the step's
/// update path into its own options type, every error at the key it is about.
#[derive(Debug, Default)]
pub struct Options {
    /// Where the mapping starts (for errors about a key that is missing).
    pub line: u64,
    pub column: u64,
    entries: Vec<(Spanned<String>, Spanned<serde_json::Value>)>,
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Options;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of options")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Options, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value::<Spanned<serde_json::Value>>()?));
                }
                Ok(Options { line: 0, column: 0, entries })
            }
        }
        d.deserialize_map(Entries)
    }
}

impl Options {
    /// Sets where the mapping is (from the step that holds it).
    pub fn at(mut self, line: u64, column: u64) -> Self {
        (self.line, self.column) = (line, column);
        self
    }

    /// Whether `key` is there.
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.value == key)
    }

    /// Takes `key` out, read as a `T`; `None` when absent.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        key: &str,
        cx: &Ctx<'_>,
    ) -> Result<Option<Spanned<T>>, ScenarioError> {
        let Some(i) = self.entries.iter().position(|(k, _)| k.value == key) else { return Ok(None) };
        let (k, v) = self.entries.remove(i);
        match serde_path_to_error::deserialize::<_, T>(v.value) {
            Ok(value) => Ok(Some(Spanned { value, referenced: v.referenced, defined: v.defined })),
            Err(e) => cx.at(&k, value_message(key, &e)),
        }
    }

    /// Reads what is left into a path's options type `T` (`deny_unknown_fields`, so an option
    /// the path does not have is an error at its key, naming the path). The spans come with it
    /// for the path's own checks.
    pub fn rest<T: DeserializeOwned>(self, whose: &str, cx: &Ctx<'_>) -> Result<(T, Spans), ScenarioError> {
        let spans = Spans {
            line: self.line,
            column: self.column,
            keys: self
                .entries
                .iter()
                .map(|(k, v)| (k.value.clone(), v.referenced.line(), v.referenced.column()))
                .collect(),
        };
        let map: serde_json::Map<String, serde_json::Value> =
            self.entries.into_iter().map(|(k, v)| (k.value, v.value)).collect();
        match serde_path_to_error::deserialize::<_, T>(serde_json::Value::Object(map)) {
            Ok(t) => Ok((t, spans)),
            Err(e) => {
                let inner = e.inner().to_string();
                // An unknown key is named in the message, not in the path.
                let key = match inner.strip_prefix("unknown field `") {
                    Some(rest) => rest.split('`').next().unwrap_or("").to_string(),
                    None => e.path().iter().next().map(|s| s.to_string()).unwrap_or_default(),
                };
                let (line, column) = spans.of(&key);
                let message = if inner.starts_with("unknown field") {
                    format!("`{key}` is not an option of {whose} (it has: {})", expected_list(&inner))
                } else {
                    value_message(&e.path().to_string(), &e)
                };
                cx.err(line, column, message)
            }
        }
    }
}

/// The keys' places in a mapping a path read, for the path's own checks of its values.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    line: u64,
    column: u64,
    keys: Vec<(String, u64, u64)>,
}

impl Spans {
    /// Where `key`'s value is, or the mapping when it is not there.
    pub fn of(&self, key: &str) -> (u64, u64) {
        self.keys.iter().find(|(k, ..)| k == key).map_or((self.line, self.column), |(_, l, c)| (*l, *c))
    }

    /// An error about `key`'s value.
    pub fn err<T>(&self, cx: &Ctx<'_>, key: &str, message: impl Into<String>) -> Result<T, ScenarioError> {
        let (line, column) = self.of(key);
        cx.err(line, column, message)
    }
}

/// `key: what was wrong`, in the scenario's words.
fn value_message(key: &str, e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner().to_string();
    let inner = inner.split(" at line ").next().unwrap_or(&inner);
    let what = match inner.strip_prefix("invalid type: ") {
        Some(rest) => match rest.split_once(", expected ") {
            Some((got, want)) => format!("expected {}, found {got}", in_scenario_words_of_type(want)),
            None => inner.to_string(),
        },
        None => in_scenario_words(inner),
    };
    format!("{key}: {what}")
}

/// serde's names of the types a value must have, as a scenario's author reads them.
fn in_scenario_words_of_type(want: &str) -> &str {
    match want {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" => "a whole number from 0 to 18446744073709551615",
        "a boolean" | "bool" => "true or false",
        "a string" => "a string",
        other => other,
    }
}

/// The list after "expected one of" in serde's unknown-field message.
fn expected_list(message: &str) -> String {
    match message.split_once("expected one of ") {
        Some((_, list)) => list.replace('`', ""),
        None => match message.split_once("expected ") {
            Some((_, one)) => one.replace('`', ""),
            None => "no options".into(),
        },
    }
}
