//! The embedded broker: publishes into moa's on-disk event log (the development default).

use super::{Broker, ConsumerSource, OutgoingMessage, PublishError};
use async_trait::async_trait;
use moa_eventlog::{EventLog, EventLogError, NewRecord};
use std::sync::Arc;

pub struct EmbeddedBroker {
    log: Arc<EventLog>,
}

impl EmbeddedBroker {
    pub fn new(log: Arc<EventLog>) -> Self {
        EmbeddedBroker { log }
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            log.append(
                &message.topic,
                message.key.as_deref(),
                &message.payload,
                &message.headers,
            )
        })
        .await
        .map_err(|e| PublishError::Other(format!("event log task failed: {e}")))?
        .map(drop)
        .map_err(to_publish_error)
    }

    async fn publish_batch(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        let log = self.log.clone();
        let records: Vec<_> = messages
            .into_iter()
            .map(|m| NewRecord {
                topic: m.topic,
                key: m.key,
                payload: m.payload,
                headers: m.headers,
            })
            .collect();
        tokio::task::spawn_blocking(move || log.append_batch(&records))
            .await
            .map_err(|e| PublishError::Other(format!("event log task failed: {e}")))?
            .map(drop)
            .map_err(to_publish_error)
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn consumer_source(&self) -> ConsumerSource {
        ConsumerSource::Embedded(self.log.clone())
    }
}

fn to_publish_error(err: EventLogError) -> PublishError {
    match err {
        EventLogError::InvalidTopic(topic) => PublishError::InvalidTopic(topic),
        other => PublishError::Unavailable(other.to_string()),
    }
}
