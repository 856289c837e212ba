//! The emu backend: one `ota-emu` process per scenario, its flash file in a temp dir, serial and
//! control lines on its stdout, commands on its stdin.

use crate::dut::{Capabilities, Dut, DutError, DutEvent, EndpointError, Endpoints, FlashCounters, PowerCut};
use ota_emu::CONTROL_PREFIX;
use ota_emu::control::{self, Command, Message, Status};
use ota_emu::flash::{CutPoint, Fault};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How to start the emulator: a program and the arguments that come before `run`.
#[derive(Debug, Clone)]
pub struct EmuProgram {
    pub program: PathBuf,
    pub prefix_args: Vec<String>,
}

impl EmuProgram {
    /// `OTAHIL_EMU` if set, else the `ota-emu` next to the running executable, else this
    /// executable's own `emu` subcommand (the `otahil` CLI embeds the emulator).
    pub fn locate() -> Result<Self, DutError> {
        if let Some(p) = std::env::var_os("OTAHIL_EMU") {
            return Ok(EmuProgram { program: p.into(), prefix_args: vec![] });
        }
        let exe = std::env::current_exe()?;
        if let Some(dir) = exe.parent() {
            let sibling = dir.join("ota-emu");
            if sibling.is_file() {
                return Ok(EmuProgram { program: sibling, prefix_args: vec![] });
            }
        }
        if exe.file_stem().is_some_and(|s| s == "otahil") {
            return Ok(EmuProgram { program: exe, prefix_args: vec!["emu".into()] });
        }
        Err(DutError::Start(
            "cannot find the emulator: build it (`cargo build -p ota-emu`) or set OTAHIL_EMU".into(),
        ))
    }
}

/// How the emulated device is set up.
#[derive(Debug, Clone)]
pub struct EmuSetup {
    pub flash_image: Vec<u8>,
    pub password: Option<String>,
    pub protocol: u8,
    pub bootloader_rollback: bool,
    pub erase_upfront: bool,
    pub seed: u64,
    /// ArduinoOTA's built-in password and scheme (for a layout without an nvs partition).
    pub arduino: Option<crate::scenario::ArduinoDevice>,
    /// Run on this flash file instead of a copy of `flash_image` (a bench's board keeps its
    /// flash from one scenario to the next).
    pub flash_file: Option<PathBuf>,
    /// UART0 on a pseudo-terminal (`--uart-pty`): the serial log and, in download boot mode,
    /// the ROM loader.
    pub uart_pty: bool,
}

enum Line {
    Serial(String),
    Control(Result<Message, control::ControlError>),
    Eof,
}

pub struct EmuDut {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Line>,
    endpoints: Endpoints,
    flash_path: PathBuf,
    /// The UART's pseudo-terminal, with `uart_pty`.
    uart: Option<PathBuf>,
    /// Events read while waiting for a command's reply, handed out by `next_event` in order.
    pending: std::collections::VecDeque<DutEvent>,
    _dir: tempfile::TempDir,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl EmuSetup {
    /// The emulated device a scenario describes, its flash provisioned as a factory would
    /// (with `wifi`'s network when given).
    pub fn for_scenario(
        s: &crate::scenario::Scenario,
        context: &super::StartContext,
        wifi: Option<(&str, &str)>,
    ) -> Result<EmuSetup, super::StartError> {
        let d = &s.device;
        // Provisioned settings are how the chip gets them; the emulator's built-in values are
        // only for a layout without an nvs partition.
        let (flash_image, provisioned) = super::device_flash(s, &d.firmware.bytes, wifi, context)?;
        Ok(EmuSetup {
            flash_image,
            password: if provisioned { None } else { d.password.clone() },
            protocol: if provisioned { 2 } else { d.protocol },
            bootloader_rollback: d.bootloader_rollback,
            erase_upfront: d.erase == crate::scenario::EraseSpec::Upfront,
            seed: context.seed.unwrap_or(d.seed),
            arduino: if provisioned { None } else { d.arduino.clone() },
            flash_file: None,
            uart_pty: false,
        })
    }
}

impl EmuDut {
    pub fn start(program: &EmuProgram, setup: &EmuSetup) -> Result<Self, DutError> {
        let dir = tempfile::tempdir()?;
        let flash_path = match &setup.flash_file {
            Some(file) => file.clone(),
            None => {
                let path = dir.path().join("flash.bin");
                std::fs::write(&path, &setup.flash_image)?;
                path
            }
        };
        let mut cmd = std::process::Command::new(&program.program);
        cmd.args(&program.prefix_args)
            .arg("run")
            .arg("--flash")
            .arg(&flash_path)
            .args(["--listen", "127.0.0.1:0", "--start-off", "--protocol"])
            .arg(setup.protocol.to_string())
            .arg("--seed")
            .arg(setup.seed.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(p) = &setup.password {
            cmd.arg("--password").arg(p);
        }
        if setup.bootloader_rollback {
            cmd.arg("--bootloader-rollback");
        }
        if setup.erase_upfront {
            cmd.arg("--erase-upfront");
        }
        if setup.uart_pty {
            cmd.arg("--uart-pty");
        }
        if let Some(a) = &setup.arduino {
            cmd.arg("--arduino-auth").arg(a.auth.name());
            if let Some(p) = &a.password {
                cmd.arg("--arduino-password").arg(p);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| DutError::Start(format!("cannot start {}: {e}", program.program.display())))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let msg = match line.strip_prefix(CONTROL_PREFIX) {
                    Some(c) => Line::Control(control::parse_message(c)),
                    None => Line::Serial(line),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            let _ = tx.send(Line::Eof);
        });
        let mut dut = EmuDut {
            child,
            stdin,
            lines,
            endpoints: Endpoints::default(),
            flash_path,
            uart: None,
            pending: Default::default(),
            _dir: dir,
        };
        let ready =
            dut.wait_control(|m| matches!(m, Message::Ready { .. }), REPLY_TIMEOUT, "the ready line")?;
        if let Message::Ready { ports, uart } = ready {
            dut.endpoints = Endpoints::new(ports);
            dut.uart = uart.map(PathBuf::from);
        }
        if setup.uart_pty && dut.uart.is_none() {
            return Err(DutError::Start("the emulator did not say where its UART is".into()));
        }
        Ok(dut)
    }

    /// The UART's pseudo-terminal, when started with `uart_pty`.
    pub fn uart_path(&self) -> Option<&std::path::Path> {
        self.uart.as_deref()
    }

    /// Download boot mode: the chip restarts into its ROM serial loader on the UART (a pty has
    /// no DTR/RTS to strap it, so the control channel does).
    pub fn download(&mut self) -> Result<(), DutError> {
        self.command(Command::Download).map(drop)
    }

    /// Reads lines until a control line matching `want`; serial lines and events are queued.
    fn wait_control(
        &mut self,
        want: impl Fn(&Message) -> bool,
        timeout: Duration,
        what: &str,
    ) -> Result<Message, DutError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Line::Serial(s)) => self.pending.push_back(DutEvent::Serial(s)),
                Ok(Line::Control(Err(e))) => return Err(DutError::Control(e)),
                Ok(Line::Control(Ok(m))) if want(&m) => return Ok(m),
                Ok(Line::Control(Ok(Message::Err(message)))) => {
                    return Err(DutError::Refused { command: what.into(), message });
                }
                Ok(Line::Control(Ok(m))) => {
                    if let Some(ev) = control_event(&m) {
                        self.pending.push_back(ev);
                    }
                }
                Ok(Line::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(DutError::Exited(status));
                }
                Err(RecvTimeoutError::Timeout) => return Err(DutError::Timeout(timeout, what.into())),
            }
        }
    }

    /// Sends `command` and waits for its reply; the device's status when the reply has one.
    fn command(&mut self, command: Command) -> Result<Option<Status>, DutError> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let verb = command.verb();
        let reply = self.wait_control(
            |m| matches!(m, Message::Ok { verb: v, .. } if *v == verb),
            REPLY_TIMEOUT,
            &command.to_string(),
        )?;
        Ok(match reply {
            Message::Ok { status, .. } => status,
            _ => None,
        })
    }
}

/// What an unprompted control message means to the runner.
fn control_event(m: &Message) -> Option<DutEvent> {
    match m {
        Message::PowerLost { .. } | Message::PowerLostIdle => {
            let text = m.to_string();
            Some(DutEvent::PowerLost(text.trim_start_matches("event power-lost ").to_string()))
        }
        Message::Rebooted(_) => Some(DutEvent::Rebooted),
        Message::SessionClosed { .. } => Some(DutEvent::SessionClosed),
        Message::Ready { .. } | Message::Ok { .. } | Message::Err(_) => None,
    }
}

impl Dut for EmuDut {
    fn backend(&self) -> &'static str {
        ENTRY.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            exact_power_cut: true,
            flash_op_counters: true,
            power_switch: true,
            session_events: true,
            live_flash_read: true,
        }
    }

    fn power_on(&mut self) -> Result<(), DutError> {
        self.command(Command::PowerOn).map(drop)
    }

    fn power_off(&mut self) -> Result<(), DutError> {
        self.command(Command::PowerOff).map(drop)
    }

    fn reset(&mut self) -> Result<(), DutError> {
        self.command(Command::Reset).map(drop)
    }

    fn arm_power_cut(&mut self, cut: PowerCut) -> Result<(), DutError> {
        let fault = match cut {
            PowerCut::AtLog(re) => return self.command(Command::CutAtLog(re.as_str().to_string())).map(drop),
            PowerCut::AfterOps { count, torn_seed } => {
                Fault { at: CutPoint::AfterOps(count), torn: torn_seed }
            }
            PowerCut::AfterBytes { count, torn_seed } => {
                Fault { at: CutPoint::AfterBytes(count), torn: torn_seed }
            }
        };
        self.command(Command::Cut(Some(fault))).map(drop)
    }

    fn disarm_power_cut(&mut self) -> Result<(), DutError> {
        self.command(Command::Cut(None)).map(drop)
    }

    fn endpoints(&self) -> Result<Endpoints, EndpointError> {
        Ok(self.endpoints.clone())
    }

    fn next_event(&mut self, timeout: Duration) -> Result<Option<DutEvent>, DutError> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(Some(e));
        }
        match self.lines.recv_timeout(timeout) {
            Ok(Line::Serial(s)) => Ok(Some(DutEvent::Serial(s))),
            Ok(Line::Control(Ok(m))) => Ok(control_event(&m)),
            Ok(Line::Control(Err(e))) => Err(DutError::Control(e)),
            Ok(Line::Eof) | Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(DutError::Exited(status))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
        }
    }

    fn read_flash(&mut self) -> Result<Vec<u8>, DutError> {
        // The emulator writes through on every operation, and between commands it is idle.
        Ok(std::fs::read(&self.flash_path)?)
    }

    fn flash_counters(&mut self) -> Result<FlashCounters, DutError> {
        let missing = ota_emu::control::ControlError::Missing("the status in the reply to `status`");
        let status = self.command(Command::Status)?.ok_or(DutError::Control(missing))?;
        let c = status.counters;
        Ok(FlashCounters { erases: c.erases, programs: c.programs, bytes_programmed: c.bytes_programmed })
    }

    fn shutdown(&mut self) {
        let _ = writeln!(self.stdin, "{}", Command::Quit);
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EmuDut {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The emulator backend: every scenario, exact power cuts, flash counters.
pub struct EmuBackend {
    pub program: EmuProgram,
}

pub const ENTRY: super::BackendEntry = super::BackendEntry {
    name: "emu",
    about: "the host emulator (ota-emu): no hardware, milliseconds per scenario",
    firmware: super::FirmwareSource::Fixtures,
    // The emulator is built with the harness.
    preflight: || Ok(()),
    make: |_| {
        let program = EmuProgram::locate().map_err(|e| super::BackendError::unusable(ENTRY.name, e))?;
        Ok(Box::new(EmuBackend { program }))
    },
};

impl super::Backend for EmuBackend {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn ota_image(&self, image: &crate::scenario::Image) -> Result<Vec<u8>, super::SkipReason> {
        Ok(image.bytes.clone())
    }

    fn start(
        &self,
        s: &crate::scenario::Scenario,
        context: &super::StartContext,
    ) -> Result<Box<dyn Dut>, super::StartError> {
        let setup = EmuSetup::for_scenario(s, context, None)?;
        Ok(Box::new(EmuDut::start(&self.program, &setup).map_err(super::BackendError::from)?))
    }

    fn snapshots_compare(&self) -> Result<(), super::NotTheFixtures> {
        Ok(())
    }

    fn host_address(&self) -> Result<std::net::IpAddr, super::BackendError> {
        Ok(std::net::Ipv4Addr::LOCALHOST.into())
    }
}
