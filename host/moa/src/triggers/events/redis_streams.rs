//! Redis Streams as a trigger source: `XREADGROUP` as a consumer named after this host instance,
//! `XACK` after the handler succeeded (or the entry was dead-lettered), and `XAUTOCLAIM` of entries
//! another consumer left pending longer than `claim_idle_ms`.
//!
//! An entry is processed by one host at a time: this host holds at most `concurrency` ×
//! [`HELD_PER_SLOT`] entries, and every `claim_idle_ms / 4` it resets the idle time of every entry
//! it holds (`XCLAIM … JUSTID` of the ones still its own), so no other host
//! can claim them while it is alive. Entries with the same key run one at a time in the order this
//! host took them; other keys go on beside them, so an entry that keeps failing holds up only its
//! key.
//! The attempt number is Redis's own delivery counter, so an entry that keeps crashing hosts still
//! reaches `max_deliveries` and is dead-lettered. The group's lag is reported every second.

use super::{Event, Lane, TriggerRuntime};
use crate::capabilities::messaging::redis_streams::{HEADER_PREFIX, KEY_FIELD, PAYLOAD_FIELD};
use redis::Value;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one `XREADGROUP` blocks on the server.
const BLOCK: Duration = Duration::from_millis(1000);
/// Most entries read (or claimed) per command.
const READ_COUNT: usize = 128;
/// Entries held per unit of `concurrency` (running, or waiting behind their key or for a slot).
/// Held entries are kept fresh, so this bounds memory and the refresh script's work, not safety.
const HELD_PER_SLOT: usize = 32;
/// Most entries acknowledged by one `XACK`.
const ACK_BATCH: usize = 512;
/// How often the group's lag is read (`XINFO GROUPS`: one small reply per trigger and host).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Resets the idle time of the given entries that this consumer still owns (ARGV[1] group,
/// ARGV[2] consumer, ARGV[3..] ids) and returns those it no longer owns.
const REFRESH_SCRIPT: &str = r#"
local claim, lost = {KEYS[1], ARGV[1], ARGV[2], 0}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    claim[#claim + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #claim > 4 then
  claim[#claim + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(claim))
end
return lost
"#;

/// An entry on its way to its delivery: how many times Redis has delivered it, and its slot among
/// the entries this host holds (freed when it is acknowledged or abandoned).
struct Pending {
    event: Event,
    attempt: u32,
    _slot: OwnedSemaphorePermit,
}

/// The ids this host holds: read or claimed, not yet acknowledged.
type Held = Arc<Mutex<BTreeSet<String>>>;

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
                runtime.failed(&format!("cannot connect to Redis: {err:#}"));
                tracing::debug!(stream, error = %format!("{err:#}"), "Redis Streams trigger cannot connect; retrying in 2 s");
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
        runtime.failed(&format!(
            "cannot create consumer group `{group}` on stream `{stream}`; the trigger is stopped: {err}"
        ));
        return;
    }
    runtime.working();
    tracing::info!(stream, group, consumer, "Redis Streams trigger started");

    let target = Target {
        commands: commands.clone(),
        stream: stream.clone(),
        group: group.clone(),
        consumer: consumer.clone(),
    };
    let held: Held = Default::default();
    let (ack_sender, ack_receiver) = mpsc::unbounded_channel::<String>();
    let acker = tokio::spawn(acknowledge(
        runtime.clone(),
        target.clone(),
        held.clone(),
        ack_receiver,
    ));
    let claim_idle = Duration::from_millis(runtime.trigger.claim_idle_ms);
    let refresher = tokio::spawn(refresh_held(
        target.clone(),
        held.clone(),
        (claim_idle / 4).max(Duration::from_millis(50)),
    ));
    let lag_reporter = tokio::spawn(report_lag(runtime.clone(), target.clone(), LAG_EVERY));
    let concurrency = runtime.in_flight_limit().max(1);
    // With batches, twice what the calls take at once (so the next batch is already held).
    let most_held =
        (runtime.trigger.concurrency.max(1) as usize * HELD_PER_SLOT).max(concurrency * 2);
    let slots = Arc::new(Semaphore::new(most_held));
    // Every held entry has a slot, so the dispatcher's queue never holds more than that.
    let (to_dispatcher, entries) = mpsc::unbounded_channel::<Pending>();
    let dispatcher = tokio::spawn(dispatch_by_key(
        runtime.clone(),
        entries,
        ack_sender,
        abort.clone(),
        concurrency,
    ));
    let claim_every = (claim_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut next_claim = tokio::time::Instant::now();
    let mut claim_cursor = "0-0".to_string();
    // First our own pending entries (a restart under the same consumer name), then new ones.
    let mut start_id = "0".to_string();
    'consume: loop {
        // Take at least one free slot (waiting while every slot is taken), then all free ones.
        let first = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let mut free = vec![first];
        while free.len() < READ_COUNT {
            match slots.clone().try_acquire_owned() {
                Ok(slot) => free.push(slot),
                Err(_) => break,
            }
        }

        let mut taken: Vec<(StreamId, u32)> = Vec::new();
        if tokio::time::Instant::now() >= next_claim {
            next_claim = tokio::time::Instant::now() + claim_every;
            taken = target
                .autoclaim(&mut claim_cursor, claim_idle, free.len(), &held)
                .await;
        }
        if taken.is_empty() {
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(&group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(free.len())
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
                    runtime.failed(&format!("XREADGROUP on `{stream}` failed: {err}"));
                    tracing::debug!(stream, error = %err, "XREADGROUP failed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => break,
                    }
                    continue;
                }
            };
            runtime.working();
            if start_id != ">" {
                // Our own backlog (entries pending on this consumer name: left by a restart under
                // the same name, or claimed before the first read), page by page after
                // `start_id`; an empty page means it is read through, and new entries (`>`) follow.
                let Some(last) = entries.last() else {
                    start_id = ">".into();
                    continue;
                };
                start_id = last.id.clone();
                // Entries this host holds already (claimed before this read) run once.
                let entries: Vec<StreamId> = {
                    let held = held.lock().map(|h| h.clone()).unwrap_or_default();
                    entries
                        .into_iter()
                        .filter(|entry| !held.contains(&entry.id))
                        .collect()
                };
                // Redis counted this read as one more delivery.
                let counts = target.delivery_counts(&entries).await;
                taken = entries
                    .into_iter()
                    .map(|entry| {
                        let count = counts.get(&entry.id).copied().unwrap_or(2);
                        (entry, count)
                    })
                    .collect();
            } else {
                taken = entries.into_iter().map(|entry| (entry, 1)).collect();
            }
        }
        if let Ok(mut held) = held.lock() {
            held.extend(taken.iter().map(|(entry, _)| entry.id.clone()));
        }
        for (entry, attempt) in taken {
            let Some(slot) = free.pop() else { break };
            let pending = Pending {
                event: to_event(&stream, entry),
                attempt,
                _slot: slot,
            };
            if to_dispatcher.send(pending).is_err() {
                break 'consume;
            }
        }
    }
    drop(to_dispatcher);
    let _ = dispatcher.await;
    // Every delivery is done: the acker sends what is left and ends.
    let _ = acker.await;
    refresher.abort();
    lag_reporter.abort();
}

/// The stream, group and consumer this host works as, with its command connection.
#[derive(Clone)]
struct Target {
    commands: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
}

impl Target {
    /// Claims up to `count` entries idle for at least `idle` (left by a consumer that stopped),
    /// walking the pending list from `cursor`; each with its delivery count after the claim.
    /// Entries this host already holds are not handed out again.
    async fn autoclaim(
        &self,
        cursor: &mut String,
        idle: Duration,
        count: usize,
        held: &Held,
    ) -> Vec<(StreamId, u32)> {
        let mut connection = self.commands.clone();
        let reply: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await
        {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(stream = %self.stream, error = %err, "XAUTOCLAIM failed");
                return Vec::new();
            }
        };
        *cursor = reply.next_stream_id;
        let claimed: Vec<StreamId> = {
            let held = held.lock().map(|h| h.clone()).unwrap_or_default();
            reply
                .claimed
                .into_iter()
                .filter(|entry| !held.contains(&entry.id))
                .collect()
        };
        if claimed.is_empty() {
            return Vec::new();
        }
        tracing::info!(
            stream = %self.stream,
            group = %self.group,
            consumer = %self.consumer,
            claimed = claimed.len(),
            "claimed entries another consumer left pending"
        );
        let counts = self.delivery_counts(&claimed).await;
        claimed
            .into_iter()
            .map(|entry| {
                let count = counts.get(&entry.id).copied().unwrap_or(2);
                (entry, count)
            })
            .collect()
    }

    /// Redis's delivery counter of each of `entries` (pending on this consumer).
    async fn delivery_counts(&self, entries: &[StreamId]) -> BTreeMap<String, u32> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return BTreeMap::new();
        };
        let mut connection = self.commands.clone();
        let reply: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(&self.consumer)
            .query_async(&mut connection)
            .await;
        match reply {
            Ok(reply) => reply
                .ids
                .into_iter()
                .map(|p| (p.id, u32::try_from(p.times_delivered).unwrap_or(u32::MAX)))
                .collect(),
            Err(err) => {
                tracing::warn!(stream = %self.stream, error = %err, "XPENDING failed");
                BTreeMap::new()
            }
        }
    }
}

/// Every `every`, resets the idle time of the entries this host holds, so no other host can
/// claim them while they wait or run. An entry found on another consumer (this host
/// was stalled past `claim_idle_ms`) is reported: that host now delivers it too.
async fn refresh_held(target: Target, held: Held, every: Duration) {
    let script = redis::Script::new(REFRESH_SCRIPT);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ids: Vec<String> = held
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            continue;
        }
        let mut connection = target.commands.clone();
        let mut invocation = script.key(&target.stream);
        invocation.arg(&target.group).arg(&target.consumer);
        for id in &ids {
            invocation.arg(id);
        }
        match invocation
            .invoke_async::<Vec<String>>(&mut connection)
            .await
        {
            Ok(lost) => {
                let lost: Vec<String> = match held.lock() {
                    // Entries acknowledged meanwhile are not lost.
                    Ok(held) => lost.into_iter().filter(|id| held.contains(id)).collect(),
                    Err(_) => lost,
                };
                if !lost.is_empty() {
                    tracing::warn!(stream = %target.stream, consumer = %target.consumer, entries = ?lost, "entries this host holds were claimed by another consumer (this host stalled longer than claim_idle_ms)");
                }
            }
            Err(err) => {
                tracing::warn!(stream = %target.stream, error = %err, "cannot refresh held entries")
            }
        }
    }
}

/// Every `every`, sets the group's lag: entries not yet read by the group (`lag` of
/// `XINFO GROUPS`, Redis 7+) plus entries read but not acknowledged (`pending`), the same count as
/// Kafka's "end offset minus committed offset". The stream is one partition, `0`; every host of the
/// group reports the same number. Nothing is reported while Redis cannot tell (`lag` is nil after
/// entries were deleted from the middle of the stream).
async fn report_lag(runtime: Arc<TriggerRuntime>, target: Target, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut connection = target.commands.clone();
        let groups: redis::RedisResult<Vec<std::collections::HashMap<String, Value>>> =
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&target.stream)
                .query_async(&mut connection)
                .await;
        let groups = match groups {
            Ok(groups) => groups,
            Err(err) => {
                tracing::debug!(stream = %target.stream, error = %err, "XINFO GROUPS failed");
                continue;
            }
        };
        let ours = groups.iter().find(|group| {
            matches!(group.get("name"), Some(Value::BulkString(name)) if name.as_slice() == target.group.as_bytes())
        });
        let count = |field: &str| match ours.and_then(|group| group.get(field)) {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        if let (Some(unread), Some(pending)) = (count("lag"), count("pending")) {
            runtime.lag(&target.stream, 0, unread + pending);
        }
    }
}

/// Delivers entries one at a time per key, in the order they came, and different keys side by
/// side (up to `concurrency`; key-less entries each on their own), so an entry that keeps failing
/// holds up only its key. Each handled (or dead-lettered) entry goes to the acker. Ends when the
/// reader stopped and every entry it sent has ended, or at `abort`.
async fn dispatch_by_key(
    runtime: Arc<TriggerRuntime>,
    mut entries: mpsc::UnboundedReceiver<Pending>,
    acks: mpsc::UnboundedSender<String>,
    abort: CancellationToken,
    concurrency: usize,
) {
    // Keys with an entry running or ready, and the entries waiting behind it.
    let mut busy: HashMap<Vec<u8>, VecDeque<Pending>> = HashMap::new();
    // Entries whose key is free, waiting for a concurrency slot.
    let mut ready: VecDeque<Pending> = VecDeque::new();
    let mut running: JoinSet<(Pending, Option<super::Outcome>, Lane)> = JoinSet::new();
    // One warm instance kept for the next delivery (idle ones hold pool slots HTTP needs).
    let mut idle: Option<Lane> = None;
    let mut receiving = true;
    loop {
        while running.len() < concurrency {
            let Some(pending) = ready.pop_front() else {
                break;
            };
            let (runtime, abort) = (runtime.clone(), abort.clone());
            let mut lane = idle.take().unwrap_or_default();
            running.spawn(async move {
                let outcome = runtime
                    .deliver(&pending.event, pending.attempt, &mut lane, &abort)
                    .await;
                (pending, outcome, lane)
            });
        }
        tokio::select! {
            pending = entries.recv(), if receiving => match pending {
                Some(pending) => match &pending.event.key {
                    Some(key) => match busy.get_mut(key) {
                        Some(queue) => queue.push_back(pending),
                        None => {
                            busy.insert(key.clone(), VecDeque::new());
                            ready.push_back(pending);
                        }
                    },
                    None => ready.push_back(pending),
                },
                None => receiving = false,
            },
            Some(done) = running.join_next() => {
                let Ok((pending, outcome, lane)) = done else { return };
                // Aborted: neither handled nor acknowledged; it stays pending in Redis.
                if outcome.is_none() {
                    return;
                }
                if lane.warm.is_some() && idle.is_none() {
                    idle = Some(lane);
                }
                if let Some(key) = &pending.event.key {
                    match busy.get_mut(key).and_then(VecDeque::pop_front) {
                        Some(next) => ready.push_back(next),
                        None => {
                            busy.remove(key);
                        }
                    }
                }
                if acks.send(pending.event.id.clone()).is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

/// Acknowledges handled entries, all that are waiting in one `XACK` (so lanes never wait for a
/// round trip), until every lane has stopped; acknowledged entries are no longer held.
async fn acknowledge(
    runtime: Arc<TriggerRuntime>,
    target: Target,
    held: Held,
    mut receiver: mpsc::UnboundedReceiver<String>,
) {
    let mut ids = Vec::with_capacity(ACK_BATCH);
    while receiver.recv_many(&mut ids, ACK_BATCH).await > 0 {
        // No longer held from here: the refresher must not see an entry acknowledged a moment
        // ago as taken by another consumer. (A failed XACK leaves it pending; it is reclaimed.)
        if let Ok(mut held) = held.lock() {
            for id in &ids {
                held.remove(id);
            }
        }
        let mut connection = target.commands.clone();
        let acked: redis::RedisResult<i64> = redis::cmd("XACK")
            .arg(&target.stream)
            .arg(&target.group)
            .arg(&ids)
            .query_async(&mut connection)
            .await;
        match acked {
            Ok(_) => runtime.committed(ids.len() as u64),
            // Not acknowledged: the entries stay pending and are reclaimed later (at least once).
            Err(err) => {
                tracing::warn!(stream = %target.stream, entries = ids.len(), error = %err, "XACK failed")
            }
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
