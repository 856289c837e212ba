//! The one I/O vocabulary between the device application ([`crate::app`]) and whatever moves
//! its bytes: the emulator's sockets, smoltcp on the chip. An adapter opens what the app asks
//! for ([`Io`]) and reports what happened to it ([`Input`]); it never knows which update path a
//! link belongs to. Links are named by the app ([`LinkId`]), so an adapter needs no table of
//! roles: a path's listener, its accepted connection, its UDP socket and its outgoing
//! connections are all just links.

use crate::log::LogEvent;
use core::net::SocketAddr;

/// A link the app holds: a TCP listener, a TCP connection, or a UDP socket. The app chooses the
/// number (`path` is the registering path's index, `local` the path's own name for the link),
/// so the same link has the same id for its whole life and across adapters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct LinkId {
    pub path: u8,
    pub local: u8,
}

/// Where an outgoing connection goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Remote<'a> {
    Addr(SocketAddr),
    /// A name (or an address written out) the adapter resolves.
    Host {
        host: &'a str,
        port: u16,
    },
}

/// Why an outgoing connection did not come up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnectFailure {
    /// The host name did not resolve (or the adapter has no resolver and it is not an address).
    Dns,
    /// Refused or unreachable.
    Refused,
    /// No answer within the adapter's connect timeout.
    Timeout,
}

/// What happened to a link (or that a datagram came), as the adapter reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input<'a> {
    /// An outgoing connection is up.
    Connected(LinkId),
    ConnectFailed(LinkId, ConnectFailure),
    /// Bytes from a connection, in order. An adapter hands them over as they come; a path
    /// must not depend on how TCP grouped them.
    Data(LinkId, &'a [u8]),
    /// A datagram on a UDP socket the app bound.
    Datagram {
        socket: LinkId,
        from: SocketAddr,
        bytes: &'a [u8],
    },
    /// The connection is gone: the peer closed or reset it, a write failed, or what was
    /// queued for it did not move for the network timeout. The app hears nothing more of it.
    Closed(LinkId),
}

impl Input<'_> {
    /// The link the input is about.
    pub fn link(&self) -> LinkId {
        match *self {
            Input::Connected(l) | Input::ConnectFailed(l, _) | Input::Data(l, _) | Input::Closed(l) => l,
            Input::Datagram { socket, .. } => socket,
        }
    }
}

/// What the app asks of its adapter. None of these may block: a connect finishes later (with
/// [`Input::Connected`] or [`Input::ConnectFailed`]), bytes a peer does not take wait in the
/// link's queue, and a failure comes back as an input on a later call, never from inside one.
pub trait Io {
    /// Listen for TCP connections on the device's `port` (a backlog of one, as ESP-IDF's lwIP
    /// listeners have; the rest are reset). A waiting connection is offered to the app with
    /// `App::accept`.
    fn listen(&mut self, listener: LinkId, port: u16);
    /// Open a UDP socket on the device's `port`.
    fn bind(&mut self, socket: LinkId, port: u16);
    /// Open a TCP connection.
    fn connect(&mut self, link: LinkId, to: Remote<'_>);
    fn send(&mut self, link: LinkId, bytes: &[u8]);
    /// Close the connection once what was sent is out. The app hears nothing more of it.
    fn close(&mut self, link: LinkId);
    fn datagram(&mut self, socket: LinkId, to: SocketAddr, bytes: &[u8]);
    /// A line on the serial log, now: a power cut armed at a line cuts what comes after it.
    fn log(&mut self, line: &LogEvent<'_>);
    /// A client's exchange with a push path ended (refused, failed or complete): the harness
    /// counts these to know the device is done with an upload.
    fn exchange_over(&mut self);
}

/// Random bytes (nonces, TLS keys): the chip's hardware generator, the emulator's seeded one.
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]);
}

/// A port the device opens to the outside, by transport: what an adapter maps to an address
/// its peers reach (the emulator to a host address, QEMU to a forwarded host port), and what a
/// harness looks an update path's endpoint up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Port {
    Tcp(u16),
    Udp(u16),
}

impl Port {
    /// Reads what `Display` writes: `tcp:3232`, `udp:3232`.
    pub fn parse(text: &str) -> Option<Port> {
        let (transport, number) = text.split_once(':')?;
        let number = number.parse().ok()?;
        match transport {
            "tcp" => Some(Port::Tcp(number)),
            "udp" => Some(Port::Udp(number)),
            _ => None,
        }
    }
}

impl core::fmt::Display for Port {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Port::Tcp(n) => write!(f, "tcp:{n}"),
            Port::Udp(n) => write!(f, "udp:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Port;

    #[test]
    fn a_port_reads_back_what_it_writes_and_nothing_else() {
        for port in [Port::Tcp(3232), Port::Udp(0), Port::Tcp(65535)] {
            assert_eq!(Port::parse(&std::format!("{port}")), Some(port));
        }
        for bad in ["", "tcp", "tcp:", "tcp:65536", "sctp:1", "TCP:1", "udp:-1", "udp:1:2"] {
            assert_eq!(Port::parse(bad), None, "{bad}");
        }
    }
}
