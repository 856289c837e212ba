//! `ota-core`: the one place where otahil knows how an ESP32-C3 OTA update works.
//!
//! The chip firmware links it, the host emulator runs it and the harness's flash inspector
//! decodes dumps with it, so all three agree on every byte. It is `no_std` and allocation free:
//! every buffer is fixed size, every flash access goes through `embedded-storage`'s traits.
//!
//! Layout, one job per module:
//! - [`crc`], [`hex`]: small helpers the formats need.
//! - [`partition`], [`partition_csv`]: the ESP-IDF partition table, binary and CSV.
//! - [`otadata`]: the two `esp_ota_select_entry_t` copies and their CRC.
//! - [`image`], [`app_desc`], [`image_builder`]: the app image, its descriptor, a builder.
//! - [`flash`]: partition-relative flash access over `NorFlash`.
//! - [`writer`]: `esp_ota_begin/write/end/set_boot_partition` semantics.
//! - [`update`]: the protocol-neutral update sink every update path writes through.
//! - [`slot`]: boot candidates (`BootIndex`) and their names in logs (`SlotName`).
//! - [`boot`]: the bootloader's slot choice (rollback on or off) and the app's boot guard.
//! - [`url`]: `http(s)://` URLs as triggers name them.
//! - [`io`]: the links-by-id vocabulary between the app and its adapter.
//! - [`service`]: what an update path is to the app ([`service::PathService`]).
//! - [`app`]: the device application: every path, booted, driven, one update at a time.
//! - [`session`]: one update session of any path (state machine + update in progress).
//! - [`proto`]: the update paths, each a sans-IO state machine (ESPHome native OTA, ArduinoOTA).
//! - [`log`]: the device's log line catalogue.
//! - [`nvs`]: reading settings from ESP-IDF NVS, and building an NVS page.
//! - [`pem`]: a PEM certificate (the pull's CA, provisioned in NVS) to DER.
//! - [`tls`] (feature `tls`): the HTTPS pull's TLS client.
//! - [`settings`]: the device's OTA password and protocol, built in or provisioned in NVS.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "tls")]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod app;
pub mod app_desc;
pub mod boot;
pub mod crc;
pub mod flash;
pub mod hex;
pub mod image;
pub mod image_builder;
pub mod io;
pub mod log;
pub mod nvs;
pub mod otadata;
pub mod partition;
pub mod partition_csv;
pub mod pem;
pub mod proto;
pub mod provision;
pub mod resume;
pub mod rng;
pub mod running;
pub mod script;
pub mod selftest;
pub mod service;
pub mod session;
pub mod settings;
pub mod slot;
#[cfg(feature = "tls")]
pub mod tls;
pub mod update;
pub mod url;
pub mod wifi;
pub mod writer;

#[cfg(test)]
pub(crate) mod testutil;

/// Flash erase unit of the ESP32-C3's SPI NOR flash.
pub const SECTOR_SIZE: u32 = 4096;
/// SPI NOR page program unit; the writer programs at most one page per operation.
pub const PAGE_SIZE: u32 = 256;

/// Rounds `value` up to the next multiple of `align` (a power of two).
pub const fn align_up(value: u32, align: u32) -> u32 {
    (value + align - 1) & !(align - 1)
}
