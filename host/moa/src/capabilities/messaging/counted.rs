//! Counts what each broker took, per topic (`moa_messages_published_total{broker,topic}`): direct
//! publishes and outbox relays alike, so domain events (e.g. the saga's outcomes) become rates.

use super::{Broker, ConsumerSource, OutgoingMessage, PublishError};
use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishedLabels {
    broker: String,
    topic: String,
}

/// The series every broker of the app counts into.
#[derive(Clone, Default)]
pub struct PublishedMetrics {
    published: Family<PublishedLabels, Counter>,
}

impl PublishedMetrics {
    /// Creates the series and adds them to the host's /metrics.
    pub fn register(metrics: &crate::telemetry::Metrics) -> Self {
        let counted = PublishedMetrics::default();
        let mut registry = Registry::default();
        registry.register(
            "moa_messages_published",
            "Messages a broker acknowledged, per topic (component publishes and outbox relays)",
            counted.published.clone(),
        );
        metrics.add_source(Arc::new(registry));
        counted
    }
}

/// A broker whose acknowledged messages are counted under its `[messaging.brokers.<name>]` name.
pub struct CountedBroker {
    inner: Arc<dyn Broker>,
    name: String,
    metrics: PublishedMetrics,
}

impl CountedBroker {
    pub fn wrap(inner: Arc<dyn Broker>, name: &str, metrics: &PublishedMetrics) -> Arc<dyn Broker> {
        Arc::new(CountedBroker {
            inner,
            name: name.to_string(),
            metrics: metrics.clone(),
        })
    }

    fn count<'a>(&self, topics: impl Iterator<Item = &'a str>) {
        let mut last: Option<(&str, u64)> = None;
        // Batches are mostly one topic: one label lookup per run of equal topics.
        for topic in topics {
            match &mut last {
                Some((current, n)) if *current == topic => *n += 1,
                _ => {
                    if let Some((done, n)) = last.take() {
                        self.add(done, n);
                    }
                    last = Some((topic, 1));
                }
            }
        }
        if let Some((done, n)) = last {
            self.add(done, n);
        }
    }

    fn add(&self, topic: &str, n: u64) {
        self.metrics
            .published
            .get_or_create(&PublishedLabels {
                broker: self.name.clone(),
                topic: topic.to_string(),
            })
            .inc_by(n);
    }
}

#[async_trait]
impl Broker for CountedBroker {
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        let topic = message.topic.clone();
        self.inner.publish(message).await?;
        self.count(std::iter::once(topic.as_str()));
        Ok(())
    }

    async fn publish_batch(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        let topics: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
        self.inner.publish_batch(messages).await?;
        self.count(topics.iter().map(String::as_str));
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn consumer_source(&self) -> ConsumerSource {
        self.inner.consumer_source()
    }
}
