//! The device the update-path targets write: a 1 MiB flash with v1 running from ota_0.

use std::sync::LazyLock;

pub const CSV: &str =
    "otadata, data, ota, , 0x2000\napp0, app, ota_0, , 0x70000\napp1, app, ota_1, , 0x70000\n";

/// The flash before each input: table, otadata selecting ota_0, v1 in ota_0.
pub static BASE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let table = ota_core::partition_csv::parse_csv(CSV).unwrap();
    let mut spec = ota_core::image_builder::ImageSpec::new("fuzz", "1.0.0");
    spec.payload_len = 1000;
    let mut app = vec![0; spec.image_len()];
    ota_core::image_builder::build(&spec, &mut app).unwrap();
    let mut image = ota_emu::mkflash::merged_image(&table, &app, 1 << 20).unwrap();
    image[0x9000..0x9020]
        .copy_from_slice(&ota_core::otadata::OtaEntry::new(1, ota_core::otadata::OtaState::Valid).to_bytes());
    image
});

/// A fixed-seed generator for nonces (the targets that answer challenges use it).
#[allow(dead_code)]
pub struct Lcg(pub u64);

#[allow(dead_code)]
impl Lcg {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
    }
}

/// How many HTTP/1.1 answers a page server's bytes on one connection hold; they must begin
/// with one.
#[allow(dead_code)]
pub fn http_answers(sent: &[u8]) -> usize {
    assert!(sent.starts_with(b"HTTP/1.1 "), "not an HTTP answer: {:?}", &sent[..sent.len().min(40)]);
    sent.windows(9).filter(|w| w == b"HTTP/1.1 ").count()
}
