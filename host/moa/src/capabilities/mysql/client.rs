//! MySQL/MariaDB connections for components: the address checked against the allow-list, a pool
//! per address per component, Spin's value mapping, statements bounded by the request's deadline.
//!
//! A session goes back to its pool reset by the server (`COM_RESET_CONNECTION`: an open
//! transaction rolls back); one whose statement was cut off at the deadline is killed and closed.

use super::bindings::spin::mysql::mysql::{Column, DbDataType, DbValue, Error, ParameterValue};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Pool, SslOpts, Value};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Pools one component keeps; the least recently used goes first.
const POOLS_PER_COMPONENT: usize = 16;
/// MySQL's port when the address names none.
const DEFAULT_PORT: u16 = 3306;
/// Most bytes of rows one query hands a component (Spin's limit).
pub const MAX_RESULT_BYTES: usize = 128 << 20;
/// Rows read ahead of the component.
const ROWS_AHEAD: usize = 4;
/// The character set MySQL marks binary strings with (BINARY, VARBINARY, BLOB).
const BINARY_CHARSET: u16 = 63;

/// Why an address is refused (`connection-failed`).
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("invalid MySQL address `{0}`: write mysql://user:password@host:port/database")]
    Invalid(String),
    #[error("invalid MySQL address: {0}")]
    Options(String),
    #[error("`socket=` is not supported: moa connects over TCP to hosts the allow-list names")]
    Socket,
    /// Spin's wording without the credentials Spin prints, then the fix.
    #[error(
        "address mysql://{0} is not permitted: add \"mysql://{0}\" to the component's allowed_outbound_hosts"
    )]
    NotPermitted(String),
}

/// Parses `address` (a `mysql://` URL), checks its host against the allow-list and returns the
/// connection options: TCP only, TLS verified unless `ssl-mode=disabled`.
pub fn parse_allowed(
    address: &str,
    allowed: &crate::capabilities::outbound_http::AllowedHosts,
) -> Result<Opts, AddressError> {
    let mut url = url::Url::parse(address).map_err(|_| AddressError::Invalid(redact(address)))?;
    if url.scheme() != "mysql" {
        return Err(AddressError::Invalid(redact(address)));
    }
    let host = url
        .host_str()
        .ok_or_else(|| AddressError::Invalid(redact(address)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = url.port().unwrap_or(DEFAULT_PORT);
    if !allowed.allows_host("mysql", &host, port) {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        return Err(AddressError::NotPermitted(authority));
    }
    // Spin's `ssl-mode` (any case) is moa's too; mysql_async would refuse it as unknown.
    let mut tls = false;
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        let lower = key.to_ascii_lowercase();
        if lower == "ssl-mode" || lower == "sslmode" {
            tls = !value.eq_ignore_ascii_case("disabled");
        } else if lower == "socket" {
            return Err(AddressError::Socket);
        } else {
            rest.push((key.into_owned(), value.into_owned()));
        }
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    let opts =
        Opts::from_url(url.as_str()).map_err(|err| AddressError::Options(err.to_string()))?;
    let builder = OptsBuilder::from_opts(opts)
        // Never switch to a local socket the server names: the allow-list checked TCP.
        .prefer_socket(false)
        .ssl_opts(tls.then(SslOpts::default));
    Ok(builder.into())
}

/// The address without its password, for messages.
fn redact(address: &str) -> String {
    match url::Url::parse(address) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => match address.split_once('@') {
            Some((_, host)) => format!("…@{host}"),
            None => address.to_string(),
        },
    }
}

struct CachedPool {
    address: String,
    pool: Pool,
    used: Instant,
}

/// One component's pools.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<Vec<CachedPool>>,
}

impl Pools {
    fn pool(&self, address: &str, opts: Opts) -> Pool {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = pools.iter_mut().find(|p| p.address == address) {
            cached.used = Instant::now();
            return cached.pool.clone();
        }
        if pools.len() >= POOLS_PER_COMPONENT
            && let Some(oldest) = pools
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.used)
                .map(|(i, _)| i)
        {
            let gone = pools.swap_remove(oldest);
            tokio::spawn(async move {
                let _ = gone.pool.disconnect().await;
            });
        }
        let pool = Pool::new(opts);
        pools.push(CachedPool {
            address: address.to_string(),
            pool: pool.clone(),
            used: Instant::now(),
        });
        pool
    }

    /// A session on `address` (already checked), waiting at most until `deadline`.
    pub async fn connect(
        &self,
        address: &str,
        opts: Opts,
        deadline: Instant,
    ) -> Result<MysqlConnection, Error> {
        let pool = self.pool(address, opts);
        match tokio::time::timeout_at(deadline.into(), pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(MysqlConnection {
                id: conn.id(),
                conn: Arc::new(tokio::sync::Mutex::new(Some(conn))),
                pool,
            }),
            Ok(Err(err)) => Err(Error::ConnectionFailed(err.to_string())),
            Err(_) => Err(Error::ConnectionFailed(
                "no connection before the request's deadline".into(),
            )),
        }
    }
}

type Session = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// One pooled session, behind a component's `connection` resource.
pub struct MysqlConnection {
    /// `None` once the session was closed (cut off at the deadline).
    conn: Session,
    id: u32,
    pool: Pool,
}

fn to_value(param: ParameterValue) -> Value {
    match param {
        ParameterValue::Boolean(v) => Value::from(v),
        ParameterValue::Int8(v) => Value::Int(v.into()),
        ParameterValue::Int16(v) => Value::Int(v.into()),
        ParameterValue::Int32(v) => Value::Int(v.into()),
        ParameterValue::Int64(v) => Value::Int(v),
        ParameterValue::Uint8(v) => Value::UInt(v.into()),
        ParameterValue::Uint16(v) => Value::UInt(v.into()),
        ParameterValue::Uint32(v) => Value::UInt(v.into()),
        ParameterValue::Uint64(v) => Value::UInt(v),
        ParameterValue::Floating32(v) => Value::Float(v),
        ParameterValue::Floating64(v) => Value::Double(v),
        ParameterValue::Str(v) => Value::Bytes(v.into_bytes()),
        ParameterValue::Binary(v) => Value::Bytes(v),
        ParameterValue::DbNull => Value::NULL,
    }
}

fn params(values: Vec<ParameterValue>) -> Params {
    if values.is_empty() {
        Params::Empty
    } else {
        Params::Positional(values.into_iter().map(to_value).collect())
    }
}

/// Spin's data type for a column, from its wire type, flags and character set.
fn data_type(column: &mysql_async::Column) -> DbDataType {
    let unsigned = column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let binary = column.character_set() == BINARY_CHARSET;
    match column.column_type() {
        ColumnType::MYSQL_TYPE_DOUBLE => DbDataType::Floating64,
        ColumnType::MYSQL_TYPE_FLOAT => DbDataType::Floating32,
        ColumnType::MYSQL_TYPE_TINY if unsigned => DbDataType::Uint8,
        ColumnType::MYSQL_TYPE_TINY => DbDataType::Int8,
        ColumnType::MYSQL_TYPE_SHORT if unsigned => DbDataType::Uint16,
        ColumnType::MYSQL_TYPE_SHORT => DbDataType::Int16,
        ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG if unsigned => {
            DbDataType::Uint32
        }
        ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG => DbDataType::Int32,
        ColumnType::MYSQL_TYPE_LONGLONG if unsigned => DbDataType::Uint64,
        ColumnType::MYSQL_TYPE_LONGLONG => DbDataType::Int64,
        ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_BLOB
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
            if binary =>
        {
            DbDataType::Binary
        }
        ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_BLOB
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB => DbDataType::Str,
        _ => DbDataType::Other,
    }
}

fn columns(result: &[mysql_async::Column]) -> Vec<Column> {
    result
        .iter()
        .map(|c| Column {
            name: c.name_str().into_owned(),
            data_type: data_type(c),
        })
        .collect()
}

fn conversion(value: &Value, column: &Column) -> Error {
    Error::ValueConversionFailed(format!(
        "cannot read {value:?} in column `{}` as {:?}",
        column.name, column.data_type
    ))
}

/// One value as its column's data type says; `other` columns (DECIMAL, dates, JSON...) come as
/// their text (Spin fails the query on them).
fn to_db_value(value: Value, column: &Column) -> Result<DbValue, Error> {
    use mysql_async::from_value_opt as read;
    if value == Value::NULL {
        return Ok(DbValue::DbNull);
    }
    let fail = |value: &Value| conversion(value, column);
    Ok(match column.data_type {
        DbDataType::Boolean => DbValue::Boolean(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Int8 => DbValue::Int8(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Int16 => DbValue::Int16(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Int32 => DbValue::Int32(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Int64 => DbValue::Int64(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Uint8 => DbValue::Uint8(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Uint16 => DbValue::Uint16(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Uint32 => DbValue::Uint32(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Uint64 => DbValue::Uint64(read(value.clone()).map_err(|_| fail(&value))?),
        DbDataType::Floating32 => {
            DbValue::Floating32(read(value.clone()).map_err(|_| fail(&value))?)
        }
        DbDataType::Floating64 => {
            DbValue::Floating64(read(value.clone()).map_err(|_| fail(&value))?)
        }
        DbDataType::Binary => match value {
            Value::Bytes(bytes) => DbValue::Binary(bytes),
            other => return Err(fail(&other)),
        },
        DbDataType::Str => match value {
            Value::Bytes(bytes) => DbValue::Str(String::from_utf8(bytes).map_err(|e| {
                Error::ValueConversionFailed(format!(
                    "column `{}` is not UTF-8 text: {e}",
                    column.name
                ))
            })?),
            other => return Err(fail(&other)),
        },
        DbDataType::Other => match value {
            Value::Bytes(bytes) => match String::from_utf8(bytes) {
                Ok(text) => DbValue::Str(text),
                Err(e) => DbValue::Binary(e.into_bytes()),
            },
            Value::Int(v) => DbValue::Int64(v),
            Value::UInt(v) => DbValue::Uint64(v),
            Value::Float(v) => DbValue::Floating32(v),
            Value::Double(v) => DbValue::Floating64(v),
            Value::Date(..) | Value::Time(..) => {
                DbValue::Str(value.as_sql(true).trim_matches('\'').to_string())
            }
            Value::NULL => DbValue::DbNull,
        },
    })
}

fn size_of(value: &DbValue) -> usize {
    16 + match value {
        DbValue::Str(s) => s.len(),
        DbValue::Binary(b) => b.len(),
        _ => 0,
    }
}

fn deadline_passed() -> Error {
    Error::QueryFailed(DEADLINE_MESSAGE.into())
}

/// A running query's rows and how it ended.
pub struct RowFeed {
    pub columns: Vec<Column>,
    pub rows: mpsc::Receiver<Vec<DbValue>>,
    pub done: oneshot::Receiver<Result<(), Error>>,
}

impl MysqlConnection {
    /// Kills the statement running on this session and closes it (it never returns to the pool).
    fn abandon(&self) {
        let (pool, id, conn) = (self.pool.clone(), self.id, self.conn.clone());
        tokio::spawn(async move {
            kill(&pool, id).await;
            if let Some(conn) = conn.lock().await.take() {
                let _ = conn.disconnect().await;
            }
        });
    }

    /// `execute`.
    pub async fn execute(
        &self,
        statement: String,
        values: Vec<ParameterValue>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let run = async {
            let mut session = self.conn.lock().await;
            let conn = session.as_mut().ok_or_else(closed)?;
            conn.exec_drop(statement, params(values))
                .await
                .map_err(|err| Error::QueryFailed(err.to_string()))
        };
        match tokio::time::timeout_at(deadline.into(), run).await {
            Ok(result) => result,
            Err(_) => {
                self.abandon();
                Err(deadline_passed())
            }
        }
    }

    /// `query`: columns once the statement ran, rows as the component reads them, the outcome last.
    pub async fn query(
        &self,
        statement: String,
        values: Vec<ParameterValue>,
        deadline: Instant,
    ) -> Result<RowFeed, Error> {
        let (columns_tx, columns_rx) = oneshot::channel();
        let (rows_tx, rows) = mpsc::channel(ROWS_AHEAD);
        let (done_tx, done) = oneshot::channel();
        let session = self.conn.clone();
        let (pool, id) = (self.pool.clone(), self.id);
        let task = tokio::spawn(async move {
            let mut session = session.lock_owned().await;
            let Some(conn) = session.as_mut() else {
                let _ = columns_tx.send(Err(closed()));
                return;
            };
            let mut result = match conn.exec_iter(statement, params(values)).await {
                Ok(result) => result,
                Err(err) => {
                    let _ = columns_tx.send(Err(Error::QueryFailed(err.to_string())));
                    return;
                }
            };
            let cols = columns(result.columns_ref());
            if columns_tx.send(Ok(cols.clone())).is_err() {
                return;
            }
            let mut size = 0;
            let outcome = loop {
                let row = tokio::select! {
                    biased;
                    _ = rows_tx.closed() => break Ok(()),
                    row = tokio::time::timeout_at(deadline.into(), result.next()) => row,
                };
                let row = match row {
                    Err(_) => {
                        // Past the deadline: kill the statement; the session is closed below.
                        kill(&pool, id).await;
                        break Err(deadline_passed());
                    }
                    Ok(row) => row,
                };
                let row = match row {
                    Ok(Some(row)) => row,
                    Ok(None) => break Ok(()),
                    Err(err) => break Err(Error::Other(err.to_string())),
                };
                let values = row
                    .unwrap()
                    .into_iter()
                    .zip(&cols)
                    .map(|(value, column)| to_db_value(value, column))
                    .collect::<Result<Vec<_>, _>>();
                let values = match values {
                    Ok(values) => values,
                    Err(err) => break Err(err),
                };
                size += values.iter().map(size_of).sum::<usize>();
                if size > MAX_RESULT_BYTES {
                    break Err(Error::Other(format!(
                        "query result exceeds limit of {MAX_RESULT_BYTES} bytes"
                    )));
                }
                if rows_tx.send(values).await.is_err() {
                    break Ok(());
                }
            };
            // The rest of the result is read off the wire before the session is reused; a session
            // cut off at the deadline is closed instead.
            drop(result);
            if outcome.as_ref().is_err_and(is_deadline)
                && let Some(conn) = session.take()
            {
                let _ = conn.disconnect().await;
            }
            let _ = done_tx.send(outcome);
        });
        let columns = match tokio::time::timeout_at(deadline.into(), columns_rx).await {
            Ok(Ok(Ok(columns))) => columns,
            Ok(Ok(Err(err))) => return Err(err),
            Ok(Err(_)) => return Err(Error::Other("the query task ended unexpectedly".into())),
            Err(_) => {
                task.abort();
                self.abandon();
                return Err(deadline_passed());
            }
        };
        Ok(RowFeed {
            columns,
            rows,
            done,
        })
    }
}

impl MysqlConnection {
    /// `query` for the synchronous interfaces: every row at once (at most [`MAX_RESULT_BYTES`]).
    pub async fn query_all(
        &self,
        statement: String,
        values: Vec<ParameterValue>,
        deadline: Instant,
    ) -> Result<(Vec<Column>, Vec<Vec<DbValue>>), Error> {
        let RowFeed {
            columns,
            mut rows,
            done,
        } = self.query(statement, values, deadline).await?;
        let mut all = Vec::new();
        while let Some(row) = rows.recv().await {
            all.push(row);
        }
        done.await.unwrap_or(Ok(()))?;
        Ok((columns, all))
    }
}

/// Stops the statement session `id` runs, from another session of the pool.
async fn kill(pool: &Pool, id: u32) {
    if let Ok(mut other) = pool.get_conn().await {
        let _ = other.query_drop(format!("KILL QUERY {id}")).await;
    }
}

const DEADLINE_MESSAGE: &str = "the statement was cancelled: the request's deadline is near";

fn is_deadline(err: &Error) -> bool {
    matches!(err, Error::QueryFailed(m) if m == DEADLINE_MESSAGE)
}

fn closed() -> Error {
    Error::ConnectionFailed(
        "the connection was closed after a statement was cancelled at the deadline".into(),
    )
}
