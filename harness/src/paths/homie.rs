//! Homie OTA 3.x: the harness is the OTA server. It publishes the firmware as one MQTT message
//! on `homie/<id>/$implementation/ota/firmware/<md5>`, raw or base64, through the run's broker,
//! and follows the device's statuses on `…/ota/status` (read by ota-core's
//! [`Status::parse`]) to the final one. Faults a server can make: a wrong MD5 in the topic, a
//! truncated payload, a retained firmware message (delivered again at every reconnect).

use super::{
    Needs, PathEntry, PathUpdate, ProvisionCx, ProvisionFailure, ReadCx, SectionEntry, Unavailable, UpdateCx,
};
use crate::client::{Outcome, Phase};
use crate::scenario::yaml::{Ctx, Options, ScenarioError};
use md5::{Digest, Md5};
use ota_core::proto::UpdatePath;
use ota_core::proto::homie::{BASE_TOPIC, FIRMWARE_TOPIC, STATUS_TOPIC, Status};
use ota_core::provision::SettingsPage;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ENTRY: PathEntry = PathEntry {
    name: "homie",
    about: "Homie OTA 3.x: the firmware published as one MQTT message, statuses on $implementation/ota/status",
    sweep: Some(UpdatePath::Homie),
    outcomes,
    read,
    needs: Needs { broker: true, server: false },
    section: Some(SectionEntry { key: "homie", read: |o, cx| Ok(Arc::new(device_section(o, cx, "homie")?)) }),
};

/// The device id the harness provisions when the scenario names none (Homie's own default, the
/// MAC in hex, differs between backends; one snapshot must fit them all).
pub const DEFAULT_ID: &str = "otahil";

/// A final status's name in a scenario's `expect`.
fn outcome_name(status: Status) -> Option<&'static str> {
    Some(match status {
        Status::Done => "ok",
        Status::NotModified => "not_modified",
        Status::Disabled => "ota_disabled",
        Status::BadChecksum => "bad_checksum",
        Status::NotEnoughSpace => "not_enough_space",
        Status::FlashError => "flash_error",
        Status::Internal(_) => "internal_error",
        Status::Accepted | Status::Progress { .. } => return None,
    })
}

fn outcomes() -> Vec<&'static str> {
    vec!["not_modified", "ota_disabled", "bad_checksum", "not_enough_space", "flash_error", "internal_error"]
}

/// `device: { homie: { … } }`: what the harness provisions for the device's Homie session (the
/// broker is the run's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeviceSection {
    #[serde(default)]
    id: Option<String>,
    /// `$implementation/ota/enabled` (Homie's default: off).
    #[serde(default)]
    ota: Option<bool>,
}

/// The device's Homie identity: its id in the topics and whether OTA is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSection {
    pub id: String,
    pub ota: bool,
}

/// Reads a Homie section (`device: { KEY: { id, ota } }`; Homie 1.x's has the same keys).
pub fn device_section(options: Options, cx: &Ctx<'_>, key: &str) -> Result<DeviceSection, ScenarioError> {
    let (raw, spans): (RawDeviceSection, _) = options.rest(&format!("device `{key}`"), cx)?;
    let id = match raw.id {
        None => DEFAULT_ID.to_string(),
        Some(id) if ota_core::proto::homie::settings::DeviceId::new(&id).is_some() => id,
        Some(id) => {
            return spans.err(
                cx,
                "id",
                format!(
                    "homie id `{id}`: expected 1 to {} lowercase letters, digits and `-` (a Homie topic level)",
                    ota_core::proto::homie::settings::MAX_ID_LEN
                ),
            );
        }
    };
    Ok(DeviceSection { id, ota: raw.ota.unwrap_or(false) })
}

impl super::DeviceSection for DeviceSection {
    fn needs(&self) -> Needs {
        ENTRY.needs
    }

    fn provision(&self, cx: &ProvisionCx<'_>, page: &mut SettingsPage) -> Result<(), ProvisionFailure> {
        let broker = cx.broker("a Homie session")?;
        page.path(&ota_core::proto::homie::settings::Provision {
            broker,
            id: Some(&self.id),
            ota: self.ota,
        })?;
        Ok(())
    }
}

/// How the server sends the image.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Raw,
    Base64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    encoding: Option<Encoding>,
    /// The topic's MD5: `wrong`, or 32 hex digits (any case: the device compares byte for byte).
    #[serde(default)]
    md5: Option<String>,
    /// Publish only the image's first N bytes (before encoding).
    #[serde(default)]
    truncate: Option<u64>,
    /// Publish the firmware retained, as some servers do.
    #[serde(default)]
    retain: Option<bool>,
    /// The broker loses the device's connection after this many bytes of the message's packet
    /// (the harness's own broker only).
    #[serde(default)]
    broker_loss_after: Option<u64>,
}

/// One firmware push.
#[derive(Debug, Clone)]
pub struct HomiePush {
    pub encoding: Encoding,
    pub md5: Option<String>,
    pub truncate: Option<u64>,
    pub retain: bool,
    pub broker_loss_after: Option<u64>,
}

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let cx = rx.cx;
    if !rx.sections.has("homie") {
        return cx.err(
            rx.line,
            rx.column,
            "ota via homie: the device has no Homie session: add `homie: { ota: true }` under `device`",
        );
    }
    let (raw, spans): (Raw, _) = options.rest("homie OTA steps", cx)?;
    let md5 = match raw.md5 {
        None => None,
        Some(m) if m == "wrong" => Some("0".repeat(32)),
        Some(m) if m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()) => Some(m),
        Some(_) => return spans.err(cx, "md5", "md5: expected `wrong` or 32 hex digits"),
    };
    Ok(Arc::new(HomiePush {
        encoding: raw.encoding.unwrap_or_default(),
        md5,
        truncate: raw.truncate,
        retain: raw.retain.unwrap_or(false),
        broker_loss_after: raw.broker_loss_after,
    }))
}

impl HomiePush {
    /// The topic and the payload this push publishes for `image`.
    pub fn message(&self, id: &str, image: &[u8]) -> (String, Vec<u8>) {
        let md5 = self
            .md5
            .clone()
            .unwrap_or_else(|| Md5::digest(image).iter().map(|b| format!("{b:02x}")).collect::<String>());
        let sent = match self.truncate {
            Some(n) => &image[..image.len().min(usize::try_from(n).unwrap_or(usize::MAX))],
            None => image,
        };
        let payload = match self.encoding {
            Encoding::Raw => sent.to_vec(),
            Encoding::Base64 => crate::client::base64(sent),
        };
        (format!("{BASE_TOPIC}{id}/{FIRMWARE_TOPIC}{md5}"), payload)
    }
}

/// How long statuses may still come after the device's will before the push counts as cut.
const LOST_GRACE: Duration = Duration::from_millis(1500);
/// How often the wait for the device's session looks again.
const POLL: Duration = Duration::from_millis(10);

impl PathUpdate for HomiePush {
    /// A session lost mid-message (the power went, the broker lost it) has no end on the
    /// device's side.
    fn device_ends_session(&self, outcome: &Outcome) -> bool {
        !matches!(outcome, Outcome::Interrupted { .. })
    }

    fn disturbs_device(&self) -> bool {
        self.broker_loss_after.is_some()
    }

    fn needs_own_broker(&self) -> bool {
        self.broker_loss_after.is_some()
    }

    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let Some(broker) = cx.broker else {
            return Err(Unavailable(
                "homie: the run has no broker (a scenario check should have refused this)".into(),
            ));
        };
        let Some(device) = cx.sections.get::<DeviceSection>("homie") else {
            return Err(Unavailable("homie: the device has no Homie section".into()));
        };
        let started = Instant::now();
        let (topic, payload) = self.message(&device.id, cx.image);
        let status_topic = format!("{BASE_TOPIC}{}/{STATUS_TOPIC}", device.id);
        let state_topic = format!("{BASE_TOPIC}{}/$state", device.id);
        // The device takes the message once its session is up: subscribed (the embedded broker
        // knows), or `$state` last said `ready` (what any broker shows).
        let up = |broker: &crate::services::broker::BrokerLink| match broker {
            crate::services::broker::BrokerLink::Embedded(b) => {
                b.wait_subscriber(&topic, Duration::ZERO).is_some()
            }
            _ => broker
                .messages()
                .iter()
                .rev()
                .find(|m| m.topic == state_topic)
                .is_some_and(|m| m.payload == b"ready"),
        };
        while !up(broker) {
            if started.elapsed() >= cx.timeout {
                return Ok(Outcome::Interrupted {
                    phase: Phase::Connect,
                    sent: 0,
                    detail: format!(
                        "the device's Homie session was not up on the broker within {:?}",
                        cx.timeout
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
        let mut cursor = broker.seen();
        match self.broker_loss_after {
            None => broker.publish(&topic, &payload, self.retain),
            Some(after) => broker
                .publish_cut(&topic, &payload, self.retain, usize::try_from(after).unwrap_or(usize::MAX))
                .map_err(Unavailable)?,
        }
        let mut written = 0u64;
        let mut accepted = false;
        // When the broker said the device's session was lost (its will), during this push.
        let mut lost_at: Option<Instant> = None;
        loop {
            let mut left = cx.timeout.saturating_sub(started.elapsed());
            if let Some(at) = lost_at {
                left = left.min(LOST_GRACE.saturating_sub(at.elapsed()));
            }
            let watched =
                |m: &crate::services::mqtt_broker::Message| m.topic == status_topic || m.topic == state_topic;
            let Some((i, m)) = broker.wait_message(cursor, left, watched) else {
                let detail = match lost_at {
                    Some(_) => {
                        "the device's session was lost ($state lost) and no status followed".to_string()
                    }
                    None => format!("no final status on {status_topic} within {:?}", cx.timeout),
                };
                return Ok(Outcome::Interrupted {
                    phase: if accepted { Phase::Data } else { Phase::Prepare },
                    sent: written,
                    detail,
                });
            };
            cursor = i + 1;
            let text = m.text();
            if m.topic == state_topic {
                // The broker published the device's will: its session is gone (a power cut, a
                // reset), and with it the message's handling, unless statuses still come. A
                // broker may publish an earlier session's will late (mosquitto, after a quick
                // restart, was seen to publish it after the new session's 202), so a will ends
                // the push only when no status follows it within LOST_GRACE.
                if m.payload == b"lost" && accepted {
                    lost_at.get_or_insert_with(Instant::now);
                }
                continue;
            }
            // The device is still talking: a will seen meanwhile was an earlier session's.
            lost_at = None;
            let Some(status) = Status::parse(&text) else {
                return Ok(Outcome::Unexpected { detail: format!("status `{text}`"), phase: Phase::Data });
            };
            match status {
                Status::Accepted => accepted = true,
                Status::Progress { written: w, .. } => written = u64::from(w),
                Status::Done => return Ok(Outcome::Ok { detail: format!("200 after {written} bytes") }),
                failed => {
                    return Ok(Outcome::DeviceError {
                        name: outcome_name(failed).unwrap_or("unexpected"),
                        detail: text,
                        phase: if written > 0 { Phase::End } else { Phase::Prepare },
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_the_image_md5_unless_told_otherwise() {
        let image = [0xE9u8, 1, 2, 3, 4];
        let push = HomiePush {
            encoding: Encoding::Raw,
            md5: None,
            truncate: None,
            retain: false,
            broker_loss_after: None,
        };
        let (topic, payload) = push.message("dev", &image);
        let md5: String = Md5::digest(image).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(topic, format!("homie/dev/$implementation/ota/firmware/{md5}"));
        assert_eq!(payload, image);
        let push = HomiePush {
            encoding: Encoding::Base64,
            md5: Some("0".repeat(32)),
            truncate: Some(3),
            retain: true,
            broker_loss_after: None,
        };
        let (topic, payload) = push.message("dev", &image);
        assert!(topic.ends_with(&"0".repeat(32)));
        assert_eq!(payload, crate::client::base64(&image[..3]));
    }

    #[test]
    fn every_final_status_has_an_outcome_name_a_step_may_expect() {
        for s in [
            Status::NotModified,
            Status::Disabled,
            Status::BadChecksum,
            Status::NotEnoughSpace,
            Status::FlashError,
            Status::Internal(3),
        ] {
            assert!(outcomes().contains(&outcome_name(s).unwrap()), "{s}");
        }
        assert_eq!(outcome_name(Status::Done), Some("ok"));
        assert_eq!(outcome_name(Status::Accepted), None);
    }
}
