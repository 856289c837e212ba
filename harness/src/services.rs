//! Services the harness starts for update paths where the device connects out: the firmware
//! HTTP server devices pull from and the MQTT broker that triggers them. Each is a
//! real server on loopback at a free port, stopped when dropped, and reusable by any scenario
//! step or update path (HTTP pull, the Arduino updater, Homie, fleet rollouts).

pub mod broker;
pub mod firmware_server;
pub mod mosquitto;
pub mod mqtt_broker;
pub mod mqtt_observer;
pub mod test_pki;
