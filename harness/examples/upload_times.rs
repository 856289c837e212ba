//! Figures for `cargo xtask bench`: how long one ESPHome and one ArduinoOTA upload of v2 take
//! against the emulator (the client's first byte to the device's answer), and how much CPU an
//! emulated device burns while it has nothing to do. Needs `OTAHIL_EMU` (or a release build of
//! ota-emu where the harness looks for it).
//!
//! `cargo run --release -p otahil --example upload_times [RUNS]`

use otahil::backend::{Backend, StartContext};
use otahil::client::{self, ArduinoFaults, Outcome, Upload, Uploader};
use otahil::dut::{Dut, DutEvent};
use otahil::emu::{EmuBackend, EmuProgram};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|r| r.parse()).transpose()?.unwrap_or(5);
    let program = EmuProgram::locate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let backend = EmuBackend { program };
    let text = "name: bench\nabout: upload times\ndevice: { firmware: v1 }\nsteps:\n  - boot\n";
    let scenario = otahil::scenario::parse(text, std::path::Path::new("<bench>"))?;
    let v2 = otahil::fixtures::find("v2").ok_or_else(|| anyhow::anyhow!("no fixture v2"))?.bytes();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut dut = backend.start(&scenario, &StartContext::default()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    dut.power_on()?;
    idle_cpu(dut.as_mut())?;
    for uploader in Uploader::ALL {
        let mut times = Vec::new();
        for run in 0..runs {
            let endpoint = dut.endpoints()?.get(uploader.port())?;
            let upload = Upload {
                image: &v2,
                file_name: "v2.bin",
                password: None,
                offer_sha256: false,
                declared_size: None,
                md5: None,
                disconnect_after: None,
                send_delay: None,
                timeout: Duration::from_secs(30),
                seed: run as u64,
                arduino: ArduinoFaults::default(),
            };
            let started = Instant::now();
            let outcome = rt.block_on(client::upload(uploader, endpoint, &upload));
            let took = started.elapsed();
            if !matches!(outcome, Outcome::Ok { .. }) {
                anyhow::bail!("{uploader} upload {run}: {outcome}");
            }
            times.push(took.as_secs_f64() * 1e3);
            // The device restarts into v2; the next upload goes to the other slot.
            wait_for_reboot(dut.as_mut())?;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "upload of v2 ({} bytes) over {uploader}, {runs} runs: min {:.2} ms, median {:.2} ms, max {:.2} ms",
            v2.len(),
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    dut.shutdown();
    Ok(())
}

/// Waits for the device to announce its restart after an update, and for the boot after it.
fn wait_for_reboot(dut: &mut dyn Dut) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut rebooted, mut serving) = (false, false);
    while Instant::now() < deadline && !(rebooted && serving) {
        match dut.next_event(Duration::from_millis(200))? {
            Some(DutEvent::Rebooted) => rebooted = true,
            Some(DutEvent::Serial(line)) if line.contains("ota: listening on port") => serving = true,
            _ => {}
        }
    }
    if rebooted && serving {
        return Ok(());
    }
    anyhow::bail!("the device did not come back after the update")
}

/// CPU time the emulator process spends over 5 s with nothing to do (utime + stime from
/// /proc, in clock ticks of 10 ms), as a share of one core.
fn idle_cpu(dut: &mut dyn Dut) -> anyhow::Result<()> {
    let Some(pid) = emulator_pid() else {
        println!("idle CPU of an emulated device: not measured (no ota-emu process found in /proc)");
        return Ok(());
    };
    // Let the boot's lines go by first.
    while dut.next_event(Duration::from_millis(300))?.is_some() {}
    let ticks = |pid: u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let before = ticks(pid).unwrap_or(0);
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let used = ticks(pid).unwrap_or(0).saturating_sub(before);
    println!(
        "idle CPU of an emulated device: {} ms of CPU in {} s ({:.2} % of a core)",
        used * 10,
        window.as_secs(),
        used as f64 * 10.0 / window.as_millis() as f64 * 100.0
    );
    Ok(())
}

/// The newest `ota-emu` child of this process.
fn emulator_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let comm = stat.split_once('(').and_then(|(_, r)| r.split_once(')')).map(|(c, _)| c);
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1));
            comm == Some("ota-emu") && ppid == Some(me.as_str())
        })
        .max()
}
