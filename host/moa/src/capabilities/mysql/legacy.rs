//! Spin's older MySQL interfaces over the same sessions as 3.0.0: `fermyon:spin/mysql@2.0.0`
//! (spin-sdk 2 to 6, synchronous, a row set per query) and Spin 1's unversioned `fermyon:spin/mysql`
//! (a session per call). The value types are 3.0.0's, so values pass through unchanged.

use super::bindings::spin::mysql::mysql as v3;
use super::host::{self, MysqlView, OpenConnection};
use wasmtime::component::{Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/mysql-legacy",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/mysql@2.0.0.connection": crate::capabilities::mysql::host::OpenConnection,
        },
    });
}

/// Spin 1's unversioned package lives in its own WIT root (`wit/legacy`).
mod bindings_v1 {
    wasmtime::component::bindgen!({
        path: "../../wit/legacy",
        world: "moa:legacy/mysql-v1",
        imports: { default: async | trappable },
    });
}

use bindings::fermyon::spin::mysql as v2;
use bindings::fermyon::spin::rdbms_types as v2_types;
use bindings_v1::fermyon::spin::mysql as v1;
use bindings_v1::fermyon::spin::rdbms_types as v1_types;

/// Adds both older interfaces to the linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> MysqlView<'_>,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<T, host::Mysql>(linker, view)?;
    v2_types::add_to_linker::<T, host::Mysql>(linker, view)?;
    v1::add_to_linker::<T, host::Mysql>(linker, view)?;
    v1_types::add_to_linker::<T, host::Mysql>(linker, view)?;
    Ok(())
}

/// The shared `rdbms-types` parameter of Spin 1 and 2 as 3.0.0's (the same variants).
macro_rules! rdbms_param {
    ($types:ident, $value:expr) => {{
        use $types::ParameterValue as P;
        match $value {
            P::Boolean(v) => v3::ParameterValue::Boolean(v),
            P::Int8(v) => v3::ParameterValue::Int8(v),
            P::Int16(v) => v3::ParameterValue::Int16(v),
            P::Int32(v) => v3::ParameterValue::Int32(v),
            P::Int64(v) => v3::ParameterValue::Int64(v),
            P::Uint8(v) => v3::ParameterValue::Uint8(v),
            P::Uint16(v) => v3::ParameterValue::Uint16(v),
            P::Uint32(v) => v3::ParameterValue::Uint32(v),
            P::Uint64(v) => v3::ParameterValue::Uint64(v),
            P::Floating32(v) => v3::ParameterValue::Floating32(v),
            P::Floating64(v) => v3::ParameterValue::Floating64(v),
            P::Str(v) => v3::ParameterValue::Str(v),
            P::Binary(v) => v3::ParameterValue::Binary(v),
            P::DbNull => v3::ParameterValue::DbNull,
        }
    }};
}

/// 3.0.0's columns and rows as Spin 1's and 2's `row-set`.
macro_rules! rdbms_row_set {
    ($types:ident, $columns:expr, $rows:expr) => {{
        use $types::{Column, DbDataType as T, DbValue as V, RowSet};
        let columns: Vec<v3::Column> = $columns;
        let rows: Vec<Vec<v3::DbValue>> = $rows;
        RowSet {
            columns: columns
                .into_iter()
                .map(|c| Column {
                    name: c.name,
                    data_type: match c.data_type {
                        v3::DbDataType::Boolean => T::Boolean,
                        v3::DbDataType::Int8 => T::Int8,
                        v3::DbDataType::Int16 => T::Int16,
                        v3::DbDataType::Int32 => T::Int32,
                        v3::DbDataType::Int64 => T::Int64,
                        v3::DbDataType::Uint8 => T::Uint8,
                        v3::DbDataType::Uint16 => T::Uint16,
                        v3::DbDataType::Uint32 => T::Uint32,
                        v3::DbDataType::Uint64 => T::Uint64,
                        v3::DbDataType::Floating32 => T::Floating32,
                        v3::DbDataType::Floating64 => T::Floating64,
                        v3::DbDataType::Str => T::Str,
                        v3::DbDataType::Binary => T::Binary,
                        v3::DbDataType::Other => T::Other,
                    },
                })
                .collect(),
            rows: rows
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|value| match value {
                            v3::DbValue::Boolean(v) => V::Boolean(v),
                            v3::DbValue::Int8(v) => V::Int8(v),
                            v3::DbValue::Int16(v) => V::Int16(v),
                            v3::DbValue::Int32(v) => V::Int32(v),
                            v3::DbValue::Int64(v) => V::Int64(v),
                            v3::DbValue::Uint8(v) => V::Uint8(v),
                            v3::DbValue::Uint16(v) => V::Uint16(v),
                            v3::DbValue::Uint32(v) => V::Uint32(v),
                            v3::DbValue::Uint64(v) => V::Uint64(v),
                            v3::DbValue::Floating32(v) => V::Floating32(v),
                            v3::DbValue::Floating64(v) => V::Floating64(v),
                            v3::DbValue::Str(v) => V::Str(v),
                            v3::DbValue::Binary(v) => V::Binary(v),
                            v3::DbValue::DbNull => V::DbNull,
                            v3::DbValue::Unsupported => V::Unsupported,
                        })
                        .collect()
                })
                .collect(),
        }
    }};
}

fn v2_error(err: v3::Error) -> v2_types::Error {
    match err {
        v3::Error::ConnectionFailed(m) => v2_types::Error::ConnectionFailed(m),
        v3::Error::BadParameter(m) => v2_types::Error::BadParameter(m),
        v3::Error::QueryFailed(m) => v2_types::Error::QueryFailed(m),
        v3::Error::ValueConversionFailed(m) => v2_types::Error::ValueConversionFailed(m),
        v3::Error::Other(m) => v2_types::Error::Other(m),
    }
}

fn v1_error(err: v3::Error) -> v1::MysqlError {
    match err {
        v3::Error::ConnectionFailed(m) => v1::MysqlError::ConnectionFailed(m),
        v3::Error::BadParameter(m) => v1::MysqlError::BadParameter(m),
        v3::Error::QueryFailed(m) => v1::MysqlError::QueryFailed(m),
        v3::Error::ValueConversionFailed(m) => v1::MysqlError::ValueConversionFailed(m),
        v3::Error::Other(m) => v1::MysqlError::OtherError(m),
    }
}

type Rows = (Vec<v3::Column>, Vec<Vec<v3::DbValue>>);

impl MysqlView<'_> {
    async fn open_any(&mut self, address: &str) -> Result<Resource<OpenConnection>, v3::Error> {
        let connection = host::open(self.open_request(), address).await?;
        self.push(connection)
    }

    async fn query_any(
        &mut self,
        handle: &Resource<OpenConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<Rows, v3::Error>> {
        let connection = self.table.get(handle)?.connection.clone();
        Ok(connection
            .query_all(statement, params, self.instance.deadline)
            .await)
    }

    async fn execute_any(
        &mut self,
        handle: &Resource<OpenConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<(), v3::Error>> {
        let connection = self.table.get(handle)?.connection.clone();
        Ok(connection
            .execute(statement, params, self.instance.deadline)
            .await)
    }
}

impl v2_types::Host for MysqlView<'_> {}
impl v2::Host for MysqlView<'_> {}

impl v2::HostConnection for MysqlView<'_> {
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
        let params = params
            .into_iter()
            .map(|p| rdbms_param!(v2_types, p))
            .collect();
        Ok(self
            .query_any(&handle, statement, params)
            .await?
            .map(|(columns, rows)| rdbms_row_set!(v2_types, columns, rows))
            .map_err(v2_error))
    }

    async fn execute(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        params: Vec<v2_types::ParameterValue>,
    ) -> wasmtime::Result<Result<(), v2_types::Error>> {
        let params = params
            .into_iter()
            .map(|p| rdbms_param!(v2_types, p))
            .collect();
        Ok(self
            .execute_any(&handle, statement, params)
            .await?
            .map_err(v2_error))
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.close(handle)
    }
}

impl v1_types::Host for MysqlView<'_> {}

impl v1::Host for MysqlView<'_> {
    async fn query(
        &mut self,
        address: String,
        statement: String,
        params: Vec<v1_types::ParameterValue>,
    ) -> wasmtime::Result<Result<v1_types::RowSet, v1::MysqlError>> {
        let params = params
            .into_iter()
            .map(|p| rdbms_param!(v1_types, p))
            .collect();
        // Spin 1's calls: a session for the one statement.
        let handle = match self.open_any(&address).await {
            Ok(handle) => handle,
            Err(err) => return Ok(Err(v1_error(err))),
        };
        let result = self.query_any(&handle, statement, params).await;
        self.close(handle)?;
        Ok(result?
            .map(|(columns, rows)| rdbms_row_set!(v1_types, columns, rows))
            .map_err(v1_error))
    }

    async fn execute(
        &mut self,
        address: String,
        statement: String,
        params: Vec<v1_types::ParameterValue>,
    ) -> wasmtime::Result<Result<(), v1::MysqlError>> {
        let params = params
            .into_iter()
            .map(|p| rdbms_param!(v1_types, p))
            .collect();
        let handle = match self.open_any(&address).await {
            Ok(handle) => handle,
            Err(err) => return Ok(Err(v1_error(err))),
        };
        let result = self.execute_any(&handle, statement, params).await;
        self.close(handle)?;
        Ok(result?.map_err(v1_error))
    }
}
