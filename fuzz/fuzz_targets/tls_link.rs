//! The device's TLS link (ota-core's `tls`: embedded-tls's engine and the webpki check) under
//! arbitrary server bytes in arbitrary pieces, with the TCP end anywhere. Properties: no panic;
//! the session never opens (bytes that do not come from a server holding a key certified by the
//! device's CA cannot authenticate one), so no plaintext ever reaches the pull client; after a
//! failure nothing more is sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_core::tls::{TlsLink, TlsState, Trust};

/// A CA (DER of a self-signed P-256 certificate is not needed: nothing random signs for it).
const CA: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x00];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let host = if flags & 1 == 0 { "10.0.2.2" } else { "ota.example.com" };
    let trust = Trust { ca_der: CA, now_unix: (flags & 2 != 0).then_some(1_796_000_000) };
    let mut link = TlsLink::start(host, trust, [flags; 32]);
    assert!(!link.take_outbound().is_empty(), "a ClientHello");
    link.send(b"GET / HTTP/1.1\r\n\r\n");
    while let Some((&len, tail)) = rest.split_first() {
        if len == 0 {
            link.peer_closed();
            rest = tail;
            continue;
        }
        let n = (len as usize).min(tail.len());
        link.received(&tail[..n]);
        link.flush();
        rest = &tail[n..];
        let state = link.state();
        assert!(
            !matches!(state, TlsState::Open | TlsState::Closed),
            "authenticated by random bytes: {state:?}"
        );
        assert!(link.take_received().is_empty(), "plaintext without a session");
        let sent = link.take_outbound();
        if matches!(state, TlsState::Failed(_)) {
            assert!(sent.is_empty() || sent[0] == 0x15, "only an alert after a failure");
        }
    }
});
