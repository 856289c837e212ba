//! The firmware server connection's TLS layer. An https endpoint is reached over plain TCP (the
//! adapter only ever opens TCP); the agent runs [`crate::tls::TlsLink`] between that connection
//! and the pull client, which sees plaintext and learns of the connection only once the server
//! is authenticated. Without the `tls` feature there is no layer: https endpoints go to the
//! adapter as they are, and an adapter that cannot speak TLS refuses them.

use super::{Link, Output};
use crate::proto::http_pull::Endpoint;
#[cfg(feature = "tls")]
use crate::proto::http_pull::TlsFailure;
#[cfg(feature = "tls")]
use crate::tls::{TlsLink, TlsState, Trust};
#[cfg(feature = "tls")]
use alloc::string::String;
#[cfg(feature = "tls")]
use alloc::vec::Vec;

/// What the TLS layer has for the pull client after bytes went through it.
#[cfg(feature = "tls")]
pub(super) struct ForPull {
    /// The server is authenticated: the request may go.
    pub connected: bool,
    pub plaintext: Vec<u8>,
    /// The handshake failed.
    pub refused: Option<TlsFailure>,
    /// The session ended after the handshake.
    pub ended: bool,
}

#[derive(Default)]
pub(super) struct Secure {
    /// Key for the handshakes' randomness (each connection's seed is derived from it).
    #[cfg(feature = "tls")]
    key: [u8; 32],
    #[cfg(feature = "tls")]
    count: u64,
    /// The host of the connection under way when it is https.
    #[cfg(feature = "tls")]
    host: Option<String>,
    #[cfg(feature = "tls")]
    link: Option<TlsLink>,
    /// When the handshake started.
    #[cfg(feature = "tls")]
    since_ms: u64,
    /// The pull client was told the connection is up.
    #[cfg(feature = "tls")]
    announced: bool,
    /// The pull client was told the session ended.
    #[cfg(feature = "tls")]
    over: bool,
}

impl Secure {
    #[cfg_attr(not(feature = "tls"), allow(unused_variables, clippy::unused_self))]
    pub(super) fn set_key(&mut self, key: [u8; 32]) {
        #[cfg(feature = "tls")]
        {
            self.key = key;
        }
    }

    /// The pull client asks for a connection.
    pub(super) fn connect<O: Output>(&mut self, to: Endpoint<'_>, out: &mut O) {
        #[cfg(feature = "tls")]
        {
            self.link = None;
            self.announced = false;
            self.over = false;
            self.host = to.tls.then(|| String::from(to.host));
            out.connect_server(Endpoint { tls: false, ..to });
        }
        #[cfg(not(feature = "tls"))]
        out.connect_server(to);
    }

    /// The pull client sends (over TLS: queued until [`Secure::flush`]).
    pub(super) fn send<O: Output>(&mut self, bytes: &[u8], out: &mut O) {
        #[cfg(feature = "tls")]
        if let Some(link) = self.link.as_mut() {
            link.send(bytes);
            return;
        }
        out.send(Link::Server, bytes);
    }

    /// The pull client closes.
    pub(super) fn close<O: Output>(&mut self, out: &mut O) {
        #[cfg(feature = "tls")]
        {
            self.link = None;
            self.host = None;
        }
        out.close(Link::Server);
    }
}

#[cfg(feature = "tls")]
impl Secure {
    /// The TCP connection is up: `true` when it is https (the handshake starts; the pull client
    /// hears of the connection later), `false` when the pull client may send at once.
    /// `Err`: https without a CA to check the server against.
    pub(super) fn tcp_connected<O: Output>(
        &mut self,
        trust: Trust<'_>,
        now_ms: u64,
        out: &mut O,
    ) -> Result<bool, TlsFailure> {
        let Some(host) = self.host.as_deref() else { return Ok(false) };
        if trust.ca_der.is_empty() {
            return Err(TlsFailure::NoCa);
        }
        self.count += 1;
        let mut link = TlsLink::start(host, trust, self.seed());
        let hello = link.take_outbound();
        out.send(Link::Server, &hello);
        self.link = Some(link);
        self.since_ms = now_ms;
        Ok(true)
    }

    fn seed(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.key);
        h.update(self.count.to_le_bytes());
        h.finalize().into()
    }

    /// What the pull client queued goes out, encrypted.
    pub(super) fn flush<O: Output>(&mut self, out: &mut O) {
        let Some(link) = self.link.as_mut() else { return };
        link.flush();
        let ciphertext = link.take_outbound();
        if !ciphertext.is_empty() {
            out.send(Link::Server, &ciphertext);
        }
    }

    /// Whether the connection under way runs through TLS.
    pub(super) fn active(&self) -> bool {
        self.link.is_some()
    }

    /// When the handshake times out (it has the pull's connect timeout).
    pub(super) fn handshake_deadline(&self, timeout_ms: u64) -> Option<u64> {
        let link = self.link.as_ref()?;
        (link.state() == TlsState::Handshaking).then_some(self.since_ms + timeout_ms)
    }

    /// Ciphertext from the server (`None`: the TCP connection ended).
    pub(super) fn received<O: Output>(&mut self, ciphertext: Option<&[u8]>, out: &mut O) -> ForPull {
        let mut found = ForPull { connected: false, plaintext: Vec::new(), refused: None, ended: false };
        let Some(link) = self.link.as_mut() else { return found };
        match ciphertext {
            Some(bytes) => link.received(bytes),
            None => link.peer_closed(),
        }
        let reply = link.take_outbound();
        if !reply.is_empty() {
            out.send(Link::Server, &reply);
        }
        found.plaintext = link.take_received();
        match link.state() {
            TlsState::Handshaking if ciphertext.is_none() => found.refused = Some(TlsFailure::Handshake),
            TlsState::Handshaking => {}
            TlsState::Failed(why) => found.refused = Some(why),
            TlsState::Open | TlsState::Closed => {
                found.connected = !core::mem::replace(&mut self.announced, true);
                if link.state() == TlsState::Closed || ciphertext.is_none() {
                    found.ended = !core::mem::replace(&mut self.over, true);
                }
            }
        }
        if found.refused.is_some() {
            self.link = None;
            self.host = None;
        }
        found
    }
}
