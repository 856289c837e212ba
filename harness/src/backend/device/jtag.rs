//! Flashing over the ESP32-C3's USB-JTAG with probe-rs (cargo feature `probe-rs`): the probe
//! picked by the bench's vendor:product id and serial number, the core halted, the merged image
//! written from address 0 by probe-rs's flash algorithm for the chip (sectors whose content
//! already matches skipped, everything written read back and compared). The chip is left halted;
//! the harness starts the app with the bench's reset, as after espflash.

use super::flasher::{BLOCK, WriteReport};
use crate::bench::ProbeSpec;
use indicatif::{ProgressBar, ProgressStyle};
use probe_rs::flashing::{DownloadOptions, FlashProgress, ProgressEvent, ProgressOperation};
use probe_rs::probe::DebugProbeInfo;
use probe_rs::probe::list::Lister;
use probe_rs::{Permissions, Session};
use std::sync::Once;
use std::time::{Duration, Instant};

/// probe-rs's name for the chip.
const TARGET: &str = "esp32c3";

#[derive(Debug, thiserror::Error)]
pub enum JtagError {
    #[error(
        "no debug probe {wanted} (probes seen: {seen}); is the board's USB plugged in, and do probe-rs's udev rules give this user access?"
    )]
    NoProbe { wanted: String, seen: String },
    #[error("{count} debug probes are {wanted}: give the serial number in the bench's `probe` ({seen})")]
    Ambiguous { wanted: String, count: usize, seen: String },
    #[error("opening the probe {probe}: {source}")]
    Open { probe: String, source: probe_rs::probe::DebugProbeError },
    #[error("attaching to the ESP32-C3 through {probe}: {source}")]
    Attach { probe: String, source: Box<probe_rs::Error> },
    #[error("halting the core through {probe}: {source}")]
    Halt { probe: String, source: Box<probe_rs::Error> },
    #[error("the image does not fit the chip's flash map: {0}")]
    Map(probe_rs::flashing::FlashError),
    #[error("writing the flash through {probe}: {source}")]
    Write { probe: String, source: probe_rs::flashing::FlashError },
}

/// A probe as the lister shows it: what picking needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenProbe {
    pub vid: u16,
    pub pid: u16,
    pub serial: Option<String>,
}

impl std::fmt::Display for SeenProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vid, self.pid)?;
        if let Some(s) = &self.serial {
            write!(f, ":{s}")?;
        }
        Ok(())
    }
}

fn wanted(spec: &ProbeSpec) -> String {
    SeenProbe { vid: spec.vid, pid: spec.pid, serial: spec.serial.clone() }.to_string()
}

/// The index of the one probe `spec` names among `seen` (serial numbers compared without case,
/// as USB descriptors and people write MACs differently).
pub fn pick(seen: &[SeenProbe], spec: &ProbeSpec) -> Result<usize, JtagError> {
    let list = || {
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    let matching: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, p)| p.vid == spec.vid && p.pid == spec.pid)
        .filter(|(_, p)| match (&spec.serial, &p.serial) {
            (None, _) => true,
            (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
            (Some(_), None) => false,
        })
        .map(|(i, _)| i)
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(JtagError::NoProbe { wanted: wanted(spec), seen: list() }),
        many => Err(JtagError::Ambiguous { wanted: wanted(spec), count: many.len(), seen: list() }),
    }
}

/// Espressif's chips are a probe-rs plugin since 0.32: registered once per process.
fn register_espressif() {
    static ONCE: Once = Once::new();
    ONCE.call_once(probe_rs_espressif::register_plugin);
}

fn seen(info: &DebugProbeInfo) -> SeenProbe {
    SeenProbe { vid: info.vendor_id, pid: info.product_id, serial: info.serial_number.clone() }
}

/// Opens the probe `spec` names and attaches to the chip, its core halted.
fn attach(spec: &ProbeSpec) -> Result<(Session, String), JtagError> {
    register_espressif();
    let probes = Lister::new().list_all();
    let listed: Vec<SeenProbe> = probes.iter().map(seen).collect();
    let chosen = &probes[pick(&listed, spec)?];
    let name = seen(chosen).to_string();
    let probe = chosen.open().map_err(|source| JtagError::Open { probe: name.clone(), source })?;
    let mut session = probe
        .attach(TARGET, Permissions::default())
        .map_err(|e| JtagError::Attach { probe: name.clone(), source: Box::new(e) })?;
    session
        .core(0)
        .and_then(|mut core| core.reset_and_halt(Duration::from_millis(500)))
        .map_err(|e| JtagError::Halt { probe: name.clone(), source: Box::new(e) })?;
    Ok((session, name))
}

/// Writes `image` from address 0 through the probe; with `skip`, sectors that already hold
/// their bytes are left alone (probe-rs's pre-verify). Everything written is verified.
pub fn write(
    spec: &ProbeSpec,
    image: &[u8],
    skip: bool,
    bar: &ProgressBar,
) -> Result<WriteReport, JtagError> {
    let started = Instant::now();
    let (mut session, name) = attach(spec)?;
    let mut loader = session.target().flash_loader();
    loader.add_data(0, image).map_err(JtagError::Map)?;
    bar.set_length(image.len() as u64);
    bar.set_position(0);
    bar.set_style(
        ProgressStyle::with_template("flashing (probe-rs) {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("static template"),
    );
    let mut programmed: u64 = 0;
    let mut options = DownloadOptions::default();
    options.preverify = skip;
    options.verify = true;
    options.progress = FlashProgress::new(|event| match event {
        ProgressEvent::AddProgressBar { operation: ProgressOperation::Program, total: Some(total) } => {
            bar.set_length(total);
        }
        ProgressEvent::Started(op) => bar.set_message(format!("{op:?}").to_lowercase()),
        ProgressEvent::Progress { operation: ProgressOperation::Program, size, .. } => {
            programmed += size;
            bar.inc(size);
        }
        _ => {}
    });
    let written = loader.commit(&mut session, options);
    written.map_err(|source| JtagError::Write { probe: name, source })?;
    let blocks = image.len().div_ceil(BLOCK);
    let written_blocks = (programmed as usize).div_ceil(BLOCK).min(blocks);
    Ok(WriteReport {
        bytes: image.len(),
        written_blocks,
        skipped_blocks: blocks - written_blocks,
        elapsed: started.elapsed(),
        session: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(vid: u16, pid: u16, serial: Option<&str>) -> SeenProbe {
        SeenProbe { vid, pid, serial: serial.map(str::to_string) }
    }

    #[test]
    fn the_probe_is_picked_by_ids_and_serial_number() {
        let seen = [
            probe(0x303a, 0x1001, Some("C4:0A:24:FE:10:01")),
            probe(0x303a, 0x1001, Some("C4:0A:24:FE:10:02")),
            probe(0x0403, 0x6010, None),
        ];
        let spec =
            |vid, pid, serial: Option<&str>| ProbeSpec { vid, pid, serial: serial.map(str::to_string) };
        assert_eq!(pick(&seen, &spec(0x303a, 0x1001, Some("c4:0a:24:fe:10:02"))).unwrap(), 1);
        assert_eq!(pick(&seen, &spec(0x0403, 0x6010, None)).unwrap(), 2);
        let e = pick(&seen, &spec(0x303a, 0x1001, None)).unwrap_err().to_string();
        assert!(e.starts_with("2 debug probes are 303a:1001: give the serial number"), "{e}");
        let e = pick(&seen, &spec(0x303a, 0x1001, Some("AA"))).unwrap_err().to_string();
        assert!(e.contains("no debug probe 303a:1001:AA (probes seen: 303a:1001:C4:0A:24:FE:10:01,"), "{e}");
        let e = pick(&[], &spec(0x303a, 0x1001, None)).unwrap_err().to_string();
        assert!(e.contains("(probes seen: none)"), "{e}");
    }

    /// The real probe-rs lister on this machine: a board plugged in is flashed elsewhere (the
    /// nightly bench); without one, the error says which probe was wanted and what was seen.
    #[test]
    fn without_the_probe_the_write_says_what_it_looked_for() {
        let spec = ProbeSpec { vid: 0x303a, pid: 0x1001, serial: Some("otahil-no-such-probe".into()) };
        let e = write(&spec, &[0xFF; 4096], true, &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(e, JtagError::NoProbe { .. }), "{e}");
        assert!(e.to_string().contains("no debug probe 303a:1001:otahil-no-such-probe"), "{e}");
    }
}
