//! The self-test outcome an image declares about itself.
//!
//! otahil needs images that fail their self-test (to exercise rollback) and images that never
//! finish it (a hang or watchdog before the app confirms itself). The outcome is a property of
//! the image, so the emulator and the chip firmware read it the same way: a marker string in the
//! image's data. The chip firmware built with the matching feature embeds the marker and acts on
//! it; the emulator finds it by scanning the booted image.

use crate::image::{ImageSource, ReadFailed, contains};

/// Length of both markers.
pub const MARKER_LEN: usize = 22;

/// The markers are kept inverted (every bit flipped) in this crate, and turned back only at run
/// time: every firmware links the code that looks for them, and a verbatim copy in its read-only
/// data would make every image "declare" a failing self-test.
pub const FAIL_MARKER_INVERTED: [u8; MARKER_LEN] = invert(*b"otahil:self-test=fail;");
pub const HANG_MARKER_INVERTED: [u8; MARKER_LEN] = invert(*b"otahil:self-test=hang;");

/// Flips every bit; its own inverse. A `const fn`, so a build that *wants* a marker in its image
/// (the self-test-failing firmware) writes `static M: [u8; MARKER_LEN] = invert(FAIL_MARKER_INVERTED);`.
pub const fn invert(mut bytes: [u8; MARKER_LEN]) -> [u8; MARKER_LEN] {
    let mut i = 0;
    while i < MARKER_LEN {
        bytes[i] = !bytes[i];
        i += 1;
    }
    bytes
}

/// The marker, built at run time (`black_box` keeps the compiler from folding it into a constant).
fn restore(inverted: [u8; MARKER_LEN]) -> [u8; MARKER_LEN] {
    let mask = core::hint::black_box(0xFFu8);
    let mut out = inverted;
    for b in &mut out {
        *b ^= mask;
    }
    out
}

/// What the app's self-test does on the first boot of an image.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SelfTest {
    /// Passes: the boot guard confirms the image (VALID).
    #[default]
    Pass,
    /// Fails: the boot guard marks the image INVALID and reboots into the previous slot.
    Fail,
    /// Never finishes: the image stays PENDING_VERIFY until a reset (then ABORTED).
    Hang,
}

impl SelfTest {
    /// The bytes an image carries to declare this outcome (`None` for a passing self-test).
    pub fn marker(self) -> Option<[u8; MARKER_LEN]> {
        match self {
            SelfTest::Pass => None,
            SelfTest::Fail => Some(restore(FAIL_MARKER_INVERTED)),
            SelfTest::Hang => Some(restore(HANG_MARKER_INVERTED)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SelfTest::Pass => "pass",
            SelfTest::Fail => "fail",
            SelfTest::Hang => "hang",
        }
    }

    /// The outcome declared by the first `len` bytes of an image.
    pub fn declared_by<S: ImageSource>(src: &mut S, len: u32) -> Result<Self, ReadFailed> {
        if contains(src, len, &restore(FAIL_MARKER_INVERTED))? {
            Ok(SelfTest::Fail)
        } else if contains(src, len, &restore(HANG_MARKER_INVERTED))? {
            Ok(SelfTest::Hang)
        } else {
            Ok(SelfTest::Pass)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_differ() {
        assert_eq!(&SelfTest::Fail.marker().unwrap(), b"otahil:self-test=fail;");
        assert_eq!(&SelfTest::Hang.marker().unwrap(), b"otahil:self-test=hang;");
        assert_eq!(invert(FAIL_MARKER_INVERTED), *b"otahil:self-test=fail;");
        assert!(!FAIL_MARKER_INVERTED.windows(6).any(|w| w == b"otahil"));
    }
}
