//! A polled driver for the OpenCores Ethernet MAC that Espressif's QEMU puts at 0x600C_D000 on
//! its `esp32c3` machine (`-nic user,model=open_eth`), as a smoltcp device.
//!
//! The MAC keeps 128 eight-byte buffer descriptors at base + 0x400: first the TX ring
//! (`TX_BD_NUM` of them), then the RX ring. Each holds `len << 16 | flags` and a buffer address
//! the MAC reads or writes directly (internal DRAM, no cache to manage on this chip).

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

const BASE: usize = 0x600C_D000;
const MODER: usize = 0x00;
const INT_SOURCE: usize = 0x04;
const INT_MASK: usize = 0x08;
const TX_BD_NUM: usize = 0x20;
const MAC_ADDR0: usize = 0x40;
const MAC_ADDR1: usize = 0x44;
const DESCRIPTORS: usize = 0x400;

const MODER_RXEN: u32 = 1 << 0;
const MODER_TXEN: u32 = 1 << 1;
const MODER_PRO: u32 = 1 << 5;
const MODER_RST: u32 = 1 << 11;
const MODER_FULLD: u32 = 1 << 10;
const MODER_CRCEN: u32 = 1 << 13;
const MODER_PAD: u32 = 1 << 15;

const TXD_RD: u32 = 1 << 15;
const TXD_WR: u32 = 1 << 13;
const TXD_PAD: u32 = 1 << 12;
const TXD_CRC: u32 = 1 << 11;
const RXD_E: u32 = 1 << 15;
const RXD_WR: u32 = 1 << 13;
/// The MAC stores the frame check sequence after the frame.
const FCS_LEN: usize = 4;

pub const N_TX: usize = 2;
pub const N_RX: usize = 16;
pub const BUF_LEN: usize = 1600;
pub const MTU: usize = 1514;

fn reg_write(offset: usize, value: u32) {
    // SAFETY: an OpenCores MAC register, word-aligned, inside the device's MMIO window.
    unsafe { ((BASE + offset) as *mut u32).write_volatile(value) }
}

fn desc_flags(index: usize) -> u32 {
    // SAFETY: descriptor `index` < 128, inside the descriptor window.
    unsafe { ((BASE + DESCRIPTORS + index * 8) as *const u32).read_volatile() }
}

fn desc_write(index: usize, len_flags: u32, buf: Option<u32>) {
    let at = BASE + DESCRIPTORS + index * 8;
    // SAFETY: descriptor `index` < 128, inside the descriptor window; the buffer address is
    // written before the flags that hand the descriptor to the MAC.
    unsafe {
        if let Some(ptr) = buf {
            ((at + 4) as *mut u32).write_volatile(ptr);
        }
        (at as *mut u32).write_volatile(len_flags);
    }
}

pub struct RxRing<'a> {
    bufs: &'a mut [[u8; BUF_LEN]; N_RX],
    next: usize,
}

pub struct TxRing<'a> {
    bufs: &'a mut [[u8; BUF_LEN]; N_TX],
    next: usize,
}

pub struct OpenEth<'a> {
    rx: RxRing<'a>,
    tx: TxRing<'a>,
}

impl<'a> OpenEth<'a> {
    /// Resets the MAC, sets its address and hands it the rings. The buffers must live as long
    /// as the MAC runs (the firmware's main loop never returns).
    pub fn new(mac: [u8; 6], rx: &'a mut [[u8; BUF_LEN]; N_RX], tx: &'a mut [[u8; BUF_LEN]; N_TX]) -> Self {
        reg_write(MODER, MODER_RST);
        reg_write(MODER, 0);
        reg_write(INT_MASK, 0);
        reg_write(INT_SOURCE, 0xFF);
        reg_write(TX_BD_NUM, N_TX as u32);
        reg_write(MAC_ADDR0, u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]));
        reg_write(MAC_ADDR1, u32::from_be_bytes([0, 0, mac[0], mac[1]]));
        for (i, b) in tx.iter().enumerate() {
            let wrap = if i == N_TX - 1 { TXD_WR } else { 0 };
            desc_write(i, wrap, Some(b.as_ptr() as u32));
        }
        for (i, b) in rx.iter().enumerate() {
            let wrap = if i == N_RX - 1 { RXD_WR } else { 0 };
            desc_write(N_TX + i, RXD_E | wrap, Some(b.as_ptr() as u32));
        }
        reg_write(MODER, MODER_RXEN | MODER_TXEN | MODER_PRO | MODER_FULLD | MODER_CRCEN | MODER_PAD);
        OpenEth { rx: RxRing { bufs: rx, next: 0 }, tx: TxRing { bufs: tx, next: 0 } }
    }
}

pub struct RxToken<'r, 'a> {
    ring: &'r mut RxRing<'a>,
}

pub struct TxToken<'r, 'a> {
    ring: &'r mut TxRing<'a>,
}

impl phy::RxToken for RxToken<'_, '_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let i = self.ring.next;
        let len = ((desc_flags(N_TX + i) >> 16) as usize).saturating_sub(FCS_LEN).min(BUF_LEN);
        let result = f(&self.ring.bufs[i][..len]);
        let wrap = if i == N_RX - 1 { RXD_WR } else { 0 };
        desc_write(N_TX + i, RXD_E | wrap, None);
        self.ring.next = (i + 1) % N_RX;
        result
    }
}

impl phy::TxToken for TxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let i = self.ring.next;
        let len = len.min(BUF_LEN);
        let result = f(&mut self.ring.bufs[i][..len]);
        let wrap = if i == N_TX - 1 { TXD_WR } else { 0 };
        desc_write(i, (len as u32) << 16 | TXD_RD | TXD_CRC | TXD_PAD | wrap, None);
        self.ring.next = (i + 1) % N_TX;
        result
    }
}

impl<'a> Device for OpenEth<'a> {
    type RxToken<'r>
        = RxToken<'r, 'a>
    where
        Self: 'r;
    type TxToken<'r>
        = TxToken<'r, 'a>
    where
        Self: 'r;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let rx_ready = desc_flags(N_TX + self.rx.next) & RXD_E == 0;
        let tx_free = desc_flags(self.tx.next) & TXD_RD == 0;
        (rx_ready && tx_free).then_some((RxToken { ring: &mut self.rx }, TxToken { ring: &mut self.tx }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        (desc_flags(self.tx.next) & TXD_RD == 0).then_some(TxToken { ring: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        // The MAC drops a frame that finds no empty receive descriptor, so smoltcp caps the TCP
        // window at this many full segments. Half the ring: a full window still leaves room for
        // the ARP, UDP and acknowledgement frames that arrive between two polls. (One segment, as
        // before, made every 1,474 bytes wait for an acknowledgement round trip: 1.2 s for a
        // 182 KB image on QEMU; 0.17 s with eight.)
        caps.max_burst_size = Some(N_RX / 2);
        caps
    }
}
