//! The Kafka broker: an idempotent rdkafka producer (acks=all), keys for per-entity order and
//! headers passed through; librdkafka properties from the runtime config (SASL, TLS, MSK IAM).

use super::{Broker, ConsumerSource, OutgoingMessage, PublishError};
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
    bootstrap: String,
    properties: BTreeMap<String, String>,
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
            // The same properties configure the triggers' consumers; consumer-only keys would
            // only make librdkafka warn here.
            if !is_consumer_only(key) {
                config.set(key, value);
            }
        }
        let producer: FutureProducer = config.create().map_err(|e| {
            anyhow::anyhow!("cannot create the Kafka producer for {bootstrap}: {e}")
        })?;
        Ok(KafkaBroker {
            producer,
            bootstrap: bootstrap.to_string(),
            properties: properties.clone(),
        })
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

/// The rdkafka record for a message: topic, key, payload and headers as they are.
fn to_record(message: &OutgoingMessage) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let record = FutureRecord::to(&message.topic)
        .payload(&message.payload)
        .headers(headers);
    match &message.key {
        Some(key) => record.key(key),
        None => record,
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn publish_batch(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        // Enqueue in order (the idempotent producer keeps that order per partition), then wait
        // for every acknowledgement.
        let mut pending = Vec::with_capacity(messages.len());
        for message in &messages {
            let mut record = to_record(message);
            let started = std::time::Instant::now();
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if started.elapsed() < DELIVERY_TIMEOUT =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((err, _)) => return Err(classify(err)),
                }
            }
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(classify(err)),
                Err(_) => return Err(PublishError::Unavailable("producer closed".into())),
            }
        }
        Ok(())
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        let record = to_record(&message);
        self.producer
            .send(record, DELIVERY_TIMEOUT)
            .await
            .map(drop)
            .map_err(|(err, _)| classify(err))
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn consumer_source(&self) -> ConsumerSource {
        ConsumerSource::Kafka {
            bootstrap: self.bootstrap.clone(),
            properties: self.properties.clone(),
        }
    }
}

/// librdkafka properties that only consumers accept.
fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || matches!(
            key,
            "group.id"
                | "group.instance.id"
                | "session.timeout.ms"
                | "heartbeat.interval.ms"
                | "max.poll.interval.ms"
                | "auto.offset.reset"
                | "enable.auto.commit"
                | "auto.commit.interval.ms"
                | "enable.auto.offset.store"
                | "partition.assignment.strategy"
                | "group.protocol"
                | "isolation.level"
                | "queued.min.messages"
                | "queued.max.messages.kbytes"
        )
}
