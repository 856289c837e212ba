//! The `otahil` command line.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use otahil::report::{ScenarioReport, junit, summary};
use otahil::runner;
use otahil::snapshot::{self, Verdict};
use otahil::{fixtures, inspect, scenario};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "otahil", version, about = "OTA hardware-in-the-loop test harness for the ESP32-C3")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// A registered backend's name (`otahil::backend::BACKENDS`).
fn parse_backend(name: &str) -> Result<&'static otahil::backend::BackendEntry, String> {
    otahil::backend::by_name(name)
        .ok_or_else(|| format!("`{name}`: expected one of {}", otahil::backend::names()))
}

/// What `otahil snapshots` does with the pending snapshots.
#[derive(Subcommand)]
enum SnapshotAction {
    /// Show each pending snapshot as a diff against the stored one.
    Review(SnapshotArgs),
    /// The pending snapshots replace the stored ones.
    Accept(SnapshotArgs),
    /// Delete the pending snapshots; the stored ones stay.
    Reject(SnapshotArgs),
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// The scenario directory the snapshots belong to (their directory is found as `run`
    /// finds it).
    #[arg(long, default_value = "scenarios")]
    scenarios: PathBuf,
    /// The snapshot directory, when not the default for `--scenarios`.
    #[arg(long)]
    snapshots: Option<PathBuf>,
    /// Only this scenario's snapshots (its `name`; repeatable).
    #[arg(long)]
    scenario: Vec<String>,
}

#[derive(Subcommand)]
// Parsed once per process: boxing `Run`'s options would only make every use of them noisier.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Play scenarios and check their snapshots.
    Run {
        #[arg(
            long,
            default_value = otahil::backend::BACKENDS[0].name,
            value_parser = parse_backend,
            help = format!("What runs the device: {}", otahil::backend::described())
        )]
        backend: &'static otahil::backend::BackendEntry,
        /// Directory of scenario files.
        #[arg(long, default_value = "scenarios")]
        scenarios: PathBuf,
        /// Run only this scenario (its `name`).
        #[arg(long)]
        scenario: Vec<String>,
        /// Directory of snapshot files (insta format); it must exist. Default: the project's
        /// (harness/tests/snapshots) for the project's scenarios, else `snapshots/` next to
        /// the scenario files (made when the first snapshot is written).
        #[arg(long)]
        snapshots: Option<PathBuf>,
        /// Also write the results as JUnit XML.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Also write one self-contained HTML report (steps, logs, flash maps, sweep pictures).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Sweeps evaluate only this cut point and print its serial log (a failure's reproduction).
        #[arg(long)]
        cut: Option<u64>,
        /// With --cut: the torn variant of that cut.
        #[arg(long, requires = "cut")]
        torn: bool,
        /// Override every scenario's device seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Write every sweep's per-cut matrix (CSV) into this directory.
        #[arg(long)]
        sweep_matrix: Option<PathBuf>,
        /// The firmware builds the qemu backend (and the device backend's board) runs.
        #[arg(long, default_value = "target/firmware")]
        firmware: PathBuf,
        /// The device backend's bench file (fixtures/bench.example.yaml; fixtures/bench.emu.yaml
        /// puts the emulator in the board's place).
        #[arg(long)]
        bench: Option<PathBuf>,
        /// An MQTT 3.1.1 broker for the pull path's scenarios (`mqtt://HOST:PORT`, e.g. a
        /// mosquitto), instead of the one the harness starts for each scenario. Steps that stop
        /// the broker are skipped against it.
        #[arg(long, value_name = "URL", value_parser = parse_mqtt_url, conflicts_with = "mosquitto")]
        mqtt_broker: Option<std::net::SocketAddr>,
        /// A mosquitto program (e.g. /usr/sbin/mosquitto) the harness runs itself for the pull
        /// path's scenarios, one process per scenario on a free port, instead of its own broker;
        /// `broker: go_away` kills it and `come_back` starts it again on the same port.
        #[arg(long, value_name = "PROGRAM")]
        mosquitto: Option<PathBuf>,
        /// Play only shard K of N (`K/N` or `hash:K/N`): the scenarios whose name hashes there,
        /// stable across runs and machines, so a CI matrix spreads them over N runners.
        #[arg(long, value_name = "K/N")]
        partition: Option<otahil::partition::Partition>,
        /// Print the names of the scenarios this run would play, one a line, and play none.
        #[arg(long)]
        list: bool,
    },
    /// Flash one firmware build to a bench's board (blocks that already match are skipped,
    /// the rest verified), start it, and print the board's identity and the figures.
    Flash {
        /// The bench file (fixtures/bench.example.yaml; fixtures/bench.emu.yaml: the emulator).
        #[arg(long)]
        bench: PathBuf,
        /// The fixture or firmware build to flash (v1, v2, v3, selftest-fail, selftest-hang).
        #[arg(long, default_value = "v1")]
        image: String,
        /// The firmware builds a board runs (`cargo xtask firmware --wifi`).
        #[arg(long, default_value = "target/firmware-wifi")]
        firmware: PathBuf,
        /// Write every 64 KiB block, even those whose MD5 already matches.
        #[arg(long)]
        no_skip: bool,
    },
    /// What a backend needs before it runs (for `cargo xtask hil`): the firmware its device
    /// runs (fixtures, qemu, or bench: the bench file says) and whether what it runs is here.
    Backend {
        #[arg(value_parser = parse_backend, help = format!("The backend: {}", otahil::backend::described()))]
        backend: &'static otahil::backend::BackendEntry,
    },
    /// Review, accept or reject the snapshots a run wrote as `NAME.snap.new` (new, or
    /// different from the stored ones); no other tool needed.
    Snapshots {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Check scenario files without running them.
    Check {
        /// A scenario file or a directory of them.
        #[arg(default_value = "scenarios")]
        scenarios: PathBuf,
        /// Also check this bench file (the device backend's board; fixtures/bench.example.yaml).
        #[arg(long)]
        bench: Option<PathBuf>,
    },
    /// Upload an image to a device (an emulator, QEMU's forwarded port, a board) over ESPHome OTA
    /// (TCP) or ArduinoOTA (a UDP invitation; the device connects back to this machine).
    Ota {
        /// The update path: esphome or arduino.
        #[arg(long, default_value = "esphome", value_parser = parse_update_path)]
        protocol: otahil::client::Uploader,
        /// The device's OTA address, e.g. 127.0.0.1:3232 or esp32-bench.local:3232 (ESPHome's TCP
        /// port, or ArduinoOTA's UDP port).
        #[arg(long)]
        addr: String,
        /// The image: a fixture name or a file.
        #[arg(long)]
        image: String,
        /// The device's OTA password (none: the device asks for none).
        #[arg(long)]
        password: Option<String>,
        /// ESPHome: offer MD5 authentication only (an ESPHome 2024.11 client). ArduinoOTA takes
        /// the scheme the device's challenge announces.
        #[arg(long)]
        md5_auth: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print the partition state of a flash dump.
    Inspect {
        /// A dump of the whole flash (`espflash read-flash`, an emulator's flash file).
        flash: PathBuf,
    },
    /// Merge JUnit files otahil wrote (the shards of a `--partition` run) into one.
    JunitMerge {
        /// Where the merged file goes.
        #[arg(long)]
        out: PathBuf,
        /// The shards' JUnit files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write the fixture images to a directory.
    Fixtures {
        /// The directory the images go into.
        #[arg(long, default_value = "fixtures/images")]
        out: PathBuf,
    },
    /// Run the emulator (the same as the `ota-emu` binary; see `otahil emu --help`).
    #[command(disable_help_flag = true)]
    Emu {
        /// The emulator's command and options, as `ota-emu` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", ota_emu::cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The git checkout `dir` is in (`git describe --always --dirty`), if it is in one.
fn checkout_of(dir: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["describe", "--always", "--dirty"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The directory a report goes into exists (the report itself is written after the run).
fn report_dir_exists(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        bail!("{flag} {}: no directory {} to write it in", path.display(), dir.display());
    }
    Ok(())
}

fn load_all(
    dir: &std::path::Path,
    only: &[String],
) -> anyhow::Result<(Vec<scenario::Scenario>, Vec<String>)> {
    let files = otahil::scenario_files(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if dir.exists() => anyhow::anyhow!("{e}"),
        _ => anyhow::anyhow!("cannot read {}: {e}", dir.display()),
    })?;
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match scenario::load(&f) {
            Ok(s) => loaded.push(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let duplicates = otahil::duplicate_names(&loaded);
    loaded.retain(|s| !duplicates.iter().any(|(name, _)| *name == s.name));
    for (name, files) in duplicates {
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        errors.push(format!(
            "{}: name `{name}` is used by {} scenarios ({}): each needs its own, as it names the snapshots",
            shown[1],
            files.len(),
            shown.join(", ")
        ));
    }
    if !only.is_empty() {
        for name in only {
            if !loaded.iter().any(|s| &s.name == name) && errors.is_empty() {
                let names: Vec<&str> = loaded.iter().map(|s| s.name.as_str()).collect();
                bail!("no scenario named `{name}` in {} (there are: {})", dir.display(), names.join(", "));
            }
        }
        loaded.retain(|s| only.contains(&s.name));
        // In the order the command line names them.
        loaded.sort_by_key(|s| only.iter().position(|n| *n == s.name));
    }
    Ok((loaded, errors))
}

fn parse_update_path(s: &str) -> Result<otahil::client::Uploader, String> {
    otahil::client::Uploader::by_name(s).ok_or_else(|| {
        let names: Vec<String> = otahil::client::Uploader::ALL.iter().map(|u| u.to_string()).collect();
        format!("`{s}`: expected one of {}", names.join(", "))
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Emu { args } => {
            let argv = std::iter::once("otahil emu".to_string()).chain(args);
            ota_emu::cli::run_as("otahil emu", argv)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ota { protocol, addr, image, password, md5_auth, timeout } => {
            use std::net::ToSocketAddrs;
            let addr = addr
                .to_socket_addrs()
                .map_err(|e| anyhow::anyhow!("--addr `{addr}`: expected HOST:PORT ({e})"))?
                .next()
                .ok_or_else(|| anyhow::anyhow!("--addr `{addr}`: the name has no address"))?;
            let bytes = match fixtures::find(&image) {
                Some(f) => f.bytes(),
                None => std::fs::read(&image).with_context(|| format!("reading {image}"))?,
            };
            let file_name = std::path::Path::new(&image)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| image.clone());
            let upload = otahil::client::Upload {
                image: &bytes,
                file_name: &file_name,
                password: password.as_deref(),
                offer_sha256: !md5_auth,
                declared_size: None,
                md5: None,
                disconnect_after: None,
                send_delay: None,
                timeout: std::time::Duration::from_secs(timeout),
                seed: 0,
                arduino: Default::default(),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let started = std::time::Instant::now();
            let outcome = rt.block_on(otahil::client::upload(protocol, addr, &upload));
            let secs = started.elapsed().as_secs_f64();
            // Only what reached the device counts: a refused session sent nothing.
            let sent = match &outcome {
                otahil::client::Outcome::Ok { .. } => Some(bytes.len() as u64),
                other => other.sent(),
            };
            match sent {
                Some(n) if n > 0 => {
                    println!("{outcome} ({n} bytes in {secs:.2} s, {:.0} KiB/s)", n as f64 / 1024.0 / secs)
                }
                _ => println!("{outcome} (no image bytes sent, {secs:.2} s)"),
            }
            Ok(if matches!(outcome, otahil::client::Outcome::Ok { .. }) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Inspect { flash } => {
            let dump = std::fs::read(&flash).with_context(|| format!("reading {}", flash.display()))?;
            print!("{}", inspect::partition_state(&dump));
            // A dump the bootloader boots nothing from (no valid table, or no slot that verifies)
            // is a failure for scripts that check it.
            Ok(if inspect::boots_something(&dump) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::JunitMerge { out, files } => {
            let mut texts = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                texts.push((f.display().to_string(), text));
            }
            let merged = otahil::report::merge_junit(&texts)?;
            std::fs::write(&out, merged).with_context(|| format!("writing {}", out.display()))?;
            println!("{} JUnit file(s) merged into {}", files.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fixtures { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for f in fixtures::FIXTURES {
                let path = out.join(format!("{}.bin", f.name));
                let bytes = f.bytes();
                std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                println!("{:<40} {:>8} bytes  {}", path.display(), bytes.len(), f.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Flash { bench, image, firmware, no_skip } => flash(&bench, &image, &firmware, no_skip),
        Cmd::Backend { backend } => {
            println!("backend: {}", backend.name);
            println!("firmware: {}", backend.firmware.word());
            (backend.preflight)()?;
            println!("ready: yes");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Snapshots { action } => snapshots_command(action),
        Cmd::Check { scenarios, bench } => {
            let (loaded, errors) = load_all(&scenarios, &[])?;
            for e in &errors {
                eprintln!("{e}");
            }
            println!("{} scenario(s) ok, {} with errors", loaded.len(), errors.len());
            let bench_ok = match bench.map(|b| otahil::bench::load(&b)) {
                None => true,
                Some(Ok(b)) => {
                    let power = if b.has_power_switch() { "a power switch" } else { "no power switch" };
                    println!(
                        "bench {} ok: port {}, flash {}, reset {}, {power}",
                        b.name, b.port, b.flash, b.reset
                    );
                    // For `cargo xtask hil --backend device`: which builds to make first, once
                    // what runs them is known to be here.
                    if b.port == otahil::bench::PortSpec::Qemu {
                        otahil::qemu::QemuProgram::locate().map_err(|e| {
                            anyhow::anyhow!("bench {}: QEMU stands in for the board: {e}", b.name)
                        })?;
                    }
                    println!("bench firmware: {}", b.firmware());
                    true
                }
                Some(Err(e)) => {
                    eprintln!("{e}");
                    false
                }
            };
            Ok(if errors.is_empty() && bench_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Run {
            backend,
            scenarios,
            scenario,
            snapshots,
            junit: junit_path,
            html,
            cut,
            torn,
            seed,
            sweep_matrix,
            firmware,
            bench,
            mqtt_broker,
            mosquitto,
            partition,
            list,
        } => {
            let options = runner::RunOptions {
                only_cut: cut.map(|c| (c, torn)),
                seed,
                sweep_matrix,
                keep_cuts: html.is_some(),
                broker: match (mqtt_broker, mosquitto) {
                    (Some(addr), _) => runner::BrokerChoice::External(addr),
                    (None, Some(program)) => runner::BrokerChoice::Mosquitto(program),
                    (None, None) => runner::BrokerChoice::Embedded,
                },
                // Screenshots go beside the HTML report that links them.
                artifacts: html.as_deref().map(artifacts_dir),
            };
            let started = otahil::report::utc_text(std::time::SystemTime::now());
            let (mut loaded, errors) = load_all(&scenarios, &scenario)?;
            if !errors.is_empty() {
                for e in &errors {
                    eprintln!("{e}");
                }
                bail!("{} scenario file(s) do not load", errors.len());
            }
            if let Some(p) = partition {
                loaded.retain(|s| p.takes(&s.name));
            }
            if list {
                for s in &loaded {
                    println!("{}", s.name);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let snapshots = snapshot_dir(&scenarios, snapshots)?;
            // Before the run, not after it: a report that cannot be written would cost the run.
            for (flag, path) in [("--junit", &junit_path), ("--html", &html)] {
                if let Some(p) = path {
                    report_dir_exists(flag, p)?;
                }
            }
            let snapshots_existed = snapshots.is_dir();
            if let Some(k) = cut {
                let without: Vec<&str> = loaded
                    .iter()
                    .filter(|s| !s.steps.iter().any(|st| matches!(st.kind, scenario::StepKind::Sweep(_))))
                    .map(|s| s.name.as_str())
                    .collect();
                if !without.is_empty() {
                    bail!(
                        "--cut {k} replays one cut of a sweep, and {} has no sweep step (pick a sweep's scenario with --scenario)",
                        without.join(", ")
                    );
                }
            }
            // Only a backend whose firmware its bench file names has a board to describe.
            if bench.is_some() && !matches!(backend.firmware, otahil::backend::FirmwareSource::Bench) {
                bail!(
                    "--bench describes the device backend's board; the {} backend has none (add --backend device)",
                    backend.name
                );
            }
            let backend_name = backend.name;
            let backend = (backend.make)(&otahil::backend::BackendOptions { firmware, bench })?;
            // Snapshots compare wherever the device runs the fixture images' bytes.
            let compare_snapshots = backend.snapshots_compare();
            let bar = if std::io::stderr().is_terminal() {
                ProgressBar::new(loaded.len() as u64)
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("static template"),
            );
            let mut reports: Vec<ScenarioReport> = Vec::new();
            for s in &loaded {
                bar.set_message(s.name.clone());
                let mut r = runner::run(s, backend.as_ref(), &options);
                // A partial run (one cut, another seed) produces other figures: not compared.
                let partial = options.only_cut.is_some() || options.seed.is_some();
                let mut unchecked: Vec<String> = Vec::new();
                if partial || compare_snapshots.is_err() {
                    unchecked = r.snapshots.iter().map(|(n, _)| n.clone()).collect();
                    r.snapshots.clear();
                } else if !r.snapshots_after_skip.is_empty() {
                    let after = std::mem::take(&mut r.snapshots_after_skip);
                    r.snapshots.retain(|(n, _)| !after.contains(n));
                    unchecked = after;
                }
                check_snapshots(&mut r, &snapshots)?;
                if !unchecked.is_empty() && r.error.is_none() {
                    // Reported as a skipped check, never as a compared one.
                    let why = if partial {
                        "a partial run (--cut or --seed) produces other figures".to_string()
                    } else if let Err(why) = &compare_snapshots {
                        why.to_string()
                    } else {
                        "taken after a step this backend skipped, so the state differs from the stored one"
                            .to_string()
                    };
                    bar.suspend(|| {
                        eprintln!("{}: snapshot(s) {} not compared: {why}", r.name, unchecked.join(", "))
                    });
                    r.steps.push(otahil::report::StepReport {
                        line: 0,
                        label: format!("compare snapshot(s) {}", unchecked.join(", ")),
                        outcome: otahil::report::StepOutcome::Skipped(why),
                        duration: std::time::Duration::ZERO,
                    });
                }
                for n in &r.notes {
                    bar.suspend(|| println!("{}: {n}", r.name));
                }
                if let Some(d) = r.failure_details() {
                    bar.suspend(|| eprintln!("FAIL {}: {d}", r.name));
                }
                for diff in &r.snapshot_diffs {
                    bar.suspend(|| eprintln!("{diff}"));
                }
                reports.push(r);
                bar.inc(1);
            }
            bar.finish_and_clear();
            print!("{}", summary(&reports, otahil::report::colour_wanted(std::io::stdout().is_terminal())));
            if !snapshots_existed && snapshots.is_dir() {
                println!("made {} for the new snapshots", snapshots.display());
            }
            let pending = snapshot::pending(&snapshots, None).unwrap_or_default();
            if !pending.is_empty() {
                let dirs = snapshot_flags(&scenarios, &snapshots);
                println!(
                    "{} snapshot(s) wait for review in {}: otahil snapshots review{dirs}, then accept or reject",
                    pending.len(),
                    snapshots.display()
                );
            }
            let board = backend.board();
            if !board.is_empty() {
                let shown: Vec<String> = board.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("board: {}", shown.join(", "));
            }
            if let Some(p) = &html {
                let info = otahil::report::RunInfo {
                    started,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    commit: checkout_of(&scenarios),
                    backend: backend_name.to_string(),
                    board: board.clone(),
                };
                // The report links its screenshots by paths relative to itself.
                let mut linked = reports.clone();
                let base = p.parent().unwrap_or(std::path::Path::new(""));
                for a in linked.iter_mut().flat_map(|r| r.artifacts.iter_mut()) {
                    if let Ok(rel) = a.path.strip_prefix(base) {
                        a.path = rel.to_path_buf();
                    }
                }
                std::fs::write(p, otahil::html::report(&linked, &info))
                    .with_context(|| format!("writing {}", p.display()))?;
                println!("HTML report: {}", p.display());
            }
            if let Some(p) = junit_path {
                std::fs::write(&p, junit(&reports, &board))
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(if reports.iter().all(|r| r.passed()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// `otahil flash`: the board gets the default layout with `image` in its first app slot, as a
/// scenario's device would, then boots.
fn flash(
    bench: &std::path::Path,
    image: &str,
    firmware: &std::path::Path,
    no_skip: bool,
) -> anyhow::Result<ExitCode> {
    use otahil::backend::Backend;
    let b = otahil::bench::load(bench)?;
    if fixtures::find(image).is_none() {
        bail!(
            "--image {image}: expected one of the firmware builds (v1, v2, v3, selftest-fail, selftest-hang)"
        );
    }
    let mut backend = otahil::backend::device::DeviceBackend::new(b, firmware)?;
    backend.progress = std::io::stderr().is_terminal();
    backend.rewrite_all = no_skip;
    let text =
        format!("name: flash\nabout: otahil flash\ndevice: {{ firmware: {image} }}\nsteps:\n  - boot\n");
    let s = scenario::parse(&text, std::path::Path::new("<otahil flash>"))?;
    let mut dut = match backend.start(&s, &otahil::backend::StartContext::default()) {
        Ok(d) => d,
        Err(why) => bail!("{why}"),
    };
    if let Some(w) = backend.last_write() {
        println!(
            "flashed {} KiB: {} of {} blocks written, {} already matched, in {:.2} s (connect, identify, write, verify: {:.2} s)",
            w.bytes >> 10,
            w.written_blocks,
            w.written_blocks + w.skipped_blocks,
            w.skipped_blocks,
            w.elapsed.as_secs_f64(),
            w.session.as_secs_f64()
        );
    }
    for (k, v) in backend.board() {
        println!("{k}: {v}");
    }
    dut.power_on()?;
    while let Some(e) = dut.next_event(std::time::Duration::from_millis(200))? {
        if let otahil::dut::DutEvent::Serial(line) = e {
            println!("| {line}");
        }
    }
    dut.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Turns snapshot mismatches into a failure of the scenario (its steps have passed). A
/// scenario that failed already is not compared and leaves no `.snap.new`: its snapshots show
/// the failure, not a behaviour to accept.
fn check_snapshots(r: &mut ScenarioReport, dir: &std::path::Path) -> anyhow::Result<()> {
    if r.failure().is_some() {
        return Ok(());
    }
    let mut problems = Vec::new();
    for (name, content) in &r.snapshots {
        match snapshot::check(dir, name, content).with_context(|| format!("snapshot {name}"))? {
            Verdict::Matches => {}
            Verdict::New(p) => problems.push(format!("new snapshot {name}: review {}", p.display())),
            Verdict::Differs { new, line, expected, actual, diff } => {
                problems.push(format!(
                    "snapshot {name} differs at line {line}: expected `{expected}`, got `{actual}` (review {})",
                    new.display()
                ));
                r.snapshot_diffs.push(format!("snapshot {name}:\n{diff}"));
            }
        }
    }
    if !problems.is_empty() {
        r.error = Some(problems.join("; "));
    }
    Ok(())
}

/// Where a run's snapshots are: `given` (which must exist), else the project's for the
/// project's scenarios, else `snapshots/` next to the scenario files.
fn snapshot_dir(scenarios: &std::path::Path, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        if !dir.is_dir() {
            bail!(
                "--snapshots {}: no such directory (make it first; a typo would call every snapshot new)",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let scenarios_dir = if scenarios.is_file() { scenarios.parent().unwrap_or(scenarios) } else { scenarios };
    let project = PathBuf::from(PROJECT_SNAPSHOTS);
    let is_projects = otahil::is_project_scenarios(scenarios_dir) && project.is_dir();
    Ok(if is_projects { project } else { scenarios_dir.join("snapshots") })
}

/// The project's snapshots (insta's test reads the same files).
const PROJECT_SNAPSHOTS: &str = "harness/tests/snapshots";

/// The `--scenarios`/`--snapshots` a command needs to find these directories again.
fn snapshot_flags(scenarios: &std::path::Path, snapshots: &std::path::Path) -> String {
    let mut out = String::new();
    if scenarios != std::path::Path::new("scenarios") {
        out.push_str(&format!(" --scenarios {}", scenarios.display()));
    }
    let default = snapshot_dir(scenarios, None).ok();
    if default.as_deref() != Some(snapshots) {
        out.push_str(&format!(" --snapshots {}", snapshots.display()));
    }
    out
}

/// `otahil snapshots review|accept|reject`.
fn snapshots_command(action: SnapshotAction) -> anyhow::Result<ExitCode> {
    // A reader that goes away (`otahil snapshots review | head`) ends the output quietly, as
    // for any Unix tool, instead of a panic on the next print. Only here: this command runs no
    // child process and opens no socket, whose broken pipes must stay errors.
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition; this command starts no thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let (SnapshotAction::Review(args) | SnapshotAction::Accept(args) | SnapshotAction::Reject(args)) =
        &action;
    let dir = snapshot_dir(&args.scenarios, args.snapshots.clone())?;
    let mut pending = Vec::new();
    if args.scenario.is_empty() {
        pending = snapshot::pending(&dir, None).with_context(|| format!("reading {}", dir.display()))?;
    }
    for name in &args.scenario {
        pending.extend(
            snapshot::pending(&dir, Some(name)).with_context(|| format!("reading {}", dir.display()))?,
        );
    }
    if pending.is_empty() {
        println!("no snapshot waits for review in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    for p in &pending {
        match &action {
            SnapshotAction::Review(_) => {
                let (stored, new) = p.contents();
                match stored {
                    None => {
                        println!("new snapshot {} ({}):", p.name, p.new.display());
                        for line in new.lines() {
                            println!("+{line}");
                        }
                    }
                    Some(stored) => {
                        println!("snapshot {} ({}):", p.name, p.new.display());
                        print!("{}", snapshot::diff(&stored, &new));
                    }
                }
            }
            SnapshotAction::Accept(_) => {
                p.accept().with_context(|| format!("accepting {}", p.new.display()))?;
                println!("accepted {}", p.stored.display());
            }
            SnapshotAction::Reject(_) => {
                p.reject().with_context(|| format!("rejecting {}", p.new.display()))?;
                println!("rejected {}", p.new.display());
            }
        }
    }
    if let SnapshotAction::Review(args) = &action {
        let flags = snapshot_flags(&args.scenarios, &dir);
        println!("{} snapshot(s): otahil snapshots accept{flags} (or reject)", pending.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `mqtt://HOST:PORT`, `mqtt://HOST` (port 1883) or `HOST:PORT`; the host resolved now.
fn parse_mqtt_url(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let rest = text.strip_prefix("mqtt://").unwrap_or(text);
    if rest.contains("://") {
        return Err(format!("`{text}`: expected mqtt://HOST:PORT (TLS brokers are not supported yet)"));
    }
    let rest = rest.trim_end_matches('/');
    let with_port =
        if rest.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !rest.ends_with(']') {
            rest.to_string()
        } else {
            format!("{rest}:{}", ota_core::proto::mqtt::DEFAULT_PORT)
        };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("`{text}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}`: the host has no address"))
}

/// Where a run's screenshots go: `<report>-artifacts/` beside the HTML report.
fn artifacts_dir(html: &std::path::Path) -> PathBuf {
    let stem = html.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "report".into());
    html.with_file_name(format!("{stem}-artifacts"))
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Issue #22: every option and argument of every command says what it is in `--help`,
    /// and the backend option lists every registered backend.
    #[test]
    fn every_option_has_help_and_backends_are_listed() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "otahil", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:?}");
        let mut run = cmd.find_subcommand("run").unwrap().clone();
        let help = run.render_help().to_string();
        for b in otahil::backend::BACKENDS {
            assert!(help.contains(&format!("{} ({})", b.name, b.about)), "{help}");
        }
    }
}
