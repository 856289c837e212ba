//! The power-cut sweep: record every flash operation of one update (image write, boot switch,
//! and the new image's first boot), then for every cut point k — power lost after k operations,
//! the next one not done or torn — power on, check that a valid image boots (the old or the
//! new, selected by otadata, never by bootloader fallback), and that a retried update succeeds.
//!
//! Nothing is replayed per cut: the flash state after k operations is kept by applying one
//! operation per step, each cut runs on a copy-on-write overlay of it, image verification is
//! remembered per (slot, last operation that touched the slot), and the retry's outcome per
//! (booted slot, otadata bytes) — everything a retry depends on when each sector it writes is
//! erased first. `exact` turns that last shortcut off; the tests check both agree.

use crate::flash::{SplitMix, torn_erase, torn_program};
use crate::nor::{self, NorViolation};
use crate::script::{self, ScriptError};
use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use ota_core::boot::{
    BootIndex, Booted, BootloaderConfig, DirectVerify, PowerOn, SlotVerifier, power_on, verify_slot,
};
use ota_core::image::{ChipInfo, ImageError, ImageInfo};
use ota_core::log::{LogEvent, LogLine, SlotName};
use ota_core::partition::Partition;
use ota_core::proto::UpdatePath;
use ota_core::selftest::SelfTest;
use ota_core::writer::{OtaConfig, read_otadata};
use rayon::prelude::*;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

const SECTOR: usize = 4096;
const MAX_BOOTS: u32 = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// `esp_ota_begin` and the image writes.
    Write,
    /// `esp_ota_end` + `esp_ota_set_boot_partition`.
    Switch,
    /// The reboot into the new image: bootloader and boot guard writes.
    FirstBoot,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Write => "write",
            Phase::Switch => "switch",
            Phase::FirstBoot => "first_boot",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Erase { addr: u32 },
    Program { addr: u32, data: Vec<u8> },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Erase { .. } => "erase",
            Op::Program { .. } => "program",
        }
    }
    pub fn addr(&self) -> u32 {
        match self {
            Op::Erase { addr } | Op::Program { addr, .. } => *addr,
        }
    }
}

/// A flash operation of the swept update that the strict NOR model refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepError(pub NorViolation);
impl NorFlashError for SweepError {
    fn kind(&self) -> NorFlashErrorKind {
        match self.0 {
            NorViolation::OutOfBounds { .. } => NorFlashErrorKind::OutOfBounds,
            NorViolation::NotAligned { .. } => NorFlashErrorKind::NotAligned,
            NorViolation::RaisesBit { .. } => NorFlashErrorKind::Other,
        }
    }
}
impl From<NorViolation> for SweepError {
    fn from(v: NorViolation) -> Self {
        SweepError(v)
    }
}

/// Records the operations of the reference run.
struct Recorder {
    data: Vec<u8>,
    ops: Vec<(Op, Phase)>,
    /// Shared with the update's `on_received`, which moves it to `Switch` mid-update.
    phase: Rc<Cell<Phase>>,
}

impl ErrorType for Recorder {
    type Error = SweepError;
}
impl ReadNorFlash for Recorder {
    const READ_SIZE: usize = nor::READ_SIZE;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SweepError> {
        nor::check_read(offset, bytes.len(), self.data.len())?;
        let o = offset as usize;
        bytes.copy_from_slice(&self.data[o..o + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.data.len()
    }
}
impl NorFlash for Recorder {
    const WRITE_SIZE: usize = nor::WRITE_SIZE;
    const ERASE_SIZE: usize = SECTOR;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), SweepError> {
        nor::check_erase(from, to, self.data.len())?;
        for s in (from..to).step_by(SECTOR) {
            self.data[s as usize..s as usize + SECTOR].fill(0xFF);
            self.ops.push((Op::Erase { addr: s }, self.phase.get()));
        }
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SweepError> {
        nor::check_program(offset, bytes, self.data.len())?;
        let range = offset as usize..offset as usize + bytes.len();
        nor::check_no_raise(&self.data[range.clone()], bytes, offset)?;
        nor::program_bits(&mut self.data[range], bytes);
        self.ops.push((Op::Program { addr: offset, data: bytes.to_vec() }, self.phase.get()));
        Ok(())
    }
}

/// The flash after k operations (`base`, with `last_touch` per sector) plus this cut's own
/// changes, copy-on-write per sector.
struct Overlay<'a> {
    base: &'a [u8],
    last_touch: &'a [u32],
    dirty: HashMap<u32, Box<[u8]>>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a [u8], last_touch: &'a [u32]) -> Self {
        Overlay { base, last_touch, dirty: HashMap::new() }
    }

    fn sector_mut(&mut self, sector: u32) -> &mut [u8] {
        let base = self.base;
        self.dirty.entry(sector).or_insert_with(|| {
            let s = sector as usize * SECTOR;
            base[s..s + SECTOR].to_vec().into_boxed_slice()
        })
    }

    /// What the contents of `p` are, as a number: the last operation that touched it (its
    /// content at step k is a function of that), or `None` if this cut changed it.
    fn identity(&self, p: &Partition) -> Option<u32> {
        let first = p.offset / SECTOR as u32;
        let last = (p.offset + p.size) / SECTOR as u32;
        if self.dirty.keys().any(|s| (first..last).contains(s)) {
            return None;
        }
        self.last_touch[first as usize..last as usize].iter().max().copied()
    }

    /// The `n` bytes at `at`, all in one sector, as they are now.
    fn within_sector(&self, at: usize, n: usize) -> &[u8] {
        let within = at % SECTOR;
        match self.dirty.get(&((at / SECTOR) as u32)) {
            Some(d) => &d[within..within + n],
            None => &self.base[at..at + n],
        }
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let at = offset + done;
            let sector = (at / SECTOR) as u32;
            let within = at % SECTOR;
            let n = (SECTOR - within).min(out.len() - done);
            match self.dirty.get(&sector) {
                Some(d) => out[done..done + n].copy_from_slice(&d[within..within + n]),
                None => out[done..done + n].copy_from_slice(&self.base[at..at + n]),
            }
            done += n;
        }
    }
}

impl ErrorType for Overlay<'_> {
    type Error = SweepError;
}
impl ReadNorFlash for Overlay<'_> {
    const READ_SIZE: usize = nor::READ_SIZE;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SweepError> {
        nor::check_read(offset, bytes.len(), self.base.len())?;
        self.read_at(offset as usize, bytes);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.base.len()
    }
}
impl NorFlash for Overlay<'_> {
    const WRITE_SIZE: usize = nor::WRITE_SIZE;
    const ERASE_SIZE: usize = SECTOR;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), SweepError> {
        nor::check_erase(from, to, self.base.len())?;
        for s in (from..to).step_by(SECTOR) {
            self.sector_mut(s / SECTOR as u32).fill(0xFF);
        }
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SweepError> {
        nor::check_program(offset, bytes, self.base.len())?;
        // Checked whole before anything changes: a refused program leaves the flash as it was.
        let mut done = 0;
        while done < bytes.len() {
            let at = offset as usize + done;
            let within = at % SECTOR;
            let n = (SECTOR - within).min(bytes.len() - done);
            nor::check_no_raise(self.within_sector(at, n), &bytes[done..done + n], at as u32)?;
            done += n;
        }
        let mut done = 0;
        while done < bytes.len() {
            let at = offset as usize + done;
            let within = at % SECTOR;
            let n = (SECTOR - within).min(bytes.len() - done);
            let sector = self.sector_mut((at / SECTOR) as u32);
            nor::program_bits(&mut sector[within..within + n], &bytes[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

/// Remembers verification per (slot offset, slot identity).
#[derive(Default)]
struct Memo {
    verify: HashMap<(u32, u32), Result<ImageInfo, ImageError>>,
    self_test: HashMap<(u32, u32), SelfTest>,
}

impl SlotVerifier<Overlay<'_>> for Memo {
    fn verify(
        &mut self,
        flash: &mut Overlay<'_>,
        p: &Partition,
        chip: ChipInfo,
    ) -> Result<ImageInfo, ImageError> {
        match flash.identity(p) {
            Some(id) => *self.verify.entry((p.offset, id)).or_insert_with(|| verify_slot(flash, p, chip)),
            None => verify_slot(flash, p, chip),
        }
    }
    fn self_test(&mut self, flash: &mut Overlay<'_>, booted: &Booted) -> SelfTest {
        match flash.identity(&booted.partition) {
            Some(id) => *self
                .self_test
                .entry((booted.partition.offset, id))
                .or_insert_with(|| DirectVerify.self_test(flash, booted)),
            None => DirectVerify.self_test(flash, booted),
        }
    }
}

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// The update path whose state machine writes the update.
    pub path: UpdatePath,
    pub image: Vec<u8>,
    pub bootloader: BootloaderConfig,
    pub ota: OtaConfig,
    /// Also tear each interrupted operation (seeded random bits), besides the clean cut.
    pub torn: bool,
    pub seed: u64,
    /// Only this cut point (and this variant: torn or not), with its serial log kept.
    pub only: Option<(u64, bool)>,
    /// Retry for real after every cut instead of once per (booted slot, otadata) class.
    pub exact: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Keep one row per evaluated cut in the report.
    pub matrix: bool,
}

/// One evaluated cut, for the full per-cut matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutRow {
    pub cut: u64,
    pub torn: bool,
    pub phase: Phase,
    pub kind: &'static str,
    pub addr: u32,
    /// Which image booted after the cut (and the retry worked), or the broken invariant.
    pub outcome: Result<Booted2, Violation>,
}

/// An invariant a cut broke: what the sweep promises is a valid image chosen by otadata after
/// every cut, and a retried update that works.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("bricked: the app hangs in {0}")]
    Hangs(SlotName),
    /// The device does not reach the app (how the power-on ended).
    #[error("bricked: {0}")]
    Bricked(String),
    #[error("otadata selects {selected} but it does not verify: {booted} booted only by bootloader fallback")]
    FallbackBoot { selected: SlotName, booted: SlotName },
    #[error("booted {0} holding neither the old nor the new image")]
    UnknownImage(SlotName),
    #[error("no otadata partition")]
    NoOtadata,
    #[error("otadata unreadable: {0}")]
    Otadata(ota_core::flash::FlashError),
    #[error("retried update failed: {0}")]
    RetryFailed(ScriptError),
    #[error("after the retried update {0} runs, not the new image")]
    RetryBootsOther(SlotName),
    #[error("after the retried update: {0}")]
    RetryBricked(String),
}

/// Why a sweep could not run at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SweepSetupError {
    #[error("the device does not run before the sweep: {0}")]
    NotRunning(String),
    #[error("the reference update fails: {0}")]
    ReferenceFails(ScriptError),
    #[error("the reference update does not boot the new image: {0}")]
    NewImageDoesNotBoot(String),
    #[error("cut {cut} is out of range: the update has {ops} operations")]
    CutOutOfRange { cut: u64, ops: usize },
    #[error("cannot start the sweep's threads: {0}")]
    Threads(String),
}

/// A seeded multi-cut run that broke an invariant, with the cut positions to repeat it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiCutFailure {
    pub positions: Vec<u64>,
    pub problem: MultiCutProblem,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultiCutProblem {
    #[error("bricked before the cut at op {at}: {how}")]
    BrickedBefore { at: u64, how: String },
    #[error("booted an image that is neither old nor new")]
    UnknownImage,
    #[error("{0} booted by bootloader fallback")]
    FallbackBoot(SlotName),
    #[error("bricked: {0}")]
    Bricked(String),
}

impl fmt::Display for MultiCutFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cuts {:?}: {}", self.positions, self.problem)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Booted2 {
    Old,
    New,
}

/// One cut that broke an invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutFailure {
    pub cut: u64,
    pub torn: bool,
    pub op: String,
    pub phase: Phase,
    pub problem: Violation,
}

#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Operations of the reference update, per phase and kind.
    pub ops_by_phase: BTreeMap<(Phase, &'static str), u64>,
    pub cut_points: u64,
    /// Cuts evaluated (cut points × variants).
    pub evaluated: u64,
    /// (phase, booted old/new) → count, over the cuts that passed.
    pub outcomes: BTreeMap<(Phase, Booted2), u64>,
    pub retries_ok: u64,
    /// Distinct (booted slot, otadata) classes whose retry was run for real.
    pub retry_classes: u64,
    pub failures: Vec<CutFailure>,
    pub elapsed: Duration,
    /// The serial log of the single cut asked for with `only`.
    pub log: Vec<String>,
    /// Every cut, when asked for (`SweepConfig::matrix`), ordered by cut and variant.
    pub matrix: Vec<CutRow>,
}

impl SweepReport {
    /// A stable text summary for snapshots (no timings).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "reference update: {} flash operations", self.cut_points);
        for ((phase, kind), n) in &self.ops_by_phase {
            let _ = writeln!(out, "  {:<10} {:<7} {n}", phase.name(), kind);
        }
        let _ = writeln!(out, "cuts evaluated: {}", self.evaluated);
        let _ = writeln!(out, "outcomes (phase, booted image after power-on):");
        for ((phase, booted), n) in &self.outcomes {
            let b = match booted {
                Booted2::Old => "old",
                Booted2::New => "new",
            };
            let _ = writeln!(out, "  {:<10} booted {b}: {n}", phase.name());
        }
        let _ = writeln!(out, "retried updates ok: {}", self.retries_ok);
        let _ = writeln!(out, "failures: {}", self.failures.len());
        for f in self.failures.iter().take(20) {
            let _ = writeln!(
                out,
                "  cut {}{} ({} {}): {}",
                f.cut,
                if f.torn { " torn" } else { "" },
                f.phase.name(),
                f.op,
                f.problem
            );
        }
        out
    }

    /// The per-cut matrix as CSV.
    pub fn matrix_csv(&self) -> String {
        let mut out = String::from("cut,torn,phase,kind,addr,outcome\n");
        for r in &self.matrix {
            let _ = writeln!(
                out,
                "{},{},{},{},{:#x},\"{}\"",
                r.cut,
                r.torn,
                r.phase.name(),
                r.kind,
                r.addr,
                match &r.outcome {
                    Ok(Booted2::Old) => "booted old, retry ok".to_string(),
                    Ok(Booted2::New) => "booted new, retry ok".to_string(),
                    Err(v) => v.to_string().replace('"', "'"),
                }
            );
        }
        out
    }

    pub fn rate(&self) -> f64 {
        self.evaluated as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Reference {
    /// The flash when the update starts (after the device booted).
    start: Vec<u8>,
    ops: Vec<(Op, Phase)>,
    old_sha: [u8; 32],
    new_sha: [u8; 32],
}

fn apply(data: &mut [u8], op: &Op) {
    match op {
        Op::Erase { addr } => data[*addr as usize..*addr as usize + SECTOR].fill(0xFF),
        Op::Program { addr, data: bytes } => {
            for (d, b) in data[*addr as usize..].iter_mut().zip(bytes) {
                *d &= *b;
            }
        }
    }
}

fn tear(overlay: &mut Overlay<'_>, op: &Op, seed: u64) {
    match op {
        Op::Erase { addr } => torn_erase(overlay.sector_mut(addr / SECTOR as u32), seed),
        Op::Program { addr, data } => {
            let within = *addr as usize % SECTOR;
            // Programs never cross a page, so never a sector.
            let sector = overlay.sector_mut(addr / SECTOR as u32);
            torn_program(&mut sector[within..within + data.len()], data, seed);
        }
    }
}

fn record(base: &[u8], cfg: &SweepConfig) -> Result<Reference, SweepSetupError> {
    let phase = Rc::new(Cell::new(Phase::Write));
    let mut rec = Recorder { data: base.to_vec(), ops: Vec::new(), phase: phase.clone() };
    let mut quiet = |_: &LogEvent<'_>| {};
    let (table, booted) = match power_on(&mut rec, cfg.bootloader, &mut DirectVerify, &mut quiet, MAX_BOOTS) {
        PowerOn::Running { table, booted } => (table, booted),
        other => return Err(SweepSetupError::NotRunning(format!("{other:?}"))),
    };
    rec.ops.clear();
    let start = rec.data.clone();
    script::upload(cfg.path, &mut rec, &table, &booted.partition, &cfg.image, cfg.ota, &mut || {
        phase.set(Phase::Switch)
    })
    .map_err(SweepSetupError::ReferenceFails)?;
    phase.set(Phase::FirstBoot);
    let new_sha = match power_on(&mut rec, cfg.bootloader, &mut DirectVerify, &mut quiet, MAX_BOOTS) {
        PowerOn::Running { booted: b, .. } if b.index != booted.index => b.image.sha256,
        other => return Err(SweepSetupError::NewImageDoesNotBoot(format!("{other:?}"))),
    };
    Ok(Reference { start, ops: rec.ops, old_sha: booted.image.sha256, new_sha })
}

type RetryKey = (BootIndex, [u8; 32], [u8; 32]);

struct Worker<'a> {
    cfg: &'a SweepConfig,
    reference: &'a Reference,
    memo: Memo,
    retries: HashMap<RetryKey, Result<(), Violation>>,
    report: SweepReport,
}

impl Worker<'_> {
    fn evaluate(&mut self, state: &[u8], last_touch: &[u32], k: usize, torn: bool, keep_log: bool) {
        let (op, phase) = &self.reference.ops[k];
        let mut overlay = Overlay::new(state, last_touch);
        if torn {
            tear(&mut overlay, op, self.cfg.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        let mut lines = Vec::new();
        let result = self.check(&mut overlay, keep_log, &mut lines);
        if keep_log {
            self.report.log = lines;
        }
        self.report.evaluated += 1;
        if self.cfg.matrix {
            self.report.matrix.push(CutRow {
                cut: k as u64,
                torn,
                phase: *phase,
                kind: op.kind(),
                addr: op.addr(),
                outcome: result.clone(),
            });
        }
        match result {
            Ok(booted) => {
                *self.report.outcomes.entry((*phase, booted)).or_default() += 1;
                self.report.retries_ok += 1;
            }
            Err(problem) => self.report.failures.push(CutFailure {
                cut: k as u64,
                torn,
                op: format!("{} at {:#x}", op.kind(), op.addr()),
                phase: *phase,
                problem,
            }),
        }
    }

    fn check(
        &mut self,
        flash: &mut Overlay<'_>,
        keep_log: bool,
        lines: &mut Vec<String>,
    ) -> Result<Booted2, Violation> {
        let mut log = |e: &LogEvent<'_>| {
            if keep_log {
                lines.push(LogLine { ms: 0, event: e }.to_string());
            }
        };
        let bl = self.cfg.bootloader;
        let (table, booted) = match power_on(flash, bl, &mut self.memo, &mut log, MAX_BOOTS) {
            PowerOn::Running { table, booted } => (table, booted),
            PowerOn::Hung { booted, .. } => return Err(Violation::Hangs(SlotName(booted.index))),
            other => return Err(Violation::Bricked(format!("{other:?}"))),
        };
        if booted.selection.index != booted.index {
            return Err(Violation::FallbackBoot {
                selected: SlotName(booted.selection.index),
                booted: SlotName(booted.index),
            });
        }
        let which = if booted.image.sha256 == self.reference.old_sha {
            Booted2::Old
        } else if booted.image.sha256 == self.reference.new_sha {
            Booted2::New
        } else {
            return Err(Violation::UnknownImage(SlotName(booted.index)));
        };
        let od = table.otadata().copied().ok_or(Violation::NoOtadata)?;
        let data = read_otadata(flash, &od).map_err(Violation::Otadata)?;
        let key = (booted.index, data.entries[0].to_bytes(), data.entries[1].to_bytes());
        if !self.cfg.exact
            && let Some(r) = self.retries.get(&key)
        {
            return r.clone().map(|_| which);
        }
        let result = self.retry(flash, &table, &booted, &mut log);
        self.report.retry_classes += 1;
        if !self.cfg.exact {
            self.retries.insert(key, result.clone());
        }
        result.map(|_| which)
    }

    fn retry(
        &mut self,
        flash: &mut Overlay<'_>,
        table: &ota_core::partition::PartitionTable,
        booted: &Booted,
        log: &mut impl FnMut(&LogEvent<'_>),
    ) -> Result<(), Violation> {
        script::upload(
            self.cfg.path,
            flash,
            table,
            &booted.partition,
            &self.cfg.image,
            self.cfg.ota,
            &mut || {},
        )
        .map_err(Violation::RetryFailed)?;
        match power_on(flash, self.cfg.bootloader, &mut self.memo, log, MAX_BOOTS) {
            PowerOn::Running { booted: b, .. } if b.image.sha256 == self.reference.new_sha => Ok(()),
            PowerOn::Running { booted: b, .. } => Err(Violation::RetryBootsOther(SlotName(b.index))),
            other => Err(Violation::RetryBricked(format!("{other:?}"))),
        }
    }
}

/// Sweeps every cut point of an update of `cfg.image` starting from the flash `base`.
pub fn sweep(base: &[u8], cfg: &SweepConfig) -> Result<SweepReport, SweepSetupError> {
    let started = Instant::now();
    let reference = record(base, cfg)?;
    let base = &reference.start[..];
    let n = reference.ops.len();
    let mut ops_by_phase = BTreeMap::new();
    for (op, phase) in &reference.ops {
        *ops_by_phase.entry((*phase, op.kind())).or_default() += 1;
    }
    let threads = if cfg.threads == 0 { rayon::current_num_threads() } else { cfg.threads }.max(1);
    let ranges: Vec<(usize, usize)> = match cfg.only {
        Some((k, _)) if (k as usize) < n => vec![(k as usize, k as usize + 1)],
        Some((k, _)) => return Err(SweepSetupError::CutOutOfRange { cut: k, ops: n }),
        None => {
            let chunk = n.div_ceil(threads).max(1);
            (0..n).step_by(chunk).map(|s| (s, (s + chunk).min(n))).collect()
        }
    };
    let sectors = base.len() / SECTOR;
    let run_range = |(start, end): (usize, usize)| {
        let mut state = base.to_vec();
        let mut last_touch = vec![0u32; sectors];
        let touch = |last_touch: &mut [u32], op: &Op, i: usize| {
            let s = op.addr() as usize / SECTOR;
            last_touch[s] = i as u32 + 1;
        };
        for (i, (op, _)) in reference.ops[..start].iter().enumerate() {
            apply(&mut state, op);
            touch(&mut last_touch, op, i);
        }
        let mut w = Worker {
            cfg,
            reference: &reference,
            memo: Memo::default(),
            retries: HashMap::new(),
            report: SweepReport::default(),
        };
        for k in start..end {
            match cfg.only {
                Some((_, torn)) => w.evaluate(&state, &last_touch, k, torn, true),
                None => {
                    w.evaluate(&state, &last_touch, k, false, false);
                    if cfg.torn {
                        w.evaluate(&state, &last_touch, k, true, false);
                    }
                }
            }
            let op = &reference.ops[k].0;
            apply(&mut state, op);
            touch(&mut last_touch, op, k);
        }
        w.report
    };
    let parts: Vec<SweepReport> = if ranges.len() > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| SweepSetupError::Threads(e.to_string()))?;
        pool.install(|| ranges.par_iter().copied().map(run_range).collect())
    } else {
        ranges.iter().copied().map(run_range).collect()
    };
    let mut report = SweepReport { ops_by_phase, cut_points: n as u64, ..SweepReport::default() };
    for p in parts {
        report.evaluated += p.evaluated;
        report.retries_ok += p.retries_ok;
        report.retry_classes += p.retry_classes;
        for (k, v) in p.outcomes {
            *report.outcomes.entry(k).or_default() += v;
        }
        report.failures.extend(p.failures);
        report.matrix.extend(p.matrix);
        if !p.log.is_empty() {
            report.log = p.log;
        }
    }
    report.failures.sort_by_key(|f| (f.cut, f.torn));
    report.matrix.sort_by_key(|r| (r.cut, r.torn));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A seeded random multi-cut run: up to `max_cuts` power losses at random operations of one
/// update and the reboots after it, then power on and check as the sweep does. Returns the
/// problem, if any, with the cut positions so the run can be repeated.
pub fn random_multi_cut(
    base: &[u8],
    cfg: &SweepConfig,
    max_cuts: u32,
    seed: u64,
) -> Result<Option<MultiCutFailure>, SweepSetupError> {
    let reference = record(base, cfg)?;
    let n = reference.ops.len() as u64;
    let mut rng = SplitMix(seed);
    let cuts = 1 + (rng.next_u64() % max_cuts.max(1) as u64) as usize;
    let mut positions: Vec<u64> = (0..cuts).map(|_| rng.next_u64() % n).collect();
    positions.sort_unstable();
    // Each cut interrupts the update at its position; the device then powers on (its boot
    // writes happen), and the update is started again from the top — until the last cut.
    let mut flash = crate::flash::FileFlash::in_memory(base.to_vec());
    let mut quiet = |_: &LogEvent<'_>| {};
    for &at in &positions {
        let (table, booted) =
            match power_on(&mut flash, cfg.bootloader, &mut DirectVerify, &mut quiet, MAX_BOOTS) {
                PowerOn::Running { table, booted } => (table, booted),
                other => {
                    let problem = MultiCutProblem::BrickedBefore { at, how: format!("{other:?}") };
                    return Ok(Some(MultiCutFailure { positions, problem }));
                }
            };
        flash.arm(crate::flash::Fault {
            at: crate::flash::CutPoint::AfterOps(at),
            torn: cfg.torn.then_some(seed ^ at),
        });
        let _ =
            script::upload(cfg.path, &mut flash, &table, &booted.partition, &cfg.image, cfg.ota, &mut || {});
        let _ = power_on(&mut flash, cfg.bootloader, &mut DirectVerify, &mut quiet, MAX_BOOTS);
        flash.disarm();
        flash.restore_power();
    }
    match power_on(&mut flash, cfg.bootloader, &mut DirectVerify, &mut quiet, MAX_BOOTS) {
        PowerOn::Running { booted, .. } if booted.selection.index == booted.index => {
            let sha = booted.image.sha256;
            if sha == reference.old_sha || sha == reference.new_sha {
                Ok(None)
            } else {
                Ok(Some(MultiCutFailure { positions, problem: MultiCutProblem::UnknownImage }))
            }
        }
        PowerOn::Running { booted, .. } => Ok(Some(MultiCutFailure {
            positions,
            problem: MultiCutProblem::FallbackBoot(SlotName(booted.index)),
        })),
        other => {
            Ok(Some(MultiCutFailure { positions, problem: MultiCutProblem::Bricked(format!("{other:?}")) }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::image_builder::{ImageSpec, build};
    use ota_core::writer::WriterFault;

    fn image(version: &str, payload: u32, seed: u64) -> Vec<u8> {
        let mut spec = ImageSpec::new("otahil-fw", version);
        spec.payload_len = payload;
        spec.seed = seed;
        let mut v = vec![0; spec.image_len()];
        build(&spec, &mut v).unwrap();
        v
    }

    fn base() -> Vec<u8> {
        let csv = "otadata, data, ota, , 0x2000\nphy_init, data, phy, , 0x1000\napp0, app, ota_0, , 0x1C0000\napp1, app, ota_1, , 0x1C0000\n";
        let table = ota_core::partition_csv::parse_csv(csv).unwrap();
        crate::mkflash::merged_image(&table, &image("1.0.0", 30_000, 1), 4 << 20).unwrap()
    }

    fn config(exact: bool) -> SweepConfig {
        SweepConfig {
            path: UpdatePath::Esphome,
            image: image("2.0.0", 20_000, 2),
            bootloader: BootloaderConfig::ESPFLASH_4MB,
            ota: OtaConfig::default(),
            torn: true,
            seed: 7,
            only: None,
            exact,
            threads: 2,
            matrix: true,
        }
    }

    #[test]
    fn every_cut_boots_old_or_new_and_retries() {
        let r = sweep(&base(), &config(false)).unwrap();
        assert!(r.failures.is_empty(), "{}", r.summary());
        assert_eq!(r.evaluated, 2 * r.cut_points);
        assert_eq!(r.retries_ok, r.evaluated);
        assert_eq!(r.matrix.len() as u64, r.evaluated);
        assert!(r.matrix_csv().lines().nth(1).unwrap().starts_with("0,false,write,"));
        let phase = |p, b| r.outcomes.get(&(p, b)).copied().unwrap_or(0);
        assert!(phase(Phase::Write, Booted2::Old) > 0);
        assert_eq!(phase(Phase::Write, Booted2::New), 0, "nothing boots the new image before the switch");
        assert!(phase(Phase::FirstBoot, Booted2::New) > 0);
        // Switch (2) + first boot guard (4) operations are part of the sweep.
        assert_eq!(r.ops_by_phase.get(&(Phase::Switch, "erase")), Some(&1));
        assert_eq!(r.ops_by_phase.get(&(Phase::FirstBoot, "program")), Some(&2));
    }

    #[test]
    fn remembered_retries_agree_with_exact_retries() {
        let fast = sweep(&base(), &config(false)).unwrap();
        let exact = sweep(&base(), &config(true)).unwrap();
        assert_eq!(fast.outcomes, exact.outcomes);
        assert_eq!(fast.failures, exact.failures);
        assert_eq!(exact.retry_classes, exact.evaluated);
        assert!(fast.retry_classes < exact.retry_classes / 10, "{} classes", fast.retry_classes);
    }

    #[test]
    fn a_writer_that_switches_first_is_caught() {
        let mut cfg = config(false);
        cfg.ota.fault = WriterFault::SwitchBeforeWrite;
        let r = sweep(&base(), &cfg).unwrap();
        assert!(!r.failures.is_empty());
        let f = &r.failures[0];
        assert_eq!(f.phase, Phase::Write);
        assert!(matches!(f.problem, Violation::FallbackBoot { .. }), "{}", f.problem);
        // The single cut reproduces, with its log.
        cfg.only = Some((f.cut, f.torn));
        let one = sweep(&base(), &cfg).unwrap();
        assert_eq!(one.failures, vec![f.clone()]);
        assert!(one.log.iter().any(|l| l.contains("is not bootable")), "{:?}", one.log);
    }

    #[test]
    fn random_multi_cuts_never_brick() {
        let cfg = config(false);
        for seed in 0..20 {
            assert_eq!(random_multi_cut(&base(), &cfg, 4, seed).unwrap(), None, "seed {seed}");
        }
    }
}
