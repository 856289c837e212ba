//! Scenarios as written: the YAML's shape, deserialized strictly (unknown keys refused), each
//! value with its place for the checks that follow.

use super::Options;
use super::services;
use crate::paths;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) about: Option<String>,
    pub(super) device: RawDevice,
    pub(super) steps: Vec<Spanned<RawStep>>,
}

/// `device:` as written: its own keys, and the update paths' sections (`device: { KEY: … }`
/// for each path's registered key), each kept as written for its path to read.
#[derive(Debug)]
pub(super) struct RawDevice {
    pub(super) firmware: Spanned<String>,
    pub(super) rest: RawDeviceRest,
}

impl RawDevice {
    /// The message for a key `device:` does not have.
    pub(super) fn unknown_key_message(key: &str) -> String {
        let known: Vec<String> =
            DEVICE_KEYS.iter().chain(&crate::paths::section_keys()).map(|k| format!("`{k}`")).collect();
        format!("unknown field `{key}`, expected one of {}", known.join(", "))
    }
}

/// What `device:` holds besides its firmware.
#[derive(Debug)]
pub(super) struct RawDeviceRest {
    pub(super) password: Option<Spanned<String>>,
    pub(super) partitions: Option<Spanned<String>>,
    pub(super) flash_size: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<u8>>,
    pub(super) bootloader_rollback: Option<bool>,
    pub(super) erase: Option<EraseSpec>,
    pub(super) seed: Option<u64>,
    pub(super) writer_fault: Option<WriterFaultSpec>,
    pub(super) arduino: Option<RawArduinoDevice>,
    /// The paths' sections, each as written, for its path to read.
    pub(super) sections: Vec<(Spanned<String>, Options)>,
    /// The first key that is neither the device's nor a path's.
    pub(super) unknown: Option<Spanned<String>>,
}

/// `device:`'s own keys (the paths' section keys come from the registry).
const DEVICE_KEYS: &[&str] = &[
    "firmware",
    "password",
    "partitions",
    "flash_size",
    "protocol",
    "bootloader_rollback",
    "erase",
    "seed",
    "writer_fault",
    "arduino",
];

impl<'de> Deserialize<'de> for RawDevice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RawDevice;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the device's settings (a mapping)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDevice, A::Error> {
                let mut firmware = None;
                let mut d = RawDeviceRest {
                    password: None,
                    partitions: None,
                    flash_size: None,
                    protocol: None,
                    bootloader_rollback: None,
                    erase: None,
                    seed: None,
                    writer_fault: None,
                    arduino: None,
                    sections: Vec::new(),
                    unknown: None,
                };
                // A key written twice is refused by the YAML reader before it gets here.
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.value.as_str() {
                        "firmware" => firmware = Some(map.next_value()?),
                        "password" => d.password = map.next_value()?,
                        "partitions" => d.partitions = map.next_value()?,
                        "flash_size" => d.flash_size = map.next_value()?,
                        "protocol" => d.protocol = map.next_value()?,
                        "bootloader_rollback" => d.bootloader_rollback = map.next_value()?,
                        "erase" => d.erase = map.next_value()?,
                        "seed" => d.seed = map.next_value()?,
                        "writer_fault" => d.writer_fault = map.next_value()?,
                        "arduino" => d.arduino = map.next_value()?,
                        k if paths::section_by_key(k).is_some() => {
                            let options: Options = map.next_value()?;
                            let options = options.at(key.referenced.line(), key.referenced.column());
                            d.sections.push((key, options));
                        }
                        _ => {
                            // Refused by the checks, at the key (an error here has no place).
                            map.next_value::<de::IgnoredAny>()?;
                            d.unknown.get_or_insert(key);
                        }
                    }
                }
                let firmware = firmware.ok_or_else(|| de::Error::missing_field("firmware"))?;
                Ok(RawDevice { firmware, rest: d })
            }
        }
        d.deserialize_map(Fields)
    }
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
    pub(super) timeout: Option<super::yaml::DurationText>,
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
