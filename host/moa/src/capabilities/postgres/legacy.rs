//! Spin's older PostgreSQL interfaces over the same sessions as 4.2.0: `spin:postgres@3.0.0` and
//! `fermyon:spin/postgres@2.0.0` (spin-sdk 2 to 5) and Spin 1's unversioned `fermyon:spin/postgres`.
//!
//! Values convert to and from 4.2.0's; a value a version has no variant for reads as `unsupported`
//! (its column as `other`), as in Spin. Unsigned integers are refused before any connection.

use super::bindings::spin::postgres4_2_0::postgres as v4;
use super::host::{self, OpenConnection, PostgresView};
use wasmtime::component::{Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/postgres-legacy",
        imports: { default: async | trappable },
        with: {
            "spin:postgres/postgres@3.0.0.connection": crate::capabilities::postgres::host::OpenConnection,
            "fermyon:spin/postgres@2.0.0.connection": crate::capabilities::postgres::host::OpenConnection,
        },
    });
}

/// Spin 1's unversioned package lives in its own WIT root (`wit/legacy`).
mod bindings_v1 {
    wasmtime::component::bindgen!({
        path: "../../wit/legacy",
        world: "moa:legacy/postgres-v1",
        imports: { default: async | trappable },
    });
}

use bindings::fermyon::spin::postgres as v2;
use bindings::fermyon::spin::rdbms_types as v2_types;
use bindings::spin::postgres3_0_0::postgres as v3;
use bindings_v1::fermyon::spin::postgres as v1;
use bindings_v1::fermyon::spin::rdbms_types as v1_types;

/// Adds the three older interfaces to the linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> PostgresView<'_>,
) -> wasmtime::Result<()> {
    v3::add_to_linker::<T, host::Postgres>(linker, view)?;
    v2::add_to_linker::<T, host::Postgres>(linker, view)?;
    v2_types::add_to_linker::<T, host::Postgres>(linker, view)?;
    v1::add_to_linker::<T, host::Postgres>(linker, view)?;
    v1_types::add_to_linker::<T, host::Postgres>(linker, view)?;
    Ok(())
}

/// A 4.2.0 error as the one-string form older versions have (a server error as its text).
fn error_text(err: v4::Error) -> (u8, String) {
    match err {
        v4::Error::ConnectionFailed(m) => (0, m),
        v4::Error::BadParameter(m) => (1, m),
        v4::Error::QueryFailed(v4::QueryError::Text(m)) => (2, m),
        v4::Error::QueryFailed(v4::QueryError::DbError(db)) => (2, db.as_text),
        v4::Error::ValueConversionFailed(m) => (3, m),
        v4::Error::Other(m) => (4, m),
    }
}

fn v3_error(err: v4::Error) -> v3::Error {
    match error_text(err) {
        (0, m) => v3::Error::ConnectionFailed(m),
        (1, m) => v3::Error::BadParameter(m),
        (2, m) => v3::Error::QueryFailed(m),
        (3, m) => v3::Error::ValueConversionFailed(m),
        (_, m) => v3::Error::Other(m),
    }
}

fn v2_error(err: v4::Error) -> v2_types::Error {
    match error_text(err) {
        (0, m) => v2_types::Error::ConnectionFailed(m),
        (1, m) => v2_types::Error::BadParameter(m),
        (2, m) => v2_types::Error::QueryFailed(m),
        (3, m) => v2_types::Error::ValueConversionFailed(m),
        (_, m) => v2_types::Error::Other(m),
    }
}

fn v1_error(err: v4::Error) -> v1::PgError {
    match error_text(err) {
        (0, m) => v1::PgError::ConnectionFailed(m),
        (1, m) => v1::PgError::BadParameter(m),
        (2, m) => v1::PgError::QueryFailed(m),
        (3, m) => v1::PgError::ValueConversionFailed(m),
        (_, m) => v1::PgError::OtherError(m),
    }
}

fn v3_param(value: v3::ParameterValue) -> v4::ParameterValue {
    use v3::ParameterValue as P;
    match value {
        P::Boolean(v) => v4::ParameterValue::Boolean(v),
        P::Int8(v) => v4::ParameterValue::Int8(v),
        P::Int16(v) => v4::ParameterValue::Int16(v),
        P::Int32(v) => v4::ParameterValue::Int32(v),
        P::Int64(v) => v4::ParameterValue::Int64(v),
        P::Floating32(v) => v4::ParameterValue::Floating32(v),
        P::Floating64(v) => v4::ParameterValue::Floating64(v),
        P::Str(v) => v4::ParameterValue::Str(v),
        P::Binary(v) => v4::ParameterValue::Binary(v),
        P::Date(v) => v4::ParameterValue::Date(v),
        P::Time(v) => v4::ParameterValue::Time(v),
        P::Datetime(v) => v4::ParameterValue::Datetime(v),
        P::Timestamp(v) => v4::ParameterValue::Timestamp(v),
        P::DbNull => v4::ParameterValue::DbNull,
    }
}

const UNSIGNED: &str = "Postgres does not support unsigned integers";

/// The shared `rdbms-types` parameter of Spin 1 and 2, which PostgreSQL takes without its
/// unsigned integers (Spin's message).
macro_rules! rdbms_param {
    ($types:ident, $value:expr) => {{
        use $types::ParameterValue as P;
        match $value {
            P::Boolean(v) => Ok(v4::ParameterValue::Boolean(v)),
            P::Int8(v) => Ok(v4::ParameterValue::Int8(v)),
            P::Int16(v) => Ok(v4::ParameterValue::Int16(v)),
            P::Int32(v) => Ok(v4::ParameterValue::Int32(v)),
            P::Int64(v) => Ok(v4::ParameterValue::Int64(v)),
            P::Floating32(v) => Ok(v4::ParameterValue::Floating32(v)),
            P::Floating64(v) => Ok(v4::ParameterValue::Floating64(v)),
            P::Str(v) => Ok(v4::ParameterValue::Str(v)),
            P::Binary(v) => Ok(v4::ParameterValue::Binary(v)),
            P::DbNull => Ok(v4::ParameterValue::DbNull),
            P::Uint8(_) | P::Uint16(_) | P::Uint32(_) | P::Uint64(_) => Err(UNSIGNED.to_string()),
        }
    }};
}

/// A 4.2.0 result as Spin 1's and 2's `row-set`: dates, times and the 4.x types are unsupported.
macro_rules! rdbms_row_set {
    ($types:ident, $set:expr) => {{
        use $types::{Column, DbDataType as T, DbValue as V, RowSet};
        let set: v4::RowSet = $set;
        RowSet {
            columns: set
                .columns
                .into_iter()
                .map(|c| Column {
                    name: c.name,
                    data_type: match c.data_type {
                        v4::DbDataType::Boolean => T::Boolean,
                        v4::DbDataType::Int8 => T::Int8,
                        v4::DbDataType::Int16 => T::Int16,
                        v4::DbDataType::Int32 => T::Int32,
                        v4::DbDataType::Int64 => T::Int64,
                        v4::DbDataType::Floating32 => T::Floating32,
                        v4::DbDataType::Floating64 => T::Floating64,
                        v4::DbDataType::Str => T::Str,
                        v4::DbDataType::Binary => T::Binary,
                        _ => T::Other,
                    },
                })
                .collect(),
            rows: set
                .rows
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|value| match value {
                            v4::DbValue::Boolean(v) => V::Boolean(v),
                            v4::DbValue::Int8(v) => V::Int8(v),
                            v4::DbValue::Int16(v) => V::Int16(v),
                            v4::DbValue::Int32(v) => V::Int32(v),
                            v4::DbValue::Int64(v) => V::Int64(v),
                            v4::DbValue::Floating32(v) => V::Floating32(v),
                            v4::DbValue::Floating64(v) => V::Floating64(v),
                            v4::DbValue::Str(v) => V::Str(v),
                            v4::DbValue::Binary(v) => V::Binary(v),
                            v4::DbValue::DbNull => V::DbNull,
                            _ => V::Unsupported,
                        })
                        .collect()
                })
                .collect(),
        }
    }};
}

fn v3_row_set(set: v4::RowSet) -> v3::RowSet {
    use v3::{Column, DbDataType as T, DbValue as V, RowSet};
    RowSet {
        columns: set
            .columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                data_type: match c.data_type {
                    v4::DbDataType::Boolean => T::Boolean,
                    v4::DbDataType::Int8 => T::Int8,
                    v4::DbDataType::Int16 => T::Int16,
                    v4::DbDataType::Int32 => T::Int32,
                    v4::DbDataType::Int64 => T::Int64,
                    v4::DbDataType::Floating32 => T::Floating32,
                    v4::DbDataType::Floating64 => T::Floating64,
                    v4::DbDataType::Str => T::Str,
                    v4::DbDataType::Binary => T::Binary,
                    v4::DbDataType::Date => T::Date,
                    v4::DbDataType::Time => T::Time,
                    v4::DbDataType::Datetime => T::Datetime,
                    v4::DbDataType::Timestamp => T::Timestamp,
                    _ => T::Other,
                },
            })
            .collect(),
        rows: set
            .rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|value| match value {
                        v4::DbValue::Boolean(v) => V::Boolean(v),
                        v4::DbValue::Int8(v) => V::Int8(v),
                        v4::DbValue::Int16(v) => V::Int16(v),
                        v4::DbValue::Int32(v) => V::Int32(v),
                        v4::DbValue::Int64(v) => V::Int64(v),
                        v4::DbValue::Floating32(v) => V::Floating32(v),
                        v4::DbValue::Floating64(v) => V::Floating64(v),
                        v4::DbValue::Str(v) => V::Str(v),
                        v4::DbValue::Binary(v) => V::Binary(v),
                        v4::DbValue::Date(v) => V::Date(v),
                        v4::DbValue::Time(v) => V::Time(v),
                        v4::DbValue::Datetime(v) => V::Datetime(v),
                        v4::DbValue::Timestamp(v) => V::Timestamp(v),
                        v4::DbValue::DbNull => V::DbNull,
                        _ => V::Unsupported,
                    })
                    .collect()
            })
            .collect(),
    }
}

impl PostgresView<'_> {
    /// `open` for every version: the allow-list, then a pooled session.
    async fn open_any(&mut self, address: &str) -> Result<Resource<OpenConnection>, v4::Error> {
        let connection = host::open(self.open_request(), address, None).await?;
        self.push(connection)
    }

    async fn query_any(
        &mut self,
        handle: &Resource<OpenConnection>,
        statement: &str,
        params: Vec<v4::ParameterValue>,
    ) -> wasmtime::Result<Result<v4::RowSet, v4::Error>> {
        let connection = self.connection(handle)?;
        let params = match host::query_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        Ok(connection
            .query(statement, &params, self.instance.deadline)
            .await)
    }

    async fn execute_any(
        &mut self,
        handle: &Resource<OpenConnection>,
        statement: &str,
        params: Vec<v4::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v4::Error>> {
        let connection = self.connection(handle)?;
        let params = match host::execute_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        Ok(connection
            .execute(statement, &params, self.instance.deadline)
            .await)
    }
}

impl v3::Host for PostgresView<'_> {}

impl v3::HostConnection for PostgresView<'_> {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, v3::Error>> {
        Ok(self.open_any(&address).await.map_err(v3_error))
    }

    async fn query(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<v3::RowSet, v3::Error>> {
        let params = params.into_iter().map(v3_param).collect();
        Ok(self
            .query_any(&handle, &statement, params)
            .await?
            .map(v3_row_set)
            .map_err(v3_error))
    }

    async fn execute(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v3::Error>> {
        let params = params.into_iter().map(v3_param).collect();
        Ok(self
            .execute_any(&handle, &statement, params)
            .await?
            .map_err(v3_error))
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        host::close(self, handle)
    }
}

fn v2_params(
    params: Vec<v2_types::ParameterValue>,
) -> Result<Vec<v4::ParameterValue>, v2_types::Error> {
    params
        .into_iter()
        .map(|p| rdbms_param!(v2_types, p))
        .collect::<Result<_, String>>()
        .map_err(v2_types::Error::ValueConversionFailed)
}

fn v1_params(
    params: Vec<v1_types::ParameterValue>,
) -> Result<Vec<v4::ParameterValue>, v1::PgError> {
    params
        .into_iter()
        .map(|p| rdbms_param!(v1_types, p))
        .collect::<Result<_, String>>()
        .map_err(v1::PgError::ValueConversionFailed)
}

impl v2_types::Host for PostgresView<'_> {}
impl v2::Host for PostgresView<'_> {}

impl v2::HostConnection for PostgresView<'_> {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, v2_types::Error>> {
        Ok(self.open_any(&address).await.map_err(v2_error))
    }

    async fn query(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        params: Vec<v2_types::ParameterValue>,
    ) -> wasmtime::Result<Result<v2_types::RowSet, v2_types::Error>> {
        let params = match v2_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        Ok(self
            .query_any(&handle, &statement, params)
            .await?
            .map(|set| rdbms_row_set!(v2_types, set))
            .map_err(v2_error))
    }

    async fn execute(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        params: Vec<v2_types::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v2_types::Error>> {
        let params = match v2_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        Ok(self
            .execute_any(&handle, &statement, params)
            .await?
            .map_err(v2_error))
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        host::close(self, handle)
    }
}

impl v1_types::Host for PostgresView<'_> {}

impl v1::Host for PostgresView<'_> {
    async fn query(
        &mut self,
        address: String,
        statement: String,
        params: Vec<v1_types::ParameterValue>,
    ) -> wasmtime::Result<Result<v1_types::RowSet, v1::PgError>> {
        // Parameters are checked before connecting (Spin opens first, and leaks the session on a
        // bad parameter).
        let params = match v1_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        // Spin 1's calls: a session for the one statement.
        let handle = match self.open_any(&address).await {
            Ok(handle) => handle,
            Err(err) => return Ok(Err(v1_error(err))),
        };
        let result = self.query_any(&handle, &statement, params).await;
        host::close(self, handle)?;
        Ok(result?
            .map(|set| rdbms_row_set!(v1_types, set))
            .map_err(v1_error))
    }

    async fn execute(
        &mut self,
        address: String,
        statement: String,
        params: Vec<v1_types::ParameterValue>,
    ) -> wasmtime::Result<Result<u64, v1::PgError>> {
        let params = match v1_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        let handle = match self.open_any(&address).await {
            Ok(handle) => handle,
            Err(err) => return Ok(Err(v1_error(err))),
        };
        let result = self.execute_any(&handle, &statement, params).await;
        host::close(self, handle)?;
        Ok(result?.map_err(v1_error))
    }
}
