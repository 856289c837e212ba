//! The MQTT-triggered pull as the device serves it: a connection to the broker NVS names (the
//! path is off without one) and, for a trigger, one to the firmware server.

use super::settings::MqttSettings;
use super::{Agent, Link, Output, RunningFacts, Settings};
use crate::app_desc::AppDesc;
use crate::io::{ConnectFailure, Input, Remote};
use crate::log::{LogEvent, LogSink};
use crate::proto::http_pull::{ConnectError, Endpoint};
use crate::service::{Boot, Cx, PathIo, PathService};
use crate::session::Session;
use core::net::SocketAddr;
use embedded_storage::nor_flash::NorFlash;

const BROKER: u8 = 0;
const SERVER: u8 = 1;

pub struct Service {
    session: Session<Agent>,
    settings: MqttSettings,
    client_id: [u8; 13],
    running: AppDesc,
    facts: RunningFacts,
}

impl Service {
    fn local(link: Link) -> u8 {
        match link {
            Link::Broker => BROKER,
            Link::Server => SERVER,
        }
    }
}

struct Out<'a, 'c>(&'a mut PathIo<'c>);
impl Output for Out<'_, '_> {
    fn connect_broker(&mut self, to: SocketAddr) {
        self.0.connect(BROKER, Remote::Addr(to));
    }
    /// TCP only: for https, the TLS link runs over it inside the agent.
    fn connect_server(&mut self, to: Endpoint<'_>) {
        self.0.connect(SERVER, Remote::Host { host: to.host, port: to.port });
    }
    fn send(&mut self, link: Link, bytes: &[u8]) {
        self.0.send(Service::local(link), bytes);
    }
    fn close(&mut self, link: Link) {
        self.0.close(Service::local(link));
    }
    fn log(&mut self, line: &LogEvent<'_>) {
        self.0.log(line);
    }
}

/// The agent's view of the settings, built per call (it borrows them).
fn agent_settings<'s>(
    settings: &'s MqttSettings,
    client_id: &'s [u8; 13],
    running: &'s AppDesc,
    facts: &RunningFacts,
) -> Option<Settings<'s>> {
    let client_id = core::str::from_utf8(client_id).ok()?;
    Settings::from_nvs(settings, client_id, running.version(), facts)
}

impl<F: NorFlash> PathService<F> for Service {
    fn boot(b: &mut Boot<'_, F>) -> Option<Self> {
        let log = &mut *b.log;
        let settings = MqttSettings::default().load(b.flash, b.table, &mut |e: &LogEvent<'_>| log.log(e));
        b.log.log(&LogEvent::Module(&settings.log_line()));
        if let Some(line) = settings.tls_log_line() {
            b.log.log(&LogEvent::Module(&line));
        }
        settings.broker?;
        // The image was just verified from this flash; a read that fails is a flash the boot
        // would have failed on already.
        let facts = RunningFacts::read(b.flash, b.table, b.booted, b.built_in.mac).ok()?;
        let mut client_id = [0u8; 13];
        super::client_id(facts.mac, &mut client_id);
        // The https handshakes' randomness, keyed once per boot.
        let mut key = [0u8; 32];
        b.rng.fill(&mut key);
        let mut agent = Agent::default();
        agent.set_tls_key(key);
        Some(Service {
            session: Session::new(agent),
            settings,
            client_id,
            running: b.booted.image.desc,
            facts,
        })
    }

    fn start(&mut self, cx: &mut Cx<'_, F>) {
        let Service { session, settings, client_id, running, facts } = self;
        let Some(s) = agent_settings(settings, client_id, running, facts) else { return };
        session.server.start(&s, &mut Out(&mut cx.io));
    }

    fn input(&mut self, input: Input<'_>, cx: &mut Cx<'_, F>) {
        let Service { session, settings, client_id, running, facts } = self;
        let Some(s) = agent_settings(settings, client_id, running, facts) else { return };
        let Cx { flash, target, now_ms, others_busy, io, .. } = cx;
        let (now, others_busy) = (*now_ms, *others_busy);
        if let Input::Closed(link) = input {
            io.close(link.local);
        }
        session.with(*flash, target, |agent, sink| {
            let out = &mut Out(io);
            match input {
                Input::Connected(l) if l.local == BROKER => agent.broker_connected(&s, now, out),
                Input::ConnectFailed(l, _) if l.local == BROKER => agent.broker_connect_failed(now, out),
                Input::Data(l, bytes) if l.local == BROKER => {
                    agent.broker_data(&s, bytes, now, others_busy, sink, out)
                }
                Input::Closed(l) if l.local == BROKER => agent.broker_closed(now, out),
                Input::Connected(_) => agent.server_connected(&s, now, sink, out),
                Input::ConnectFailed(_, why) => {
                    let why = match why {
                        ConnectFailure::Dns => ConnectError::Dns,
                        ConnectFailure::Refused => ConnectError::Refused,
                        ConnectFailure::Timeout => ConnectError::Timeout,
                    };
                    agent.server_connect_failed(&s, why, now, sink, out)
                }
                Input::Data(_, bytes) => agent.server_data(&s, bytes, now, sink, out),
                Input::Closed(_) => agent.server_closed(&s, now, sink, out),
                Input::Datagram { .. } => {}
            }
        });
    }

    fn poll(&mut self, cx: &mut Cx<'_, F>) {
        let Service { session, settings, client_id, running, facts } = self;
        let Some(s) = agent_settings(settings, client_id, running, facts) else { return };
        let Cx { flash, target, now_ms, io, .. } = cx;
        session.with(*flash, target, |agent, sink| agent.poll(&s, *now_ms, sink, &mut Out(io)));
    }

    fn deadline(&self, _now_ms: u64) -> Option<u64> {
        let s = agent_settings(&self.settings, &self.client_id, &self.running, &self.facts)?;
        self.session.server.deadline(&s)
    }

    fn busy(&self) -> bool {
        self.session.server.pulling()
    }

    fn reboot_requested(&self) -> bool {
        self.session.server.reboot_requested()
    }
}
