//! ESPHome native OTA as the device serves it: a TCP listener on port 3232 (one client at a
//! time, the next one waiting in the backlog), one [`Server`] per connection, ESPHome's
//! handshake and data timeouts on the app's clock.

use super::settings::OtaSettings;
use super::{Event, NonceSource, Output, Server, ServerConfig};
use crate::io::{Entropy, Input};
use crate::log::{LogEvent, LogSink};
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::Session;
use embedded_storage::nor_flash::NorFlash;

/// The listening port's link.
const LISTENER: u8 = 0;
/// The client's connection.
const CLIENT: u8 = 1;

pub struct Service {
    settings: OtaSettings,
    sha256: bool,
    port: u16,
    live: Option<Live>,
    reboot: bool,
}

/// The connection being served.
struct Live {
    session: Session<Server>,
    accepted_ms: u64,
    last_input_ms: u64,
}

impl Service {
    /// What each new connection's server answers with (settings after NVS overrides).
    pub fn server_config(&self) -> ServerConfig<'_> {
        ServerConfig {
            password: self.settings.password(),
            version: self.settings.protocol,
            sha256: self.sha256,
        }
    }

    /// After each call: a closed session gives its connection back (once its reply is out).
    fn settle(&mut self, io: &mut PathIo<'_>) {
        let Some(live) = &self.live else { return };
        if !live.session.server.is_closed() {
            return;
        }
        self.reboot |= live.session.server.reboot_requested();
        self.live = None;
        io.close(CLIENT);
        io.exchange_over();
    }
}

struct Nonces<'a>(&'a mut dyn Entropy);
impl NonceSource for Nonces<'_> {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }
}

/// The server's replies go to the client, its events to the log as they happen.
struct Reply<'a, 'c>(&'a mut PathIo<'c>);
impl Output for Reply<'_, '_> {
    fn send(&mut self, bytes: &[u8]) {
        self.0.send(CLIENT, bytes);
    }
    fn event(&mut self, event: Event) {
        if let Some(line) = event.log_event() {
            self.0.log(&line);
        }
    }
}

impl<F: NorFlash> PathService<F> for Service {
    fn boot(b: &mut Boot<'_, F>) -> Option<Self> {
        let built_in = OtaSettings::built_in(b.built_in.ota_password, b.built_in.ota_protocol);
        let log = &mut *b.log;
        let settings = built_in.load(b.flash, b.table, &mut |e: &LogEvent<'_>| log.log(e));
        b.log.log(&LogEvent::Module(&settings.log_line()));
        Some(Service {
            settings,
            sha256: b.built_in.ota_sha256,
            port: b.built_in.ota_port,
            live: None,
            reboot: false,
        })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        cx.io.listen(LISTENER, self.port);
        cx.io.log(&LogEvent::OtaListening { port: self.port });
    }

    /// One client at a time, and none while another path updates: the next waits.
    fn accept(&mut self, listener: u8, cx: &mut Cx<'_, F>) -> Option<u8> {
        if listener != LISTENER || self.live.is_some() || cx.others_busy || self.reboot {
            return None;
        }
        let session = Session::new(Server::new(self.server_config()));
        self.live = Some(Live { session, accepted_ms: cx.now_ms, last_input_ms: cx.now_ms });
        cx.io.log(&LogEvent::OtaClientConnected);
        Some(CLIENT)
    }

    fn input(&mut self, input: Input<'_>, cx: &mut Cx<'_, F>) {
        let Some(live) = self.live.as_mut() else { return };
        let Cx { flash, target, now_ms, rng, io, .. } = cx;
        match input {
            Input::Data(_, bytes) => {
                live.last_input_ms = *now_ms;
                live.session.with(*flash, target, |server, sink| {
                    server.feed(bytes, sink, &mut Nonces(&mut **rng), &mut Reply(io))
                });
            }
            Input::Closed(_) => {
                live.session
                    .with(*flash, target, |server, sink| server.on_disconnect(false, sink, &mut Reply(io)));
            }
            _ => {}
        }
        self.settle(&mut cx.io);
    }

    fn poll(&mut self, cx: &mut Cx<'_, F>) {
        let Some(live) = self.live.as_mut() else { return };
        let now = cx.now_ms;
        if live.session.server.expired(now - live.accepted_ms, now - live.last_input_ms) {
            let Cx { flash, target, io, .. } = cx;
            live.session
                .with(*flash, target, |server, sink| server.on_disconnect(true, sink, &mut Reply(io)));
        }
        self.settle(&mut cx.io);
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        let live = self.live.as_ref()?;
        live.session.server.expires_at(live.accepted_ms, live.last_input_ms)
    }

    fn busy(&self) -> bool {
        self.live.is_some()
    }

    fn in_exchange(&self) -> bool {
        self.live.is_some()
    }

    fn reboot_requested(&self) -> bool {
        self.reboot
    }
}
