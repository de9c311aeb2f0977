//! The generated `spin:mysql@3.0.0` host traits: `open` checks the allow-list before connecting,
//! `query` streams rows as the server sends them, `execute` runs a statement.

use super::bindings::spin::mysql::mysql::{self, Column, DbValue, Error, ParameterValue};
use super::client::{self, MysqlConnection, RowFeed};
use super::{MAX_CONNECTIONS, MysqlInstance};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Accessor, Destination, FutureReader, HasData, Linker, Resource, ResourceTable, StreamProducer,
    StreamReader, StreamResult, VecBuffer,
};

/// The value behind a `connection` resource handle.
pub struct OpenConnection {
    connection: Arc<MysqlConnection>,
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

impl mysql::HostConnection for MysqlView<'_> {
    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        self.instance.open = self.instance.open.saturating_sub(1);
        Ok(())
    }
}

/// The rows of a running query, handed to the component as it reads them.
struct RowStream {
    rows: tokio::sync::mpsc::Receiver<Vec<DbValue>>,
}

impl<D> StreamProducer<D> for RowStream {
    type Item = Vec<DbValue>;
    type Buffer = VecBuffer<Vec<DbValue>>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, Vec<DbValue>, VecBuffer<Vec<DbValue>>>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        match this.rows.poll_recv(cx) {
            Poll::Ready(Some(first)) => {
                let mut batch = vec![first];
                while batch.len() < 64 {
                    match this.rows.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
                destination.set_buffer(batch.into());
                Poll::Ready(Ok(StreamResult::Completed))
            }
            Poll::Ready(None) => Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
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
        let (grant, deadline, room) = accessor.with(|mut access| {
            let view = access.get();
            (
                view.instance.grant.clone(),
                view.instance.deadline,
                view.instance.open < MAX_CONNECTIONS,
            )
        });
        if !room {
            return Ok(Err(Error::ConnectionFailed("too many connections".into())));
        }
        let opts = match client::parse_allowed(&address, &grant.allowed) {
            Ok(opts) => opts,
            Err(err) => {
                if let client::AddressError::NotPermitted(target) = &err {
                    tracing::warn!(component = &*grant.component, target = %target, "MySQL connection denied: not in allowed_outbound_hosts");
                }
                return Ok(Err(Error::ConnectionFailed(err.to_string())));
            }
        };
        let connection = match grant.pools.connect(&address, opts, deadline).await {
            Ok(connection) => connection,
            Err(err) => return Ok(Err(err)),
        };
        accessor.with(|mut access| {
            let view = access.get();
            match view.table.push(OpenConnection {
                connection: Arc::new(connection),
            }) {
                Ok(handle) => {
                    view.instance.open += 1;
                    Ok(Ok(handle))
                }
                Err(_) => Ok(Err(Error::ConnectionFailed("too many connections".into()))),
            }
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
            let rows = StreamReader::new(&mut access, RowStream { rows })?;
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
