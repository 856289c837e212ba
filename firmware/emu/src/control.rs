//! The control channel between the harness and the emulator process: commands, one per line on
//! stdin; replies and events, one per line on stdout behind [`crate::CONTROL_PREFIX`]. Every line
//! is a type here with one encoder (`Display`) and one parser, used by both sides.
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
//! A refused command answers `err <message>`. Unprompted: `ready tcp:3232=ADDR udp:3232=ADDR
//! [uart=PTY]` first (each of the device's ports and the host address it is reached at);
//! `event power-lost op=K kind=erase|program addr=0x… torn=true|false` when an armed cut fires;
//! `event session-closed [refused]` when an update session ends (or a connection is refused
//! because nothing serves OTA); `event rebooted <status>` after an update completes.
//!
//! `<status>` is `key=value` words: `power=off` or `power=on state=running|hung slot=…
//! version=… project=…` or `power=on state=bricked reason="…"`, then `erases=N programs=N
//! bytes_programmed=N`. Values with spaces or quotes are quoted, `\` escaping `"` and `\`.

use crate::flash::{CutPoint, Fault, OpKind};
use ota_core::io::Port;
use std::fmt;
use std::net::SocketAddr;

/// Why a control line does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("empty line")]
    Empty,
    #[error("unknown command `{0}` (expected power-on, power-off, reset, status, cut, quit)")]
    UnknownCommand(String),
    #[error("expected `cut after-ops N`, `cut after-bytes N` or `cut clear`, got {0:?}")]
    Cut(Option<String>),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{what} must be a number, got `{got}`")]
    NotANumber { what: &'static str, got: String },
    #[error("unexpected `{0}`")]
    Unexpected(String),
    #[error("`{field}`: expected {expected}, got `{got}`")]
    Field { field: &'static str, expected: &'static str, got: String },
    #[error("unterminated quote in `{0}`")]
    Quote(String),
    #[error("unknown message `{0}`")]
    UnknownMessage(String),
}

/// A command without its arguments: what a reply answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verb {
    PowerOn,
    PowerOff,
    Reset,
    Download,
    Status,
    Cut,
    Quit,
}

impl Verb {
    pub const ALL: [Verb; 7] =
        [Verb::PowerOn, Verb::PowerOff, Verb::Reset, Verb::Download, Verb::Status, Verb::Cut, Verb::Quit];

    pub fn word(self) -> &'static str {
        match self {
            Verb::PowerOn => "power-on",
            Verb::PowerOff => "power-off",
            Verb::Reset => "reset",
            Verb::Download => "download",
            Verb::Status => "status",
            Verb::Cut => "cut",
            Verb::Quit => "quit",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.word() == word)
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Command {
    PowerOn,
    PowerOff,
    Reset,
    /// Reset with the strapping pins in download boot mode: the ROM serial loader answers on the
    /// UART (`--uart-pty`) until a flasher ends its session, then the chip boots from flash.
    Download,
    Status,
    /// Arm a power cut (`None`: disarm).
    Cut(Option<Fault>),
    /// Cut the power as soon as the device prints a line matching this regex (`cut at-log RE`,
    /// the rest of the line): nothing it does after that line happens.
    CutAtLog(String),
    Quit,
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::PowerOn => Verb::PowerOn,
            Command::PowerOff => Verb::PowerOff,
            Command::Reset => Verb::Reset,
            Command::Download => Verb::Download,
            Command::Status => Verb::Status,
            Command::Cut(_) | Command::CutAtLog(_) => Verb::Cut,
            Command::Quit => Verb::Quit,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb().word())?;
        if let Command::CutAtLog(pattern) = self {
            write!(f, " at-log {pattern}")?;
        }
        if let Command::Cut(cut) = self {
            match cut {
                None => f.write_str(" clear")?,
                Some(Fault { at, torn }) => {
                    match at {
                        CutPoint::AfterOps(n) => write!(f, " after-ops {n}")?,
                        CutPoint::AfterBytes(n) => write!(f, " after-bytes {n}")?,
                    }
                    if let Some(seed) = torn {
                        write!(f, " torn {seed}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn number(word: Option<&str>, what: &'static str) -> Result<u64, ControlError> {
    let w = word.ok_or(ControlError::Missing(what))?;
    let parsed = match w.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => w.parse(),
    };
    parsed.map_err(|_| ControlError::NotANumber { what, got: w.to_string() })
}

/// Parses one command line.
pub fn parse_command(line: &str) -> Result<Command, ControlError> {
    if let Some(rest) = line.trim_start().strip_prefix("cut at-log ") {
        let pattern = rest.trim();
        if pattern.is_empty() {
            return Err(ControlError::Missing("the log pattern"));
        }
        return Ok(Command::CutAtLog(pattern.to_string()));
    }
    let mut words = line.split_whitespace();
    let word = words.next().ok_or(ControlError::Empty)?;
    let verb = Verb::parse(word).ok_or_else(|| ControlError::UnknownCommand(word.to_string()))?;
    let command = match verb {
        Verb::PowerOn => Command::PowerOn,
        Verb::PowerOff => Command::PowerOff,
        Verb::Reset => Command::Reset,
        Verb::Download => Command::Download,
        Verb::Status => Command::Status,
        Verb::Quit => Command::Quit,
        Verb::Cut => match words.next() {
            Some("clear") => Command::Cut(None),
            Some(kind @ ("after-ops" | "after-bytes")) => {
                let n = number(words.next(), "count")?;
                let at = if kind == "after-ops" { CutPoint::AfterOps(n) } else { CutPoint::AfterBytes(n) };
                let torn = match words.next() {
                    None => None,
                    Some("torn") => Some(number(words.next(), "torn seed")?),
                    Some(other) => return Err(ControlError::Unexpected(other.to_string())),
                };
                Command::Cut(Some(Fault { at, torn }))
            }
            other => return Err(ControlError::Cut(other.map(str::to_string))),
        },
    };
    match words.next() {
        Some(extra) => Err(ControlError::Unexpected(extra.to_string())),
        None => Ok(command),
    }
}

/// The flash operation counters since the process started.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counters {
    pub erases: u64,
    pub programs: u64,
    pub bytes_programmed: u64,
}

/// What the device runs, as far as the control channel tells.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DeviceState {
    Off,
    Running {
        slot: String,
        version: String,
        project: String,
    },
    /// The app's self-test never finished: no OTA service until a reset.
    Hung {
        slot: String,
        version: String,
        project: String,
    },
    /// The bootloader cannot start anything.
    Bricked {
        reason: String,
    },
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Status {
    pub state: DeviceState,
    pub counters: Counters,
}

/// A value as a `key=value` word: quoted when it has spaces, quotes or backslashes (or is empty).
fn quoted(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '"', '\\', '=']) {
        return value.to_string();
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Splits `key=value` words, honouring quotes.
fn fields(text: &str) -> Result<Vec<(String, String)>, ControlError> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| ControlError::Unexpected(rest.to_string()))?;
        let key = rest[..eq].to_string();
        if key.contains(' ') {
            return Err(ControlError::Unexpected(key));
        }
        rest = &rest[eq + 1..];
        let value = if let Some(inner) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = inner.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => value.push(escaped),
                        None => break,
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| ControlError::Quote(text.to_string()))?;
            rest = &inner[end..];
            value
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let value = rest[..end].to_string();
            rest = &rest[end..];
            value
        };
        out.push((key, value));
        rest = rest.trim_start();
    }
    Ok(out)
}

fn take(fields: &mut Vec<(String, String)>, key: &'static str) -> Result<String, ControlError> {
    let i = fields.iter().position(|(k, _)| k == key).ok_or(ControlError::Missing(key))?;
    Ok(fields.remove(i).1)
}

fn take_u64(fields: &mut Vec<(String, String)>, key: &'static str) -> Result<u64, ControlError> {
    let v = take(fields, key)?;
    number(Some(&v), key)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            DeviceState::Off => f.write_str("power=off")?,
            DeviceState::Running { slot, version, project }
            | DeviceState::Hung { slot, version, project } => {
                let state =
                    if matches!(self.state, DeviceState::Running { .. }) { "running" } else { "hung" };
                write!(
                    f,
                    "power=on state={state} slot={} version={} project={}",
                    quoted(slot),
                    quoted(version),
                    quoted(project)
                )?
            }
            DeviceState::Bricked { reason } => write!(f, "power=on state=bricked reason={}", quoted(reason))?,
        }
        let c = &self.counters;
        write!(f, " erases={} programs={} bytes_programmed={}", c.erases, c.programs, c.bytes_programmed)
    }
}

impl Status {
    pub fn parse(text: &str) -> Result<Status, ControlError> {
        let mut f = fields(text)?;
        let power = take(&mut f, "power")?;
        let state = match power.as_str() {
            "off" => DeviceState::Off,
            "on" => match take(&mut f, "state")?.as_str() {
                "bricked" => DeviceState::Bricked { reason: take(&mut f, "reason")? },
                s @ ("running" | "hung") => {
                    let (slot, version, project) =
                        (take(&mut f, "slot")?, take(&mut f, "version")?, take(&mut f, "project")?);
                    if s == "running" {
                        DeviceState::Running { slot, version, project }
                    } else {
                        DeviceState::Hung { slot, version, project }
                    }
                }
                other => {
                    return Err(ControlError::Field {
                        field: "state",
                        expected: "running, hung or bricked",
                        got: other.to_string(),
                    });
                }
            },
            other => {
                return Err(ControlError::Field {
                    field: "power",
                    expected: "on or off",
                    got: other.to_string(),
                });
            }
        };
        let counters = Counters {
            erases: take_u64(&mut f, "erases")?,
            programs: take_u64(&mut f, "programs")?,
            bytes_programmed: take_u64(&mut f, "bytes_programmed")?,
        };
        if let Some((k, _)) = f.first() {
            return Err(ControlError::Unexpected(k.clone()));
        }
        Ok(Status { state, counters })
    }
}

/// A line the emulator prints on the control channel.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// The first line: where each of the device's ports is reached from the host, and its
    /// UART's pseudo-terminal when it has one.
    Ready { ports: Vec<(Port, SocketAddr)>, uart: Option<String> },
    /// A command was carried out; `power-on`, `reset` and `status` say how the device is now.
    Ok { verb: Verb, status: Option<Status> },
    /// A command was refused.
    Err(String),
    /// An armed power cut fired during operation `op` (counted over the process's life).
    PowerLost { op: u64, kind: OpKind, addr: u32, torn: bool },
    /// A cut armed at a log line fired while no flash operation was under way.
    PowerLostIdle,
    /// An update session ended (`refused`: a connection nothing could serve).
    SessionClosed { refused: bool },
    /// The device restarted into the image an update just wrote.
    Rebooted(Status),
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Ready { ports, uart } => {
                f.write_str("ready")?;
                for (port, addr) in ports {
                    write!(f, " {port}={addr}")?;
                }
                match uart {
                    Some(uart) => write!(f, " uart={}", quoted(uart)),
                    None => Ok(()),
                }
            }
            Message::Ok { verb, status: None } => write!(f, "ok {}", verb.word()),
            Message::Ok { verb, status: Some(s) } => write!(f, "ok {} {s}", verb.word()),
            Message::Err(m) => write!(f, "err {m}"),
            Message::PowerLost { op, kind, addr, torn } => {
                let kind = match kind {
                    OpKind::Erase => "erase",
                    OpKind::Program => "program",
                };
                write!(f, "event power-lost op={op} kind={kind} addr={addr:#x} torn={torn}")
            }
            Message::PowerLostIdle => f.write_str("event power-lost idle"),
            Message::SessionClosed { refused: false } => f.write_str("event session-closed"),
            Message::SessionClosed { refused: true } => f.write_str("event session-closed refused"),
            Message::Rebooted(s) => write!(f, "event rebooted {s}"),
        }
    }
}

/// Parses a control line (without its prefix).
pub fn parse_message(line: &str) -> Result<Message, ControlError> {
    let line = line.trim();
    let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
    match head {
        "" => Err(ControlError::Empty),
        "ready" => {
            let mut f = fields(rest)?;
            let uart = take(&mut f, "uart").ok();
            let ports = f
                .into_iter()
                .map(|(key, value)| {
                    let port = Port::parse(&key).ok_or_else(|| ControlError::Unexpected(key.clone()))?;
                    let addr = value.parse().map_err(|_| ControlError::Field {
                        field: "a port's address",
                        expected: "a socket address",
                        got: value,
                    })?;
                    Ok((port, addr))
                })
                .collect::<Result<_, ControlError>>()?;
            Ok(Message::Ready { ports, uart })
        }
        "err" => Ok(Message::Err(rest.to_string())),
        "ok" => {
            let (word, status) = rest.split_once(' ').unwrap_or((rest, ""));
            let verb = Verb::parse(word).ok_or_else(|| ControlError::UnknownMessage(line.to_string()))?;
            let status = if status.trim().is_empty() { None } else { Some(Status::parse(status)?) };
            Ok(Message::Ok { verb, status })
        }
        "event" => {
            let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            match kind {
                "power-lost" if rest.trim() == "idle" => Ok(Message::PowerLostIdle),
                "power-lost" => {
                    let mut f = fields(rest)?;
                    let op = take_u64(&mut f, "op")?;
                    let kind = match take(&mut f, "kind")?.as_str() {
                        "erase" => OpKind::Erase,
                        "program" => OpKind::Program,
                        other => {
                            return Err(ControlError::Field {
                                field: "kind",
                                expected: "erase or program",
                                got: other.to_string(),
                            });
                        }
                    };
                    let addr = take_u64(&mut f, "addr")?;
                    let addr = u32::try_from(addr).map_err(|_| ControlError::Field {
                        field: "addr",
                        expected: "a 32-bit address",
                        got: addr.to_string(),
                    })?;
                    let torn = match take(&mut f, "torn")?.as_str() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(ControlError::Field {
                                field: "torn",
                                expected: "true or false",
                                got: other.to_string(),
                            });
                        }
                    };
                    Ok(Message::PowerLost { op, kind, addr, torn })
                }
                "session-closed" => match rest.trim() {
                    "" => Ok(Message::SessionClosed { refused: false }),
                    "refused" => Ok(Message::SessionClosed { refused: true }),
                    other => Err(ControlError::Unexpected(other.to_string())),
                },
                "rebooted" => Ok(Message::Rebooted(Status::parse(rest)?)),
                _ => Err(ControlError::UnknownMessage(line.to_string())),
            }
        }
        _ => Err(ControlError::UnknownMessage(line.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_round_trip() {
        assert_eq!(parse_command("power-on"), Ok(Command::PowerOn));
        assert_eq!(parse_command("  reset "), Ok(Command::Reset));
        assert_eq!(
            parse_command("cut after-ops 12 torn 0x2a"),
            Ok(Command::Cut(Some(Fault { at: CutPoint::AfterOps(12), torn: Some(42) })))
        );
        let all = [
            Command::PowerOn,
            Command::PowerOff,
            Command::Reset,
            Command::Status,
            Command::Quit,
            Command::Cut(None),
            Command::Cut(Some(Fault { at: CutPoint::AfterBytes(200_000), torn: None })),
            Command::Cut(Some(Fault { at: CutPoint::AfterOps(3), torn: Some(u64::MAX) })),
            Command::CutAtLog(r"ota: progress 50% \(of .*\)".into()),
        ];
        for c in all {
            assert_eq!(parse_command(&c.to_string()), Ok(c.clone()), "{c}");
        }
        assert_eq!(parse_command("cut after-ops"), Err(ControlError::Missing("count")));
        assert!(matches!(parse_command("cut after-ops x"), Err(ControlError::NotANumber { .. })));
        assert!(matches!(parse_command("explode"), Err(ControlError::UnknownCommand(_))));
        assert_eq!(parse_command("status now"), Err(ControlError::Unexpected("now".into())));
        assert_eq!(parse_command(""), Err(ControlError::Empty));
        assert!(parse_command("cut sideways").unwrap_err().to_string().contains("cut after-ops N"));
        assert_eq!(parse_command("cut at-log   "), Err(ControlError::Missing("the log pattern")));
        assert_eq!(parse_command("cut at-log  a b "), Ok(Command::CutAtLog("a b".into())));
        assert_eq!(parse_message("event power-lost idle"), Ok(Message::PowerLostIdle));
    }

    fn running() -> Status {
        Status {
            state: DeviceState::Running {
                slot: "ota_1".into(),
                version: "2.0.0".into(),
                project: "otahil-fw".into(),
            },
            counters: Counters { erases: 41, programs: 660, bytes_programmed: 168_960 },
        }
    }

    #[test]
    fn messages_round_trip() {
        let messages = [
            Message::Ready {
                ports: vec![
                    (Port::Tcp(3232), "127.0.0.1:3232".parse().unwrap()),
                    (Port::Udp(3232), "[::1]:40000".parse().unwrap()),
                ],
                uart: None,
            },
            Message::Ready {
                ports: vec![(Port::Udp(3232), "127.0.0.1:40000".parse().unwrap())],
                uart: Some("/dev/pts/7".into()),
            },
            Message::Ready { ports: vec![], uart: Some("/tmp/a dir/pty".into()) },
            Message::Ok { verb: Verb::Cut, status: None },
            Message::Ok { verb: Verb::Status, status: Some(running()) },
            Message::Ok {
                verb: Verb::PowerOn,
                status: Some(Status { state: DeviceState::Off, counters: Counters::default() }),
            },
            Message::Ok {
                verb: Verb::Reset,
                status: Some(Status {
                    state: DeviceState::Bricked {
                        reason: "partition table invalid: bad \"magic\" \\ here".into(),
                    },
                    counters: Counters::default(),
                }),
            },
            Message::Ok {
                verb: Verb::PowerOn,
                status: Some(Status {
                    state: DeviceState::Hung {
                        slot: "ota_0".into(),
                        version: "a b".into(),
                        project: "".into(),
                    },
                    counters: Counters::default(),
                }),
            },
            Message::Err("unknown command `x`".into()),
            Message::PowerLost { op: 7, kind: OpKind::Program, addr: 0x1d_0100, torn: true },
            Message::PowerLost { op: 1, kind: OpKind::Erase, addr: 0, torn: false },
            Message::SessionClosed { refused: false },
            Message::SessionClosed { refused: true },
            Message::Rebooted(running()),
        ];
        for m in messages {
            let line = m.to_string();
            assert_eq!(parse_message(&line), Ok(m), "{line}");
        }
    }

    /// A renamed or missing field is an error, never a silent 0.
    #[test]
    fn a_missing_or_renamed_field_is_an_error() {
        assert_eq!(
            Status::parse("power=off erases=1 programs=2 bytes=3"),
            Err(ControlError::Missing("bytes_programmed"))
        );
        assert!(matches!(
            Status::parse("power=off erases=x programs=2 bytes_programmed=3"),
            Err(ControlError::NotANumber { .. })
        ));
        assert_eq!(
            Status::parse("power=off erases=1 programs=2 bytes_programmed=3 colour=red"),
            Err(ControlError::Unexpected("colour".into()))
        );
        assert!(matches!(Status::parse("power=on state=bricked reason=\"open"), Err(ControlError::Quote(_))));
        assert!(matches!(parse_message("event exploded"), Err(ControlError::UnknownMessage(_))));
        assert!(matches!(parse_message("ok dance"), Err(ControlError::UnknownMessage(_))));
        assert!(matches!(parse_message("ready tcp:3232=nowhere"), Err(ControlError::Field { .. })));
        // The old spelling names no port: an error, not an empty table.
        assert_eq!(
            parse_message("ready listen=1.2.3.4:5 udp:3232=1.2.3.4:6"),
            Err(ControlError::Unexpected("listen".into()))
        );
    }
}
