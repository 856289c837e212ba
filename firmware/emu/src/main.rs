//! `ota-emu`: an emulated ESP32-C3 that takes updates over every path the firmware has (see
//! `ota-emu --help`).

fn main() -> std::process::ExitCode {
    match ota_emu::cli::run_from(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ota-emu: error: {}", ota_emu::cli::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
