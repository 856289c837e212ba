//! Plays a scenario against a [`Dut`]: steps in order, each checked, the first failure stops
//! the scenario with what was expected, what happened and the last serial lines.

use crate::backend::{Backend, StartContext, StartError};
use crate::dut::{Dut, DutError, DutEvent, PowerCut};
use crate::inspect;
use crate::report::{ScenarioReport, StepOutcome, StepReport};
use crate::scenario::{
    CutPower, EraseSpec, OtaStep, Scenario, SnapshotKind, StepKind, SweepStep, WriterFaultSpec,
};
use crate::serial::{SerialLog, normalise};
use std::time::{Duration, Instant};

mod services;
pub use crate::services::broker::BrokerChoice;

/// Options of one run beyond the scenario itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Evaluate only this cut point of every sweep (and its torn variant if `true`), keeping
    /// its serial log: the reproduction of a sweep failure.
    pub only_cut: Option<(u64, bool)>,
    /// Override the scenario's device seed.
    pub seed: Option<u64>,
    /// Write each sweep's per-cut matrix as `<dir>/<scenario>-<n>-sweep.csv`.
    pub sweep_matrix: Option<std::path::PathBuf>,
    /// Keep every sweep's cuts in the report (for the HTML report's picture).
    pub keep_cuts: bool,
    /// Which MQTT broker the pull path's scenarios use (`--mqtt-broker`, `--mosquitto`).
    pub broker: BrokerChoice,
    /// Where steps keep files for people (browser screenshots); `None`: not kept.
    pub artifacts: Option<std::path::PathBuf>,
}

/// How a read-back boot's lines are marked in the full log.
const READ_BACK_PREFIX: &str = "[read-back boot]";

/// How long to wait for the device to reboot after an update, or for an armed cut to fire.
const DEVICE_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

struct Run<'a> {
    dut: &'a mut dyn Dut,
    serial: SerialLog,
    power_losses: Vec<String>,
    reboots: usize,
    sessions_closed: usize,
    rt: tokio::runtime::Runtime,
    snapshots: Vec<(String, String)>,
    flash_maps: Vec<(String, inspect::FlashMap)>,
    sweeps: Vec<crate::report::SweepResult>,
    scenario: &'a Scenario,
    options: &'a RunOptions,
    notes: Vec<String>,
    backend: &'a dyn Backend,
    skipped_a_step: bool,
    snapshots_after_skip: Vec<String>,
    services: services::Services,
    artifacts: crate::paths::Artifacts,
}

type StepResult = Result<StepOutcome, String>;

impl Run<'_> {
    fn record(&mut self, e: DutEvent) {
        match e {
            DutEvent::Serial(l) => self.serial.push(l),
            DutEvent::PowerLost(what) => self.power_losses.push(what),
            DutEvent::Rebooted => self.reboots += 1,
            DutEvent::SessionClosed => self.sessions_closed += 1,
            // Before the cursor, and not a catalogue line: neither expectations nor the log
            // snapshot see it.
            DutEvent::ReadBackBoot(l) => {
                self.serial.push(format!("{READ_BACK_PREFIX} {l}"));
                self.serial.mark_boot();
            }
        }
    }

    /// Takes in everything the device has said, waiting `quiet` for more after the last event.
    fn drain(&mut self, quiet: Duration) -> Result<(), DutError> {
        while let Some(e) = self.dut.next_event(quiet)? {
            self.record(e);
        }
        Ok(())
    }

    fn wait_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<bool, DutError> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if let Some(e) = self.dut.next_event(left.min(Duration::from_millis(50)))? {
                self.record(e);
            }
        }
    }

    fn step(&mut self, kind: &StepKind, snapshot_no: &mut usize) -> StepResult {
        let dut_err = |e: DutError| e.to_string();
        match kind {
            StepKind::Boot | StepKind::PowerOn => {
                self.drain(Duration::ZERO).map_err(dut_err)?;
                self.serial.mark_boot();
                self.dut.power_on().map_err(dut_err)?;
                self.drain(Duration::ZERO).map_err(dut_err)?;
                Ok(StepOutcome::Passed)
            }
            StepKind::PowerOff => {
                if !self.dut.capabilities().power_switch {
                    return Ok(StepOutcome::Skipped(format!(
                        "the {} backend has no power switch",
                        self.dut.backend()
                    )));
                }
                self.dut.power_off().map_err(dut_err)?;
                Ok(StepOutcome::Passed)
            }
            StepKind::Reset => {
                self.drain(Duration::ZERO).map_err(dut_err)?;
                self.serial.mark_boot();
                self.dut.reset().map_err(dut_err)?;
                self.drain(Duration::ZERO).map_err(dut_err)?;
                Ok(StepOutcome::Passed)
            }
            StepKind::ExpectLog { pattern, timeout, absent: false } => {
                let mut found = None;
                // Take in events and search after each one.
                let deadline = Instant::now() + *timeout;
                loop {
                    if let Some(l) = self.serial.find(pattern) {
                        found = Some(l);
                        break;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    if let Some(e) =
                        self.dut.next_event(left.min(Duration::from_millis(50))).map_err(dut_err)?
                    {
                        self.record(e);
                    }
                }
                match found {
                    Some(_) => Ok(StepOutcome::Passed),
                    None => Ok(StepOutcome::Failed(format!(
                        "no serial line matching /{}/ within {:?} since the last boot",
                        pattern.as_str(),
                        timeout
                    ))),
                }
            }
            StepKind::ExpectLog { pattern, timeout, absent: true } => {
                self.wait_until(*timeout, |r| r.serial.contains(pattern)).map_err(dut_err)?;
                match self.serial.contains(pattern) {
                    false => Ok(StepOutcome::Passed),
                    true => Ok(StepOutcome::Failed(format!(
                        "a serial line matches /{}/, which must not appear",
                        pattern.as_str()
                    ))),
                }
            }
            StepKind::Ota(o) => self.ota(o),
            StepKind::Serve(s) => self.serve(s),
            StepKind::MqttPublish(p) => self.mqtt_publish(p),
            StepKind::ExpectStatus(e) => self.expect_status(e),
            StepKind::ExpectRequest(r) => self.expect_request(r),
            StepKind::Broker(a) => self.broker(*a),
            StepKind::Sweep(w) => self.sweep(w, snapshot_no),
            StepKind::Snapshot(kinds) => {
                self.drain(Duration::ZERO).map_err(dut_err)?;
                *snapshot_no += 1;
                for k in kinds {
                    let content = match k {
                        SnapshotKind::Partitions => {
                            let map = inspect::flash_map(&self.dut.read_flash().map_err(dut_err)?);
                            let name = format!("{}-{}-{}", self.scenario.name, snapshot_no, k.name());
                            let text = map.to_text();
                            self.flash_maps.push((name, map));
                            text
                        }
                        SnapshotKind::Log => normalise(&self.serial.lines),
                    };
                    let name = format!("{}-{}-{}", self.scenario.name, snapshot_no, k.name());
                    if self.skipped_a_step {
                        self.snapshots_after_skip.push(name.clone());
                    }
                    self.snapshots.push((name, content));
                }
                Ok(StepOutcome::Passed)
            }
        }
    }

    fn seed(&self) -> u64 {
        self.options.seed.unwrap_or(self.scenario.device.seed)
    }

    /// The command that plays this scenario again: with its directory when it is not the
    /// project's `scenarios/` (a partial run compares no snapshots, so they need no directory).
    fn reproduce(&self) -> String {
        let dir = self.scenario.file.parent().filter(|d| !d.as_os_str().is_empty());
        let projects = dir.is_none_or(crate::is_project_scenarios);
        match dir {
            Some(d) if !projects => {
                format!("cargo xtask hil --scenarios {} --scenario {}", d.display(), self.scenario.name)
            }
            _ => format!("cargo xtask hil --scenario {}", self.scenario.name),
        }
    }

    fn sweep(&mut self, w: &SweepStep, snapshot_no: &mut usize) -> StepResult {
        if !self.dut.capabilities().exact_power_cut {
            return Ok(StepOutcome::Skipped(format!(
                "the {} backend cannot cut power at an exact flash operation",
                self.dut.backend()
            )));
        }
        self.drain(Duration::ZERO).map_err(|e| e.to_string())?;
        let base = self.dut.read_flash().map_err(|e| e.to_string())?;
        let d = &self.scenario.device;
        let cfg = ota_emu::sweep::SweepConfig {
            path: w.path,
            image: w.image.bytes.clone(),
            bootloader: ota_core::boot::BootloaderConfig {
                rollback: d.bootloader_rollback,
                chip: ota_core::image::ChipInfo::ESP32C3,
                flash_size: d.flash_size,
            },
            ota: ota_core::writer::OtaConfig {
                erase: match d.erase {
                    EraseSpec::Sequential => ota_core::writer::EraseMode::Sequential,
                    EraseSpec::Upfront => ota_core::writer::EraseMode::Upfront,
                },
                fault: match d.writer_fault {
                    None => ota_core::writer::WriterFault::None,
                    Some(WriterFaultSpec::SwitchBeforeWrite) => {
                        ota_core::writer::WriterFault::SwitchBeforeWrite
                    }
                },
                ..ota_core::writer::OtaConfig::default()
            },
            torn: w.torn,
            seed: self.seed(),
            only: self.options.only_cut,
            exact: w.exact,
            threads: 0,
            matrix: self.options.sweep_matrix.is_some() || self.options.keep_cuts,
        };
        let report = ota_emu::sweep::sweep(&base, &cfg).map_err(|e| e.to_string())?;
        self.notes.push(format!(
            "sweep of {}: {} cut points, {} cuts evaluated in {:.1} ms ({:.0} cuts/s)",
            w.image.name,
            report.cut_points,
            report.evaluated,
            report.elapsed.as_secs_f64() * 1000.0,
            report.rate()
        ));
        if let Some(dir) = &self.options.sweep_matrix {
            let path = dir.join(format!("{}-{}-sweep.csv", self.scenario.name, *snapshot_no + 1));
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&path, report.matrix_csv()))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            self.notes.push(format!("per-cut matrix written to {}", path.display()));
        }
        if let Some((k, torn)) = self.options.only_cut {
            self.notes.push(format!("serial log after cut {k}{}:", if torn { " (torn)" } else { "" }));
            self.notes.extend(report.log.iter().map(|l| format!("  | {l}")));
        } else {
            *snapshot_no += 1;
            let name = format!("{}-{}-sweep", self.scenario.name, snapshot_no);
            self.sweeps.push(sweep_result(&name, &report));
            self.snapshots.push((name, report.summary()));
        }
        if let Some(f) = report.failures.first() {
            return Ok(StepOutcome::Failed(format!(
                "{} of {} cuts broke the device; first: cut {}{} ({} {}): {}\n  reproduce: {} --cut {}{} --seed {}",
                report.failures.len(),
                report.evaluated,
                f.cut,
                if f.torn { " torn" } else { "" },
                f.phase.name(),
                f.op,
                f.problem,
                self.reproduce(),
                f.cut,
                if f.torn { " --torn" } else { "" },
                self.seed()
            )));
        }
        if self.options.only_cut.is_none() {
            for run in 0..w.random_runs {
                let seed = self.seed().wrapping_add(run as u64);
                let multi = ota_emu::sweep::random_multi_cut(&base, &cfg, w.max_cuts, seed)
                    .map_err(|e| e.to_string())?;
                if let Some(problem) = multi {
                    return Ok(StepOutcome::Failed(format!(
                        "random multi-cut run {run} (seed {seed}): {problem}\n  reproduce: {} --seed {}",
                        self.reproduce(),
                        self.seed()
                    )));
                }
            }
        }
        Ok(StepOutcome::Passed)
    }

    /// Why this backend cannot make `cut`, if it cannot.
    fn cannot_cut(&self, cut: &PowerCut) -> Option<String> {
        let caps = self.dut.capabilities();
        if cut.is_exact() && !caps.exact_power_cut {
            return Some(format!(
                "the {} backend cannot cut power at an exact flash operation",
                self.dut.backend()
            ));
        }
        if !caps.power_switch {
            return Some(format!("the {} backend has no power switch", self.dut.backend()));
        }
        None
    }

    fn ota(&mut self, o: &OtaStep) -> StepResult {
        let dut_err = |e: DutError| e.to_string();
        let caps = self.dut.capabilities();
        let cut = o.cut_power.as_ref().map(power_cut);
        if let Some(why) = cut.as_ref().and_then(|c| self.cannot_cut(c)) {
            return Ok(StepOutcome::Skipped(why));
        }
        // Without counters the update still runs and everything else is checked; the step then
        // reports the erase count as the part it skipped.
        let uncounted = o.erases.is_some() && !caps.flash_op_counters;
        // Reading a bench's flash resets its chip: the device would lose what it holds in RAM
        // (an ArduinoOTA challenge it waits to see answered), so the comparison is left out there.
        let unread = o.flash_unchanged && !caps.live_flash_read;
        self.drain(Duration::ZERO).map_err(dut_err)?;
        self.serial.mark_boot();
        let before =
            if o.flash_unchanged && !unread { Some(self.dut.read_flash().map_err(dut_err)?) } else { None };
        self.dut.resume().map_err(dut_err)?;
        self.drain(Duration::ZERO).map_err(dut_err)?;
        let counters = if o.erases.is_some() && !uncounted {
            Some(self.dut.flash_counters().map_err(dut_err)?)
        } else {
            None
        };
        let losses = self.power_losses.len();
        let reboots = self.reboots;
        let sessions = self.sessions_closed;
        if let Some(cut) = cut {
            self.dut.arm_power_cut(cut).map_err(dut_err)?;
        }
        let image = match self.backend.ota_image(&o.image) {
            Ok(i) => i,
            Err(why) => return Ok(StepOutcome::Skipped(why.to_string())),
        };
        let update = crate::paths::UpdateCx {
            image: &image,
            file_name: &o.image.name,
            timeout: o.timeout,
            seed: self.seed(),
            endpoints: self.dut.endpoints(),
            broker: self.services.broker.as_ref(),
            server: self.services.server.as_ref(),
            server_base: self.services.server_base(),
            sections: &self.scenario.device.paths,
            rt: &self.rt,
            artifacts: &self.artifacts,
        };
        let started = Instant::now();
        let outcome = match o.update.run(&update) {
            Ok(outcome) => outcome,
            Err(why) => return Ok(StepOutcome::Skipped(why.to_string())),
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(path = o.path.name, ms, %outcome, "update done");
        if outcome.name() != o.expect.0 {
            return Ok(StepOutcome::Failed(format!("expected {}, got {outcome}", o.expect)));
        }
        // The device's side of the session (its logs, its abort) is over before we look at it.
        let closed = if !o.update.device_ends_session(&outcome) {
            true
        } else if caps.session_events {
            self.wait_until(DEVICE_EVENT_TIMEOUT, |r| r.sessions_closed > sessions).map_err(dut_err)?
        } else {
            // No session events from this backend: the session is over when its log goes quiet.
            if !o.expect.is_ok() {
                self.drain(Duration::from_millis(300)).map_err(dut_err)?;
            }
            true
        };
        if !closed {
            return Ok(StepOutcome::Failed(format!(
                "the device did not close the OTA session within {DEVICE_EVENT_TIMEOUT:?} (client saw: {outcome})"
            )));
        }
        if o.expect.is_ok() {
            let rebooted = self.wait_until(DEVICE_EVENT_TIMEOUT, |r| r.reboots > reboots).map_err(dut_err)?;
            if !rebooted {
                return Ok(StepOutcome::Failed(format!(
                    "the update succeeded but the device did not reboot within {DEVICE_EVENT_TIMEOUT:?}"
                )));
            }
        }
        if o.cut_power.is_some() {
            let fired =
                self.wait_until(DEVICE_EVENT_TIMEOUT, |r| r.power_losses.len() > losses).map_err(dut_err)?;
            if !fired {
                self.dut.disarm_power_cut().map_err(dut_err)?;
                let why = match &o.cut_power {
                    Some((CutPower::AtLog(re), _)) => {
                        format!("the armed power cut never fired: no line matched /{}/", re.as_str())
                    }
                    _ => "the armed power cut never fired: the update performed fewer flash operations than the cut point"
                        .to_string(),
                };
                return Ok(StepOutcome::Failed(why));
            }
        }
        if let Some(before) = before {
            let after = self.dut.read_flash().map_err(dut_err)?;
            if let Some(at) = before.iter().zip(&after).position(|(a, b)| a != b) {
                return Ok(StepOutcome::Failed(format!(
                    "flash changed: first difference at {at:#x} ({:#04x} -> {:#04x})",
                    before[at], after[at]
                )));
            }
        }
        if let (Some(want), Some(c0)) = (o.erases, counters) {
            let c1 = self.dut.flash_counters().map_err(dut_err)?;
            let erases = c1.erases - c0.erases;
            if erases != want {
                return Ok(StepOutcome::Failed(format!(
                    "expected {want} sector erase(s), the device performed {erases}"
                )));
            }
        }
        let mut unchecked = Vec::new();
        if uncounted {
            unchecked.push(format!(
                "the erase count was not checked: the {} backend does not count flash operations",
                self.dut.backend()
            ));
        }
        if unread {
            unchecked.push(format!(
                "`flash: unchanged` was not checked: reading the flash on the {} backend resets the chip, which would change what the next steps see",
                self.dut.backend()
            ));
        }
        if !unchecked.is_empty() {
            return Ok(StepOutcome::Skipped(format!(
                "{} (the rest of the step passed)",
                unchecked.join("; ")
            )));
        }
        Ok(StepOutcome::Passed)
    }
}

/// A scenario's `cut_power` as the Dut arms it.
fn power_cut((at, torn_seed): &(CutPower, Option<u64>)) -> PowerCut {
    match at {
        CutPower::AfterBytes(count) => PowerCut::AfterBytes { count: *count, torn_seed: *torn_seed },
        CutPower::AfterOps(count) => PowerCut::AfterOps { count: *count, torn_seed: *torn_seed },
        CutPower::AtLog(re) => PowerCut::AtLog(re.clone()),
    }
}

/// A sweep's outcome classes (and its cuts, when it kept them) for the reports.
fn sweep_result(name: &str, report: &ota_emu::sweep::SweepReport) -> crate::report::SweepResult {
    use crate::report::{CutCell, SweepClass};
    use ota_emu::sweep::Booted2;
    let mut classes: Vec<SweepClass> = report
        .outcomes
        .iter()
        .map(|((phase, booted), n)| SweepClass {
            phase: phase.name(),
            outcome: if *booted == Booted2::Old { "booted old" } else { "booted new" },
            cuts: *n,
        })
        .collect();
    let mut failed: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for f in &report.failures {
        *failed.entry(f.phase.name()).or_default() += 1;
    }
    classes.extend(failed.into_iter().map(|(phase, cuts)| SweepClass { phase, outcome: "failed", cuts }));
    let cells = report
        .matrix
        .iter()
        .map(|r| CutCell {
            cut: r.cut,
            torn: r.torn,
            phase: r.phase.name(),
            outcome: match r.outcome {
                Ok(Booted2::Old) => 0,
                Ok(Booted2::New) => 1,
                Err(_) => 2,
            },
        })
        .collect();
    crate::report::SweepResult { name: name.to_string(), classes, cells }
}

/// Plays `scenario` on `backend`.
pub fn run(scenario: &Scenario, backend: &dyn Backend, options: &RunOptions) -> ScenarioReport {
    let mut report = play(scenario, backend, options);
    // A skipped scenario ran nothing by design; otherwise what a failure left unplayed is listed.
    if report.skipped.is_none() {
        report.not_run =
            scenario.steps.iter().skip(report.steps.len()).map(|s| (s.line, s.kind.label())).collect();
    }
    report
}

fn play(scenario: &Scenario, backend: &dyn Backend, options: &RunOptions) -> ScenarioReport {
    let started = Instant::now();
    let mut report = ScenarioReport {
        about: scenario.about.clone(),
        name: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        backend: backend.name().into(),
        duration: Duration::ZERO,
        steps: Vec::new(),
        not_run: Vec::new(),
        error: None,
        skipped: None,
        snapshots_after_skip: Vec::new(),
        snapshot_diffs: Vec::new(),
        log_tail: Vec::new(),
        snapshots: Vec::new(),
        notes: Vec::new(),
        flash_maps: Vec::new(),
        sweeps: Vec::new(),
        log: String::new(),
        artifacts: Vec::new(),
    };
    let missing = scenario.steps.iter().find_map(|s| match &s.kind {
        StepKind::Ota(o) => o.update.unavailable_here(),
        _ => None,
    });
    if let Some(why) = missing {
        report.skipped = Some(why);
        report.duration = started.elapsed();
        return report;
    }
    // The services the device connects to exist before it boots, at addresses it is given.
    let (services, device_broker, device_tls) =
        match services::Services::start(scenario, backend.host_address(), &options.broker) {
            Ok(s) => s,
            Err(services::Start::Skip(why)) => {
                report.skipped = Some(why);
                report.duration = started.elapsed();
                return report;
            }
            Err(services::Start::Fail(e)) => {
                report.error = Some(format!("cannot start the scenario's services: {e}"));
                report.duration = started.elapsed();
                return report;
            }
        };
    let device_server = services.server_base().map(str::to_string);
    let context = StartContext { seed: options.seed, device_broker, device_tls, device_server };
    let mut dut = match backend.start(scenario, &context) {
        Ok(d) => d,
        Err(StartError::Skip(why)) => {
            report.skipped = Some(why.to_string());
            report.duration = started.elapsed();
            return report;
        }
        Err(StartError::Fail(e)) => {
            report.error = Some(format!("the {} backend did not start: {e}", backend.name()));
            report.duration = started.elapsed();
            return report;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            report.error = Some(format!("cannot start the async runtime: {e}"));
            return report;
        }
    };
    let mut run = Run {
        dut: dut.as_mut(),
        serial: SerialLog::default(),
        power_losses: Vec::new(),
        reboots: 0,
        sessions_closed: 0,
        rt,
        snapshots: Vec::new(),
        flash_maps: Vec::new(),
        sweeps: Vec::new(),
        scenario,
        options,
        notes: Vec::new(),
        backend,
        skipped_a_step: false,
        snapshots_after_skip: Vec::new(),
        services,
        artifacts: crate::paths::Artifacts::new(options.artifacts.clone(), &scenario.name),
    };
    let mut snapshot_no = 0;
    for step in &scenario.steps {
        let t = Instant::now();
        let outcome = match run.step(&step.kind, &mut snapshot_no) {
            Ok(o) => o,
            Err(e) => StepOutcome::Failed(e),
        };
        let failed = matches!(outcome, StepOutcome::Failed(_));
        // A skipped step that would have changed the device (a power cut, a power switch) leaves
        // it in another state than the stored snapshots; a skipped check (an erase count, a
        // sweep on its own copy of the flash) does not.
        let changes_device = match &step.kind {
            StepKind::Ota(o) => o.cut_power.is_some() || o.update.disturbs_device(),
            StepKind::MqttPublish(p) => p.cut_power.is_some(),
            StepKind::PowerOff => true,
            _ => false,
        };
        run.skipped_a_step |= changes_device && matches!(outcome, StepOutcome::Skipped(_));
        tracing::debug!(scenario = %scenario.name, line = step.line, step = %step.kind.label(), ms = t.elapsed().as_secs_f64() * 1e3, ?outcome);
        report.steps.push(StepReport {
            line: step.line,
            label: step.kind.label(),
            outcome,
            duration: t.elapsed(),
        });
        if failed {
            let _ = run.drain(Duration::from_millis(20));
            report.log_tail = run.serial.tail(60).to_vec();
            break;
        }
    }
    let _ = run.drain(Duration::ZERO);
    report.log = normalise(&run.serial.lines);
    report.snapshots = std::mem::take(&mut run.snapshots);
    report.flash_maps = std::mem::take(&mut run.flash_maps);
    report.sweeps = std::mem::take(&mut run.sweeps);
    report.notes = std::mem::take(&mut run.notes);
    report.artifacts = run.artifacts.take();
    report.snapshots_after_skip = std::mem::take(&mut run.snapshots_after_skip);
    dut.shutdown();
    report.duration = started.elapsed();
    report
}
