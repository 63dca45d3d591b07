//! TCP listeners for the shards: every shard binds the same address with SO_REUSEPORT,
//! so the kernel spreads connections across them, and with SO_REUSEADDR, so a broker
//! restarted after `kill -9` can bind again while the killed one's connections linger
//! in TIME-WAIT. (glommio's `TcpListener::bind` sets only SO_REUSEPORT.)

use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd};

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Connections the kernel queues for accepting.
const LISTEN_BACKLOG: i32 = 1024;

/// A listener on `addr` for this shard's executor.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tcp_socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a listening TCP socket we own; ownership moves to the
    // listener, which closes it.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Fails if another process holds `addr`: binds it without SO_REUSEPORT (which would let
/// two brokers share a port silently) and without listening, so that no client can
/// connect to the probe and take it for the broker.
pub fn probe(addr: SocketAddr) -> std::io::Result<()> {
    tcp_socket(addr)?.bind(&SockAddr::from(addr))
}

/// A TCP socket for `addr`'s family with SO_REUSEADDR, so that a port whose last
/// connections linger in TIME-WAIT can be bound.
fn tcp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}
