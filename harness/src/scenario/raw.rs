//! Scenarios as written: the YAML's shape, deserialized strictly (unknown keys refused), each
//! value with its place for the checks that follow.

use super::Options;
use super::services;
use crate::paths;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) about: Option<String>,
    pub(super) device: RawDevice,
    pub(super) steps: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub(super) firmware: Spanned<String>,
    #[serde(default)]
    pub(super) password: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) partitions: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) flash_size: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) protocol: Option<Spanned<u8>>,
    #[serde(default)]
    pub(super) bootloader_rollback: Option<bool>,
    #[serde(default)]
    pub(super) erase: Option<EraseSpec>,
    #[serde(default)]
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) writer_fault: Option<WriterFaultSpec>,
    #[serde(default)]
    pub(super) arduino: Option<RawArduinoDevice>,
    #[serde(default)]
    pub(super) mqtt: Option<paths::mqtt_pull::RawMqttDevice>,
    #[serde(default)]
    pub(super) homie: Option<paths::homie::RawDeviceSection>,
    #[serde(default)]
    pub(super) homie1: Option<paths::homie1::RawDeviceSection>,
}

/// The device's ArduinoOTA settings, provisioned in NVS like ESPHome's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArduinoDevice {
    #[serde(default)]
    pub(super) password: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) auth: Option<ArduinoAuthSpec>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum ArduinoAuthSpec {
    Md5,
    Pbkdf2,
}

/// A deliberately broken writer, to show the sweep catches one (never a real device setting).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriterFaultSpec {
    SwitchBeforeWrite,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EraseSpec {
    Sequential,
    Upfront,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawStep {
    Boot,
    PowerOn,
    PowerOff,
    Reset,
    ExpectLog(RawExpectLog),
    Ota(Options),
    Snapshot(RawSnapshot),
    Sweep(RawSweep),
    Serve(Box<services::RawServe>),
    MqttPublish(services::RawPublish),
    ExpectStatus(services::RawExpectStatus),
    ExpectRequest(services::RawExpectRequest),
    Broker(services::BrokerAction),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSweep {
    #[serde(default)]
    pub(super) via: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) image: Spanned<String>,
    #[serde(default)]
    pub(super) torn: bool,
    #[serde(default)]
    pub(super) exact: bool,
    #[serde(default)]
    pub(super) random_runs: u32,
    #[serde(default)]
    pub(super) max_cuts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawExpectLog {
    Pattern(String),
    Full(RawExpectLogFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpectLogFull {
    pub(super) pattern: String,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) absent: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSnapshot {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCut {
    #[serde(default)]
    pub(super) after_bytes: Option<u64>,
    #[serde(default)]
    pub(super) after_ops: Option<u64>,
    #[serde(default)]
    pub(super) torn_seed: Option<u64>,
    #[serde(default)]
    pub(super) at_log: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlashExpect {
    /// The whole flash must be byte-identical before and after the step.
    Unchanged,
}
