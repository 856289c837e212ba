//! The `ota-emu` command line: run an emulated ESP32-C3, or make a flash image for it.

use crate::device::{Device, DeviceConfig};
use crate::flash::FileFlash;
use crate::serve::{Serial, ServeOptions, serve};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ota_core::io::Port;
use ota_core::proto::arduino::AuthScheme;
use ota_core::writer::{EraseMode, OtaConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ota-emu",
    version,
    about = "An emulated ESP32-C3 running otahil's firmware core: ESPHome OTA, ArduinoOTA, the MQTT-triggered pull and Homie OTA, with power cuts on command"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
// Parsed once per process: boxing `MakeFlash`'s settings would only make their use noisier.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Run the device: serial log on stdout, OTA on --listen, control commands on stdin.
    ///
    /// Control commands (one per line): power-on, power-off, reset, download (reset into the
    /// ROM serial loader, with --uart-pty), status, `cut after-ops N [torn SEED]`,
    /// `cut after-bytes N [torn SEED]`, `cut at-log REGEX`, `cut clear`, quit. Replies and
    /// events are printed on stdout prefixed with "#otahil ".
    Run(RunArgs),
    /// Make a fresh flash file, as `espflash save-image --merge` would: the partition table at
    /// 0x8000 (with its MD5 row), the app in the factory slot (or ota_0), otadata erased, FF elsewhere.
    MakeFlash {
        /// Partition table as CSV (`# Name, Type, SubType, Offset, Size, Flags`).
        #[arg(long)]
        partitions: PathBuf,
        /// The app image (`.bin`, ESP app image format).
        #[arg(long)]
        app: PathBuf,
        /// Flash size: 1M, 2M, 4M, 8M or 16M (or a byte count).
        #[arg(long, default_value = "4M")]
        size: String,
        /// The flash file to write (a file already there is replaced).
        #[arg(long)]
        out: PathBuf,
        /// The device's settings, provisioned into its nvs partition as a factory would.
        #[command(flatten)]
        settings: crate::settings_args::SettingsArgs,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The flash file (its size is the flash size; make one with `make-flash`).
    #[arg(long)]
    flash: PathBuf,
    /// Host address for the device's ESPHome OTA port (TCP); port 0 picks a free one (printed on
    /// the ready line as `tcp:3232=`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Host address for the device's ArduinoOTA invitation port (UDP); port 0 picks a free one
    /// (printed on the ready line as `udp:3232=`).
    #[arg(long, default_value = "127.0.0.1:0")]
    arduino_listen: SocketAddr,
    /// Host address for the device's web server port (TCP 80: the upload form, when provisioned);
    /// port 0 picks a free one (printed on the ready line as `tcp:80=`).
    #[arg(long, default_value = "127.0.0.1:0")]
    web_listen: SocketAddr,
    /// ArduinoOTA's password built in (none: no authentication); NVS `arduino_passwd` overrides it.
    #[arg(long)]
    arduino_password: Option<String>,
    /// ArduinoOTA's authentication built in: md5 (classic) or pbkdf2 (arduino-esp32 3.3.1+).
    #[arg(long, default_value = "md5", value_parser = crate::settings_args::parse_auth)]
    arduino_auth: AuthScheme,
    /// The OTA password the firmware has built in (none: no authentication). As on the chip, a
    /// password provisioned in NVS (`make-flash --password`) overrides it at boot.
    #[arg(long)]
    password: Option<String>,
    /// ESPHome OTA protocol version built in (NVS `ota_protocol` overrides it).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    protocol: u8,
    /// Refuse SHA-256 authentication (MD5 only, as ESPHome before 2025.10).
    #[arg(long)]
    md5_only: bool,
    /// Model a bootloader built with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE (espflash's is not).
    #[arg(long)]
    bootloader_rollback: bool,
    /// Erase the whole image range before writing (ESPHome's IDF backend) instead of sector by sector.
    #[arg(long)]
    erase_upfront: bool,
    /// Also write the serial log to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Stay powered off until the `power-on` command.
    #[arg(long)]
    start_off: bool,
    /// Put UART0 on a pseudo-terminal (its path in the `ready` line): the serial log in flash
    /// boot mode, the ROM serial loader after the `download` command.
    #[arg(long)]
    uart_pty: bool,
    /// Seed for the device's randomness (nonces), for reproducible runs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// An error and its causes on one line, as a command line prints it: each cause once, even when
/// an error's own message already quotes its source (many do, for the logs that print only it).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Parses `args` (the first is the program name) and runs the command.
pub fn run_from<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Cli::parse_from(args))
}

/// The same, under another name in help and errors (`otahil emu`).
pub fn run_as<I, T>(name: &'static str, args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().name(name).bin_name(name).get_matches_from(args);
    run(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Run(a) => {
            let flash = FileFlash::open(&a.flash)?;
            let file = match &a.log {
                Some(p) => {
                    Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
                }
                None => None,
            };
            let config = DeviceConfig {
                password: a.password.map(String::into_bytes),
                protocol_version: a.protocol,
                sha256: !a.md5_only,
                bootloader_rollback: a.bootloader_rollback,
                ota: OtaConfig {
                    erase: if a.erase_upfront { EraseMode::Upfront } else { EraseMode::Sequential },
                    ..OtaConfig::default()
                },
                seed: a.seed,
                arduino_password: a.arduino_password.map(String::into_bytes),
                arduino_auth: a.arduino_auth,
                ..DeviceConfig::default()
            };
            let (uart, uart_log) = match a.uart_pty {
                true => {
                    let (u, log) =
                        crate::uart::Uart::open().context("opening a pseudo-terminal for the UART")?;
                    (Some(u), Some(log))
                }
                false => (None, None),
            };
            let device =
                Device::new(config, flash, Serial { stdout: std::io::stdout(), file, uart: uart_log });
            let options = ServeOptions {
                ports: vec![
                    (Port::Tcp(ota_core::proto::esphome::DEFAULT_PORT), a.listen),
                    (Port::Udp(ota_core::proto::arduino::DEFAULT_PORT), a.arduino_listen),
                    (Port::Tcp(ota_core::proto::web_form::DEFAULT_PORT), a.web_listen),
                ],
                start_off: a.start_off,
                uart,
            };
            serve(device, options)
        }
        Cmd::MakeFlash { partitions, app, size, out, settings } => {
            let csv = std::fs::read_to_string(&partitions)
                .with_context(|| format!("reading {}", partitions.display()))?;
            let table = ota_core::partition_csv::parse_csv(&csv)
                .map_err(|e| anyhow::anyhow!("{}: {e}", partitions.display()))?;
            let app_bytes = std::fs::read(&app).with_context(|| format!("reading {}", app.display()))?;
            // A flash with something else in its app slot would only brick at power-on.
            if let Err(e) = ota_core::image::verify(&mut &app_bytes[..], ota_core::image::ChipInfo::ESP32C3) {
                bail!("{} is not an ESP32-C3 app image: {e}", app.display());
            }
            let Some(flash_size) = ota_core::partition_csv::parse_size(&size) else {
                bail!("--size `{size}` is not a size (expected e.g. 4M)");
            };
            let mut image = crate::mkflash::merged_image(&table, &app_bytes, flash_size)?;
            if let Some(page) = settings.page()? {
                crate::mkflash::write_page(&mut image, &table, &page)?;
            }
            FileFlash::create(&out, &image).with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Issue #22: every option says what it is in `--help`, and `run`'s help names every
    /// control command the emulator takes.
    #[test]
    fn every_option_has_help_and_every_control_command_is_listed() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
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
        let help = cmd.find_subcommand("run").unwrap().clone().render_long_help().to_string();
        for verb in crate::control::Verb::ALL {
            assert!(help.contains(verb.word()), "`{}` is not in run's help: {help}", verb.word());
        }
        for form in ["cut after-ops", "cut after-bytes", "cut at-log", "cut clear"] {
            assert!(help.contains(form), "{form}: {help}");
        }
    }
}
