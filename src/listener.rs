//! Listening sockets: one per worker on the same address, via SO_REUSEPORT, so the kernel
//! spreads incoming connections over the workers without a shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Room for bursts of connects (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds `count` listeners to `addr`. With port 0, the first picks a free port and the others
/// join it, so `--listen host:0` still gives one port for all workers.
///
/// # Errors
/// Also when another process listens on `addr`, even with SO_REUSEPORT: joining it would
/// silently split connections between two servers that do not know each other.
pub fn bind_shared(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        // A plain bind fails if anyone holds the address, with or without SO_REUSEPORT.
        drop(bind(addr, false)?);
    }
    let first = bind(addr, true)?;
    let real = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind(real, true)?);
    }
    Ok(listeners)
}

/// A listener of one worker alone (127.0.0.1, free port), for tests that must place a
/// connection on a given worker.
pub fn bind_private() -> io::Result<TcpListener> {
    bind(SocketAddr::from(([127, 0, 0, 1], 0)), false)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
