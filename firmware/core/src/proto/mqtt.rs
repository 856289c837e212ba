//! MQTT 3.1.1, as the device speaks it to a broker: the packets ([`packet`]), the session
//! ([`client`]: connect with a last will, subscribe to the command topic, publish status,
//! keep-alive, reconnect with back-off) and the command topic's messages ([`command`]: the seed
//! project's JSON trigger for an HTTP(S) pull) and the status the device publishes back ([`status`],
//! our schema). Spec: mqtt-https-pull.md.
//!
//! MQTT here is a transport for commands and status; the update itself is pulled over HTTP(S)
//! by the HTTP pull path. Homie OTA, which sends the image over MQTT, reuses the
//! packets and the client.

pub mod broker;
pub mod client;
pub mod command;
pub mod packet;
pub mod status;
pub mod status_reader;
#[cfg(test)]
mod tests;

/// The seed's command topic (its root node's).
pub const DEFAULT_COMMAND_TOPIC: &str = "/switch/cmd/root";
/// Where the device publishes its OTA status (our schema, mqtt-https-pull.md §10).
pub const DEFAULT_STATE_TOPIC: &str = "/switch/state/root";
/// The broker's default port.
pub const DEFAULT_PORT: u16 = 1883;
