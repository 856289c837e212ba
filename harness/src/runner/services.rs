//! The services a scenario needs (the broker, the firmware server), started before the device
//! and stopped with the run, and the service steps that drive and check them, whatever the
//! update path.

use super::{Run, StepResult};
use crate::paths::mqtt_pull::{read_status, ready_line, wait_device};
use crate::report::StepOutcome;
use crate::scenario::services::{
    BrokerAction, CertKind, ExpectRequestStep, ExpectStatusStep, PublishStep, SERVER_PLACEHOLDER, ServeStep,
};
use crate::scenario::{Scenario, StepKind};
use crate::services::broker::{BrokerChoice, BrokerLink};
use crate::services::firmware_server::{FirmwareServer, Response};
use crate::services::mosquitto::Mosquitto;
use crate::services::mqtt_broker::MqttBroker;
use crate::services::mqtt_observer::MqttObserver;
use crate::services::test_pki::TestPki;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::READ_BACK_PREFIX;
/// How long `mqtt_publish` waits for the device to subscribe to the topic.
const SUBSCRIBER_TIMEOUT: Duration = Duration::from_secs(10);
/// After a matching status, how long the serial log must stay quiet before the step ends.
const LOG_CATCH_UP: Duration = Duration::from_millis(100);
/// How long a publication with `cut_power` waits for the cut (the pull it starts may be slow).
const CUT_TIMEOUT: Duration = Duration::from_secs(30);

/// The services of one scenario run.
pub struct Services {
    pub broker: Option<BrokerLink>,
    pub server: Option<FirmwareServer>,
    /// The base URLs of the firmware server's listeners as the device reaches them, by
    /// placeholder (`{server}`: `http://host:port`; `{https}` and the certificate faults').
    pub bases: Vec<(&'static str, String)>,
    /// The index of the first broker message `expect_status` has not looked at.
    pub status_cursor: usize,
}

impl Services {
    /// Starts what `scenario` uses; `host` is where the device reaches this machine. Returns the
    /// broker's address as the device reaches it, for provisioning.
    pub fn start(
        scenario: &Scenario,
        host: Result<IpAddr, crate::backend::BackendError>,
        choice: &BrokerChoice,
    ) -> Result<(Services, Option<SocketAddr>, Option<crate::backend::DeviceTls>), Start> {
        let serves = scenario.steps.iter().any(|s| match &s.kind {
            StepKind::Serve(_) => true,
            StepKind::Ota(o) => o.path.needs.server,
            _ => false,
        }) || scenario.device.paths.needs_server();
        let mut services = Services { broker: None, server: None, bases: Vec::new(), status_cursor: 0 };
        let wants_broker = scenario.device.paths.needs_broker();
        if !wants_broker && !serves {
            return Ok((services, None, None));
        }
        let host = host.map_err(|e| Start::Skip(e.to_string()))?;
        let loopback: IpAddr = Ipv4Addr::LOCALHOST.into();
        let listen = listen_address(host);
        let mut device_broker = None;
        let stops_broker = scenario.steps.iter().any(|s| matches!(s.kind, StepKind::Broker(_)));
        if matches!(choice, BrokerChoice::External(_)) && stops_broker {
            return Err(Start::Skip(
                "the scenario stops and restarts the broker, which the harness can only do to one it runs (its own or --mosquitto), not with --mqtt-broker".into(),
            ));
        }
        let cuts_mid_message =
            scenario.steps.iter().any(|s| matches!(&s.kind, StepKind::Ota(o) if o.update.needs_own_broker()));
        if !matches!(choice, BrokerChoice::Embedded) && cuts_mid_message {
            return Err(Start::Skip(
                "the scenario has the broker lose a connection mid-message, which only the harness's own broker does (not --mosquitto or --mqtt-broker)".into(),
            ));
        }
        if wants_broker {
            let (link, addr) = match choice {
                BrokerChoice::Embedded => {
                    let b = MqttBroker::start(listen).map_err(|e| Start::Fail(e.to_string()))?;
                    let addr = b.addr();
                    (BrokerLink::Embedded(b), addr)
                }
                BrokerChoice::External(addr) => {
                    let o = MqttObserver::connect(*addr).map_err(|e| Start::Fail(e.to_string()))?;
                    // A previous run's device left its status retained there.
                    if let Some((_, state_topic)) = scenario.device.paths.status_topics() {
                        o.publish(state_topic, b"", true);
                    }
                    (BrokerLink::External { observer: o, retained: Default::default() }, *addr)
                }
                BrokerChoice::Mosquitto(program) => {
                    let broker = Mosquitto::start(program, listen).map_err(|e| Start::Fail(e.to_string()))?;
                    let addr = broker.addr();
                    let observer = MqttObserver::connect(addr).map_err(|e| Start::Fail(e.to_string()))?;
                    (BrokerLink::Mosquitto { broker, observer }, addr)
                }
            };
            // A broker on this machine's loopback is reached through the backend's way to the
            // host; one elsewhere at its own address.
            let seen = if addr.ip() == listen || addr.ip().is_loopback() {
                SocketAddr::new(host, addr.port())
            } else {
                addr
            };
            device_broker = Some(seen);
            services.broker = Some(link);
        }
        let tls_clock = scenario.device.paths.test_ca();
        let mut device_tls = None;
        if serves || tls_clock.is_some() {
            let mut s = FirmwareServer::start(listen).map_err(|e| Start::Fail(e.to_string()))?;
            services
                .bases
                .push((SERVER_PLACEHOLDER, format!("http://{}", SocketAddr::new(host, s.addr().port()))));
            // The certificates name the host both as the device reaches it and as loopback.
            let pki = TestPki::new(&[host, loopback]).map_err(|e| Start::Fail(e.to_string()))?;
            let https = if uses_https(scenario) { &CertKind::ALL[..] } else { &[] };
            for &kind in https {
                let addr =
                    s.listen_tls(listen, pki.server_config(kind)).map_err(|e| Start::Fail(e.to_string()))?;
                services
                    .bases
                    .push((kind.placeholder(), format!("https://{}", SocketAddr::new(host, addr.port()))));
            }
            if let Some(clock) = tls_clock {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                device_tls = Some(crate::backend::DeviceTls {
                    ca_pem: pki.ca_pem().to_string(),
                    clock_unix: clock.then_some(now),
                });
            }
            services.server = Some(s);
        }
        Ok((services, device_broker, device_tls))
    }
}

/// Where the services listen for a device that reaches this machine at `host`: there, when it is
/// one of this machine's addresses (a lab bench's LAN); else loopback (the emulator; QEMU's slirp
/// turns 10.0.2.2 into the host's loopback).
fn listen_address(host: IpAddr) -> IpAddr {
    if !host.is_loopback() && std::net::TcpListener::bind((host, 0)).is_ok() {
        host
    } else {
        Ipv4Addr::LOCALHOST.into()
    }
}

/// Whether a step names an https listener.
fn uses_https(scenario: &Scenario) -> bool {
    let named = |t: &str| crate::scenario::services::https_placeholders(t).is_ok_and(|k| !k.is_empty());
    scenario.steps.iter().any(|s| match &s.kind {
        StepKind::MqttPublish(p) => named(&p.payload),
        StepKind::Serve(v) => {
            matches!(&v.route.response, Response::Redirect { location, .. } if named(location))
        }
        _ => false,
    })
}

impl Services {
    /// The firmware server's base URL as the device reaches it, when one runs.
    pub fn server_base(&self) -> Option<&str> {
        self.bases.iter().find(|(p, _)| *p == SERVER_PLACEHOLDER).map(|(_, b)| b.as_str())
    }

    /// `text` with every listener's placeholder replaced by its base URL.
    pub fn with_bases(&self, text: &str) -> String {
        self.bases.iter().fold(text.to_string(), |t, (placeholder, base)| t.replace(placeholder, base))
    }
}

pub enum Start {
    Skip(String),
    Fail(String),
}

impl Run<'_> {
    fn services_missing(&self, what: &str) -> String {
        format!("{what}: the run has no such service (a scenario check should have refused this step)")
    }

    pub(super) fn serve(&mut self, s: &ServeStep) -> StepResult {
        let Some(server) = &self.services.server else { return Err(self.services_missing("serve")) };
        let mut route = s.route.clone();
        // The bytes this backend runs for a named image (its firmware build of `v2`, say).
        if let (Some(image), Response::Image { bytes, .. }) = (&s.image, &mut route.response) {
            match self.backend.ota_image(image) {
                Ok(b) => *bytes = std::sync::Arc::new(b),
                Err(why) => return Ok(StepOutcome::Skipped(why.to_string())),
            }
        }
        if let Response::Redirect { location, .. } = &mut route.response {
            *location = self.services.with_bases(location);
        }
        server.route(&s.path, route);
        Ok(StepOutcome::Passed)
    }

    /// The app runs again if a flash read-back stopped it (a bench's chip waits in its ROM loader
    /// after one): the device must be connected to hear a command or report a status.
    /// A boot that only a read-back caused is not the scenario's: its lines, up to the device's
    /// MQTT session being back, go to the full log as read-back lines, as the boot's own do
    /// (the emulator and QEMU read without a reboot, and their snapshots are the same files).
    fn device_running(&mut self) -> Result<(), String> {
        let before = self.serial.lines.len();
        self.dut.resume().map_err(|e| e.to_string())?;
        self.drain(Duration::ZERO).map_err(|e| e.to_string())?;
        let rebooted = self.serial.lines[before..].iter().any(|l| l.starts_with(READ_BACK_PREFIX));
        let Some((command_topic, state_topic)) = self.scenario.device.paths.status_topics() else {
            return Ok(());
        };
        if !rebooted {
            return Ok(());
        }
        let (command_topic, state_topic) = (command_topic.to_string(), state_topic.to_string());
        // The broker can see the device subscribed before its serial line saying so is read
        // (two channels; under load the UART's is the slower): that line belongs to the
        // read-back's boot too, or it would land in the scenario's log.
        let ready_line = ready_line(&command_topic);
        let deadline = Instant::now() + SUBSCRIBER_TIMEOUT;
        loop {
            let ready = match &self.services.broker {
                Some(b) => wait_device(b, &command_topic, &state_topic, Duration::ZERO).is_ok(),
                None => true,
            };
            let said_so = self.serial.lines[before..].iter().any(|l| l.ends_with(&ready_line));
            if (ready && said_so) || Instant::now() >= deadline {
                break;
            }
            match self.dut.next_event(Duration::from_millis(20)).map_err(|e| e.to_string())? {
                Some(crate::dut::DutEvent::Serial(l)) => self.record(crate::dut::DutEvent::ReadBackBoot(l)),
                Some(e) => self.record(e),
                None => {}
            }
        }
        Ok(())
    }

    pub(super) fn mqtt_publish(&mut self, p: &PublishStep) -> StepResult {
        self.device_running()?;
        let Some(broker) = &self.services.broker else { return Err(self.services_missing("mqtt_publish")) };
        // A message that is not retained is lost on a device not yet subscribed. The pull's
        // device says on its state topic when it is (through any broker); another is known to
        // be only by the harness's own broker, which sees its subscriptions.
        let ready = match (self.scenario.device.paths.status_topics(), broker) {
            _ if p.retain => Ok(()),
            (Some((_, state_topic)), _) => wait_device(broker, &p.topic, state_topic, SUBSCRIBER_TIMEOUT),
            (None, BrokerLink::Embedded(b)) => b
                .wait_subscriber(&p.topic, SUBSCRIBER_TIMEOUT)
                .map(drop)
                .ok_or_else(|| format!("no client subscribed to {} within {SUBSCRIBER_TIMEOUT:?}", p.topic)),
            (None, _) => Ok(()),
        };
        if let Err(why) = ready {
            return Ok(StepOutcome::Failed(why));
        }
        let cut = p.cut_power.as_ref().map(super::power_cut);
        if let Some(why) = cut.as_ref().and_then(|c| self.cannot_cut(c)) {
            return Ok(StepOutcome::Skipped(why));
        }
        let losses = self.power_losses.len();
        if let Some(c) = cut {
            self.dut.arm_power_cut(c).map_err(|e| e.to_string())?;
        }
        let payload = self.services.with_bases(&p.payload);
        let Some(broker) = &self.services.broker else { return Err(self.services_missing("mqtt_publish")) };
        broker.publish(&p.topic, payload.as_bytes(), p.retain);
        if p.cut_power.is_some() {
            let fired =
                self.wait_until(CUT_TIMEOUT, |r| r.power_losses.len() > losses).map_err(|e| e.to_string())?;
            if !fired {
                self.dut.disarm_power_cut().map_err(|e| e.to_string())?;
                return Ok(StepOutcome::Failed(format!(
                    "the armed power cut never fired within {CUT_TIMEOUT:?} of the publication"
                )));
            }
        }
        Ok(StepOutcome::Passed)
    }

    pub(super) fn expect_status(&mut self, e: &ExpectStatusStep) -> StepResult {
        self.device_running()?;
        let topic = self
            .scenario
            .device
            .paths
            .status_topics()
            .map(|(_, state)| state.to_string())
            .unwrap_or_default();
        let deadline = Instant::now() + e.timeout;
        let mut seen = Vec::new();
        loop {
            let Some(broker) = &self.services.broker else {
                return Err(self.services_missing("expect_status"));
            };
            let messages = broker.messages();
            for (i, m) in messages.iter().enumerate().skip(self.services.status_cursor) {
                self.services.status_cursor = i + 1;
                if m.topic != topic {
                    continue;
                }
                let text = m.text();
                if text.is_empty() {
                    // A retained status cleared (by the harness, before the run).
                    continue;
                }
                let status = match read_status(&text) {
                    Ok(s) => s,
                    Err(why) => {
                        return Ok(StepOutcome::Failed(format!(
                            "the device published a status that is not our schema ({why}): {text}"
                        )));
                    }
                };
                let matches = status.state == e.state
                    && e.err.as_ref().is_none_or(|want| *want == status.err)
                    && e.fw.as_ref().is_none_or(|want| *want == status.fw)
                    && e.progress.is_none_or(|want| status.percent() == Some(want));
                if matches {
                    // The device logs each step before it publishes it, but its serial line can
                    // reach us after the status (a bench's pty under load): take the log in until
                    // it is quiet, so what follows (a snapshot) sees the lines that came first.
                    self.drain(LOG_CATCH_UP).map_err(|e| e.to_string())?;
                    return Ok(StepOutcome::Passed);
                }
                seen.push(text.clone());
                // An update that ended another way will not bring the expected state.
                if status.state.is_final() && e.state.is_final() {
                    let code = status.code.map(|c| format!(", code {c}")).unwrap_or_default();
                    let err = if status.err.is_empty() {
                        String::new()
                    } else {
                        format!(" (err {}{code})", status.err)
                    };
                    return Ok(StepOutcome::Failed(format!(
                        "expected status `{}`{}, the device reported `{}`{err}",
                        e.state.name(),
                        e.err.as_ref().map(|x| format!(" (err {x})")).unwrap_or_default(),
                        status.state.name()
                    )));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(StepOutcome::Failed(format!(
                    "no status `{}` on {topic} within {:?}; seen: {}",
                    e.state.name(),
                    e.timeout,
                    if seen.is_empty() { "none".to_string() } else { seen.join(" ") }
                )));
            }
            // The device's log and reboots keep coming in while the status is awaited.
            if let Some(ev) =
                self.dut.next_event(left.min(Duration::from_millis(20))).map_err(|e| e.to_string())?
            {
                self.record(ev);
            }
        }
    }

    pub(super) fn expect_request(&mut self, r: &ExpectRequestStep) -> StepResult {
        let Some(server) = &self.services.server else { return Err(self.services_missing("expect_request")) };
        let requests: Vec<_> = server.requests().into_iter().filter(|q| q.target == r.path).collect();
        if let Some(n) = r.count
            && requests.len() != n as usize
        {
            return Ok(StepOutcome::Failed(format!(
                "{} request(s) for {}, expected {n}",
                requests.len(),
                r.path
            )));
        }
        if r.count == Some(0) {
            return Ok(StepOutcome::Passed);
        }
        let Some(last) = requests.last() else {
            return Ok(StepOutcome::Failed(format!("no request for {} reached the server", r.path)));
        };
        for (name, want) in &r.headers {
            match last.header(name) {
                Some(v) if v == want => {}
                Some(v) => {
                    return Ok(StepOutcome::Failed(format!("header {name}: `{v}`, expected `{want}`")));
                }
                None => {
                    return Ok(StepOutcome::Failed(format!(
                        "no header {name} in the request for {}",
                        r.path
                    )));
                }
            }
        }
        for name in &r.absent_headers {
            if let Some(v) = last.header(name) {
                return Ok(StepOutcome::Failed(format!("header {name}: `{v}` was sent, expected none")));
            }
        }
        Ok(StepOutcome::Passed)
    }

    pub(super) fn broker(&mut self, a: BrokerAction) -> StepResult {
        let Some(broker) = &mut self.services.broker else { return Err(self.services_missing("broker")) };
        match (broker, a) {
            (BrokerLink::Embedded(b), BrokerAction::GoAway) => b.go_away(),
            (BrokerLink::Embedded(b), BrokerAction::ComeBack) => b.come_back(),
            (BrokerLink::Mosquitto { broker, .. }, BrokerAction::GoAway) => broker.go_away(),
            // The harness's own session went with the process: it follows the broker back.
            (BrokerLink::Mosquitto { broker, observer }, BrokerAction::ComeBack) => {
                broker.come_back().map_err(|e| format!("broker: come_back: {e}"))?;
                observer.reconnect().map_err(|e| format!("broker: come_back: {e}"))?;
            }
            (BrokerLink::External { .. }, _) => {
                return Err(
                    "broker: an external broker cannot be stopped (the scenario should have been skipped)"
                        .into(),
                );
            }
        }
        Ok(StepOutcome::Passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_listen_where_the_device_reaches_them_or_on_loopback() {
        assert_eq!(listen_address(Ipv4Addr::LOCALHOST.into()), IpAddr::from(Ipv4Addr::LOCALHOST));
        // QEMU's slirp gateway (and any address that is not this machine's): loopback.
        assert_eq!(listen_address(Ipv4Addr::new(192, 0, 2, 1).into()), IpAddr::from(Ipv4Addr::LOCALHOST));
        // An address of this machine (the second loopback address stands for a LAN address).
        let other: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
        if std::net::TcpListener::bind((other, 0)).is_ok() {
            assert_eq!(
                listen_address(other),
                IpAddr::from(Ipv4Addr::LOCALHOST),
                "loopback addresses stay loopback"
            );
        }
    }
}
