//! `ota-emu`: an emulated ESP32-C3 running otahil's `ota-core`.
//!
//! - [`nor`]: the one strict NOR model's rules (bounds, alignment, bits only clear).
//! - [`flash`]: the file-backed NOR flash with power-cut and torn-write injection.
//! - [`device`]: power, boot, the serial log and OTA sessions, without any I/O of its own.
//! - [`control`]: the line protocol on stdin that drives power and faults.
//! - [`serve`]: the process: TCP OTA port on loopback, serial on stdout, control on stdin.
//! - [`mkflash`]: fresh flash images from a partition table and an app.
//! - [`script`]: one whole update over an update path, without sockets (the sweep's updates).
//! - [`sweep`]: the power-cut sweep.

pub mod cli;
pub mod control;
pub mod device;
pub mod flash;
pub mod mkflash;
pub mod nor;
pub mod rom_loader;
pub mod script;
pub mod serve;
pub mod settings_args;
pub mod sweep;
pub mod uart;

/// The prefix of every control-channel line on stdout; serial log lines never start with it.
pub const CONTROL_PREFIX: &str = "#otahil ";
