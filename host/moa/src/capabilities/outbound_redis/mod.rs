//! Outbound Redis: Spin's `spin:redis/redis@3.0.0` (`spin_sdk::redis`; Spin 2's 2.0.0 too), over
//! one multiplexed connection per address shared by every instance; `open` needs a `redis://`
//! allow-list entry.

use super::outbound_http::AllowedHosts;
use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use bindings::spin::redis::redis::{self as spin_redis, Error, RedisParameter, RedisResult};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::{Accessor, HasData, Linker, Resource, ResourceTable};

mod legacy;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/outbound-redis",
        imports: { default: trappable },
        with: {
            "spin:redis/redis.connection": super::OpenConnection,
        },
    });
}

/// Most distinct addresses one app keeps connections to (Spin's `too-many-connections`).
const MAX_ADDRESSES: usize = 64;

/// The value behind a `connection` resource handle.
pub struct OpenConnection {
    connection: ConnectionManager,
}

/// The app's connections, one per address, shared by all instances.
#[derive(Clone, Default)]
pub struct RedisConnections {
    by_address: Arc<tokio::sync::Mutex<HashMap<String, ConnectionManager>>>,
}

impl RedisConnections {
    async fn get(&self, address: &str) -> Result<ConnectionManager, Error> {
        let mut by_address = self.by_address.lock().await;
        if let Some(connection) = by_address.get(address) {
            return Ok(connection.clone());
        }
        if by_address.len() >= MAX_ADDRESSES {
            return Err(Error::TooManyConnections);
        }
        let connection = crate::redis_client::connect(address)
            .await
            .map_err(|err| Error::Other(format!("{err:#}")))?;
        by_address.insert(address.to_string(), connection.clone());
        Ok(connection)
    }
}

/// Marker type naming this capability in the linker.
pub struct OutboundRedis;

impl HasData for OutboundRedis {
    type Data<'a> = OutboundRedisView<'a>;
}

/// What the host traits see of an instance's state.
pub struct OutboundRedisView<'a> {
    pub allowed: &'a AllowedHosts,
    pub connections: &'a RedisConnections,
    pub table: &'a mut ResourceTable,
}

/// Spin's outbound Redis, allowed per `redis://` entry of `allowed_outbound_hosts`.
pub struct OutboundRedisCapability;

/// One component's allow-list and the app's connections.
#[derive(Clone)]
pub struct OutboundRedisGrant {
    allowed: Arc<AllowedHosts>,
    connections: RedisConnections,
}

impl Capability for OutboundRedisCapability {
    const NAME: &'static str = "outbound-redis";
    const IMPORTS: &'static [&'static str] = &["spin:redis@3.0.0", "fermyon:spin/redis@2.0.0"];

    type AppState = RedisConnections;
    type ComponentState = OutboundRedisGrant;
    type InstanceState = OutboundRedisGrant;
    type View<'a> = OutboundRedisView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
        spin_redis::add_to_linker::<T, OutboundRedis>(linker, T::capability_view)?;
        legacy::add_to_linker(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(_cx: &ConfigureContext<'_>) -> anyhow::Result<RedisConnections> {
        Ok(RedisConnections::default())
    }

    fn component(
        connections: &RedisConnections,
        cx: &ComponentContext<'_>,
    ) -> anyhow::Result<OutboundRedisGrant> {
        Ok(OutboundRedisGrant {
            allowed: cx.allowed_hosts.clone(),
            connections: connections.clone(),
        })
    }

    fn instance(grant: &OutboundRedisGrant) -> OutboundRedisGrant {
        grant.clone()
    }

    fn view<'a>(parts: InstanceParts<'a, OutboundRedisGrant>) -> OutboundRedisView<'a> {
        OutboundRedisView {
            allowed: &parts.state.allowed,
            connections: &parts.state.connections,
            table: parts.table,
        }
    }
}

/// A `redis://` or `rediss://` address the component may open (`open` of 3.0.0 and 2.0.0).
fn check_address(allowed: &AllowedHosts, address: &str) -> Result<(), Error> {
    let Ok(uri) = address.parse::<http::Uri>() else {
        return Err(Error::InvalidAddress);
    };
    if !matches!(uri.scheme_str(), Some("redis" | "rediss")) || uri.host().is_none() {
        return Err(Error::InvalidAddress);
    }
    if !allowed.allows_uri(&uri) {
        return Err(Error::Other(format!(
            "{} is not in this component's allowed_outbound_hosts",
            crate::redis_client::redact(address)
        )));
    }
    Ok(())
}

/// Spin's mapping: a value of the wrong type (or not an integer for `incr`) is `type-error`.
fn other(err: redis::RedisError) -> Error {
    let text = err.to_string();
    let wrong_type = matches!(
        err.kind(),
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse
    ) || err.code() == Some("WRONGTYPE")
        || text.contains("not an integer");
    if wrong_type {
        Error::TypeError
    } else {
        Error::Other(text)
    }
}

fn connection_of<T>(
    accessor: &Accessor<T, OutboundRedis>,
    handle: &Resource<OpenConnection>,
) -> wasmtime::Result<ConnectionManager> {
    accessor.with(|mut access| Ok(access.get().table.get(handle)?.connection.clone()))
}

async fn query<T, R: redis::FromRedisValue>(
    accessor: &Accessor<T, OutboundRedis>,
    handle: &Resource<OpenConnection>,
    command: redis::Cmd,
) -> wasmtime::Result<Result<R, Error>> {
    let mut connection = connection_of(accessor, handle)?;
    Ok(command.query_async(&mut connection).await.map_err(other))
}

impl spin_redis::Host for OutboundRedisView<'_> {}

impl spin_redis::HostConnection for OutboundRedisView<'_> {
    fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl<T: Send> spin_redis::HostConnectionWithStore<T> for OutboundRedis {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        let checked = accessor.with(|mut access| {
            let view = access.get();
            check_address(view.allowed, &address).map(|()| view.connections.clone())
        });
        let connection = match checked {
            Ok(connections) => match connections.get(&address).await {
                Ok(connection) => connection,
                Err(err) => return Ok(Err(err)),
            },
            Err(err) => return Ok(Err(err)),
        };
        accessor.with(
            |mut access| match access.get().table.push(OpenConnection { connection }) {
                Ok(handle) => Ok(Ok(handle)),
                Err(_) => Ok(Err(Error::TooManyConnections)),
            },
        )
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(payload);
        Ok(query::<T, i64>(accessor, &self_, command).await?.map(drop))
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let mut command = redis::cmd("GET");
        command.arg(key);
        query(accessor, &self_, command).await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value);
        query(accessor, &self_, command).await
    }

    async fn incr(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        key: String,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let mut command = redis::cmd("INCR");
        command.arg(key);
        query(accessor, &self_, command).await
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let mut command = redis::cmd("DEL");
        command.arg(keys);
        query(accessor, &self_, command).await
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let mut command = redis::cmd("SADD");
        command.arg(key).arg(values);
        query(accessor, &self_, command).await
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        let mut command = redis::cmd("SMEMBERS");
        command.arg(key);
        query(accessor, &self_, command).await
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let mut command = redis::cmd("SREM");
        command.arg(key).arg(values);
        query(accessor, &self_, command).await
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<RedisResult>, Error>> {
        let mut cmd = redis::cmd(&command);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(n) => cmd.arg(n),
                RedisParameter::Binary(bytes) => cmd.arg(bytes),
            };
        }
        let value: redis::Value = match query(accessor, &self_, cmd).await? {
            Ok(value) => value,
            Err(err) => return Ok(Err(err)),
        };
        Ok(Ok(flatten(value)))
    }
}

/// A reply as Spin's `execute` returns it: arrays flattened into one list.
fn flatten(value: redis::Value) -> Vec<RedisResult> {
    match value {
        redis::Value::Nil => vec![RedisResult::Nil],
        redis::Value::Int(n) => vec![RedisResult::Int64(n)],
        redis::Value::BulkString(bytes) => vec![RedisResult::Binary(bytes)],
        redis::Value::SimpleString(text) => vec![RedisResult::Status(text)],
        redis::Value::Okay => vec![RedisResult::Status("OK".into())],
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.into_iter().flat_map(flatten).collect()
        }
        redis::Value::Boolean(b) => vec![RedisResult::Int64(i64::from(b))],
        redis::Value::Double(d) => vec![RedisResult::Binary(d.to_string().into_bytes())],
        other => vec![RedisResult::Binary(format!("{other:?}").into_bytes())],
    }
}
