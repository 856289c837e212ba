//! What a failed pull says in the device's log: one clause per reason, with the numbers that
//! tell one server fault from another (bytes received, the status, the chip id found).

use super::response::{BodyError, HeadError};
use super::{ConnectError, PullError, TlsFailure};
use core::fmt;

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::UnknownIssuer => "certificate not signed by a trusted CA",
            TlsFailure::WrongName => "certificate does not name the host",
            TlsFailure::Expired => "certificate outside its validity period",
            TlsFailure::Handshake => "TLS handshake failed",
            TlsFailure::NoCa => "no CA certificate to check the server against",
        })
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Dns => f.write_str("host name did not resolve"),
            ConnectError::Refused => f.write_str("connection refused"),
            ConnectError::Timeout => f.write_str("connection timed out"),
            ConnectError::Tls(t) => t.fmt(f),
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadError::TooLong => "response head too long",
            HeadError::StatusLine => "no HTTP status line",
            HeadError::Header => "malformed header",
            HeadError::Encoding => "unsupported Transfer-Encoding",
        })
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Chunk => f.write_str("malformed chunk"),
        }
    }
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PullError::BadUrl(e) => e.fmt(f),
            PullError::Connect(e) => e.fmt(f),
            PullError::HeadTimeout => f.write_str("no response head in time"),
            PullError::ClosedInHead => f.write_str("connection closed before the response head"),
            PullError::Head(e) => e.fmt(f),
            PullError::Status(code) => write!(f, "HTTP status {code}"),
            PullError::NotModified => f.write_str("HTTP status 304"),
            PullError::RedirectWithoutLocation => f.write_str("redirect without Location"),
            PullError::RedirectDowngrade => f.write_str("redirect from https to http refused"),
            PullError::TooManyRedirects => f.write_str("too many redirects"),
            PullError::ChipId { found } => write!(f, "Mismatch chip id, expected 5, found {found}"),
            PullError::ImageTooShort { received } => write!(f, "image ended after {received} bytes"),
            PullError::AppDesc => f.write_str("no app descriptor in the image"),
            PullError::SameVersion => f.write_str("the running version again"),
            PullError::Downgrade => f.write_str("an older version than the running one"),
            PullError::Truncated { received } => write!(f, "body ended after {received} bytes"),
            PullError::Stalled { received } => write!(f, "body stalled after {received} bytes"),
            PullError::Body(e) => e.fmt(f),
            PullError::Ota(e) => e.fmt(f),
            PullError::TooLessSpace { length } => write!(f, "{length} bytes do not fit"),
            PullError::NoSize => f.write_str("no Content-Length"),
            PullError::FaultyMd5 => f.write_str("x-MD5 is not 32 hex digits"),
            PullError::BinHeader { found } => write!(f, "first byte {found:#04x}, not 0xe9"),
            PullError::Update(e) => e.fmt(f),
            PullError::BadRange { first } => write!(f, "206 starts at byte {first}, not where asked"),
        }
    }
}
