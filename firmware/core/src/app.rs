//! The device application: every update path the device serves, booted from its settings,
//! driven through one I/O vocabulary ([`crate::io`]) by an adapter that knows none of them
//! (the emulator's event loop, the chip's smoltcp loop). It holds the rule every path shares:
//! one update at a time. A new path is a module implementing [`PathService`] and one line in
//! [`paths!`] below; the adapters do not change.

use crate::boot::Booted;
use crate::io::{Entropy, Input, Io, LinkId};
use crate::log::LogSink;
use crate::partition::{Partition, PartitionTable};
use crate::service::{Boot, BuiltIn, Cx, PathIo, PathService};
use crate::session::Target;
use crate::writer::OtaConfig;
use embedded_storage::nor_flash::NorFlash;

/// Declares the registry: each path's name and service type, in the order they boot (and
/// print their settings), start and hear the clock. A path's index in this list is the `path`
/// of its links' [`LinkId`]s.
macro_rules! paths {
    ($($name:ident: $service:ty,)*) => {
        /// The paths of one boot (`None`: off on this boot).
        struct Paths {
            $($name: Option<$service>,)*
        }

        /// The names of the registered paths, in registry order.
        pub const PATHS: &[&str] = &[$(stringify!($name)),*];

        impl Paths {
            fn boot<F: NorFlash>(b: &mut Boot<'_, F>) -> Self {
                Paths { $($name: <$service as PathService<F>>::boot(b),)* }
            }

            /// Each path by index (`None`: off on this boot).
            fn each<F: NorFlash>(&mut self) -> [Option<&mut dyn PathService<F>>; PATHS.len()] {
                [$(self.$name.as_mut().map(|p| p as &mut dyn PathService<F>)),*]
            }

            fn each_ref<F: NorFlash>(&self) -> [Option<&dyn PathService<F>>; PATHS.len()] {
                [$(self.$name.as_ref().map(|p| p as &dyn PathService<F>)),*]
            }
        }
    };
}

paths! {
    esphome: crate::proto::esphome::service::Service,
    arduino: crate::proto::arduino::service::Service,
    mqtt_pull: crate::proto::mqtt_pull::service::Service,
    homie: crate::proto::homie::service::Service,
    homie1: crate::proto::homie1::service::Service,
    web_form: crate::proto::web_form::service::Service,
    elegant_ota: crate::proto::elegant_ota::service::Service,
    ws_ota: crate::proto::ws_ota::service::Service,
}

/// What every call lends the app: the flash, the clock (ms since boot), randomness and the
/// adapter.
pub struct Env<'e, F> {
    pub flash: &'e mut F,
    pub now_ms: u64,
    pub rng: &'e mut dyn Entropy,
    pub io: &'e mut dyn Io,
}

pub struct App {
    table: PartitionTable,
    running: Partition,
    ota: OtaConfig,
    /// The one update in progress, lent to the path that writes it.
    update: crate::session::UpdateSlot,
    paths: Paths,
}

impl App {
    /// The app of a boot: each path reads its settings from NVS and logs what it will use.
    pub fn boot<F: NorFlash>(
        flash: &mut F,
        table: PartitionTable,
        booted: &Booted,
        ota: OtaConfig,
        built_in: &BuiltIn<'_>,
        log: &mut dyn LogSink,
        rng: &mut dyn Entropy,
    ) -> App {
        let paths = Paths::boot(&mut Boot { flash, table: &table, booted, built_in, log, rng });
        App { table, running: booted.partition, ota, update: Default::default(), paths }
    }

    pub fn table(&self) -> &PartitionTable {
        &self.table
    }

    /// Whether the path named `name` is on this boot.
    pub fn serves<F: NorFlash>(&self, name: &str) -> bool {
        let on = self.paths.each_ref::<F>();
        PATHS.iter().zip(on).any(|(n, p)| *n == name && p.is_some())
    }

    /// Runs `f` on path `index` with its context.
    fn with_path<F: NorFlash, R>(
        &mut self,
        index: usize,
        env: &mut Env<'_, F>,
        f: impl FnOnce(&mut dyn PathService<F>, &mut Cx<'_, F>) -> R,
    ) -> Option<R> {
        let others_busy = self
            .paths
            .each_ref::<F>()
            .iter()
            .enumerate()
            .any(|(i, p)| i != index && p.is_some_and(|p| p.busy()));
        let App { table, running, ota, update, paths } = self;
        let path = paths.each::<F>().into_iter().nth(index)??;
        let mut cx = Cx {
            flash: &mut *env.flash,
            target: Target { table, running: *running, config: *ota, update },
            now_ms: env.now_ms,
            rng: &mut *env.rng,
            others_busy,
            io: PathIo::new(&mut *env.io, index as u8),
        };
        Some(f(path, &mut cx))
    }

    /// The app is up: every path opens its links.
    pub fn start<F: NorFlash>(&mut self, env: &mut Env<'_, F>) {
        for i in 0..PATHS.len() {
            self.with_path(i, env, |p, cx| p.start(cx));
        }
    }

    /// A connection waits on `listener`: the link it becomes, or `None` to leave it waiting
    /// (its path is busy, or another path runs an update).
    pub fn accept<F: NorFlash>(&mut self, listener: LinkId, env: &mut Env<'_, F>) -> Option<LinkId> {
        let local = self.with_path(listener.path as usize, env, |p, cx| p.accept(listener.local, cx))??;
        Some(LinkId { path: listener.path, local })
    }

    /// Something happened to one of the app's links.
    pub fn input<F: NorFlash>(&mut self, input: Input<'_>, env: &mut Env<'_, F>) {
        self.with_path(input.link().path as usize, env, |p, cx| p.input(input, cx));
    }

    /// Time passed: every path looks at its timers.
    pub fn poll<F: NorFlash>(&mut self, env: &mut Env<'_, F>) {
        for i in 0..PATHS.len() {
            self.with_path(i, env, |p, cx| p.poll(cx));
        }
    }

    /// When the app next has something to do without input (ms since boot).
    pub fn deadline<F: NorFlash>(&self, now_ms: u64) -> Option<u64> {
        self.paths.each_ref::<F>().into_iter().flatten().filter_map(|p| p.deadline(now_ms)).min()
    }

    /// A path runs an update (or holds a client that may start one).
    pub fn busy<F: NorFlash>(&self) -> bool {
        self.paths.each_ref::<F>().into_iter().flatten().any(|p| p.busy())
    }

    /// A client's exchange with a push path is open.
    pub fn in_exchange<F: NorFlash>(&self) -> bool {
        self.paths.each_ref::<F>().into_iter().flatten().any(|p| p.in_exchange())
    }

    /// An update completed: the adapter flushes the links and restarts the device.
    pub fn reboot_requested<F: NorFlash>(&self) -> bool {
        self.paths.each_ref::<F>().into_iter().flatten().any(|p| p.reboot_requested())
    }

    /// The restart was asked for by a path that logged its reason itself: the adapter logs
    /// no "Rebooting into the new image".
    pub fn reboot_announced<F: NorFlash>(&self) -> bool {
        self.paths.each_ref::<F>().into_iter().flatten().any(|p| p.reboot_requested() && p.reboot_announced())
    }
}

#[cfg(test)]
mod tests;
