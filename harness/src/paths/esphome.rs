//! ESPHome native OTA: the harness uploads as `espota2.py` does ([`crate::client::esphome`]).

use super::{PathEntry, PathUpdate, ReadCx, Unavailable, UpdateCx, UploaderOptions};
use crate::client::{self, Outcome, Upload};
use crate::scenario::yaml::{Options, ScenarioError};
use ota_core::proto::UpdatePath;
use serde::Deserialize;
use std::sync::Arc;

pub const ENTRY: PathEntry = PathEntry {
    name: "esphome",
    about: "ESPHome native OTA (espota2.py): the harness uploads to the device's port 3232",
    sweep: Some(UpdatePath::Esphome),
    outcomes: client::esphome::error_names,
    read,
    needs: super::Needs { broker: false, server: false },
    section: None,
};

/// Which authentication the client offers.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthSpec {
    /// Feature bit 1 set: a device that supports it challenges with SHA-256.
    #[default]
    Sha256,
    /// An ESPHome 2024.11 client: MD5 only.
    Md5,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<AuthSpec>,
    #[serde(default)]
    declared_size: Option<u32>,
    #[serde(default)]
    md5: Option<String>,
    #[serde(default)]
    disconnect_after: Option<u64>,
    #[serde(default)]
    send_delay: Option<crate::scenario::yaml::DurationText>,
}

/// An ESPHome upload with its client's options.
#[derive(Debug, Clone)]
pub struct EsphomeUpdate {
    pub uploader: UploaderOptions,
    pub auth: AuthSpec,
}

fn read(options: Options, rx: &ReadCx<'_>) -> Result<super::Update, ScenarioError> {
    let (raw, spans): (Raw, _) = options.rest("esphome OTA steps", rx.cx)?;
    Ok(Arc::new(EsphomeUpdate {
        uploader: UploaderOptions {
            password: raw.password,
            declared_size: raw.declared_size,
            md5: super::md5_option(raw.md5.as_deref(), &spans, rx.cx)?,
            disconnect_after: raw.disconnect_after,
            send_delay: super::duration_option(
                raw.send_delay.as_ref().map(|t| t.0.as_str()),
                "send_delay",
                &spans,
                rx.cx,
            )?,
        },
        auth: raw.auth.unwrap_or_default(),
    }))
}

impl PathUpdate for EsphomeUpdate {
    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable> {
        let endpoint = cx.endpoint(client::Uploader::Esphome.port())?;
        let u = &self.uploader;
        let upload = Upload {
            image: cx.image,
            file_name: cx.file_name,
            password: u.password.as_deref(),
            offer_sha256: self.auth == AuthSpec::Sha256,
            declared_size: u.declared_size,
            md5: u.md5,
            disconnect_after: u.disconnect_after,
            send_delay: u.send_delay,
            timeout: cx.timeout,
            seed: cx.seed,
            arduino: client::ArduinoFaults::default(),
        };
        Ok(cx.rt.block_on(client::upload(client::Uploader::Esphome, endpoint, &upload)))
    }
}
