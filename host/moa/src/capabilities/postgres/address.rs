//! A component's PostgreSQL address (`postgres://…` URL or `host=… dbname=…` key-value form) parsed
//! and checked against `allowed_outbound_hosts` before any connection: every host and every `hostaddr`.

use crate::capabilities::outbound_http::AllowedHosts;
use std::net::IpAddr;
use std::str::FromStr;
use tokio_postgres::config::{Config, Host};

/// PostgreSQL's port when the address names none.
const DEFAULT_PORT: u16 = 5432;

/// Why an address is refused: the message the component gets (`connection-failed`).
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("invalid PostgreSQL address: {0}")]
    Invalid(String),
    #[error("Unix sockets are not supported on WebAssembly")]
    UnixSocket,
    #[error("the address names no host")]
    NoHost,
    /// Spin's wording (its tests match on it), then the fix.
    #[error(
        "address postgres://{0} is not permitted: add \"postgres://{0}\" to the component's allowed_outbound_hosts"
    )]
    NotPermitted(String),
}

/// `host[:port]` as an allow-list entry writes it (IPv6 in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses `address` and checks that the component may connect to every host it names.
pub fn parse_allowed(address: &str, allowed: &AllowedHosts) -> Result<Config, AddressError> {
    let config = Config::from_str(address).map_err(|err| AddressError::Invalid(err.to_string()))?;
    let ports = config.get_ports();
    // tokio-postgres pairs ports with hosts by position, or uses a single port for all.
    let port_of = |i: usize| match ports {
        [] => DEFAULT_PORT,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(DEFAULT_PORT),
    };
    let mut targets: Vec<(String, u16)> = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        match host {
            Host::Tcp(name) => targets.push((name.to_ascii_lowercase(), port_of(i))),
            Host::Unix(_) => return Err(AddressError::UnixSocket),
        }
    }
    // `hostaddr` is where tokio-postgres really connects when it is given (Spin never checks it).
    for (i, ip) in config.get_hostaddrs().iter().enumerate() {
        let ip: &IpAddr = ip;
        targets.push((ip.to_string(), port_of(i)));
    }
    if targets.is_empty() {
        return Err(AddressError::NoHost);
    }
    for (host, port) in &targets {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !allowed.allows_host("postgres", host, *port) {
            return Err(AddressError::NotPermitted(authority(host, *port)));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::outbound_http::AllowedHost;

    fn allowed(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::new(
            entries
                .iter()
                .map(|e| AllowedHost::parse(e).expect("entry"))
                .collect(),
        )
    }

    #[test]
    fn url_and_key_value_addresses_are_checked_host_by_host() {
        let list = allowed(&["postgres://db.internal", "postgres://10.0.0.7:6432"]);
        for ok in [
            "postgres://app:secret@db.internal/orders",
            "postgresql://app@DB.internal:5432/orders?sslmode=require",
            "host=db.internal user=app dbname=orders",
            "host=10.0.0.7 port=6432 user=app",
            "postgres://app@db.internal,10.0.0.7:6432/orders?port=5432,6432",
        ] {
            assert!(parse_allowed(ok, &list).is_ok(), "{ok}");
        }
        for (bad, message) in [
            (
                "postgres://app@db.internal:5433/x",
                "address postgres://db.internal:5433 is not permitted",
            ),
            (
                "host=db.internal,evil.example user=app",
                "address postgres://evil.example:5432 is not permitted",
            ),
            (
                // hostaddr is where the connection goes, whatever `host` says.
                "host=db.internal hostaddr=192.0.2.1 user=app",
                "address postgres://192.0.2.1:5432 is not permitted",
            ),
            (
                "postgres://app@[::1]/x",
                "address postgres://[::1]:5432 is not permitted",
            ),
            ("host=/var/run/postgresql user=app", "Unix sockets"),
            ("user=app dbname=x", "names no host"),
            ("hello", "invalid PostgreSQL address"),
            ("postgres://db.internal/x?sslmode=verify-full", "invalid"),
        ] {
            let err = parse_allowed(bad, &list).expect_err(bad).to_string();
            assert!(err.contains(message), "{bad}: {err}");
        }
    }

    #[test]
    fn ipv6_hosts_match_bracketed_entries() {
        let list = allowed(&["postgres://[::1]:5432"]);
        assert!(parse_allowed("postgres://app@[::1]:5432/x", &list).is_ok());
        assert!(parse_allowed("host=::1 user=app", &list).is_ok());
    }
}
