//! `make-flash`'s device settings: every setting a scenario's `device:` provisions, as flags,
//! written by the same per-path `Provision` types of ota-core the harness uses (one truth for
//! what each key holds and what the device refuses).

use anyhow::{Context, bail};
use ota_core::proto::arduino::AuthScheme;
use ota_core::provision::{PathProvision, Provision};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Default)]
pub struct SettingsArgs {
    /// The ESPHome OTA password (NVS `otahil/ota_password`); it overrides the `run --password` a
    /// device was started with. Any settings flag writes the whole settings page (no --password:
    /// no authentication).
    #[arg(long)]
    pub password: Option<String>,
    /// The ESPHome OTA protocol version (`ota_protocol`), 1 or 2 (default 2 when a page is written).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub protocol: Option<u8>,
    /// The Wi-Fi network a board with the `wifi` firmware joins (`wifi_ssid`).
    #[arg(long)]
    pub wifi_ssid: Option<String>,
    /// Its password (`wifi_password`; none: an open network).
    #[arg(long, requires = "wifi_ssid")]
    pub wifi_password: Option<String>,
    /// ArduinoOTA's password (`arduino_passwd`; with --arduino-auth alone: none).
    #[arg(long)]
    pub arduino_password: Option<String>,
    /// ArduinoOTA's authentication: md5 (classic) or pbkdf2 (arduino-esp32 3.3.1+).
    #[arg(long, value_parser = parse_auth)]
    pub arduino_auth: Option<AuthScheme>,
    /// The MQTT-triggered pull's broker, `ip:port` or `ip` (port 1883); switches the path on.
    #[arg(long, value_name = "IP:PORT")]
    pub mqtt_broker: Option<String>,
    /// The topic the device takes triggers on (default `/switch/cmd/root`).
    #[arg(long, requires = "mqtt_broker")]
    pub mqtt_command_topic: Option<String>,
    /// The topic it reports its status on (default `/switch/state/root`).
    #[arg(long, requires = "mqtt_broker")]
    pub mqtt_state_topic: Option<String>,
    /// What the pull does with the offered version: none, skip-same or refuse-downgrade.
    #[arg(long, requires = "mqtt_broker", value_parser = parse_version_check)]
    pub version_check: Option<u8>,
    /// The pull's HTTP timeout in seconds, 1 to 255 (default 10).
    #[arg(long, requires = "mqtt_broker")]
    pub pull_timeout: Option<u8>,
    /// A PEM certificate https servers must chain to (without one, https is refused).
    #[arg(long, requires = "mqtt_broker", value_name = "PEM")]
    pub pull_ca: Option<PathBuf>,
    /// The device's clock for certificate dates, in Unix seconds, or `now`.
    #[arg(long, requires = "pull_ca", value_name = "UNIX|now")]
    pub pull_clock: Option<String>,
    /// Downloads cut short resume with `Range`.
    #[arg(long, requires = "mqtt_broker")]
    pub pull_resume: bool,
    /// Homie OTA 3.x's broker (`ip:port` or `ip`); switches the path on.
    #[arg(long, value_name = "IP:PORT")]
    pub homie_broker: Option<String>,
    /// Homie 1.x's broker; switches that path on.
    #[arg(long, value_name = "IP:PORT")]
    pub homie1_broker: Option<String>,
    /// Homie 1.x's OTA server, `http://host[:port]/path` (default: the broker's host, port 80,
    /// `/ota`).
    #[arg(long, requires = "homie1_broker", value_name = "URL")]
    pub homie1_url: Option<String>,
    /// The Homie device id in its topics (both generations; default: the MAC in hex).
    #[arg(long)]
    pub homie_id: Option<String>,
    /// Homie's `$implementation/ota/enabled` (off unless given).
    #[arg(long)]
    pub homie_ota: bool,
    /// Serve the Arduino `/update` upload form on the web port (off unless given).
    #[arg(long)]
    pub web_form: bool,
    /// Serve ElegantOTA's portal on the web port instead (`/update`, `/ota/start`,
    /// `/ota/upload`; off unless given).
    #[arg(long, conflicts_with = "web_form")]
    pub elegant_ota: bool,
    /// Serve the WebSocket OTA page on the web port instead (`/ota`, socket `/ota/ws`; off
    /// unless given).
    #[arg(long, conflicts_with_all = ["web_form", "elegant_ota", "web_user"])]
    pub ws_ota: bool,
    /// New images wait for the running app to confirm them (the WebSocket page's
    /// `otaProcessRollback`) instead of their boot-time self-test: a reset before that rolls
    /// back.
    #[arg(long)]
    pub confirm_by_app: bool,
    /// The web pages' user (with `--web-password`: authentication only with both).
    #[arg(long, requires = "web_password")]
    pub web_user: Option<String>,
    /// The web pages' password (with `--web-user`).
    #[arg(long, requires = "web_user")]
    pub web_password: Option<String>,
}

/// `md5` or `pbkdf2`, as `run --arduino-auth` takes it.
pub fn parse_auth(s: &str) -> Result<AuthScheme, String> {
    [AuthScheme::Md5, AuthScheme::Pbkdf2Sha256]
        .into_iter()
        .find(|a| a.name() == s)
        .ok_or_else(|| format!("`{s}`: expected md5 or pbkdf2"))
}

fn parse_version_check(s: &str) -> Result<u8, String> {
    match s {
        "none" => Ok(0),
        "skip-same" => Ok(1),
        "refuse-downgrade" => Ok(2),
        _ => Err(format!("`{s}`: expected none, skip-same or refuse-downgrade")),
    }
}

impl SettingsArgs {
    /// The settings page these flags make, or `None` when no flag asks for one.
    pub fn page(&self) -> anyhow::Result<Option<[u8; ota_core::nvs::PAGE_SIZE]>> {
        let homie_only = self.homie_id.is_some() || self.homie_ota;
        let any = self.password.is_some()
            || self.protocol.is_some()
            || self.wifi_ssid.is_some()
            || self.arduino_password.is_some()
            || self.arduino_auth.is_some()
            || self.mqtt_broker.is_some()
            || self.homie_broker.is_some()
            || self.homie1_broker.is_some()
            || self.web_form
            || self.elegant_ota
            || self.ws_ota
            || self.confirm_by_app;
        if homie_only && self.homie_broker.is_none() && self.homie1_broker.is_none() {
            bail!("--homie-id and --homie-ota need --homie-broker or --homie1-broker");
        }
        if !any {
            return Ok(None);
        }
        let base = Provision {
            ota_password: self.password.as_deref(),
            protocol: self.protocol.unwrap_or(2),
            wifi: self.wifi_ssid.as_deref().map(|ssid| (ssid, self.wifi_password.as_deref().unwrap_or(""))),
        };
        let ca = match &self.pull_ca {
            Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        let clock = match self.pull_clock.as_deref() {
            None => None,
            Some("now") => {
                Some(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs())
            }
            Some(t) => Some(
                t.parse()
                    .map_err(|_| anyhow::anyhow!("--pull-clock `{t}`: expected Unix seconds or `now`"))?,
            ),
        };
        let arduino = (self.arduino_password.is_some() || self.arduino_auth.is_some()).then(|| {
            ota_core::proto::arduino::settings::Provision {
                password: self.arduino_password.as_deref(),
                auth: self.arduino_auth.unwrap_or(AuthScheme::Md5),
            }
        });
        let pull =
            self.mqtt_broker.as_deref().map(|broker| ota_core::proto::mqtt_pull::settings::Provision {
                broker,
                command_topic: self.mqtt_command_topic.as_deref(),
                state_topic: self.mqtt_state_topic.as_deref(),
                version_check: self.version_check.unwrap_or(0),
                timeout_s: self.pull_timeout,
                ca_pem: ca.as_deref(),
                clock_unix: clock,
                resume: self.pull_resume,
            });
        let homie = self.homie_broker.as_deref().map(|broker| ota_core::proto::homie::settings::Provision {
            broker,
            id: self.homie_id.as_deref(),
            ota: self.homie_ota,
        });
        let homie1 =
            self.homie1_broker.as_deref().map(|broker| ota_core::proto::homie1::settings::Provision {
                broker,
                id: self.homie_id.as_deref(),
                ota: self.homie_ota,
                url: self.homie1_url.as_deref(),
            });
        let mut paths: Vec<&dyn PathProvision> = Vec::new();
        if let Some(p) = &arduino {
            paths.push(p);
        }
        if let Some(p) = &pull {
            paths.push(p);
        }
        if let Some(p) = &homie {
            paths.push(p);
        }
        if let Some(p) = &homie1 {
            paths.push(p);
        }
        use ota_core::proto::web_form::settings::{self as web, Pages};
        let pages = match (self.web_form, self.elegant_ota) {
            (true, _) => Some(Pages::Form),
            (_, true) => Some(Pages::ElegantOta),
            _ if self.web_user.is_some() => {
                anyhow::bail!("--web-user and --web-password need --web-form or --elegant-ota")
            }
            _ => None,
        };
        let web = pages.map(|pages| web::Provision {
            pages,
            user: self.web_user.as_deref(),
            password: self.web_password.as_deref(),
        });
        if let Some(p) = &web {
            paths.push(p);
        }
        // The WebSocket page writes `confirm` with its page set; without the page the flag still
        // says who confirms (a device another path updates).
        let confirm = if self.confirm_by_app {
            ota_core::boot::Confirm::App
        } else {
            ota_core::boot::Confirm::SelfTest
        };
        let ws = ota_core::proto::ws_ota::settings::Provision { confirm };
        if self.ws_ota {
            paths.push(&ws);
        } else if self.confirm_by_app {
            paths.push(&confirm);
        }
        let page =
            ota_core::provision::provisioning_page(&base, &paths).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Some(page))
    }
}
