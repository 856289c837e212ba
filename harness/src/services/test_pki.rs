//! The certificates a run's HTTPS firmware servers present, made fresh by the harness: a test CA
//! (the one provisioned into the device) and, for each certificate fault, a server configuration
//! the device must refuse, or (dates, without a clock) accept as ESP-IDF's default build does.
//! Keys are ECDSA P-256 (the device verifies no other); nothing is written to disk.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls::ServerConfig;
use std::net::IpAddr;
use std::sync::Arc;

/// The https servers a scenario names, by the placeholder that stands for each one's base URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// Signed by the test CA, naming the host as the device reaches it: the happy path.
    Trusted,
    /// The same names, signed by a CA the device was not given.
    UntrustedCa,
    /// Signed by the test CA for another name only.
    WrongName,
    /// Signed by the test CA, valid 2020 to 2021.
    Expired,
    /// The trusted certificate behind a server that speaks TLS 1.2 only (ESP-IDF's default
    /// version, which this device does not speak).
    Tls12Only,
}

impl CertKind {
    pub const ALL: [CertKind; 5] = [
        CertKind::Trusted,
        CertKind::UntrustedCa,
        CertKind::WrongName,
        CertKind::Expired,
        CertKind::Tls12Only,
    ];

    /// The placeholder a scenario writes for this server's base URL (`https://host:port`).
    pub fn placeholder(self) -> &'static str {
        match self {
            CertKind::Trusted => "{https}",
            CertKind::UntrustedCa => "{https_untrusted}",
            CertKind::WrongName => "{https_wrong_name}",
            CertKind::Expired => "{https_expired}",
            CertKind::Tls12Only => "{https_tls12}",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make the test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot configure the HTTPS server: {0}")]
    Tls(#[from] rustls::Error),
}

pub struct TestPki {
    ca_pem: String,
    configs: Vec<(CertKind, Arc<ServerConfig>)>,
}

fn make_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    ips: &[IpAddr],
    names: &[&str],
    years: Option<(i32, i32)>,
) -> Result<(Vec<u8>, KeyPair), rcgen::Error> {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, "otahil firmware server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if let Some((from, to)) = years {
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.der().to_vec(), key))
}

fn server_config(
    (cert, key): (Vec<u8>, KeyPair),
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    Ok(Arc::new(config))
}

impl TestPki {
    /// Certificates for a server the device reaches at any of `ips` (or as `localhost`).
    pub fn new(ips: &[IpAddr]) -> Result<TestPki, PkiError> {
        let (ca_pem, ca) = make_ca("otahil test CA")?;
        let (_, other) = make_ca("a CA the device does not trust")?;
        let names = ["localhost"];
        let both = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
        let configs = vec![
            (CertKind::Trusted, server_config(leaf(&ca, ips, &names, None)?, both)?),
            (CertKind::UntrustedCa, server_config(leaf(&other, ips, &names, None)?, both)?),
            (CertKind::WrongName, server_config(leaf(&ca, &[], &["ota.invalid"], None)?, both)?),
            (CertKind::Expired, server_config(leaf(&ca, ips, &names, Some((2020, 2021)))?, both)?),
            (CertKind::Tls12Only, server_config(leaf(&ca, ips, &names, None)?, &[&rustls::version::TLS12])?),
        ];
        Ok(TestPki { ca_pem, configs })
    }

    /// The CA certificate the device is provisioned with.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn server_config(&self, kind: CertKind) -> Arc<ServerConfig> {
        self.configs.iter().find(|(k, _)| *k == kind).map(|(_, c)| c.clone()).expect("every kind is made")
    }
}
