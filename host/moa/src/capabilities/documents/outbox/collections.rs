//! The outbox and inbox kept in ordinary collections, for backends without tables of their own
//! (MongoDB): a per-key sequence counter, sorted reads with limits, a transaction-fenced delete.

use super::{INBOX, MESSAGE_ID_HEADER, Staged, check_mark, now_ms};
use crate::capabilities::documents::ops::{DocumentError, FindSpec, Op, Output, Query, UpdateSpec};
use crate::capabilities::documents::{DocumentBackend, DocumentTransaction, IndexSpec};
use crate::capabilities::messaging::OutgoingMessage;
use serde_json::{Map, Value, json};

/// Staged messages, one document each.
pub const OUTBOX: &str = "_moa_outbox";
/// The last sequence number per message key (keeps per-key commit order).
const OUTBOX_KEYS: &str = "_moa_outbox_keys";
/// Which host's relay publishes now.
const OUTBOX_LEASE: &str = "_moa_outbox_lease";

/// How many messages one relay read takes in commit-time order; their keys' backlogs follow.
const FIRST_READ: u64 = 256;

/// The indexes the relay's and the pruner's queries use.
pub fn indexes(store: &str) -> Vec<IndexSpec> {
    let index = |collection: &str, name: &str, keys: &[&str]| IndexSpec {
        store: store.to_string(),
        collection: collection.into(),
        keys: keys.iter().map(|k| (k.to_string(), true)).collect(),
        unique: false,
        name: name.to_string(),
    };
    vec![
        index(OUTBOX, "moa_created", &["created_ms"]),
        index(OUTBOX, "moa_key_order", &["okey", "seq"]),
        index(INBOX, "moa_at", &["at_ms"]),
    ]
}

/// The ordering key of a keyed message: its topic and key.
fn ordering_key(message: &OutgoingMessage) -> Option<String> {
    message
        .key
        .as_ref()
        .map(|key| format!("{}|{}", message.topic, hex::encode(key)))
}

/// Stages `message` inside `tx` with the next sequence number of its key; returns its id.
pub async fn stage(
    tx: &mut dyn DocumentTransaction,
    message: OutgoingMessage,
) -> Result<String, DocumentError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let okey = ordering_key(&message);
    let seq = match &okey {
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
    document.insert("okey".into(), okey.map_or(Value::Null, Value::String));
    document.insert("seq".into(), Value::from(seq));
    document.insert("created_ms".into(), Value::from(now_ms()));
    tx.run(Op::Insert {
        collection: OUTBOX.into(),
        documents: vec![document],
    })
    .await?;
    Ok(id)
}

/// The inbox document's `_id` for a mark: `consumer|id` as before, except when the consumer
/// contains `|` or starts with `~`, which get `~<length>:consumer|id` (no two marks share an `_id`).
pub fn inbox_id(consumer: &str, message_id: &str) -> String {
    if consumer.contains('|') || consumer.starts_with('~') {
        format!("~{}:{consumer}|{message_id}", consumer.len())
    } else {
        format!("{consumer}|{message_id}")
    }
}

/// Records in `tx` that `consumer` processed `message_id`; true the first time.
pub async fn first_time(
    tx: &mut dyn DocumentTransaction,
    consumer: &str,
    message_id: &str,
) -> Result<bool, DocumentError> {
    check_mark(consumer, message_id)?;
    let output = tx
        .run(Op::Update {
            collection: INBOX.into(),
            filter: Query::from_value(json!({ "_id": inbox_id(consumer, message_id) }))?,
            update: UpdateSpec::from_value(json!({ "$setOnInsert": { "at_ms": now_ms() } }))?,
            upsert: true,
            many: false,
        })
        .await?;
    Ok(matches!(output, Output::Updated(outcome) if outcome.upserted_id.is_some()))
}

fn documents(output: Output) -> Vec<Value> {
    match output {
        Output::Documents(documents) => documents,
        _ => Vec::new(),
    }
}

/// The next messages to publish: up to [`FIRST_READ`] in commit-time order, and for every key
/// among them the start of that key's backlog in sequence order (at most `limit` in all).
pub async fn pending(
    backend: &dyn DocumentBackend,
    limit: usize,
) -> Result<Vec<Staged>, DocumentError> {
    let mut spec = FindSpec::sorted(json!({ "created_ms": 1, "_id": 1 }))?;
    spec.limit = Some(FIRST_READ);
    let first = documents(
        backend
            .run(Op::Find {
                collection: OUTBOX.into(),
                filter: Query::from_value(json!({}))?,
                spec,
            })
            .await?,
    );
    let mut keys: Vec<&str> = first
        .iter()
        .filter_map(|m| m.get("okey").and_then(Value::as_str))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut ordered: Vec<Value> = first
        .iter()
        .filter(|m| m.get("okey").is_none_or(Value::is_null))
        .cloned()
        .collect();
    if !keys.is_empty() {
        // A key's earlier messages may have been created later than the first read reaches; each
        // key's backlog is read from its lowest sequence number, a prefix of it when it is long.
        let mut spec = FindSpec::sorted(json!({ "okey": 1, "seq": 1 }))?;
        spec.limit = Some(limit.saturating_sub(ordered.len()).max(1) as u64);
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
    Ok(ordered.iter().filter_map(decode).collect())
}

/// A staged document back into a message; `None` for a malformed one (logged, and left).
pub fn decode(staged: &Value) -> Option<Staged> {
    let parsed = (|| {
        let id = staged.get("_id")?.as_str()?.to_string();
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
            if name == MESSAGE_ID_HEADER {
                continue;
            }
            let value = hex::decode(pair.get(1)?.as_str()?).ok()?;
            headers.push((name, value));
        }
        Some(Staged {
            id,
            seq: staged.get("seq").and_then(Value::as_i64).unwrap_or(0),
            created_ms: staged
                .get("created_ms")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            message: OutgoingMessage {
                topic,
                key,
                payload,
                headers,
            },
        })
    })();
    if parsed.is_none() {
        tracing::error!(staged = %staged, "an outbox document the relay cannot read; it stays");
    }
    parsed
}

/// Takes or renews the relay lease for `holder`, for `for_ms`; false when another host holds it.
///
/// The write runs in a transaction of its own: a plain write waits behind a transaction that
/// holds the lease document (a killed host's `remove`), possibly for good on servers that only
/// reap abandoned transactions when transactions are used; a transaction answers "write
/// conflict" at once, and the relay asks again at its next poll.
pub async fn lease(
    backend: &dyn DocumentBackend,
    holder: &str,
    for_ms: i64,
) -> Result<bool, DocumentError> {
    let now = now_ms();
    let mut tx = backend.begin().await?;
    let result = tx
        .run(Op::FindOneAndUpdate {
            collection: OUTBOX_LEASE.into(),
            filter: Query::from_value(json!({
                "_id": "relay",
                "$or": [{ "holder": holder }, { "until_ms": { "$lt": now } }],
            }))?,
            update: UpdateSpec::from_value(json!({
                "$set": { "holder": holder, "until_ms": now + for_ms },
            }))?,
            sort: None,
            projection: None,
            upsert: true,
            return_after: true,
        })
        .await;
    let result = match result {
        Ok(_) => tx.commit().await,
        Err(error) => {
            let _ = tx.abort().await;
            Err(error)
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(DocumentError::DuplicateKey(_) | DocumentError::WriteConflict(_)) => Ok(false),
        Err(other) => Err(other),
    }
}

/// Deletes published messages in one transaction that also writes the lease, so that only its
/// holder deletes; then the key counters no staged message needs any more.
pub async fn remove(
    backend: &dyn DocumentBackend,
    published: &[Staged],
    holder: &str,
    for_ms: i64,
) -> Result<(), DocumentError> {
    let mut tx = backend.begin().await?;
    let renewed = tx
        .run(Op::Update {
            collection: OUTBOX_LEASE.into(),
            filter: Query::from_value(json!({ "_id": "relay", "holder": holder }))?,
            update: UpdateSpec::from_value(json!({ "$set": { "until_ms": now_ms() + for_ms } }))?,
            upsert: false,
            many: false,
        })
        .await?;
    if !matches!(renewed, Output::Updated(outcome) if outcome.matched == 1) {
        let _ = tx.abort().await;
        return Err(super::lease_lost());
    }
    let ids: Vec<&str> = published.iter().map(|s| s.id.as_str()).collect();
    tx.run(Op::Delete {
        collection: OUTBOX.into(),
        filter: Query::from_value(json!({ "_id": { "$in": ids } }))?,
        many: true,
    })
    .await?;
    tx.commit().await?;
    // A counter whose last message went out is deleted unless a message was staged since (its
    // `seq` moved on); a stager racing with this delete conflicts and runs again.
    let mut last: Vec<(String, i64)> = Vec::new();
    for staged in published {
        if let Some(okey) = ordering_key(&staged.message) {
            match last.iter_mut().find(|(k, _)| *k == okey) {
                Some(entry) => entry.1 = entry.1.max(staged.seq),
                None => last.push((okey, staged.seq)),
            }
        }
    }
    if !last.is_empty() {
        let clauses: Vec<Value> = last
            .iter()
            .map(|(okey, seq)| json!({ "_id": okey, "seq": seq }))
            .collect();
        // In a transaction, like the lease: a counter a killed stager's open transaction holds
        // conflicts at once instead of stalling the relay; it stays (the key's next message goes on
        // from it).
        let mut tx = backend.begin().await?;
        let deleted = tx
            .run(Op::Delete {
                collection: OUTBOX_KEYS.into(),
                filter: Query::from_value(json!({ "$or": clauses }))?,
                many: true,
            })
            .await;
        let _ = match deleted {
            Ok(_) => tx.commit().await,
            Err(error) => {
                let _ = tx.abort().await;
                Err(error)
            }
        };
    }
    Ok(())
}

/// Messages staged and not yet published.
pub async fn backlog(backend: &dyn DocumentBackend) -> Result<u64, DocumentError> {
    match backend
        .run(Op::Count {
            collection: OUTBOX.into(),
            filter: Query::from_value(json!({}))?,
        })
        .await?
    {
        Output::Count(n) => Ok(n),
        _ => Ok(0),
    }
}

/// Deletes inbox marks older than `before_ms`.
pub async fn prune_inbox(
    backend: &dyn DocumentBackend,
    before_ms: i64,
) -> Result<u64, DocumentError> {
    match backend
        .run(Op::Delete {
            collection: INBOX.into(),
            filter: Query::from_value(json!({ "at_ms": { "$lt": before_ms } }))?,
            many: true,
        })
        .await?
    {
        Output::Count(n) => Ok(n),
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::inbox_id;

    #[test]
    fn inbox_ids_of_different_marks_differ() {
        let pairs = [
            ("a|b", "c"),
            ("a", "b|c"),
            ("~3:a", "b|c"),
            ("~3:a|b", "c"),
            ("a", "c"),
        ];
        let ids: std::collections::BTreeSet<String> =
            pairs.iter().map(|(c, m)| inbox_id(c, m)).collect();
        assert_eq!(ids.len(), pairs.len(), "{ids:?}");
        assert_eq!(
            inbox_id("order", "m1"),
            "order|m1",
            "unchanged for plain names"
        );
    }
}
