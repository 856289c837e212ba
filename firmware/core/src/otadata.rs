//! otadata: two `esp_ota_select_entry_t` copies, one per 4 KiB sector of the `data/ota` partition.

use crate::crc::otadata_crc;
use core::fmt;

pub const ENTRY_LEN: usize = 32;
/// `ota_seq` of an erased entry.
pub const SEQ_EMPTY: u32 = 0xFFFF_FFFF;

/// `esp_ota_img_states_t`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum OtaState {
    New,
    PendingVerify,
    Valid,
    Invalid,
    Aborted,
    Undefined,
    /// A value ESP-IDF does not define (a torn write can produce one).
    Other(u32),
}

impl OtaState {
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => OtaState::New,
            1 => OtaState::PendingVerify,
            2 => OtaState::Valid,
            3 => OtaState::Invalid,
            4 => OtaState::Aborted,
            0xFFFF_FFFF => OtaState::Undefined,
            other => OtaState::Other(other),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            OtaState::New => 0,
            OtaState::PendingVerify => 1,
            OtaState::Valid => 2,
            OtaState::Invalid => 3,
            OtaState::Aborted => 4,
            OtaState::Undefined => 0xFFFF_FFFF,
            OtaState::Other(v) => v,
        }
    }

    /// ESP-IDF's name, e.g. `PENDING_VERIFY`.
    pub fn name(self) -> &'static str {
        match self {
            OtaState::New => "NEW",
            OtaState::PendingVerify => "PENDING_VERIFY",
            OtaState::Valid => "VALID",
            OtaState::Invalid => "INVALID",
            OtaState::Aborted => "ABORTED",
            OtaState::Undefined => "UNDEFINED",
            OtaState::Other(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for OtaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtaState::Other(v) => write!(f, "UNKNOWN(0x{v:08x})"),
            s => f.write_str(s.name()),
        }
    }
}

/// One `esp_ota_select_entry_t`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OtaEntry {
    pub seq: u32,
    /// Unused by selection; written back as read (normally all `FF`).
    pub seq_label: [u8; 20],
    pub state: OtaState,
    pub crc: u32,
}

impl OtaEntry {
    /// A fresh entry with the right CRC and an `FF` label.
    pub fn new(seq: u32, state: OtaState) -> Self {
        OtaEntry { seq, seq_label: [0xFF; 20], state, crc: otadata_crc(seq) }
    }

    pub fn parse(bytes: &[u8; ENTRY_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut seq_label = [0u8; 20];
        seq_label.copy_from_slice(&bytes[4..24]);
        OtaEntry { seq: u32_at(0), seq_label, state: OtaState::from_u32(u32_at(24)), crc: u32_at(28) }
    }

    pub fn to_bytes(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..4].copy_from_slice(&self.seq.to_le_bytes());
        out[4..24].copy_from_slice(&self.seq_label);
        out[24..28].copy_from_slice(&self.state.to_u32().to_le_bytes());
        out[28..32].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    pub fn crc_ok(&self) -> bool {
        self.crc == otadata_crc(self.seq)
    }

    /// `bootloader_common_ota_select_invalid`: empty, INVALID or ABORTED (CRC not considered).
    pub fn is_invalid(&self) -> bool {
        self.seq == SEQ_EMPTY || matches!(self.state, OtaState::Invalid | OtaState::Aborted)
    }

    /// `bootloader_common_ota_select_valid`: not invalid and the CRC matches.
    pub fn is_valid(&self) -> bool {
        !self.is_invalid() && self.crc_ok()
    }

    /// Erased, or its CRC is wrong: what the bootloader treats as "initial" otadata.
    pub fn is_uninitialised(&self) -> bool {
        self.seq == SEQ_EMPTY || !self.crc_ok()
    }
}

/// Both copies as read from flash.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OtaData {
    pub entries: [OtaEntry; 2],
}

impl OtaData {
    /// Decodes the two copies from the first 32 bytes of each sector.
    pub fn parse(copy0: &[u8; ENTRY_LEN], copy1: &[u8; ENTRY_LEN]) -> Self {
        OtaData { entries: [OtaEntry::parse(copy0), OtaEntry::parse(copy1)] }
    }

    /// The active copy: the valid one with the larger `seq` (tie → copy 0), if any.
    pub fn active(&self) -> Option<usize> {
        let [a, b] = &self.entries;
        match (a.is_valid(), b.is_valid()) {
            (true, true) => Some(if b.seq > a.seq { 1 } else { 0 }),
            (true, false) => Some(0),
            (false, true) => Some(1),
            (false, false) => None,
        }
    }

    /// Both copies are "invalid" in the bootloader's sense.
    pub fn both_invalid(&self) -> bool {
        self.entries.iter().all(OtaEntry::is_invalid)
    }

    /// Both copies are empty or fail their CRC (the bootloader's "initial" fix-up case).
    pub fn both_uninitialised(&self) -> bool {
        self.entries.iter().all(OtaEntry::is_uninitialised)
    }

    /// The copy and sequence number `esp_ota_set_boot_partition(ota_k)` writes (v5.5.5).
    pub fn next_for_slot(&self, slot: u8, ota_count: u8) -> (usize, u32) {
        let n = ota_count.max(1) as u32;
        match self.active() {
            Some(active) => {
                let current = self.entries[active].seq;
                let mut seq = (slot as u32 % n) + 1;
                while seq < current {
                    seq += n;
                }
                // Equal to `current` would mean the same slot: the formula's `≥ S` picks it,
                // as IDF does (it then writes the other copy with the same seq).
                (1 - active, seq)
            }
            None => (0, slot as u32 + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 32] {
        let clean: std::string::String = s.split_whitespace().collect();
        let mut out = [0u8; 32];
        crate::hex::decode(clean.as_bytes(), &mut out).unwrap();
        out
    }

    #[test]
    fn spec_worked_entries() {
        let cases = [
            (
                OtaEntry::new(1, OtaState::Valid),
                "01000000 ffffffffffffffffffffffffffffffffffffffff 02000000 9a984347",
            ),
            (
                OtaEntry::new(2, OtaState::New),
                "02000000 ffffffffffffffffffffffffffffffffffffffff 00000000 7437f655",
            ),
            (
                OtaEntry::new(2, OtaState::Undefined),
                "02000000 ffffffffffffffffffffffffffffffffffffffff ffffffff 7437f655",
            ),
            (
                OtaEntry::new(2, OtaState::PendingVerify),
                "02000000 ffffffffffffffffffffffffffffffffffffffff 01000000 7437f655",
            ),
            (
                OtaEntry::new(2, OtaState::Aborted),
                "02000000 ffffffffffffffffffffffffffffffffffffffff 04000000 7437f655",
            ),
            (
                OtaEntry::new(3, OtaState::New),
                "03000000 ffffffffffffffffffffffffffffffffffffffff 00000000 11504aed",
            ),
        ];
        for (entry, bytes) in cases {
            assert_eq!(entry.to_bytes(), hex(bytes));
            assert_eq!(OtaEntry::parse(&hex(bytes)), entry);
        }
    }

    #[test]
    fn validity_rules() {
        let erased = OtaEntry::parse(&[0xFF; 32]);
        assert!(erased.is_invalid() && !erased.is_valid() && erased.is_uninitialised());
        assert_eq!(erased.state, OtaState::Undefined);
        let mut bad_crc = OtaEntry::new(5, OtaState::Valid);
        bad_crc.crc ^= 1;
        assert!(!bad_crc.is_invalid() && !bad_crc.is_valid() && bad_crc.is_uninitialised());
        assert!(!OtaEntry::new(1, OtaState::Aborted).is_valid());
        assert!(!OtaEntry::new(1, OtaState::Invalid).is_valid());
        for s in [OtaState::New, OtaState::PendingVerify, OtaState::Valid, OtaState::Undefined] {
            assert!(OtaEntry::new(1, s).is_valid());
        }
        assert_eq!(OtaState::from_u32(7), OtaState::Other(7));
        assert_eq!(std::format!("{}", OtaState::Other(7)), "UNKNOWN(0x00000007)");
    }

    #[test]
    fn active_copy_and_next_seq() {
        let empty = OtaEntry::parse(&[0xFF; 32]);
        let d = OtaData { entries: [empty, empty] };
        assert_eq!(d.active(), None);
        assert_eq!(d.next_for_slot(1, 2), (0, 2));
        // Spec: ota_0 active with seq 1 → ota_1 writes copy 1 seq 2; → ota_0 copy 0 seq 3; → ota_1 copy 1 seq 4.
        let d = OtaData { entries: [OtaEntry::new(1, OtaState::Valid), empty] };
        assert_eq!(d.next_for_slot(1, 2), (1, 2));
        let d = OtaData { entries: [OtaEntry::new(1, OtaState::Valid), OtaEntry::new(2, OtaState::Valid)] };
        assert_eq!(d.active(), Some(1));
        assert_eq!(d.next_for_slot(0, 2), (0, 3));
        let d = OtaData { entries: [OtaEntry::new(3, OtaState::Valid), OtaEntry::new(2, OtaState::Valid)] };
        assert_eq!(d.next_for_slot(1, 2), (1, 4));
        // Tie → copy 0.
        let d = OtaData { entries: [OtaEntry::new(2, OtaState::Valid), OtaEntry::new(2, OtaState::Valid)] };
        assert_eq!(d.active(), Some(0));
        // An aborted copy is ignored: the other one is active.
        let d = OtaData { entries: [OtaEntry::new(1, OtaState::Valid), OtaEntry::new(2, OtaState::Aborted)] };
        assert_eq!(d.active(), Some(0));
    }
}
