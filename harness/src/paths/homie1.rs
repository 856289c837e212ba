//! Homie 1.x OTA: the harness is the server. It serves the image at the device's OTA URL (the
//! run's firmware server, `/ota`), announces the image's version on `devices/<id>/$ota`, checks
//! the device's pull (`x-ESP32-version: id=name=have=want`), and reads the outcome from the
//! `$fwversion` the device publishes when it is back in normal mode (Homie 1.x reports nothing
//! else over MQTT).

use super::{
    Needs, PathEntry, PathUpdate, ProvisionCx, ProvisionFailure, ReadCx, SectionEntry, Unavailable, UpdateCx,
};
use crate::client::{Outcome, Phase};
use crate::scenario::yaml::{Options, ScenarioError};
use crate::services::firmware_server::{Fault, Framing, Md5Header, RangeSupport, Response, Route};
use ota_core::proto::UpdatePath;
use ota_core::proto::homie1::{BASE_TOPIC, OTA_TOPIC};
use ota_core::provision::SettingsPage;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ENTRY: PathEntry = PathEntry {
    name: "homie1",
    about: "Homie 1.x OTA: a version announced on $ota, the device pulls the image over HTTP in OTA mode",
    sweep: Some(UpdatePath::Homie1),
    outcomes,
    read,
    needs: Needs { broker: true, server: true },
    section: Some(SectionEntry {
        key: "homie1",
        read: |o, cx| Ok(Arc::new(DeviceSection(super::homie::device_section(o, cx, "homie1")?))),
    }),
};

/// Where the device pulls from, under the run's firmware server (Homie's default path).
pub const OTA_PATH: &str = "/ota";

fn outcomes() -> Vec<&'static str> {
    vec!["not_updated", "no_request"]
}

/// `device: { homie1: { … } }`: the same settings as Homie 3's section (the id, the OTA
/// switch), read by the same code; the device pulls from the run's firmware server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSection(pub super::homie::DeviceSection);

impl super::DeviceSection for DeviceSection {
    fn needs(&self) -> Needs {
        ENTRY.needs
    }

    fn provision(&self, cx: &ProvisionCx<'_>, page: &mut SettingsPage) -> Result<(), ProvisionFailure> {
        let broker = cx.broker("a Homie 1.x session")?;
        let base = cx.server_base.ok_or(ProvisionFailure::NoServer("a Homie 1.x session"))?;
        let url = format!("{base}{OTA_PATH}");
        let DeviceSection(homie) = self;
        page.path(&ota_core::proto::homie1::settings::Provision {
            broker,
            id: Some(&homie.id),
            ota: homie.ota,
            url: Some(&url),
        })?;
        Ok(())
    }
}

/// How the server answers the device's pull.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// 200 and the image.
    #[default]
    Image,
    /// 304: no firmware for that version (what `homie-ota` says for one it does not have).
    NotModified,
    /// 500.
    ServerError,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// The version announced on `$ota` (default: the image's own).
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    answer: Option<Answer>,
    /// Send only the first N bytes of the body (with the whole length announced).
    #[serde(default)]
    truncate: Option<u64>,
    /// `x-MD5: wrong` (the updater checks it before the boot switch).
    #[serde(default)]
    md5: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Homie1Offer {
    pub version: Option<String>,
    pub answer: Answer,
    pub truncate: Option<u64>,
    pub wrong_md5: bool,
}

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let cx = rx.cx;
    if !rx.sections.has("homie1") {
        return cx.err(
            rx.line,
            rx.column,
            "ota via homie1: the device has no Homie 1.x session: add `homie1: { ota: true }` under `device`",
        );
    }
    let (raw, spans): (Raw, _) = options.rest("homie1 OTA steps", cx)?;
    let wrong_md5 = match raw.md5.as_deref() {
        None => false,
        Some("wrong") => true,
        Some(_) => return spans.err(cx, "md5", "md5: expected `wrong` (the server sends a wrong x-MD5)"),
    };
    if let Some(v) = &raw.version
        && (v.is_empty() || v.contains('\n'))
    {
        return spans.err(cx, "version", "version: expected the text to announce on $ota");
    }
    Ok(Arc::new(Homie1Offer {
        version: raw.version,
        answer: raw.answer.unwrap_or_default(),
        truncate: raw.truncate,
        wrong_md5,
    }))
}

/// The version in `image`'s app descriptor.
fn image_version(image: &[u8]) -> Option<String> {
    ota_core::app_desc::of_image(image).map(|d| d.version().to_string())
}

impl PathUpdate for Homie1Offer {
    /// The device ends no session the harness sees: it restarts twice.
    fn device_ends_session(&self, _outcome: &Outcome) -> bool {
        false
    }

    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let (Some(broker), Some(server), Some(device)) =
            (cx.broker, cx.server, cx.sections.get::<DeviceSection>("homie1"))
        else {
            return Err(Unavailable("homie1: the run has no broker or firmware server (a scenario check should have refused this)".into()));
        };
        let Some(version) = self.version.clone().or_else(|| image_version(cx.image)) else {
            return Err(Unavailable(
                "homie1: the image has no app descriptor to take a version from; give `version`".into(),
            ));
        };
        let started = Instant::now();
        let response = match self.answer {
            Answer::Image => Response::Image {
                bytes: Arc::new(cx.image.to_vec()),
                framing: Framing::ContentLength,
                md5: if self.wrong_md5 { Md5Header::Value("0".repeat(32)) } else { Md5Header::Correct },
                range: RangeSupport::Ignore,
            },
            Answer::NotModified => Response::NotModified,
            Answer::ServerError => Response::Status(500),
        };
        let fault = match self.truncate {
            Some(at) => Fault::Truncate { at: usize::try_from(at).unwrap_or(usize::MAX) },
            None => Fault::None,
        };
        server.route(OTA_PATH, Route { response, fault });
        let prefix = format!("{BASE_TOPIC}{}/", device.0.id);
        let fw_version = format!("{prefix}$fwversion");
        let online = format!("{prefix}$online");
        // The device hears the offer once its session is up: `$online` last said `true`, and its
        // announcement is over (`$fwversion` after that `$online`). Offering between the two let
        // the boot's own `$fwversion` pass for the device coming back without pulling.
        loop {
            let messages = broker.messages();
            let last_online = messages.iter().rposition(|m| m.topic == online);
            let up = last_online.is_some_and(|i| {
                messages[i].payload == b"true" && messages[i + 1..].iter().any(|m| m.topic == fw_version)
            });
            if up {
                break;
            }
            if started.elapsed() >= cx.timeout {
                return Ok(Outcome::Interrupted {
                    phase: Phase::Connect,
                    sent: 0,
                    detail: format!("the device's Homie 1.x session was not up within {:?}", cx.timeout),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let requests = server.requests().len();
        let cursor = broker.seen();
        broker.publish(&format!("{prefix}{OTA_TOPIC}"), version.as_bytes(), false);
        // The pull, then the device back in normal mode saying its version.
        let left = cx.timeout.saturating_sub(started.elapsed());
        let Some((_, back)) = broker.wait_message(cursor, left, |m| m.topic == fw_version) else {
            let asked = server.requests().len() > requests;
            return Ok(if asked {
                Outcome::Interrupted {
                    phase: Phase::Data,
                    sent: 0,
                    detail: format!("the device pulled but did not come back within {:?}", cx.timeout),
                }
            } else {
                Outcome::DeviceError {
                    name: "no_request",
                    detail: format!("no pull and no restart within {:?} of the offer", cx.timeout),
                    phase: Phase::Invitation,
                }
            });
        };
        let pulls: Vec<_> = server.requests().into_iter().skip(requests).collect();
        let Some(pull) = pulls.first() else {
            return Ok(Outcome::DeviceError {
                name: "no_request",
                detail: format!("the device came back as {} without pulling", back.text()),
                phase: Phase::Invitation,
            });
        };
        let header = pull.header("x-ESP32-version").unwrap_or("");
        let parts: Vec<&str> = header.split('=').collect();
        if pull.target != OTA_PATH || parts.len() != 4 || parts[0] != device.0.id || parts[3] != version {
            return Ok(Outcome::Unexpected {
                detail: format!(
                    "pull of {} with x-ESP32-version `{header}` (expected {}=<name>=<have>={version})",
                    pull.target, device.0.id
                ),
                phase: Phase::Prepare,
            });
        }
        let now_running = back.text();
        Ok(if now_running == version {
            Outcome::Ok { detail: format!("pulled with `{header}`, runs {now_running}") }
        } else {
            Outcome::DeviceError {
                name: "not_updated",
                detail: format!("pulled with `{header}`, came back as {now_running}"),
                phase: Phase::End,
            }
        })
    }
}
