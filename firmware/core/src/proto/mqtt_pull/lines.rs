//! The pull path's log lines: the MQTT session (tag `mqtt`) and the HTTP(S) pull (tag `pull`),
//! with their settings lines (tag `config`). The pull's writes share the writer's `ota` lines in
//! [`crate::log`].

use crate::log::{Level, ModuleLine};
use crate::nvs::StoreError;
use crate::proto::http_pull::PullError;
use crate::proto::mqtt::client::Lost as LostWhy;
use crate::proto::mqtt::command::{CommandError, MAX_URL};
use crate::settings::Source;
use crate::slot::SlotName;
use core::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MqttLine<'a> {
    /// What the pull path runs with (tag `config`): `broker_from` is `None` when no broker is
    /// configured.
    Config {
        broker_from: Option<Source>,
        command_topic: &'a str,
        state_topic: &'a str,
        /// Downloads resume after a cut ([`super::settings::KEY_PULL_RESUME`]).
        resume: bool,
    },
    Ready {
        command_topic: &'a str,
    },
    Lost {
        why: LostWhy,
        retry_in_ms: u64,
    },
    Dropped {
        len: u32,
    },
    CommandIgnored(CommandError),
    CommandOther(&'static str),
}

impl ModuleLine for MqttLine<'_> {
    fn level(&self) -> Level {
        use MqttLine::*;
        match self {
            Lost { .. } | Dropped { .. } | CommandIgnored(_) => Level::Warn,
            Config { .. } | Ready { .. } | CommandOther(_) => Level::Info,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            MqttLine::Config { .. } => "config",
            _ => "mqtt",
        }
    }
}

impl fmt::Display for MqttLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MqttLine::*;
        match self {
            Config { broker_from: None, .. } => f.write_str("MQTT off: no broker configured"),
            Config { broker_from: Some(from), command_topic, state_topic, resume } => {
                write!(f, "MQTT broker set ({from}), commands on {command_topic}, status on {state_topic}")?;
                if *resume {
                    f.write_str("; downloads resume after a cut")?;
                }
                Ok(())
            }
            Ready { command_topic } => write!(f, "connected, subscribed to {command_topic}"),
            Lost { why, retry_in_ms } => write!(f, "connection lost ({why}), retrying in {retry_in_ms} ms"),
            Dropped { len } => write!(f, "message of {len} bytes dropped: too long"),
            CommandIgnored(why) => write!(f, "command ignored: {}", why.text()),
            CommandOther(kind) => write!(f, "'{kind}' command: not handled by this firmware"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PullLine<'a> {
    /// https pulls trust a provisioned CA (tag `config`); dates checked only with a clock.
    ConfigTls {
        dates_checked: bool,
    },
    Triggered {
        truncated: bool,
        /// An `http_update`: the Arduino updater pulls.
        arduino: bool,
    },
    Busy,
    Requesting {
        path: &'a str,
        redirects: u8,
    },
    Status {
        code: u16,
    },
    ImageAccepted {
        version: &'a str,
    },
    StartingUnsized {
        slot: SlotName,
    },
    NoUpdate,
    Failed(PullError),
    /// A download cut short goes on from its resume record (`path` of the recorded URL).
    Resuming {
        path: &'a str,
        at: u32,
    },
    /// The server answered a `Range` request with the whole image (200) or 416.
    RangeIgnored {
        status: u16,
    },
    /// The server sent the rest: writing goes on at `at` (`esp_ota_resume`).
    Resumed {
        at: u32,
        size: Option<u32>,
        slot: SlotName,
    },
    ResumeNotSaved(StoreError),
}

impl ModuleLine for PullLine<'_> {
    fn level(&self) -> Level {
        use PullLine::*;
        match self {
            Failed(_) => Level::Error,
            Busy | RangeIgnored { .. } | ResumeNotSaved(_) | Triggered { truncated: true, .. } => Level::Warn,
            _ => Level::Info,
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            PullLine::ConfigTls { .. } => "config",
            _ => "pull",
        }
    }
}

impl fmt::Display for PullLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PullLine::*;
        match self {
            ConfigTls { dates_checked: true } => {
                f.write_str("https trusts the CA set (nvs); certificate dates checked (clock set)")
            }
            ConfigTls { dates_checked: false } => {
                f.write_str("https trusts the CA set (nvs); certificate dates not checked (no clock)")
            }
            Triggered { truncated, arduino } => {
                f.write_str(if *arduino {
                    "HTTP update trigger received (Arduino updater)"
                } else {
                    "OTA trigger received"
                })?;
                if *truncated {
                    write!(f, ", URL cut to {MAX_URL} bytes")?;
                }
                Ok(())
            }
            Busy => f.write_str("OTA trigger ignored: an update is already running"),
            Requesting { path, redirects: 0 } => write!(f, "GET {path}"),
            Requesting { path, redirects } => write!(f, "GET {path} (redirect {redirects})"),
            Status { code } => write!(f, "HTTP status {code}"),
            ImageAccepted { version: "" } => f.write_str("image header checked"),
            ImageAccepted { version } => write!(f, "image header checked, version {version}"),
            StartingUnsized { slot } => write!(f, "Starting update of unknown size into {slot}"),
            NoUpdate => f.write_str("no update (304)"),
            Failed(e) => {
                let code = e.code();
                if code >= 0 {
                    write!(f, "OTA update failed: {} ({code:#x}): {e}", e.name())
                } else {
                    write!(f, "OTA update failed: {} ({code}): {e}", e.name())
                }
            }
            Resuming { path, at } => write!(f, "resuming {path} from byte {at}"),
            RangeIgnored { status: 416 } => {
                f.write_str("Range not satisfiable (416), downloading from byte 0")
            }
            RangeIgnored { status } => {
                write!(
                    f,
                    "server ignored the requested Range header (HTTP {status}), downloading from byte 0"
                )
            }
            Resumed { at, size: Some(size), slot } => {
                write!(f, "Resuming update of {size} bytes into {slot} at byte {at}")
            }
            Resumed { at, size: None, slot } => {
                write!(f, "Resuming update of unknown size into {slot} at byte {at}")
            }
            ResumeNotSaved(e) => write!(f, "resume point not saved: {e}"),
        }
    }
}
