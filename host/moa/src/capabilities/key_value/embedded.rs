//! The embedded key-value backend: one SQLite file per store (WAL mode), Spin's table layout,
//! so data survives restarts with no server. Blocking SQLite calls run on tokio's blocking pool.

use super::{KeyValueBackend, KeyValueError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Sets a key's value, inserting or replacing it.
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";

/// A SQLite-backed store.
pub struct SqliteStore {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create key-value directory {}", dir.display()))?;
        }
        let connection = Connection::open(path)
            .with_context(|| format!("cannot open key-value database {}", path.display()))?;
        // The busy timeout first: switching to WAL takes a lock another process (a second host,
        // `moa job status`) may hold for a moment while it opens the same file.
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .with_context(|| format!("cannot open key-value database {}", path.display()))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS spin_key_value (
                     store TEXT NOT NULL,
                     key   TEXT NOT NULL,
                     value BLOB NOT NULL,
                     PRIMARY KEY (store, key)
                 );",
            )
            .with_context(|| format!("cannot initialise key-value database {}", path.display()))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with_connection<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, KeyValueError> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let guard = connection
                .lock()
                .map_err(|_| KeyValueError::Other("key-value connection poisoned".into()))?;
            f(&guard).map_err(|e| KeyValueError::Other(format!("{}: {e}", path.display())))
        })
        .await
        .map_err(|e| KeyValueError::Other(format!("key-value task failed: {e}")))?
    }
}

#[async_trait]
impl KeyValueBackend for SqliteStore {
    async fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError> {
        let (store, key) = (store.to_string(), key.to_string());
        self.with_connection(move |c| {
            c.prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .query_row(params![store, key], |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn set(&self, store: &str, key: &str, value: Vec<u8>) -> Result<(), KeyValueError> {
        let (store, key) = (store.to_string(), key.to_string());
        self.with_connection(move |c| {
            c.prepare_cached(UPSERT)?
                .execute(params![store, key, value])
                .map(drop)
        })
        .await
    }

    async fn delete(&self, store: &str, key: &str) -> Result<(), KeyValueError> {
        let (store, key) = (store.to_string(), key.to_string());
        self.with_connection(move |c| {
            c.prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .execute(params![store, key])
                .map(drop)
        })
        .await
    }

    async fn exists(&self, store: &str, key: &str) -> Result<bool, KeyValueError> {
        Ok(self.get(store, key).await?.is_some())
    }

    async fn get_keys(&self, store: &str) -> Result<Vec<String>, KeyValueError> {
        let store = store.to_string();
        self.with_connection(move |c| {
            let mut statement =
                c.prepare_cached("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
            let keys = statement
                .query_map(params![store], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(keys)
        })
        .await
    }

    async fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64, KeyValueError> {
        let (store, key) = (store.to_string(), key.to_string());
        let result = self
            .with_connection(move |c| {
                // One connection behind a mutex, in an immediate transaction: nothing interleaves.
                let tx = c.unchecked_transaction()?;
                let current: Option<Vec<u8>> = tx
                    .prepare_cached(
                        "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
                    )?
                    .query_row(params![store, key], |row| row.get(0))
                    .optional()?;
                let current = match current {
                    None => 0,
                    Some(bytes) => match std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|t| t.trim().parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return Ok(Err("the value is not a decimal integer".to_string())),
                    },
                };
                let Some(sum) = current.checked_add(delta) else {
                    return Ok(Err("increment or decrement would overflow".to_string()));
                };
                tx.prepare_cached(UPSERT)?.execute(params![
                    store,
                    key,
                    sum.to_string().into_bytes()
                ])?;
                tx.commit()?;
                Ok(Ok(sum))
            })
            .await?;
        result.map_err(KeyValueError::Other)
    }

    async fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, KeyValueError> {
        let (store, key) = (store.to_string(), key.to_string());
        self.with_connection(move |c| {
            let tx = c.unchecked_transaction()?;
            let current: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .query_row(params![store, key], |row| row.get(0))
                .optional()?;
            if current != expected {
                return Ok(false);
            }
            tx.prepare_cached(UPSERT)?
                .execute(params![store, key, value])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}
