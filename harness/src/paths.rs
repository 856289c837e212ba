//! The update paths the harness drives, one module each and one line in [`PATHS`]: a path
//! declares its name, reads its own options of an `ota:` step (and its section of `device:`),
//! names the outcomes a step may expect, says which services it needs and runs the update.
//! The scenario loader and the runner ask the registry; neither names a path.

pub mod arduino;
pub mod elegant_ota;
pub mod esphome;
pub mod homie;
pub mod homie1;
pub mod mqtt_pull;
pub mod web_form;
pub mod ws_ota;

use crate::client::Outcome;
use crate::dut::{EndpointError, Endpoints, Port};
use crate::scenario::yaml::{Ctx, Options, ScenarioError, Spans};
use crate::services::broker::BrokerLink;
use ota_core::proto::UpdatePath;
use ota_core::provision::{ProvisionError, SettingsPage};
use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One registered update path.
pub struct PathEntry {
    /// What `ota: { via: NAME }` (or `protocol: NAME`) names.
    pub name: &'static str,
    /// One line for `--help` and the README.
    pub about: &'static str,
    /// The core path whose state machine the emulator's power-cut sweep drives, when it has one.
    pub sweep: Option<UpdatePath>,
    /// The outcome names a step may expect besides `ok`, `interrupted` and `password_required`.
    pub outcomes: fn() -> Vec<&'static str>,
    /// Reads this path's options of an `ota:` step (what the step's own keys left).
    pub read: fn(Options, &ReadCx<'_>) -> Result<Update, ScenarioError>,
    /// The services the path's steps need from the run.
    pub needs: Needs,
    /// The path's own section of `device:`, when it has one.
    pub section: Option<SectionEntry>,
}

/// A path's section of `device:` (`device: { KEY: { … } }`): the settings the device is
/// provisioned with for that path.
pub struct SectionEntry {
    pub key: &'static str,
    /// Reads the section's options (every error at its key).
    pub read: fn(Options, &Ctx<'_>) -> Result<Section, ScenarioError>,
}

/// A device section as its path read it.
pub type Section = Arc<dyn DeviceSection>;

impl fmt::Debug for PathEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The services a path's steps use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// An MQTT broker the device is provisioned with.
    pub broker: bool,
    /// The run's firmware server (the path's update is pulled from it).
    pub server: bool,
}

/// Every path, in the order messages list them; the first is what an `ota:` step without
/// `via` uses.
pub const PATHS: &[PathEntry] = &[
    esphome::ENTRY,
    arduino::ENTRY,
    homie::ENTRY,
    homie1::ENTRY,
    mqtt_pull::ENTRY,
    web_form::ENTRY,
    elegant_ota::ENTRY,
    ws_ota::ENTRY,
];

/// The path registered as `name`.
pub fn by_name(name: &str) -> Option<&'static PathEntry> {
    PATHS.iter().find(|p| p.name == name)
}

/// The registered names, for messages.
pub fn names() -> String {
    PATHS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

/// The path whose sweep drives `core`.
pub fn of_core(core: UpdatePath) -> Option<&'static PathEntry> {
    PATHS.iter().find(|p| p.sweep == Some(core))
}

/// A path's section of `device:` as its path read it: what the device needs from the run and
/// what it is provisioned with.
pub trait DeviceSection: fmt::Debug + Send + Sync + Any {
    /// The services the device connects to for this path.
    fn needs(&self) -> Needs;
    /// Writes the path's settings on the device's provisioning page.
    fn provision(&self, cx: &ProvisionCx<'_>, page: &mut SettingsPage) -> Result<(), ProvisionFailure>;
    /// The command and state topics of a device that says on its state topic when its MQTT
    /// session is up: the generic MQTT steps wait for that through any broker.
    fn status_topics(&self) -> Option<(&str, &str)> {
        None
    }
    /// Whether the device is provisioned with the run's test CA (`Some`), and with the host's
    /// clock (`true`) so that certificate dates are checked.
    fn test_ca(&self) -> Option<bool> {
        None
    }
}

/// What the run offers a device section's provisioning: its services as the device reaches
/// them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProvisionCx<'a> {
    /// The MQTT broker (`ip:port`).
    pub broker: Option<&'a str>,
    /// The firmware server's base URL (`http://host:port`).
    pub server_base: Option<&'a str>,
    /// The test CA (PEM), when a section asked for it.
    pub ca_pem: Option<&'a str>,
    /// The host's clock (Unix seconds), when a section asked for it.
    pub clock_unix: Option<u64>,
}

impl<'a> ProvisionCx<'a> {
    /// The broker, or the error that `what` needs one.
    pub fn broker(&self, what: &'static str) -> Result<&'a str, ProvisionFailure> {
        self.broker.ok_or(ProvisionFailure::NoBroker(what))
    }
}

/// Why a device section could not be provisioned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionFailure {
    #[error("the scenario's device has {0} but no broker was started")]
    NoBroker(&'static str),
    #[error("the scenario's device has {0} but no firmware server was started")]
    NoServer(&'static str),
    #[error("{0}")]
    Refused(ProvisionError),
}

impl From<ProvisionError> for ProvisionFailure {
    fn from(e: ProvisionError) -> Self {
        ProvisionFailure::Refused(e)
    }
}

/// The device's path sections, each under its key, as its path read it.
#[derive(Debug, Clone, Default)]
pub struct DeviceSections(Vec<(&'static str, Section)>);

impl DeviceSections {
    pub fn insert(&mut self, key: &'static str, section: Section) {
        self.0.retain(|(k, _)| *k != key);
        self.0.push((key, section));
    }

    /// The section under `key`, as its path's type.
    pub fn get<T: DeviceSection>(&self, key: &str) -> Option<&T> {
        let (_, s) = self.0.iter().find(|(k, _)| *k == key)?;
        (s.as_ref() as &dyn Any).downcast_ref::<T>()
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| *k == key)
    }

    /// Whether the device has a path that pulls images from the run's firmware server.
    pub fn pulls(&self) -> bool {
        self.0.iter().any(|(k, _)| section_path(k).is_some_and(|p| p.needs.server))
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn DeviceSection> {
        self.0.iter().map(|(_, s)| s.as_ref())
    }

    /// Whether a section makes the device connect to the run's broker.
    pub fn needs_broker(&self) -> bool {
        self.iter().any(|s| s.needs().broker)
    }

    /// Whether a section makes the device pull from the run's firmware server.
    pub fn needs_server(&self) -> bool {
        self.iter().any(|s| s.needs().server)
    }

    /// The status topics of the first section that has them.
    pub fn status_topics(&self) -> Option<(&str, &str)> {
        self.iter().find_map(|s| s.status_topics())
    }

    /// What the first section that wants the test CA asks for.
    pub fn test_ca(&self) -> Option<bool> {
        self.iter().find_map(|s| s.test_ca())
    }
}

/// The registered section keys, for messages.
pub fn section_keys() -> Vec<&'static str> {
    PATHS.iter().filter_map(|p| p.section.as_ref().map(|s| s.key)).collect()
}

/// The sections that give the device a broker session, for messages: "`mqtt: {}`, `homie: {}`…".
pub fn broker_sections() -> String {
    sections_of(|n| n.broker)
}

/// The sections of the paths whose needs `which` picks, for messages.
fn sections_of(which: fn(&Needs) -> bool) -> String {
    PATHS
        .iter()
        .filter(|p| which(&p.needs))
        .filter_map(|p| p.section.as_ref().map(|s| format!("`{}: {{}}`", s.key)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sections whose device pulls from the run's firmware server, for messages.
pub fn pulling_sections() -> String {
    sections_of(|n| n.server)
}

/// The path that registered section `key`.
fn section_path(key: &str) -> Option<&'static PathEntry> {
    PATHS.iter().find(|p| p.section.as_ref().is_some_and(|s| s.key == key))
}

/// The path whose section is `device: { key: … }`.
pub fn section_by_key(key: &str) -> Option<&'static SectionEntry> {
    section_path(key)?.section.as_ref()
}

/// What a path reading its step options may look at besides them.
pub struct ReadCx<'a> {
    pub cx: &'a Ctx<'a>,
    pub sections: &'a DeviceSections,
    /// Where the step is (for errors about the step as a whole).
    pub line: u64,
    pub column: u64,
}

/// Why an update could not be tried on this run (the step is skipped with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// What an update needs from the run.
pub struct UpdateCx<'a> {
    /// The bytes to send (the backend's build of the named image).
    pub image: &'a [u8],
    /// The image's name, as an uploader names the file.
    pub file_name: &'a str,
    /// For the whole update.
    pub timeout: Duration,
    /// For anything the client randomises (nonces).
    pub seed: u64,
    /// Where the device's ports are reached, or why this backend cannot say now.
    pub endpoints: Result<Endpoints, EndpointError>,
    /// The run's broker, when a path needs one.
    pub broker: Option<&'a BrokerLink>,
    /// The run's firmware server, when a path needs one.
    pub server: Option<&'a crate::services::firmware_server::FirmwareServer>,
    /// Its base URL as the device reaches it (`http://10.0.2.2:PORT` under QEMU).
    pub server_base: Option<&'a str>,
    pub sections: &'a DeviceSections,
    pub rt: &'a tokio::runtime::Runtime,
    /// Where the step may keep files for people (screenshots).
    pub artifacts: &'a Artifacts,
}

/// A browser step's page: where it is and how a person uses it.
pub struct BrowserPage<'a> {
    pub url: &'a str,
    pub credentials: Option<(&'a str, &'a str)>,
    /// The file input (a CSS selector) and how the page sends what is picked.
    pub input: &'a str,
    pub submit: crate::browser::Submit<'a>,
    /// The end of the screenshot's file name.
    pub screenshot: &'a str,
    /// What the person does after the upload (its screenshot, if it has an answer, ends
    /// `answered.png`).
    pub follow: Option<crate::browser::FollowUp<'a>>,
}

/// Runs a browser step: the image written as the file a person picks (named `file_name`),
/// the page driven in a fresh Chromium, its final screenshot kept with the label `label` makes
/// from what the page said. `Ok(Err(outcome))`: the browser did not finish (the step's
/// outcome); `Err`: no browser here.
pub fn in_browser(
    cx: &UpdateCx<'_>,
    file_name: &str,
    page: &BrowserPage<'_>,
    label: impl FnOnce(&crate::browser::PageResult) -> String,
) -> Result<Result<crate::browser::PageResult, Outcome>, Unavailable> {
    use crate::browser::{BrowserError, PageUpload};
    crate::browser::available().map_err(|e| Unavailable(e.to_string()))?;
    let dir = tempfile::tempdir().map_err(|e| Unavailable(format!("a directory for the file: {e}")))?;
    let file = dir.path().join(file_name);
    std::fs::write(&file, cx.image).map_err(|e| Unavailable(format!("writing {}: {e}", file.display())))?;
    let screenshot = cx.artifacts.next_path(page.screenshot);
    let answered = page.follow.and_then(|f| f.then).and_then(|_| cx.artifacts.next_path("answered.png"));
    let upload = PageUpload {
        url: page.url,
        credentials: page.credentials,
        file: &file,
        input: page.input,
        submit: page.submit,
        screenshot: screenshot.as_deref(),
        follow: page.follow.map(|f| crate::browser::FollowUp { screenshot: answered.as_deref(), ..f }),
        timeout: cx.timeout,
    };
    let result = match cx.rt.block_on(crate::browser::upload(&upload)) {
        Ok(result) => result,
        Err(e @ (BrowserError::NotBuilt | BrowserError::NotFound(_))) => {
            return Err(Unavailable(e.to_string()));
        }
        Err(e) => {
            let phase = crate::client::Phase::End;
            return Ok(Err(Outcome::Interrupted { phase, sent: 0, detail: e.to_string() }));
        }
    };
    if let Some(path) = screenshot.filter(|p| p.is_file()) {
        cx.artifacts.keep(label(&result), path);
    }
    if let (Some(path), Some(text)) = (answered.filter(|p| p.is_file()), &result.answered) {
        cx.artifacts.keep(format!("after the restart, the page's answer: {}", text.trim()), path);
    }
    Ok(Ok(result))
}

/// Where a run keeps the files its steps make for people to look at, and which ones it kept.
#[derive(Debug, Default)]
pub struct Artifacts {
    /// The directory (`None`: nothing is kept).
    pub dir: Option<std::path::PathBuf>,
    /// What each file's name begins with (the scenario's name).
    pub prefix: String,
    kept: std::sync::Mutex<Vec<crate::report::Artifact>>,
}

impl Artifacts {
    pub fn new(dir: Option<std::path::PathBuf>, prefix: &str) -> Self {
        Artifacts { dir, prefix: prefix.to_string(), kept: Default::default() }
    }

    /// A fresh file name in the directory for something ending in `suffix`, or `None`.
    pub fn next_path(&self, suffix: &str) -> Option<std::path::PathBuf> {
        let dir = self.dir.as_ref()?;
        std::fs::create_dir_all(dir).ok()?;
        let n = self.kept.lock().map(|k| k.len() + 1).unwrap_or(1);
        Some(dir.join(format!("{}-{n}-{suffix}", self.prefix)))
    }

    pub fn keep(&self, label: String, path: std::path::PathBuf) {
        if let Ok(mut k) = self.kept.lock() {
            k.push(crate::report::Artifact { label, path });
        }
    }

    pub fn take(&self) -> Vec<crate::report::Artifact> {
        self.kept.lock().map(|mut k| std::mem::take(&mut *k)).unwrap_or_default()
    }
}

impl UpdateCx<'_> {
    /// Where the device's `port` is reached, or why the update cannot be tried.
    pub fn endpoint(&self, port: Port) -> Result<SocketAddr, Unavailable> {
        match &self.endpoints {
            Ok(table) => table.get(port),
            Err(e) => Err(e.clone()),
        }
        .map_err(|e| Unavailable(e.to_string()))
    }
}

/// One `ota:` step's update, with its path's options: what runs it.
pub trait PathUpdate: fmt::Debug + Send + Sync {
    /// Runs the update against the device; never panics on what the device does.
    fn run(&self, cx: &UpdateCx<'_>) -> Result<Outcome, Unavailable>;
    /// Whether the device ends its side of a session that ended with `outcome` (its last log
    /// lines are out then).
    fn device_ends_session(&self, _outcome: &Outcome) -> bool {
        true
    }
    /// Whether skipping this update leaves the device in another state than playing it would
    /// (a fault that cuts something): the snapshots after it are then not compared.
    fn disturbs_device(&self) -> bool {
        false
    }
    /// Whether the update needs the harness's own broker (to cut a connection mid-message):
    /// a run with another broker skips the scenario, saying why.
    fn needs_own_broker(&self) -> bool {
        false
    }
    /// Why this update cannot run on this machine at all (no browser here): the scenario is
    /// skipped with it before the device starts, since the steps after it depend on it.
    fn unavailable_here(&self) -> Option<String> {
        None
    }
}

/// An `ota:` step's options read by the path that runs it.
pub type Update = Arc<dyn PathUpdate>;

/// Options every uploader-style path has (ESPHome's and ArduinoOTA's clients): what the client
/// claims and how it sends, each checked at its key.
#[derive(Debug, Clone, Default)]
pub struct UploaderOptions {
    pub password: Option<String>,
    pub declared_size: Option<u32>,
    pub md5: Option<[u8; 32]>,
    pub disconnect_after: Option<u64>,
    pub send_delay: Option<Duration>,
}

/// An `md5` option: `wrong`, or the 32 hex digits to announce.
pub fn md5_option(
    text: Option<&str>,
    spans: &Spans,
    cx: &Ctx<'_>,
) -> Result<Option<[u8; 32]>, ScenarioError> {
    match text {
        None => Ok(None),
        Some("wrong") => Ok(Some(*b"00000000000000000000000000000000")),
        Some(m) if m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let mut out = [0u8; 32];
            out.copy_from_slice(m.as_bytes());
            Ok(Some(out))
        }
        Some(_) => spans.err(cx, "md5", "md5: expected `wrong` or 32 hex digits"),
    }
}

/// A duration option at `key`.
pub fn duration_option(
    text: Option<&str>,
    key: &str,
    spans: &Spans,
    cx: &Ctx<'_>,
) -> Result<Option<Duration>, ScenarioError> {
    match text {
        None => Ok(None),
        Some(t) => crate::scenario::yaml::parse_duration(t)
            .map(Some)
            .or_else(|e| spans.err(cx, key, crate::scenario::yaml::duration_message(key, t, e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_each_path_once_under_its_own_name() {
        let mut seen = std::collections::HashSet::new();
        for p in PATHS {
            assert!(seen.insert(p.name), "{} twice", p.name);
            assert_eq!(by_name(p.name).map(|e| e.name), Some(p.name));
            assert!(!(p.outcomes)().is_empty(), "{} names no outcome", p.name);
        }
        assert_eq!(PATHS[0].name, "esphome", "an ota step without `via` is ESPHome's");
        assert_eq!(names(), "esphome, arduino, homie, homie1, mqtt_pull, web_form, elegant_ota, ws_ota");
        for core in UpdatePath::ALL {
            assert_eq!(of_core(core).map(|p| p.name), Some(core.name()), "the sweep on {core}");
        }
    }
}
