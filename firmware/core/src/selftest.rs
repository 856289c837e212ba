//! The self-test outcome an image declares about itself.
//!
//! otahil needs images that fail their self-test (to exercise rollback) and images that never
//! finish it (a hang or watchdog before the app confirms itself). The outcome is a property of
//! the image, so the emulator and the chip firmware read it the same way: a marker string in the
//! image's data. The chip firmware built with the matching feature embeds the marker and acts on
//! it; the emulator finds it by scanning the booted image.

use crate::image::{ImageSource, ReadFailed, contains};

pub const FAIL_MARKER: &[u8] = b"otahil:self-test=fail;";
pub const HANG_MARKER: &[u8] = b"otahil:self-test=hang;";

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
    pub fn marker(self) -> Option<&'static [u8]> {
        match self {
            SelfTest::Pass => None,
            SelfTest::Fail => Some(FAIL_MARKER),
            SelfTest::Hang => Some(HANG_MARKER),
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
        if contains(src, len, FAIL_MARKER)? {
            Ok(SelfTest::Fail)
        } else if contains(src, len, HANG_MARKER)? {
            Ok(SelfTest::Hang)
        } else {
            Ok(SelfTest::Pass)
        }
    }
}
