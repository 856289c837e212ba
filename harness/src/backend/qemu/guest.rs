//! One power-on of the emulated chip: QEMU processes, one after another, as the guest resets
//! itself.
//!
//! QEMU runs with `-no-reboot`: a guest reset (`esp_restart()` after an update, the boot
//! guard's rollback, a Homie 1.x device switching into OTA mode, a watchdog) ends the process,
//! and a new one starts at once on the same flash file, as the chip's reset re-runs its ROM. The
//! restart happens when the guest asks for it, whether or not the harness is reading the log
//! (an update step may be busy serving a pull), and a new process has none of the translated
//! code the fork keeps across an in-process reset (it hung when that reset went into another
//! image).

use crate::tripwire::Tripwire;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Makes the QEMU command of one process (the same each time: the flash file persists).
pub type Launch = Box<dyn Fn() -> std::io::Result<Child> + Send>;

/// The QEMU process running now, and whether the power is going off.
#[derive(Default)]
struct Slot {
    child: Option<Child>,
    stopping: bool,
}

/// What the processes of one power-on share with their reader.
struct Shared {
    slot: Mutex<Slot>,
    trip: Arc<Tripwire>,
}

impl Shared {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// QEMU running the guest until [`PowerOn::stop`], restarted after each guest reset; its serial
/// lines go to the channel given, which disconnects when QEMU ends another way (a crash).
pub struct PowerOn {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl PowerOn {
    /// Starts the first process (its failure is returned) and the reader that follows it.
    pub fn start(launch: Launch, trip: Arc<Tripwire>, lines: Sender<String>) -> std::io::Result<Self> {
        let mut child = launch()?;
        let stdout = child.stdout.take().expect("QEMU's stdout is piped");
        let shared =
            Arc::new(Shared { slot: Mutex::new(Slot { child: Some(child), stopping: false }), trip });
        let reader = {
            let shared = shared.clone();
            std::thread::spawn(move || follow(stdout, &launch, &shared, &lines))
        };
        Ok(PowerOn { shared, reader: Some(reader) })
    }

    /// Runs `f` while no process starts or ends under it: with the running one, or `None`
    /// between two (the last one has written its flash back and exited).
    pub fn with_process<T>(&self, f: impl FnOnce(Option<&mut Child>) -> T) -> T {
        f(self.shared.slot().child.as_mut())
    }

    /// The power goes off: the process gets SIGTERM (QEMU writes the flash back and exits),
    /// SIGKILL if it has not within `timeout`; no process starts after it.
    pub fn stop(&mut self, timeout: Duration) {
        let running = self.shared.slot().stopping_child();
        if let Some(pid) = running {
            signal_terminate(pid);
        }
        let Some(reader) = self.reader.take() else { return };
        let deadline = Instant::now() + timeout;
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !reader.is_finished() {
            tracing::warn!("QEMU did not exit {timeout:?} after SIGTERM; killing it");
            if let Some(c) = self.shared.slot().child.as_mut() {
                let _ = c.kill();
            }
        }
        let _ = reader.join();
    }
}

impl Slot {
    /// Marks the power going off; the pid of the process to stop, if one runs.
    fn stopping_child(&mut self) -> Option<u32> {
        self.stopping = true;
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for PowerOn {
    fn drop(&mut self) {
        self.stop(STOP_TIMEOUT);
    }
}

/// The reader: passes each serial line on (dropping those after a power cut's line), and when a
/// process ends by the guest's own reset, starts the next.
fn follow(mut stdout: ChildStdout, launch: &Launch, shared: &Shared, lines: &Sender<String>) {
    loop {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if shared.trip.tripped() {
                // The power went at an earlier line: what QEMU prints while it stops is not the
                // device's.
                continue;
            }
            if shared.trip.trips(&line)
                && let Some(pid) = shared.slot().child.as_ref().map(Child::id)
            {
                signal_terminate(pid);
            }
            if lines.send(line).is_err() {
                return;
            }
        }
        // QEMU closed its stdout: it is exiting. Reaped outside the lock (a stop waits for
        // this thread, not for the lock).
        let Some(mut child) = shared.slot().child.take() else { return };
        let status = child.wait();
        let mut slot = shared.slot();
        if slot.stopping || shared.trip.tripped() {
            return;
        }
        match status {
            // `-no-reboot`: the guest reset the chip.
            Ok(s) if s.success() => {}
            Ok(s) => {
                tracing::warn!("QEMU ended by itself ({s})");
                return;
            }
            Err(e) => {
                tracing::warn!("QEMU could not be reaped: {e}");
                return;
            }
        }
        match launch() {
            Ok(mut next) => {
                stdout = next.stdout.take().expect("QEMU's stdout is piped");
                slot.child = Some(next);
            }
            Err(e) => {
                tracing::warn!("QEMU could not be started again after the guest's reset: {e}");
                return;
            }
        }
    }
}

/// How long QEMU gets to write back its flash and exit after SIGTERM.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// SIGTERM to a QEMU this process started (the power going off, or thrown by a log line).
fn signal_terminate(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: `kill` with the pid of a child this process spawned and has not reaped (the
        // reader holds its stdout, which is open until it exits).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}
