//! The transactional outbox and the idempotent inbox: messages staged inside a transaction, a relay
//! per store that publishes them after commit (one host at a time, by a fenced lease), and "first
//! time?" marks per consumer with a retention. Backends keep them in their own tables (the embedded
//! store) or in collections ([`collections`], for MongoDB); the relay here drives either.

pub mod collections;

use super::DocumentBackend;
use super::ops::DocumentError;
use crate::capabilities::messaging::{Broker, MessagingBrokers, OutgoingMessage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// `consumer|message id` marks (on backends that keep the inbox in a collection).
pub const INBOX: &str = "_moa_inbox";

/// The header every outbox message carries: a stable id consumers deduplicate on.
pub const MESSAGE_ID_HEADER: &str = "moa-message-id";

/// How long a relay's lease lasts without renewal (another host takes over after it).
const LEASE: Duration = Duration::from_secs(5);
/// How many staged messages one relay round publishes at most.
const BATCH: usize = 1024;
/// How often the relay deletes inbox marks past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often the backlog gauge is refreshed while the relay publishes.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One staged message as the relay reads it.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The message id (sent as the `moa-message-id` header).
    pub id: String,
    /// Its place in publish order: the commit order on the embedded store; on MongoDB the
    /// sequence number within its key.
    pub seq: i64,
    /// When it was staged (for the publish-lag histogram).
    pub created_ms: i64,
    /// What goes to the broker, without the id header.
    pub message: OutgoingMessage,
}

impl Staged {
    /// The message with its id header, as the broker gets it.
    fn outgoing(&self) -> OutgoingMessage {
        let mut message = self.message.clone();
        message
            .headers
            .push((MESSAGE_ID_HEADER.to_string(), self.id.as_bytes().to_vec()));
        message
    }
}

/// A consumer name and message id are each 1-512 bytes.
pub fn check_mark(consumer: &str, message_id: &str) -> Result<(), DocumentError> {
    for (what, value) in [("consumer", consumer), ("message id", message_id)] {
        if value.is_empty() || value.len() > 512 {
            return Err(DocumentError::InvalidArgument(format!(
                "the {what} is 1-512 bytes"
            )));
        }
    }
    Ok(())
}

/// The error of a relay whose lease another host took (it published; the other host will too,
/// and consumers drop the repeats by message id).
pub fn lease_lost() -> DocumentError {
    DocumentError::WriteConflict("another host's relay holds the outbox lease now".into())
}

/// One store's outbox: where its messages go and how its relay is woken.
pub struct Outbox {
    label: String,
    backend: Arc<dyn DocumentBackend>,
    brokers: Arc<MessagingBrokers>,
    wake: Notify,
    /// This host's relay identity for the lease.
    holder: String,
    /// How long inbox marks are kept.
    inbox_retention: Duration,
}

impl Outbox {
    pub fn new(
        label: &str,
        backend: Arc<dyn DocumentBackend>,
        brokers: Arc<MessagingBrokers>,
        inbox_retention: Duration,
    ) -> Arc<Self> {
        Arc::new(Outbox {
            label: label.to_string(),
            backend,
            brokers,
            wake: Notify::new(),
            holder: uuid::Uuid::new_v4().simple().to_string(),
            inbox_retention,
        })
    }

    /// Wakes the relay (a transaction with messages committed).
    pub fn committed(&self) {
        self.wake.notify_one();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

/// The relays' series: backlog, publish lag, published messages, errors.
#[derive(Clone)]
pub struct RelayMetrics {
    backlog: Family<StoreLabels, Gauge>,
    lag: Family<StoreLabels, Histogram, fn() -> Histogram>,
    published: Family<StoreLabels, Counter>,
    errors: Family<StoreLabels, Counter>,
}

impl RelayMetrics {
    /// Creates the series and adds them to the host's /metrics.
    pub fn register(metrics: &crate::telemetry::Metrics) -> Self {
        let relay = RelayMetrics {
            backlog: Family::default(),
            lag: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            published: Family::default(),
            errors: Family::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            "moa_outbox_backlog",
            "Outbox messages committed but not yet acknowledged by a broker",
            relay.backlog.clone(),
        );
        registry.register(
            "moa_outbox_publish_lag_seconds",
            "From a message's commit to the broker's acknowledgement",
            relay.lag.clone(),
        );
        registry.register(
            "moa_outbox_published",
            "Outbox messages published and marked done",
            relay.published.clone(),
        );
        registry.register(
            "moa_outbox_relay_errors",
            "Outbox relay rounds that failed (broker or store errors); they are retried",
            relay.errors.clone(),
        );
        metrics.add_source(Arc::new(registry));
        relay
    }
}

/// Runs the store's relay until `cancel`: woken by local commits, polling for other hosts' commits
/// and for messages a crashed host left behind; prunes old inbox marks on the way.
pub fn spawn_relay(
    outbox: Arc<Outbox>,
    poll: Duration,
    metrics: RelayMetrics,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut relay = Relay {
            labels: StoreLabels {
                store: outbox.label.clone(),
            },
            outbox,
            metrics,
            lease_until: None,
            backlog_at: None,
        };
        let mut failing = false;
        let mut pruned_at = Instant::now();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = relay.outbox.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            loop {
                match relay.round().await {
                    Ok(0) => break,
                    Ok(_) => {
                        if failing {
                            tracing::info!(store = %relay.outbox.label, "outbox relay publishes again");
                            failing = false;
                        }
                    }
                    Err(error) => {
                        relay.metrics.errors.get_or_create(&relay.labels).inc();
                        // What waits while the broker is away.
                        if let Ok(left) = relay.outbox.backend.outbox_backlog().await {
                            relay
                                .metrics
                                .backlog
                                .get_or_create(&relay.labels)
                                .set(left as i64);
                        }
                        // Whatever the round read is read again from the store next time.
                        relay.lease_until = None;
                        if !failing {
                            tracing::warn!(store = %relay.outbox.label, error = %error, "outbox relay cannot publish; retrying");
                            failing = true;
                        }
                        break;
                    }
                }
            }
            if pruned_at.elapsed() >= PRUNE_EVERY {
                pruned_at = Instant::now();
                relay.prune_inbox().await;
            }
        }
        relay.release().await;
    });
}

/// The relay of one store on this host.
struct Relay {
    outbox: Arc<Outbox>,
    metrics: RelayMetrics,
    labels: StoreLabels,
    /// Until when this host holds the lease, as far as it knows.
    lease_until: Option<Instant>,
    /// When the backlog gauge was last refreshed.
    backlog_at: Option<Instant>,
}

impl Relay {
    /// Takes the lease, or renews it when less than half of it is left; false when another host
    /// holds it.
    async fn hold_lease(&mut self) -> Result<bool, DocumentError> {
        if self
            .lease_until
            .is_some_and(|until| until > Instant::now() + LEASE / 2)
        {
            return Ok(true);
        }
        let asked = Instant::now();
        let held = self
            .outbox
            .backend
            .outbox_lease(&self.outbox.holder, LEASE.as_millis() as i64)
            .await?;
        self.lease_until = held.then_some(asked + LEASE);
        Ok(held)
    }

    /// One round: publishes up to a batch of staged messages (each key's in order) while keeping
    /// the lease, then deletes them, fenced on the lease. Returns how many it published.
    async fn round(&mut self) -> Result<usize, anyhow::Error> {
        let backend = self.outbox.backend.clone();
        let pending = backend.outbox_pending(BATCH).await?;
        if pending.is_empty() {
            self.metrics.backlog.get_or_create(&self.labels).set(0);
            return Ok(0);
        }
        // The lease only when there is work: an idle relay costs the store one read per poll.
        // What was read before the lease is published now; later commits wait for the next round.
        if !self.hold_lease().await? {
            return Ok(0);
        }
        let outbox = self.outbox.clone();
        let publish = publish(&outbox, &pending);
        tokio::pin!(publish);
        // A publish can take as long as the broker's delivery timeout: the lease is renewed
        // meanwhile, so another host does not take over and publish the same messages.
        let published = loop {
            tokio::select! {
                result = &mut publish => break result,
                () = tokio::time::sleep(LEASE / 3) => {
                    let asked = Instant::now();
                    match backend.outbox_lease(&self.outbox.holder, LEASE.as_millis() as i64).await {
                        Ok(true) => self.lease_until = Some(asked + LEASE),
                        Ok(false) => self.lease_until = None,
                        Err(error) => tracing::warn!(store = %self.outbox.label, error = %error, "cannot renew the outbox lease"),
                    }
                    // A slow publish may be a broker outage: keep the backlog gauge current.
                    if let Ok(left) = backend.outbox_backlog().await {
                        self.metrics.backlog.get_or_create(&self.labels).set(left as i64);
                    }
                }
            }
        };
        published?;
        backend
            .outbox_remove(&pending, &self.outbox.holder, LEASE.as_millis() as i64)
            .await?;
        {
            let now = now_ms();
            let lag = self.metrics.lag.get_or_create(&self.labels);
            for staged in &pending {
                lag.observe((now - staged.created_ms).max(0) as f64 / 1000.0);
            }
        }
        self.metrics
            .published
            .get_or_create(&self.labels)
            .inc_by(pending.len() as u64);
        if self
            .backlog_at
            .is_none_or(|at| at.elapsed() >= BACKLOG_EVERY)
        {
            self.backlog_at = Some(Instant::now());
            if let Ok(left) = backend.outbox_backlog().await {
                self.metrics
                    .backlog
                    .get_or_create(&self.labels)
                    .set(left as i64);
            }
        }
        Ok(pending.len())
    }

    /// Deletes inbox marks older than the retention; a failure is logged and tried next time.
    async fn prune_inbox(&self) {
        let Ok(retention) = i64::try_from(self.outbox.inbox_retention.as_millis()) else {
            return;
        };
        match self.outbox.backend.inbox_prune(now_ms() - retention).await {
            Ok(0) => {}
            Ok(pruned) => {
                tracing::debug!(store = %self.outbox.label, pruned, "inbox marks past their retention deleted")
            }
            Err(error) => {
                tracing::warn!(store = %self.outbox.label, error = %error, "cannot prune the inbox")
            }
        }
    }

    /// Gives the lease up at shutdown, so another host takes over at once.
    async fn release(&self) {
        if self.lease_until.is_some() {
            let _ = self
                .outbox
                .backend
                .outbox_lease(&self.outbox.holder, -1)
                .await;
        }
    }
}

/// Hands the messages to their brokers: one batch per broker, all brokers at once; each batch
/// keeps the read order (and so every key's order).
async fn publish(outbox: &Outbox, pending: &[Staged]) -> Result<(), anyhow::Error> {
    let mut batches: Vec<(Arc<dyn Broker>, Vec<OutgoingMessage>)> = Vec::new();
    for staged in pending {
        let message = staged.outgoing();
        let broker = outbox.brokers.broker_for(&message.topic).clone();
        match batches.iter_mut().find(|(b, _)| Arc::ptr_eq(b, &broker)) {
            Some((_, batch)) => batch.push(message),
            None => batches.push((broker, vec![message])),
        }
    }
    let sends = batches.into_iter().map(|(broker, batch)| async move {
        broker
            .publish_batch(batch)
            .await
            .map_err(|e| anyhow::anyhow!("{} broker: {e}", broker.kind()))
    });
    futures::future::try_join_all(sends).await?;
    Ok(())
}
