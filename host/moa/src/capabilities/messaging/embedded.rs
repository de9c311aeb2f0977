//! The embedded broker: publishes into moa's on-disk event log (the development default).

use super::{Broker, OutgoingMessage, PublishError};
use async_trait::async_trait;
use moa_eventlog::{EventLog, EventLogError};
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
        .map_err(|err| match err {
            EventLogError::InvalidTopic(t) => PublishError::InvalidTopic(t),
            other => PublishError::Unavailable(other.to_string()),
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}
