//! ArduinoOTA as the device serves it: invitations on UDP port 3232, the device's connection
//! back to the uploader, arduino-esp32's timers on the app's clock.

use super::settings::ArduinoSettings;
use super::{DEFAULT_PORT, Event, NonceSource, Output, Server};
use crate::io::{Entropy, Input, Remote};
use crate::log::LogEvent;
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::Session;
use core::net::SocketAddr;
use embedded_storage::nor_flash::NorFlash;

/// The invitation socket.
const UDP: u8 = 0;
/// The connection to the uploader.
const UPLOADER: u8 = 1;

pub struct Service {
    session: Session<Server>,
    reboot: bool,
}

struct Nonces<'a>(&'a mut dyn Entropy);
impl NonceSource for Nonces<'_> {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }
}

/// What one call asked for: links and the log at once, the close and the end of the exchange
/// after the call.
struct Step<'a, 'c> {
    io: &'a mut PathIo<'c>,
    close: bool,
    exchange_over: bool,
}

impl Output for Step<'_, '_> {
    fn datagram(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.io.datagram(UDP, to, bytes);
    }
    fn connect(&mut self, to: SocketAddr) {
        self.io.connect(UPLOADER, Remote::Addr(to));
    }
    fn send(&mut self, bytes: &[u8]) {
        self.io.send(UPLOADER, bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn event(&mut self, event: Event) {
        event.log(&mut *self.io);
        self.exchange_over |= ends_exchange(&event);
    }
}

/// Whether `event` ends an exchange (a refused invitation during a transfer does not).
fn ends_exchange(event: &Event) -> bool {
    use Event::*;
    !matches!(event, Busy | AuthRequested | Begin { .. } | Progress { .. } | Received { .. })
}

impl Service {
    fn call<F: NorFlash>(
        &mut self,
        cx: &mut Cx<'_, F>,
        f: impl FnOnce(&mut Server, &mut crate::update::FlashSink<'_, F>, &mut Nonces<'_>, &mut Step<'_, '_>),
    ) {
        let Cx { flash, target, rng, io, .. } = cx;
        let mut step = Step { io, close: false, exchange_over: false };
        self.session.with(*flash, target, |server, sink| f(server, sink, &mut Nonces(&mut **rng), &mut step));
        let (close, exchange_over) = (step.close, step.exchange_over);
        if close {
            // The last reply is queued: the connection closes after it, and the server hears so.
            cx.io.close(UPLOADER);
            let Cx { flash, target, io, .. } = cx;
            let mut after = Step { io, close: false, exchange_over: false };
            self.session.with(*flash, target, |server, sink| server.closed(sink, &mut after));
            self.reboot |= self.session.server.reboot_requested();
        }
        if close || exchange_over {
            cx.io.exchange_over();
        }
    }
}

impl<F: NorFlash> PathService<F> for Service {
    fn boot(b: &mut Boot<'_, F>) -> Option<Self> {
        let built_in = ArduinoSettings::built_in(b.built_in.arduino_password, b.built_in.arduino_auth);
        let log = &mut *b.log;
        let settings = built_in.load(b.flash, b.table, &mut |e: &LogEvent<'_>| log.log(e));
        b.log.log(&LogEvent::Module(&settings.log_line(DEFAULT_PORT)));
        Some(Service { session: Session::new(Server::new(settings.config())), reboot: false })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        cx.io.bind(UDP, DEFAULT_PORT);
    }

    fn input(&mut self, input: Input<'_>, cx: &mut Cx<'_, F>) {
        let (now, others_busy) = (cx.now_ms, cx.others_busy);
        match input {
            Input::Datagram { from, bytes, .. } => self
                .call(cx, |server, sink, rng, out| server.datagram(from, bytes, others_busy, sink, rng, out)),
            Input::Connected(_) => self.session.server.connected(now),
            Input::ConnectFailed(..) => {
                self.call(cx, |server, sink, _, out| server.connect_failed(sink, out))
            }
            Input::Data(_, bytes) => self.call(cx, |server, sink, _, out| server.data(bytes, now, sink, out)),
            Input::Closed(_) => {
                cx.io.close(UPLOADER);
                self.call(cx, |server, sink, _, out| server.closed(sink, out));
            }
        }
    }

    fn poll(&mut self, cx: &mut Cx<'_, F>) {
        let now = cx.now_ms;
        self.call(cx, |server, sink, _, out| server.poll(now, sink, out));
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        self.session.server.deadline()
    }

    fn busy(&self) -> bool {
        self.session.server.is_busy()
    }

    fn in_exchange(&self) -> bool {
        self.session.server.is_busy()
    }

    fn reboot_requested(&self) -> bool {
        self.reboot
    }
}
