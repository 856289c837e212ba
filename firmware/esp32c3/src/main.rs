//! otahil's device under test on a real ESP32-C3 (or Espressif's QEMU): the same `ota-core` the
//! emulator runs, on esp-hal and esp-storage.
//!
//! This build does what the chip does before it serves OTA: it finds the partition the
//! bootloader started, prints the app's identity, and runs the boot-time rollback guard (the
//! bootloader espflash bundles has no rollback support), including the image's self-test, whose
//! outcome the image declares with `ota_core::selftest`'s marker, exactly as in the emulator.
//! Then it serves ESPHome OTA on TCP 3232 and ArduinoOTA on UDP 3232: over the OpenCores Ethernet MAC that Espressif's QEMU
//! emulates, or, built with `--features wifi`, over Wi-Fi on a board (DHCP; the network from
//! NVS `otahil/wifi_ssid` and `wifi_password`, or `OTAHIL_FW_WIFI_SSID` / `_PASSWORD` at build).
#![no_std]
#![no_main]

use esp_backtrace as _;
use esp_hal::main;
use esp_hal::ram;
use esp_hal::time::Instant;
use esp_println::println;
use esp_storage::FlashStorage;
use ota_core::app::App;
use ota_core::boot::{
    BootIndex, Booted, Confirm, DirectVerify, GuardOutcome, SlotVerifier, boot_guard, select, verify_slot,
};
use ota_core::image::ChipInfo;
use ota_core::log::{LogEvent, LogLine, SlotName};
use ota_core::proto::arduino::AuthScheme;
use ota_core::service::BuiltIn;
use ota_core::writer::{OtaConfig, read_otadata};

mod markers;
mod net;
#[cfg(not(feature = "wifi"))]
mod open_eth;
#[cfg(feature = "wifi")]
mod wifi;

const VERSION: &str = match option_env!("OTAHIL_FW_VERSION") {
    Some(v) => v,
    None => "0.0.0-dev",
};

/// The OTA password built in (`OTAHIL_FW_PASSWORD`; none means no authentication). NVS
/// (namespace `otahil`, key `ota_password`) overrides it at boot: see `ota_core::settings`.
const PASSWORD: Option<&str> = match option_env!("OTAHIL_FW_PASSWORD") {
    Some(p) if !p.is_empty() => Some(p),
    _ => None,
};

/// ArduinoOTA's password built in (`OTAHIL_FW_ARDUINO_PASSWORD`; none means no authentication).
/// NVS key `arduino_passwd` overrides it.
const ARDUINO_PASSWORD: Option<&str> = match option_env!("OTAHIL_FW_ARDUINO_PASSWORD") {
    Some(p) if !p.is_empty() => Some(p),
    _ => None,
};

/// ArduinoOTA's authentication built in (`OTAHIL_FW_ARDUINO_AUTH=pbkdf2`, default classic MD5).
/// NVS key `arduino_auth` overrides it.
const ARDUINO_AUTH: AuthScheme = match option_env!("OTAHIL_FW_ARDUINO_AUTH") {
    Some(v) if v.len() == 6 && v.as_bytes()[0] == b'p' => AuthScheme::Pbkdf2Sha256,
    _ => AuthScheme::Md5,
};

/// ESPHome OTA protocol version built in (`OTAHIL_FW_OTA_PROTOCOL`, default 2); NVS key
/// `ota_protocol` overrides it.
const PROTOCOL: u8 = match option_env!("OTAHIL_FW_OTA_PROTOCOL") {
    Some(v) if v.len() == 1 && v.as_bytes()[0] == b'1' => 1,
    _ => 2,
};

esp_bootloader_esp_idf::esp_app_desc!(
    VERSION,
    "otahil-fw",
    esp_bootloader_esp_idf::BUILD_TIME,
    esp_bootloader_esp_idf::BUILD_DATE,
    esp_bootloader_esp_idf::ESP_IDF_COMPATIBLE_VERSION,
    esp_bootloader_esp_idf::MMU_PAGE_SIZE,
    0,
    u16::MAX,
    esp_bootloader_esp_idf::SECURE_VERSION
);

/// The flash offset the bootloader mapped the running app from (MMU entry 0 of the ESP32-C3,
/// as ESP-IDF's `mmu_hal` reads it).
fn booted_offset() -> u32 {
    // SAFETY: a read of an always-mapped, read-only MMU table register.
    unsafe { ((0x600C_5000 as *const u32).read_volatile() & 0xFF) << 16 }
}

/// Espressif's QEMU starts with SYSTIMER unit 0 stopped, so delays would hang; enabling it
/// (TIMER_UNIT0_WORK_EN, bit 30 of SYSTIMER_CONF) is harmless on silicon.
fn start_systimer_unit0() {
    const SYSTIMER_CONF: *mut u32 = 0x6002_3000 as *mut u32;
    // SAFETY: read-modify-write of a SYSTIMER configuration register at start-up, before any
    // driver uses the timer.
    unsafe { SYSTIMER_CONF.write_volatile(SYSTIMER_CONF.read_volatile() | 1 << 30) };
}

/// The MAC the firmware uses on QEMU's open_eth (locally administered; the emulated chip's
/// `ota_emu::uart::MAC`, so both report the same device), and for its MQTT client id (on a board
/// the Wi-Fi MAC is the station's own, but the client id stays this one for now).
const MAC: [u8; 6] = [0x02, 0x07, 0x7a, 0xc3, 0x00, 0x01];

/// One TLS session's heap: the record buffers (16,640 + 4,096 bytes), the engine's state, the
/// certificates kept for the handshake, and the queues between them (a whole decrypted 16 KiB
/// record on its way to the pull client). 48 KiB ran out on the first full record under QEMU.
const TLS_HEAP: usize = 96 * 1024;
/// The part of it in the RAM the second-stage bootloader used (esp-hal's `dram2_seg`, 66,320
/// bytes on the ESP32-C3, free once the app runs): the rest of the heap is in `.bss`, and every
/// byte moved out of `.bss` is a byte more of stack, which the network loop and the app need
/// (their frames: 158 KiB and 68 KiB with two listeners and six paths).
const RECLAIMED_HEAP: usize = 64 * 1024;

#[main]
fn main() -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default());
    // The heap of the https pull's TLS session (its 16 KiB record buffer and handshake state);
    // the wifi build adds the radio's own region.
    esp_alloc::heap_allocator!(#[ram(reclaimed)] size: RECLAIMED_HEAP);
    esp_alloc::heap_allocator!(size: TLS_HEAP - RECLAIMED_HEAP);
    start_systimer_unit0();
    markers::keep();
    let started = Instant::now();
    let mut log = |e: &LogEvent<'_>| {
        println!("{}", LogLine { ms: started.elapsed().as_millis() as u32, event: e });
    };
    let mut flash = FlashStorage::new(peripherals.FLASH);
    let flash_size = embedded_storage::nor_flash::ReadNorFlash::capacity(&flash) as u32;
    let table = match ota_core::boot::read_table(&mut flash, flash_size) {
        Ok(t) => t,
        Err(e) => halt(&format_args!("partition table unreadable: {e:?}")),
    };
    let Some(partition) = table.app_at(booted_offset()).copied() else {
        halt(&format_args!("no app partition at 0x{:x}", booted_offset()))
    };
    let Some(index) = BootIndex::of(&partition) else { halt(&"the running partition is not an app slot") };
    let image = match verify_slot(&mut flash, &partition, ChipInfo::ESP32C3) {
        Ok(i) => i,
        Err(e) => halt(&format_args!("the running image does not verify: {e}")),
    };
    let otadata = table.otadata().and_then(|od| read_otadata(&mut flash, od).ok());
    let booted = Booted { index, partition, image, selection: select(&table, otadata.as_ref()) };
    log(&LogEvent::AppRunning {
        slot: SlotName(index),
        label: partition.label(),
        project: image.desc.project_name(),
        version: image.desc.version(),
    });
    let self_test = DirectVerify.self_test(&mut flash, &booted);
    let confirm = Confirm::load(&mut flash, &table, &mut log);
    match boot_guard(&mut flash, &table, &booted, self_test, confirm, ChipInfo::ESP32C3, &mut log) {
        Ok(GuardOutcome::Reboot) => esp_hal::system::software_reset(),
        Ok(GuardOutcome::Run) => {}
        // The self-test never finishes: the app never gets to serve OTA (a reset rolls back).
        Ok(GuardOutcome::Hang) => loop {
            core::hint::spin_loop();
        },
        Err(e) => halt(&format_args!("flash failed in the boot guard: {e}")),
    }
    let built_in = BuiltIn {
        ota_password: PASSWORD.map(str::as_bytes),
        ota_protocol: PROTOCOL,
        ota_sha256: true,
        ota_port: ota_core::proto::esphome::DEFAULT_PORT,
        arduino_password: ARDUINO_PASSWORD.map(str::as_bytes),
        arduino_auth: ARDUINO_AUTH,
        mac: MAC,
    };
    let mut rng = net::HwRng(esp_hal::rng::Rng::new());
    let mut app = App::boot(&mut flash, table, &booted, OtaConfig::default(), &built_in, &mut log, &mut rng);
    #[cfg(not(feature = "wifi"))]
    {
        // Espressif's QEMU: the OpenCores MAC on its user-mode network, at slirp's fixed address.
        let mac = MAC;
        let mut rx_bufs = [[0u8; open_eth::BUF_LEN]; open_eth::N_RX];
        let mut tx_bufs = [[0u8; open_eth::BUF_LEN]; open_eth::N_TX];
        let mut dev = open_eth::OpenEth::new(mac, &mut rx_bufs, &mut tx_bufs);
        let addressing = net::Addressing::Static { ip: [10, 0, 2, 15], prefix: 24, gateway: [10, 0, 2, 2] };
        let net = net::NetConfig { mac, addressing };
        net::serve(&mut dev, &mut (), &mut flash, &mut app, net, &mut rng, &mut log)
    }
    #[cfg(feature = "wifi")]
    {
        let credentials = ota_core::wifi::WifiCredentials::load(
            &mut flash,
            app.table(),
            wifi::BUILT_IN_SSID,
            wifi::BUILT_IN_PASSWORD,
            &mut log,
        );
        let (mut dev, mac, mut link) =
            wifi::up(peripherals.WIFI, peripherals.TIMG0, peripherals.FROM_CPU_INTR0, credentials, &mut log);
        let net = net::NetConfig { mac, addressing: net::Addressing::Dhcp };
        net::serve(&mut dev, &mut link, &mut flash, &mut app, net, &mut rng, &mut log)
    }
}

pub(crate) fn halt(why: &dyn core::fmt::Display) -> ! {
    println!("{}: {why}", ota_core::log::HALTED);
    loop {
        core::hint::spin_loop();
    }
}
