//! The generated `spin:mysql@3.0.0` host traits: `open` checks the allow-list before connecting,
//! `query` streams rows as the server sends them, `execute` runs a statement.

use super::bindings::spin::mysql::mysql::{self, Column, DbValue, Error, ParameterValue};
use super::client::{self, MysqlConnection, RowFeed};
use super::{MAX_CONNECTIONS, MysqlGrant, MysqlInstance};
use crate::capabilities::ChannelRows;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{
    Accessor, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader,
};

/// The value behind a `connection` resource handle.
pub struct OpenConnection {
    pub(super) connection: Arc<MysqlConnection>,
}

/// Marker type naming this capability in the linker.
pub struct Mysql;

impl HasData for Mysql {
    type Data<'a> = MysqlView<'a>;
}

/// What the host traits see of an instance's state.
pub struct MysqlView<'a> {
    pub instance: &'a mut MysqlInstance,
    pub table: &'a mut ResourceTable,
}

/// Adds `spin:mysql@3.0.0` to the linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> MysqlView<'_>,
) -> wasmtime::Result<()> {
    mysql::add_to_linker::<T, Mysql>(linker, view)
}

impl mysql::Host for MysqlView<'_> {}

/// What opening needs from the instance, taken out so the connect can await without it.
pub(super) struct OpenRequest {
    grant: Arc<MysqlGrant>,
    deadline: Instant,
    room: bool,
}

impl MysqlView<'_> {
    pub(super) fn open_request(&self) -> OpenRequest {
        OpenRequest {
            grant: self.instance.grant.clone(),
            deadline: self.instance.deadline,
            room: self.instance.open < MAX_CONNECTIONS,
        }
    }

    /// Holds an open session behind a new handle.
    pub(super) fn push(
        &mut self,
        connection: MysqlConnection,
    ) -> Result<Resource<OpenConnection>, Error> {
        match self.table.push(OpenConnection {
            connection: Arc::new(connection),
        }) {
            Ok(handle) => {
                self.instance.open += 1;
                Ok(handle)
            }
            Err(_) => Err(too_many()),
        }
    }

    /// Drops a connection handle of any version.
    pub(super) fn close(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        self.instance.open = self.instance.open.saturating_sub(1);
        Ok(())
    }
}

fn too_many() -> Error {
    Error::ConnectionFailed("too many connections".into())
}

/// Checks `address` against the component's allow-list, then takes a session from its pool.
pub(super) async fn open(request: OpenRequest, address: &str) -> Result<MysqlConnection, Error> {
    if !request.room {
        return Err(too_many());
    }
    let grant = &request.grant;
    let opts = client::parse_allowed(address, &grant.allowed).map_err(|err| {
        if let client::AddressError::NotPermitted(target) = &err {
            tracing::warn!(component = &*grant.component, target = %target, "MySQL connection denied: not in allowed_outbound_hosts");
        }
        Error::ConnectionFailed(err.to_string())
    })?;
    grant.pools.connect(address, opts, request.deadline).await
}

impl mysql::HostConnection for MysqlView<'_> {
    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.close(handle)
    }
}

type Streamed = (
    Vec<Column>,
    StreamReader<Vec<DbValue>>,
    FutureReader<Result<(), Error>>,
);

fn connection_of<T>(
    accessor: &Accessor<T, Mysql>,
    handle: &Resource<OpenConnection>,
) -> wasmtime::Result<(Arc<MysqlConnection>, Instant)> {
    accessor.with(|mut access| {
        let view = access.get();
        let connection = view.table.get(handle)?.connection.clone();
        Ok((connection, view.instance.deadline))
    })
}

impl<T: Send> mysql::HostConnectionWithStore<T> for Mysql {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        let request = accessor.with(|mut access| access.get().open_request());
        Ok(match open(request, &address).await {
            Ok(connection) => accessor.with(|mut access| access.get().push(connection)),
            Err(err) => Err(err),
        })
    }

    async fn query(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<Streamed, Error>> {
        let (connection, deadline) = connection_of(accessor, &self_)?;
        let RowFeed {
            columns,
            rows,
            done,
        } = match connection.query(statement, params, deadline).await {
            Ok(feed) => feed,
            Err(err) => return Ok(Err(err)),
        };
        accessor.with(|mut access| {
            let rows = StreamReader::new(&mut access, ChannelRows::plain(rows))?;
            let result = FutureReader::new(&mut access, async move {
                Ok::<_, wasmtime::Error>(done.await.unwrap_or(Ok(())))
            })?;
            Ok(Ok((columns, rows, result)))
        })
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (connection, deadline) = connection_of(accessor, &self_)?;
        Ok(connection.execute(statement, params, deadline).await)
    }
}
