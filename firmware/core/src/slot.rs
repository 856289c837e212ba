//! Boot candidates: how the bootloader indexes app slots and how logs name them. A leaf, so
//! the boot rules, the log catalogue and every update path can name a slot without knowing
//! each other.

use crate::partition::{Partition, PartitionTable};
use core::fmt;

/// A boot candidate, as the bootloader indexes them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum BootIndex {
    Factory,
    Ota(u8),
    Test,
}

impl BootIndex {
    pub fn partition(self, table: &PartitionTable) -> Option<&Partition> {
        match self {
            BootIndex::Factory => table.factory(),
            BootIndex::Ota(n) => table.ota(n),
            BootIndex::Test => table.test_app(),
        }
    }

    pub fn of(p: &Partition) -> Option<BootIndex> {
        if p.is_factory() {
            Some(BootIndex::Factory)
        } else if p.is_test() {
            Some(BootIndex::Test)
        } else {
            p.ota_slot().map(BootIndex::Ota)
        }
    }
}

/// Names a boot candidate the way logs show it: `factory`, `ota_1`, `test`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotName(pub BootIndex);

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            BootIndex::Factory => f.write_str("factory"),
            BootIndex::Ota(n) => write!(f, "ota_{n}"),
            BootIndex::Test => f.write_str("test"),
        }
    }
}
