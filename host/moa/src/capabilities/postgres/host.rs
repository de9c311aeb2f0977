//! The generated `spin:postgres` host traits: every open path (`open`, `open-async`, the builder's
//! `build` and `build-async`) checks the allow-list first; `query-async` streams rows as they come.

use super::bindings::spin::postgres4_2_0::postgres::{
    self as pg, Column, DbValue, Error, ParameterValue, RowSet,
};
use super::client::{CaRoot, PgConnection, RowFeed};
use super::{MAX_CONNECTIONS, PostgresGrant, PostgresInstance, address, types};
use crate::capabilities::ChannelRows;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{
    Accessor, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader,
};

/// The value behind a `connection` resource handle (of every version of the interface).
pub struct OpenConnection {
    pub(super) connection: Arc<PgConnection>,
}

/// The value behind a `connection-builder` resource handle.
pub struct ConnectionBuilder {
    address: String,
    ca: Option<CaRoot>,
}

/// Marker type naming this capability in the linker.
pub struct Postgres;

/// Drops a connection handle of any version.
pub(super) fn close(
    view: &mut PostgresView<'_>,
    handle: Resource<OpenConnection>,
) -> wasmtime::Result<()> {
    view.table.delete(handle)?;
    view.instance.open = view.instance.open.saturating_sub(1);
    Ok(())
}

impl HasData for Postgres {
    type Data<'a> = PostgresView<'a>;
}

/// What the host traits see of an instance's state.
pub struct PostgresView<'a> {
    pub instance: &'a mut PostgresInstance,
    pub table: &'a mut ResourceTable,
}

/// Adds `spin:postgres@4.2.0` to the linker (4.0.0 and 4.1.0 imports resolve to it too).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> PostgresView<'_>,
) -> wasmtime::Result<()> {
    pg::add_to_linker::<T, Postgres>(linker, view)
}

/// What opening needs from the instance, taken out so the connect can await without it.
pub(super) struct OpenRequest {
    grant: Arc<PostgresGrant>,
    deadline: Instant,
    room: bool,
}

impl PostgresView<'_> {
    pub(super) fn open_request(&self) -> OpenRequest {
        OpenRequest {
            grant: self.instance.grant.clone(),
            deadline: self.instance.deadline,
            room: self.instance.open < MAX_CONNECTIONS,
        }
    }

    pub(super) fn push(
        &mut self,
        connection: PgConnection,
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

    pub(super) fn connection(
        &self,
        handle: &Resource<OpenConnection>,
    ) -> wasmtime::Result<Arc<PgConnection>> {
        Ok(self.table.get(handle)?.connection.clone())
    }
}

fn too_many() -> Error {
    Error::ConnectionFailed("too many connections".into())
}

/// Checks `address` against the component's allow-list, then takes a session from its pool.
pub(super) async fn open(
    request: OpenRequest,
    address: &str,
    ca: Option<&CaRoot>,
) -> Result<PgConnection, Error> {
    if !request.room {
        return Err(too_many());
    }
    let grant = &request.grant;
    let config = address::parse_allowed(address, &grant.allowed).map_err(|err| {
        if let address::AddressError::NotPermitted(target) = &err {
            tracing::warn!(component = &*grant.component, target = %target, "PostgreSQL connection denied: not in allowed_outbound_hosts");
        }
        Error::ConnectionFailed(err.to_string())
    })?;
    let application = format!("moa/{}", grant.component);
    grant
        .pools
        .connect(address, config, ca, &application, request.deadline)
        .await
}

/// Parameters for `execute`, whose conversion errors Spin reports as `value-conversion-failed`.
pub(super) fn execute_params(params: Vec<ParameterValue>) -> Result<Vec<types::Param>, Error> {
    types::to_params(params).map_err(Error::ValueConversionFailed)
}

/// Parameters for the queries, whose conversion errors Spin reports as `bad-parameter`.
pub(super) fn query_params(params: Vec<ParameterValue>) -> Result<Vec<types::Param>, Error> {
    types::to_params(params).map_err(Error::BadParameter)
}

impl pg::Host for PostgresView<'_> {}

impl pg::HostConnectionBuilder for PostgresView<'_> {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<ConnectionBuilder>> {
        Ok(self.table.push(ConnectionBuilder { address, ca: None })?)
    }

    async fn set_ca_root(
        &mut self,
        handle: Resource<ConnectionBuilder>,
        certificate: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let builder = self.table.get_mut(&handle)?;
        Ok(match CaRoot::from_pem(&certificate) {
            Ok(ca) => {
                builder.ca = Some(ca);
                Ok(())
            }
            Err(why) => Err(Error::Other(why)),
        })
    }

    async fn build(
        &mut self,
        handle: Resource<ConnectionBuilder>,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        let builder = self.table.get(&handle)?;
        let (address, ca) = (builder.address.clone(), builder.ca.clone());
        Ok(
            match open(self.open_request(), &address, ca.as_ref()).await {
                Ok(connection) => self.push(connection),
                Err(err) => Err(err),
            },
        )
    }

    async fn drop(&mut self, handle: Resource<ConnectionBuilder>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl pg::HostConnection for PostgresView<'_> {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        Ok(match open(self.open_request(), &address, None).await {
            Ok(connection) => self.push(connection),
            Err(err) => Err(err),
        })
    }

    async fn query(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        let connection = self.connection(&handle)?;
        let params = match query_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        Ok(connection
            .query(&statement, &params, self.instance.deadline)
            .await)
    }

    async fn execute(
        &mut self,
        handle: Resource<OpenConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let connection = self.connection(&handle)?;
        let params = match execute_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        Ok(connection
            .execute(&statement, &params, self.instance.deadline)
            .await)
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        close(self, handle)
    }
}

type Streamed = (
    Vec<Column>,
    StreamReader<Vec<DbValue>>,
    FutureReader<Result<(), Error>>,
);

/// The connection and the deadline, for an async call.
fn connection_of<T>(
    accessor: &Accessor<T, Postgres>,
    handle: &Resource<OpenConnection>,
) -> wasmtime::Result<(Arc<PgConnection>, Instant)> {
    accessor.with(|mut access| {
        let view = access.get();
        Ok((view.connection(handle)?, view.instance.deadline))
    })
}

async fn open_async<T>(
    accessor: &Accessor<T, Postgres>,
    address: &str,
    ca: Option<&CaRoot>,
) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
    let request = accessor.with(|mut access| access.get().open_request());
    Ok(match open(request, address, ca).await {
        Ok(connection) => accessor.with(|mut access| access.get().push(connection)),
        Err(err) => Err(err),
    })
}

impl<T: Send> pg::HostConnectionBuilderWithStore<T> for Postgres {
    async fn build_async(
        accessor: &Accessor<T, Self>,
        self_: Resource<ConnectionBuilder>,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        let (address, ca) = accessor.with(|mut access| -> wasmtime::Result<_> {
            let builder = access.get().table.get(&self_)?;
            Ok((builder.address.clone(), builder.ca.clone()))
        })?;
        open_async(accessor, &address, ca.as_ref()).await
    }
}

impl<T: Send> pg::HostConnectionWithStore<T> for Postgres {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        open_async(accessor, &address, None).await
    }

    async fn query_async(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<Streamed, Error>> {
        let (connection, deadline) = connection_of(accessor, &self_)?;
        let params = match query_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        let RowFeed {
            columns,
            rows,
            done,
        } = match connection.query_stream(&statement, params, deadline).await {
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

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let (connection, deadline) = connection_of(accessor, &self_)?;
        let params = match execute_params(params) {
            Ok(params) => params,
            Err(err) => return Ok(Err(err)),
        };
        Ok(connection.execute(&statement, &params, deadline).await)
    }
}
