//! The Redis Streams broker: `XADD <topic> [MAXLEN ~ n] * payload <bytes> [key <bytes>]
//! [h:<name> <bytes>]...` over one multiplexed, auto-reconnecting connection.

use super::{Broker, OutgoingMessage, PublishError};
use async_trait::async_trait;
use redis::aio::ConnectionManager;

/// Field names of a stream entry, shared with the Redis Streams trigger.
pub const PAYLOAD_FIELD: &str = "payload";
pub const KEY_FIELD: &str = "key";
pub const HEADER_PREFIX: &str = "h:";

pub struct RedisStreamsBroker {
    connection: ConnectionManager,
    maxlen: Option<u64>,
}

impl RedisStreamsBroker {
    pub async fn connect(url: &str, maxlen: Option<u64>) -> anyhow::Result<Self> {
        Ok(RedisStreamsBroker {
            connection: crate::redis_client::connect(url).await?,
            maxlen,
        })
    }
}

#[async_trait]
impl Broker for RedisStreamsBroker {
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        let mut command = redis::cmd("XADD");
        command.arg(&message.topic);
        if let Some(maxlen) = self.maxlen {
            command.arg("MAXLEN").arg("~").arg(maxlen);
        }
        command.arg("*").arg(PAYLOAD_FIELD).arg(&message.payload);
        if let Some(key) = &message.key {
            command.arg(KEY_FIELD).arg(key);
        }
        for (name, value) in &message.headers {
            command.arg(format!("{HEADER_PREFIX}{name}")).arg(value);
        }
        let mut connection = self.connection.clone();
        command
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| PublishError::Unavailable(format!("redis: {e}")))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
