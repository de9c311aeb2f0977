//! The Kafka broker: an idempotent rdkafka producer (acks=all), keys for per-entity order and
//! headers passed through; librdkafka properties from the runtime config (SASL, TLS), and MSK IAM
//! tokens for SASL/OAUTHBEARER signed by [`KafkaClientContext`] (producers, consumers, admin).

use super::{Broker, ConsumerSource, OutgoingMessage, PublishError};
use async_trait::async_trait;
use moa_msk_iam::MskIam;
use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a publish waits for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every moa Kafka client (producer, trigger consumer, admin) shares: the MSK IAM signer
/// when the broker uses IAM. librdkafka asks for a token before connecting and again before
/// the last one expires; with another SASL mechanism it never asks.
#[derive(Clone, Default)]
pub struct KafkaClientContext {
    pub msk_iam: Option<Arc<MskIam>>,
}

impl ClientContext for KafkaClientContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let Some(iam) = &self.msk_iam else {
            return Err("sasl.mechanism is OAUTHBEARER but the broker has no token source: add aws_msk_iam = { region = \"...\" } to its [messaging.brokers.<name>] table".into());
        };
        let token = iam.token().map_err(|e| {
            tracing::error!(error = %e, "cannot sign an MSK IAM token");
            e.to_string()
        })?;
        Ok(OAuthToken {
            token: token.token,
            principal_name: token.principal,
            lifetime_ms: token.expires_at_ms,
        })
    }
}

/// Hands a freshly created client its first MSK IAM token. librdkafka asks for tokens through an
/// event on the client's main queue, which rdkafka's admin client never polls (and a consumer only
/// once it is polled): without this, an admin client under IAM never authenticates. Later tokens
/// come through [`KafkaClientContext::generate_oauth_token`] as usual.
pub fn seed_msk_token<C: ClientContext>(client: &rdkafka::client::Client<C>, iam: &MskIam) {
    let token = match iam.token() {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(error = %err, "cannot sign an MSK IAM token");
            return;
        }
    };
    let (Ok(value), Ok(principal)) = (
        std::ffi::CString::new(token.token),
        std::ffi::CString::new(token.principal),
    ) else {
        return;
    };
    let mut error = [0 as std::ffi::c_char; 512];
    // SAFETY: the client pointer is live for the call (borrowed from `client`); the strings are
    // NUL-terminated and outlive the call, which copies them; no extensions are passed; `error`
    // is a writable buffer of the given size.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            token.expires_at_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka wrote a NUL-terminated message into `error`.
        let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
        tracing::warn!(error = %message.to_string_lossy(), "librdkafka refused the MSK IAM token");
    }
}

pub struct KafkaBroker {
    producer: FutureProducer<KafkaClientContext>,
    bootstrap: String,
    properties: BTreeMap<String, String>,
    msk_iam: Option<Arc<MskIam>>,
}

impl KafkaBroker {
    /// `properties` already carry the SASL settings IAM needs when `msk_iam` is set
    /// ([`iam_properties`]).
    pub fn connect(
        bootstrap: &str,
        properties: &BTreeMap<String, String>,
        msk_iam: Option<Arc<MskIam>>,
    ) -> anyhow::Result<Self> {
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
        let context = KafkaClientContext {
            msk_iam: msk_iam.clone(),
        };
        let producer: FutureProducer<KafkaClientContext> =
            config.create_with_context(context).map_err(|e| {
                anyhow::anyhow!("cannot create the Kafka producer for {bootstrap}: {e}")
            })?;
        Ok(KafkaBroker {
            producer,
            bootstrap: bootstrap.to_string(),
            properties: properties.clone(),
            msk_iam,
        })
    }
}

/// The librdkafka settings MSK IAM needs (TLS and SASL/OAUTHBEARER), unless `properties` set them.
pub fn iam_properties(properties: &mut BTreeMap<String, String>) {
    for (key, value) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "OAUTHBEARER"),
    ] {
        properties
            .entry(key.to_string())
            .or_insert_with(|| value.to_string());
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
            msk_iam: self.msk_iam.clone(),
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
