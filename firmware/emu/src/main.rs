//! `ota-emu`: an emulated ESP32-C3 that receives ESPHome OTA updates (see `ota-emu --help`).

fn main() -> std::process::ExitCode {
    match ota_emu::cli::run_from(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ota-emu: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
