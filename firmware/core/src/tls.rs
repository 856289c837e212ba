//! The device's TLS client for HTTPS pulls, as a sans-IO link: ciphertext in from the TCP
//! connection, ciphertext out to it, plaintext to and from the HTTP client. The emulator and the
//! chip firmware run this same code, so both refuse the same certificates.
//!
//! The protocol engine is `embedded-tls` (TLS 1.3 only, `TLS_AES_128_GCM_SHA256`, key exchange on
//! secp256r1). It is written against async I/O traits; here its handshake and record layer run as
//! one future that is polled whenever bytes arrive, its socket being a pair of in-memory queues
//! (a read with nothing queued is `Pending`, so the future waits for the next
//! [`TlsLink::received`]). Certificates are checked by [`verify`] with `rustls-webpki` (chain to
//! the provisioned CA, the server-auth key usage, the host name or IP address, and dates when the
//! device has a clock), not by `embedded-tls`'s own checker, which knows no IP addresses.
//!
//! How this differs from ESP-IDF's default (`esp-tls` on mbedTLS, mqtt-https-pull.md §8): ESP-IDF
//! speaks TLS 1.2 (1.3 only with `CONFIG_MBEDTLS_SSL_PROTO_TLS1_3`) and accepts RSA and ECDSA
//! certificates; this client speaks TLS 1.3 only and verifies ECDSA P-256 certificates only, so a
//! TLS 1.2-only server or an RSA certificate fails the handshake here where ESP-IDF would connect.
//! Dates: ESP-IDF's default build does not check them (`MBEDTLS_HAVE_TIME_DATE` off, no clock);
//! this device checks them only when it is given a clock ([`Trust::now_unix`]).

mod pump;
#[cfg(test)]
mod tests;
mod verify;

use crate::proto::http_pull::TlsFailure;
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

/// The record buffer: the largest TLS record (2^14 bytes of plaintext plus expansion).
const READ_RECORD_BUFFER: usize = 16_640;
/// Outgoing records (an HTTP request fits one).
const WRITE_RECORD_BUFFER: usize = 4096;

/// What the device trusts, lent when a connection starts.
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    /// The CA certificate (DER) the server's chain must end at.
    pub ca_der: &'a [u8],
    /// The device's clock (seconds since 1970); `None`: certificate dates are not checked.
    pub now_unix: Option<u64>,
}

/// Where the link stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlsState {
    Handshaking,
    /// Handshake done, the server authenticated: plaintext flows.
    Open,
    /// The handshake failed (nothing was or will be given to the HTTP client).
    Failed(TlsFailure),
    /// The session ended after the handshake (close_notify, the TCP connection's end, or a
    /// record that did not decrypt): no more plaintext.
    Closed,
}

/// The queues between the link and the engine's future.
struct Pipe {
    /// Ciphertext from the server, not yet read by the engine.
    inbound: alloc::collections::VecDeque<u8>,
    /// The TCP connection ended: reads return end of stream once `inbound` is empty.
    peer_closed: bool,
    /// Ciphertext for the server.
    outbound: Vec<u8>,
    /// Plaintext for the server, not yet taken by the engine.
    to_send: Vec<u8>,
    /// Plaintext from the server.
    received: Vec<u8>,
    state: TlsState,
    /// Why the certificate was refused (the verifier's finding; the engine only says "invalid").
    refused: Option<TlsFailure>,
}

type Engine = Pin<Box<dyn Future<Output = ()>>>;

/// One TLS connection's client side.
pub struct TlsLink {
    pipe: Rc<RefCell<Pipe>>,
    engine: Option<Engine>,
}

impl TlsLink {
    /// Starts a handshake with `host` (a DNS name or an IP address, checked against the
    /// certificate; sent as SNI when it is a name). `seed` feeds the key exchange's randomness.
    /// The ClientHello is in [`TlsLink::take_outbound`] at once.
    pub fn start(host: &str, trust: Trust<'_>, seed: [u8; 32]) -> Self {
        let pipe = Rc::new(RefCell::new(Pipe {
            inbound: Default::default(),
            peer_closed: false,
            outbound: Vec::new(),
            to_send: Vec::new(),
            received: Vec::new(),
            state: TlsState::Handshaking,
            refused: None,
        }));
        let engine = pump::run(pipe.clone(), String::from(host), trust.ca_der.to_vec(), trust.now_unix, seed);
        let mut link = TlsLink { pipe, engine: Some(Box::pin(engine)) };
        link.drive();
        link
    }

    pub fn state(&self) -> TlsState {
        self.pipe.borrow().state
    }

    /// Ciphertext from the server.
    pub fn received(&mut self, ciphertext: &[u8]) {
        self.pipe.borrow_mut().inbound.extend(ciphertext);
        self.drive();
    }

    /// The TCP connection ended.
    pub fn peer_closed(&mut self) {
        self.pipe.borrow_mut().peer_closed = true;
        self.drive();
    }

    /// Plaintext for the server, queued: the engine writes it on [`TlsLink::flush`] (once the
    /// handshake is done). The session carries one request, written whole.
    pub fn send(&mut self, plaintext: &[u8]) {
        self.pipe.borrow_mut().to_send.extend_from_slice(plaintext);
    }

    /// Lets the engine write what was queued.
    pub fn flush(&mut self) {
        self.drive();
    }

    /// Ciphertext to write to the TCP connection.
    pub fn take_outbound(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.pipe.borrow_mut().outbound)
    }

    /// Plaintext the server sent.
    pub fn take_received(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.pipe.borrow_mut().received)
    }

    /// Runs the engine until it waits for bytes.
    fn drive(&mut self) {
        let Some(engine) = self.engine.as_mut() else { return };
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(()) = engine.as_mut().poll(&mut cx) {
            self.engine = None;
        }
    }
}
