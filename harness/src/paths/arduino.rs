//! ArduinoOTA: the harness invites the device and serves the image as `espota.py` does
//! ([`crate::client::arduino`]), with the uploader's faults.

use super::{PathEntry, PathUpdate, ReadCx, Unavailable, UpdateCx, UploaderOptions};
use crate::client::{self, ArduinoFaults, Outcome, Upload};
use crate::scenario::yaml::{Options, ScenarioError};
use ota_core::proto::UpdatePath;
use serde::Deserialize;
use std::sync::Arc;

pub const ENTRY: PathEntry = PathEntry {
    name: "arduino",
    about: "ArduinoOTA (espota.py): an invitation datagram, the device connects back for the image",
    sweep: Some(UpdatePath::Arduino),
    outcomes: client::arduino::error_names,
    read,
    needs: super::Needs { broker: false, server: false },
    section: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStall {
    after_bytes: u64,
    #[serde(rename = "for")]
    pause: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    declared_size: Option<u32>,
    #[serde(default)]
    md5: Option<String>,
    #[serde(default)]
    disconnect_after: Option<u64>,
    #[serde(default)]
    send_delay: Option<crate::scenario::yaml::DurationText>,
    // The uploader's faults.
    #[serde(default)]
    invitation: Option<String>,
    #[serde(default)]
    command: Option<u32>,
    #[serde(default)]
    stall: Option<RawStall>,
    #[serde(default)]
    no_ack: Option<bool>,
    #[serde(default)]
    second_invitation: Option<bool>,
    #[serde(default)]
    answer_timeout: Option<crate::scenario::yaml::DurationText>,
    #[serde(default)]
    invitation_attempts: Option<u32>,
    #[serde(default)]
    auth_answer: Option<String>,
    #[serde(default)]
    refuse_back_connection: Option<bool>,
}

/// An ArduinoOTA upload with its uploader's options and faults.
#[derive(Debug, Clone)]
pub struct ArduinoUpdate {
    pub uploader: UploaderOptions,
    pub faults: ArduinoFaults,
}

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let cx = rx.cx;
    let (raw, spans): (Raw, _) = options.rest("arduino OTA steps", cx)?;
    let invitation_attempts = match raw.invitation_attempts {
        None => client::arduino::INVITATION_ATTEMPTS,
        Some(n) if (1..=100).contains(&n) => n,
        Some(n) => {
            return spans.err(
                cx,
                "invitation_attempts",
                format!("invitation_attempts {n}: expected 1 to 100"),
            );
        }
    };
    let command = match raw.command {
        None => ota_core::proto::arduino::CMD_FLASH,
        Some(c) if c == 0 || c == 100 => c,
        Some(c) => {
            return spans.err(cx, "command", format!("command {c}: expected 0 (flash) or 100 (filesystem)"));
        }
    };
    let stall = match &raw.stall {
        None => None,
        Some(st) => match crate::scenario::yaml::parse_duration(&st.pause) {
            Ok(d) => Some((st.after_bytes, d)),
            Err(e) => {
                return spans.err(
                    cx,
                    "stall",
                    crate::scenario::yaml::duration_message("stall for", &st.pause, e),
                );
            }
        },
    };
    let faults = ArduinoFaults {
        answer_timeout: super::duration_option(
            raw.answer_timeout.as_ref().map(|t| t.0.as_str()),
            "answer_timeout",
            &spans,
            cx,
        )?
        .unwrap_or(client::arduino::WAIT),
        invitation_attempts,
        raw_invitation: raw.invitation,
        raw_auth_answer: raw.auth_answer,
        refuse_back_connection: raw.refuse_back_connection.unwrap_or(false),
        command,
        stall,
        no_ack: raw.no_ack.unwrap_or(false),
        second_invitation: raw.second_invitation.unwrap_or(false),
    };
    Ok(Arc::new(ArduinoUpdate {
        uploader: UploaderOptions {
            password: raw.password,
            declared_size: raw.declared_size,
            md5: super::md5_option(raw.md5.as_deref(), &spans, cx)?,
            disconnect_after: raw.disconnect_after,
            send_delay: super::duration_option(
                raw.send_delay.as_ref().map(|t| t.0.as_str()),
                "send_delay",
                &spans,
                cx,
            )?,
        },
        faults,
    }))
}

impl PathUpdate for ArduinoUpdate {
    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let endpoint = cx.endpoint(client::Uploader::Arduino.port())?;
        let u = &self.uploader;
        let upload = Upload {
            image: cx.image,
            file_name: cx.file_name,
            password: u.password.as_deref(),
            offer_sha256: false,
            declared_size: u.declared_size,
            md5: u.md5,
            disconnect_after: u.disconnect_after,
            send_delay: u.send_delay,
            timeout: cx.timeout,
            seed: cx.seed,
            arduino: self.faults.clone(),
        };
        Ok(cx.rt.block_on(client::upload(client::Uploader::Arduino, endpoint, &upload)))
    }

    /// A device that sent a challenge nobody answers keeps waiting for the answer: there is no
    /// end to wait for.
    fn device_ends_session(&self, outcome: &Outcome) -> bool {
        !matches!(outcome, Outcome::PasswordRequired)
    }
}
