//! One whole update without sockets: an uploader's side of an update path, scripted, fed to
//! the device's own protocol state machine writing through the device's update sink. The sweep
//! records and retries its updates this way, so a cut lands where the real protocol puts its
//! flash operations (ESPHome's 8 KiB-acknowledged stream, ArduinoOTA's lazily erasing writes,
//! Homie 1.x's NVS flag around its pull).

use core::net::SocketAddr;
use embedded_storage::nor_flash::NorFlash;
use md5::{Digest, Md5};
use ota_core::hex;
use ota_core::partition::{Partition, PartitionTable};
use ota_core::proto::homie1::{self, settings::KEY_HOMIE1_FLAG};
use ota_core::proto::{UpdatePath, arduino, esphome, homie, http_pull};
use ota_core::session::{Session, Target};
use ota_core::writer::OtaConfig;
use std::fmt;

/// The uploader's pieces: what `espota2.py` / `espota.py` send per socket write.
const PIECE: usize = 1024;
/// What a Homie push or a pull's body brings per read: one TCP segment of the peer's stream.
const SEGMENT: usize = 1460;

/// Why a scripted update did not complete: the device's own event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptError {
    Esphome(esphome::Event),
    Arduino(arduino::Event),
    /// Homie's final status.
    Homie(homie::Status),
    /// Why the pull failed.
    Pull(http_pull::PullError),
    /// Homie 1.x's OTA-mode flag could not be written to NVS, or not cleared.
    FlagNotStored,
    FlagNotCleared,
    /// The session ended without completing and without saying why.
    Incomplete,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = None;
        match self {
            ScriptError::Esphome(e) => shown = e.log_event().map(|l| write!(f, "{l}")),
            ScriptError::Arduino(e) => {
                e.log(&mut |l: &ota_core::log::LogEvent<'_>| shown = Some(write!(f, "{l}")))
            }
            ScriptError::Homie(status) => shown = Some(write!(f, "homie status {status}")),
            ScriptError::Pull(e) => shown = Some(write!(f, "pull failed: {}", e.name())),
            ScriptError::FlagNotStored => {
                shown = Some(f.write_str("homie1: the OTA-mode flag was not stored"))
            }
            ScriptError::FlagNotCleared => {
                shown = Some(f.write_str("homie1: the OTA-mode flag was not cleared"))
            }
            ScriptError::Incomplete => {}
        }
        shown.unwrap_or_else(|| write!(f, "{self:?}"))
    }
}

/// Uploads `image` over `path` to a device running from `running`. `on_received` is called
/// when the last image byte is written, before the boot switch.
pub fn upload<F: NorFlash>(
    path: UpdatePath,
    flash: &mut F,
    table: &PartitionTable,
    running: &Partition,
    image: &[u8],
    config: OtaConfig,
    on_received: &mut dyn FnMut(),
) -> Result<(), ScriptError> {
    let target = Target { table, running: *running, config };
    let digest: [u8; 16] = Md5::digest(image).into();
    let mut md5_hex = [0u8; 32];
    hex::encode_lower(&digest, &mut md5_hex);
    match path {
        UpdatePath::Esphome => {
            let config = esphome::ServerConfig { password: None, version: 2, sha256: true };
            let mut session = Session::new(esphome::Server::new(config));
            let mut out = EsphomeOut { on_received, complete: false, failure: None };
            let mut feed = |bytes: &[u8], out: &mut EsphomeOut<'_>| {
                session.with(flash, &target, |server, sink| server.feed(bytes, sink, &mut NoNonce, out))
            };
            feed(&esphome::MAGIC, &mut out);
            feed(&[0], &mut out);
            feed(&(image.len() as u32).to_be_bytes(), &mut out);
            feed(&md5_hex, &mut out);
            for piece in image.chunks(PIECE) {
                feed(piece, &mut out);
            }
            feed(&[esphome::code::OK], &mut out);
            match (out.complete, out.failure) {
                (true, _) => Ok(()),
                (false, Some(e)) => Err(ScriptError::Esphome(e)),
                (false, None) => Err(ScriptError::Incomplete),
            }
        }
        UpdatePath::Arduino => {
            let mut session = Session::new(arduino::Server::new(arduino::Config::default()));
            let mut out = ArduinoOut { on_received, complete: false, failure: None };
            let host = SocketAddr::from(([127, 0, 0, 1], 40000));
            let mut invitation = Vec::with_capacity(64);
            invitation.extend_from_slice(format!("0 40001 {} ", image.len()).as_bytes());
            invitation.extend_from_slice(&md5_hex);
            invitation.push(b'\n');
            session.with(flash, &target, |server, sink| {
                server.datagram(host, &invitation, false, sink, &mut NoNonce, &mut out);
                server.connected(0);
                for piece in image.chunks(PIECE) {
                    server.data(piece, 0, sink, &mut out);
                }
                server.closed(sink, &mut out);
            });
            match (out.complete, out.failure) {
                (true, _) => Ok(()),
                (false, Some(e)) => Err(ScriptError::Arduino(e)),
                (false, None) => Err(ScriptError::Incomplete),
            }
        }
        UpdatePath::Homie => {
            let mut session = Session::new(homie::Ota::default());
            let mut out = HomieOut { on_received, last: image.len() as u32, final_status: None };
            let md5 = core::str::from_utf8(&md5_hex).unwrap_or("");
            // The running image's MD5 is never the new one's: the server pushes another image.
            let facts = homie::Facts { ota_enabled: true, running_md5: "", others_busy: false };
            let total = image.len() as u32;
            session.with(flash, &target, |ota, sink| {
                for (i, piece) in image.chunks(SEGMENT).enumerate() {
                    ota.piece(md5, (i * SEGMENT) as u32, total, piece, &facts, sink, &mut out);
                }
            });
            match out.final_status {
                Some(homie::Status::Done) => Ok(()),
                Some(status) => Err(ScriptError::Homie(status)),
                None => Err(ScriptError::Incomplete),
            }
        }
        UpdatePath::MqttPull => {
            // The trigger only starts the pull; what writes is `esp_https_ota` reading a plain
            // 200 with a Content-Length, segment by segment.
            let cfg = http_pull::Config::esp_https_ota("1.0.0");
            let mut session = Session::new(http_pull::Client::default());
            let mut out = PullOut { on_received, total: image.len() as u64, complete: false, failure: None };
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", image.len());
            session.with(flash, &target, |client, sink| {
                download(client, &cfg, "http://10.0.2.2:8000/fw.bin", &head, image, sink, &mut out)
            });
            out.result()
        }
        UpdatePath::Homie1 => homie1(flash, &target, image, &md5_hex, on_received),
    }
}

/// Homie 1.x's flash operations in order: the offer's target stored in NVS (the device then
/// restarts into OTA mode; a boot of the same valid image writes nothing), the pull through
/// arduino-esp32's `Update` (`HTTPUpdate`: a 200 with its length and `x-MD5`, read in segments),
/// then the flag cleared before the restart into the new image.
fn homie1<F: NorFlash>(
    flash: &mut F,
    target: &Target<'_>,
    image: &[u8],
    md5_hex: &[u8; 32],
    on_received: &mut dyn FnMut(),
) -> Result<(), ScriptError> {
    let nvs = target.table.nvs().copied().ok_or(ScriptError::Incomplete)?;
    let ns = ota_core::settings::NAMESPACE;
    let desc = ota_core::app_desc::of_image(image).ok_or(ScriptError::Incomplete)?;
    let version = desc.version();
    ota_core::nvs::set_str(flash, &nvs, ns, KEY_HOMIE1_FLAG, version)
        .map_err(|_| ScriptError::FlagNotStored)?;
    let facts = http_pull::DeviceFacts {
        sta_mac: [0x02, 0, 0, 0, 0, 1],
        ap_mac: [0x02, 0, 0, 0, 0, 2],
        free_space: ota_core::writer::next_update_partition(target.table, Some(&target.running))
            .map_or(0, |p| p.size),
        sketch_size: image.len() as u32,
        sketch_md5: None,
        chip_size: 4 << 20,
        sdk_version: ota_core::proto::mqtt_pull::SDK_VERSION,
        version: "",
    };
    let cfg = http_pull::Config::arduino(facts, "1.0.0");
    let mut session = Session::new(homie1::service::Pull::default());
    let mut out = PullOut { on_received, total: image.len() as u64, complete: false, failure: None };
    let md5 = core::str::from_utf8(md5_hex).unwrap_or("");
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-MD5: {md5}\r\n\r\n", image.len());
    session.with(flash, target, |pull, sink| {
        download(&mut pull.0, &cfg, "http://10.0.2.2:8000/ota", &head, image, sink, &mut out)
    });
    // Whatever the pull gave, OTA mode ends with the flag cleared.
    ota_core::nvs::erase(flash, &nvs, ns, KEY_HOMIE1_FLAG).map_err(|_| ScriptError::FlagNotCleared)?;
    out.result()
}

/// A pull's whole exchange: the request out, the response `head`, then `image` in TCP
/// segments and the server's close.
fn download<S: ota_core::update::UpdateSink>(
    client: &mut http_pull::Client,
    cfg: &http_pull::Config<'_>,
    url: &str,
    head: &str,
    image: &[u8],
    sink: &mut S,
    out: &mut PullOut<'_>,
) {
    client.start(url, out);
    client.connected(cfg, 0, out);
    client.data(cfg, head.as_bytes(), 0, sink, out);
    for piece in image.chunks(SEGMENT) {
        client.data(cfg, piece, 0, sink, out);
    }
    client.closed(cfg, sink, out);
}

/// The pull's events: the last image byte in, then complete or failed.
struct PullOut<'a> {
    on_received: &'a mut dyn FnMut(),
    total: u64,
    complete: bool,
    failure: Option<http_pull::PullError>,
}

impl PullOut<'_> {
    fn result(&self) -> Result<(), ScriptError> {
        match (self.complete, self.failure) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(ScriptError::Pull(e)),
            (false, None) => Err(ScriptError::Incomplete),
        }
    }
}

impl http_pull::Output for PullOut<'_> {
    fn connect(&mut self, _to: http_pull::Endpoint<'_>) {}
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, event: http_pull::Event<'_>) {
        match event {
            http_pull::Event::Progress { received, .. } if received == self.total => (self.on_received)(),
            http_pull::Event::Complete(_) => self.complete = true,
            http_pull::Event::Failed(e) => {
                self.failure.get_or_insert(e);
            }
            _ => {}
        }
    }
}

/// The Homie receiver's statuses: the last image byte taken, then the final word.
struct HomieOut<'a> {
    on_received: &'a mut dyn FnMut(),
    last: u32,
    final_status: Option<homie::Status>,
}

impl homie::Output for HomieOut<'_> {
    fn status(&mut self, status: homie::Status) {
        match status {
            homie::Status::Progress { written, .. } if written == self.last => (self.on_received)(),
            homie::Status::Accepted | homie::Status::Progress { .. } => {}
            done_or_failed => {
                self.final_status.get_or_insert(done_or_failed);
            }
        }
    }
    fn log(&mut self, _line: &ota_core::log::LogEvent<'_>) {}
}

/// Authentication is off in scripted updates: no nonce is ever drawn.
struct NoNonce;
impl esphome::NonceSource for NoNonce {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
    }
}
impl arduino::NonceSource for NoNonce {
    fn fill(&mut self, buf: &mut [u8]) {
        buf.fill(0);
    }
}

struct EsphomeOut<'a> {
    on_received: &'a mut dyn FnMut(),
    complete: bool,
    failure: Option<esphome::Event>,
}

impl esphome::Output for EsphomeOut<'_> {
    fn send(&mut self, _bytes: &[u8]) {}
    fn event(&mut self, event: esphome::Event) {
        use esphome::Event::*;
        match event {
            Received { .. } => (self.on_received)(),
            Complete(_) => self.complete = true,
            MagicMismatch | AuthFailed | AuthMissing | Md5Mismatch | Failed(_) | Interrupted { .. } => {
                self.failure.get_or_insert(event);
            }
            _ => {}
        }
    }
}

struct ArduinoOut<'a> {
    on_received: &'a mut dyn FnMut(),
    complete: bool,
    failure: Option<arduino::Event>,
}

impl arduino::Output for ArduinoOut<'_> {
    fn datagram(&mut self, _to: SocketAddr, _bytes: &[u8]) {}
    fn connect(&mut self, _to: SocketAddr) {}
    fn send(&mut self, _bytes: &[u8]) {}
    fn close(&mut self) {}
    fn event(&mut self, event: arduino::Event) {
        use arduino::Event::*;
        match event {
            Received { .. } => (self.on_received)(),
            Complete(_) => self.complete = true,
            AuthRequested | Begin { .. } | Progress { .. } => {}
            _ => {
                self.failure.get_or_insert(event);
            }
        }
    }
}
