//! `ota-emu`: an emulated ESP32-C3 that receives ESPHome OTA updates (see `ota-emu --help`).

fn main() -> anyhow::Result<()> {
    ota_emu::cli::run_from(std::env::args_os())
}
