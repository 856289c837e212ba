//! ElegantOTA as the device serves it: a TCP listener on port 80 (one client at a time, as
//! `WebServer::handleClient` serves them), one [`Server`] per connection, the update a start
//! opened kept between connections (its upload comes on the next), and the restart 2 s after
//! a successful upload.

use super::lines::ElegantLine;
use super::{DEFAULT_PORT, Event, Opened, Output, REBOOT_DELAY_MS, START_TIMEOUT_MS, Server, Site};
use crate::io::Input;
use crate::log::{LogEvent, LogSink};
use crate::proto::web_form::settings::{Pages, WebFormSettings};
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::{Protocol, Session};
use crate::update::UpdateSink;
use crate::writer::{OtaConfig, next_update_partition};
use embedded_storage::nor_flash::NorFlash;

const LISTENER: u8 = 0;
const CLIENT: u8 = 1;

impl Protocol for Server {
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        crate::proto::web_form::library_writes(app)
    }
}

pub struct Service {
    settings: WebFormSettings,
    /// The running image's size, for the metadata.
    running_len: u32,
    live: Option<Session<Server>>,
    /// The update the last start opened, and when.
    opened: Option<(Opened, u64)>,
    /// When the device restarts after a successful upload.
    reboot_at: Option<u64>,
    reboot: bool,
}

/// What a connection's server said, kept until the call is over.
struct Reply<'a, 'c> {
    io: &'a mut PathIo<'c>,
    close: bool,
    opened: Option<Option<Opened>>,
}

impl Output for Reply<'_, '_> {
    fn send(&mut self, bytes: &[u8]) {
        self.io.send(CLIENT, bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Opened(o) => self.opened = Some(Some(o)),
            Event::OpenedTaken => self.opened = Some(None),
            e => e.log(&mut *self.io),
        }
    }
}

impl Service {
    fn with_live<F: NorFlash>(
        &mut self,
        cx: &mut Cx<'_, F>,
        f: impl FnOnce(&mut Server, &Site<'_>, &mut dyn UpdateSink, &mut dyn Output),
    ) {
        let Some(live) = self.live.as_mut() else { return };
        let slot = next_update_partition(cx.target.table, Some(&cx.target.running));
        let site = Site {
            credentials: self.settings.credentials.as_ref(),
            slot_size: slot.map_or(0, |p| p.size),
            running_len: self.running_len,
            others_busy: cx.others_busy,
            opened: self.opened.map(|(o, _)| o),
        };
        let now = cx.now_ms;
        let Cx { flash, target, io, .. } = cx;
        let mut reply = Reply { io, close: false, opened: None };
        live.with(*flash, target, |server, sink| f(server, &site, sink, &mut reply));
        if let Some(opened) = reply.opened {
            self.opened = opened.map(|o| (o, now));
        }
        if reply.close || live.server.is_closed() {
            if live.server.reboot_requested() {
                self.reboot_at = Some(now + REBOOT_DELAY_MS);
            }
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
            WebFormSettings::load(b.flash, b.table, Pages::ElegantOta, &mut |e: &LogEvent<'_>| log.log(e))?;
        let line = ElegantLine::Config {
            port: DEFAULT_PORT,
            credentials: settings.credentials.is_some(),
            from: settings.from,
        };
        b.log.log(&LogEvent::Module(&line));
        Some(Service {
            settings,
            running_len: b.booted.image.len,
            live: None,
            opened: None,
            reboot_at: None,
            reboot: false,
        })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        cx.io.listen(LISTENER, DEFAULT_PORT);
    }

    fn accept(&mut self, listener: u8, cx: &mut Cx<'_, F>) -> Option<u8> {
        if listener != LISTENER || self.live.is_some() || self.reboot_at.is_some() {
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
        if let Some((_, since)) = self.opened
            && now >= since + START_TIMEOUT_MS
            && self.live.is_none()
        {
            self.opened = None;
            let Cx { flash, target, io, .. } = cx;
            Session::new(Server::new(now)).with(*flash, target, |_, sink| sink.abort());
            let line = ElegantLine::StartExpired { after_ms: now - since };
            io.log(&LogEvent::Module(&line));
        }
        if self.reboot_at.is_some_and(|at| now >= at) {
            self.reboot = true;
        }
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        let live = self.live.as_ref().and_then(|s| s.server.deadline());
        let opened = self.opened.map(|(_, since)| since + START_TIMEOUT_MS);
        [live, opened, self.reboot_at].into_iter().flatten().min()
    }

    /// While a start's update is open or an upload writes it.
    fn busy(&self) -> bool {
        self.opened.is_some() || self.live.as_ref().is_some_and(|s| s.server.writing())
    }

    fn in_exchange(&self) -> bool {
        self.live.is_some()
    }

    fn reboot_requested(&self) -> bool {
        self.reboot
    }
}
