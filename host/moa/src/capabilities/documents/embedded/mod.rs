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

mod outbox;
mod plan;
mod view;
mod writer;

use super::ops::{DocumentError, Op, Output};
use super::outbox::{Staged, check_mark, now_ms};
use super::{DocumentBackend, DocumentTransaction, IndexSpec};
use crate::capabilities::messaging::OutgoingMessage;
use async_trait::async_trait;
use outbox::{RelayWork, StagedRow};
use rusqlite::{Connection, ErrorCode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use view::{Overlay, View};
use writer::{Commit, Work, Writer};

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
    /// The last outbox `seq` this host's relay deleted: its next read starts after it.
    relay_cursor: AtomicI64,
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
                relay_cursor: AtomicI64::new(0),
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

/// The tables, the `version` column files from before optimistic transactions lack, and the
/// outbox and inbox moved out of the collections older files kept them in.
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
    connection.execute_batch(outbox::SCHEMA)?;
    outbox::migrate(connection)
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
            marks: Vec::new(),
            staged: Vec::new(),
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

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<Staged>, DocumentError> {
        let after = self.inner.relay_cursor.load(Ordering::Acquire);
        self.with_reader(move |connection| outbox::pending(connection, after, limit))
            .await
    }

    async fn outbox_lease(&self, holder: &str, for_ms: i64) -> Result<bool, DocumentError> {
        let now_ms = now_ms();
        let held = self
            .inner
            .writer
            .submit(Work::Relay(RelayWork::Lease {
                holder: holder.to_string(),
                now_ms,
                until_ms: now_ms + for_ms,
            }))
            .await?;
        Ok(matches!(held, Output::Count(n) if n > 0))
    }

    async fn outbox_remove(
        &self,
        published: &[Staged],
        holder: &str,
        for_ms: i64,
    ) -> Result<(), DocumentError> {
        // `outbox_pending` returns every committed message after the cursor up to its limit, in
        // `seq` order, and later commits get higher numbers: everything up to the highest
        // published `seq` went out.
        let Some(through) = published.iter().map(|s| s.seq).max() else {
            return Ok(());
        };
        self.inner
            .writer
            .submit(Work::Relay(RelayWork::Remove {
                through,
                holder: holder.to_string(),
                until_ms: now_ms() + for_ms,
            }))
            .await?;
        self.inner.relay_cursor.fetch_max(through, Ordering::AcqRel);
        Ok(())
    }

    async fn outbox_backlog(&self) -> Result<u64, DocumentError> {
        self.with_reader(outbox::backlog).await
    }

    async fn inbox_prune(&self, before_ms: i64) -> Result<u64, DocumentError> {
        // In slices, so that a long-idle store's first prune does not hold up the writer.
        const SLICE: u64 = 10_000;
        let mut pruned = 0;
        loop {
            let deleted = match self
                .inner
                .writer
                .submit(Work::Relay(RelayWork::PruneInbox {
                    before_ms,
                    max: SLICE,
                }))
                .await?
            {
                Output::Count(n) => n,
                _ => 0,
            };
            pruned += deleted;
            if deleted < SLICE {
                return Ok(pruned);
            }
        }
    }
}

impl EmbeddedStore {
    /// Runs `read` on a pooled reader connection on the blocking pool.
    async fn with_reader<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DocumentError> {
        let connection = self.inner.take_reader()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let result = read(&connection).map_err(|e| map_sqlite(&inner.path, e));
            inner.give_back(connection);
            result
        })
        .await
        .map_err(|e| DocumentError::Other(format!("document task failed: {e}")))?
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
    /// Inbox marks to make at commit: `(consumer, message id)`.
    marks: Vec<(String, String)>,
    /// Outbox messages to write at commit.
    staged: Vec<StagedRow>,
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

    /// The snapshot's connection, taking the snapshot at the first operation.
    fn snapshot(&mut self) -> Result<Connection, DocumentError> {
        if let Some(connection) = self.snapshot.take() {
            return Ok(connection);
        }
        let connection = self.inner.take_reader()?;
        connection
            .execute_batch("BEGIN")
            .map_err(|e| map_sqlite(&self.inner.path, e))?;
        Ok(connection)
    }
}

#[async_trait]
impl DocumentTransaction for EmbeddedTransaction {
    async fn run(&mut self, op: Op) -> Result<Output, DocumentError> {
        let overlay = self.overlay.take().ok_or_else(Self::closed)?;
        let connection = match self.snapshot() {
            Ok(connection) => connection,
            Err(error) => {
                self.overlay = Some(overlay);
                return Err(error);
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

    async fn stage(&mut self, message: OutgoingMessage) -> Result<String, DocumentError> {
        if self.overlay.is_none() {
            return Err(Self::closed());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.staged.push(StagedRow {
            id: id.clone(),
            message,
            created_ms: now_ms(),
        });
        Ok(id)
    }

    async fn first_time(
        &mut self,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, DocumentError> {
        check_mark(consumer, message_id)?;
        if self.overlay.is_none() {
            return Err(Self::closed());
        }
        if self
            .marks
            .iter()
            .any(|(c, m)| c == consumer && m == message_id)
        {
            return Ok(false);
        }
        // A point lookup: read here, on the snapshot. A mark committed since is a conflict at
        // commit (the primary key), so two transactions cannot both see "first time".
        let connection = self.snapshot()?;
        let marked = outbox::is_marked(&connection, consumer, message_id);
        self.snapshot = Some(connection);
        match marked {
            Ok(true) => Ok(false),
            Ok(false) => {
                self.marks
                    .push((consumer.to_string(), message_id.to_string()));
                Ok(true)
            }
            Err(error) => {
                self.overlay = None;
                self.release();
                Err(map_sqlite(&self.inner.path, error))
            }
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<(), DocumentError> {
        let overlay = self.overlay.take().ok_or_else(Self::closed)?;
        self.release();
        if overlay.is_empty() && self.marks.is_empty() && self.staged.is_empty() {
            return Ok(());
        }
        let commit = Commit {
            changes: overlay.into_changes(),
            marks: std::mem::take(&mut self.marks),
            staged: std::mem::take(&mut self.staged),
        };
        self.inner
            .writer
            .submit(Work::Commit(Box::new(commit)))
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

    fn message(key: &str, payload: &str) -> OutgoingMessage {
        OutgoingMessage {
            topic: "orders".into(),
            key: Some(key.as_bytes().to_vec()),
            payload: payload.as_bytes().to_vec(),
            headers: vec![("traceparent".into(), b"00-1-2-01".to_vec())],
        }
    }

    #[tokio::test]
    async fn outbox_messages_come_in_commit_order_and_only_the_lease_holder_deletes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        // Staged first, committed second: the commit decides the order.
        let mut early = store.begin().await.expect("begin");
        let mut late = store.begin().await.expect("begin");
        early
            .stage(message("o1", "staged first"))
            .await
            .expect("stage");
        let id = late
            .stage(message("o1", "committed first"))
            .await
            .expect("stage");
        late.commit().await.expect("commit");
        early.commit().await.expect("commit");
        let mut aborted = store.begin().await.expect("begin");
        aborted
            .stage(message("o1", "aborted"))
            .await
            .expect("stage");
        aborted.abort().await.expect("abort");

        let pending = store.outbox_pending(10).await.expect("pending");
        let payloads: Vec<&[u8]> = pending
            .iter()
            .map(|s| s.message.payload.as_slice())
            .collect();
        assert_eq!(payloads, [&b"committed first"[..], b"staged first"]);
        assert_eq!(pending[0].id, id);
        assert_eq!(pending[0].message.headers, message("o1", "").headers);
        assert_eq!(store.outbox_backlog().await.expect("backlog"), 2);

        assert!(store.outbox_lease("a", 5000).await.expect("lease a"));
        assert!(
            !store.outbox_lease("b", 5000).await.expect("lease b"),
            "a holds it"
        );
        let lost = store.outbox_remove(&pending[..1], "b", 5000).await;
        assert!(
            matches!(lost, Err(DocumentError::WriteConflict(_))),
            "{lost:?}"
        );
        assert_eq!(
            store.outbox_backlog().await.expect("backlog"),
            2,
            "b deleted nothing"
        );
        store
            .outbox_remove(&pending[..1], "a", 5000)
            .await
            .expect("a removes");
        let left = store.outbox_pending(10).await.expect("pending");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message.payload, b"staged first");
        // An expired lease goes to whoever asks; given up, it is free at once.
        assert!(store.outbox_lease("a", -1).await.expect("give up"));
        assert!(store.outbox_lease("b", 5000).await.expect("b takes it"));
    }

    #[tokio::test]
    async fn an_inbox_mark_is_first_once_even_for_concurrent_transactions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir);
        let mut first = store.begin().await.expect("begin");
        let mut second = store.begin().await.expect("begin");
        assert!(first.first_time("billing", "m1").await.expect("mark"));
        assert!(
            !first.first_time("billing", "m1").await.expect("again"),
            "marked in this transaction"
        );
        assert!(
            second.first_time("billing", "m1").await.expect("mark"),
            "not committed yet"
        );
        first.commit().await.expect("commit");
        let conflict = second.commit().await;
        assert!(
            matches!(conflict, Err(DocumentError::WriteConflict(_))),
            "{conflict:?}"
        );
        let mut third = store.begin().await.expect("begin");
        assert!(!third.first_time("billing", "m1").await.expect("mark"));
        assert!(
            third
                .first_time("shipping", "m1")
                .await
                .expect("other consumer")
        );
        assert!(
            third
                .first_time("billing|m", "1")
                .await
                .expect("no ambiguity")
        );
        third.commit().await.expect("commit");
        assert_eq!(
            store.inbox_prune(0).await.expect("prune"),
            0,
            "nothing that old"
        );
        assert_eq!(store.inbox_prune(i64::MAX).await.expect("prune"), 3);
        let mut fourth = store.begin().await.expect("begin");
        assert!(
            fourth
                .first_time("billing", "m1")
                .await
                .expect("pruned mark")
        );
    }

    #[tokio::test]
    async fn a_file_from_before_the_outbox_tables_keeps_its_waiting_messages_and_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(store(&dir));
        {
            // What the collection-based outbox left: two messages of one key out of creation
            // order, a key counter, a lease and an inbox mark.
            let connection = Connection::open(dir.path().join("store.db")).expect("open");
            let put = |collection: &str, body: Value| {
                let id = body["_id"].to_string();
                connection
                    .execute(
                        "INSERT INTO documents (collection, id, body) VALUES (?1, ?2, ?3)",
                        (collection, id, body.to_string()),
                    )
                    .expect("insert");
            };
            let staged = |id: &str, seq: i64, created: i64, payload: &str| {
                json!({ "_id": id, "topic": "orders", "key": hex::encode("o1"),
                        "payload": hex::encode(payload), "headers": [["h", hex::encode("v")]],
                        "okey": format!("orders|{}", hex::encode("o1")), "seq": seq,
                        "created_ms": created })
            };
            put("_moa_outbox", staged("m2", 2, 100, "second"));
            put("_moa_outbox", staged("m1", 1, 200, "first"));
            put(
                "_moa_outbox_keys",
                json!({ "_id": "orders|6f31", "seq": 2 }),
            );
            put(
                "_moa_outbox_lease",
                json!({ "_id": "relay", "holder": "x", "until_ms": 1 }),
            );
            put("_moa_inbox", json!({ "_id": "billing|m0", "at_ms": 5 }));
        }
        let store = store(&dir);
        let pending = store.outbox_pending(10).await.expect("pending");
        let moved: Vec<(&str, &[u8])> = pending
            .iter()
            .map(|s| (s.id.as_str(), s.message.payload.as_slice()))
            .collect();
        assert_eq!(moved, [("m1", &b"first"[..]), ("m2", b"second")]);
        assert_eq!(
            pending[0].message.headers,
            vec![("h".to_string(), b"v".to_vec())]
        );
        let mut tx = store.begin().await.expect("begin");
        assert!(
            !tx.first_time("billing", "m0").await.expect("mark"),
            "the mark moved too"
        );
        let left = rusqlite::Connection::open(dir.path().join("store.db"))
            .expect("open")
            .query_row(
                "SELECT count(*) FROM documents WHERE collection LIKE '\\_moa\\_%' ESCAPE '\\'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .expect("count");
        assert_eq!(left, 0, "the old collections are gone");
    }
}
