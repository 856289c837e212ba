//! Backends: what runs the device. Each is one module implementing [`Backend`] (a factory of
//! [`Dut`]s for scenarios) and one entry in [`BACKENDS`]; the runner only plays steps, and a
//! scenario never names a backend.

pub mod device;
pub mod emu;
pub mod qemu;

use crate::dut::Dut;
use crate::scenario::{Image, Scenario};
use std::path::PathBuf;

/// Why a scenario did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The backend cannot play it (a capability or an image it lacks): the reason.
    Skip(String),
    Fail(String),
}

/// A way to run the device under test.
pub trait Backend {
    /// The name `--backend` takes and reports show.
    fn name(&self) -> &'static str;
    /// The bytes this backend sends for `image` (a backend that runs firmware builds maps the
    /// named fixtures to its builds).
    fn ota_image(&self, image: &Image) -> Result<Vec<u8>, String>;
    /// A device set up for `scenario`, powered off.
    fn start(&self, scenario: &Scenario, context: &StartContext) -> Result<Box<dyn Dut>, StartError>;
    /// Whether its snapshots are comparable with the stored ones (the device runs the fixture
    /// images' bytes), and if not, why.
    fn snapshots_compare(&self) -> Result<(), String>;
    /// Who the board is (chip, MAC, revision, flash size), once a scenario has started on it:
    /// for the summary and as JUnit properties.
    fn board(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Where the device reaches a service the harness runs on this machine's loopback (a
    /// broker, a firmware server), or why it cannot.
    fn host_address(&self) -> Result<std::net::IpAddr, String>;
}

/// What a backend is told when it starts a scenario's device, beyond the scenario: what the
/// run overrides and what the services started for this scenario give the device.
#[derive(Debug, Clone, Default)]
pub struct StartContext {
    /// Overrides the scenario's device seed.
    pub seed: Option<u64>,
    /// The MQTT broker as the device reaches it (provisioned into its NVS), when the scenario's
    /// device has the pull path.
    pub device_broker: Option<std::net::SocketAddr>,
    /// The test CA and clock provisioned with it, when the scenario's device has `tls`.
    pub device_tls: Option<DeviceTls>,
    /// The run's firmware server as the device reaches it (`http://host:port`), when one runs.
    pub device_server: Option<String>,
}

/// What a device with `tls` is provisioned with: the run's test CA, and the host's clock when
/// the scenario asks for certificate dates to be checked.
#[derive(Clone, Debug)]
pub struct DeviceTls {
    pub ca_pem: String,
    pub clock_unix: Option<u64>,
}

/// What a backend may need from the command line.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Where the firmware builds are (`cargo xtask firmware`).
    pub firmware: PathBuf,
    /// The bench file of the device backend's board.
    pub bench: Option<PathBuf>,
}

/// A registered backend.
pub struct BackendEntry {
    pub name: &'static str,
    pub about: &'static str,
    /// Sets the backend up, or says why it cannot run here.
    pub make: fn(&BackendOptions) -> Result<Box<dyn Backend>, String>,
}

/// Every backend, in the order `--help` lists them; the first is the default.
pub const BACKENDS: &[BackendEntry] = &[emu::ENTRY, qemu::ENTRY, device::ENTRY];

/// The backend registered as `name`.
pub fn by_name(name: &str) -> Option<&'static BackendEntry> {
    BACKENDS.iter().find(|b| b.name == name)
}

/// The registered names, for messages.
pub fn names() -> String {
    BACKENDS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
}

/// The scenario device's flash: its partition table, `app` in the first app slot and its OTA
/// settings provisioned into the nvs partition, as a factory would. `false` with it when the
/// layout has no nvs partition (the firmware's built-in settings apply then).
pub fn device_flash(
    s: &Scenario,
    app: &[u8],
    wifi: Option<(&str, &str)>,
    context: &StartContext,
) -> Result<(Vec<u8>, bool), StartError> {
    let d = &s.device;
    let broker = context.device_broker.map(|a| a.to_string());
    let homie1_url =
        context.device_server.as_ref().map(|base| format!("{base}{}", crate::paths::homie1::OTA_PATH));
    let mqtt = match (&d.mqtt, &broker) {
        (Some(m), Some(broker)) => Some(ota_core::provision::MqttProvision {
            broker,
            command_topic: Some(&m.command_topic),
            state_topic: Some(&m.state_topic),
            version_check: m.version_check.code(),
            timeout_s: m.timeout_s,
            ca_pem: context.device_tls.as_ref().map(|t| t.ca_pem.as_str()),
            clock_unix: context.device_tls.as_ref().and_then(|t| t.clock_unix),
            resume: m.resume,
        }),
        (Some(_), None) => {
            return Err(StartError::Fail(
                "the scenario's device has the pull path but no broker was started".into(),
            ));
        }
        (None, _) => None,
    };
    let mut image = ota_emu::mkflash::merged_image(&d.partitions, app, d.flash_size)
        .map_err(|e| StartError::Fail(format!("cannot build the flash image: {e}")))?;
    let provisioned = match ota_emu::mkflash::provision_settings(
        &mut image,
        &d.partitions,
        &ota_core::provision::Provision {
            ota_password: d.password.as_deref(),
            protocol: d.protocol,
            wifi,
            arduino: d.arduino.as_ref().map(|a| (a.password.as_deref(), a.auth)),
            mqtt,
            homie: match (&d.paths.homie, &broker) {
                (Some(h), Some(broker)) => {
                    Some(ota_core::provision::HomieProvision { broker, id: Some(&h.id), ota: h.ota })
                }
                (Some(_), None) => {
                    return Err(StartError::Fail(
                        "the scenario's device has a Homie session but no broker was started".into(),
                    ));
                }
                (None, _) => None,
            },
            homie1: match (&d.paths.homie1, &broker) {
                (Some(h), Some(broker)) => Some(ota_core::provision::Homie1Provision {
                    broker,
                    id: Some(&h.id),
                    ota: h.ota,
                    url: homie1_url.as_deref(),
                }),
                (Some(_), None) => {
                    return Err(StartError::Fail(
                        "the scenario's device has a Homie 1.x session but no broker was started".into(),
                    ));
                }
                (None, _) => None,
            },
        },
    ) {
        Ok(()) => true,
        Err(ota_emu::mkflash::ProvisionError::NoNvsPartition) => false,
        Err(e) => return Err(StartError::Fail(format!("cannot provision the device's settings: {e}"))),
    };
    Ok((image, provisioned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_each_backend_once_under_its_own_name() {
        let mut seen = std::collections::HashSet::new();
        for b in BACKENDS {
            assert!(seen.insert(b.name), "{} twice", b.name);
            assert!(by_name(b.name).is_some());
        }
        assert_eq!(BACKENDS[0].name, "emu", "the emulator is the default");
        assert!(by_name("bench-of-dreams").is_none());
        assert_eq!(names(), "emu, qemu, device");
    }
}
