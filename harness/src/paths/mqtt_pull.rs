//! The HTTP(S) pull an MQTT trigger starts (`esp_https_ota`, the seed project's path): the
//! harness is the operator. It serves the image on the run's firmware server, publishes the
//! seed's trigger (`{"type":"ota_trigger","url":…}`) on the device's command topic and follows
//! its status on the state topic (read by ota-core's own reader of that schema) to the final
//! one. Finer control (server faults, other triggers, statuses along the way) is the generic
//! steps' (`serve`, `mqtt_publish`, `expect_status`, `expect_request`, `broker`); the sweep
//! cuts this path's download through the emulator's script of it.

use super::{
    Needs, PathEntry, PathUpdate, ProvisionCx, ProvisionFailure, ReadCx, SectionEntry, Unavailable, UpdateCx,
};
use crate::client::{Outcome, Phase};
use crate::scenario::yaml::{Ctx, Options, ScenarioError};
use crate::services::broker::BrokerLink;
use crate::services::firmware_server::{Fault, Framing, Md5Header, RangeSupport, Response, Route};
use ota_core::proto::UpdatePath;
use ota_core::proto::http_pull::PullError;
use ota_core::proto::mqtt::status::State;
use ota_core::proto::mqtt::status_reader::ParseError;
use ota_core::proto::mqtt_pull::AGENT_ERRORS;
use ota_core::provision::SettingsPage;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ENTRY: PathEntry = PathEntry {
    name: "mqtt_pull",
    about: "an MQTT trigger, then the device pulls the image over HTTP(S) (esp_https_ota)",
    sweep: Some(UpdatePath::MqttPull),
    outcomes,
    read,
    needs: Needs { broker: true, server: true },
    section: Some(SectionEntry { key: "mqtt", read: |o, cx| Ok(Arc::new(device_section(o, cx)?)) }),
};

/// Where the image is served, under the run's firmware server.
pub const IMAGE_PATH: &str = "/otahil/pull.bin";

fn outcomes() -> Vec<&'static str> {
    let mut names = vec!["no_update"];
    names.extend(PullError::NAMES);
    names.extend(AGENT_ERRORS);
    names
}

/// `device: mqtt:` provisions the pull path with the harness's broker.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMqttDevice {
    #[serde(default)]
    command_topic: Option<String>,
    #[serde(default)]
    state_topic: Option<String>,
    #[serde(default)]
    version_check: Option<VersionCheckSpec>,
    #[serde(default)]
    timeout: Option<crate::scenario::yaml::DurationText>,
    #[serde(default)]
    tls: Option<RawTlsDevice>,
    /// Downloads cut short resume with `Range` (ESP-IDF's `ota_resumption`).
    #[serde(default)]
    resume: bool,
}

/// `tls:` provisions the harness's test CA (https pulls are refused without one) and optionally
/// the host's time as the device's clock, so that certificate dates are checked.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTlsDevice {
    #[serde(default)]
    clock: bool,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum VersionCheckSpec {
    #[default]
    None,
    SkipSame,
    RefuseDowngrade,
}

impl VersionCheckSpec {
    pub fn code(self) -> u8 {
        match self {
            VersionCheckSpec::None => 0,
            VersionCheckSpec::SkipSame => 1,
            VersionCheckSpec::RefuseDowngrade => 2,
        }
    }
}

/// The pull path's device settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttDevice {
    pub command_topic: String,
    pub state_topic: String,
    pub version_check: VersionCheckSpec,
    /// The device's HTTP timeout in whole seconds (`None`: the seed's 10 s).
    pub timeout_s: Option<u8>,
    /// The test CA is provisioned (`Some`), with the host's clock when `true`.
    pub tls_clock: Option<bool>,
    /// Downloads cut short resume with `Range`.
    pub resume: bool,
}

/// A topic the device publishes or subscribes to: no wildcards, at most the device's length;
/// the message names it as `what`.
pub fn topic_error(t: &str, what: &str) -> Option<String> {
    let max = ota_core::proto::mqtt_pull::settings::MAX_TOPIC_LEN;
    (t.is_empty() || t.len() > max || t.contains(['+', '#', '\0']))
        .then(|| format!("{what} `{t}`: expected a topic of 1 to {max} bytes without wildcards"))
}

/// A topic the device publishes or subscribes to, checked at its place.
pub fn topic(cx: &Ctx<'_>, t: &Spanned<String>, what: &str) -> Result<String, ScenarioError> {
    match topic_error(&t.value, what) {
        Some(message) => cx.at(t, message),
        None => Ok(t.value.clone()),
    }
}

fn device_section(options: Options, cx: &Ctx<'_>) -> Result<MqttDevice, ScenarioError> {
    let (raw, spans): (RawMqttDevice, _) = options.rest("device `mqtt`", cx)?;
    let topic = |key: &str, t: Option<String>, default: &str| match t {
        None => Ok(default.to_string()),
        Some(t) => match topic_error(&t, key) {
            Some(message) => spans.err(cx, key, message),
            None => Ok(t),
        },
    };
    Ok(MqttDevice {
        command_topic: topic(
            "command_topic",
            raw.command_topic,
            ota_core::proto::mqtt::DEFAULT_COMMAND_TOPIC,
        )?,
        state_topic: topic("state_topic", raw.state_topic, ota_core::proto::mqtt::DEFAULT_STATE_TOPIC)?,
        version_check: raw.version_check.unwrap_or_default(),
        timeout_s: match raw.timeout.as_ref().map(|t| t.0.as_str()) {
            None => None,
            Some(t) => {
                let d = match crate::scenario::yaml::parse_duration(t) {
                    Ok(d) => d,
                    Err(e) => {
                        return spans.err(
                            cx,
                            "timeout",
                            crate::scenario::yaml::duration_message("timeout", t, e),
                        );
                    }
                };
                let s = d.as_secs();
                if d.subsec_nanos() != 0 || !(1..=255).contains(&s) {
                    return spans.err(
                        cx,
                        "timeout",
                        format!("timeout `{t}`: expected whole seconds from 1s to 255s"),
                    );
                }
                Some(s as u8)
            }
        },
        tls_clock: raw.tls.map(|t| t.clock),
        resume: raw.resume,
    })
}

impl super::DeviceSection for MqttDevice {
    fn needs(&self) -> Needs {
        // The device pulls from whatever server a trigger names, not necessarily the run's.
        Needs { broker: true, server: false }
    }

    fn provision(&self, cx: &ProvisionCx<'_>, page: &mut SettingsPage) -> Result<(), ProvisionFailure> {
        let broker = cx.broker("the pull path")?;
        page.path(&ota_core::proto::mqtt_pull::settings::Provision {
            broker,
            command_topic: Some(&self.command_topic),
            state_topic: Some(&self.state_topic),
            version_check: self.version_check.code(),
            timeout_s: self.timeout_s,
            ca_pem: cx.ca_pem,
            clock_unix: cx.clock_unix,
            resume: self.resume,
        })?;
        Ok(())
    }

    fn status_topics(&self) -> Option<(&str, &str)> {
        Some((&self.command_topic, &self.state_topic))
    }

    fn test_ca(&self) -> Option<bool> {
        self.tls_clock
    }
}

/// A status message as the device published it, read by ota-core's reader of its own schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub err: String,
    pub code: Option<i32>,
    pub fw: String,
    pub bytes: u64,
    /// `None`: the device did not know the length (`"total":-1`).
    pub total: Option<u64>,
}

impl Status {
    /// How much of the image the status reports, in whole percent (`None` without a length).
    pub fn percent(&self) -> Option<u64> {
        self.total.map(|t| (self.bytes.min(t) * 100).checked_div(t).unwrap_or(100))
    }
}

pub fn read_status(text: &str) -> Result<Status, ParseError> {
    // The unescaped strings are never longer than the text.
    let mut strings = vec![0u8; text.len()];
    let s = ota_core::proto::mqtt::status::Status::parse(text, &mut strings)?;
    Ok(Status {
        state: s.state,
        err: s.error.map(|(name, _)| name.to_string()).unwrap_or_default(),
        code: s.error.map(|(_, code)| code),
        fw: s.fw.to_string(),
        bytes: s.bytes,
        total: s.total,
    })
}

/// The end of the serial line the device prints once its session is up and subscribed to
/// `command_topic` (`mqtt: connected, subscribed to …`), rendered by the firmware's own line.
pub fn ready_line(command_topic: &str) -> String {
    use ota_core::log::ModuleLine;
    let line = ota_core::proto::mqtt_pull::MqttLine::Ready { command_topic };
    format!("{}: {line}", line.tag())
}

/// Waits until the device can receive a command on `command_topic`. The embedded broker
/// knows its subscribers; through an external one, the device's own status says it: its
/// session is up once it published `online` (after its SUBACK), unless a later `done` or
/// `offline` says it restarted or left since.
pub fn wait_device(
    link: &BrokerLink,
    command_topic: &str,
    state_topic: &str,
    timeout: Duration,
) -> Result<(), String> {
    match link {
        BrokerLink::Embedded(b) => b.wait_subscriber(command_topic, timeout).map(|_| ()).ok_or_else(|| {
            format!(
                "no client subscribed to {command_topic} within {timeout:?}: the device is not connected to the broker (connected: {:?})",
                b.clients()
            )
        }),
        BrokerLink::External { .. } | BrokerLink::Mosquitto { .. } => {
            let deadline = Instant::now() + timeout;
            loop {
                let last = link
                    .messages()
                    .iter()
                    .rev()
                    .filter(|m| m.topic == state_topic)
                    .find_map(|m| read_status(&m.text()).ok())
                    .map(|s| s.state);
                match last {
                    Some(State::Done | State::Offline) | None => {}
                    Some(_) => return Ok(()),
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the device did not say `online` on {state_topic} within {timeout:?}: it is not connected to the broker"
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `ota: { via: mqtt_pull }` takes no options of its own: the image is served as a plain 200
/// with its length (the generic `serve` step serves it any other way).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {}

#[derive(Debug, Clone)]
pub struct Trigger;

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let cx = rx.cx;
    if !rx.sections.has("mqtt") {
        return cx.err(
            rx.line,
            rx.column,
            "ota via mqtt_pull: the device has no broker: add `mqtt: {}` under `device`",
        );
    }
    let (_raw, _spans): (Raw, _) = options.rest("mqtt_pull OTA steps", cx)?;
    Ok(Arc::new(Trigger))
}

impl PathUpdate for Trigger {
    /// The final status is the device's last word on the update (its log lines come before it).
    fn device_ends_session(&self, _outcome: &Outcome) -> bool {
        false
    }

    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let (Some(broker), Some(server), Some(base), Some(device)) =
            (cx.broker, cx.server, cx.server_base, cx.sections.get::<MqttDevice>("mqtt"))
        else {
            return Err(Unavailable(
                "mqtt_pull: the run has no broker or firmware server (a scenario check should have refused this)".into(),
            ));
        };
        let started = Instant::now();
        server.route(
            IMAGE_PATH,
            Route {
                response: Response::Image {
                    bytes: Arc::new(cx.image.to_vec()),
                    framing: Framing::ContentLength,
                    md5: Md5Header::None,
                    range: RangeSupport::Honour,
                },
                fault: Fault::None,
            },
        );
        if let Err(why) = wait_device(broker, &device.command_topic, &device.state_topic, cx.timeout) {
            return Ok(Outcome::Interrupted { phase: Phase::Connect, sent: 0, detail: why });
        }
        let cursor = broker.seen();
        let url = format!("{base}{IMAGE_PATH}");
        let trigger = format!("{{\"type\":\"ota_trigger\",\"url\":\"{url}\"}}");
        broker.publish(&device.command_topic, trigger.as_bytes(), false);
        let left = cx.timeout.saturating_sub(started.elapsed());
        let final_status = broker.wait_message(cursor, left, |m| {
            m.topic == device.state_topic
                && read_status(&m.text()).is_ok_and(|s| s.state.is_final() || s.state == State::Offline)
        });
        let Some((_, message)) = final_status else {
            return Ok(Outcome::Interrupted {
                phase: Phase::Data,
                sent: 0,
                detail: format!(
                    "no final status on {} within {:?} of the trigger",
                    device.state_topic, cx.timeout
                ),
            });
        };
        let status = read_status(&message.text()).map_err(|e| Unavailable(format!("mqtt_pull: {e}")))?;
        Ok(outcome(&status, &url))
    }
}

/// What a final status (or the device's will) says of the update.
fn outcome(status: &Status, url: &str) -> Outcome {
    let detail = match status.code {
        Some(code) => format!("{} (code {code}) pulling {url}", status.err),
        None => format!("pulling {url}"),
    };
    match status.state {
        State::Done => Outcome::Ok { detail: format!("pulled {url}; the device restarts") },
        State::NoUpdate => Outcome::DeviceError { name: "no_update", detail, phase: Phase::Prepare },
        // The broker said the device's session vanished (its will): power lost, network gone.
        State::Offline => {
            Outcome::Interrupted { phase: Phase::Data, sent: 0, detail: "the device went offline".into() }
        }
        _ => match outcomes().into_iter().find(|n| *n == status.err) {
            Some(name) => Outcome::DeviceError { name, detail, phase: Phase::Data },
            None => Outcome::Unexpected {
                detail: format!("a failure named `{}`: {detail}", status.err),
                phase: Phase::Data,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_is_the_one_the_device_prints() {
        assert_eq!(ready_line("/switch/cmd/root"), "mqtt: connected, subscribed to /switch/cmd/root");
        let snapshot = include_str!("../../tests/snapshots/pull-arduino-updater-2-log.snap");
        assert!(snapshot.lines().any(|l| l.ends_with(&ready_line("/switch/cmd/root"))));
    }

    #[test]
    fn final_statuses_become_outcomes_named_as_the_device_names_its_errors() {
        let read = |text: &str| outcome(&read_status(text).unwrap(), "http://h/x").name();
        assert_eq!(read(r#"{"state":"done","bytes":9,"total":9,"err":"","fw":"1.0.0"}"#), "ok");
        assert_eq!(read(r#"{"state":"no_update","bytes":0,"total":-1,"err":"","fw":"1.0.0"}"#), "no_update");
        assert_eq!(
            read(r#"{"state":"failed","bytes":0,"total":-1,"err":"http_status","code":404,"fw":"1.0.0"}"#),
            "http_status"
        );
        assert_eq!(
            read(r#"{"state":"failed","bytes":0,"total":-1,"err":"busy","code":-1,"fw":"1.0.0"}"#),
            "busy"
        );
        assert_eq!(read(r#"{"state":"offline","bytes":0,"total":-1,"err":"","fw":"1.0.0"}"#), "interrupted");
        assert_eq!(
            read(r#"{"state":"failed","bytes":0,"total":-1,"err":"gremlins","code":1,"fw":"1.0.0"}"#),
            "unexpected"
        );
        assert!(read_status("{}").is_err());
    }
}
