//! Backends: what runs the device. Each is one module implementing [`Backend`] (a factory of
//! [`Dut`]s for scenarios) and one entry in [`BACKENDS`]; the runner only plays steps, and a
//! scenario never names a backend.

pub mod device;
pub mod emu;
pub mod qemu;

use crate::dut::{Dut, DutError};
use crate::scenario::{Image, Scenario};
use std::path::PathBuf;

/// Why a scenario did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The backend cannot play it (an image or a setting its firmware builds lack).
    #[error(transparent)]
    Skip(#[from] SkipReason),
    #[error(transparent)]
    Fail(#[from] BackendError),
}

/// Why a backend does not play a scenario or send an image here: the report's skip reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("no firmware build of fixture `{0}`")]
    NoBuild(String),
    #[error(
        "the firmware was built with password {built:?}, the scenario's device has {wanted:?} (OTAHIL_FW_PASSWORD at `cargo xtask firmware`)"
    )]
    BuiltPassword { built: Option<String>, wanted: Option<String> },
    #[error(
        "the firmware was built for OTA protocol {built}, the scenario wants {wanted} (OTAHIL_FW_OTA_PROTOCOL)"
    )]
    BuiltProtocol { built: u8, wanted: u8 },
    #[error("the firmware boots with espflash's bootloader, built without rollback support")]
    NoBootloaderRollback,
    #[error("the firmware's writer is fixed at sequential erase, without faults")]
    FixedWriter,
}

/// What went wrong setting a backend or a scenario's device up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run here (a program or the firmware builds missing).
    #[error("cannot use the {backend} backend: {reason}")]
    Unusable { backend: &'static str, reason: Box<dyn std::error::Error + Send + Sync> },
    #[error(
        "the bench file names no harness_address (this machine's IP address on the board's network, where the board reaches the broker and the firmware server)"
    )]
    NoHarnessAddress,
    #[error(transparent)]
    Section(crate::paths::ProvisionFailure),
    #[error("cannot build the flash image: {0}")]
    FlashImage(#[source] ota_emu::mkflash::MergeError),
    #[error("cannot provision the device's settings: {0}")]
    Provision(#[source] ota_emu::mkflash::ProvisionError),
    #[error("the device backend needs --bench FILE (fixtures/bench.example.yaml documents one)")]
    NoBench,
    #[error(transparent)]
    BenchFile(#[from] crate::scenario::yaml::ScenarioError),
    #[error("cannot use QEMU as the board: {0}")]
    QemuBoard(#[source] qemu::QemuSetupError),
    #[error("bench {bench}: {error}")]
    Bench { bench: String, error: DutError },
    #[error(transparent)]
    Device(#[from] DutError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BackendError {
    pub fn unusable(backend: &'static str, reason: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError::Unusable { backend, reason: Box::new(reason) }
    }
}

/// Why a backend's snapshots are not compared with the stored ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the firmware builds are not the fixture images ({0})")]
pub struct NotTheFixtures(pub &'static str);

/// A way to run the device under test.
pub trait Backend {
    /// The name `--backend` takes and reports show.
    fn name(&self) -> &'static str;
    /// The bytes this backend sends for `image` (a backend that runs firmware builds maps the
    /// named fixtures to its builds).
    fn ota_image(&self, image: &Image) -> Result<Vec<u8>, SkipReason>;
    /// A device set up for `scenario`, powered off.
    fn start(&self, scenario: &Scenario, context: &StartContext) -> Result<Box<dyn Dut>, StartError>;
    /// Whether its snapshots are comparable with the stored ones (the device runs the fixture
    /// images' bytes), and if not, why.
    fn snapshots_compare(&self) -> Result<(), NotTheFixtures>;
    /// Who the board is (chip, MAC, revision, flash size), once a scenario has started on it:
    /// for the summary and as JUnit properties.
    fn board(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Where the device reaches a service the harness runs on this machine's loopback (a
    /// broker, a firmware server), or why it cannot.
    fn host_address(&self) -> Result<std::net::IpAddr, BackendError>;
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

/// Which firmware a backend's device runs: what `cargo xtask hil` builds before it runs the
/// backend (the same words `otahil check --bench` prints for a bench).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareSource {
    /// The fixture images as they are (the emulator).
    Fixtures,
    /// The chip firmware built for QEMU's Ethernet (`cargo xtask firmware`).
    Qemu,
    /// What the bench file's board runs (a bench is needed).
    Bench,
}

impl FirmwareSource {
    pub fn word(self) -> &'static str {
        match self {
            FirmwareSource::Fixtures => "fixtures",
            FirmwareSource::Qemu => "qemu",
            FirmwareSource::Bench => "bench",
        }
    }
}

/// A registered backend.
pub struct BackendEntry {
    pub name: &'static str,
    pub about: &'static str,
    pub firmware: FirmwareSource,
    /// Whether what the backend runs is on this machine (a program it needs), asked before
    /// anything is built for it.
    pub preflight: fn() -> Result<(), BackendError>,
    /// Sets the backend up, or says why it cannot run here.
    pub make: fn(&BackendOptions) -> Result<Box<dyn Backend>, BackendError>,
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

/// Every backend with what it is, for `--help`: `emu (the host emulator …); qemu (…); …`.
pub fn described() -> String {
    BACKENDS.iter().map(|b| format!("{} ({})", b.name, b.about)).collect::<Vec<_>>().join("; ")
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
    let mut image =
        ota_emu::mkflash::merged_image(&d.partitions, app, d.flash_size).map_err(BackendError::FlashImage)?;
    let refused = |e| BackendError::Provision(ota_emu::mkflash::ProvisionError::Settings(e));
    let mut page = ota_core::provision::SettingsPage::new(&ota_core::provision::Provision {
        ota_password: d.password.as_deref(),
        protocol: d.protocol,
        wifi,
    })
    .map_err(refused)?;
    if let Some(a) = &d.arduino {
        page.path(&ota_core::proto::arduino::settings::Provision {
            password: a.password.as_deref(),
            auth: a.auth,
        })
        .map_err(refused)?;
    }
    let broker = context.device_broker.map(|a| a.to_string());
    let cx = crate::paths::ProvisionCx {
        broker: broker.as_deref(),
        server_base: context.device_server.as_deref(),
        ca_pem: context.device_tls.as_ref().map(|t| t.ca_pem.as_str()),
        clock_unix: context.device_tls.as_ref().and_then(|t| t.clock_unix),
    };
    for section in d.paths.iter() {
        section.provision(&cx, &mut page).map_err(BackendError::Section)?;
    }
    let provisioned = match ota_emu::mkflash::write_page(&mut image, &d.partitions, &page.finish()) {
        Ok(()) => true,
        Err(ota_emu::mkflash::ProvisionError::NoNvsPartition) => false,
        Err(e) => return Err(BackendError::Provision(e).into()),
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
        assert_eq!(by_name("emu").map(|b| b.firmware), Some(FirmwareSource::Fixtures));
        assert_eq!(by_name("device").map(|b| b.firmware), Some(FirmwareSource::Bench));
        assert!(BACKENDS.iter().any(|b| b.firmware == FirmwareSource::Qemu));
    }
}
