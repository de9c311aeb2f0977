//! The embedded event log as a trigger source: one task per partition reads records from the
//! group's committed offset and delivers each key's in order (keys side by side), commits below
//! the lowest unfinished record, and sleeps until the next append. Delivery counts are persisted,
//! so a message that keeps crashing the host still dead-letters. Each fetch reports the
//! partition's lag (`moa_event_consumer_lag`).

use super::keyed::{KeyedLanes, MAX_KEYS_IN_FLIGHT};
use super::{Event, Lane, TriggerRuntime};
use moa_eventlog::{DEFAULT_PARTITIONS, EventLog};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Records fetched per read.
const FETCH_BATCH: usize = 256;
/// Records of one partition admitted and not finished (running, or waiting behind their key).
const MAX_UNFINISHED: usize = 4096;

/// Runs until `stop` (finishing the delivery in flight) or `abort` (abandoning it).
pub async fn run(
    runtime: Arc<TriggerRuntime>,
    log: Arc<EventLog>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(runtime.in_flight_limit()));
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

/// Delivers one partition: each key's records one at a time in offset order, different keys
/// side by side (up to [`MAX_KEYS_IN_FLIGHT`]), so a failing record holds up only its key. The
/// group's offset moves to just below the lowest unfinished record after each one ends.
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
    // The group's position (what the lag is measured from); `next` is where reading goes on.
    let mut committed_next = next;
    let mut lanes = KeyedLanes::default();
    let mut running: JoinSet<(Event, Option<super::Outcome>, Lane)> = JoinSet::new();
    let mut fetched: VecDeque<Event> = VecDeque::new();
    let mut stopping = false;
    let start = |running: &mut JoinSet<_>, lanes: &mut KeyedLanes, event: Event| {
        let (runtime, log, permits, abort) =
            (runtime.clone(), log.clone(), permits.clone(), abort.clone());
        let mut lane = lanes.lane();
        running.spawn(async move {
            let outcome = match permits.acquire().await {
                Ok(_permit) => {
                    let attempt = {
                        let (log, group, topic) = (
                            log.clone(),
                            runtime.trigger.group.clone(),
                            event.topic.clone(),
                        );
                        let offset = event.offset;
                        blocking(move || log.record_delivery(&group, &topic, partition, offset))
                            .await
                            .unwrap_or(1)
                    };
                    runtime.deliver(&event, attempt, &mut lane, &abort).await
                }
                Err(_) => None,
            };
            (event, outcome, lane)
        });
    };
    loop {
        if stop.is_cancelled() {
            stopping = true;
        }
        // Start what was fetched while keys and room allow.
        while !stopping
            && lanes.in_flight() < MAX_KEYS_IN_FLIGHT
            && lanes.unfinished() < MAX_UNFINISHED
        {
            let Some(event) = fetched.pop_front() else {
                break;
            };
            if let Some(event) = lanes.admit(event) {
                start(&mut running, &mut lanes, event);
            }
        }
        if stopping && running.is_empty() {
            return;
        }
        let fetch = !stopping && fetched.is_empty() && lanes.unfinished() < MAX_UNFINISHED;
        // Register for the append notification before fetching, so none is missed.
        let appended = log.appended().notified();
        tokio::pin!(appended);
        if fetch {
            appended.as_mut().enable();
            let records = {
                let (log, topic) = (log.clone(), topic.clone());
                blocking(move || log.fetch(&topic, partition, next, FETCH_BATCH)).await
            };
            match records {
                Ok(records) if !records.is_empty() => {
                    report_lag(&runtime, &log, &topic, partition, committed_next).await;
                    next = records.last().map_or(next, |r| r.offset + 1);
                    fetched.extend(records.into_iter().map(|record| Event {
                        // With the append time: a reset log (a new file) starts its offsets
                        // again at 0.
                        id: format!(
                            "{}/{partition}/{}@{}",
                            record.topic, record.offset, record.timestamp_ms
                        ),
                        topic: record.topic,
                        partition,
                        offset: record.offset,
                        key: record.key,
                        payload: record.payload,
                        headers: record.headers,
                    }));
                    continue;
                }
                Ok(_) => report_lag(&runtime, &log, &topic, partition, committed_next).await,
                Err(err) => {
                    tracing::error!(topic, partition, error = %err, "cannot read the embedded log; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => continue,
                    }
                }
            }
        }
        // Wait for a delivery to end, an append (another process may append to the same file:
        // poll now and then as well), or the stop.
        tokio::select! {
            Some(done) = running.join_next() => {
                let Ok((event, outcome, lane)) = done else { return };
                // Abandoned (aborted): neither handled nor committed.
                if outcome.is_none() {
                    return;
                }
                lanes.give_back(lane);
                let (following, commit) = lanes.finish(&event);
                if let Some(offset) = commit {
                    let committed = {
                        let (log, group, topic) = (log.clone(), group.clone(), topic.clone());
                        blocking(move || log.commit(&group, &topic, partition, offset + 1)).await
                    };
                    match committed {
                        Ok(()) => committed_next = offset + 1,
                        // Not committed: the record is delivered again after a restart (at least
                        // once).
                        Err(err) => {
                            tracing::error!(topic, partition, offset, error = %err, "cannot commit the group's offset")
                        }
                    }
                }
                runtime.committed(1);
                if let Some(following) = following
                    && !stopping
                {
                    start(&mut running, &mut lanes, following);
                }
            }
            _ = &mut appended, if fetch => {}
            _ = tokio::time::sleep(Duration::from_millis(500)), if fetch => {}
            _ = stop.cancelled(), if !stopping => stopping = true,
            // Not reached: without a fetch something runs (records wait only behind running keys).
            else => return,
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
