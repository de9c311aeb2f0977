//! The transactional outbox and the idempotent inbox, built on the store's own operations (so they
//! work the same on every backend): messages staged inside a transaction, a relay per store that
//! publishes them after commit (one host at a time, by lease), and "first time?" marks per consumer.

use super::ops::{DocumentError, FindSpec, Op, Output, Query, UpdateSpec};
use super::{DocumentBackend, DocumentTransaction};
use crate::capabilities::messaging::{Broker, MessagingBrokers, OutgoingMessage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Staged messages, one document each.
pub const OUTBOX: &str = "_moa_outbox";
/// The last sequence number per message key (keeps per-key commit order).
const OUTBOX_KEYS: &str = "_moa_outbox_keys";
/// Which host's relay publishes now.
const OUTBOX_LEASE: &str = "_moa_outbox_lease";
/// `consumer|message id` marks.
pub const INBOX: &str = "_moa_inbox";

/// The header every outbox message carries: a stable id consumers deduplicate on.
pub const MESSAGE_ID_HEADER: &str = "moa-message-id";

/// How long a relay's lease lasts without renewal (another host takes over after it).
const LEASE: Duration = Duration::from_secs(5);
/// How many staged messages one relay round reads.
const BATCH: u64 = 256;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One store's outbox: where its messages go and how its relay is woken.
pub struct Outbox {
    label: String,
    backend: Arc<dyn DocumentBackend>,
    brokers: Arc<MessagingBrokers>,
    wake: Notify,
    /// This host's relay identity for the lease.
    holder: String,
}

impl Outbox {
    pub fn new(
        label: &str,
        backend: Arc<dyn DocumentBackend>,
        brokers: Arc<MessagingBrokers>,
    ) -> Arc<Self> {
        Arc::new(Outbox {
            label: label.to_string(),
            backend,
            brokers,
            wake: Notify::new(),
            holder: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    /// Wakes the relay (a transaction with messages committed).
    pub fn committed(&self) {
        self.wake.notify_one();
    }
}

/// The indexes the relay's queries use, on every store.
pub fn internal_indexes(store: &str) -> Vec<super::IndexSpec> {
    let index = |name: &str, keys: &[&str]| super::IndexSpec {
        store: store.to_string(),
        collection: OUTBOX.into(),
        keys: keys.iter().map(|k| (k.to_string(), true)).collect(),
        unique: false,
        name: name.to_string(),
    };
    vec![
        index("moa_created", &["created_ms"]),
        index("moa_key_order", &["okey", "seq"]),
    ]
}

/// Stages `message` inside `tx`; returns its message id.
pub async fn stage(
    tx: &mut dyn DocumentTransaction,
    message: OutgoingMessage,
) -> Result<String, DocumentError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let ordering_key = message
        .key
        .as_ref()
        .map(|key| format!("{}|{}", message.topic, hex::encode(key)));
    let seq = match &ordering_key {
        Some(okey) => {
            let output = tx
                .run(Op::FindOneAndUpdate {
                    collection: OUTBOX_KEYS.into(),
                    filter: Query::from_value(json!({ "_id": okey }))?,
                    update: UpdateSpec::from_value(json!({ "$inc": { "seq": 1 } }))?,
                    sort: None,
                    projection: None,
                    upsert: true,
                    return_after: true,
                })
                .await?;
            match output {
                Output::Document(Some(document)) => document
                    .get("seq")
                    .and_then(Value::as_i64)
                    .unwrap_or_default(),
                _ => 0,
            }
        }
        None => 0,
    };
    let headers: Vec<Value> = message
        .headers
        .iter()
        .map(|(name, value)| json!([name, hex::encode(value)]))
        .collect();
    let mut document = Map::new();
    document.insert("_id".into(), Value::String(id.clone()));
    document.insert("topic".into(), Value::String(message.topic));
    document.insert(
        "key".into(),
        message
            .key
            .map_or(Value::Null, |k| Value::String(hex::encode(k))),
    );
    document.insert(
        "payload".into(),
        Value::String(hex::encode(&message.payload)),
    );
    document.insert("headers".into(), Value::Array(headers));
    document.insert(
        "okey".into(),
        ordering_key.map_or(Value::Null, Value::String),
    );
    document.insert("seq".into(), Value::from(seq));
    document.insert("created_ms".into(), Value::from(now_ms()));
    tx.run(Op::Insert {
        collection: OUTBOX.into(),
        documents: vec![document],
    })
    .await?;
    Ok(id)
}

/// Records in `tx` that `consumer` processed `message_id`; true the first time.
pub async fn first_time(
    tx: &mut dyn DocumentTransaction,
    consumer: &str,
    message_id: &str,
) -> Result<bool, DocumentError> {
    for (what, value) in [("consumer", consumer), ("message id", message_id)] {
        if value.is_empty() || value.len() > 512 {
            return Err(DocumentError::InvalidArgument(format!(
                "the {what} is 1-512 bytes"
            )));
        }
    }
    let output = tx
        .run(Op::Update {
            collection: INBOX.into(),
            filter: Query::from_value(json!({ "_id": format!("{consumer}|{message_id}") }))?,
            update: UpdateSpec::from_value(json!({ "$setOnInsert": { "at_ms": now_ms() } }))?,
            upsert: true,
            many: false,
        })
        .await?;
    Ok(matches!(output, Output::Updated(outcome) if outcome.upserted_id.is_some()))
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
/// and for messages a crashed host left behind.
pub fn spawn_relay(
    outbox: Arc<Outbox>,
    poll: Duration,
    metrics: RelayMetrics,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let labels = StoreLabels {
            store: outbox.label.clone(),
        };
        let mut failing = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = outbox.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            loop {
                match relay_round(&outbox, &metrics, &labels).await {
                    Ok(0) => break,
                    Ok(_) => {
                        if failing {
                            tracing::info!(store = %outbox.label, "outbox relay publishes again");
                            failing = false;
                        }
                    }
                    Err(error) => {
                        metrics.errors.get_or_create(&labels).inc();
                        if !failing {
                            tracing::warn!(store = %outbox.label, error = %error, "outbox relay cannot publish; retrying");
                            failing = true;
                        }
                        break;
                    }
                }
            }
        }
        release_lease(&outbox).await;
    });
}

/// Takes or renews the relay lease; false when another host holds it.
async fn hold_lease(outbox: &Outbox) -> Result<bool, DocumentError> {
    let now = now_ms();
    let result = outbox
        .backend
        .run(Op::FindOneAndUpdate {
            collection: OUTBOX_LEASE.into(),
            filter: Query::from_value(json!({
                "_id": "relay",
                "$or": [{ "holder": &outbox.holder }, { "until_ms": { "$lt": now } }],
            }))?,
            update: UpdateSpec::from_value(json!({
                "$set": { "holder": &outbox.holder, "until_ms": now + LEASE.as_millis() as i64 },
            }))?,
            sort: None,
            projection: None,
            upsert: true,
            return_after: true,
        })
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(DocumentError::DuplicateKey(_) | DocumentError::WriteConflict(_)) => Ok(false),
        Err(other) => Err(other),
    }
}

async fn release_lease(outbox: &Outbox) {
    if let Ok(filter) = Query::from_value(json!({ "_id": "relay", "holder": &outbox.holder })) {
        let _ = outbox
            .backend
            .run(Op::Delete {
                collection: OUTBOX_LEASE.into(),
                filter,
                many: false,
            })
            .await;
    }
}

fn documents(output: Output) -> Vec<Value> {
    match output {
        Output::Documents(documents) => documents,
        _ => Vec::new(),
    }
}

/// One relay round: publishes up to a batch of staged messages (each key's in sequence order) and
/// deletes them once the brokers acknowledged. Returns how many it published.
async fn relay_round(
    outbox: &Outbox,
    metrics: &RelayMetrics,
    labels: &StoreLabels,
) -> Result<usize, anyhow::Error> {
    let backend = &outbox.backend;
    let mut spec = FindSpec::sorted(json!({ "created_ms": 1, "_id": 1 }))?;
    spec.limit = Some(BATCH);
    let pending = documents(
        backend
            .run(Op::Find {
                collection: OUTBOX.into(),
                filter: Query::from_value(json!({}))?,
                spec,
            })
            .await?,
    );
    if pending.is_empty() {
        metrics.backlog.get_or_create(labels).set(0);
        return Ok(0);
    }
    // The lease only when there is work: an idle relay costs the store one read per poll. What
    // was read before the lease is published now; later commits wait for the next round.
    if !hold_lease(outbox).await? {
        return Ok(0);
    }
    // Key-less messages in commit-time order; keyed ones all of their key's backlog, in sequence.
    let mut keys: Vec<Value> = pending
        .iter()
        .filter_map(|m| m.get("okey").filter(|k| k.is_string()).cloned())
        .collect();
    keys.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    keys.dedup();
    let mut ordered: Vec<Value> = pending
        .into_iter()
        .filter(|m| m.get("okey").is_none_or(Value::is_null))
        .collect();
    if !keys.is_empty() {
        let spec = FindSpec::sorted(json!({ "okey": 1, "seq": 1 }))?;
        ordered.extend(documents(
            backend
                .run(Op::Find {
                    collection: OUTBOX.into(),
                    filter: Query::from_value(json!({ "okey": { "$in": keys } }))?,
                    spec,
                })
                .await?,
        ));
    }

    let now = now_ms();
    let mut batches: Vec<(Arc<dyn Broker>, Vec<OutgoingMessage>)> = Vec::new();
    let mut ids = Vec::with_capacity(ordered.len());
    let mut lags = Vec::with_capacity(ordered.len());
    for staged in &ordered {
        let Some(message) = decode(staged) else {
            // Only the host writes here; a document it cannot read would block the queue.
            tracing::error!(store = %outbox.label, staged = %staged, "dropping a malformed outbox entry");
            ids.push(staged.get("_id").cloned().unwrap_or(Value::Null));
            continue;
        };
        ids.push(staged.get("_id").cloned().unwrap_or(Value::Null));
        lags.push(
            now - staged
                .get("created_ms")
                .and_then(Value::as_i64)
                .unwrap_or(now),
        );
        let broker = outbox.brokers.broker_for(&message.topic).clone();
        match batches.iter_mut().find(|(b, _)| Arc::ptr_eq(b, &broker)) {
            Some((_, batch)) => batch.push(message),
            None => batches.push((broker, vec![message])),
        }
    }
    for (broker, batch) in batches {
        broker
            .publish_batch(batch)
            .await
            .map_err(|e| anyhow::anyhow!("{} broker: {e}", broker.kind()))?;
    }
    let published = ids.len();
    backend
        .run(Op::Delete {
            collection: OUTBOX.into(),
            filter: Query::from_value(json!({ "_id": { "$in": ids } }))?,
            many: true,
        })
        .await?;
    {
        let lag = metrics.lag.get_or_create(labels);
        for ms in lags {
            lag.observe(ms.max(0) as f64 / 1000.0);
        }
    }
    metrics
        .published
        .get_or_create(labels)
        .inc_by(published as u64);
    if let Ok(Output::Count(left)) = backend
        .run(Op::Count {
            collection: OUTBOX.into(),
            filter: Query::from_value(json!({}))?,
        })
        .await
    {
        metrics.backlog.get_or_create(labels).set(left as i64);
    }
    Ok(published)
}

/// A staged document back into a message (with its id header); `None` for a malformed one.
fn decode(staged: &Value) -> Option<OutgoingMessage> {
    let id = staged.get("_id")?.as_str()?;
    let topic = staged.get("topic")?.as_str()?.to_string();
    let key = match staged.get("key") {
        Some(Value::String(k)) => Some(hex::decode(k).ok()?),
        _ => None,
    };
    let payload = hex::decode(staged.get("payload")?.as_str()?).ok()?;
    let mut headers = Vec::new();
    for header in staged.get("headers")?.as_array()? {
        let pair = header.as_array()?;
        let name = pair.first()?.as_str()?.to_string();
        let value = hex::decode(pair.get(1)?.as_str()?).ok()?;
        headers.push((name, value));
    }
    headers.push((MESSAGE_ID_HEADER.to_string(), id.as_bytes().to_vec()));
    Some(OutgoingMessage {
        topic,
        key,
        payload,
        headers,
    })
}
