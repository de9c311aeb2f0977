//! The Kafka broker: an idempotent rdkafka producer (acks=all), keys for per-entity order and
//! headers passed through; librdkafka properties from the runtime config (SASL, TLS, MSK IAM).

use super::{Broker, OutgoingMessage, PublishError};
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a publish waits for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaBroker {
    producer: FutureProducer,
}

impl KafkaBroker {
    pub fn connect(bootstrap: &str, properties: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("linger.ms", "1");
        for (key, value) in properties {
            config.set(key, value);
        }
        let producer: FutureProducer = config.create().map_err(|e| {
            anyhow::anyhow!("cannot create the Kafka producer for {bootstrap}: {e}")
        })?;
        Ok(KafkaBroker { producer })
    }
}

fn classify(err: KafkaError) -> PublishError {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => PublishError::TooLarge(err.to_string()),
        Some(RDKafkaErrorCode::InvalidTopic) | Some(RDKafkaErrorCode::UnknownTopic) => {
            PublishError::InvalidTopic(err.to_string())
        }
        _ => PublishError::Unavailable(err.to_string()),
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(&message.topic)
            .payload(&message.payload)
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        self.producer
            .send(record, DELIVERY_TIMEOUT)
            .await
            .map(drop)
            .map_err(|(err, _)| classify(err))
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}
