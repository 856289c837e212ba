//! Flash access for the core: unaligned reads over `ReadNorFlash`, and a partition seen as an
//! [`ImageSource`].

use crate::image::{ImageSource, ReadFailed};
use crate::partition::Partition;
use embedded_storage::nor_flash::{NorFlashError, NorFlashErrorKind, ReadNorFlash};

/// A flash operation failed (the kind the driver reported).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlashError(pub NorFlashErrorKind);

impl FlashError {
    pub fn from_driver<E: NorFlashError>(e: E) -> Self {
        FlashError(e.kind())
    }
}

impl core::fmt::Display for FlashError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "flash operation failed: {:?}", self.0)
    }
}

/// Reads `buf.len()` bytes at `addr`, whatever the driver's `READ_SIZE` alignment.
pub fn read<F: ReadNorFlash>(flash: &mut F, addr: u32, buf: &mut [u8]) -> Result<(), FlashError> {
    let align = F::READ_SIZE as u32;
    if align <= 1 || (addr.is_multiple_of(align) && (buf.len() as u32).is_multiple_of(align)) {
        return flash.read(addr, buf).map_err(FlashError::from_driver);
    }
    let mut bounce = [0u8; 64];
    let mut done = 0usize;
    while done < buf.len() {
        let at = addr + done as u32;
        let start = at - at % align;
        let skip = (at - start) as usize;
        let want = (buf.len() - done).min(64 - skip);
        let span = crate::align_up((skip + want) as u32, align) as usize;
        flash.read(start, &mut bounce[..span]).map_err(FlashError::from_driver)?;
        buf[done..done + want].copy_from_slice(&bounce[skip..skip + want]);
        done += want;
    }
    Ok(())
}

/// A partition's bytes, readable as an image.
pub struct PartitionSource<'a, F> {
    pub flash: &'a mut F,
    pub offset: u32,
    pub size: u32,
}

impl<'a, F: ReadNorFlash> PartitionSource<'a, F> {
    pub fn new(flash: &'a mut F, partition: &Partition) -> Self {
        PartitionSource { flash, offset: partition.offset, size: partition.size }
    }
}

impl<F: ReadNorFlash> ImageSource for PartitionSource<'_, F> {
    fn len(&self) -> u32 {
        self.size
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ReadFailed> {
        read(self.flash, self.offset + offset, buf).map_err(|_| ReadFailed)
    }
}

#[cfg(test)]
pub(crate) mod ram {
    //! A RAM NOR flash with NOR semantics and an operation log, for the core's tests.
    use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
    use std::vec;
    use std::vec::Vec;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Op {
        Erase(u32),
        Program(u32, u32),
    }

    #[derive(Debug)]
    pub struct RamError;
    impl NorFlashError for RamError {
        fn kind(&self) -> NorFlashErrorKind {
            NorFlashErrorKind::Other
        }
    }

    pub struct RamFlash {
        pub data: Vec<u8>,
        pub ops: Vec<Op>,
        /// Fail every operation after this many (simulates a dead chip).
        pub fail_after: Option<usize>,
    }

    impl RamFlash {
        pub fn new(size: usize) -> Self {
            RamFlash { data: vec![0xFF; size], ops: Vec::new(), fail_after: None }
        }
        fn check(&self) -> Result<(), RamError> {
            match self.fail_after {
                Some(n) if self.ops.len() >= n => Err(RamError),
                _ => Ok(()),
            }
        }
    }

    impl ErrorType for RamFlash {
        type Error = RamError;
    }

    impl ReadNorFlash for RamFlash {
        const READ_SIZE: usize = 4;
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamError> {
            assert_eq!(offset % 4, 0, "unaligned read");
            assert_eq!(bytes.len() % 4, 0, "unaligned read length");
            let o = offset as usize;
            bytes.copy_from_slice(self.data.get(o..o + bytes.len()).ok_or(RamError)?);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.data.len()
        }
    }

    impl NorFlash for RamFlash {
        const WRITE_SIZE: usize = 4;
        const ERASE_SIZE: usize = 4096;
        fn erase(&mut self, from: u32, to: u32) -> Result<(), RamError> {
            self.check()?;
            assert_eq!(from % 4096, 0);
            assert_eq!(to % 4096, 0);
            for s in (from..to).step_by(4096) {
                self.ops.push(Op::Erase(s));
            }
            self.data[from as usize..to as usize].fill(0xFF);
            Ok(())
        }
        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamError> {
            self.check()?;
            assert_eq!(offset % 4, 0);
            assert_eq!(bytes.len() % 4, 0);
            self.ops.push(Op::Program(offset, bytes.len() as u32));
            for (d, b) in self.data[offset as usize..].iter_mut().zip(bytes) {
                *d &= *b;
            }
            Ok(())
        }
    }

    #[test]
    fn unaligned_reads() {
        let mut f = RamFlash::new(8192);
        for (i, b) in f.data.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut buf = [0u8; 150];
        super::read(&mut f, 3, &mut buf).unwrap();
        assert!(buf.iter().enumerate().all(|(i, &b)| b == (i + 3) as u8));
        let mut one = [0u8; 1];
        super::read(&mut f, 4095, &mut one).unwrap();
        assert_eq!(one[0], 0xFF);
    }
}
