//! The MQTT broker of a run, whichever it is: the harness's own, one it only talks to, or a
//! mosquitto it runs. Steps of any update path publish and watch through it.

use crate::services::mosquitto::Mosquitto;
use crate::services::mqtt_broker::{Message, MqttBroker};
use crate::services::mqtt_observer::MqttObserver;
use std::net::SocketAddr;
use std::time::Duration;

/// Which broker the scenarios use.
#[derive(Clone, Debug, Default)]
pub enum BrokerChoice {
    /// The harness's own, one per scenario.
    #[default]
    Embedded,
    /// One already running that the harness only talks to (`--mqtt-broker`).
    External(SocketAddr),
    /// A mosquitto program the harness runs itself, one process per scenario (`--mosquitto`).
    Mosquitto(std::path::PathBuf),
}

/// The broker of a run: the harness's own, one it only talks to, or a mosquitto it runs.
pub enum BrokerLink {
    Embedded(MqttBroker),
    /// `retained`: the topics the harness published retained there, cleared when the run ends
    /// (the broker outlives the run; the next run's device must not get them).
    External {
        observer: MqttObserver,
        retained: std::sync::Mutex<Vec<String>>,
    },
    Mosquitto {
        broker: Mosquitto,
        observer: MqttObserver,
    },
}

impl BrokerLink {
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        match self {
            BrokerLink::Embedded(b) => b.publish(topic, payload, retain),
            BrokerLink::External { observer, retained } => {
                if retain && !payload.is_empty() {
                    retained.lock().unwrap_or_else(|p| p.into_inner()).push(topic.to_string());
                }
                observer.publish(topic, payload, retain)
            }
            BrokerLink::Mosquitto { observer, .. } => observer.publish(topic, payload, retain),
        }
    }

    /// The publications seen; from an external broker, not the retained ones it sent on
    /// subscribing (they are from before this run). A mosquitto of this run's own starts empty,
    /// so what it sends retained (to the harness's session after a restart) is this run's.
    pub fn messages(&self) -> Vec<Message> {
        match self {
            BrokerLink::Embedded(b) => b.messages(),
            BrokerLink::External { observer: o, .. } => {
                o.messages().into_iter().filter(|m| !m.retain).collect()
            }
            BrokerLink::Mosquitto { observer, .. } => observer.messages(),
        }
    }

    /// Publishes, cutting every subscriber's connection after `after` bytes of the packet:
    /// only the harness's own broker can (an error says why otherwise).
    pub fn publish_cut(&self, topic: &str, payload: &[u8], retain: bool, after: usize) -> Result<(), String> {
        match self {
            BrokerLink::Embedded(b) => {
                b.publish_cut(topic, payload, retain, after);
                Ok(())
            }
            _ => Err("cutting a subscriber's connection mid-message takes the harness's own broker (this run uses another)".into()),
        }
    }

    /// Waits for the first publication after the first `skip` that `pred` accepts (from an
    /// external broker, retained ones sent on subscribing are skipped as in [`Self::messages`]).
    pub fn wait_message(
        &self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Option<(usize, Message)> {
        match self {
            BrokerLink::Embedded(b) => b.wait_message(skip, timeout, pred),
            BrokerLink::External { observer: o, .. } => {
                o.wait_message(skip, timeout, |m| !m.retain && pred(m))
            }
            BrokerLink::Mosquitto { observer, .. } => observer.wait_message(skip, timeout, pred),
        }
    }

    /// How many publications were seen so far (a cursor for [`Self::wait_message`]).
    pub fn seen(&self) -> usize {
        match self {
            BrokerLink::Embedded(b) => b.messages().len(),
            BrokerLink::External { observer: o, .. } | BrokerLink::Mosquitto { observer: o, .. } => {
                o.messages().len()
            }
        }
    }
}

impl Drop for BrokerLink {
    fn drop(&mut self) {
        if let BrokerLink::External { observer, retained } = self {
            for topic in retained.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
                // An empty retained message deletes the retained one.
                observer.publish(&topic, b"", true);
            }
        }
    }
}
