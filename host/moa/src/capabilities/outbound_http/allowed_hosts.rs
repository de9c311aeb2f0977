//! Spin's `allowed_outbound_hosts` rules: `scheme://host[:port]` with `*` wildcards for scheme,
//! host (whole or `*.suffix`) and port (or `a..b` ranges), plus `http://self` for the app itself.

use http::Uri;

/// One parsed allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: any subdomain, not the bare domain.
    Subdomains(String),
    /// `self`: requests to this app (relative URIs), answered by moa's own router.
    SelfApp,
}

impl AllowedHost {
    /// Parses one entry, returning a message that says what to write instead.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Err(format!(
                "`{entry}` has no scheme: write `https://{entry}` (or `*://{entry}` for any scheme)"
            ));
        };
        let scheme = match scheme {
            "*" => None,
            s if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                Some(s.to_ascii_lowercase())
            }
            _ => return Err(format!("`{entry}` has an invalid scheme `{scheme}`")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!(
                "`{entry}` contains a path: allowed hosts are `scheme://host[:port]` only"
            ));
        }
        let (host, port) = split_host_port(rest);
        if host.is_empty() {
            return Err(format!("`{entry}` has no host"));
        }
        let host_pattern = if host == "*" {
            HostPattern::Any
        } else if host == "self" || host == "self.alt" {
            HostPattern::SelfApp
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Subdomains(suffix.to_ascii_lowercase())
        } else if host.contains('*') {
            return Err(format!(
                "`{entry}`: `*` may stand for the whole host or a leading `*.` only"
            ));
        } else {
            HostPattern::Exact(host.to_ascii_lowercase())
        };
        let ports = match port {
            Some("*") => None,
            Some(p) => Some(parse_ports(p).ok_or_else(|| {
                format!("`{entry}` has an invalid port `{p}`: write a number, `*` or a range `8000..8010`")
            })?),
            None => match scheme.as_deref() {
                _ if host_pattern == HostPattern::SelfApp => None,
                Some(s) => match default_port(s) {
                    Some(p) => Some((p, p)),
                    None => {
                        return Err(format!(
                            "`{entry}`: scheme `{s}` has no default port; add one, e.g. `{s}://{host}:6379`"
                        ));
                    }
                },
                None => {
                    return Err(format!(
                        "`{entry}`: a wildcard scheme needs an explicit port (`:*` for any)"
                    ));
                }
            },
        };
        Ok(AllowedHost {
            scheme,
            host: host_pattern,
            ports,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if let Some(s) = &self.scheme
            && s != scheme
        {
            return false;
        }
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1),
            HostPattern::SelfApp => false,
        };
        host_ok && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // [ipv6]:port
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

fn parse_ports(text: &str) -> Option<(u16, u16)> {
    match text.split_once("..") {
        Some((lo, hi)) => {
            let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
            (lo <= hi).then_some((lo, hi))
        }
        None => text.parse().ok().map(|p| (p, p)),
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "redis" => Some(6379),
        "mysql" => Some(3306),
        "postgres" => Some(5432),
        "mqtt" => Some(1883),
        _ => None,
    }
}

/// A component's whole allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    entries: Vec<AllowedHost>,
}

impl AllowedHosts {
    pub fn new(entries: Vec<AllowedHost>) -> Self {
        AllowedHosts { entries }
    }

    /// Whether the component may send a request to `uri` (absolute, with scheme and host).
    pub fn allows_uri(&self, uri: &Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        let scheme = scheme.to_ascii_lowercase();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let Some(port) = uri.port_u16().or_else(|| default_port(&scheme)) else {
            return false;
        };
        self.entries.iter().any(|e| e.allows(&scheme, &host, port))
    }

    /// Whether the component may connect to `host:port` with `scheme` (a database client's
    /// target: `host` without brackets, any case).
    pub fn allows_host(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.entries.iter().any(|e| e.allows(scheme, &host, port))
    }

    /// Whether the component may call its own app through `http://self`.
    pub fn allows_self(&self) -> bool {
        self.entries.iter().any(|e| e.host == HostPattern::SelfApp)
    }

    /// Whether the component may call component `id` through `http://<id>.spin.internal`. Only an
    /// entry naming that host (or `*.spin.internal`) grants it: a bare `*` host does not.
    pub fn allows_internal(&self, id: &str) -> bool {
        let host = format!("{id}.spin.internal");
        self.entries.iter().any(|e| match &e.host {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(suffix) => suffix == "spin.internal",
            HostPattern::Any | HostPattern::SelfApp => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::new(
            entries
                .iter()
                .map(|e| AllowedHost::parse(e).unwrap())
                .collect(),
        )
    }

    fn allows(list: &AllowedHosts, uri: &str) -> bool {
        list.allows_uri(&uri.parse().unwrap())
    }

    #[test]
    fn exact_host_uses_the_scheme_default_port() {
        let list = hosts(&["https://api.toss.im"]);
        assert!(allows(&list, "https://api.toss.im/v1/payments"));
        assert!(allows(&list, "https://API.toss.im:443/"));
        assert!(!allows(&list, "http://api.toss.im/"));
        assert!(!allows(&list, "https://api.toss.im:8443/"));
        assert!(!allows(&list, "https://evil.api.toss.im/"));
    }

    #[test]
    fn wildcards_for_subdomains_ports_and_schemes() {
        let list = hosts(&[
            "https://*.example.com",
            "http://127.0.0.1:*",
            "*://db.local:8000..8010",
        ]);
        assert!(allows(&list, "https://a.example.com/"));
        assert!(!allows(&list, "https://example.com/"));
        assert!(allows(&list, "http://127.0.0.1:4567/x"));
        assert!(allows(&list, "https://db.local:8005/"));
        assert!(!allows(&list, "https://db.local:8011/"));
        assert!(hosts(&["*://*:*"]).allows_uri(&"http://anything:1/".parse().unwrap()));
        assert!(!AllowedHosts::default().allows_uri(&"http://127.0.0.1/".parse().unwrap()));
    }

    #[test]
    fn bad_entries_explain_the_fix() {
        assert!(
            AllowedHost::parse("example.com")
                .unwrap_err()
                .contains("https://example.com")
        );
        assert!(
            AllowedHost::parse("*://example.com")
                .unwrap_err()
                .contains("explicit port")
        );
        assert!(
            AllowedHost::parse("https://example.com/path")
                .unwrap_err()
                .contains("path")
        );
        assert!(AllowedHost::parse("https://ex*ample.com").is_err());
        assert!(AllowedHost::parse("https://example.com:99999").is_err());
        assert!(hosts(&["http://self"]).allows_self());
    }

    #[test]
    fn private_components_need_an_explicit_spin_internal_entry() {
        assert!(hosts(&["http://billing.spin.internal"]).allows_internal("billing"));
        assert!(!hosts(&["http://billing.spin.internal"]).allows_internal("admin"));
        assert!(hosts(&["http://*.spin.internal"]).allows_internal("admin"));
        assert!(!hosts(&["*://*:*"]).allows_internal("admin"));
        assert!(!hosts(&["https://*"]).allows_internal("admin"));
    }
}
