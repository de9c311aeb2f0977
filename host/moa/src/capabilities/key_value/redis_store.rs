//! The Redis key-value backend (`type = "redis"`): one multiplexed, auto-reconnecting connection
//! per store, keys optionally namespaced by a `prefix`.

use super::{KeyValueBackend, KeyValueError};
use async_trait::async_trait;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

/// A Redis-backed store.
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/0`); fails at load if Redis is unreachable.
    pub async fn connect(url: &str, prefix: Option<String>) -> anyhow::Result<Self> {
        Ok(RedisStore {
            connection: crate::redis_client::connect(url).await?,
            prefix: prefix.unwrap_or_default(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn other(err: redis::RedisError) -> KeyValueError {
    KeyValueError::Other(format!("redis: {err}"))
}

#[async_trait]
impl KeyValueBackend for RedisStore {
    async fn get(&self, _store: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError> {
        self.connection
            .clone()
            .get(self.key(key))
            .await
            .map_err(other)
    }

    async fn set(&self, _store: &str, key: &str, value: Vec<u8>) -> Result<(), KeyValueError> {
        self.connection
            .clone()
            .set(self.key(key), value)
            .await
            .map_err(other)
    }

    async fn delete(&self, _store: &str, key: &str) -> Result<(), KeyValueError> {
        self.connection
            .clone()
            .del(self.key(key))
            .await
            .map_err(other)
    }

    async fn exists(&self, _store: &str, key: &str) -> Result<bool, KeyValueError> {
        self.connection
            .clone()
            .exists(self.key(key))
            .await
            .map_err(other)
    }

    async fn get_keys(&self, _store: &str) -> Result<Vec<String>, KeyValueError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(other)?;
            keys.extend(
                batch
                    .into_iter()
                    .map(|k| k[self.prefix.len()..].to_string()),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn increment(&self, _store: &str, key: &str, delta: i64) -> Result<i64, KeyValueError> {
        self.connection
            .clone()
            .incr(self.key(key), delta)
            .await
            .map_err(other)
    }

    async fn compare_and_swap(
        &self,
        _store: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, KeyValueError> {
        // One script: Redis runs it without interleaving other commands.
        let script = redis::Script::new(COMPARE_AND_SWAP);
        let mut invocation = script.key(self.key(key));
        invocation.arg(value);
        match &expected {
            Some(current) => invocation.arg(1).arg(current.as_slice()),
            None => invocation.arg(0).arg(""),
        };
        let swapped: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(other)?;
        Ok(swapped == 1)
    }
}

/// KEYS[1] the key; ARGV[1] the new value, ARGV[2] 1 if a value is expected (ARGV[3]) or 0 if the
/// key must be absent. Returns 1 when it set the value.
const COMPARE_AND_SWAP: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[2] == '1' then
  if current ~= ARGV[3] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

/// Escapes Redis glob characters so a prefix matches literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
