//! The update paths a device serves, one module each: a sans-IO state machine (bytes or
//! datagrams in; bytes, datagrams, "connect to X" and events out) over an
//! [`UpdateSink`](crate::update::UpdateSink), with its own mapping of writer errors to the
//! protocol's codes and texts. Sockets, timers and reboots belong to the adapters.

pub mod arduino;
pub mod elegant_ota;
pub mod esphome;
pub mod homie;
pub mod homie1;
pub mod http_pull;
pub mod http_server;
pub mod mqtt;
pub mod mqtt_pull;
pub mod web_form;
pub mod ws_ota;

/// The update paths a device serves, by the names scenarios and reports use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum UpdatePath {
    /// ESPHome native OTA (TCP, `espota2.py`).
    Esphome,
    /// ArduinoOTA (UDP invitation, TCP back-connection, `espota.py`).
    Arduino,
    /// Homie OTA 3.x (the firmware as one MQTT message).
    Homie,
    /// The HTTP(S) pull an MQTT trigger starts (`esp_https_ota`).
    MqttPull,
    /// Homie 1.x (a version announced over MQTT, the flag in NVS, the pull in OTA mode).
    Homie1,
    /// The Arduino `/update` upload form (`HTTPUpdateServer`: a multipart POST from a browser).
    WebForm,
    /// ElegantOTA v3's portal (`/ota/start`, then a multipart `POST /ota/upload`).
    ElegantOta,
    /// The WebSocket OTA page of an ESP-IDF project (`ota_ws_update`: chunks asked for by offset).
    WsOta,
}

impl UpdatePath {
    pub const ALL: [UpdatePath; 8] = [
        UpdatePath::Esphome,
        UpdatePath::Arduino,
        UpdatePath::Homie,
        UpdatePath::MqttPull,
        UpdatePath::Homie1,
        UpdatePath::WebForm,
        UpdatePath::ElegantOta,
        UpdatePath::WsOta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UpdatePath::Esphome => "esphome",
            UpdatePath::Arduino => "arduino",
            UpdatePath::Homie => "homie",
            UpdatePath::MqttPull => "mqtt_pull",
            UpdatePath::Homie1 => "homie1",
            UpdatePath::WebForm => "web_form",
            UpdatePath::ElegantOta => "elegant_ota",
            UpdatePath::WsOta => "ws_ota",
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl core::fmt::Display for UpdatePath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl UpdatePath {
    /// One whole update of `image` over this path without sockets, the path's peer scripted
    /// (its `script` module): what the power-cut sweep records and retries. `on_received` is
    /// called when the image's last byte is written, before the boot switch.
    pub fn script<F: embedded_storage::nor_flash::NorFlash>(
        self,
        flash: &mut F,
        target: &crate::session::Target<'_>,
        image: &[u8],
        on_received: &mut dyn FnMut(),
    ) -> Result<(), crate::script::ScriptError> {
        let u = crate::script::Upload {
            flash,
            target,
            image,
            md5_hex: crate::script::md5_hex(image),
            on_received,
        };
        match self {
            UpdatePath::Esphome => esphome::script::upload(u),
            UpdatePath::Arduino => arduino::script::upload(u),
            UpdatePath::Homie => homie::script::upload(u),
            UpdatePath::MqttPull => mqtt_pull::script::upload(u),
            UpdatePath::Homie1 => homie1::script::upload(u),
            UpdatePath::WebForm => web_form::script::upload(u),
            UpdatePath::ElegantOta => elegant_ota::script::upload(u),
            UpdatePath::WsOta => ws_ota::script::upload(u),
        }
    }
}
