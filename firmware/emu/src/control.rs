//! The control channel: one command per line on stdin, one reply per command on stdout
//! (prefixed with [`crate::CONTROL_PREFIX`]), plus asynchronous `event` lines.
//!
//! | command | effect | reply |
//! | --- | --- | --- |
//! | `power-on` | boot (bootloader, boot guard, app) | `ok power-on <status>` |
//! | `power-off` | cut the power now, between flash operations | `ok power-off` |
//! | `reset` | restart the chip (power stays) | `ok reset <status>` |
//! | `status` | | `ok status <status>` |
//! | `cut after-ops N [torn SEED]` | lose power after N more flash operations | `ok cut` |
//! | `cut after-bytes N [torn SEED]` | lose power after N more programmed bytes | `ok cut` |
//! | `cut clear` | disarm | `ok cut` |
//! | `quit` | exit the process | `ok quit` |
//!
//! Errors answer `err <message>`. When an armed cut fires: `event power-lost op=K kind=erase|program
//! addr=0x… torn=true|false`. When an OTA connection ends (or is refused because nothing serves
//! OTA): `event session-closed`. After an update completes: `event rebooted <status>`.

use crate::flash::{CutPoint, Fault};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Command {
    PowerOn,
    PowerOff,
    Reset,
    Status,
    Cut(Option<Fault>),
    Quit,
}

fn number(word: Option<&str>, what: &str) -> Result<u64, String> {
    let w = word.ok_or_else(|| format!("missing {what}"))?;
    let parsed = match w.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => w.parse(),
    };
    parsed.map_err(|_| format!("{what} must be a number, got `{w}`"))
}

/// Parses one control line.
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let cmd = words.next().ok_or("empty command")?;
    let command = match cmd {
        "power-on" => Command::PowerOn,
        "power-off" => Command::PowerOff,
        "reset" => Command::Reset,
        "status" => Command::Status,
        "quit" => Command::Quit,
        "cut" => match words.next() {
            Some("clear") => Command::Cut(None),
            Some(kind @ ("after-ops" | "after-bytes")) => {
                let n = number(words.next(), "count")?;
                let at = if kind == "after-ops" { CutPoint::AfterOps(n) } else { CutPoint::AfterBytes(n) };
                let torn = match words.next() {
                    None => None,
                    Some("torn") => Some(number(words.next(), "torn seed")?),
                    Some(other) => return Err(format!("expected `torn SEED`, got `{other}`")),
                };
                Command::Cut(Some(Fault { at, torn }))
            }
            other => {
                return Err(format!(
                    "expected `cut after-ops N`, `cut after-bytes N` or `cut clear`, got {other:?}"
                ));
            }
        },
        other => {
            return Err(format!(
                "unknown command `{other}` (expected power-on, power-off, reset, status, cut, quit)"
            ));
        }
    };
    match words.next() {
        Some(extra) => Err(format!("unexpected `{extra}` after `{cmd}`")),
        None => Ok(command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("power-on"), Ok(Command::PowerOn));
        assert_eq!(parse("  reset "), Ok(Command::Reset));
        assert_eq!(
            parse("cut after-ops 12 torn 0x2a"),
            Ok(Command::Cut(Some(Fault { at: CutPoint::AfterOps(12), torn: Some(42) })))
        );
        assert_eq!(
            parse("cut after-bytes 200000"),
            Ok(Command::Cut(Some(Fault { at: CutPoint::AfterBytes(200_000), torn: None })))
        );
        assert_eq!(parse("cut clear"), Ok(Command::Cut(None)));
        assert!(parse("cut after-ops").unwrap_err().contains("missing count"));
        assert!(parse("cut after-ops x").unwrap_err().contains("must be a number"));
        assert!(parse("explode").unwrap_err().contains("unknown command"));
        assert!(parse("status now").unwrap_err().contains("unexpected"));
        assert!(parse("").is_err());
    }
}
