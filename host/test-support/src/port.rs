//! Whether a test's child process listens on a loopback port yet. A plain connect is not enough:
//! Linux can connect a socket to itself when the port is free and in the ephemeral range.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};

/// True when something other than the probe itself accepted a connection on `127.0.0.1:port`.
///
/// While nobody listens, a connect to a port in the ephemeral range can succeed by a TCP
/// simultaneous open with itself (the kernel picks the destination port as the source port);
/// the probe then "sees" a server that is not there. Such a connection is refused here.
pub fn listens(port: u16) -> bool {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect(target) {
        Ok(stream) => stream
            .local_addr()
            .map(|local| local != target)
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::listens;

    #[test]
    fn a_listener_is_seen_and_a_closed_port_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens(port));
        drop(listener);
        assert!(!listens(port));
    }
}
