//! The raw Kafka baseline the benchmarks measure moa against (included by `bench_events` and
//! `saga_load`): an idempotent acks=all rdkafka producer with every message in flight and a group
//! consumer that stores each offset, no wasm, in rounds until enough time has run.

use anyhow::Result;
use futures::StreamExt as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};

/// Creates `topic` with `partitions`.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        result.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Messages per second over rounds of `n` until `min_seconds` of measured time.
pub struct Rounds {
    messages: usize,
    elapsed: Duration,
}

impl Rounds {
    pub fn new() -> Self {
        Rounds {
            messages: 0,
            elapsed: Duration::ZERO,
        }
    }

    pub fn add(&mut self, messages: usize, elapsed: Duration) {
        self.messages += messages;
        self.elapsed += elapsed;
    }

    pub fn done(&self, min_seconds: f64) -> bool {
        self.elapsed.as_secs_f64() >= min_seconds
    }

    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

/// Messages per second produced and consumed (offset stored) on a new topic of `partitions`, in
/// rounds of `n` messages (`payload(i)` gives each key and value) until `min_seconds` have run.
pub async fn raw_kafka(
    bootstrap: &str,
    partitions: i32,
    n: usize,
    min_seconds: f64,
    payload: fn(usize) -> (String, Vec<u8>),
) -> Result<f64> {
    let topic = format!("raw-{}-{partitions}", std::process::id());
    create_topic(bootstrap, &topic, partitions).await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-group"))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    // Join the group before the clock starts (the moa case warms up the same way).
    while consumer.assignment()?.count() == 0 {
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()?;
    let mut rounds = Rounds::new();
    while !rounds.done(min_seconds) {
        let started = Instant::now();
        let produce = async {
            let sends = (0..n).map(|i| {
                let producer = producer.clone();
                let topic = topic.clone();
                async move {
                    let (key, payload) = payload(i);
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&payload),
                            Duration::from_secs(30),
                        )
                        .await
                        .map(drop)
                        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))
                }
            });
            let results: Vec<Result<()>> = futures::stream::iter(sends)
                .buffer_unordered(10_000)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>>>()
        };
        let consume = async {
            let mut seen = 0;
            while seen < n {
                let message = consumer.recv().await?;
                consumer.store_offset(message.topic(), message.partition(), message.offset())?;
                seen += 1;
            }
            anyhow::Ok(())
        };
        let (produced, consumed) = tokio::join!(produce, consume);
        produced?;
        consumed?;
        rounds.add(n, started.elapsed());
    }
    Ok(rounds.rate())
}
