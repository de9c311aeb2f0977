//! One SQLite database (a file, a named in-memory one, or a remote libSQL server) and the
//! connections components open on it: statements stop at the invocation's deadline and stream
//! their rows; embedded ones run on tokio's blocking pool.

use super::libsql::{LibsqlConnection, LibsqlDatabase};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, InterruptHandle, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A value as SQLite stores it (the WIT `value` variant, without the bindings).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

/// Why a statement failed, in the terms of Spin's `error` variant.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("the database is full")]
    DatabaseFull,
    #[error("{0}")]
    Io(String),
}

impl From<rusqlite::Error> for SqliteError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => SqliteError::DatabaseFull,
            Some(rusqlite::ErrorCode::OperationInterrupted) => SqliteError::Io(
                "the statement was interrupted: it ran past the request's deadline".into(),
            ),
            _ => SqliteError::Io(err.to_string()),
        }
    }
}

/// How many rows a streaming statement runs ahead of the component reading them.
const ROWS_AHEAD: usize = 64;

/// Most bytes one synchronous `execute` may return (it cannot stream, so the host holds them all).
pub const MAX_RESULT_BYTES: usize = 64 << 20;

/// Where a database lives.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    /// Shared-cache in-memory database under this URI; gone when the app stops.
    Memory(String),
}

/// One configured database. Every `open` gets its own connection (a SQLite connection, or a
/// stream on the libSQL server), so `changes` and `last-insert-rowid` are the component's own, as
/// SQLite defines them per connection.
pub enum SqliteDatabase {
    Embedded {
        location: Location,
        /// Keeps a named in-memory database alive between connections.
        _anchor: Option<Mutex<Connection>>,
    },
    Remote(LibsqlDatabase),
}

impl SqliteDatabase {
    /// Opens (creating if needed) the database and sets the pragmas every connection gets.
    pub fn open(location: Location) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Location::File(path) = &location
            && let Some(dir) = path.parent()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create SQLite directory {}", dir.display()))?;
        }
        let first = connect(&location)
            .with_context(|| format!("cannot open SQLite database {}", describe(&location)))?;
        if let Location::File(_) = &location {
            first
                .execute_batch("PRAGMA journal_mode = WAL;")
                .with_context(|| format!("cannot set WAL mode on {}", describe(&location)))?;
        }
        let anchor = matches!(location, Location::Memory(_)).then(|| Mutex::new(first));
        Ok(SqliteDatabase::Embedded {
            location,
            _anchor: anchor,
        })
    }

    /// A new connection for one component's `open`.
    pub async fn connect(&self) -> Result<SqliteConnection, SqliteError> {
        let location = match self {
            SqliteDatabase::Remote(database) => {
                return Ok(SqliteConnection::Remote(database.connect()));
            }
            SqliteDatabase::Embedded { location, .. } => location.clone(),
        };
        let connection = tokio::task::spawn_blocking(move || connect(&location))
            .await
            .map_err(|err| SqliteError::Io(format!("opening the database failed: {err}")))??;
        Ok(SqliteConnection::Embedded(EmbeddedConnection {
            interrupt: Arc::new(connection.get_interrupt_handle()),
            connection: Arc::new(Mutex::new(connection)),
            counters: Arc::default(),
        }))
    }
}

fn describe(location: &Location) -> String {
    match location {
        Location::File(path) => path.display().to_string(),
        Location::Memory(name) => format!("in-memory database {name}"),
    }
}

fn connect(location: &Location) -> rusqlite::Result<Connection> {
    let connection = match location {
        Location::File(path) => Connection::open(path)?,
        Location::Memory(uri) => Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?,
    };
    connection.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")?;
    Ok(connection)
}

/// The columns and rows of a statement run to the end.
#[derive(Debug, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// A statement running on the blocking pool: its columns, its rows as they come, and how it ended.
pub struct RunningQuery {
    pub columns: Vec<String>,
    pub rows: mpsc::Receiver<Vec<Value>>,
    pub done: oneshot::Receiver<Result<(), SqliteError>>,
    /// Interrupts the statement when the component drops the stream or its instance goes away.
    pub guard: InterruptOnDrop,
}

/// Interrupts the connection's running statement when dropped before [`Self::disarm`].
pub struct InterruptOnDrop {
    handle: Option<Arc<InterruptHandle>>,
}

impl InterruptOnDrop {
    pub fn disarm(&mut self) {
        self.handle = None;
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.interrupt();
        }
    }
}

/// One component's connection (a WIT `connection` resource holds it).
pub enum SqliteConnection {
    Embedded(EmbeddedConnection),
    Remote(LibsqlConnection),
}

impl SqliteConnection {
    /// Runs one statement to the end (the interface's synchronous `execute`).
    pub async fn execute(
        &self,
        sql: String,
        params: Vec<Value>,
        deadline: Instant,
    ) -> Result<QueryResult, SqliteError> {
        match self {
            SqliteConnection::Embedded(connection) => {
                connection.execute(sql, params, deadline).await
            }
            SqliteConnection::Remote(connection) => connection.execute(sql, params, deadline).await,
        }
    }

    /// Starts one statement whose rows stream to the component (`execute-async`). A remote
    /// statement's rows arrive in one answer and are handed on as the component reads them.
    pub async fn start(
        &self,
        sql: String,
        params: Vec<Value>,
        deadline: Instant,
    ) -> Result<RunningQuery, SqliteError> {
        let connection = match self {
            SqliteConnection::Embedded(connection) => {
                return connection.start(sql, params, deadline).await;
            }
            SqliteConnection::Remote(connection) => connection,
        };
        let result = connection.execute(sql, params, deadline).await?;
        let (rows_tx, rows_rx) = mpsc::channel(ROWS_AHEAD);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            for row in result.rows {
                if rows_tx.send(row).await.is_err() {
                    return;
                }
            }
            drop(rows_tx);
            let _ = done_tx.send(Ok(()));
        });
        Ok(RunningQuery {
            columns: result.columns,
            rows: rows_rx,
            done: done_rx,
            guard: InterruptOnDrop { handle: None },
        })
    }

    /// `changes()` of the connection (rows changed by its last INSERT, UPDATE or DELETE).
    pub fn changes(&self) -> u64 {
        match self {
            SqliteConnection::Embedded(connection) => connection.changes(),
            SqliteConnection::Remote(connection) => connection.changes(),
        }
    }

    /// `last_insert_rowid()` of the connection (0 before its first INSERT).
    pub fn last_insert_rowid(&self) -> i64 {
        match self {
            SqliteConnection::Embedded(connection) => connection.last_insert_rowid(),
            SqliteConnection::Remote(connection) => connection.last_insert_rowid(),
        }
    }
}

/// A connection to an embedded database. It runs one statement at a time: a statement whose rows
/// are still streaming holds it until they are read or dropped.
pub struct EmbeddedConnection {
    connection: Arc<Mutex<Connection>>,
    interrupt: Arc<InterruptHandle>,
    counters: Arc<Counters>,
}

/// SQLite's `changes()` and `last_insert_rowid()` as of the connection's last finished statement,
/// readable while another statement streams.
#[derive(Default)]
struct Counters {
    changes: AtomicU64,
    last_insert_rowid: AtomicI64,
}

impl Counters {
    fn record(&self, connection: &Connection) {
        self.changes.store(connection.changes(), Ordering::Relaxed);
        self.last_insert_rowid
            .store(connection.last_insert_rowid(), Ordering::Relaxed);
    }
}

impl EmbeddedConnection {
    fn guard(&self) -> InterruptOnDrop {
        InterruptOnDrop {
            handle: Some(self.interrupt.clone()),
        }
    }

    /// Runs `work` on the connection on the blocking pool; stops SQLite at `deadline`, and when the
    /// caller goes away (the guest was stopped) before it finished.
    async fn blocking<T: Send + 'static>(
        &self,
        deadline: Instant,
        work: impl FnOnce(&Connection) -> Result<T, SqliteError> + Send + 'static,
    ) -> Result<T, SqliteError> {
        let connection = self.connection.clone();
        let mut guard = self.guard();
        let result = tokio::task::spawn_blocking(move || {
            let connection = connection
                .lock()
                .map_err(|_| SqliteError::Io("the connection failed earlier".into()))?;
            with_deadline(&connection, deadline, || work(&connection))
        })
        .await
        .map_err(|err| SqliteError::Io(format!("the statement's task failed: {err}")))?;
        guard.disarm();
        result
    }

    /// Runs one statement to the end (the interface's synchronous `execute`).
    pub async fn execute(
        &self,
        sql: String,
        params: Vec<Value>,
        deadline: Instant,
    ) -> Result<QueryResult, SqliteError> {
        let counters = self.counters.clone();
        self.blocking(deadline, move |connection| {
            let mut statement = connection.prepare(&sql)?;
            let columns = column_names(&statement);
            bind(&mut statement, &params)?;
            let mut rows = statement.raw_query();
            let mut result = QueryResult {
                columns,
                rows: Vec::new(),
            };
            let mut bytes = 0usize;
            while let Some(row) = rows.next()? {
                let values = read_row(row, result.columns.len())?;
                bytes += values.iter().map(size_of_value).sum::<usize>();
                if bytes > MAX_RESULT_BYTES {
                    return Err(SqliteError::Io(format!(
                        "the result is larger than {} MiB; read it with the streaming execute (spin-sdk 7) or select less",
                        MAX_RESULT_BYTES >> 20
                    )));
                }
                result.rows.push(values);
            }
            drop(rows);
            counters.record(connection);
            Ok(result)
        })
        .await
    }

    /// Starts one statement whose rows stream to the component (`execute-async`). Errors from
    /// preparing or binding come back at once; errors while stepping arrive on `done`.
    pub async fn start(
        &self,
        sql: String,
        params: Vec<Value>,
        deadline: Instant,
    ) -> Result<RunningQuery, SqliteError> {
        let connection = self.connection.clone();
        let (columns_tx, columns_rx) = oneshot::channel();
        let (rows_tx, rows_rx) = mpsc::channel(ROWS_AHEAD);
        let (done_tx, done_rx) = oneshot::channel();
        let guard = self.guard();
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(connection) = connection.lock() else {
                let _ =
                    columns_tx.send(Err(SqliteError::Io("the connection failed earlier".into())));
                return;
            };
            let outcome = with_deadline(&connection, deadline, || {
                let mut statement = match connection.prepare(&sql) {
                    Ok(statement) => statement,
                    Err(err) => return Some(Err(err.into())),
                };
                let columns = column_names(&statement);
                let width = columns.len();
                if let Err(err) = bind(&mut statement, &params) {
                    return Some(Err(err));
                }
                if columns_tx.send(Ok(columns)).is_err() {
                    return None;
                }
                let mut rows = statement.raw_query();
                loop {
                    match rows.next() {
                        Ok(Some(row)) => match read_row(row, width) {
                            Ok(values) => {
                                if rows_tx.blocking_send(values).is_err() {
                                    // The component dropped the stream: stop reading.
                                    return None;
                                }
                            }
                            Err(err) => return Some(Err(err)),
                        },
                        Ok(None) => return Some(Ok(())),
                        Err(err) => return Some(Err(err.into())),
                    }
                }
            });
            drop(rows_tx);
            counters.record(&connection);
            if let Some(outcome) = outcome {
                // Before the columns were sent, the error answers the call itself.
                let _ = done_tx.send(outcome);
            }
        });
        let columns = match columns_rx.await {
            Ok(Ok(columns)) => columns,
            Ok(Err(err)) => return Err(err),
            Err(_) => match done_rx.await {
                Ok(Err(err)) => return Err(err),
                _ => return Err(SqliteError::Io("the statement's task failed".into())),
            },
        };
        Ok(RunningQuery {
            columns,
            rows: rows_rx,
            done: done_rx,
            guard,
        })
    }

    /// `changes()` of the connection (rows changed by its last INSERT, UPDATE or DELETE).
    pub fn changes(&self) -> u64 {
        self.counters.changes.load(Ordering::Relaxed)
    }

    /// `last_insert_rowid()` of the connection (0 before its first INSERT).
    pub fn last_insert_rowid(&self) -> i64 {
        self.counters.last_insert_rowid.load(Ordering::Relaxed)
    }
}

/// Runs `work` with a progress handler that interrupts SQLite once `deadline` has passed.
fn with_deadline<T>(connection: &Connection, deadline: Instant, work: impl FnOnce() -> T) -> T {
    connection.progress_handler(10_000, Some(move || Instant::now() >= deadline));
    let result = work();
    connection.progress_handler(0, None::<fn() -> bool>);
    result
}

fn column_names(statement: &rusqlite::Statement<'_>) -> Vec<String> {
    statement
        .column_names()
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn bind(statement: &mut rusqlite::Statement<'_>, params: &[Value]) -> Result<(), SqliteError> {
    let expected = statement.parameter_count();
    if params.len() != expected {
        return Err(SqliteError::Io(format!(
            "the statement has {expected} parameter(s) but {} were given",
            params.len()
        )));
    }
    for (i, value) in params.iter().enumerate() {
        let value = match value {
            Value::Integer(v) => SqlValue::Integer(*v),
            Value::Real(v) => SqlValue::Real(*v),
            Value::Text(v) => SqlValue::Text(v.clone()),
            Value::Blob(v) => SqlValue::Blob(v.clone()),
            Value::Null => SqlValue::Null,
        };
        statement.raw_bind_parameter(i + 1, value)?;
    }
    Ok(())
}

fn read_row(row: &rusqlite::Row<'_>, width: usize) -> Result<Vec<Value>, SqliteError> {
    (0..width)
        .map(|i| {
            Ok(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Integer(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => Value::Blob(v.to_vec()),
            })
        })
        .collect()
}

fn size_of_value(value: &Value) -> usize {
    match value {
        Value::Text(text) => text.len() + 16,
        Value::Blob(blob) => blob.len() + 16,
        _ => 16,
    }
}

/// The file a label's database lives in when the runtime config names none.
pub fn default_path(state_dir: &Path, label: &str) -> PathBuf {
    state_dir.join(format!("sqlite.{label}.db"))
}
