//! The TLS link against rustls's server, in memory: what a careful device accepts and refuses.

use super::*;
use crate::pem::{PemError, decode_certificate};
use crate::proto::mqtt_pull::settings::MAX_CA_DER;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::ServerConnection;
use std::io::{Read, Write};
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

struct Ca {
    der: Vec<u8>,
    pem: std::string::String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<std::string::String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { der: cert.der().to_vec(), pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A server certificate for `sans` (IP addresses or names), valid in `years` (or now).
fn leaf(ca: &Ca, sans: &[&str], years: Option<(i32, i32)>) -> (Vec<u8>, KeyPair) {
    let mut params = CertificateParams::new(Vec::<std::string::String>::new()).unwrap();
    for s in sans {
        params.subject_alt_names.push(match s.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*s).try_into().unwrap()),
        });
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if let Some((from, to)) = years {
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().to_vec(), key)
}

fn server(
    cert: Vec<u8>,
    key: &KeyPair,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ServerConnection {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    ServerConnection::new(Arc::new(config)).unwrap()
}

/// Moves bytes both ways until neither side has any to give.
fn exchange(link: &mut TlsLink, server: &mut ServerConnection) {
    for _ in 0..32 {
        let to_server = link.take_outbound();
        let mut moved = !to_server.is_empty();
        if moved {
            server.read_tls(&mut &to_server[..]).unwrap();
            if server.process_new_packets().is_err() {
                let mut alert = Vec::new();
                let _ = server.write_tls(&mut alert);
                link.received(&alert);
                return;
            }
        }
        let mut to_client = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut to_client).unwrap();
        }
        if !to_client.is_empty() {
            moved = true;
            link.received(&to_client);
        }
        if !moved {
            return;
        }
    }
    panic!("the handshake did not settle");
}

fn trust(ca: &Ca) -> Trust<'_> {
    Trust { ca_der: &ca.der, now_unix: None }
}

const NOW_2026: u64 = 1_796_000_000;

#[test]
fn a_request_and_its_response_cross_a_verified_session() {
    let ca = ca("otahil test CA");
    let (cert, key) = leaf(&ca, &["127.0.0.1", "ota.local"], None);
    let mut s = server(cert, &key, &[&rustls::version::TLS13]);
    let mut link = TlsLink::start("127.0.0.1", trust(&ca), [7; 32]);
    assert_eq!(link.state(), TlsState::Handshaking);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Open);
    assert_eq!(s.server_name(), None, "an IP address is not sent as SNI");

    link.send(b"GET /fw/v2.bin ");
    link.send(b"HTTP/1.1\r\n\r\n");
    link.flush();
    exchange(&mut link, &mut s);
    let mut request = vec![0u8; 64];
    let n = s.reader().read(&mut request).unwrap();
    assert_eq!(&request[..n], b"GET /fw/v2.bin HTTP/1.1\r\n\r\n");

    let body = vec![0x5a; 40_000];
    s.writer().write_all(&body).unwrap();
    s.send_close_notify();
    exchange(&mut link, &mut s);
    assert_eq!(link.take_received(), body, "records of 16 KiB and the rest");
    assert_eq!(link.state(), TlsState::Closed, "close_notify ends the session");
}

#[test]
fn a_dns_name_goes_as_sni_and_must_be_in_the_certificate() {
    let ca = ca("otahil test CA");
    let (cert, key) = leaf(&ca, &["ota.local"], None);
    let mut s = server(cert.clone(), &key, &[&rustls::version::TLS13]);
    let mut link = TlsLink::start("ota.local", trust(&ca), [1; 32]);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Open);
    assert_eq!(s.server_name(), Some("ota.local"));

    let mut s = server(cert, &key, &[&rustls::version::TLS13]);
    let mut link = TlsLink::start("127.0.0.1", trust(&ca), [1; 32]);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Failed(TlsFailure::WrongName));
    assert!(link.take_received().is_empty());
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let ours = ca("otahil test CA");
    let theirs = ca("someone else's CA");
    let (cert, key) = leaf(&theirs, &["127.0.0.1"], None);
    let mut s = server(cert, &key, &[&rustls::version::TLS13]);
    let mut link = TlsLink::start("127.0.0.1", trust(&ours), [2; 32]);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Failed(TlsFailure::UnknownIssuer));
    // A session that failed takes no plaintext and sends none.
    link.send(b"GET / HTTP/1.1\r\n\r\n");
    link.flush();
    assert!(link.take_outbound().is_empty());
}

#[test]
fn dates_count_only_when_the_device_has_a_clock() {
    let ca = ca("otahil test CA");
    let (cert, key) = leaf(&ca, &["127.0.0.1"], Some((2020, 2021)));
    let mut s = server(cert.clone(), &key, &[&rustls::version::TLS13]);
    let mut link = TlsLink::start("127.0.0.1", trust(&ca), [3; 32]);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Open, "no clock: an expired certificate passes, as on ESP-IDF");

    let mut s = server(cert, &key, &[&rustls::version::TLS13]);
    let clocked = Trust { now_unix: Some(NOW_2026), ..trust(&ca) };
    let mut link = TlsLink::start("127.0.0.1", clocked, [3; 32]);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Failed(TlsFailure::Expired));

    let (cert, key) = leaf(&ca, &["127.0.0.1"], Some((2025, 2030)));
    let mut s = server(cert, &key, &[&rustls::version::TLS13]);
    let mut link = TlsLink::start("127.0.0.1", clocked, [3; 32]);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Open);
}

#[test]
fn a_tls_1_2_only_server_fails_the_handshake() {
    let ca = ca("otahil test CA");
    let (cert, key) = leaf(&ca, &["127.0.0.1"], None);
    let mut s = server(cert, &key, &[&rustls::version::TLS12]);
    let mut link = TlsLink::start("127.0.0.1", trust(&ca), [4; 32]);
    exchange(&mut link, &mut s);
    assert_eq!(link.state(), TlsState::Failed(TlsFailure::Handshake));
}

#[test]
fn a_plain_http_server_or_an_early_close_fails_the_handshake() {
    let ca = ca("otahil test CA");
    let mut link = TlsLink::start("127.0.0.1", trust(&ca), [5; 32]);
    assert!(!link.take_outbound().is_empty(), "the ClientHello");
    link.received(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(link.state(), TlsState::Failed(TlsFailure::Handshake));

    let mut link = TlsLink::start("127.0.0.1", trust(&ca), [5; 32]);
    link.peer_closed();
    assert_eq!(link.state(), TlsState::Failed(TlsFailure::Handshake));
}

#[test]
fn a_connection_cut_mid_body_ends_the_session_with_what_arrived() {
    let ca = ca("otahil test CA");
    let (cert, key) = leaf(&ca, &["127.0.0.1"], None);
    let mut s = server(cert, &key, &[&rustls::version::TLS13]);
    let mut link = TlsLink::start("127.0.0.1", trust(&ca), [6; 32]);
    exchange(&mut link, &mut s);
    link.send(b"GET / HTTP/1.1\r\n\r\n");
    link.flush();
    exchange(&mut link, &mut s);
    s.writer().write_all(&[1u8; 3000]).unwrap();
    let mut records = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut records).unwrap();
    }
    // Half a record, then the TCP connection ends (no close_notify).
    link.received(&records[..records.len() - 100]);
    link.peer_closed();
    assert_eq!(link.state(), TlsState::Closed);
    assert!(link.take_received().is_empty(), "a record that did not arrive whole gives nothing");
}

#[test]
fn a_provisioned_pem_decodes_to_the_ca_der() {
    let ca = ca("otahil test CA");
    let mut der = [0u8; MAX_CA_DER];
    let n = decode_certificate(&ca.pem, &mut der).unwrap();
    assert_eq!(&der[..n], &ca.der[..]);
    assert_eq!(decode_certificate("no pem here", &mut der), Err(PemError::NoCertificate));
    let bad = "-----BEGIN CERTIFICATE-----\nMII*\n-----END CERTIFICATE-----\n";
    assert_eq!(decode_certificate(bad, &mut der), Err(PemError::Base64));
    assert_eq!(decode_certificate(&ca.pem, &mut [0u8; 16]), Err(PemError::TooLong));
}
