//! `http://` and `https://` URLs as an update path's trigger names them: scheme, host (a name,
//! an IPv4 address or a bracketed IPv6 address), port (the scheme's default unless given) and
//! the request target (path and query; `/` when empty). User info is refused: the device sends
//! no credentials it was not configured with. Fragments are dropped, as HTTP clients do.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Url<'a> {
    pub scheme: Scheme,
    /// Without brackets for IPv6.
    pub host: &'a str,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UrlError {
    /// Neither `http://` nor `https://`.
    Scheme,
    /// No host, or one with characters a host cannot have.
    Host,
    /// A port that is not 1..=65535.
    Port,
    /// `user:password@` in the authority.
    UserInfo,
    /// Spaces or control characters.
    Characters,
}

impl<'a> Url<'a> {
    pub fn parse(s: &'a str) -> Result<Url<'a>, UrlError> {
        if s.bytes().any(|b| b <= b' ' || b == 0x7F) {
            return Err(UrlError::Characters);
        }
        let (scheme, rest) = if let Some(r) = strip_prefix_ci(s, "http://") {
            (Scheme::Http, r)
        } else if let Some(r) = strip_prefix_ci(s, "https://") {
            (Scheme::Https, r)
        } else {
            return Err(UrlError::Scheme);
        };
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::Host)?;
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return Err(UrlError::Host);
            }
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty()
            || !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
        {
            return Err(UrlError::Host);
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(UrlError::Port),
                Ok(n) => n,
            },
        };
        let target = if target.is_empty() { "/" } else { target };
        Ok(Url { scheme, host, port, target })
    }

    /// Whether the port is the scheme's own (then `Host:` carries no port).
    pub fn default_port(&self) -> bool {
        self.port == self.scheme.default_port()
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

impl core::fmt::Display for UrlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "not an http:// or https:// URL",
            UrlError::Host => "no host, or a host with characters a host cannot have",
            UrlError::Port => "a port outside 1..65535",
            UrlError::UserInfo => "user:password@ in the URL",
            UrlError::Characters => "spaces or control characters in the URL",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_triggers_give_them() {
        let u = Url::parse("https://ota.example.com/fw/firmware.bin?v=2#x").unwrap();
        assert_eq!(
            u,
            Url { scheme: Scheme::Https, host: "ota.example.com", port: 443, target: "/fw/firmware.bin?v=2" }
        );
        assert!(u.default_port());
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.host, u.port, u.target), ("127.0.0.1", 8080, "/"));
        let u = Url::parse("HTTP://[::1]:81/a").unwrap();
        assert_eq!((u.scheme, u.host, u.port, u.target), (Scheme::Http, "::1", 81, "/a"));
        assert_eq!(Url::parse("ftp://h/f").unwrap_err(), UrlError::Scheme);
        assert_eq!(Url::parse("http:///f").unwrap_err(), UrlError::Host);
        assert_eq!(Url::parse("http://h:0/f").unwrap_err(), UrlError::Port);
        assert_eq!(Url::parse("http://h:99999/f").unwrap_err(), UrlError::Port);
        assert_eq!(Url::parse("http://u:p@h/f").unwrap_err(), UrlError::UserInfo);
        assert_eq!(Url::parse("http://h/a b").unwrap_err(), UrlError::Characters);
        assert_eq!(Url::parse("http://h<x>/").unwrap_err(), UrlError::Host);
        assert_eq!(Url::parse("http://[zz]/").unwrap_err(), UrlError::Host);
    }
}
