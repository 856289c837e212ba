//! The upload form as the device serves it: a TCP listener on port 80 (one client at a time,
//! the next waiting in the backlog, as `WebServer::handleClient` serves them), one [`Server`]
//! per connection, `WebServer`'s data timeout on the app's clock.

use super::settings::WebFormSettings;
use super::{DEFAULT_PORT, Event, Output, Server, Site};
use crate::app_desc::AppDesc;
use crate::io::Input;
use crate::log::LogEvent;
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::{Protocol, Session};
use crate::writer::{OtaConfig, next_update_partition};
use embedded_storage::nor_flash::NorFlash;

/// The listening port's link.
const LISTENER: u8 = 0;
/// The client's connection.
const CLIENT: u8 = 1;

impl Protocol for Server {
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        super::library_writes(app)
    }
}

pub struct Service {
    settings: WebFormSettings,
    /// The running image's descriptor, for the index page.
    desc: AppDesc,
    live: Option<Session<Server>>,
    reboot: bool,
}

/// The server's bytes go to the client, its events to the log as they happen.
struct Reply<'a, 'c> {
    io: &'a mut PathIo<'c>,
    close: bool,
}

impl Output for Reply<'_, '_> {
    fn send(&mut self, bytes: &[u8]) {
        self.io.send(CLIENT, bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn event(&mut self, event: Event<'_>) {
        event.log(&mut *self.io);
    }
}

impl Service {
    /// Runs `f` on the live connection's server, then lets a closed one go.
    fn with_live<F: NorFlash>(
        &mut self,
        cx: &mut Cx<'_, F>,
        f: impl FnOnce(&mut Server, &Site<'_>, &mut dyn crate::update::UpdateSink, &mut dyn Output),
    ) {
        let Some(live) = self.live.as_mut() else { return };
        let slot = next_update_partition(cx.target.table, Some(&cx.target.running));
        let site = Site {
            credentials: self.settings.credentials.as_ref(),
            project: self.desc.project_name(),
            version: self.desc.version(),
            slot_size: slot.map_or(0, |p| p.size),
            others_busy: cx.others_busy,
        };
        let Cx { flash, target, io, .. } = cx;
        let mut reply = Reply { io, close: false };
        live.with(*flash, target, |server, sink| f(server, &site, sink, &mut reply));
        if reply.close || live.server.is_closed() {
            self.reboot |= live.server.reboot_requested();
            self.live = None;
            cx.io.close(CLIENT);
            cx.io.exchange_over();
        }
    }
}

impl<F: NorFlash> PathService<F> for Service {
    fn boot(b: &mut Boot<'_, F>) -> Option<Self> {
        let log = &mut *b.log;
        let settings =
            WebFormSettings::load(b.flash, b.table, super::settings::Pages::Form, &mut |e: &LogEvent<
                '_,
            >| {
                log.log(e)
            })?;
        b.log.log(&LogEvent::Module(&settings.log_line(DEFAULT_PORT)));
        Some(Service { settings, desc: b.booted.image.desc, live: None, reboot: false })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        cx.io.listen(LISTENER, DEFAULT_PORT);
    }

    /// One client at a time: the next waits until this one's answer is out.
    fn accept(&mut self, listener: u8, cx: &mut Cx<'_, F>) -> Option<u8> {
        if listener != LISTENER || self.live.is_some() || self.reboot {
            return None;
        }
        self.live = Some(Session::new(Server::new(cx.now_ms)));
        Some(CLIENT)
    }

    fn input(&mut self, input: Input<'_>, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        match input {
            Input::Data(_, bytes) => {
                self.with_live(cx, |server, site, sink, out| server.feed(bytes, now, site, sink, out))
            }
            Input::Closed(_) => self.with_live(cx, |server, _, sink, out| {
                server.closed(sink, out);
                out.close();
            }),
            _ => {}
        }
    }

    fn poll(&mut self, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        self.with_live(cx, |server, _, sink, out| server.poll(now, sink, out));
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        self.live.as_ref()?.server.deadline()
    }

    /// Only while an upload is written: a page view holds nothing.
    fn busy(&self) -> bool {
        self.live.as_ref().is_some_and(|s| s.server.writing())
    }

    fn in_exchange(&self) -> bool {
        self.live.is_some()
    }

    fn reboot_requested(&self) -> bool {
        self.reboot
    }
}
