//! The self-test markers: a build with feature `selftest-fail` or `selftest-hang` carries the
//! marker string in its image data, which is what the boot guard reads (the same rule as the
//! emulator's fixtures). `ota-core` keeps the markers inverted, so other builds do not carry them.

use ota_core::proto::homie;
use ota_core::selftest::{MARKER_LEN, invert};

#[cfg(feature = "selftest-fail")]
#[used]
static MARKER: [u8; MARKER_LEN] = invert(ota_core::selftest::FAIL_MARKER_INVERTED);

#[cfg(feature = "selftest-hang")]
#[used]
static MARKER: [u8; MARKER_LEN] = invert(ota_core::selftest::HANG_MARKER_INVERTED);

/// Homie's firmware markers: a server (`homie-ota`) reads the name and version from the image.
#[used]
static HOMIE_NAME: [u8; "otahil-fw".len() + 10] =
    homie::framed(homie::NAME_LEFT, "otahil-fw", homie::NAME_RIGHT);
#[used]
static HOMIE_VERSION: [u8; crate::VERSION.len() + 10] =
    homie::framed(homie::VERSION_LEFT, crate::VERSION, homie::VERSION_RIGHT);
#[used]
static HOMIE_SIGNATURE: [u8; 18] = homie::SIGNATURE;

/// Keeps the markers in the image whatever the optimiser thinks.
pub fn keep() {
    core::hint::black_box(&HOMIE_NAME);
    core::hint::black_box(&HOMIE_VERSION);
    core::hint::black_box(&HOMIE_SIGNATURE);
    #[cfg(any(feature = "selftest-fail", feature = "selftest-hang"))]
    core::hint::black_box(&MARKER);
    let _ = invert;
    let _ = MARKER_LEN;
}
