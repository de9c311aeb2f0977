//! The one way moa connects to Redis: a multiplexed, auto-reconnecting connection with a connect
//! timeout, and an error that says what to check. Shared by the key-value and messaging backends.

use anyhow::{Context as _, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Connects to `url` (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS).
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).with_context(|| format!("invalid Redis url `{url}`"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3);
    ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("cannot connect to Redis at {url}: is it running and reachable?"))
}
