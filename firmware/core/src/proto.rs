//! The update paths a device serves, one module each: a sans-IO state machine (bytes or
//! datagrams in; bytes, datagrams, "connect to X" and events out) over an
//! [`UpdateSink`](crate::update::UpdateSink), with its own mapping of writer errors to the
//! protocol's codes and texts. Sockets, timers and reboots belong to the adapters.

pub mod arduino;
pub mod esphome;
