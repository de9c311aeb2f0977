//! moa's embedded event log: durable topics split into partitions, consumer-group offsets and
//! per-record delivery counts in one SQLite file, so event triggers behave as on Kafka with no broker.
//!
//! It is a development default, not a broker: one process owns the file; records are ordered per
//! partition; a record's partition follows its key (same key, same partition, order kept).
//! Appends and offset commits are on disk before they return (SQLite WAL, `synchronous = FULL`), so
//! they survive a crash of the process or of the machine; offsets move only when a consumer commits.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Partitions a topic gets when it is created implicitly by its first append.
pub const DEFAULT_PARTITIONS: u32 = 4;

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log storage: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("cannot create the event log directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("topic `{topic}` has {partitions} partitions; partition {partition} does not exist")]
    NoSuchPartition {
        topic: String,
        partitions: u32,
        partition: u32,
    },
    #[error("invalid topic name `{0}`: use 1-249 characters of letters, digits, `.`, `_` and `-`")]
    InvalidTopic(String),
    #[error("event log lock poisoned")]
    Poisoned,
}

pub type Result<T, E = EventLogError> = std::result::Result<T, E>;

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: i64,
}

/// A record to append with [`EventLog::append_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
}

struct State {
    connection: Connection,
    /// topic -> partition count
    topics: HashMap<String, u32>,
    /// (topic, partition) -> next offset
    next_offsets: HashMap<(String, u32), u64>,
}

/// The embedded log. Cheap to share behind an `Arc`; every method is a short blocking SQLite call
/// (run it on a blocking thread from async code).
pub struct EventLog {
    state: Mutex<State>,
    appended: tokio::sync::Notify,
    round_robin: AtomicU64,
}

/// Kafka's rule for topic names.
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 250
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// FNV-1a of a message key: stable across processes and versions, so a key keeps its partition
/// (or Redis Streams lane) after a restart.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (key_hash(key) % u64::from(partitions.max(1))) as u32
}

impl EventLog {
    /// Opens (creating if needed) the log at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| EventLogError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let connection = Connection::open(path)?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS topics (
                 name TEXT PRIMARY KEY,
                 partitions INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS records (
                 topic TEXT NOT NULL,
                 partition INTEGER NOT NULL,
                 offset INTEGER NOT NULL,
                 key BLOB,
                 payload BLOB NOT NULL,
                 headers TEXT NOT NULL,
                 timestamp_ms INTEGER NOT NULL,
                 PRIMARY KEY (topic, partition, offset)
             );
             CREATE TABLE IF NOT EXISTS group_offsets (
                 grp TEXT NOT NULL,
                 topic TEXT NOT NULL,
                 partition INTEGER NOT NULL,
                 next_offset INTEGER NOT NULL,
                 PRIMARY KEY (grp, topic, partition)
             );
             CREATE TABLE IF NOT EXISTS deliveries (
                 grp TEXT NOT NULL,
                 topic TEXT NOT NULL,
                 partition INTEGER NOT NULL,
                 offset INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 PRIMARY KEY (grp, topic, partition, offset)
             );",
        )?;
        let mut topics = HashMap::new();
        {
            let mut statement = connection.prepare("SELECT name, partitions FROM topics")?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?))
            })?;
            for row in rows {
                let (name, partitions) = row?;
                topics.insert(name, partitions);
            }
        }
        let mut next_offsets = HashMap::new();
        {
            let mut statement = connection.prepare(
                "SELECT topic, partition, MAX(offset) FROM records GROUP BY topic, partition",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (topic, partition, max) = row?;
                next_offsets.insert((topic, partition), (max + 1) as u64);
            }
        }
        Ok(EventLog {
            state: Mutex::new(State {
                connection,
                topics,
                next_offsets,
            }),
            appended: tokio::sync::Notify::new(),
            round_robin: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| EventLogError::Poisoned)
    }

    /// Creates `topic` with `partitions` partitions if it does not exist; returns its partition count.
    pub fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        if !is_valid_topic(topic) {
            return Err(EventLogError::InvalidTopic(topic.to_string()));
        }
        let mut state = self.lock()?;
        Self::ensure_topic_locked(&mut state, topic, partitions)
    }

    fn ensure_topic_locked(state: &mut State, topic: &str, partitions: u32) -> Result<u32> {
        if let Some(existing) = state.topics.get(topic) {
            return Ok(*existing);
        }
        let partitions = partitions.max(1);
        state.connection.execute(
            "INSERT INTO topics (name, partitions) VALUES (?1, ?2)",
            params![topic, partitions],
        )?;
        state.topics.insert(topic.to_string(), partitions);
        Ok(partitions)
    }

    /// The partition count of `topic`, if it exists.
    pub fn partitions(&self, topic: &str) -> Result<Option<u32>> {
        Ok(self.lock()?.topics.get(topic).copied())
    }

    /// Appends a record (creating the topic with [`DEFAULT_PARTITIONS`] if needed). A keyed record
    /// goes to the key's partition; an unkeyed one round-robin.
    pub fn append(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<Appended> {
        if !is_valid_topic(topic) {
            return Err(EventLogError::InvalidTopic(topic.to_string()));
        }
        let headers_json = encode_headers(headers);
        let appended = {
            let mut state = self.lock()?;
            let partitions = Self::ensure_topic_locked(&mut state, topic, DEFAULT_PARTITIONS)?;
            let partition = match key {
                Some(key) => partition_for(key, partitions),
                None => {
                    (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions))
                        as u32
                }
            };
            let slot = (topic.to_string(), partition);
            let offset = state.next_offsets.get(&slot).copied().unwrap_or(0);
            state
                .connection
                .prepare_cached(
                    "INSERT INTO records (topic, partition, offset, key, payload, headers, timestamp_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![topic, partition, offset as i64, key, payload, headers_json, now_ms()])?;
            state.next_offsets.insert(slot, offset + 1);
            Appended { partition, offset }
        };
        self.appended.notify_waiters();
        Ok(appended)
    }

    /// Appends several records in one transaction, in order (so records with the same key keep
    /// their order); all or none are stored.
    pub fn append_batch(&self, records: &[NewRecord]) -> Result<Vec<Appended>> {
        if let Some(record) = records.iter().find(|r| !is_valid_topic(&r.topic)) {
            return Err(EventLogError::InvalidTopic(record.topic.clone()));
        }
        let mut out = Vec::with_capacity(records.len());
        {
            let mut state = self.lock()?;
            let mut next_offsets = state.next_offsets.clone();
            let mut topics = state.topics.clone();
            let tx = state.connection.transaction()?;
            for NewRecord {
                topic,
                key,
                payload,
                headers,
            } in records
            {
                let partitions = match topics.get(topic) {
                    Some(p) => *p,
                    None => {
                        tx.execute(
                            "INSERT INTO topics (name, partitions) VALUES (?1, ?2)",
                            params![topic, DEFAULT_PARTITIONS],
                        )?;
                        topics.insert(topic.clone(), DEFAULT_PARTITIONS);
                        DEFAULT_PARTITIONS
                    }
                };
                let partition = match key {
                    Some(key) => partition_for(key, partitions),
                    None => {
                        (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions))
                            as u32
                    }
                };
                let slot = (topic.clone(), partition);
                let offset = next_offsets.get(&slot).copied().unwrap_or(0);
                tx.prepare_cached(
                    "INSERT INTO records (topic, partition, offset, key, payload, headers, timestamp_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    topic,
                    partition,
                    offset as i64,
                    key,
                    payload,
                    encode_headers(headers),
                    now_ms()
                ])?;
                next_offsets.insert(slot, offset + 1);
                out.push(Appended { partition, offset });
            }
            tx.commit()?;
            // Only a committed transaction moves the in-memory view.
            state.next_offsets = next_offsets;
            state.topics = topics;
        }
        self.appended.notify_waiters();
        Ok(out)
    }

    /// Up to `max` records of one partition, from `from_offset` on.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        max: usize,
    ) -> Result<Vec<Record>> {
        let state = self.lock()?;
        if let Some(partitions) = state.topics.get(topic)
            && partition >= *partitions
        {
            return Err(EventLogError::NoSuchPartition {
                topic: topic.to_string(),
                partitions: *partitions,
                partition,
            });
        }
        let mut statement = state.connection.prepare_cached(
            "SELECT offset, key, payload, headers, timestamp_ms FROM records
             WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
        )?;
        let rows = statement.query_map(
            params![topic, partition, from_offset as i64, max as i64],
            |row| {
                Ok(Record {
                    topic: topic.to_string(),
                    partition,
                    offset: row.get::<_, i64>(0)? as u64,
                    key: row.get(1)?,
                    payload: row.get(2)?,
                    headers: decode_headers(&row.get::<_, String>(3)?),
                    timestamp_ms: row.get(4)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The next offset one past the last record of the partition (its end).
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self
            .lock()?
            .next_offsets
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0))
    }

    /// The group's committed position in a partition: the next offset to process (0 for a new group).
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Result<u64> {
        let state = self.lock()?;
        let next: Option<i64> = state
            .connection
            .prepare_cached("SELECT next_offset FROM group_offsets WHERE grp = ?1 AND topic = ?2 AND partition = ?3")?
            .query_row(params![group, topic, partition], |row| row.get(0))
            .optional()?;
        Ok(next.map_or(0, |n| n as u64))
    }

    /// Commits the group's position: every record before `next_offset` is done. Delivery counts of
    /// the committed records are dropped.
    pub fn commit(&self, group: &str, topic: &str, partition: u32, next_offset: u64) -> Result<()> {
        let mut state = self.lock()?;
        let tx = state.connection.transaction()?;
        tx.execute(
            "INSERT INTO group_offsets (grp, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
            params![group, topic, partition, next_offset as i64],
        )?;
        tx.execute(
            "DELETE FROM deliveries WHERE grp = ?1 AND topic = ?2 AND partition = ?3 AND offset < ?4",
            params![group, topic, partition, next_offset as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records one more delivery attempt of a record to a group and returns how many there have
    /// been (1 on the first), persisted so that redeliveries after a crash count too.
    pub fn record_delivery(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<u32> {
        let state = self.lock()?;
        let count: i64 = state
            .connection
            .prepare_cached(
                "INSERT INTO deliveries (grp, topic, partition, offset, count) VALUES (?1, ?2, ?3, ?4, 1)
                 ON CONFLICT (grp, topic, partition, offset) DO UPDATE SET count = count + 1
                 RETURNING count",
            )?
            .query_row(params![group, topic, partition, offset as i64], |row| row.get(0))?;
        Ok(count as u32)
    }

    /// Deletes records appended before `before_ms` that every group reading their topic has
    /// committed past, at most `max_per_partition` per partition per call (the log's lock is held
    /// meanwhile); returns how many. A partition's last record stays, so its offsets never start
    /// again at 0.
    pub fn prune(&self, before_ms: i64, max_per_partition: u64) -> Result<u64> {
        let state = self.lock()?;
        let mut deleted = 0u64;
        for ((topic, partition), next) in &state.next_offsets {
            let mut upto = next.saturating_sub(1) as i64;
            // A group with an offset anywhere in the topic protects what it has not read here
            // (a partition it has no offset for yet is read from the start).
            let mut groups = state.connection.prepare_cached(
                "SELECT COALESCE(
                     (SELECT o.next_offset FROM group_offsets o
                      WHERE o.grp = g.grp AND o.topic = g.topic AND o.partition = ?2), 0)
                 FROM (SELECT DISTINCT grp, topic FROM group_offsets WHERE topic = ?1) g",
            )?;
            let positions =
                groups.query_map(params![topic, partition], |row| row.get::<_, i64>(0))?;
            for position in positions {
                upto = upto.min(position?);
            }
            let first: Option<i64> = state
                .connection
                .prepare_cached(
                    "SELECT MIN(offset) FROM records WHERE topic = ?1 AND partition = ?2",
                )?
                .query_row(params![topic, partition], |row| row.get(0))?;
            let Some(first) = first else { continue };
            let upto = upto.min(first.saturating_add(max_per_partition as i64));
            if upto <= first {
                continue;
            }
            deleted += state.connection.prepare_cached(
                "DELETE FROM records WHERE topic = ?1 AND partition = ?2 AND offset < ?3 AND timestamp_ms < ?4",
            )?
            .execute(params![topic, partition, upto, before_ms])? as u64;
        }
        Ok(deleted)
    }

    /// Notified on every append. To sleep without missing an append, a consumer calls
    /// `let wake = log.appended().notified(); pin!(wake).enable();` before it fetches, then awaits it.
    pub fn appended(&self) -> &tokio::sync::Notify {
        &self.appended
    }

    /// Waits until something is appended (or `timeout` passes): lets consumers sleep when caught up.
    pub async fn wait_for_append(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.appended.notified()).await;
    }
}

fn encode_headers(headers: &[(String, Vec<u8>)]) -> String {
    let list: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

fn decode_headers(text: &str) -> Vec<(String, Vec<u8>)> {
    serde_json::from_str(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_what_a_group_has_not_read_and_each_partition_s_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        log.ensure_topic("t", 1).unwrap();
        for n in 0..10u8 {
            log.append("t", Some(b"k"), &[n], &[]).unwrap();
        }
        let future = i64::MAX;
        // Group g has read 4 of the 10.
        log.commit("g", "t", 0, 4).unwrap();
        assert_eq!(log.prune(future, 1000).unwrap(), 4, "only what g committed");
        assert_eq!(log.fetch("t", 0, 0, 100).unwrap()[0].offset, 4);
        log.commit("g", "t", 0, 10).unwrap();
        assert_eq!(
            log.prune(future, 2).unwrap(),
            2,
            "at most max per partition"
        );
        assert_eq!(log.prune(future, 1000).unwrap(), 3, "the last record stays");
        let left = log.fetch("t", 0, 0, 100).unwrap();
        assert_eq!(left.iter().map(|r| r.offset).collect::<Vec<_>>(), [9]);
        assert_eq!(
            log.prune(0, 1000).unwrap(),
            0,
            "nothing is older than the epoch"
        );
        // Reopened, offsets go on after the kept record.
        drop(log);
        let log = super::EventLog::open(&dir.path().join("events.db")).unwrap();
        assert_eq!(
            log.append("t", Some(b"k"), b"next", &[]).unwrap().offset,
            10
        );
        // A group that has an offset in the topic but not in a partition protects all of it.
        log.ensure_topic("u", 2).unwrap();
        log.append_batch(&[
            NewRecord {
                topic: "u".into(),
                key: Some(b"a".to_vec()),
                payload: vec![1],
                headers: vec![],
            },
            NewRecord {
                topic: "u".into(),
                key: Some(b"a".to_vec()),
                payload: vec![2],
                headers: vec![],
            },
        ])
        .unwrap();
        let partition = partition_for(b"a", 2);
        log.commit("h", "u", 1 - partition, 0).unwrap();
        assert_eq!(
            log.prune(future, 1000).unwrap(),
            1,
            "t's record 9 (read by g, no longer the last), nothing of u"
        );
        assert_eq!(log.fetch("u", partition, 0, 10).unwrap().len(), 2);
    }

    fn log(dir: &tempfile::TempDir) -> EventLog {
        EventLog::open(&dir.path().join("events.db")).unwrap()
    }

    #[test]
    fn same_key_same_partition_in_append_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        let first = log
            .append("orders", Some(b"order-1"), b"created", &[])
            .unwrap();
        log.append("orders", Some(b"order-2"), b"other", &[])
            .unwrap();
        let second = log
            .append("orders", Some(b"order-1"), b"paid", &[])
            .unwrap();
        assert_eq!(first.partition, second.partition);
        let records = log.fetch("orders", first.partition, 0, 10).unwrap();
        let order1: Vec<_> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(b"order-1"))
            .map(|r| r.payload.clone())
            .collect();
        assert_eq!(order1, [b"created".to_vec(), b"paid".to_vec()]);
        assert_eq!(log.partitions("orders").unwrap(), Some(DEFAULT_PARTITIONS));
    }

    #[test]
    fn a_batch_keeps_order_and_lands_where_single_appends_would() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        let single = log.append("orders", Some(b"k7"), b"first", &[]).unwrap();
        let batch: Vec<_> = (0..5)
            .map(|i| NewRecord {
                topic: "orders".into(),
                key: Some(b"k7".to_vec()),
                payload: format!("b{i}").into_bytes(),
                headers: Vec::new(),
            })
            .collect();
        let appended = log.append_batch(&batch).unwrap();
        assert!(appended.iter().all(|a| a.partition == single.partition));
        let offsets: Vec<u64> = appended.iter().map(|a| a.offset).collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5]);
        let payloads: Vec<Vec<u8>> = log
            .fetch("orders", single.partition, 1, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(
            payloads,
            batch.iter().map(|b| b.payload.clone()).collect::<Vec<_>>()
        );
        let bad = vec![NewRecord {
            topic: "no spaces".into(),
            key: None,
            payload: Vec::new(),
            headers: Vec::new(),
        }];
        assert!(matches!(
            log.append_batch(&bad),
            Err(EventLogError::InvalidTopic(_))
        ));
    }

    #[test]
    fn records_offsets_and_delivery_counts_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let headers = vec![("traceparent".to_string(), b"00-abc-def-01".to_vec())];
        let appended = {
            let log = log(&dir);
            let a = log
                .append("payments", Some(b"k"), b"one", &headers)
                .unwrap();
            log.append("payments", Some(b"k"), b"two", &[]).unwrap();
            log.commit("billing", "payments", a.partition, a.offset + 1)
                .unwrap();
            assert_eq!(
                log.record_delivery("billing", "payments", a.partition, a.offset + 1)
                    .unwrap(),
                1
            );
            a
        };
        let log = log(&dir);
        assert_eq!(
            log.committed("billing", "payments", appended.partition)
                .unwrap(),
            appended.offset + 1
        );
        assert_eq!(
            log.committed("other-group", "payments", appended.partition)
                .unwrap(),
            0
        );
        let next = log.append("payments", Some(b"k"), b"three", &[]).unwrap();
        assert_eq!(
            next.offset,
            appended.offset + 2,
            "offsets continue after reopening"
        );
        let all = log.fetch("payments", appended.partition, 0, 10).unwrap();
        assert_eq!(all[0].headers, headers);
        assert_eq!(all.len(), 3);
        assert_eq!(
            log.record_delivery(
                "billing",
                "payments",
                appended.partition,
                appended.offset + 1
            )
            .unwrap(),
            2
        );
        log.commit(
            "billing",
            "payments",
            appended.partition,
            appended.offset + 2,
        )
        .unwrap();
        assert_eq!(
            log.record_delivery(
                "billing",
                "payments",
                appended.partition,
                appended.offset + 1
            )
            .unwrap(),
            1,
            "committing forgets delivery counts"
        );
    }

    #[test]
    fn commits_never_move_backwards_and_bad_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        log.ensure_topic("t", 2).unwrap();
        log.commit("g", "t", 0, 5).unwrap();
        log.commit("g", "t", 0, 3).unwrap();
        assert_eq!(log.committed("g", "t", 0).unwrap(), 5);
        assert!(matches!(
            log.fetch("t", 7, 0, 1),
            Err(EventLogError::NoSuchPartition { partitions: 2, .. })
        ));
        assert!(matches!(
            log.append("bad topic!", None, b"x", &[]),
            Err(EventLogError::InvalidTopic(_))
        ));
    }

    #[test]
    fn unkeyed_records_spread_over_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        let mut used = std::collections::BTreeSet::new();
        for i in 0..8 {
            used.insert(
                log.append("spread", None, format!("{i}").as_bytes(), &[])
                    .unwrap()
                    .partition,
            );
        }
        assert_eq!(used.len(), DEFAULT_PARTITIONS as usize);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(log(&dir));
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move {
                log.wait_for_append(Duration::from_secs(30)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.append("wake", None, b"x", &[]).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke up")
            .unwrap();
    }
}
