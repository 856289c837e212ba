//! The ESP32-C3 registers a flasher reads or pokes through READ_REG/WRITE_REG: the chip magic
//! word, the eFuse words that hold the MAC and the revision, and the SPI1 controller that
//! espflash drives by hand to read the flash's JEDEC ID (its flash-size detection).

use std::collections::BTreeMap;

/// ESP32-C3 ECO3's magic word at 0x4000_1000 (espflash `target/mod.rs`, esptool `esp32c3.py`).
pub const MAGIC_ADDR: u32 = 0x4000_1000;
pub const MAGIC_ECO3: u32 = 0x1b31_506f;
/// GET_SECURITY_INFO's chip id for the ESP32-C3.
pub const CHIP_ID: u32 = 5;
/// eFuse MAC words (low 32 bits, then the high 16 bits) and the revision words.
pub const EFUSE_MAC0: u32 = 0x6000_8844;
pub const EFUSE_MAC1: u32 = 0x6000_8848;
pub const EFUSE_RD_MAC_SPI_SYS_3: u32 = 0x6000_8850;
pub const EFUSE_RD_MAC_SPI_SYS_5: u32 = 0x6000_8858;
/// SPI1 (the flash's controller): command, user, user2, MISO length, first data word.
pub const SPI1_CMD: u32 = 0x6000_2000;
pub const SPI1_USR: u32 = 0x6000_2018;
pub const SPI1_USR2: u32 = 0x6000_2020;
pub const SPI1_MISO_DLEN: u32 = 0x6000_2028;
pub const SPI1_W0: u32 = 0x6000_2058;
/// CMD bit 18 starts the user command; the controller clears it when done.
pub const SPI1_CMD_USR: u32 = 1 << 18;
pub const JEDEC_READ_ID: u32 = 0x9F;
/// The flash manufacturer the emulator reports (GigaDevice, as on most C3 modules).
pub const MANUFACTURER: u32 = 0xC8;
pub const DEVICE_TYPE: u32 = 0x40;

/// The register file: what a host wrote, and the chip's fixed words.
pub struct Registers {
    written: BTreeMap<u32, u32>,
    mac: [u8; 6],
    /// log2 of the flash size: the JEDEC capacity byte.
    size_id: u32,
}

impl Registers {
    pub fn new(mac: [u8; 6], flash_size: usize) -> Registers {
        Registers { written: BTreeMap::new(), mac, size_id: flash_size.max(1).ilog2() }
    }

    pub fn read(&self, addr: u32) -> u32 {
        let m = &self.mac;
        match addr {
            MAGIC_ADDR => MAGIC_ECO3,
            EFUSE_MAC0 => u32::from_be_bytes([m[2], m[3], m[4], m[5]]),
            EFUSE_MAC1 => u32::from_be_bytes([0, 0, m[0], m[1]]),
            // Chip revision v0.4 (ECO3): minor bits in word 3, major in word 5.
            EFUSE_RD_MAC_SPI_SYS_3 => 4 << 18,
            EFUSE_RD_MAC_SPI_SYS_5 => 0,
            // The user command has always finished by the time the host looks.
            SPI1_CMD => self.written.get(&addr).copied().unwrap_or(0) & !SPI1_CMD_USR,
            other => self.written.get(&other).copied().unwrap_or(0),
        }
    }

    /// WRITE_REG: the bits in `mask` take `value`'s.
    pub fn write(&mut self, addr: u32, value: u32, mask: u32) {
        let old = self.read(addr);
        let new = (old & !mask) | (value & mask);
        self.written.insert(addr, new);
        if addr == SPI1_CMD && new & SPI1_CMD_USR != 0 {
            self.run_user_command();
        }
    }

    /// Runs the SPI1 user command the host set up: only RDID (0x9F) means something here.
    fn run_user_command(&mut self) {
        let command = self.read(SPI1_USR2) & 0xFF;
        let w0 =
            if command == JEDEC_READ_ID { MANUFACTURER | DEVICE_TYPE << 8 | self.size_id << 16 } else { 0 };
        self.written.insert(SPI1_W0, w0);
    }

    /// GET_SECURITY_INFO's 20 bytes: flags, flash_crypt_cnt, seven key purposes, chip id, eco.
    pub fn security_info(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[12..16].copy_from_slice(&CHIP_ID.to_le_bytes());
        out[16..20].copy_from_slice(&3u32.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_and_magic_read_back_as_espflash_expects() {
        let r = Registers::new([0xc4, 0x0a, 0x24, 0xfe, 0x10, 0x01], 4 << 20);
        assert_eq!(r.read(MAGIC_ADDR), 0x1b31_506f);
        assert_eq!(r.read(EFUSE_MAC0), 0x24fe_1001);
        assert_eq!(r.read(EFUSE_MAC1), 0x0000_c40a);
        assert_eq!(u32::from_le_bytes(r.security_info()[12..16].try_into().unwrap()), 5);
    }

    #[test]
    fn the_spi1_rdid_sequence_yields_the_jedec_id_of_the_flash_size() {
        let mut r = Registers::new([0; 6], 4 << 20);
        r.write(SPI1_USR2, 7 << 28 | JEDEC_READ_ID, u32::MAX);
        r.write(SPI1_MISO_DLEN, 23, u32::MAX);
        r.write(SPI1_CMD, SPI1_CMD_USR, u32::MAX);
        assert_eq!(r.read(SPI1_CMD) & SPI1_CMD_USR, 0, "the command is done");
        assert_eq!(r.read(SPI1_W0), 0x0016_40C8, "4 MiB: size id 0x16");
        let mut r = Registers::new([0; 6], 16 << 20);
        r.write(SPI1_USR2, JEDEC_READ_ID, 0xFFFF);
        r.write(SPI1_CMD, SPI1_CMD_USR, SPI1_CMD_USR);
        assert_eq!((r.read(SPI1_W0) >> 16) & 0xFF, 0x18);
    }

    #[test]
    fn write_reg_honours_the_mask() {
        let mut r = Registers::new([0; 6], 4 << 20);
        r.write(0x6000_0000, 0xFFFF_FFFF, 0x0000_00F0);
        assert_eq!(r.read(0x6000_0000), 0xF0);
        r.write(0x6000_0000, 0, 0x0000_0010);
        assert_eq!(r.read(0x6000_0000), 0xE0);
    }
}
