//! `cargo xtask …`: the project's tasks, as cargo commands so they need nothing but cargo.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod module_cycles;

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
// Parsed once per process: boxing `Hil`'s options would only make every use of them noisier.
#[allow(clippy::large_enum_variant)]
enum Task {
    /// Build what the backend needs and play the scenarios (emulator by default).
    Hil {
        /// What runs the device: emu (the host emulator), qemu (the chip firmware on
        /// Espressif's QEMU) or device (a board on a bench, with --bench FILE); `otahil run
        /// --help` describes each.
        #[arg(long, default_value = "emu")]
        backend: String,
        #[command(flatten)]
        args: HilArgs,
    },
    /// Flash one firmware build to a bench's board (skipping blocks that match, verified),
    /// start it and print the board's identity.
    Flash {
        /// The bench file of the board (fixtures/bench.example.yaml documents one).
        #[arg(long)]
        bench: PathBuf,
        /// The build to flash (v1, v2, v3, selftest-fail, selftest-hang).
        #[arg(long, default_value = "v1")]
        image: String,
        /// Build otahil with probe-rs (a bench file with `flash: probe-rs`).
        #[arg(long)]
        probe_rs: bool,
    },
    /// Write the fixture images to fixtures/images/ (deterministic).
    Fixtures,
    /// Build the ESP32-C3 firmware variants (v1, v2, v3, selftest-fail, selftest-hang) into
    /// target/firmware/: ELF, app image and merged 4 MiB flash image, each checked with ota-core.
    /// A default build (no OTAHIL_FW_* variables) must reproduce fixtures/firmware/ byte for byte.
    Firmware {
        /// Replace fixtures/firmware/ with this build (then review the snapshot changes).
        #[arg(long)]
        update_fixtures: bool,
        /// Build the same variants for boards instead: OTA over Wi-Fi (`--features wifi`), into
        /// target/firmware-wifi/. Every image a board is updated with must be such a build, or it
        /// comes up without a network. Not compared with the fixtures.
        #[arg(long, conflicts_with = "update_fixtures")]
        wifi: bool,
    },
    /// What CI runs: fmt check, clippy -D warnings, the tests, the no_std build of the core,
    /// and `hil` on the emulator.
    Ci,
    /// Fuzz the ESPHome server, the flash-format parsers and the scenario loader with libFuzzer
    /// (needs `cargo install cargo-fuzz`). The time is split between the targets.
    Fuzz {
        /// The whole run's time, shared between the targets.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (arduino_server, esphome_server, flash_formats, homie, http_pull, mqtt_client, mqtt_pull, rom_loader, scenario_loader, tls_link).
        #[arg(long)]
        target: Option<String>,
        /// libFuzzer's seed (0: libFuzzer picks one and prints it).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop each target after this many executions (0: only the time bounds it). With a fixed
        /// seed this makes a run reproducible on any machine fast enough to finish it in time.
        #[arg(long, default_value_t = 0)]
        runs: u64,
    },
    /// Import cycles between the modules of ota-core and the harness (none allowed; `cargo
    /// test -p xtask` runs the same check).
    Cycles,
    /// Time the emulator suite: builds once, then plays every scenario N times and prints figures
    /// (the suite, the sweeps' rates, espflash through the emulator's ROM loader, one ESPHome
    /// and one ArduinoOTA upload of v2, an idle device's CPU).
    Bench {
        /// How many times the whole suite is played (its min, median and max are printed).
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    without_run_env(&mut c);
    c
}

/// Removes what `cargo run` set for xtask itself from a command's environment. A build script
/// that watches one of them (ring's watches `CARGO_MANIFEST_DIR`) would otherwise see it change
/// between `cargo xtask …` and a plain `cargo test`, and every crate above it (rustls, ota-core,
/// the harness) would be rebuilt each time one follows the other: 85 s of CI's main job.
fn without_run_env(c: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            c.env_remove(name);
        }
    }
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let shown = shown(&cmd);
    eprintln!("xtask: {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// A command as a shell would run it: its directory, the variables it sets, the program and
/// its arguments (the variables it removes are left out: they only keep builds alike).
fn shown(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("cd {dir:?} &&"));
    }
    for (name, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={value:?}", name.to_string_lossy()));
        }
    }
    parts.push(format!("{:?}", cmd.get_program()));
    parts.extend(cmd.get_args().map(|a| format!("{a:?}")));
    parts.join(" ")
}

/// Which build of the harness and the emulator a task runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// The tests' build (`cargo test`'s dev profile, whose dependencies, ota-core and emulator
    /// are optimised: see Cargo.toml): scenarios play at nearly release speed and CI compiles
    /// the harness once for the tests and the hil runs.
    Tests,
    /// Release, for the figures of `cargo xtask bench`.
    Release,
}

/// Builds the harness and the emulator the scenarios run on.
fn build_emu() -> anyhow::Result<PathBuf> {
    build_harness(&[], Build::Tests)
}

/// otahil and ota-emu, otahil with these of its cargo features (`probe-rs`, `browser`).
fn build_harness(features: &[&str], build: Build) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    match build {
        // Exactly the README's test command's build (`--no-run`): its dev-dependencies turn on
        // features in shared crates (rstest's and insta's syn), so any other selection resolves
        // them otherwise and rebuilds every proc macro and what uses it (66 s of CI's main job
        // with `cargo build --workspace`). The binaries the tests run are the ones hil runs.
        Build::Tests => c.args(["test", "--workspace", "--no-run"]),
        Build::Release => c.args(["build", "--release", "-p", "otahil", "-p", "ota-emu"]),
    };
    if !features.is_empty() {
        let named: Vec<String> = features.iter().map(|f| format!("otahil/{f}")).collect();
        c.args(["--features", &named.join(",")]);
    }
    run(c)?;
    Ok(root().join(match build {
        Build::Tests => "target/debug",
        Build::Release => "target/release",
    }))
}

/// `cargo xtask hil`'s options, passed on to `otahil run`.
#[derive(Args, Default)]
struct HilArgs {
    /// A directory of scenario files of your own (default: the project's `scenarios/`).
    #[arg(long = "scenarios", value_name = "DIR")]
    scenario_dir: Option<PathBuf>,
    /// Their snapshots' directory, which must exist (default: `snapshots/` next to your
    /// scenarios, made when the first one is written; the project's for the project's).
    #[arg(long = "snapshots", value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Play only this scenario (repeatable).
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Write JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write the self-contained HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Sweeps evaluate only this cut (reproduces a sweep failure, printing its log).
    #[arg(long)]
    cut: Option<u64>,
    /// With --cut: its torn variant.
    #[arg(long)]
    torn: bool,
    /// Override the scenarios' device seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The device backend's bench file (fixtures/bench.emu.yaml: the emulator in the
    /// board's place; fixtures/bench.example.yaml documents a lab bench).
    #[arg(long)]
    bench: Option<PathBuf>,
    /// Build otahil with probe-rs, for a bench file with `flash: probe-rs` (needs
    /// `libudev-dev` and `pkg-config` for hidapi's build).
    #[arg(long)]
    probe_rs: bool,
    /// Build otahil with browser steps (`browser: true`: a headless Chromium at the device's
    /// pages; about 3 more minutes of build). Without it those scenarios skip, saying so.
    #[arg(long)]
    browser: bool,
    /// An MQTT broker for the pull path's scenarios (`mqtt://HOST:PORT`) instead of the
    /// harness's own.
    #[arg(long, value_name = "URL")]
    mqtt_broker: Option<String>,
    /// A mosquitto program the harness runs itself, one per scenario (it can stop and
    /// restart it, so the scenarios with `broker:` steps play too).
    #[arg(long, value_name = "PROGRAM")]
    mosquitto: Option<PathBuf>,
    /// Play only shard K of N (`K/N`, as nextest's `--partition hash:K/N`): a CI matrix runs one
    /// shard per runner, and the shards together play every scenario once.
    #[arg(long, value_name = "K/N")]
    partition: Option<String>,
    /// Print the names of the scenarios the run would play (after --scenario and --partition),
    /// one a line, and play none.
    #[arg(long)]
    list: bool,
}

/// The firmware directory a bench's board runs (after building it), from `otahil check`.
fn bench_firmware(bin: &Path, bench: &Path) -> anyhow::Result<Option<PathBuf>> {
    let out = Command::new(bin.join("otahil"))
        .current_dir(root())
        .arg("check")
        .arg("--bench")
        .arg(bench)
        .output()
        .context("running otahil check")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    match text.lines().find_map(|l| l.strip_prefix("bench firmware: ")) {
        Some("fixtures") => Ok(None),
        Some("wifi") => {
            build_firmware(FirmwareLink::Wifi)?;
            Ok(Some(root().join("target/firmware-wifi")))
        }
        Some("qemu") => {
            build_firmware(FirmwareLink::QemuEthernet)?;
            Ok(Some(root().join("target/firmware")))
        }
        other => bail!("otahil check did not say which firmware the bench runs ({other:?})"),
    }
}

fn hil(backend: &str, args: &HilArgs) -> anyhow::Result<()> {
    let features: Vec<&str> = [("probe-rs", args.probe_rs), ("browser", args.browser)]
        .iter()
        .filter(|f| f.1)
        .map(|f| f.0)
        .collect();
    let bin = build_harness(&features, Build::Tests)?;
    // A listing needs no firmware and no backend: only the scenarios and the shard.
    if args.list {
        let mut c = Command::new(bin.join("otahil"));
        c.current_dir(root()).args(["run", "--list"]);
        scenario_args(&mut c, args)?;
        return run(c);
    }
    // The harness's registry says what the backend runs, and whether it can run here, before
    // anything is built for it (five firmware builds for nothing is a poor way to learn that
    // QEMU is not there).
    let firmware = backend_firmware(&bin, backend)?;
    match firmware.as_str() {
        "fixtures" => {}
        "qemu" => build_firmware(FirmwareLink::QemuEthernet)?,
        "bench" if args.bench.is_none() => bail!(
            "the {backend} backend needs --bench FILE (fixtures/bench.emu.yaml puts the emulator in the board's place)"
        ),
        "bench" => {}
        other => bail!("otahil says the {backend} backend runs firmware `{other}`, which xtask cannot build"),
    }
    let mut c = Command::new(bin.join("otahil"));
    c.current_dir(root()).args(["run", "--backend", backend]);
    if let Some(b) = &args.bench {
        c.arg("--bench").arg(b);
        if let Some(dir) = bench_firmware(&bin, b)? {
            c.arg("--firmware").arg(dir);
        }
    }
    scenario_args(&mut c, args)?;
    let here = std::env::current_dir().context("the current directory")?;
    if let Some(m) = &args.mqtt_broker {
        c.args(["--mqtt-broker", m]);
    }
    if let Some(m) = &args.mosquitto {
        c.arg("--mosquitto").arg(m);
    }
    if let Some(h) = &args.html {
        c.arg("--html").arg(here.join(h));
    }
    if let Some(j) = &args.junit {
        c.arg("--junit").arg(here.join(j));
    }
    if let Some(k) = args.cut {
        c.args(["--cut", &k.to_string()]);
    }
    if args.torn {
        c.arg("--torn");
    }
    if let Some(s) = args.seed {
        c.args(["--seed", &s.to_string()]);
    }
    c.env("OTAHIL_EMU", bin.join("ota-emu"));
    run(c)
}

/// Which scenarios a hil run plays: the directories (otahil runs in the project's root; the
/// user's directories are where the user is), the names, the shard.
fn scenario_args(c: &mut Command, args: &HilArgs) -> anyhow::Result<()> {
    let here = std::env::current_dir().context("the current directory")?;
    if let Some(d) = &args.scenario_dir {
        c.arg("--scenarios").arg(here.join(d));
    }
    if let Some(d) = &args.snapshot_dir {
        c.arg("--snapshots").arg(here.join(d));
    }
    for s in &args.scenarios {
        c.args(["--scenario", s]);
    }
    if let Some(p) = &args.partition {
        c.args(["--partition", p]);
    }
    Ok(())
}

/// `otahil backend NAME`: the firmware the backend runs (`fixtures`, `qemu` or `bench`), or
/// otahil's reason it cannot run here (an unknown name, a missing program).
fn backend_firmware(bin: &Path, backend: &str) -> anyhow::Result<String> {
    let out = Command::new(bin.join("otahil"))
        .args(["backend", backend])
        .env("OTAHIL_EMU", bin.join("ota-emu"))
        .output()
        .context("running otahil backend")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.trim();
        bail!("{}", why.strip_prefix("error: ").unwrap_or(why));
    }
    match text.lines().find_map(|l| l.strip_prefix("firmware: ")) {
        Some(word) => Ok(word.to_string()),
        None => bail!("otahil backend {backend} did not say which firmware it runs:\n{text}"),
    }
}

/// Where the firmware is built from (see `build_firmware`).
const FIRMWARE_BUILD_DIR: &str = "/tmp/otahil-firmware-build";

/// Copies `from` into `to` (files whose bytes differ, and no `target/`), so unchanged files keep
/// their times and cargo rebuilds only what changed.
fn sync_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            sync_tree(&src, &dst)?;
        } else {
            let bytes = std::fs::read(&src)?;
            if std::fs::read(&dst).ok().as_deref() != Some(&bytes[..]) {
                std::fs::write(&dst, &bytes)?;
            }
        }
    }
    Ok(())
}

/// The firmware's build date in its app descriptor (2026-01-01): fixed, so builds reproduce.
const FIRMWARE_EPOCH: u64 = 1_767_225_600;

/// (name, app-descriptor version, cargo feature, declared self-test)
const FIRMWARE_VARIANTS: &[(&str, &str, Option<&str>, &str)] = &[
    ("v1", "1.0.0", None, "pass"),
    ("v2", "2.0.0", None, "pass"),
    ("v3", "3.0.0", None, "pass"),
    ("selftest-fail", "2.0.0-selftest-fail", Some("selftest-fail"), "fail"),
    ("selftest-hang", "2.0.0-selftest-hang", Some("selftest-hang"), "hang"),
];

fn firmware(update_fixtures: bool) -> anyhow::Result<()> {
    build_firmware(FirmwareLink::QemuEthernet)?;
    check_fixtures(update_fixtures)?;
    // The emulator plays OTA with these real images (espflash's bytes, our descriptors).
    let bin = build_emu()?;
    let mut c = Command::new(bin.join("otahil"));
    c.current_dir(root())
        .args(["run", "--scenarios", "firmware/esp32c3/scenarios"])
        .env("OTAHIL_EMU", bin.join("ota-emu"));
    run(c)
}

/// The committed fixture images are the default firmware build: check (or update) them.
fn check_fixtures(update: bool) -> anyhow::Result<()> {
    let configured = ["OTAHIL_FW_PASSWORD", "OTAHIL_FW_OTA_PROTOCOL"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "2"));
    if configured {
        println!("firmware: a configured build (OTAHIL_FW_*): not compared with fixtures/firmware/");
        return Ok(());
    }
    let root = root();
    for (name, ..) in FIRMWARE_VARIANTS {
        let built = std::fs::read(root.join(format!("target/firmware/{name}.bin")))?;
        let fixture = root.join(format!("fixtures/firmware/{name}.bin"));
        if update {
            std::fs::write(&fixture, &built)?;
        } else if std::fs::read(&fixture).ok().as_deref() != Some(&built[..]) {
            bail!(
                "fixtures/firmware/{name}.bin differs from this build of the firmware: run `cargo xtask firmware \
                 --update-fixtures`, then review the snapshot changes (`cargo insta review`)"
            );
        }
    }
    println!(
        "firmware: fixtures/firmware/ {}",
        if update { "updated from this build" } else { "is this build, byte for byte" }
    );
    Ok(())
}

/// The network a firmware build serves OTA on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirmwareLink {
    /// The OpenCores MAC of Espressif's QEMU (the default build, the fixtures).
    QemuEthernet,
    /// Wi-Fi on a board (`--features wifi`).
    Wifi,
}

fn build_firmware(link: FirmwareLink) -> anyhow::Result<()> {
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(out) = targets
        && !String::from_utf8_lossy(&out.stdout).contains("riscv32imc-unknown-none-elf")
    {
        bail!("the firmware needs the riscv32imc target: `rustup target add riscv32imc-unknown-none-elf`");
    }
    let root = root();
    // Cargo's crate hashes include the path of path dependencies, and they steer code layout:
    // the firmware is built from a copy of its sources at a fixed place, so every checkout gets
    // the same bytes.
    let fixed = PathBuf::from(FIRMWARE_BUILD_DIR);
    // Two checkouts building at once would overwrite each other's sources there: one at a time,
    // holding the lock until the images are copied out.
    let lock = std::fs::File::create(format!("{FIRMWARE_BUILD_DIR}.lock"))
        .with_context(|| format!("creating {FIRMWARE_BUILD_DIR}.lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("xtask: another firmware build holds {FIRMWARE_BUILD_DIR}.lock; waiting for it");
        lock.lock().context("locking the firmware build directory")?;
    }
    for dir in ["firmware/esp32c3", "firmware/core"] {
        sync_tree(&root.join(dir), &fixed.join(dir))?;
    }
    // ota-core inherits from the workspace root: a root manifest with it as the only member.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let members = manifest.lines().find(|l| l.starts_with("members = ")).context("workspace members")?;
    let manifest = manifest.replace(members, "members = [\"firmware/core\"]");
    if std::fs::read_to_string(fixed.join("Cargo.toml")).ok().as_deref() != Some(&manifest[..]) {
        std::fs::write(fixed.join("Cargo.toml"), &manifest)?;
    }
    let fw = fixed.join("firmware/esp32c3");
    let out_dir = root.join(match link {
        FirmwareLink::QemuEthernet => "target/firmware",
        FirmwareLink::Wifi => "target/firmware-wifi",
    });
    std::fs::create_dir_all(&out_dir)?;
    // Reproducible images, whatever the checkout path or the day: a fixed build date/time in the
    // app descriptor and no machine paths in panic locations.
    let epoch = FIRMWARE_EPOCH.to_string();
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let remap = format!(
        "target.riscv32imc-unknown-none-elf.rustflags=[\"--remap-path-prefix={}=/otahil\", \"--remap-path-prefix={}=/cargo\"]",
        fixed.display(),
        cargo_home.display()
    );
    let mut tool = cargo();
    tool.args(["build", "--release", "--manifest-path"]).arg(root.join("firmware/image-tool/Cargo.toml"));
    run(tool)?;
    let tool = root.join("firmware/image-tool/target/release/otahil-fwimage");
    for (name, version, feature, self_test) in FIRMWARE_VARIANTS {
        let mut c = cargo();
        // OTAHIL_FW_PASSWORD / OTAHIL_FW_OTA_PROTOCOL, if set, pass through to the build.
        c.current_dir(&fw)
            .args(["build", "--release", "--config", &remap])
            .env("OTAHIL_FW_VERSION", version)
            .env("SOURCE_DATE_EPOCH", &epoch);
        let features: Vec<&str> =
            feature.iter().copied().chain((link == FirmwareLink::Wifi).then_some("wifi")).collect();
        if !features.is_empty() {
            c.args(["--features", &features.join(",")]);
        }
        run(c)?;
        let elf = out_dir.join(format!("{name}.elf"));
        std::fs::copy(fw.join("target/riscv32imc-unknown-none-elf/release/otahil-firmware"), &elf)?;
        let mut c = Command::new(&tool);
        c.arg(&elf)
            .arg(root.join("fixtures/partitions/esphome-4mb.csv"))
            .arg(out_dir.join(format!("{name}.bin")))
            .arg(out_dir.join(format!("{name}-flash.bin")))
            .args([version, self_test]);
        run(c)?;
    }
    // What the builds were configured with, for the qemu backend to match against scenarios.
    let manifest = format!(
        "link={}\npassword={}\nprotocol={}\n",
        if link == FirmwareLink::Wifi { "wifi" } else { "qemu-ethernet" },
        std::env::var("OTAHIL_FW_PASSWORD").unwrap_or_default(),
        std::env::var("OTAHIL_FW_OTA_PROTOCOL").unwrap_or_else(|_| "2".into())
    );
    std::fs::write(out_dir.join("build.txt"), manifest)?;
    println!("firmware: {} variants in {}", FIRMWARE_VARIANTS.len(), out_dir.display());
    Ok(())
}

const FUZZ_TARGETS: &[&str] = &[
    "arduino_server",
    "elegant_ota",
    "esphome_server",
    "flash_formats",
    "homie",
    "http_pull",
    "http_server",
    "mqtt_client",
    "mqtt_pull",
    "rom_loader",
    "scenario_loader",
    "tls_link",
    "web_form",
    "ws_ota",
];

fn fuzz(seconds: u64, only: Option<&str>, seed: u64, max_runs: u64) -> anyhow::Result<()> {
    let have = Command::new("cargo").args(["fuzz", "--version"]).output().map(|o| o.status.success());
    if !matches!(have, Ok(true)) {
        bail!(
            "cargo-fuzz is not installed: `cargo install cargo-fuzz` (it runs on stable Rust here: xtask sets RUSTC_BOOTSTRAP=1 for it)"
        );
    }
    let targets: Vec<&str> = match only {
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target `{t}` (have: {})", FUZZ_TARGETS.join(", ")),
        None => FUZZ_TARGETS.to_vec(),
    };
    let per_target = (seconds / targets.len() as u64).max(1);
    let fuzz_dir = root().join("fuzz");
    let mut total = 0u64;
    for t in &targets {
        let work = fuzz_dir.join("corpus-work").join(t);
        std::fs::create_dir_all(&work)?;
        let mut c = Command::new("cargo");
        without_run_env(&mut c);
        // libFuzzer writes new inputs to the first directory: the committed seeds stay as they are.
        c.current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", "-O", t])
            .arg(&work)
            .arg(fuzz_dir.join("corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={per_target}"))
            .arg(format!("-seed={seed}"))
            .arg(format!("-runs={}", if max_runs == 0 { -1 } else { max_runs as i64 }))
            .arg("-print_final_stats=1");
        // A target's dictionary (the tokens its inputs are made of), where it has one.
        let dict = fuzz_dir.join(format!("{t}.dict"));
        if dict.is_file() {
            c.arg(format!("-dict={}", dict.display()));
        }
        eprintln!("xtask: fuzzing {t} for {per_target} s");
        let started = Instant::now();
        let out = c.output().context("running cargo fuzz")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let runs = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        let used_seed =
            stderr.lines().find_map(|l| l.split("Seed: ").nth(1)).unwrap_or("?").trim().to_string();
        if !out.status.success() {
            let tail: Vec<&str> =
                stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            if used_seed == "?" {
                // libFuzzer never started (it prints its seed first): the target did not build.
                bail!("fuzz target {t} did not build or start:\n{}", tail.join("\n"));
            }
            bail!(
                "fuzz target {t} failed (seed {used_seed}); artifacts in fuzz/artifacts/{t}\n{}\n\
                 reproduce: cargo xtask fuzz --target {t} --seed {used_seed}{} --seconds {per_target}",
                tail.join("\n"),
                if max_runs == 0 { String::new() } else { format!(" --runs {max_runs}") }
            );
        }
        let runs = runs.unwrap_or(0);
        total += runs;
        if max_runs > 0 && runs < max_runs {
            // A count-bounded run is the same run everywhere only if the count ends it.
            bail!(
                "fuzz target {t} stopped at its time cap after {runs} of its {max_runs} executions: \
                 the smoke must end by count (give it more --seconds, or make the target faster)"
            );
        }
        // libFuzzer says how long it fuzzed ("Done N runs in S second(s)"); the wall time also
        // counts building the target.
        let fuzzed = stderr
            .lines()
            .find_map(|l| l.split(" runs in ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map_or_else(|| "?".to_string(), str::to_string);
        println!(
            "fuzz {t}: {runs} executions in {fuzzed} s ({:.1} s with the build), no crash (seed {used_seed})",
            started.elapsed().as_secs_f64()
        );
    }
    println!("fuzz: {total} executions in total");
    Ok(())
}

fn main() -> std::process::ExitCode {
    // A user error is its message, never a backtrace, whatever RUST_BACKTRACE says.
    match run_task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Hil { backend, args } => hil(&backend, &args),
        Task::Flash { bench, image, probe_rs } => {
            let bin = build_harness(if probe_rs { &["probe-rs"] } else { &[] }, Build::Tests)?;
            let mut c = Command::new(bin.join("otahil"));
            c.current_dir(root()).arg("flash").arg("--bench").arg(&bench).args(["--image", &image]);
            if let Some(dir) = bench_firmware(&bin, &bench)? {
                c.arg("--firmware").arg(dir);
            }
            c.env("OTAHIL_EMU", bin.join("ota-emu"));
            run(c)
        }
        Task::Firmware { update_fixtures, wifi: false } => firmware(update_fixtures),
        Task::Firmware { wifi: true, .. } => build_firmware(FirmwareLink::Wifi),
        Task::Fixtures => {
            let bin = build_emu()?;
            let mut c = Command::new(bin.join("otahil"));
            c.current_dir(root()).args(["fixtures", "--out", "fixtures/images"]);
            run(c)
        }
        Task::Ci => {
            let mut c = cargo();
            c.args(["fmt", "--all", "--", "--check"]);
            run(c)?;
            let mut c = cargo();
            c.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
            run(c)?;
            let mut c = cargo();
            c.args(["build", "-p", "ota-core", "--target", "riscv32imc-unknown-none-elf"]);
            run(c)?;
            let mut c = cargo();
            c.args(["test", "--workspace"]);
            run(c)?;
            hil("emu", &HilArgs::default())
        }
        Task::Cycles => module_cycles::check(&root()),
        Task::Fuzz { seconds, target, seed, runs } => fuzz(seconds, target.as_deref(), seed, runs),
        Task::Bench { runs } => {
            let bin = build_harness(&[], Build::Release)?;
            let mut times = Vec::new();
            let mut sweeps = Vec::new();
            for i in 0..runs {
                let t = Instant::now();
                let mut c = Command::new(bin.join("otahil"));
                c.current_dir(root()).args(["run"]).env("OTAHIL_EMU", bin.join("ota-emu"));
                let out = c.output().context("running otahil")?;
                if !out.status.success() {
                    bail!("run {i} failed:\n{}", String::from_utf8_lossy(&out.stdout));
                }
                times.push(t.elapsed().as_secs_f64());
                let stdout = String::from_utf8_lossy(&out.stdout);
                sweeps.extend(stdout.lines().filter(|l| l.contains("cuts/s")).map(str::to_string));
                if i == 0 {
                    print!("{}", String::from_utf8_lossy(&out.stdout));
                }
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            println!(
                "bench: whole emu suite, {runs} runs (process start to exit): min {:.3} s, median {median:.3} s, max {:.3} s",
                times[0],
                times[times.len() - 1]
            );
            for s in sweeps {
                println!("bench: {s}");
            }
            // The bench path: a whole 4 MiB merged image (no block skipped) written and verified
            // through the emulator's ROM loader on a pty, with the stub (compressed) and without.
            let no_stub =
                std::env::temp_dir().join(format!("otahil-bench-no-stub-{}.yaml", std::process::id()));
            let text = std::fs::read_to_string(root().join("fixtures/bench.emu.yaml"))?;
            std::fs::write(&no_stub, text.replace("flash: espflash\n", "flash: espflash-no-stub\n"))?;
            for (what, file) in [
                ("stub, compressed", root().join("fixtures/bench.emu.yaml")),
                ("ROM, no stub", no_stub.clone()),
            ] {
                let mut c = Command::new(bin.join("otahil"));
                c.current_dir(root()).arg("flash").arg("--bench").arg(&file).arg("--no-skip");
                c.env("OTAHIL_EMU", bin.join("ota-emu"));
                let out = c.output().context("running otahil flash")?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                match stdout.lines().next() {
                    Some(line) if out.status.success() => {
                        println!("bench: espflash to the emulator's pty ({what}): {line}")
                    }
                    _ => bail!(
                        "otahil flash ({what}) failed:\n{stdout}{}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                }
            }
            let _ = std::fs::remove_file(&no_stub);
            // One ESPHome and one ArduinoOTA upload of v2 against the emulator, and the CPU an
            // idle emulated device uses.
            let mut c = cargo();
            c.args(["build", "--release", "-p", "otahil", "--example", "upload_times"]);
            run(c)?;
            let out = Command::new(root().join("target/release/examples/upload_times"))
                .current_dir(root())
                .arg(runs.max(3).to_string())
                .env("OTAHIL_EMU", bin.join("ota-emu"))
                .output()
                .context("running the upload_times example")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!("upload_times failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
            }
            for line in stdout.lines() {
                println!("bench: {line}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Issue #22: `cargo xtask --help` names itself as it is run, and every option of every
    /// task says what it is.
    #[test]
    fn help_says_cargo_xtask_and_every_option_has_help() {
        let mut cmd = Cli::command();
        cmd.clone().debug_assert();
        assert!(cmd.render_usage().to_string().contains("cargo xtask"));
        let mut missing = Vec::new();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{} {id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }
}
