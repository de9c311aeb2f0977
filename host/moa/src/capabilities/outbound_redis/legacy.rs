//! Spin 2's `fermyon:spin/redis@2.0.0` (spin-sdk 2 to 5) over the same allow-list and shared
//! connections as 3.0.0; its calls are synchronous for the component.

use super::bindings::spin::redis::redis as v3;
use super::{OpenConnection, OutboundRedis, OutboundRedisView, check_address, flatten, other};
use wasmtime::component::{Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/outbound-redis-v2",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/redis@2.0.0.connection": crate::capabilities::outbound_redis::OpenConnection,
        },
    });
}

use bindings::fermyon::spin::redis as v2;

/// Adds `fermyon:spin/redis@2.0.0` to the linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> OutboundRedisView<'_>,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<T, OutboundRedis>(linker, view)
}

fn v2_error(err: v3::Error) -> v2::Error {
    match err {
        v3::Error::InvalidAddress => v2::Error::InvalidAddress,
        v3::Error::TooManyConnections => v2::Error::TooManyConnections,
        v3::Error::TypeError => v2::Error::TypeError,
        v3::Error::Other(why) => v2::Error::Other(why),
    }
}

impl OutboundRedisView<'_> {
    /// Runs `command` on the connection behind `handle` (the view is not held across the wait).
    fn run<R: redis::FromRedisValue>(
        &self,
        handle: &Resource<OpenConnection>,
        command: redis::Cmd,
    ) -> wasmtime::Result<impl Future<Output = Result<R, v2::Error>> + Send + use<R>> {
        let mut connection = self.table.get(handle)?.connection.clone();
        Ok(async move {
            command
                .query_async(&mut connection)
                .await
                .map_err(|err| v2_error(other(err)))
        })
    }
}

fn command(name: &str, args: impl FnOnce(&mut redis::Cmd)) -> redis::Cmd {
    let mut command = redis::cmd(name);
    args(&mut command);
    command
}

impl v2::Host for OutboundRedisView<'_> {}

impl v2::HostConnection for OutboundRedisView<'_> {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, v2::Error>> {
        if let Err(err) = check_address(self.allowed, &address) {
            return Ok(Err(v2_error(err)));
        }
        let connection = match self.connections.get(&address).await {
            Ok(connection) => connection,
            Err(err) => return Ok(Err(v2_error(err))),
        };
        Ok(self
            .table
            .push(OpenConnection { connection })
            .map_err(|_| v2::Error::TooManyConnections))
    }

    async fn publish(
        &mut self,
        handle: Resource<OpenConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        let published = command("PUBLISH", |c| {
            c.arg(channel).arg(payload);
        });
        Ok(self.run::<i64>(&handle, published)?.await.map(drop))
    }

    async fn get(
        &mut self,
        handle: Resource<OpenConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v2::Error>> {
        Ok(self
            .run(
                &handle,
                command("GET", |c| {
                    c.arg(key);
                }),
            )?
            .await)
    }

    async fn set(
        &mut self,
        handle: Resource<OpenConnection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        Ok(self
            .run(
                &handle,
                command("SET", |c| {
                    c.arg(key).arg(value);
                }),
            )?
            .await)
    }

    async fn incr(
        &mut self,
        handle: Resource<OpenConnection>,
        key: String,
    ) -> wasmtime::Result<Result<i64, v2::Error>> {
        Ok(self
            .run(
                &handle,
                command("INCR", |c| {
                    c.arg(key);
                }),
            )?
            .await)
    }

    async fn del(
        &mut self,
        handle: Resource<OpenConnection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        Ok(self
            .run(
                &handle,
                command("DEL", |c| {
                    c.arg(keys);
                }),
            )?
            .await)
    }

    async fn sadd(
        &mut self,
        handle: Resource<OpenConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        Ok(self
            .run(
                &handle,
                command("SADD", |c| {
                    c.arg(key).arg(values);
                }),
            )?
            .await)
    }

    async fn smembers(
        &mut self,
        handle: Resource<OpenConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, v2::Error>> {
        Ok(self
            .run(
                &handle,
                command("SMEMBERS", |c| {
                    c.arg(key);
                }),
            )?
            .await)
    }

    async fn srem(
        &mut self,
        handle: Resource<OpenConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        Ok(self
            .run(
                &handle,
                command("SREM", |c| {
                    c.arg(key).arg(values);
                }),
            )?
            .await)
    }

    async fn execute(
        &mut self,
        handle: Resource<OpenConnection>,
        name: String,
        arguments: Vec<v2::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<v2::RedisResult>, v2::Error>> {
        let executed = command(&name, |c| {
            for argument in arguments {
                match argument {
                    v2::RedisParameter::Int64(n) => c.arg(n),
                    v2::RedisParameter::Binary(bytes) => c.arg(bytes),
                };
            }
        });
        let value: redis::Value = match self.run(&handle, executed)?.await {
            Ok(value) => value,
            Err(err) => return Ok(Err(err)),
        };
        Ok(Ok(flatten(value)
            .into_iter()
            .map(|result| match result {
                v3::RedisResult::Nil => v2::RedisResult::Nil,
                v3::RedisResult::Status(text) => v2::RedisResult::Status(text),
                v3::RedisResult::Int64(n) => v2::RedisResult::Int64(n),
                v3::RedisResult::Binary(bytes) => v2::RedisResult::Binary(bytes),
            })
            .collect()))
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}
