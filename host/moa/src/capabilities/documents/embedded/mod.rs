//! The embedded document backend (the default): one SQLite file per store, documents as JSON text
//! run by moa's own MongoDB-semantics code. Transactions are optimistic (snapshot reads, writes
//! buffered in the host, validated at commit) and one writer thread group-commits them durably.
//!
//! ```text
//! guest ── begin ──► snapshot (a reader connection's read transaction) + overlay (buffered writes)
//!       ── ops ────► View: rows of the snapshot with the overlay on top; writes go to the overlay
//!       ── commit ─► Writer thread: BEGIN IMMEDIATE; per job SAVEPOINT, check versions, write;
//!                    COMMIT (synchronous = FULL: one fsync for the whole group); then replies
//! ```

mod plan;
mod view;
mod writer;

use super::ops::{DocumentError, Op, Output};
use super::{DocumentBackend, DocumentTransaction, IndexSpec};
use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use view::{Overlay, View};
use writer::{Work, Writer};

/// One store's SQLite file, its reader connections and its writer.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Idle reader connections (snapshots of transactions, reads outside them).
    readers: Mutex<Vec<Connection>>,
    /// Declared indexes by collection (index lookups, unique checks, the scalar check on writes).
    indexes: RwLock<BTreeMap<String, Vec<IndexSpec>>>,
    busy_timeout: Duration,
    writer: Writer,
}

/// Idle reader connections kept for reuse.
const MAX_IDLE_READERS: usize = 64;

impl EmbeddedStore {
    /// Opens (creating if needed) the store file at `path` and starts its writer.
    pub fn open(path: &Path, busy_timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the document directory {}", dir.display())
            })?;
        }
        let connection = connect(path, busy_timeout)
            .and_then(|connection| {
                // Durable before "committed": every group's commit syncs the WAL.
                connection.execute_batch("PRAGMA synchronous = FULL;")?;
                initialise(&connection)?;
                Ok(connection)
            })
            .with_context(|| format!("cannot open the document store {}", path.display()))?;
        let writer = Writer::start(connection, path)
            .with_context(|| format!("cannot start the writer of {}", path.display()))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                readers: Mutex::new(Vec::new()),
                indexes: RwLock::new(BTreeMap::new()),
                busy_timeout,
                writer,
            }),
        })
    }
}

/// Opens a connection in WAL mode. The busy timeout is set before anything that may need the
/// write lock, so a second process opening the file at the same moment waits instead of failing.
fn connect(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(busy_timeout)?;
    connection.execute_batch("PRAGMA journal_mode = WAL;")?;
    Ok(connection)
}

/// The tables, and the `version` column files from before optimistic transactions lack.
fn initialise(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS documents (
             seq        INTEGER PRIMARY KEY,
             collection TEXT NOT NULL,
             id         TEXT NOT NULL,
             body       TEXT NOT NULL,
             version    INTEGER NOT NULL DEFAULT 0,
             UNIQUE (collection, id)
         );
         CREATE TABLE IF NOT EXISTS moa_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         INSERT INTO moa_meta (key, value) VALUES ('version', 0) ON CONFLICT DO NOTHING;",
    )?;
    let has_version = connection
        .prepare("SELECT 1 FROM pragma_table_info('documents') WHERE name = 'version'")?
        .exists([])?;
    if !has_version {
        connection
            .execute_batch("ALTER TABLE documents ADD COLUMN version INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, DocumentError> {
        if let Some(connection) = self.readers.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(connection);
        }
        connect(&self.path, self.busy_timeout).map_err(|e| map_sqlite(&self.path, e))
    }

    /// Returns a reader to the pool, ending the read transaction it may hold.
    fn give_back(&self, connection: Connection) {
        if !connection.is_autocommit() && connection.execute_batch("ROLLBACK").is_err() {
            return;
        }
        if let Ok(mut idle) = self.readers.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(connection);
        }
    }

    fn indexes_of(&self, collection: &str) -> Vec<IndexSpec> {
        self.indexes
            .read()
            .ok()
            .and_then(|i| i.get(collection).cloned())
            .unwrap_or_default()
    }
}

/// Runs an operation over `connection` and `overlay`: here when it reads by key, on the blocking
/// pool when it may scan. Both come back unless the blocking task failed (a panic).
async fn read(
    inner: &Arc<Inner>,
    connection: Connection,
    mut overlay: Overlay,
    op: Op,
) -> (Option<(Connection, Overlay)>, Result<Output, DocumentError>) {
    let indexes = inner.indexes_of(op.collection());
    if view::is_keyed(&op, &indexes) {
        let result = View {
            connection: &connection,
            overlay: &mut overlay,
            indexes: &indexes,
        }
        .run(op);
        return (Some((connection, overlay)), result);
    }
    let task = tokio::task::spawn_blocking(move || {
        let result = View {
            connection: &connection,
            overlay: &mut overlay,
            indexes: &indexes,
        }
        .run(op);
        (connection, overlay, result)
    });
    match task.await {
        Ok((connection, overlay, result)) => (Some((connection, overlay)), result),
        Err(error) => (
            None,
            Err(DocumentError::Other(format!(
                "document task failed: {error}"
            ))),
        ),
    }
}

#[async_trait]
impl DocumentBackend for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn run(&self, op: Op) -> Result<Output, DocumentError> {
        if op.writes() {
            let indexes = self.inner.indexes_of(op.collection());
            return self
                .inner
                .writer
                .submit(Work::Run(Box::new(op), indexes))
                .await;
        }
        let connection = self.inner.take_reader()?;
        let (kept, result) = read(&self.inner, connection, Overlay::default(), op).await;
        if let Some((connection, _)) = kept {
            self.inner.give_back(connection);
        }
        result
    }

    async fn begin(&self) -> Result<Box<dyn DocumentTransaction>, DocumentError> {
        Ok(Box::new(EmbeddedTransaction {
            inner: self.inner.clone(),
            snapshot: None,
            overlay: Some(Overlay::default()),
        }))
    }

    async fn create_index(&self, index: &IndexSpec) -> Result<(), DocumentError> {
        // A partial index per collection: other collections' documents (which may lack the
        // fields) are not in it, and a lookup naming the collection as a literal can use it.
        let columns: Vec<String> = index
            .keys
            .iter()
            .map(|(path, _)| plan::index_expression(path))
            .collect();
        let sql = format!(
            "CREATE {unique} INDEX IF NOT EXISTS \"{name}\" ON documents ({columns}) WHERE collection = '{collection}'",
            unique = if index.unique { "UNIQUE" } else { "" },
            name = plan::sql_index_name(index),
            columns = columns.join(", "),
            collection = index.collection,
        );
        self.inner.writer.submit(Work::Schema(sql)).await?;
        if let Ok(mut indexes) = self.inner.indexes.write() {
            let list = indexes.entry(index.collection.clone()).or_default();
            if !list.iter().any(|i| i.name == index.name) {
                list.push(index.clone());
            }
        }
        Ok(())
    }
}

/// An optimistic transaction: reads on a snapshot taken at its first operation, writes buffered
/// here; nothing holds the writer until `commit`, where a document another transaction changed
/// since the snapshot makes it a `write-conflict`.
struct EmbeddedTransaction {
    inner: Arc<Inner>,
    /// The reader connection holding the snapshot (a read transaction), from the first operation.
    snapshot: Option<Connection>,
    /// The buffered writes; `None` once the transaction ended.
    overlay: Option<Overlay>,
}

impl EmbeddedTransaction {
    fn closed() -> DocumentError {
        DocumentError::TransactionClosed("the transaction has ended".into())
    }

    /// Ends the snapshot and returns its connection to the pool.
    fn release(&mut self) {
        if let Some(connection) = self.snapshot.take() {
            self.inner.give_back(connection);
        }
    }
}

#[async_trait]
impl DocumentTransaction for EmbeddedTransaction {
    async fn run(&mut self, op: Op) -> Result<Output, DocumentError> {
        let overlay = self.overlay.take().ok_or_else(Self::closed)?;
        let connection = match self.snapshot.take() {
            Some(connection) => connection,
            None => {
                let connection = self.inner.take_reader()?;
                if let Err(error) = connection.execute_batch("BEGIN") {
                    self.overlay = Some(overlay);
                    return Err(map_sqlite(&self.inner.path, error));
                }
                connection
            }
        };
        let (kept, result) = read(&self.inner, connection, overlay, op).await;
        let Some((connection, overlay)) = kept else {
            return result;
        };
        self.snapshot = Some(connection);
        match result {
            Ok(output) => {
                self.overlay = Some(overlay);
                Ok(output)
            }
            // As on MongoDB, an error from the store ends the transaction: its writes are dropped
            // and later calls get `transaction-closed`.
            Err(error) => {
                self.release();
                Err(error)
            }
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<(), DocumentError> {
        let overlay = self.overlay.take().ok_or_else(Self::closed)?;
        self.release();
        if overlay.is_empty() {
            return Ok(());
        }
        self.inner
            .writer
            .submit(Work::Commit(overlay.into_changes()))
            .await
            .map(|_| ())
    }

    async fn abort(mut self: Box<Self>) -> Result<(), DocumentError> {
        self.overlay.take().ok_or_else(Self::closed)?;
        self.release();
        Ok(())
    }
}

impl Drop for EmbeddedTransaction {
    fn drop(&mut self) {
        self.release();
    }
}

/// Maps a SQLite error to the typed error the component sees.
fn map_sqlite(path: &Path, error: rusqlite::Error) -> DocumentError {
    if let rusqlite::Error::SqliteFailure(code, message) = &error {
        let message = message.clone().unwrap_or_else(|| code.to_string());
        match code.code {
            ErrorCode::ConstraintViolation if message.contains("UNIQUE") => {
                return DocumentError::DuplicateKey(describe_unique(&message));
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return DocumentError::WriteConflict(
                    "another process holds the store; run the transaction again".into(),
                );
            }
            ErrorCode::DiskFull | ErrorCode::CannotOpen | ErrorCode::ReadOnly => {
                return DocumentError::Unavailable(format!("{}: {message}", path.display()));
            }
            _ => {}
        }
    }
    DocumentError::Other(format!("{}: {error}", path.display()))
}

fn describe_unique(message: &str) -> String {
    if message.contains("documents.collection, documents.id") {
        "a document with this `_id` exists".into()
    } else if let Some(index) = message.split("index '").nth(1) {
        format!("unique index `{}`", index.trim_end_matches('\''))
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ops::{Query, UpdateSpec};
    use super::*;
    use serde_json::{Value, json};

    fn store(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(&dir.path().join("store.db"), Duration::from_secs(5)).expect("open")
    }

    fn insert(document: Value) -> Op {
        let Value::Object(document) = document else {
            panic!("not an object")
        };
        Op::Insert {
            collection: "c".into(),
            documents: vec![document],
        }
    }

    fn inc(id: &str) -> Op {
        Op::Update {
            collection: "c".into(),
            filter: Query::from_value(json!({ "_id": id })).expect("filter"),
            update: UpdateSpec::from_value(json!({ "$inc": { "n": 1 } })).expect("update"),
            upsert: false,
            many: false,
        }
    }

    fn find(filter: Value) -> Op {
        Op::Find {
            collection: "c".into(),
            filter: Query::from_value(filter).expect("filter"),
            spec: Default::default(),
        }
    }

    async fn documents(store: &EmbeddedStore, filter: Value) -> Vec<Value> {
        match store.run(find(filter)).await.expect("find") {
            Output::Documents(documents) => documents,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_second_of_two_transactions_writing_one_document_conflicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        store
            .run(insert(json!({ "_id": "a", "n": 0 })))
            .await
            .expect("insert");
        let mut first = store.begin().await.expect("begin");
        let mut second = store.begin().await.expect("begin");
        first.run(inc("a")).await.expect("first update");
        second.run(inc("a")).await.expect("second update");
        // Each sees its own write and not the other's.
        let seen = second.run(find(json!({ "_id": "a" }))).await.expect("read");
        assert_eq!(seen, Output::Documents(vec![json!({ "_id": "a", "n": 1 })]));
        first.commit().await.expect("the first commits");
        let error = second.commit().await.expect_err("the second conflicts");
        assert!(matches!(error, DocumentError::WriteConflict(_)), "{error}");
        assert_eq!(
            documents(&store, json!({})).await,
            vec![json!({ "_id": "a", "n": 1 })]
        );
    }

    #[tokio::test]
    async fn concurrent_inserts_of_one_id_commit_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        let mut first = store.begin().await.expect("begin");
        let mut second = store.begin().await.expect("begin");
        first
            .run(insert(json!({ "_id": "x" })))
            .await
            .expect("insert");
        second
            .run(insert(json!({ "_id": "x" })))
            .await
            .expect("insert");
        first.commit().await.expect("commit");
        assert!(matches!(
            second.commit().await,
            Err(DocumentError::WriteConflict(_))
        ));
    }

    #[tokio::test]
    async fn many_concurrent_transactions_commit_in_groups_and_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(store(&dir));
        store
            .run(insert(json!({ "_id": "counter", "n": 0 })))
            .await
            .expect("insert");
        let mut tasks = Vec::new();
        for worker in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let mut tx = store.begin().await.expect("begin");
                    tx.run(insert(
                        json!({ "_id": format!("{worker}-{i}"), "worker": worker }),
                    ))
                    .await
                    .expect("insert");
                    tx.commit().await.expect("commit");
                    // Single writes on one hot document are serialized by the writer: no conflict.
                    store.run(inc("counter")).await.expect("inc");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let all = documents(&store, json!({})).await;
        assert_eq!(all.len(), 32 * 20 + 1);
        let counter = documents(&store, json!({ "_id": "counter" })).await;
        assert_eq!(counter[0]["n"], json!(32 * 20));
    }

    #[tokio::test]
    async fn reads_in_a_transaction_see_its_writes_over_its_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        for (id, n) in [("a", 1), ("b", 2), ("c", 3)] {
            store
                .run(insert(json!({ "_id": id, "n": n })))
                .await
                .expect("insert");
        }
        let mut tx = store.begin().await.expect("begin");
        tx.run(Op::Delete {
            collection: "c".into(),
            filter: Query::from_value(json!({ "_id": "b" })).expect("filter"),
            many: false,
        })
        .await
        .expect("delete");
        tx.run(inc("c")).await.expect("update");
        tx.run(insert(json!({ "_id": "d", "n": 4 })))
            .await
            .expect("insert");
        // Committed meanwhile by someone else: not in this snapshot.
        store
            .run(insert(json!({ "_id": "e", "n": 5 })))
            .await
            .expect("insert outside");
        let inside = tx
            .run(find(json!({ "n": { "$gte": 1 } })))
            .await
            .expect("find");
        assert_eq!(
            inside,
            Output::Documents(vec![
                json!({ "_id": "a", "n": 1 }),
                json!({ "_id": "c", "n": 4 }),
                json!({ "_id": "d", "n": 4 }),
            ])
        );
        let duplicate = tx.run(insert(json!({ "_id": "a" }))).await;
        assert!(matches!(duplicate, Err(DocumentError::DuplicateKey(_))));
        // The store error ended the transaction: nothing of it stays.
        assert!(matches!(
            tx.commit().await,
            Err(DocumentError::TransactionClosed(_))
        ));
        let ids: Vec<Value> = documents(&store, json!({}))
            .await
            .iter()
            .map(|d| d["_id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("a"), json!("b"), json!("c"), json!("e")]);
    }

    fn sorted_find(collection: &str, filter: Value, sort: Value, skip: u64, limit: u64) -> Op {
        let mut spec = super::super::ops::FindSpec::sorted(sort).expect("sort");
        spec.skip = skip;
        spec.limit = Some(limit);
        Op::Find {
            collection: collection.into(),
            filter: Query::from_value(filter).expect("filter"),
            spec,
        }
    }

    /// A sorted find with a limit walks the index (in MongoDB's order of types) and must give
    /// what sorting the whole collection gives: the same documents in an unindexed collection are
    /// the oracle, also inside a transaction whose writes change the order.
    #[tokio::test]
    async fn sorted_finds_on_an_index_match_a_full_sort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        store
            .create_index(&IndexSpec {
                store: "default".into(),
                collection: "indexed".into(),
                keys: vec![("at".into(), true)],
                unique: false,
                name: "at".into(),
            })
            .await
            .expect("index");
        let values = [
            json!(5),
            json!(-2),
            json!(1.5),
            json!("b"),
            json!("a"),
            json!(null),
            json!(true),
            json!(false),
            json!(5),
            json!(0),
            json!(1),
            json!("é"),
            json!(40),
            json!(3),
        ];
        for collection in ["indexed", "plain"] {
            let mut documents = Vec::new();
            for (i, value) in values.iter().enumerate() {
                documents.push(json!({ "_id": i, "at": value, "odd": i % 2 }));
            }
            documents.push(json!({ "_id": 100, "odd": 0 }));
            for document in documents {
                let Value::Object(document) = document else {
                    unreachable!()
                };
                store
                    .run(Op::Insert {
                        collection: collection.into(),
                        documents: vec![document],
                    })
                    .await
                    .expect("insert");
            }
        }
        let cases = [
            (json!({}), json!({ "at": 1 }), 0, 3),
            (json!({}), json!({ "at": -1 }), 0, 4),
            (json!({}), json!({ "at": 1, "_id": -1 }), 2, 5),
            (json!({ "odd": 1 }), json!({ "at": -1 }), 1, 3),
            (json!({ "at": { "$gte": 1 } }), json!({ "at": 1 }), 0, 2),
            (json!({ "at": { "$lt": "z" } }), json!({ "at": -1 }), 0, 2),
            (json!({}), json!({ "at": 1 }), 0, 100),
        ];
        let mut tx = store.begin().await.expect("begin");
        for (filter, sort, skip, limit) in &cases {
            let indexed = store
                .run(sorted_find(
                    "indexed",
                    filter.clone(),
                    sort.clone(),
                    *skip,
                    *limit,
                ))
                .await
                .expect("indexed");
            let plain = store
                .run(sorted_find(
                    "plain",
                    filter.clone(),
                    sort.clone(),
                    *skip,
                    *limit,
                ))
                .await
                .expect("plain");
            assert_eq!(indexed, plain, "{filter} sorted by {sort}");
        }
        for collection in ["indexed", "plain"] {
            tx.run(Op::Update {
                collection: collection.into(),
                filter: Query::from_value(json!({ "_id": 3 })).expect("filter"),
                update: UpdateSpec::from_value(json!({ "$set": { "at": -100 } })).expect("update"),
                upsert: false,
                many: false,
            })
            .await
            .expect("update");
        }
        for (filter, sort, skip, limit) in &cases {
            let indexed = tx
                .run(sorted_find(
                    "indexed",
                    filter.clone(),
                    sort.clone(),
                    *skip,
                    *limit,
                ))
                .await
                .expect("indexed");
            let plain = tx
                .run(sorted_find(
                    "plain",
                    filter.clone(),
                    sort.clone(),
                    *skip,
                    *limit,
                ))
                .await
                .expect("plain");
            assert_eq!(
                indexed, plain,
                "in the transaction: {filter} sorted by {sort}"
            );
        }
    }
}
