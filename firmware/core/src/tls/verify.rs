//! The server's certificate, checked the way a careful device does: the chain ends at the
//! provisioned CA, every signature verifies, the leaf is for server authentication and names the
//! host (DNS name or IP address), its dates hold when the device has a clock; then the handshake's
//! CertificateVerify signature is checked with the leaf's key.

use crate::proto::http_pull::TlsFailure;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use embedded_tls::Sha256;
use embedded_tls::{
    Aes128GcmSha256, CertificateEntryRef, CertificateRef, CertificateVerifyRef, TlsError, TlsVerifier,
};
use pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, ServerName, SignatureVerificationAlgorithm,
    UnixTime,
};
use sha2_10::Digest;

/// ECDSA on P-256 with SHA-256: the one signature the device verifies.
#[derive(Debug)]
struct EcdsaP256Sha256;

impl SignatureVerificationAlgorithm for EcdsaP256Sha256 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use p256::ecdsa::signature::Verifier;
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let signature = p256::ecdsa::DerSignature::try_from(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &signature).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        pki_types::alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        pki_types::alg_id::ECDSA_SHA256
    }
}

static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[&EcdsaP256Sha256];

/// Whether `host` is an IP address (no SNI, and the certificate must carry it as an IP SAN).
pub(super) fn is_ip_address(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<core::net::IpAddr>().is_ok()
}

fn failure(e: &webpki::Error) -> TlsFailure {
    match e {
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            TlsFailure::UnknownIssuer
        }
        webpki::Error::CertNotValidForName(_) => TlsFailure::WrongName,
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => TlsFailure::Expired,
        _ => TlsFailure::Handshake,
    }
}

/// Checks a chain (leaf first) against the CA, at `now` or, without a clock, at any time.
pub(super) fn check_chain(
    ca_der: &[u8],
    chain: &[&[u8]],
    host: &str,
    now_unix: Option<u64>,
) -> Result<(), TlsFailure> {
    let ca = CertificateDer::from(ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|_| TlsFailure::UnknownIssuer)?;
    let leaf_der = CertificateDer::from(*chain.first().ok_or(TlsFailure::Handshake)?);
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(|_| TlsFailure::Handshake)?;
    let intermediates: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|c| CertificateDer::from(*c)).collect();
    // Without a clock the dates are not checked (ESP-IDF's default): a date failure is retried
    // at the bound it names, so only a chain whose certificates share no valid moment fails.
    let mut at = now_unix.unwrap_or(0);
    let mut tries = if now_unix.is_some() { 1 } else { 4 };
    loop {
        let time = UnixTime::since_unix_epoch(core::time::Duration::from_secs(at));
        let verified = leaf.verify_for_usage(
            ALGORITHMS,
            core::slice::from_ref(&anchor),
            &intermediates,
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        );
        match verified {
            Ok(_) => break,
            Err(webpki::Error::CertNotValidYet { not_before, .. }) if tries > 1 => at = not_before.as_secs(),
            Err(webpki::Error::CertExpired { not_after, .. }) if tries > 1 => at = not_after.as_secs(),
            Err(e) => return Err(failure(&e)),
        }
        tries -= 1;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host).map_err(|_| TlsFailure::WrongName)?;
    leaf.verify_is_valid_for_subject_name(&name).map_err(|e| failure(&e))
}

/// `embedded-tls`'s verifier hook.
pub(super) struct PinnedVerifier {
    ca_der: Vec<u8>,
    now_unix: Option<u64>,
    host: String,
    /// The finding, for the link (the engine reports only "invalid certificate").
    refused: Rc<RefCell<Option<TlsFailure>>>,
    leaf: Option<Vec<u8>>,
    transcript: Option<Sha256>,
}

impl PinnedVerifier {
    pub(super) fn new(
        ca_der: Vec<u8>,
        now_unix: Option<u64>,
        host: String,
        refused: Rc<RefCell<Option<TlsFailure>>>,
    ) -> Self {
        PinnedVerifier { ca_der, now_unix, host, refused, leaf: None, transcript: None }
    }

    fn refuse(&self, why: TlsFailure) -> TlsError {
        *self.refused.borrow_mut() = Some(why);
        TlsError::InvalidCertificate
    }
}

/// The content TLS 1.3 signs in CertificateVerify (RFC 8446 §4.4.3).
fn certificate_verify_content(transcript_hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 34 + transcript_hash.len());
    m.resize(64, 0x20);
    m.extend_from_slice(b"TLS 1.3, server CertificateVerify\x00");
    m.extend_from_slice(transcript_hash);
    m
}

impl TlsVerifier<Aes128GcmSha256> for PinnedVerifier {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // The host is given at construction (IP addresses are not sent as SNI, but checked).
        Ok(())
    }

    fn verify_certificate(&mut self, transcript: &Sha256, cert: CertificateRef) -> Result<(), TlsError> {
        let mut chain: Vec<&[u8]> = Vec::new();
        for entry in cert.entries.iter() {
            match entry {
                CertificateEntryRef::X509(der) => chain.push(der),
                CertificateEntryRef::RawPublicKey(_) => return Err(self.refuse(TlsFailure::Handshake)),
            }
        }
        check_chain(&self.ca_der, &chain, &self.host, self.now_unix).map_err(|why| self.refuse(why))?;
        self.leaf = chain.first().map(|c| c.to_vec());
        self.transcript = Some(transcript.clone());
        Ok(())
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        use embedded_tls::SignatureScheme;
        let (Some(leaf), Some(transcript)) = (self.leaf.take(), self.transcript.take()) else {
            return Err(self.refuse(TlsFailure::Handshake));
        };
        if verify.signature_scheme != SignatureScheme::EcdsaSecp256r1Sha256 {
            return Err(self.refuse(TlsFailure::Handshake));
        }
        let leaf_der = CertificateDer::from(&leaf[..]);
        let leaf =
            webpki::EndEntityCert::try_from(&leaf_der).map_err(|_| self.refuse(TlsFailure::Handshake))?;
        let content = certificate_verify_content(&transcript.finalize());
        leaf.verify_signature(&EcdsaP256Sha256, &content, verify.signature)
            .map_err(|_| self.refuse(TlsFailure::Handshake))
    }
}
