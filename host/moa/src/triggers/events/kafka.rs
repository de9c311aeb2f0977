//! Kafka as a trigger source: one rdkafka consumer per trigger in the trigger's group; messages of
//! each partition go to that partition's worker, which handles each key's messages one at a time
//! (order per key) and different keys side by side; everything runs up to `concurrency` at once.
//!
//! Offsets are stored only after a message was handled or dead-lettered and committed by
//! librdkafka's auto-commit (and synchronously on revoke and shutdown). On revoke, workers of the
//! revoked partitions get a grace period to finish; what is still running is abandoned uncommitted.

use super::attempts::{AttemptLog, Delivery};
use super::keyed::{KeyedLanes, MAX_KEYS_IN_FLIGHT};
use super::{Event, Lane, TriggerRuntime};
use crate::capabilities::messaging::kafka::{KafkaClientContext, seed_msk_token};
use anyhow::{Context as _, Result};
use rdkafka::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A partition is paused when this many messages wait for its worker, resumed below the low mark.
/// Wide apart: each resume costs a fresh fetch round trip (librdkafka drops the paused
/// partition's prefetched messages), which dominated throughput at 512/64.
const QUEUE_HIGH: usize = 8192;
const QUEUE_LOW: usize = 2048;
/// The same marks in bytes, so large messages cannot pile up without bound.
const QUEUE_HIGH_BYTES: usize = 32 << 20;
const QUEUE_LOW_BYTES: usize = 8 << 20;
/// How long a revoke waits for in-flight deliveries of the revoked partitions.
const REVOKE_GRACE: Duration = Duration::from_secs(10);

type PartitionKey = (String, i32);

/// The main loop's handle on one partition worker.
struct Worker {
    sender: mpsc::UnboundedSender<Event>,
    shared: Arc<WorkerShared>,
}

struct WorkerShared {
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    paused: AtomicBool,
    busy: AtomicBool,
    /// No new deliveries (revoked or shutting down); the one in flight may finish.
    stop: CancellationToken,
    /// Abandon the delivery in flight.
    abort: CancellationToken,
}

impl WorkerShared {
    /// Pause fetching: too many messages or too many bytes wait for the worker.
    fn over_high_mark(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= QUEUE_HIGH
            || self.queued_bytes.load(Ordering::Acquire) >= QUEUE_HIGH_BYTES
    }

    /// Resume fetching: both counts are back under their low marks.
    fn under_low_mark(&self) -> bool {
        self.queued.load(Ordering::Acquire) < QUEUE_LOW
            && self.queued_bytes.load(Ordering::Acquire) < QUEUE_LOW_BYTES
    }
}

type Workers = Arc<Mutex<HashMap<PartitionKey, Worker>>>;

/// Sees rebalances: stops the workers of revoked partitions and commits what they finished.
/// Also turns librdkafka's statistics into the per-partition consumer lag metric.
struct RebalanceContext {
    /// Signs MSK IAM tokens when the broker uses IAM.
    client: KafkaClientContext,
    workers: Workers,
    group: String,
    trigger: String,
    metrics: Arc<crate::telemetry::Metrics>,
}

impl ClientContext for RebalanceContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.client.generate_oauth_token(oauthbearer_config)
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (&partition, stats) in &stats.partitions {
                // Partition -1 is librdkafka's internal one; a lag of -1 is not known yet.
                if partition >= 0 && stats.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag(&self.trigger, topic, partition, stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let stopping: Vec<Arc<WorkerShared>> = {
            let Ok(mut workers) = self.workers.lock() else {
                return;
            };
            for e in revoked.elements() {
                self.metrics
                    .forget_consumer_lag(&self.trigger, e.topic(), e.partition());
            }
            revoked
                .elements()
                .iter()
                .filter_map(|e| workers.remove(&(e.topic().to_string(), e.partition())))
                .map(|w| w.shared)
                .collect()
        };
        for worker in &stopping {
            worker.stop.cancel();
        }
        // Give in-flight deliveries a grace period (this runs on the polling task, so block in
        // place rather than stall the runtime), then abandon the rest and commit what finished.
        let wait = || {
            let deadline = Instant::now() + REVOKE_GRACE;
            while stopping.iter().any(|w| w.busy.load(Ordering::Acquire))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
        for worker in &stopping {
            worker.abort.cancel();
        }
        if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(group = %self.group, error = %err, "no offsets committed on revoke");
        }
        tracing::info!(group = %self.group, partitions = revoked.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            tracing::info!(group = %self.group, partitions = assigned.count(), "partitions assigned");
        }
    }
}

/// One `[[trigger.kafka]]` consumer.
pub struct KafkaTrigger {
    runtime: Arc<TriggerRuntime>,
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    workers: Workers,
    /// The consumer's settings, for the admin client that creates missing topics.
    admin_config: ClientConfig,
    client: KafkaClientContext,
    /// Delivery counts kept across restarts.
    attempts: Arc<AttemptLog>,
}

impl KafkaTrigger {
    /// Creates the consumer (the broker's properties apply: SASL, TLS...); [`Self::run`] creates
    /// missing topics and subscribes.
    pub fn connect(
        runtime: Arc<TriggerRuntime>,
        bootstrap: &str,
        properties: &BTreeMap<String, String>,
        msk_iam: Option<Arc<moa_msk_iam::MskIam>>,
        attempts: Arc<AttemptLog>,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &runtime.trigger.group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("client.id", crate::triggers::events::consumer_name())
            // Statistics (for the consumer lag metric); a broker property may change the interval.
            .set("statistics.interval.ms", "5000");
        for (key, value) in properties {
            // Producer-only settings would make the consumer refuse to start.
            if !is_producer_only(key) {
                config.set(key, value);
            }
        }
        let workers: Workers = Default::default();
        let client = KafkaClientContext { msk_iam };
        let context = RebalanceContext {
            client: client.clone(),
            workers: workers.clone(),
            group: runtime.trigger.group.clone(),
            trigger: runtime.name.clone(),
            metrics: runtime.metrics.clone(),
        };
        let consumer: StreamConsumer<RebalanceContext> = config
            .create_with_context(context)
            .with_context(|| format!("cannot create the Kafka consumer for {bootstrap}"))?;
        if let Some(iam) = &client.msk_iam {
            seed_msk_token(consumer.client(), iam);
        }
        Ok(KafkaTrigger {
            runtime,
            consumer: Arc::new(consumer),
            workers,
            admin_config: config,
            client,
            attempts,
        })
    }

    /// Creates the trigger's topics that do not exist yet, with the broker's default partitions
    /// and replication, so that a first deployment does not wait for a producer to create them
    /// (a consumer learns of a topic created after it subscribed only at its next metadata
    /// refresh, 5 minutes by default). A broker that refuses (no rights, auto-creation off) is
    /// logged; the subscription still goes ahead.
    async fn create_missing_topics(&self) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::types::RDKafkaErrorCode;
        let admin: AdminClient<KafkaClientContext> = match self
            .admin_config
            .create_with_context(self.client.clone())
        {
            Ok(admin) => admin,
            Err(err) => {
                tracing::warn!(error = %err, "cannot create a Kafka admin client; topics are not created");
                return;
            }
        };
        if let Some(iam) = &self.client.msk_iam {
            seed_msk_token(admin.inner(), iam);
        }
        let topics: Vec<NewTopic<'_>> = self
            .runtime
            .trigger
            .topics
            .iter()
            .map(|topic| NewTopic::new(topic, -1, TopicReplication::Fixed(-1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match admin.create_topics(&topics, &options).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(topic) => tracing::info!(topic, "created Kafka topic"),
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => {
                            tracing::warn!(topic, error = %code, "cannot create Kafka topic; create it on the broker")
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot create Kafka topics; create them on the broker")
            }
        }
    }

    /// Polls until `stop`, then lets workers finish (or `abort` them) and commits.
    pub async fn run(self, stop: CancellationToken, abort: CancellationToken) {
        self.create_missing_topics().await;
        let topics: Vec<&str> = self
            .runtime
            .trigger
            .topics
            .iter()
            .map(String::as_str)
            .collect();
        if let Err(err) = self.consumer.subscribe(&topics) {
            self.runtime
                .failed(&format!("cannot subscribe to {}: {err}", topics.join(", ")));
            return;
        }
        let permits = Arc::new(Semaphore::new(self.runtime.in_flight_limit()));
        let (resume_tx, mut resume_rx) = mpsc::unbounded_channel::<PartitionKey>();
        let mut worker_tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(key) = resume_rx.recv() => self.pause(&key, false),
                message = self.consumer.recv() => {
                    let message = match message {
                        Ok(message) => message,
                        Err(err) => {
                            self.runtime.failed(&format!("Kafka consumer error: {err}"));
                            tracing::debug!(group = %self.runtime.trigger.group, error = %err, "Kafka consumer error");
                            continue;
                        }
                    };
                    self.runtime.working();
                    let Ok(offset) = u64::try_from(message.offset()) else { continue };
                    // The timestamp keeps ids apart across a deleted and recreated topic, whose
                    // offsets start again at 0.
                    let timestamp = message.timestamp().to_millis().unwrap_or(0);
                    let topic = message.topic().to_string();
                    let partition = message.partition();
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let event = Event {
                        id: format!("{topic}/{partition}/{offset}@{timestamp}"),
                        topic: topic.clone(),
                        partition: partition as u32,
                        offset,
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().unwrap_or_default().to_vec(),
                        headers,
                    };
                    drop(message);
                    let key = (topic, partition);
                    let shared = {
                        let Ok(mut workers) = self.workers.lock() else { break };
                        let worker = workers.entry(key.clone()).or_insert_with(|| {
                            let (sender, receiver) = mpsc::unbounded_channel();
                            let shared = Arc::new(WorkerShared {
                                queued: AtomicUsize::new(0),
                                queued_bytes: AtomicUsize::new(0),
                                paused: AtomicBool::new(false),
                                busy: AtomicBool::new(false),
                                stop: stop.child_token(),
                                abort: abort.child_token(),
                            });
                            worker_tasks.spawn(partition_worker(
                                Deliveries {
                                    runtime: self.runtime.clone(),
                                    attempts: self.attempts.clone(),
                                    permits: permits.clone(),
                                },
                                self.consumer.clone(),
                                key.clone(),
                                receiver,
                                shared.clone(),
                                resume_tx.clone(),
                            ));
                            Worker { sender, shared }
                        });
                        worker.shared.queued.fetch_add(1, Ordering::AcqRel);
                        worker.shared.queued_bytes.fetch_add(event.size(), Ordering::AcqRel);
                        let _ = worker.sender.send(event);
                        worker.shared.clone()
                    };
                    if shared.over_high_mark() && !shared.paused.swap(true, Ordering::AcqRel) {
                        self.pause(&key, true);
                        // The worker may have drained meanwhile; then resume at once.
                        if shared.under_low_mark() && shared.paused.swap(false, Ordering::AcqRel)
                        {
                            self.pause(&key, false);
                        }
                    }
                }
            }
        }
        // Shutdown: workers finish their current delivery (or are aborted by the caller).
        if let Ok(workers) = self.workers.lock() {
            for worker in workers.values() {
                worker.shared.stop.cancel();
            }
        }
        while worker_tasks.join_next().await.is_some() {}
        if let Err(err) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %err, "no offsets committed at shutdown");
        }
        self.consumer.unsubscribe();
    }

    fn pause(&self, key: &PartitionKey, paused: bool) {
        let mut list = TopicPartitionList::new();
        if list
            .add_partition_offset(&key.0, key.1, Offset::Invalid)
            .is_err()
        {
            return;
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(err) = result {
            tracing::debug!(topic = %key.0, partition = key.1, error = %err, "pause/resume failed");
        }
    }
}

/// What every partition worker of a trigger runs deliveries with.
#[derive(Clone)]
struct Deliveries {
    runtime: Arc<TriggerRuntime>,
    /// Delivery counts kept across restarts.
    attempts: Arc<AttemptLog>,
    /// The trigger's `concurrency`, shared by its partitions.
    permits: Arc<Semaphore>,
}

/// Handles one partition's messages: each key's in order, different keys side by side (up to
/// [`MAX_KEYS_IN_FLIGHT`]), so a failing message holds up only its key. Stores the offset below
/// the lowest unfinished message after each one ends (handled or dead-lettered).
async fn partition_worker(
    deliveries: Deliveries,
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    key: PartitionKey,
    mut receiver: mpsc::UnboundedReceiver<Event>,
    shared: Arc<WorkerShared>,
    resume: mpsc::UnboundedSender<PartitionKey>,
) {
    let Deliveries {
        runtime,
        attempts,
        permits,
    } = deliveries;
    let mut lanes = KeyedLanes::default();
    let mut running: JoinSet<(Event, Option<super::Outcome>, Lane)> = JoinSet::new();
    let mut receiving = true;
    let start = |running: &mut JoinSet<_>, lanes: &mut KeyedLanes, event: Event| {
        let runtime = runtime.clone();
        let permits = permits.clone();
        let attempts = attempts.clone();
        let abort = shared.abort.clone();
        let mut lane = lanes.lane();
        running.spawn(async move {
            let outcome = match permits.acquire().await {
                Ok(_permit) => {
                    // Counted before it runs: a message that takes the host down is counted
                    // at each restart and dead-lettered after `max_attempts`.
                    let delivery = Delivery {
                        group: runtime.trigger.group.clone(),
                        topic: event.topic.clone(),
                        partition: event.partition as i32,
                        offset: event.offset as i64,
                    };
                    let attempt = attempts.start(delivery.clone()).await;
                    let outcome = runtime.deliver(&event, attempt, &mut lane, &abort).await;
                    if outcome.is_some() {
                        attempts.end(delivery);
                    }
                    outcome
                }
                Err(_) => None,
            };
            (event, outcome, lane)
        });
    };
    loop {
        let take = receiving && lanes.in_flight() < MAX_KEYS_IN_FLIGHT;
        tokio::select! {
            event = receiver.recv(), if take => match event {
                Some(_) if shared.stop.is_cancelled() => receiving = false,
                Some(event) => {
                    if let Some(event) = lanes.admit(event) {
                        start(&mut running, &mut lanes, event);
                    }
                }
                None => receiving = false,
            },
            Some(done) = running.join_next() => {
                let Ok((event, outcome, lane)) = done else { return };
                // Abandoned (revoked or shutting down): neither handled nor committed.
                if outcome.is_none() {
                    return;
                }
                lanes.give_back(lane);
                let (next, commit) = lanes.finish(&event);
                if let Some(offset) = commit
                    && let Err(err) = consumer.store_offset(&key.0, key.1, offset as i64)
                {
                    tracing::warn!(topic = %key.0, partition = key.1, offset, error = %err, "cannot store the offset (partition revoked?)");
                }
                runtime.committed(1);
                shared.queued.fetch_sub(1, Ordering::AcqRel);
                shared.queued_bytes.fetch_sub(event.size(), Ordering::AcqRel);
                if shared.under_low_mark() && shared.paused.swap(false, Ordering::AcqRel) {
                    let _ = resume.send(key.clone());
                }
                if let Some(next) = next
                    && !shared.stop.is_cancelled()
                {
                    start(&mut running, &mut lanes, next);
                }
            }
            _ = shared.stop.cancelled(), if receiving => receiving = false,
            else => return,
        }
        shared.busy.store(!running.is_empty(), Ordering::Release);
        if running.is_empty() && (shared.stop.is_cancelled() || (!receiving && lanes.is_idle())) {
            return;
        }
    }
}

/// librdkafka properties that only producers accept.
fn is_producer_only(key: &str) -> bool {
    matches!(
        key,
        "acks"
            | "enable.idempotence"
            | "linger.ms"
            | "queue.buffering.max.ms"
            | "batch.size"
            | "batch.num.messages"
            | "compression.type"
            | "compression.codec"
            | "message.timeout.ms"
            | "delivery.timeout.ms"
            | "retries"
            | "message.send.max.retries"
            | "request.required.acks"
            | "transactional.id"
            | "partitioner"
    )
}
