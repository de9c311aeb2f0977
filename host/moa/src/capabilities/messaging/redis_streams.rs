//! The Redis Streams broker: `XADD <topic> [MAXLEN ~ n] * payload <bytes> [key <bytes>]
//! [h:<name> <bytes>]...` over one multiplexed, auto-reconnecting connection.

use super::{Broker, ConsumerSource, OutgoingMessage, PublishError};
use async_trait::async_trait;
use redis::aio::ConnectionManager;

/// Field names of a stream entry, shared with the Redis Streams trigger.
pub const PAYLOAD_FIELD: &str = "payload";
pub const KEY_FIELD: &str = "key";
pub const HEADER_PREFIX: &str = "h:";

pub struct RedisStreamsBroker {
    url: String,
    connection: ConnectionManager,
    maxlen: Option<u64>,
}

impl RedisStreamsBroker {
    pub async fn connect(url: &str, maxlen: Option<u64>) -> anyhow::Result<Self> {
        Ok(RedisStreamsBroker {
            url: url.to_string(),
            connection: crate::redis_client::connect(url).await?,
            maxlen,
        })
    }
}

impl RedisStreamsBroker {
    fn xadd(&self, message: &OutgoingMessage) -> redis::Cmd {
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
        command
    }
}

#[async_trait]
impl Broker for RedisStreamsBroker {
    async fn publish_batch(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        // One pipeline: one round trip, entries appended in the given order.
        let mut pipe = redis::pipe();
        for message in &messages {
            pipe.add_command(self.xadd(message)).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| PublishError::Unavailable(format!("redis: {e}")))
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        let command = self.xadd(&message);
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

    fn consumer_source(&self) -> ConsumerSource {
        ConsumerSource::Redis {
            url: self.url.clone(),
        }
    }
}
