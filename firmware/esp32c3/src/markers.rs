//! The self-test markers: a build with feature `selftest-fail` or `selftest-hang` carries the
//! marker string in its image data, which is what the boot guard reads (the same rule as the
//! emulator's fixtures). `ota-core` keeps the markers inverted, so other builds do not carry them.

use ota_core::selftest::{MARKER_LEN, invert};

#[cfg(feature = "selftest-fail")]
#[used]
static MARKER: [u8; MARKER_LEN] = invert(ota_core::selftest::FAIL_MARKER_INVERTED);

#[cfg(feature = "selftest-hang")]
#[used]
static MARKER: [u8; MARKER_LEN] = invert(ota_core::selftest::HANG_MARKER_INVERTED);

/// Keeps the marker in the image whatever the optimiser thinks.
pub fn keep() {
    #[cfg(any(feature = "selftest-fail", feature = "selftest-hang"))]
    core::hint::black_box(&MARKER);
    let _ = invert;
    let _ = MARKER_LEN;
}
