//! Scenario files: any text must load or fail with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = otahil::scenario::parse(text, std::path::Path::new("/nonexistent/fuzz.yaml"));
    }
});
