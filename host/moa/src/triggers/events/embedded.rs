//! The embedded event log as a trigger source: one task per partition delivers records in order
//! from the group's committed offset, commits after each, and sleeps until the next append.
//! Delivery counts are persisted, so a message that keeps crashing the host still dead-letters.
//! Each fetch reports the partition's lag (`moa_event_consumer_lag`).

use super::{Event, Lane, TriggerRuntime};
use moa_eventlog::{DEFAULT_PARTITIONS, EventLog};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Records fetched per read.
const FETCH_BATCH: usize = 256;

/// Runs until `stop` (finishing the delivery in flight) or `abort` (abandoning it).
pub async fn run(
    runtime: Arc<TriggerRuntime>,
    log: Arc<EventLog>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(runtime.trigger.concurrency as usize));
    let mut partitions = tokio::task::JoinSet::new();
    for topic in runtime.trigger.topics.clone() {
        let count = {
            let (log, topic) = (log.clone(), topic.clone());
            blocking(move || log.ensure_topic(&topic, DEFAULT_PARTITIONS)).await
        };
        let count = match count {
            Ok(count) => count,
            Err(err) => {
                runtime.failed(&format!(
                    "cannot open topic `{topic}` in the embedded log; the trigger is stopped: {err}"
                ));
                continue;
            }
        };
        for partition in 0..count {
            partitions.spawn(consume_partition(
                runtime.clone(),
                log.clone(),
                topic.clone(),
                partition,
                permits.clone(),
                stop.clone(),
                abort.clone(),
            ));
        }
    }
    while partitions.join_next().await.is_some() {}
}

async fn consume_partition(
    runtime: Arc<TriggerRuntime>,
    log: Arc<EventLog>,
    topic: String,
    partition: u32,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let group = runtime.trigger.group.clone();
    let mut next = {
        let (log, group, name) = (log.clone(), group.clone(), topic.clone());
        match blocking(move || log.committed(&group, &name, partition)).await {
            Ok(next) => next,
            Err(err) => {
                runtime.failed(&format!(
                    "cannot read the group's offset of `{topic}` partition {partition}: {err}"
                ));
                return;
            }
        }
    };
    let mut lane = Lane::default();
    loop {
        if stop.is_cancelled() {
            return;
        }
        // Register for the append notification before fetching, so none is missed.
        let appended = log.appended().notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let records = {
            let (log, topic) = (log.clone(), topic.clone());
            blocking(move || log.fetch(&topic, partition, next, FETCH_BATCH)).await
        };
        let records = match records {
            Ok(records) => records,
            Err(err) => {
                tracing::error!(topic, partition, error = %err, "cannot read the embedded log; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        report_lag(&runtime, &log, &topic, partition, next).await;
        if records.is_empty() {
            // Another process may append to the same file: poll now and then as well.
            tokio::select! {
                _ = appended => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        for record in records {
            if stop.is_cancelled() {
                return;
            }
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let offset = record.offset;
            let attempt = {
                let (log, group, topic) = (log.clone(), group.clone(), topic.clone());
                blocking(move || log.record_delivery(&group, &topic, partition, offset))
                    .await
                    .unwrap_or(1)
            };
            let event = Event {
                id: format!("{topic}/{partition}/{offset}"),
                topic: record.topic,
                partition,
                offset,
                key: record.key,
                payload: record.payload,
                headers: record.headers,
            };
            if runtime
                .deliver(&event, attempt, &mut lane, &abort)
                .await
                .is_none()
            {
                return;
            }
            let committed = {
                let (log, group, topic) = (log.clone(), group.clone(), topic.clone());
                blocking(move || log.commit(&group, &topic, partition, offset + 1)).await
            };
            match committed {
                Ok(()) => runtime.committed(1),
                // Not committed: the record is delivered again after a restart (at least once).
                Err(err) => {
                    tracing::error!(topic, partition, offset, error = %err, "cannot commit the group's offset")
                }
            }
            next = offset + 1;
        }
    }
}

/// Sets the partition's lag: records past the group's next offset (this host's appends and
/// those it has read; another process's appends show once this one reads them).
async fn report_lag(
    runtime: &TriggerRuntime,
    log: &Arc<EventLog>,
    topic: &str,
    partition: u32,
    next: u64,
) {
    let end = {
        let (log, topic) = (log.clone(), topic.to_string());
        blocking(move || log.end_offset(&topic, partition)).await
    };
    if let Ok(end) = end {
        runtime.lag(topic, partition, end.saturating_sub(next));
    }
}

/// Runs a short SQLite call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> moa_eventlog::Result<T> + Send + 'static,
) -> moa_eventlog::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(_) => Err(moa_eventlog::EventLogError::Poisoned),
    }
}
