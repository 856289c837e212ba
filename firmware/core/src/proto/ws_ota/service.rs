//! The WebSocket OTA page as the device serves it: a TCP listener on port 80, up to two
//! connections at once (a page's socket stays open while its person decides, so a second tab or
//! a page load must not wait behind it), one [`Server`] each; the update belongs to the socket
//! that opened it. The page's answers that change otadata (`otaProcessRollback`) and its
//! restart are carried out here, with the device's flash.

use super::lines::WsLine;
use super::{DEFAULT_PORT, Event, Output, Server, Site};
use crate::boot::{Confirm, MarkInvalidError, mark_app_invalid, mark_app_valid, running_pending};
use crate::io::Input;
use crate::log::{LogEvent, LogSink};
use crate::proto::web_form::settings::{Pages, WebFormSettings};
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::{Protocol, Session};
use crate::slot::SlotName;
use crate::update::UpdateSink;
use crate::writer::{EraseMode, OtaConfig, next_update_partition};
use embedded_storage::nor_flash::NorFlash;

const LISTENER: u8 = 0;
/// The connections' local numbers.
const CLIENTS: [u8; 2] = [1, 2];

impl Protocol for Server {
    /// `esp_ota_begin(OTA_SIZE_UNKNOWN)`: the whole slot is erased before the first chunk.
    fn writes(&self, app: OtaConfig) -> OtaConfig {
        OtaConfig { erase: EraseMode::Upfront, update_library: false, ..app }
    }
}

pub struct Service {
    /// The running image waits for the page's answer.
    pending: bool,
    running: SlotName,
    conns: [Option<Session<Server>>; 2],
    /// The connection whose socket writes the update.
    owner: Option<u8>,
    reboot: bool,
}

/// What a connection's server said, kept until the call is over.
struct Reply<'a, 'c> {
    io: &'a mut PathIo<'c>,
    local: u8,
    close: bool,
    started: bool,
    released: bool,
    rollback: Option<bool>,
    restart: bool,
}

impl Output for Reply<'_, '_> {
    fn send(&mut self, bytes: &[u8]) {
        self.io.send(self.local, bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Started => self.started = true,
            Event::Released => self.released = true,
            Event::ProcessRollback(back) => self.rollback = Some(back),
            Event::Restart => self.restart = true,
            e => e.log(&mut *self.io),
        }
    }
}

impl Service {
    fn with_conn<F: NorFlash>(
        &mut self,
        local: u8,
        cx: &mut Cx<'_, F>,
        f: impl FnOnce(&mut Server, &Site, &mut dyn UpdateSink, &mut dyn Output),
    ) {
        let Some(index) = CLIENTS.iter().position(|&c| c == local) else { return };
        let Some(conn) = self.conns[index].as_mut() else { return };
        let slot = next_update_partition(cx.target.table, Some(&cx.target.running));
        let site = Site {
            slot_size: slot.map_or(0, |p| p.size),
            others_busy: cx.others_busy || self.owner.is_some_and(|o| o != local),
            pending: self.pending,
            running: self.running,
        };
        let Cx { flash, target, io, .. } = cx;
        let mut reply = Reply {
            io,
            local,
            close: false,
            started: false,
            released: false,
            rollback: None,
            restart: false,
        };
        conn.with(*flash, target, |server, sink| f(server, &site, sink, &mut reply));
        let Reply { close, started, released, rollback, restart, .. } = reply;
        if released && self.owner == Some(local) {
            self.owner = None;
        }
        if started {
            self.owner = Some(local);
        }
        let mut close = close || conn.server.is_closed();
        if let Some(back) = rollback {
            close |= !self.process_rollback(back, cx);
        }
        if restart {
            cx.io.log(&LogEvent::Module(&WsLine::Restarting));
            self.reboot = true;
        }
        if self.reboot {
            // `esp_restart()`: every socket ends with the device (after what it was sent).
            for (i, local) in CLIENTS.into_iter().enumerate() {
                if self.conns[i].take().is_some() {
                    cx.io.close(local);
                }
            }
            self.owner = None;
            cx.io.exchange_over();
        } else if close {
            if self.owner == Some(local) {
                // A server closes its own update before it closes; this only guards the rule.
                self.owner = None;
            }
            self.conns[index] = None;
            cx.io.close(local);
            cx.io.exchange_over();
        }
    }

    /// `otaProcessRollback`: `false` confirms the running image, `true` marks it INVALID and
    /// restarts. `false` when the handler fails (the socket is then closed, as httpd does).
    fn process_rollback<F: NorFlash>(&mut self, back: bool, cx: &mut Cx<'_, F>) -> bool {
        let (table, running) = (cx.target.table, cx.target.running);
        let slot = self.running;
        if !back {
            return match mark_app_valid(&mut *cx.flash, table, &running) {
                Ok(true) => {
                    self.pending = false;
                    cx.io.log(&LogEvent::Module(&WsLine::Confirmed { slot }));
                    true
                }
                Ok(false) => {
                    cx.io.log(&LogEvent::Module(&WsLine::NothingToConfirm { slot }));
                    true
                }
                Err(_) => false,
            };
        }
        match mark_app_invalid(&mut *cx.flash, table, &running, cx.target.config.chip) {
            Ok(()) => {
                cx.io.log(&LogEvent::Module(&WsLine::RolledBack { slot }));
                cx.io.log(&LogEvent::Rebooting);
                self.reboot = true;
                true
            }
            Err(MarkInvalidError::RollbackFailed) => {
                cx.io.log(&LogEvent::Module(&WsLine::RollbackFailed { slot }));
                false
            }
            Err(MarkInvalidError::Flash(_)) => false,
        }
    }
}

impl<F: NorFlash> PathService<F> for Service {
    fn boot(b: &mut Boot<'_, F>) -> Option<Self> {
        let log = &mut *b.log;
        WebFormSettings::load(b.flash, b.table, Pages::WsOta, &mut |e: &LogEvent<'_>| log.log(e))?;
        // The boot guard read (and logged) the setting already.
        let confirm = Confirm::load(b.flash, b.table, &mut |_: &LogEvent<'_>| {});
        b.log.log(&LogEvent::Module(&WsLine::Config { port: DEFAULT_PORT, confirm }));
        Some(Service {
            pending: running_pending(b.flash, b.table, &b.booted.partition),
            running: SlotName(b.booted.index),
            conns: [None, None],
            owner: None,
            reboot: false,
        })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        cx.io.listen(LISTENER, DEFAULT_PORT);
    }

    fn accept(&mut self, listener: u8, cx: &mut Cx<'_, F>) -> Option<u8> {
        if listener != LISTENER || self.reboot {
            return None;
        }
        let free = self.conns.iter().position(Option::is_none)?;
        self.conns[free] = Some(Session::new(Server::new(cx.now_ms)));
        Some(CLIENTS[free])
    }

    fn input(&mut self, input: Input<'_>, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        match input {
            Input::Data(link, bytes) => self.with_conn(link.local, cx, |server, site, sink, out| {
                server.feed(bytes, now, site, sink, out)
            }),
            Input::Closed(link) => self.with_conn(link.local, cx, |server, _, sink, out| {
                server.closed(sink, out);
                out.close();
            }),
            _ => {}
        }
    }

    fn poll(&mut self, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        for local in CLIENTS {
            self.with_conn(local, cx, |server, _, sink, out| server.poll(now, sink, out));
        }
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        self.conns.iter().flatten().filter_map(|c| c.server.deadline()).min()
    }

    fn busy(&self) -> bool {
        self.owner.is_some()
    }

    fn in_exchange(&self) -> bool {
        self.conns.iter().any(Option::is_some)
    }

    fn reboot_requested(&self) -> bool {
        self.reboot
    }

    /// The restart's line is the path's own (`otaRestartEsp`) or the rollback's.
    fn reboot_announced(&self) -> bool {
        true
    }
}
