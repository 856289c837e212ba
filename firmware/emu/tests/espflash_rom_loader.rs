//! The emulator's ROM serial loader driven by the real espflash 4.7 library over a
//! pseudo-terminal, as the bench backend will drive a board: connect without reset, identify an
//! ESP32-C3 (MAC, flash size), write with verification through the ROM (raw blocks) and through
//! the stand-in stub (compressed blocks), MD5, read back and erase through the stub.

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::target::{Chip, DefaultProgressCallback};
use md5::{Digest, Md5};
use ota_emu::flash::FileFlash;
use ota_emu::rom_loader::port::{Ended, serve};
use ota_emu::rom_loader::{Exit, RomLoader};
use serialport::{SerialPort, TTYPort, UsbPortInfo};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const MAC: [u8; 6] = [0xc4, 0x0a, 0x24, 0xfe, 0x10, 0x01];
const FLASH_SIZE: usize = 4 << 20;

/// An erased 4 MB chip in download boot mode on a pty, and espflash connected to it.
struct Bench {
    flasher: Flasher,
    stop: Arc<AtomicBool>,
    device: JoinHandle<(Ended, FileFlash)>,
}

impl Bench {
    fn start(use_stub: bool) -> Bench {
        let (master, slave) = TTYPort::pair().expect("a pseudo-terminal pair");
        let stop = Arc::new(AtomicBool::new(false));
        let device = device(master, FileFlash::in_memory(vec![0xFF; FLASH_SIZE]), stop.clone());
        // A pty has no USB identity and no DTR/RTS: no reset, as over a bench's UART bridge.
        let info = UsbPortInfo {
            vid: 0,
            pid: 0,
            serial_number: None,
            manufacturer: None,
            product: None,
            interface: None,
        };
        let conn = Connection::new(
            slave,
            info,
            ResetAfterOperation::NoResetNoStub,
            ResetBeforeOperation::NoReset,
            115_200,
        );
        let flasher = Flasher::connect(conn, use_stub, true, false, Some(Chip::Esp32c3), None)
            .expect("espflash connects");
        Bench { flasher, stop, device }
    }

    /// Stops the device; how its loader ended and its flash.
    fn stop(self) -> (Ended, FileFlash) {
        self.stop.store(true, Ordering::Relaxed);
        self.device.join().expect("the device thread")
    }
}

/// The device side: a loader on the pty's master until it exits or `stop` is set; the pty then
/// stays open (the chip boots, its UART still there) until `stop`.
fn device(
    mut master: TTYPort,
    mut flash: FileFlash,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(Ended, FileFlash)> {
    std::thread::spawn(move || {
        master.set_timeout(Duration::from_millis(20)).unwrap();
        let mut loader = RomLoader::new(MAC, FLASH_SIZE);
        let ended = serve(
            &mut master,
            &mut loader,
            &mut flash,
            || !stop.load(Ordering::Relaxed),
            |r| eprintln!("loader refused a frame: {r}"),
        )
        .expect("the pty stays open");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        (ended, flash)
    })
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ota_emu::flash::SplitMix(seed);
    (0..len).map(|_| rng.byte() & 0x3F).collect()
}

#[test]
fn espflash_identifies_writes_and_verifies_through_the_rom() {
    let mut bench = Bench::start(false);
    let f = &mut bench.flasher;
    let info = f.device_info().expect("device info");
    assert_eq!(info.chip, Chip::Esp32c3);
    assert_eq!(info.mac_address.as_deref(), Some("c4:0a:24:fe:10:01"));
    assert_eq!(info.flash_size.size(), 4 << 20, "{:?}", info.flash_size);
    let img = image(10_001, 3);
    f.write_bin_to_flash(0x10000, &img, &mut DefaultProgressCallback).expect("ROM write, verified");
    let (ended, flash) = bench.stop();
    assert!(matches!(ended, Ended::Exit(Exit::Reboot)), "the ROM's FLASH_END ends its session: {ended:?}");
    assert_eq!(&flash.data()[0x10000..0x10000 + img.len()], &img[..]);
    assert_eq!(&flash.data()[0x10000 + img.len()..0x10000 + img.len() + 3], &[0xFF; 3], "padded");
}

#[test]
fn espflash_writes_compressed_reads_back_and_erases_through_the_stub() {
    let mut bench = Bench::start(true);
    let f = &mut bench.flasher;
    assert_eq!(f.device_info().expect("device info").chip, Chip::Esp32c3);
    let img = image(70_000, 4);
    f.write_bin_to_flash(0x20000, &img, &mut DefaultProgressCallback).expect("stub write, verified");
    let md5 = f.checksum_md5(0x20000, img.len() as u32).expect("md5");
    assert_eq!(md5.to_be_bytes(), <[u8; 16]>::from(Md5::digest(&img)));
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.bin");
    f.read_flash(0x20000, 0x3000, 0x1000, 64, back.clone()).expect("stub read-back");
    assert_eq!(std::fs::read(&back).unwrap(), &img[..0x3000]);
    f.erase_region(0x20000, 0x1000).expect("erase a sector");
    let erased = f.checksum_md5(0x20000, 0x1000).expect("md5");
    assert_eq!(erased.to_be_bytes(), <[u8; 16]>::from(Md5::digest([0xFF; 0x1000])));
    let (ended, flash) = bench.stop();
    assert!(matches!(ended, Ended::Stopped), "the stub stays until reset: {ended:?}");
    assert_eq!(&flash.data()[0x21000..0x20000 + img.len()], &img[0x1000..]);
}
