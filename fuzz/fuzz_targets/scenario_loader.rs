//! Scenario files: any text must load or fail with an error, never panic.
//!
//! Half the inputs are taken as text as they are (mutated from the seeds in `fuzz/corpus/` with
//! the dictionary `fuzz/scenario_loader.dict`); the other half fill a scenario's numbers —
//! durations with their unit, sizes, counts, seeds — from the input's bytes, so the extremes of
//! every number the schema has are reached at once instead of digit by digit.
#![no_main]

use libfuzzer_sys::fuzz_target;

const UNITS: [&str; 4] = ["ms", "s", "m", "h"];

/// A scenario whose numbers come from `bytes`.
fn structured(bytes: &[u8]) -> String {
    let mut at = 0usize;
    let mut next_u64 = || {
        let mut b = [0u8; 8];
        for (i, v) in b.iter_mut().enumerate() {
            *v = bytes.get(at + i).copied().unwrap_or(0);
        }
        at += 8;
        u64::from_le_bytes(b)
    };
    let mut duration = || {
        let n = next_u64();
        // Small, large and huge magnitudes alike.
        let n = match n % 4 {
            0 => n >> 60,
            1 => n >> 32,
            2 => n >> 8,
            _ => n,
        };
        format!("{n}{}", UNITS[(n % 4) as usize])
    };
    let (d1, d2, d3, d4, d5) = (duration(), duration(), duration(), duration(), duration());
    let (n1, n2, n3, n4) = (next_u64(), next_u64(), next_u64(), next_u64());
    format!(
        "name: fuzz\ndevice: {{ firmware: v1, seed: {n1}, flash_size: {}M }}\nsteps:\n  - boot\n  \
         - expect_log: {{ pattern: 'x', timeout: {d1} }}\n  \
         - ota: {{ image: v2, expect: ok, timeout: {d2}, send_delay: {d3}, declared_size: {}, disconnect_after: {n3} }}\n  \
         - ota: {{ protocol: arduino, image: v2, expect: ok, answer_timeout: {d4}, invitation_attempts: {}, stall: {{ after_bytes: {n4}, for: {d5} }} }}\n  \
         - sweep: {{ image: v2-1mib, random_runs: {}, max_cuts: {} }}\n",
        1u64 << (n1 % 6),
        n2 as u32,
        n2 >> 32,
        n3 % 1000,
        n4 % 1000
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let path = std::path::Path::new("/nonexistent/fuzz.yaml");
    if mode & 1 == 1 {
        let _ = otahil::scenario::parse(&structured(rest), path);
    } else if let Ok(text) = std::str::from_utf8(rest) {
        let _ = otahil::scenario::parse(text, path);
    }
});
