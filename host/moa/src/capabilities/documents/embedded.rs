//! The embedded document backend (the default): one SQLite file per store, documents as JSON text,
//! filters, updates, sorts and projections run by moa's own MongoDB-semantics code; declared indexes
//! become SQLite expression indexes; a transaction is a SQLite write transaction on its own connection.

use super::ops::{DocumentError, FindSpec, Op, Output, UpdateOutcome};
use super::values::{get_path, id_key};
use super::{DocumentBackend, DocumentTransaction, IndexSpec};
use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, params_from_iter};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// One store's SQLite file and its open connections.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Declared indexes by collection (index lookups and the array check on writes).
    indexes: RwLock<BTreeMap<String, Vec<IndexSpec>>>,
    busy_timeout: Duration,
    /// Writers of this process queue here (first come, first served) before they take SQLite's
    /// write lock, instead of polling it through SQLite's busy handler (sleeps of up to 100 ms
    /// that collapse throughput when many writers contend); `busy_timeout` still covers other
    /// processes on the same file.
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store file at `path`.
    pub fn open(path: &Path, busy_timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the document directory {}", dir.display())
            })?;
        }
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            indexes: RwLock::new(BTreeMap::new()),
            busy_timeout,
            writer: Arc::new(tokio::sync::Mutex::new(())),
        });
        let connection = inner
            .connect()
            .with_context(|| format!("cannot open the document store {}", path.display()))?;
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS documents (
                     seq        INTEGER PRIMARY KEY,
                     collection TEXT NOT NULL,
                     id         TEXT NOT NULL,
                     body       TEXT NOT NULL,
                     UNIQUE (collection, id)
                 );",
            )
            .with_context(|| format!("cannot initialise the document store {}", path.display()))?;
        inner.give_back(connection);
        Ok(EmbeddedStore { inner })
    }
}

impl Inner {
    /// Waits for this process's turn to write, up to the busy timeout (then `write-conflict`: a
    /// transaction holds the store that long, possibly the caller's own).
    async fn turn_to_write(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, DocumentError> {
        tokio::time::timeout(self.busy_timeout, self.writer.clone().lock_owned())
            .await
            .map_err(|_| {
                DocumentError::WriteConflict(format!(
                    "another transaction held the store for {} ms; run the transaction again",
                    self.busy_timeout.as_millis()
                ))
            })
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open(&self.path)?;
        connection.busy_timeout(self.busy_timeout)?;
        connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        Ok(connection)
    }

    fn take(&self) -> Result<Connection, DocumentError> {
        if let Some(connection) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(connection);
        }
        self.connect().map_err(|e| map_sqlite(&self.path, e))
    }

    fn give_back(&self, connection: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < 8
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

/// Runs `f` on a pooled connection on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner, &Connection) -> Result<T, DocumentError> + Send + 'static,
) -> Result<T, DocumentError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || {
        let connection = inner.take()?;
        let result = f(&inner, &connection);
        // A connection left inside a transaction (a panic or an error mid-way) is not reused.
        if connection.is_autocommit() {
            inner.give_back(connection);
        }
        result
    })
    .await
    .map_err(|e| DocumentError::Other(format!("document task failed: {e}")))?
}

#[async_trait]
impl DocumentBackend for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn run(&self, op: Op) -> Result<Output, DocumentError> {
        let _turn = match op.writes() {
            true => Some(self.inner.turn_to_write().await?),
            false => None,
        };
        blocking(&self.inner, move |inner, connection| {
            let indexes = inner.indexes_of(op.collection());
            if !op.writes() {
                return execute(connection, &indexes, op);
            }
            begin(connection, &inner.path)?;
            let result = execute(connection, &indexes, op);
            finish(connection, &inner.path, result.is_ok())?;
            result
        })
        .await
    }

    async fn begin(&self) -> Result<Box<dyn DocumentTransaction>, DocumentError> {
        let turn = self.inner.turn_to_write().await?;
        let connection = blocking_take(&self.inner).await?;
        Ok(Box::new(EmbeddedTransaction {
            inner: self.inner.clone(),
            connection: Some(connection),
            turn: Some(turn),
        }))
    }

    async fn create_index(&self, index: &IndexSpec) -> Result<(), DocumentError> {
        let spec = index.clone();
        blocking(&self.inner, move |inner, connection| {
            // A partial index per collection: other collections' documents (which may lack the
            // fields) are not in it, and a lookup naming the collection as a literal can use it.
            let columns: Vec<String> = spec
                .keys
                .iter()
                .map(|(path, _)| index_expression(path))
                .collect();
            let sql = format!(
                "CREATE {unique} INDEX IF NOT EXISTS \"{name}\" ON documents ({columns}) WHERE collection = '{collection}'",
                unique = if spec.unique { "UNIQUE" } else { "" },
                name = sql_index_name(&spec),
                columns = columns.join(", "),
                collection = spec.collection,
            );
            connection
                .execute_batch(&sql)
                .map_err(|e| map_sqlite(&inner.path, e))?;
            if let Ok(mut indexes) = inner.indexes.write() {
                let list = indexes.entry(spec.collection.clone()).or_default();
                if !list.iter().any(|i| i.name == spec.name) {
                    list.push(spec);
                }
            }
            Ok(())
        })
        .await
    }
}

async fn blocking_take(inner: &Arc<Inner>) -> Result<Connection, DocumentError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || {
        let connection = inner.take()?;
        begin(&connection, &inner.path)?;
        Ok(connection)
    })
    .await
    .map_err(|e| DocumentError::Other(format!("document task failed: {e}")))?
}

/// A write transaction held on its own connection from `begin` to `commit` / `abort`; one writer at
/// a time, so a second transaction waits its turn (up to the busy timeout, then a `write-conflict`).
struct EmbeddedTransaction {
    inner: Arc<Inner>,
    /// `None` while an operation runs on the blocking pool, or after the end.
    connection: Option<Connection>,
    /// This process's write turn, held until the transaction ends.
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl EmbeddedTransaction {
    async fn with_connection<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&Inner, &Connection) -> Result<T, DocumentError> + Send + 'static,
    ) -> Result<T, DocumentError> {
        let connection = self
            .connection
            .take()
            .ok_or_else(|| DocumentError::TransactionClosed("the transaction has ended".into()))?;
        let inner = self.inner.clone();
        let (connection, result) = tokio::task::spawn_blocking(move || {
            let result = f(&inner, &connection);
            (connection, result)
        })
        .await
        .map_err(|e| DocumentError::Other(format!("document task failed: {e}")))?;
        self.connection = Some(connection);
        result
    }
}

#[async_trait]
impl DocumentTransaction for EmbeddedTransaction {
    async fn run(&mut self, op: Op) -> Result<Output, DocumentError> {
        let result = self
            .with_connection(move |inner, connection| {
                let indexes = inner.indexes_of(op.collection());
                execute(connection, &indexes, op)
            })
            .await;
        // As on MongoDB, an error from the store ends the transaction: its writes are dropped
        // and later calls get `transaction-closed`.
        if result.is_err() && self.connection.is_some() {
            let _ = self.end(false).await;
        }
        result
    }

    async fn commit(mut self: Box<Self>) -> Result<(), DocumentError> {
        self.end(true).await
    }

    async fn abort(mut self: Box<Self>) -> Result<(), DocumentError> {
        self.end(false).await
    }
}

impl EmbeddedTransaction {
    /// Commits or rolls back, returns the connection to the pool and gives up the write turn;
    /// later calls get `transaction-closed`.
    async fn end(&mut self, commit: bool) -> Result<(), DocumentError> {
        let result = self
            .with_connection(move |inner, connection| finish(connection, &inner.path, commit))
            .await;
        if let Some(connection) = self.connection.take()
            && connection.is_autocommit()
        {
            self.inner.give_back(connection);
        }
        self.turn = None;
        result
    }
}

fn begin(connection: &Connection, path: &Path) -> Result<(), DocumentError> {
    connection
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| map_sqlite(path, e))
}

fn finish(connection: &Connection, path: &Path, commit: bool) -> Result<(), DocumentError> {
    if connection.is_autocommit() {
        return Err(DocumentError::TransactionClosed(
            "the transaction has ended".into(),
        ));
    }
    let sql = if commit { "COMMIT" } else { "ROLLBACK" };
    let result = connection
        .execute_batch(sql)
        .map_err(|e| map_sqlite(path, e));
    if result.is_err() && !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    result
}

/// The SQL expression an index key (and a lookup by it) uses: a missing field and `null` index
/// the same, as in MongoDB.
fn index_expression(path: &str) -> String {
    format!("IFNULL(json_extract(body, '$.{path}'), x'00')")
}

fn sql_index_name(spec: &IndexSpec) -> String {
    format!("ix_{}_{}", spec.collection, spec.name)
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
                    "another transaction holds the store; run the transaction again".into(),
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

/// A document as stored: its row and its JSON.
struct Row {
    seq: i64,
    document: Map<String, Value>,
}

/// Runs one operation on `connection` (inside a transaction when it writes).
fn execute(
    connection: &Connection,
    indexes: &[IndexSpec],
    op: Op,
) -> Result<Output, DocumentError> {
    let path = connection.path().map(PathBuf::from).unwrap_or_default();
    let sqlite = |e| map_sqlite(&path, e);
    match op {
        Op::Insert {
            collection,
            documents,
        } => {
            let mut ids = Vec::with_capacity(documents.len());
            for document in documents {
                let id = insert(connection, indexes, &collection, &document)
                    .map_err(|e| e.into_document_error(&path))?;
                ids.push(id);
            }
            Ok(Output::Ids(ids))
        }
        Op::Find {
            collection,
            filter,
            spec,
        } => {
            let keep = match (&spec.sort, spec.limit) {
                (None, Some(limit)) => Keep::Upto(
                    usize::try_from(spec.skip.saturating_add(limit)).unwrap_or(usize::MAX),
                ),
                _ => Keep::All,
            };
            let (rows, _) = matching(connection, indexes, &collection, &filter.parsed, keep)?;
            Ok(Output::Documents(shape(rows, &spec)))
        }
        Op::Count { collection, filter } => {
            let (_, count) = matching(
                connection,
                indexes,
                &collection,
                &filter.parsed,
                Keep::Count,
            )?;
            Ok(Output::Count(count))
        }
        Op::Update {
            collection,
            filter,
            update,
            upsert,
            many,
        } => {
            let keep = if many { Keep::All } else { Keep::Upto(1) };
            let (rows, _) = matching(connection, indexes, &collection, &filter.parsed, keep)?;
            let mut outcome = UpdateOutcome {
                matched: rows.len() as u64,
                ..UpdateOutcome::default()
            };
            for mut row in rows {
                let changed = update
                    .parsed
                    .apply(&mut row.document, false)
                    .map_err(DocumentError::InvalidUpdate)?;
                if changed {
                    rewrite(connection, indexes, &row).map_err(|e| e.into_document_error(&path))?;
                    outcome.modified += 1;
                }
            }
            if outcome.matched == 0 && upsert {
                let mut document = filter.parsed.upsert_seed();
                update
                    .parsed
                    .apply(&mut document, true)
                    .map_err(DocumentError::InvalidUpdate)?;
                ensure_id(&mut document);
                let id = insert(connection, indexes, &collection, &document)
                    .map_err(|e| e.into_document_error(&path))?;
                outcome.upserted_id = Some(id);
            }
            Ok(Output::Updated(outcome))
        }
        Op::Replace {
            collection,
            filter,
            mut replacement,
            upsert,
        } => {
            let (mut rows, _) = matching(
                connection,
                indexes,
                &collection,
                &filter.parsed,
                Keep::Upto(1),
            )?;
            if let Some(row) = rows.pop() {
                let id = row.document.get("_id").cloned().unwrap_or(Value::Null);
                match replacement.get("_id") {
                    Some(new) if !super::values::values_equal(new, &id) => {
                        return Err(DocumentError::InvalidArgument(
                            "a replacement cannot change `_id`".into(),
                        ));
                    }
                    _ => {}
                }
                let mut document = Map::new();
                document.insert("_id".into(), id);
                document.extend(replacement.into_iter().filter(|(k, _)| k != "_id"));
                let changed = document != row.document;
                if changed {
                    rewrite(
                        connection,
                        indexes,
                        &Row {
                            seq: row.seq,
                            document,
                        },
                    )
                    .map_err(|e| e.into_document_error(&path))?;
                }
                return Ok(Output::Updated(UpdateOutcome {
                    matched: 1,
                    modified: u64::from(changed),
                    upserted_id: None,
                }));
            }
            if !upsert {
                return Ok(Output::Updated(UpdateOutcome::default()));
            }
            if !replacement.contains_key("_id")
                && let Some(id) = filter.pinned_id()
            {
                replacement.insert("_id".into(), id.clone());
            }
            ensure_id(&mut replacement);
            let id = insert(connection, indexes, &collection, &replacement)
                .map_err(|e| e.into_document_error(&path))?;
            Ok(Output::Updated(UpdateOutcome {
                matched: 0,
                modified: 0,
                upserted_id: Some(id),
            }))
        }
        Op::FindOneAndUpdate {
            collection,
            filter,
            update,
            sort,
            projection,
            upsert,
            return_after,
        } => {
            let keep = if sort.is_some() {
                Keep::All
            } else {
                Keep::Upto(1)
            };
            let (mut rows, _) = matching(connection, indexes, &collection, &filter.parsed, keep)?;
            if let Some((_, sort)) = &sort {
                rows.sort_by(|a, b| {
                    sort.order(
                        &Value::Object(a.document.clone()),
                        &Value::Object(b.document.clone()),
                    )
                });
            }
            let project = |document: Map<String, Value>| {
                let value = Value::Object(document);
                match &projection {
                    Some((_, p)) => p.apply(value),
                    None => value,
                }
            };
            if let Some(mut row) = rows.into_iter().next() {
                let before = row.document.clone();
                let changed = update
                    .parsed
                    .apply(&mut row.document, false)
                    .map_err(DocumentError::InvalidUpdate)?;
                if changed {
                    rewrite(connection, indexes, &row).map_err(|e| e.into_document_error(&path))?;
                }
                let shown = if return_after { row.document } else { before };
                return Ok(Output::Document(Some(project(shown))));
            }
            if !upsert {
                return Ok(Output::Document(None));
            }
            let mut document = filter.parsed.upsert_seed();
            update
                .parsed
                .apply(&mut document, true)
                .map_err(DocumentError::InvalidUpdate)?;
            ensure_id(&mut document);
            insert(connection, indexes, &collection, &document)
                .map_err(|e| e.into_document_error(&path))?;
            Ok(Output::Document(return_after.then(|| project(document))))
        }
        Op::Delete {
            collection,
            filter,
            many,
        } => {
            let keep = if many { Keep::All } else { Keep::Upto(1) };
            let (rows, _) = matching(connection, indexes, &collection, &filter.parsed, keep)?;
            let mut statement = connection
                .prepare_cached("DELETE FROM documents WHERE seq = ?1")
                .map_err(sqlite)?;
            for row in &rows {
                statement.execute([row.seq]).map_err(sqlite)?;
            }
            Ok(Output::Count(rows.len() as u64))
        }
    }
}

fn ensure_id(document: &mut Map<String, Value>) {
    if !document.contains_key("_id") {
        document.insert("_id".into(), Value::String(super::values::new_object_id()));
    }
}

/// Sort, skip, limit and projection on the matching rows.
fn shape(mut rows: Vec<Row>, spec: &FindSpec) -> Vec<Value> {
    let mut documents: Vec<Value> = rows.drain(..).map(|r| Value::Object(r.document)).collect();
    if let Some((_, sort)) = &spec.sort {
        documents.sort_by(|a, b| sort.order(a, b));
    }
    let skip = usize::try_from(spec.skip).unwrap_or(usize::MAX);
    let limit = spec
        .limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(usize::MAX);
    documents
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|document| match &spec.projection {
            Some((_, projection)) => projection.apply(document),
            None => document,
        })
        .collect()
}

/// Why a write failed: SQLite's error, or the document itself.
enum WriteError {
    Sqlite(rusqlite::Error),
    Document(DocumentError),
}

impl WriteError {
    fn into_document_error(self, path: &Path) -> DocumentError {
        match self {
            WriteError::Sqlite(e) => map_sqlite(path, e),
            WriteError::Document(e) => e,
        }
    }
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
        WriteError::Sqlite(e)
    }
}

/// Indexed fields hold scalars here: MongoDB's multikey indexes over arrays are not emulated, so an
/// array there is refused instead of indexed differently.
fn check_indexed(indexes: &[IndexSpec], document: &Map<String, Value>) -> Result<(), WriteError> {
    let value = Value::Object(document.clone());
    for index in indexes {
        for (path, _) in &index.keys {
            if get_path(&value, path).is_some_and(|v| v.is_array() || v.is_object()) {
                return Err(WriteError::Document(DocumentError::InvalidArgument(
                    format!(
                        "`{path}` is indexed (index `{}`); the embedded store indexes scalar values only, not arrays or objects",
                        index.name
                    ),
                )));
            }
        }
    }
    Ok(())
}

fn encode(document: &Map<String, Value>) -> Result<String, WriteError> {
    let text = serde_json::to_string(document)
        .map_err(|e| WriteError::Document(DocumentError::InvalidArgument(e.to_string())))?;
    if text.len() > super::ops::MAX_DOCUMENT_BYTES {
        return Err(WriteError::Document(DocumentError::TooLarge(format!(
            "the document would be {} bytes, over the {}-byte limit",
            text.len(),
            super::ops::MAX_DOCUMENT_BYTES
        ))));
    }
    Ok(text)
}

fn insert(
    connection: &Connection,
    indexes: &[IndexSpec],
    collection: &str,
    document: &Map<String, Value>,
) -> Result<Value, WriteError> {
    let id = document.get("_id").cloned().unwrap_or(Value::Null);
    let key = id_key(&id).map_err(|e| WriteError::Document(DocumentError::InvalidArgument(e)))?;
    check_indexed(indexes, document)?;
    let body = encode(document)?;
    connection
        .prepare_cached("INSERT INTO documents (collection, id, body) VALUES (?1, ?2, ?3)")?
        .execute((collection, key, body))?;
    Ok(id)
}

fn rewrite(connection: &Connection, indexes: &[IndexSpec], row: &Row) -> Result<(), WriteError> {
    check_indexed(indexes, &row.document)?;
    let body = encode(&row.document)?;
    connection
        .prepare_cached("UPDATE documents SET body = ?1 WHERE seq = ?2")?
        .execute((body, row.seq))?;
    Ok(())
}

/// How much of the matching documents an operation needs.
#[derive(Clone, Copy)]
enum Keep {
    /// Every match (sorted finds, `*-many`).
    All,
    /// The first `n` matches in insertion order (unsorted finds with a limit, `*-one`).
    Upto(usize),
    /// Only how many match.
    Count,
}

/// The most `_id` values a filter may list and still be looked up by key (SQLite binds at most
/// 32,766 parameters; a longer list scans the collection, as before).
const MAX_ID_LOOKUPS: usize = 4096;

/// The `_id` keys every match must have one of, when a top-level `_id` condition lists them
/// (`$eq` or `$in` over scalars, each convertible to a key).
fn id_keys(filter: &super::query::Filter) -> Option<Vec<String>> {
    let (_, values) = filter
        .required_values()
        .into_iter()
        .filter(|(path, values)| *path == "_id" && values.len() <= MAX_ID_LOOKUPS)
        .min_by_key(|(_, values)| values.len())?;
    values.into_iter().map(|v| id_key(v).ok()).collect()
}

/// The largest total size of matching documents one operation holds in memory: a filter that
/// matches more (for a sort, or a find without a limit) is `too-large`, not a host out of memory.
const MAX_MATCHED_BYTES: usize = 64 * 1024 * 1024;

/// The collection's documents that match, in insertion order, and how many matched. An `_id`
/// equality or an equality on an index's first key narrows the scan in SQL; the filter itself
/// always decides.
fn matching(
    connection: &Connection,
    indexes: &[IndexSpec],
    collection: &str,
    filter: &super::query::Filter,
    keep: Keep,
) -> Result<(Vec<Row>, u64), DocumentError> {
    let path = connection.path().map(PathBuf::from).unwrap_or_default();
    let sqlite = |e| map_sqlite(&path, e);
    super::ops::check_collection_name(collection)?;
    // The collection as a literal (names are checked: letters, digits, `_`, `-`, `.`), so SQLite
    // can use the collection's partial indexes.
    let mut sql = format!("SELECT seq, body FROM documents WHERE collection = '{collection}'");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let equalities = filter.equalities();
    if let Some(keys) = id_keys(filter) {
        // `_id` equals one of a few values (`$eq`, or `$in` as a chunk's delete-then-insert
        // sends): those rows by the primary key, not a scan of the collection.
        let marks = (1..=keys.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(",");
        sql.push_str(&format!(" AND id IN ({marks})"));
        args.extend(keys.into_iter().map(Into::into));
    } else if let Some((path, value)) = equalities.iter().find(|(path, value)| {
        (value.is_string() || value.is_number())
            && indexes
                .iter()
                .any(|index| index.keys.first().is_some_and(|(first, _)| first == path))
    }) {
        sql.push_str(&format!(" AND {} = ?1", index_expression(path)));
        args.push(match value {
            Value::String(s) => s.clone().into(),
            Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n.as_f64().unwrap_or(f64::NAN).into(),
            },
            _ => rusqlite::types::Value::Null,
        });
    }
    sql.push_str(" ORDER BY seq");
    let mut statement = connection.prepare_cached(&sql).map_err(sqlite)?;
    let mut rows = statement.query(params_from_iter(args)).map_err(sqlite)?;
    let mut out = Vec::new();
    let (mut count, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.next().map_err(sqlite)? {
        if let Keep::Upto(n) = keep
            && out.len() >= n
        {
            break;
        }
        let seq: i64 = row.get(0).map_err(sqlite)?;
        let body: String = row.get(1).map_err(sqlite)?;
        let Ok(value) = serde_json::from_str::<Value>(&body) else {
            continue;
        };
        if !filter.matches(&value) {
            continue;
        }
        count += 1;
        if matches!(keep, Keep::Count) {
            continue;
        }
        bytes += body.len();
        if bytes > MAX_MATCHED_BYTES {
            return Err(DocumentError::TooLarge(format!(
                "the documents this operation must hold are over {} MiB: narrow the filter, or add a limit",
                MAX_MATCHED_BYTES >> 20
            )));
        }
        if let Value::Object(document) = value {
            out.push(Row { seq, document });
        }
    }
    Ok((out, count))
}
