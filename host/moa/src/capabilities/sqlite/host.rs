//! The generated `spin:sqlite` host traits: `open` checks the component's grant, each connection
//! resource holds its own SQLite connection; `execute-async` streams rows as SQLite steps.

use super::bindings::spin::sqlite::sqlite::{self, Error, QueryResult, RowResult, Value};
use super::database::{self, RunningQuery, SqliteConnection, SqliteError};
use super::{SqliteGrant, SqliteInstance};
use crate::capabilities::ChannelRows;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{
    Accessor, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader,
};

/// The value behind a `connection` resource handle (of 3.x and of Spin 2's 2.0.0).
pub struct OpenConnection {
    connection: Arc<SqliteConnection>,
}

/// Marker type naming this capability in the linker.
pub struct Sqlite;

impl HasData for Sqlite {
    type Data<'a> = SqliteView<'a>;
}

/// What the host traits see of an instance's state.
pub struct SqliteView<'a> {
    pub instance: &'a SqliteInstance,
    pub table: &'a mut ResourceTable,
}

/// Adds `spin:sqlite@3.1.0` to the linker (3.0.0 imports resolve to it too).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SqliteView<'_>,
) -> wasmtime::Result<()> {
    sqlite::add_to_linker::<T, Sqlite>(linker, view)
}

pub(super) fn error(err: SqliteError) -> Error {
    match err {
        SqliteError::DatabaseFull => Error::DatabaseFull,
        SqliteError::Io(message) => Error::Io(message),
    }
}

fn to_database(value: Value) -> database::Value {
    match value {
        Value::Integer(v) => database::Value::Integer(v),
        Value::Real(v) => database::Value::Real(v),
        Value::Text(v) => database::Value::Text(v),
        Value::Blob(v) => database::Value::Blob(v),
        Value::Null => database::Value::Null,
    }
}

fn to_row(values: Vec<database::Value>) -> RowResult {
    RowResult {
        values: values
            .into_iter()
            .map(|value| match value {
                database::Value::Integer(v) => Value::Integer(v),
                database::Value::Real(v) => Value::Real(v),
                database::Value::Text(v) => Value::Text(v),
                database::Value::Blob(v) => Value::Blob(v),
                database::Value::Null => Value::Null,
            })
            .collect(),
    }
}

/// Opens a new connection on `label` if the component was granted it.
pub(super) async fn open_connection(
    grant: &SqliteGrant,
    label: &str,
) -> Result<OpenConnection, Error> {
    let Some(database) = grant.databases.get(label) else {
        return Err(Error::AccessDenied);
    };
    let connection = database.connect().await.map_err(error)?;
    Ok(OpenConnection {
        connection: Arc::new(connection),
    })
}

impl SqliteView<'_> {
    pub(super) fn connection(
        &self,
        handle: &Resource<OpenConnection>,
    ) -> wasmtime::Result<Arc<SqliteConnection>> {
        Ok(self.table.get(handle)?.connection.clone())
    }
}

pub(super) fn push(
    table: &mut ResourceTable,
    connection: OpenConnection,
) -> Result<Resource<OpenConnection>, Error> {
    table
        .push(connection)
        .map_err(|_| Error::Io("too many open connections in this instance".into()))
}

/// The connection and deadline for an async call.
fn connection_of<T>(
    accessor: &Accessor<T, Sqlite>,
    handle: &Resource<OpenConnection>,
) -> wasmtime::Result<(Arc<SqliteConnection>, Instant)> {
    accessor.with(|mut access| {
        let view = access.get();
        Ok((view.connection(handle)?, view.instance.deadline))
    })
}

impl sqlite::Host for SqliteView<'_> {}

impl sqlite::HostConnection for SqliteView<'_> {
    async fn open(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        let grant = self.instance.grant.clone();
        Ok(match open_connection(&grant, &database).await {
            Ok(connection) => push(self.table, connection),
            Err(err) => Err(err),
        })
    }

    async fn execute(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, Error>> {
        let connection = self.connection(&handle)?;
        let params = parameters.into_iter().map(to_database).collect();
        Ok(connection
            .execute(statement, params, self.instance.deadline)
            .await
            .map(|result| QueryResult {
                columns: result.columns,
                rows: result.rows.into_iter().map(to_row).collect(),
            })
            .map_err(error))
    }

    async fn last_insert_rowid(
        &mut self,
        handle: Resource<OpenConnection>,
    ) -> wasmtime::Result<i64> {
        Ok(self.connection(&handle)?.last_insert_rowid())
    }

    async fn changes(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<u64> {
        Ok(self.connection(&handle)?.changes())
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

type Streamed = (
    Vec<String>,
    StreamReader<RowResult>,
    FutureReader<Result<(), Error>>,
);

impl<T: Send> sqlite::HostConnectionWithStore<T> for Sqlite {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        database: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        let grant = accessor.with(|mut access| access.get().instance.grant.clone());
        Ok(match open_connection(&grant, &database).await {
            Ok(connection) => accessor.with(|mut access| push(access.get().table, connection)),
            Err(err) => Err(err),
        })
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> wasmtime::Result<Result<Streamed, Error>> {
        let (connection, deadline) = connection_of(accessor, &self_)?;
        let params = parameters.into_iter().map(to_database).collect();
        let RunningQuery {
            columns,
            rows,
            done,
            guard,
        } = match connection.start(statement, params, deadline).await {
            Ok(running) => running,
            Err(err) => return Ok(Err(error(err))),
        };
        // Dropping the stream before its end stops the statement (the guard).
        let stream = ChannelRows::new(rows, to_row, guard);
        accessor.with(|mut access| {
            let rows = StreamReader::new(&mut access, stream)?;
            let result = FutureReader::new(&mut access, async move {
                Ok::<_, wasmtime::Error>(match done.await {
                    Ok(outcome) => outcome.map_err(error),
                    // The statement stopped because the component dropped the stream.
                    Err(_) => Err(Error::Io("the rows were not read to the end".into())),
                })
            })?;
            Ok(Ok((columns, rows, result)))
        })
    }

    async fn last_insert_rowid_async(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
    ) -> wasmtime::Result<i64> {
        let (connection, _) = connection_of(accessor, &self_)?;
        Ok(connection.last_insert_rowid())
    }

    async fn changes_async(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
    ) -> wasmtime::Result<u64> {
        let (connection, _) = connection_of(accessor, &self_)?;
        Ok(connection.changes())
    }
}
