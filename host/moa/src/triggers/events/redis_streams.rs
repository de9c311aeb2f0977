//! Redis Streams as a trigger source: `XREADGROUP` as a consumer named after this host instance,
//! `XACK` after the handler succeeded (or the entry was dead-lettered), and a reclaim loop that
//! takes over entries another consumer left pending longer than `claim_idle_ms`.
//!
//! Entries with the same key go to the same lane and run in order; `concurrency` lanes run at once.
//! The attempt count starts from Redis's delivery counter, so a reclaimed entry counts its earlier
//! deliveries and still dead-letters after `max_deliveries`.

use super::{Event, Lane, TriggerRuntime};
use crate::capabilities::messaging::redis_streams::{HEADER_PREFIX, KEY_FIELD, PAYLOAD_FIELD};
use redis::Value;
use redis::aio::ConnectionManager;
use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one `XREADGROUP` blocks on the server.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries read (and reclaimed) per command.
const READ_COUNT: usize = 128;
/// Entries waiting per lane before reading pauses.
const LANE_DEPTH: usize = 64;
/// Most entries acknowledged by one `XACK`.
const ACK_BATCH: usize = 512;

/// An entry on its way to a lane, with how many times Redis has delivered it.
struct Pending {
    event: Event,
    attempt: u32,
}

/// Runs until `stop` (lanes finish what they hold) or `abort`.
pub async fn run(
    runtime: Arc<TriggerRuntime>,
    url: String,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let stream = runtime.trigger.topics[0].clone();
    let group = runtime.trigger.group.clone();
    let consumer = super::consumer_name();
    // Commands go over one connection; the blocking read has its own, so it delays nothing else.
    let (commands, mut reader) = loop {
        let connected = async {
            let commands = crate::redis_client::connect(&url).await?;
            let reader = crate::redis_client::connect_with_response_timeout(
                &url,
                BLOCK + Duration::from_secs(5),
            )
            .await?;
            anyhow::Ok((commands, reader))
        };
        match connected.await {
            Ok(pair) => break pair,
            Err(err) => {
                tracing::error!(stream, error = %format!("{err:#}"), "Redis Streams trigger cannot connect; retrying in 2 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    let mut setup = commands.clone();
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut setup)
        .await;
    if let Err(err) = created
        && err.code() != Some("BUSYGROUP")
    {
        tracing::error!(stream, group, error = %err, "cannot create the consumer group; the trigger is stopped");
        return;
    }
    tracing::info!(stream, group, consumer, "Redis Streams trigger started");

    let (ack_sender, ack_receiver) = mpsc::unbounded_channel::<String>();
    let acker = tokio::spawn(acknowledge(
        commands.clone(),
        stream.clone(),
        group.clone(),
        ack_receiver,
    ));
    let lanes_count = runtime.trigger.concurrency.max(1) as usize;
    let mut lanes = Vec::with_capacity(lanes_count);
    let mut lane_tasks = tokio::task::JoinSet::new();
    for _ in 0..lanes_count {
        let (sender, receiver) = mpsc::channel::<Pending>(LANE_DEPTH);
        lanes.push(sender);
        lane_tasks.spawn(lane(
            runtime.clone(),
            receiver,
            ack_sender.clone(),
            abort.clone(),
        ));
    }
    drop(ack_sender);
    let claim_idle = Duration::from_millis(runtime.trigger.claim_idle_ms);
    let claim_every = (claim_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut next_claim = tokio::time::Instant::now();
    let mut round_robin = 0usize;
    // First our own pending entries (a restart under the same consumer name), then new ones.
    let mut start_id = "0".to_string();
    loop {
        if stop.is_cancelled() {
            break;
        }
        if tokio::time::Instant::now() >= next_claim {
            next_claim = tokio::time::Instant::now() + claim_every;
            for pending in reclaim(&commands, &stream, &group, &consumer, claim_idle).await {
                if dispatch(&lanes, &mut round_robin, pending, &stop)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&group)
            .arg(&consumer)
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&start_id);
        let read = command.query_async::<Option<StreamReadReply>>(&mut reader);
        let reply = tokio::select! {
            reply = read => reply,
            _ = stop.cancelled() => break,
        };
        let entries: Vec<StreamId> = match reply {
            Ok(Some(reply)) => reply.keys.into_iter().flat_map(|k| k.ids).collect(),
            Ok(None) => Vec::new(),
            Err(err) => {
                tracing::warn!(stream, error = %err, "XREADGROUP failed; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
        };
        if start_id == "0" && entries.is_empty() {
            start_id = ">".into();
            continue;
        }
        let own_backlog = start_id == "0";
        if let Some(last) = entries.last()
            && own_backlog
        {
            start_id = last.id.clone();
        }
        for entry in entries {
            // Entries of our own backlog were delivered before (count unknown here): attempt 2.
            let attempt = if own_backlog { 2 } else { 1 };
            let pending = Pending {
                event: to_event(&stream, entry),
                attempt,
            };
            if dispatch(&lanes, &mut round_robin, pending, &stop)
                .await
                .is_err()
            {
                break;
            }
        }
    }
    drop(lanes);
    while lane_tasks.join_next().await.is_some() {}
    // Every lane is done: the acker sends what is left and ends.
    let _ = acker.await;
}

/// Sends an entry to its key's lane (unkeyed entries round-robin); waits while the lane is full.
async fn dispatch(
    lanes: &[mpsc::Sender<Pending>],
    round_robin: &mut usize,
    pending: Pending,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let index = match &pending.event.key {
        Some(key) => (moa_eventlog::key_hash(key) % lanes.len() as u64) as usize,
        None => {
            *round_robin = round_robin.wrapping_add(1);
            *round_robin % lanes.len()
        }
    };
    tokio::select! {
        sent = lanes[index].send(pending) => sent.map_err(drop),
        _ = stop.cancelled() => Err(()),
    }
}

/// Entries pending on other consumers for longer than `idle`, claimed for this one.
async fn reclaim(
    commands: &ConnectionManager,
    stream: &str,
    group: &str,
    consumer: &str,
    idle: Duration,
) -> Vec<Pending> {
    let mut connection = commands.clone();
    let idle_ms = idle.as_millis() as u64;
    let pending: StreamPendingCountReply = match redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("IDLE")
        .arg(idle_ms)
        .arg("-")
        .arg("+")
        .arg(READ_COUNT)
        .query_async(&mut connection)
        .await
    {
        Ok(reply) => reply,
        Err(err) => {
            tracing::warn!(stream, error = %err, "XPENDING failed");
            return Vec::new();
        }
    };
    let candidates: Vec<(String, usize)> = pending
        .ids
        .into_iter()
        .filter(|p| p.consumer != consumer)
        .map(|p| (p.id, p.times_delivered))
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut claim = redis::cmd("XCLAIM");
    claim.arg(stream).arg(group).arg(consumer).arg(idle_ms);
    for (id, _) in &candidates {
        claim.arg(id);
    }
    // XCLAIM takes an entry only if it is still idle that long, so two hosts never both get it.
    let claimed: StreamClaimReply = match claim.query_async(&mut connection).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::warn!(stream, error = %err, "XCLAIM failed");
            return Vec::new();
        }
    };
    if !claimed.ids.is_empty() {
        tracing::info!(
            stream,
            group,
            consumer,
            claimed = claimed.ids.len(),
            "claimed entries another consumer left pending"
        );
    }
    claimed
        .ids
        .into_iter()
        .map(|entry| {
            let delivered = candidates
                .iter()
                .find(|(id, _)| *id == entry.id)
                .map_or(1, |(_, n)| *n);
            Pending {
                event: to_event(stream, entry),
                // XCLAIM counted one more delivery.
                attempt: u32::try_from(delivered + 1).unwrap_or(u32::MAX),
            }
        })
        .collect()
}

/// Delivers a lane's entries one after the other; each handled (or dead-lettered) entry goes to
/// the acker.
async fn lane(
    runtime: Arc<TriggerRuntime>,
    mut receiver: mpsc::Receiver<Pending>,
    acks: mpsc::UnboundedSender<String>,
    abort: CancellationToken,
) {
    let mut lane = Lane::default();
    while let Some(pending) = receiver.recv().await {
        if runtime
            .deliver(&pending.event, pending.attempt, &mut lane, &abort)
            .await
            .is_none()
        {
            return;
        }
        if acks.send(pending.event.id).is_err() {
            return;
        }
    }
}

/// Acknowledges handled entries, all that are waiting in one `XACK` (so lanes never wait for a
/// round trip), until every lane has stopped.
async fn acknowledge(
    commands: ConnectionManager,
    stream: String,
    group: String,
    mut receiver: mpsc::UnboundedReceiver<String>,
) {
    let mut ids = Vec::with_capacity(ACK_BATCH);
    while receiver.recv_many(&mut ids, ACK_BATCH).await > 0 {
        let mut connection = commands.clone();
        let acked: redis::RedisResult<i64> = redis::cmd("XACK")
            .arg(&stream)
            .arg(&group)
            .arg(&ids)
            .query_async(&mut connection)
            .await;
        if let Err(err) = acked {
            // Not acknowledged: the entries stay pending and are reclaimed later (at least once).
            tracing::warn!(stream, entries = ids.len(), error = %err, "XACK failed");
        }
        ids.clear();
    }
}

fn to_event(stream: &str, entry: StreamId) -> Event {
    let mut key = None;
    let mut payload = Vec::new();
    let mut headers = Vec::new();
    for (field, value) in entry.map {
        let bytes = match value {
            Value::BulkString(bytes) => bytes,
            Value::SimpleString(text) => text.into_bytes(),
            Value::Int(n) => n.to_string().into_bytes(),
            _ => continue,
        };
        if field == PAYLOAD_FIELD {
            payload = bytes;
        } else if field == KEY_FIELD {
            key = Some(bytes);
        } else if let Some(name) = field.strip_prefix(HEADER_PREFIX) {
            headers.push((name.to_string(), bytes));
        }
    }
    Event {
        topic: stream.to_string(),
        partition: 0,
        offset: 0,
        id: entry.id,
        key,
        payload,
        headers,
    }
}
