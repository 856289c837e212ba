//! What an update path is to the device application: a [`PathService`] that boots from the
//! device's settings, opens its links, takes inputs and time, and says whether it holds the
//! device. Each path implements it in its own module (`proto::<path>::service`); the app
//! ([`crate::app`]) lists them and knows nothing else about any of them.

use crate::boot::Booted;
use crate::io::{Entropy, Io, LinkId, Remote};
use crate::log::{LogEvent, LogSink};
use crate::partition::PartitionTable;
use crate::proto::arduino::AuthScheme;
use crate::session::Target;
use core::net::SocketAddr;
use embedded_storage::nor_flash::NorFlash;

/// What a firmware build brings before NVS overrides it (`OTAHIL_FW_*` on the chip, the
/// emulator's command line).
#[derive(Clone, Copy, Debug)]
pub struct BuiltIn<'a> {
    /// ESPHome OTA's password (`None`: no authentication).
    pub ota_password: Option<&'a [u8]>,
    /// ESPHome OTA's protocol version, 1 or 2.
    pub ota_protocol: u8,
    /// Offer SHA-256 authentication to ESPHome clients that support it.
    pub ota_sha256: bool,
    /// The port ESPHome OTA listens on.
    pub ota_port: u16,
    pub arduino_password: Option<&'a [u8]>,
    pub arduino_auth: AuthScheme,
    /// The station MAC (client ids end with it).
    pub mac: [u8; 6],
}

/// What a path reads at boot: the flash (NVS), the table, the running image, the build's
/// values, the log, and randomness for keys it keeps for the boot.
pub struct Boot<'b, F> {
    pub flash: &'b mut F,
    pub table: &'b PartitionTable,
    pub booted: &'b Booted,
    pub built_in: &'b BuiltIn<'b>,
    pub log: &'b mut dyn LogSink,
    pub rng: &'b mut dyn Entropy,
}

/// One path's view of the adapter: its own links by their local number.
pub struct PathIo<'c> {
    io: &'c mut dyn Io,
    path: u8,
}

impl<'c> PathIo<'c> {
    pub fn new(io: &'c mut dyn Io, path: u8) -> Self {
        PathIo { io, path }
    }

    pub fn id(&self, local: u8) -> LinkId {
        LinkId { path: self.path, local }
    }

    pub fn listen(&mut self, local: u8, port: u16) {
        self.io.listen(self.id(local), port);
    }

    pub fn bind(&mut self, local: u8, port: u16) {
        self.io.bind(self.id(local), port);
    }

    pub fn connect(&mut self, local: u8, to: Remote<'_>) {
        self.io.connect(self.id(local), to);
    }

    pub fn send(&mut self, local: u8, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.io.send(self.id(local), bytes);
        }
    }

    pub fn close(&mut self, local: u8) {
        self.io.close(self.id(local));
    }

    pub fn datagram(&mut self, local: u8, to: SocketAddr, bytes: &[u8]) {
        self.io.datagram(self.id(local), to, bytes);
    }

    pub fn exchange_over(&mut self) {
        self.io.exchange_over();
    }
}

impl LogSink for PathIo<'_> {
    fn log(&mut self, event: &LogEvent<'_>) {
        self.io.log(event);
    }
}

/// Everything a path is lent for one call: the flash and where updates go, the clock (ms
/// since boot), randomness, whether another path holds the device, and its links.
pub struct Cx<'c, F> {
    pub flash: &'c mut F,
    pub target: Target<'c>,
    pub now_ms: u64,
    pub rng: &'c mut dyn Entropy,
    /// Another path is running an update (or holds a client that may start one): this one
    /// must not start one.
    pub others_busy: bool,
    pub io: PathIo<'c>,
}

/// An update path as the device serves it.
pub trait PathService<F: NorFlash> {
    /// Reads the path's settings (and logs what it will use); `None`: the path is off on
    /// this boot (e.g. the pull without a broker).
    fn boot(b: &mut Boot<'_, F>) -> Option<Self>
    where
        Self: Sized;
    /// The app is up: listen, bind, connect.
    fn start(&mut self, cx: &mut Cx<'_, F>);
    /// A connection waits on `listener` (a local number this path listened with): the local
    /// number it takes it as, or `None` to leave it waiting.
    fn accept(&mut self, _listener: u8, _cx: &mut Cx<'_, F>) -> Option<u8> {
        None
    }
    /// Something happened to one of this path's links.
    fn input(&mut self, input: crate::io::Input<'_>, cx: &mut Cx<'_, F>);
    /// Time passed: called when [`PathService::deadline`] has come.
    fn poll(&mut self, cx: &mut Cx<'_, F>);
    /// When the path next has something to do without input (ms since boot).
    fn deadline(&self, now_ms: u64) -> Option<u64>;
    /// The path runs an update, or holds a client that may start one: the others wait.
    fn busy(&self) -> bool;
    /// A client's exchange is open (the harness waits for its end; a power cut ends it).
    fn in_exchange(&self) -> bool {
        false
    }
    /// An update completed: the device restarts once its links are flushed.
    fn reboot_requested(&self) -> bool;
    /// The path logged why it restarts (a mode switch, not a new image), in a line that begins
    /// [`crate::log::TEXT_REBOOTING_INTO`] (how a harness reading the serial log knows the device
    /// restarts by itself): the adapter then does not log "Rebooting into the new image".
    fn reboot_announced(&self) -> bool {
        false
    }
}
