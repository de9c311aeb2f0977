//! The one way moa connects to Redis: a multiplexed, auto-reconnecting connection with a connect
//! timeout, and an error that says what to check. Shared by the key-value and messaging backends.

use anyhow::{Context as _, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Connects to `url` (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS).
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    connect_with_response_timeout(url, Duration::from_millis(500)).await
}

/// Like [`connect`], for commands that block on the server (`XREADGROUP ... BLOCK`) and so
/// answer later than a normal command.
pub async fn connect_with_response_timeout(
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager> {
    let shown = redact(url);
    let url_for_error = shown.clone();
    let client = redis::Client::open(url)
        .with_context(move || format!("invalid Redis url `{url_for_error}`"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(3);
    ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| {
            format!("cannot connect to Redis at {shown}: is it running and reachable?")
        })
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("redis://app:s3cret@cache:6379/0"),
            "redis://app:***@cache:6379/0"
        );
        assert_eq!(
            super::redact("rediss://:s3cret@cache:6380"),
            "rediss://:***@cache:6380"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
