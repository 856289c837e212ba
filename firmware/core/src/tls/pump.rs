//! `embedded-tls` driven over the link's queues: the handshake, one request out, then the
//! response in until the session ends.

use super::verify::{PinnedVerifier, is_ip_address};
use super::{Pipe, READ_RECORD_BUFFER, TlsState, WRITE_RECORD_BUFFER};
use crate::proto::http_pull::TlsFailure;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::poll_fn;
use core::task::Poll;
use embedded_tls::{
    Aes128GcmSha256, CryptoProvider, TlsConfig, TlsConnection, TlsContext, TlsError, TlsVerifier,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRngCore, SeedableRng};

/// The engine's socket: the link's queues.
struct PipeSocket(Rc<RefCell<Pipe>>);

/// The queues never fail; the type exists for the I/O traits.
#[derive(Debug)]
pub(super) struct PipeError;

impl core::fmt::Display for PipeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TLS pipe")
    }
}

impl core::error::Error for PipeError {}

impl embedded_io::Error for PipeError {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::Other
    }
}

impl embedded_io::ErrorType for PipeSocket {
    type Error = PipeError;
}

impl embedded_io_async::Read for PipeSocket {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, PipeError> {
        poll_fn(|_| {
            let mut pipe = self.0.borrow_mut();
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if !pipe.inbound.is_empty() {
                let n = buf.len().min(pipe.inbound.len());
                for (dst, src) in buf.iter_mut().zip(pipe.inbound.drain(..n)) {
                    *dst = src;
                }
                return Poll::Ready(Ok(n));
            }
            if pipe.peer_closed { Poll::Ready(Ok(0)) } else { Poll::Pending }
        })
        .await
    }
}

impl embedded_io_async::Write for PipeSocket {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, PipeError> {
        self.0.borrow_mut().outbound.extend_from_slice(buf);
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), PipeError> {
        Ok(())
    }
}

struct Provider {
    rng: ChaCha20Rng,
    verifier: PinnedVerifier,
}

impl CryptoProvider for Provider {
    type CipherSuite = Aes128GcmSha256;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Aes128GcmSha256>, TlsError> {
        Ok(&mut self.verifier)
    }
}

/// The whole session as one future.
pub(super) async fn run(
    pipe: Rc<RefCell<Pipe>>,
    host: String,
    ca_der: Vec<u8>,
    now_unix: Option<u64>,
    seed: [u8; 32],
) {
    let mut read_buf = vec![0u8; READ_RECORD_BUFFER];
    let mut write_buf = vec![0u8; WRITE_RECORD_BUFFER];
    let refused = Rc::new(RefCell::new(None));
    let provider = Provider {
        rng: ChaCha20Rng::from_seed(seed),
        verifier: PinnedVerifier::new(ca_der, now_unix, host.clone(), refused.clone()),
    };
    // SNI carries names only (RFC 6066 §3); an IP address is checked against the certificate all
    // the same, by the verifier.
    let config =
        if is_ip_address(&host) { TlsConfig::new() } else { TlsConfig::new().with_server_name(&host) };
    let mut conn: TlsConnection<'_, PipeSocket, Aes128GcmSha256> =
        TlsConnection::new(PipeSocket(pipe.clone()), &mut read_buf, &mut write_buf);

    if let Err(e) = conn.open(TlsContext::new(&config, provider)).await {
        let why = refused.borrow().unwrap_or(match e {
            TlsError::InvalidCertificate | TlsError::InvalidSignature => TlsFailure::UnknownIssuer,
            _ => TlsFailure::Handshake,
        });
        let mut p = pipe.borrow_mut();
        p.state = TlsState::Failed(why);
        p.refused = Some(why);
        return;
    }
    pipe.borrow_mut().state = TlsState::Open;

    // One request (the HTTP client sends it whole, then only reads).
    let request = poll_fn(|_| {
        let mut p = pipe.borrow_mut();
        if !p.to_send.is_empty() {
            Poll::Ready(Some(core::mem::take(&mut p.to_send)))
        } else if p.peer_closed {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await;
    if let Some(request) = request {
        let mut rest = &request[..];
        while !rest.is_empty() {
            match conn.write(rest).await {
                Ok(n) => rest = &rest[n..],
                Err(_) => break,
            }
        }
        let _ = conn.flush().await;
    }

    let mut chunk = [0u8; 1024];
    loop {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => pipe.borrow_mut().received.extend_from_slice(&chunk[..n]),
        }
    }
    pipe.borrow_mut().state = TlsState::Closed;
}
