//! Spin 2's `fermyon:spin/sqlite@2.0.0` (spin-sdk 2 to 5) over the same databases, grants and
//! connections as 3.1.0: `open` checks the label, `execute` runs one statement to the end.

use super::bindings::spin::sqlite::sqlite as v3;
use super::database;
use super::host::{self, OpenConnection, SqliteView};
use wasmtime::component::{Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/sqlite-v2",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/sqlite@2.0.0.connection": crate::capabilities::sqlite::host::OpenConnection,
        },
    });
}

use bindings::fermyon::spin::sqlite as v2;

/// Adds `fermyon:spin/sqlite@2.0.0` to the linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SqliteView<'_>,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<T, host::Sqlite>(linker, view)
}

fn v2_error(err: v3::Error) -> v2::Error {
    match err {
        v3::Error::NoSuchDatabase => v2::Error::NoSuchDatabase,
        v3::Error::AccessDenied => v2::Error::AccessDenied,
        v3::Error::InvalidConnection => v2::Error::InvalidConnection,
        v3::Error::DatabaseFull => v2::Error::DatabaseFull,
        v3::Error::Io(message) => v2::Error::Io(message),
    }
}

fn to_database(value: v2::Value) -> database::Value {
    match value {
        v2::Value::Integer(v) => database::Value::Integer(v),
        v2::Value::Real(v) => database::Value::Real(v),
        v2::Value::Text(v) => database::Value::Text(v),
        v2::Value::Blob(v) => database::Value::Blob(v),
        v2::Value::Null => database::Value::Null,
    }
}

fn to_v2(value: database::Value) -> v2::Value {
    match value {
        database::Value::Integer(v) => v2::Value::Integer(v),
        database::Value::Real(v) => v2::Value::Real(v),
        database::Value::Text(v) => v2::Value::Text(v),
        database::Value::Blob(v) => v2::Value::Blob(v),
        database::Value::Null => v2::Value::Null,
    }
}

impl v2::Host for SqliteView<'_> {}

impl v2::HostConnection for SqliteView<'_> {
    async fn open(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, v2::Error>> {
        let grant = self.instance.grant.clone();
        Ok(match host::open_connection(&grant, &database).await {
            Ok(connection) => host::push(self.table, connection).map_err(v2_error),
            Err(err) => Err(v2_error(err)),
        })
    }

    async fn execute(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        parameters: Vec<v2::Value>,
    ) -> wasmtime::Result<Result<v2::QueryResult, v2::Error>> {
        let connection = self.connection(&handle)?;
        let params = parameters.into_iter().map(to_database).collect();
        Ok(connection
            .execute(statement, params, self.instance.deadline)
            .await
            .map(|result| v2::QueryResult {
                columns: result.columns,
                rows: result
                    .rows
                    .into_iter()
                    .map(|row| v2::RowResult {
                        values: row.into_iter().map(to_v2).collect(),
                    })
                    .collect(),
            })
            .map_err(|err| v2_error(host::error(err))))
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}
