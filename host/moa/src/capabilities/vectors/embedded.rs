//! The embedded vector index (the default): items in SQLite (the durable truth, with a change
//! sequence), an HNSW graph in memory (moa-hnsw; usearch when quantized), snapshotted to disk and
//! brought up to date at start by replaying the changes after it, so a restart never rebuilds it.
//!
//! Searches with a filter plan as Atlas and Qdrant do: the planner looks the filter's equalities up
//! in an index of metadata values; when few items can match it scores them exactly, otherwise it
//! walks the graph with the filter as a predicate, and falls back to exact scoring when the walk
//! finds fewer matches than exist. A filter never post-filters a top-k.

use super::graph::{Graph, GraphKind, graph_vector};
use super::{
    IndexInfo, Metric, SearchRequest, VectorBackend, VectorError, VectorItem, VectorMatch,
    check_vector,
};
use crate::capabilities::documents::Filter;
use async_trait::async_trait;
use roaring::RoaringTreemap;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

/// How an embedded index is set up (`[vector_index.<label>]` with `type = "embedded"`).
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    pub dir: PathBuf,
    pub metric: Metric,
    pub dimensions: Option<usize>,
    pub connectivity: usize,
    pub expansion_add: usize,
    pub expansion_search: usize,
    /// How the graph stores vectors (the items' own vectors stay f32 in SQLite).
    pub quantization: Quantization,
    pub exact_search_below: usize,
    pub filter_fields: Option<Vec<String>>,
    pub snapshot_interval: Duration,
    /// How often a search checks SQLite for other processes' changes.
    pub external_check_interval: Duration,
}

impl EmbeddedSettings {
    /// The defaults, for an index in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        EmbeddedSettings {
            dir,
            metric: Metric::Cosine,
            dimensions: None,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            quantization: Quantization::F32,
            exact_search_below: 5000,
            filter_fields: None,
            snapshot_interval: Duration::from_secs(30),
            external_check_interval: Duration::from_millis(100),
        }
    }
}

/// How a search ran, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The graph, without a filter.
    Graph,
    /// The graph with the filter as a predicate.
    FilteredGraph,
    /// Exact scores of the items the value index says can match.
    Exact,
    /// The filtered walk found fewer matches than exist: exact scores of every match.
    ExactFallback,
}

/// How an index came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// No vectors yet.
    Empty,
    /// From the graph snapshot, with this many later changes replayed.
    Snapshot { replayed: usize },
    /// The graph was built from every item (no usable snapshot).
    Built { items: usize },
}

/// How the HNSW graph stores its vectors: f32 as given, or half precision / 8-bit integers (less
/// memory and faster distances; scores and recall a little less exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    #[default]
    F32,
    F16,
    I8,
}

/// What `graph-<seq>.json` says of the graph file beside it (`graph-<seq>.hnsw` or `.usearch`).
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct SnapshotMeta {
    /// Every change up to this sequence number is in the graph file.
    seq: i64,
    dimensions: usize,
    metric: Metric,
    connectivity: usize,
    count: usize,
    /// Cosine graphs hold unit vectors under inner product (written since this field exists).
    #[serde(default)]
    unit_vectors: bool,
    #[serde(default)]
    quantization: Quantization,
    #[serde(default)]
    graph: GraphKind,
}

/// One embedded index.
pub struct EmbeddedIndex {
    settings: EmbeddedSettings,
    /// This process's writes queue here before SQLite's write lock (other processes' wait in
    /// SQLite's busy handler).
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// One refresh at a time (they apply changes in sequence order).
    refreshing: Mutex<()>,
    last_refresh: Mutex<std::time::Instant>,
    state: RwLock<State>,
    /// Concurrent searches (one per usearch thread slot, less one kept for the writer).
    search_slots: Arc<tokio::sync::Semaphore>,
    threads: usize,
    /// Changes applied since the last snapshot.
    dirty: AtomicU64,
    /// When the last snapshot was written (or the index opened).
    last_snapshot: Mutex<std::time::Instant>,
    snapshotting: Mutex<()>,
    opened: Opened,
}

struct State {
    graph: Option<Graph>,
    dimensions: Option<usize>,
    entries: HashMap<u64, Entry>,
    values: ValueIndex,
    /// The last change sequence number applied to the graph.
    applied_seq: i64,
}

struct Entry {
    id: Box<str>,
    /// Always a JSON object.
    metadata: Value,
}

/// A metadata value the planner can look up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Scalar {
    /// Numbers that are whole look up as integers, so `9` finds `9.0` as MongoDB's equality does.
    fn of(value: &Value) -> Option<Scalar> {
        match value {
            Value::String(s) => Some(Scalar::Str(s.clone())),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Number(n) => n.as_i64().map(Scalar::Int).or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| Scalar::Int(f as i64))
            }),
            _ => None,
        }
    }
}

/// field -> value -> keys of the items holding it (arrays: each element).
struct ValueIndex {
    fields: Option<HashSet<String>>,
    postings: HashMap<String, HashMap<Scalar, RoaringTreemap>>,
}

impl ValueIndex {
    fn indexed(&self, field: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(field))
    }

    fn scalars(value: &Value) -> Vec<Scalar> {
        match value {
            Value::Array(items) => items.iter().filter_map(Scalar::of).collect(),
            other => Scalar::of(other).into_iter().collect(),
        }
    }

    fn add(&mut self, key: u64, metadata: &Value) {
        let Value::Object(fields) = metadata else {
            return;
        };
        for (field, value) in fields {
            if !self.indexed(field) {
                continue;
            }
            for scalar in Self::scalars(value) {
                self.postings
                    .entry(field.clone())
                    .or_default()
                    .entry(scalar)
                    .or_default()
                    .insert(key);
            }
        }
    }

    fn remove(&mut self, key: u64, metadata: &Value) {
        let Value::Object(fields) = metadata else {
            return;
        };
        for (field, value) in fields {
            let Some(by_value) = self.postings.get_mut(field) else {
                continue;
            };
            for scalar in Self::scalars(value) {
                if let Some(keys) = by_value.get_mut(&scalar) {
                    keys.remove(key);
                    if keys.is_empty() {
                        by_value.remove(&scalar);
                    }
                }
            }
        }
    }

    /// The keys that can match `filter`, when its equalities narrow them down; `None` when the
    /// filter has no equality on an indexed top-level field.
    fn candidates(&self, filter: &Filter) -> Option<RoaringTreemap> {
        let mut result: Option<RoaringTreemap> = None;
        for (path, values) in filter.required_values() {
            if path.contains('.') || !self.indexed(path) {
                continue;
            }
            let Some(scalars) = values
                .iter()
                .map(|v| Scalar::of(v))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let mut union = RoaringTreemap::new();
            if let Some(by_value) = self.postings.get(path) {
                for scalar in &scalars {
                    if let Some(keys) = by_value.get(scalar) {
                        union |= keys;
                    }
                }
            }
            result = Some(match result {
                None => union,
                Some(before) => before & union,
            });
        }
        result
    }
}

/// A snapshot rewrites the whole graph (about 1.7 KB per 384-d item), so a periodic one waits
/// until the changes since the last are at least a quarter of the graph, or the last is older than
/// ten intervals: a bulk load writes about five graphs' worth in all instead of one graph per
/// interval, and a restart replays at most a fifth of the graph (or ten intervals of changes).
pub fn snapshot_due(changes: u64, size: usize, since_last: Duration, interval: Duration) -> bool {
    changes > 0 && (changes.saturating_mul(4) >= size as u64 || since_last >= interval * 10)
}

fn sql(e: rusqlite::Error) -> VectorError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            VectorError::Unavailable(format!("the index file is busy: {e}"))
        }
        _ => VectorError::Other(format!("index storage: {e}")),
    }
}

/// An integer setting (`seq`, `dimensions`).
fn read_setting(connection: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    Ok(connection
        .query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok()))
}

fn write_setting(connection: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value.to_string()],
    )?;
    Ok(())
}

fn to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_blob(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `f32` ordered totally, for the exact top-k heap.
#[derive(PartialEq)]
struct Ranked(f32, u64);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

impl EmbeddedIndex {
    /// Opens (creating if needed) the index in `settings.dir`: loads the newest graph snapshot and
    /// replays the changes after it, or builds the graph from the items when no snapshot fits.
    pub fn open(settings: EmbeddedSettings) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&settings.dir).with_context(|| {
            format!(
                "cannot create the vector index directory {}",
                settings.dir.display()
            )
        })?;
        let db_path = settings.dir.join("items.db");
        let connect = || -> anyhow::Result<Connection> {
            let connection = Connection::open(&db_path)
                .with_context(|| format!("cannot open {}", db_path.display()))?;
            connection.busy_timeout(Duration::from_secs(10))?;
            connection.pragma_update(None, "journal_mode", "WAL")?;
            Ok(connection)
        };
        let writer = connect()?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS items (
                     key      INTEGER PRIMARY KEY AUTOINCREMENT,
                     id       TEXT NOT NULL UNIQUE,
                     vector   BLOB NOT NULL,
                     metadata TEXT NOT NULL,
                     seq      INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS items_seq ON items (seq);
                 CREATE TABLE IF NOT EXISTS tombstones (key INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones (seq);
                 CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
            )
            .with_context(|| format!("cannot initialise {}", db_path.display()))?;
        let stored_dims = read_setting(&writer, "dimensions")?;
        let stored_metric: Option<Metric> = writer
            .query_row(
                "SELECT value FROM settings WHERE name = 'metric'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok());
        if let (Some(stored), Some(wanted)) = (stored_dims, settings.dimensions)
            && stored as usize != wanted
        {
            anyhow::bail!(
                "the index in {} holds {stored}-dimensional vectors, but the runtime config says dimensions = {wanted}\n  help: set dimensions = {stored}, or point `path` at a new directory to start an index of {wanted}",
                settings.dir.display()
            );
        }
        writer.execute(
            "INSERT INTO settings (name, value) VALUES ('metric', ?1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [settings.metric.to_string()],
        )?;
        if let (None, Some(d)) = (stored_dims, settings.dimensions) {
            write_setting(&writer, "dimensions", d as i64)?;
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
            * 4;
        let mut index = EmbeddedIndex {
            state: RwLock::new(State {
                graph: None,
                dimensions: None,
                entries: HashMap::new(),
                values: ValueIndex {
                    fields: settings
                        .filter_fields
                        .as_ref()
                        .map(|f| f.iter().cloned().collect()),
                    postings: HashMap::new(),
                },
                applied_seq: 0,
            }),
            reader: Mutex::new(connect()?),
            writer: Mutex::new(writer),
            refreshing: Mutex::new(()),
            last_refresh: Mutex::new(std::time::Instant::now()),
            search_slots: Arc::new(tokio::sync::Semaphore::new(threads - 1)),
            threads,
            dirty: AtomicU64::new(0),
            last_snapshot: Mutex::new(std::time::Instant::now()),
            snapshotting: Mutex::new(()),
            opened: Opened::Empty,
            settings,
        };
        let metric_changed = stored_metric.is_some_and(|m| m != index.settings.metric);
        index.opened = index
            .load(metric_changed)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "cannot load the vector index in {}",
                    index.settings.dir.display()
                )
            })?;
        Ok(Arc::new(index))
    }

    fn new_graph(&self, dimensions: usize, capacity: usize) -> Result<Graph, VectorError> {
        Graph::new(&self.settings, dimensions, capacity, self.threads)
    }

    /// Whether the snapshot described by `json` holds changes up to `seq` in a graph of this
    /// index's settings.
    fn snapshot_fits(&self, json: &Path, seq: i64, dimensions: usize) -> bool {
        let meta: Option<SnapshotMeta> = std::fs::read(json)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        meta.is_some_and(|m| {
            m.seq == seq
                && m.dimensions == dimensions
                && m.metric == self.settings.metric
                && m.connectivity == self.settings.connectivity
                && m.quantization == self.settings.quantization
                && m.unit_vectors
                && m.graph == GraphKind::of(&self.settings)
        })
    }

    /// The newest snapshot that fits this index's settings and loads, with the sequence number
    /// it covers.
    fn load_snapshot(&self, dimensions: usize) -> Option<(Graph, i64)> {
        let extension = format!(".{}", GraphKind::of(&self.settings).extension());
        let mut snapshots: Vec<(i64, PathBuf)> = std::fs::read_dir(&self.settings.dir)
            .ok()?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let name = path.file_name()?.to_str()?;
                let seq = name
                    .strip_prefix("graph-")?
                    .strip_suffix(extension.as_str())?
                    .parse()
                    .ok()?;
                Some((seq, path))
            })
            .collect();
        snapshots.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        for (seq, path) in snapshots {
            if !self.snapshot_fits(&path.with_extension("json"), seq, dimensions) {
                continue;
            }
            match Graph::load(&self.settings, dimensions, &path, self.threads) {
                Ok(graph) => return Some((graph, seq)),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "a vector index snapshot does not load; trying an older one");
                }
            }
        }
        None
    }

    /// Start-up: every item's id and metadata from SQLite, the graph from the newest snapshot
    /// plus the changes after it, or built from every vector.
    fn load(&self, metric_changed: bool) -> Result<Opened, VectorError> {
        let mut state = self.write_state();
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let tx = reader.transaction().map_err(sql)?;
        let db_seq = read_setting(&tx, "seq").map_err(sql)?.unwrap_or(0);
        let Some(dimensions) = read_setting(&tx, "dimensions").map_err(sql)? else {
            state.applied_seq = db_seq;
            return Ok(Opened::Empty);
        };
        let dimensions = dimensions as usize;
        {
            let mut statement = tx
                .prepare("SELECT key, id, metadata FROM items")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (key, id, metadata) = row.map_err(sql)?;
                let metadata: Value =
                    serde_json::from_str(&metadata).unwrap_or_else(|_| Value::Object(Map::new()));
                state.values.add(key as u64, &metadata);
                state.entries.insert(
                    key as u64,
                    Entry {
                        id: id.into(),
                        metadata,
                    },
                );
            }
        }
        let snapshot = if metric_changed {
            None
        } else {
            self.load_snapshot(dimensions)
        };
        let started = std::time::Instant::now();
        let (mut graph, since, from_snapshot) = match snapshot {
            Some((graph, seq)) => (graph, seq, true),
            None => (self.new_graph(dimensions, state.entries.len())?, 0, false),
        };
        let mut replayed = 0usize;
        {
            let mut changed = tx
                .prepare("SELECT key, vector FROM items WHERE seq > ?1")
                .map_err(sql)?;
            let rows = changed
                .query_map([since], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(sql)?;
            let mut batch: Vec<(u64, Vec<f32>)> = Vec::with_capacity(4096);
            for row in rows {
                let (key, blob) = row.map_err(sql)?;
                let key = key as u64;
                batch.push((key, from_blob(&blob)));
                if batch.len() == 4096 {
                    replayed += batch.len();
                    graph.add(&batch, self.settings.metric, self.threads)?;
                    batch.clear();
                }
            }
            replayed += batch.len();
            graph.add(&batch, self.settings.metric, self.threads)?;
            let mut deleted = tx
                .prepare("SELECT key FROM tombstones WHERE seq > ?1")
                .map_err(sql)?;
            let keys = deleted
                .query_map([since], |r| r.get::<_, i64>(0))
                .map_err(sql)?;
            for key in keys {
                let key = key.map_err(sql)? as u64;
                if graph.contains(key) {
                    graph.remove(key)?;
                    replayed += 1;
                }
            }
        }
        tx.commit().map_err(sql)?;
        if from_snapshot && graph.size() != state.entries.len() {
            tracing::warn!(
                dir = %self.settings.dir.display(),
                graph = graph.size(),
                items = state.entries.len(),
                "the vector index snapshot disagrees with its items; rebuilding the graph"
            );
            drop(reader);
            state.entries.clear();
            state.values.postings.clear();
            drop(state);
            return self.load(true);
        }
        let opened = if from_snapshot {
            tracing::info!(
                dir = %self.settings.dir.display(),
                items = graph.size(),
                replayed,
                "vector index loaded from its snapshot"
            );
            Opened::Snapshot { replayed }
        } else {
            tracing::info!(
                dir = %self.settings.dir.display(),
                items = graph.size(),
                seconds = started.elapsed().as_secs_f64(),
                "vector index graph built from its items"
            );
            Opened::Built {
                items: graph.size(),
            }
        };
        // Replayed changes, or a whole rebuild, go into the next snapshot (periodic or at
        // shutdown), so the next start loads it instead of building again.
        let unsaved = match opened {
            Opened::Snapshot { replayed } => replayed as u64,
            Opened::Built { items } => items as u64,
            Opened::Empty => 0,
        };
        if unsaved > 0 {
            self.dirty.store(unsaved, AtomicOrdering::Relaxed);
        }
        state.graph = Some(graph);
        state.dimensions = Some(dimensions);
        state.applied_seq = db_seq;
        Ok(opened)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How this index came up (from its snapshot, or built).
    pub fn opened(&self) -> Opened {
        self.opened
    }

    /// Brings the graph up to SQLite: applies every change with a sequence number above the last
    /// one applied (this process's writes, and other processes' on the same directory).
    pub fn refresh(&self) -> Result<(), VectorError> {
        let _one = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        let applied = self.read_state().applied_seq;
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let tx = reader.transaction().map_err(sql)?;
        let db_seq = read_setting(&tx, "seq").map_err(sql)?.unwrap_or(0);
        if db_seq <= applied {
            return Ok(());
        }
        let dimensions = read_setting(&tx, "dimensions")
            .map_err(sql)?
            .map(|d| d as usize);
        let mut rows: Vec<(u64, String, Vec<f32>, Value)> = Vec::new();
        {
            let mut changed = tx
                .prepare_cached(
                    "SELECT key, id, vector, metadata FROM items WHERE seq > ?1 AND seq <= ?2",
                )
                .map_err(sql)?;
            let found = changed
                .query_map([applied, db_seq], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(sql)?;
            for row in found {
                let (key, id, blob, metadata) = row.map_err(sql)?;
                let metadata =
                    serde_json::from_str(&metadata).unwrap_or_else(|_| Value::Object(Map::new()));
                rows.push((key as u64, id, from_blob(&blob), metadata));
            }
        }
        let deleted: Vec<u64> = {
            let mut statement = tx
                .prepare_cached("SELECT key FROM tombstones WHERE seq > ?1 AND seq <= ?2")
                .map_err(sql)?;
            let keys = statement
                .query_map([applied, db_seq], |r| r.get::<_, i64>(0))
                .map_err(sql)?;
            keys.map(|k| k.map(|k| k as u64))
                .collect::<Result<_, _>>()
                .map_err(sql)?
        };
        tx.commit().map_err(sql)?;
        drop(reader);

        let mut state = self.write_state();
        if state.graph.is_none()
            && let Some(dimensions) = dimensions
        {
            state.graph = Some(self.new_graph(dimensions, rows.len())?);
            state.dimensions = Some(dimensions);
        }
        let State {
            graph,
            entries,
            values,
            applied_seq,
            ..
        } = &mut *state;
        let Some(graph) = graph.as_mut() else {
            *applied_seq = db_seq;
            return Ok(());
        };
        let changes = (rows.len() + deleted.len()) as u64;
        for key in deleted {
            graph.remove(key)?;
            if let Some(old) = entries.remove(&key) {
                values.remove(key, &old.metadata);
            }
        }
        let mut additions = Vec::with_capacity(rows.len());
        for (key, id, vector, metadata) in rows {
            if let Some(old) = entries.remove(&key) {
                values.remove(key, &old.metadata);
            }
            values.add(key, &metadata);
            entries.insert(
                key,
                Entry {
                    id: id.into(),
                    metadata,
                },
            );
            additions.push((key, vector));
        }
        graph.add(&additions, self.settings.metric, self.threads)?;
        *applied_seq = db_seq;
        self.dirty.fetch_add(changes, AtomicOrdering::Relaxed);
        if graph.compact_if_sparse()? {
            // The next snapshot holds the compact graph.
            self.dirty
                .fetch_add(graph.size() as u64, AtomicOrdering::Relaxed);
        }
        Ok(())
    }

    /// Refreshes when the last refresh is older than `external_check_interval` (other
    /// processes' writes become searchable within it; this process's are at once).
    fn refresh_if_due(&self) -> Result<(), VectorError> {
        {
            let mut last = self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < self.settings.external_check_interval {
                return Ok(());
            }
            *last = std::time::Instant::now();
        }
        self.refresh()
    }

    /// Starts the task that checks every `snapshot_interval` whether a snapshot is due
    /// ([`snapshot_due`]) and writes it.
    pub fn spawn_snapshots(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.settings.snapshot_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(index) = weak.upgrade() else { return };
                let changes = index.dirty.load(AtomicOrdering::Relaxed);
                let size = index.read_state().graph.as_ref().map_or(0, |g| g.size());
                let age = index
                    .last_snapshot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed();
                if !snapshot_due(changes, size, age, interval) {
                    continue;
                }
                let result = tokio::task::spawn_blocking(move || index.snapshot()).await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "vector index snapshot failed; it is retried")
                    }
                    Err(error) => tracing::warn!(%error, "vector index snapshot panicked"),
                }
            }
        });
    }

    /// Writes the graph as `graph-<seq>.hnsw` or `.usearch` (with its `.json`), then removes older
    /// ones.
    /// Several processes may snapshot one directory: each file names the changes it holds.
    pub fn snapshot(&self) -> Result<(), VectorError> {
        let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
        let dir = &self.settings.dir;
        let io = |e: std::io::Error| VectorError::Other(format!("writing the snapshot: {e}"));
        let seq = {
            let state = self.read_state();
            let (Some(graph), Some(dimensions)) = (&state.graph, state.dimensions) else {
                return Ok(());
            };
            let changes = self.dirty.swap(0, AtomicOrdering::Relaxed);
            let seq = state.applied_seq;
            let kind = GraphKind::of(&self.settings);
            let file = dir.join(format!("graph-{seq}.{}", kind.extension()));
            if self.snapshot_fits(&file.with_extension("json"), seq, dimensions) {
                return Ok(());
            }
            let tmp = dir.join(format!(
                "graph-{seq}.{}.{}.tmp",
                kind.extension(),
                std::process::id()
            ));
            if let Err(e) = graph.save(&tmp) {
                self.dirty.fetch_add(changes, AtomicOrdering::Relaxed);
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            let meta = SnapshotMeta {
                seq,
                dimensions,
                metric: self.settings.metric,
                connectivity: self.settings.connectivity,
                count: graph.size(),
                unit_vectors: true,
                quantization: self.settings.quantization,
                graph: kind,
            };
            // A graph file without its .json is never loaded: the old .json goes first (a graph
            // of other settings may hold this seq), then the graph, then its .json.
            let json = file.with_extension("json");
            match std::fs::remove_file(&json) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
            std::fs::rename(&tmp, &file).map_err(io)?;
            std::fs::write(
                &json,
                serde_json::to_vec(&meta).map_err(|e| VectorError::Other(e.to_string()))?,
            )
            .map_err(io)?;
            *self.last_snapshot.lock().unwrap_or_else(|e| e.into_inner()) =
                std::time::Instant::now();
            seq
        };
        for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let older = name
                .strip_prefix("graph-")
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|n| n < seq);
            if older && !name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    fn upsert_blocking(&self, items: Vec<VectorItem>) -> Result<(), VectorError> {
        if items.is_empty() {
            return Ok(());
        }
        {
            let mut writer = self.writer();
            let tx = writer
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            let seq = read_setting(&tx, "seq").map_err(sql)?.unwrap_or(0) + 1;
            let dimensions = match read_setting(&tx, "dimensions").map_err(sql)? {
                Some(d) => d as usize,
                None => {
                    write_setting(&tx, "dimensions", items[0].vector.len() as i64).map_err(sql)?;
                    items[0].vector.len()
                }
            };
            for item in &items {
                check_vector(&item.vector, Some(dimensions))?;
            }
            {
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO items (id, vector, metadata, seq) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (id) DO UPDATE SET vector = excluded.vector,
                             metadata = excluded.metadata, seq = excluded.seq",
                    )
                    .map_err(sql)?;
                for item in &items {
                    let metadata =
                        serde_json::to_string(&item.metadata).unwrap_or_else(|_| "{}".into());
                    upsert
                        .execute(params![item.id, to_blob(&item.vector), metadata, seq])
                        .map_err(sql)?;
                }
            }
            write_setting(&tx, "seq", seq).map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        // Durable now; make it searchable.
        self.refresh()
    }

    fn delete_blocking(&self, ids: Vec<String>) -> Result<u64, VectorError> {
        let deleted = {
            let mut writer = self.writer();
            let tx = writer
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            let seq = read_setting(&tx, "seq").map_err(sql)?.unwrap_or(0) + 1;
            let mut deleted = 0u64;
            {
                let mut delete = tx
                    .prepare_cached("DELETE FROM items WHERE id = ?1 RETURNING key")
                    .map_err(sql)?;
                let mut tombstone = tx
                    .prepare_cached("INSERT INTO tombstones (key, seq) VALUES (?1, ?2)")
                    .map_err(sql)?;
                for id in &ids {
                    let key: Option<i64> = delete
                        .query_row([id], |r| r.get(0))
                        .optional()
                        .map_err(sql)?;
                    if let Some(key) = key {
                        tombstone.execute(params![key, seq]).map_err(sql)?;
                        deleted += 1;
                    }
                }
            }
            if deleted > 0 {
                write_setting(&tx, "seq", seq).map_err(sql)?;
            }
            tx.commit().map_err(sql)?;
            deleted
        };
        self.refresh()?;
        Ok(deleted)
    }

    fn get_blocking(&self, id: &str) -> Result<Option<VectorItem>, VectorError> {
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let row: Option<(Vec<u8>, String)> = reader
            .query_row(
                "SELECT vector, metadata FROM items WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        Ok(row.map(|(blob, metadata)| VectorItem {
            id: id.to_string(),
            vector: from_blob(&blob),
            metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        }))
    }

    /// Runs a search and says how it ran.
    pub fn search_blocking(
        &self,
        request: &SearchRequest,
    ) -> Result<(Vec<VectorMatch>, Plan), VectorError> {
        self.refresh_if_due()?;
        let state = self.read_state();
        let (Some(graph), Some(dimensions)) = (&state.graph, state.dimensions) else {
            return Ok((Vec::new(), Plan::Graph));
        };
        check_vector(&request.vector, Some(dimensions))?;
        let graph_query = graph_vector(self.settings.metric, &request.vector);
        let limit = request.limit;
        let wanted = request.candidates.unwrap_or(limit).max(limit);
        let metric = self.settings.metric;
        let to_matches = |found: Vec<(u64, f32)>| -> Vec<VectorMatch> {
            found
                .into_iter()
                .filter_map(|(key, distance)| {
                    let entry = state.entries.get(&key)?;
                    Some(VectorMatch {
                        id: entry.id.to_string(),
                        score: metric.score(distance),
                        metadata: request.include_metadata.then(|| match &entry.metadata {
                            Value::Object(fields) => fields.clone(),
                            _ => Map::new(),
                        }),
                    })
                })
                .take(limit)
                .collect()
        };
        let Some((_, filter)) = &request.filter else {
            let found = graph.search(&graph_query, wanted, self.settings.expansion_search, None)?;
            return Ok((to_matches(found), Plan::Graph));
        };
        let candidates = state.values.candidates(filter);
        let exact = |keys: &mut dyn Iterator<Item = u64>| -> Vec<(u64, f32)> {
            let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(limit + 1);
            let mut buffer = vec![0.0f32; dimensions];
            for key in keys {
                let Some(entry) = state.entries.get(&key) else {
                    continue;
                };
                if !filter.matches(&entry.metadata) {
                    continue;
                }
                if !graph.get(key, &mut buffer) {
                    continue;
                }
                let distance = metric.distance(&request.vector, &buffer);
                heap.push(Ranked(distance, key));
                if heap.len() > limit {
                    heap.pop();
                }
            }
            let mut ranked = heap.into_vec();
            ranked.sort();
            ranked.into_iter().map(|Ranked(d, k)| (k, d)).collect()
        };
        if let Some(set) = &candidates
            && set.len() <= self.settings.exact_search_below as u64
        {
            return Ok((to_matches(exact(&mut set.iter())), Plan::Exact));
        }
        let predicate = |key: u64| {
            candidates.as_ref().is_none_or(|set| set.contains(key))
                && state
                    .entries
                    .get(&key)
                    .is_some_and(|entry| filter.matches(&entry.metadata))
        };
        let found = graph.search(
            &graph_query,
            wanted,
            self.settings.expansion_search,
            Some(&predicate),
        )?;
        if found.len() >= limit {
            return Ok((to_matches(found), Plan::FilteredGraph));
        }
        // The walk found fewer than asked: are there more matches than it found?
        let mut all: Box<dyn Iterator<Item = u64>> = match &candidates {
            Some(set) => Box::new(set.iter()),
            None => Box::new(state.entries.keys().copied()),
        };
        let matching: Vec<u64> = all
            .by_ref()
            .filter(|key| {
                state
                    .entries
                    .get(key)
                    .is_some_and(|entry| filter.matches(&entry.metadata))
            })
            .collect();
        if matching.len() > found.len() {
            return Ok((
                to_matches(exact(&mut matching.into_iter())),
                Plan::ExactFallback,
            ));
        }
        Ok((to_matches(found), Plan::FilteredGraph))
    }

    /// Items stored now.
    pub fn len(&self) -> usize {
        self.read_state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for EmbeddedIndex {
    fn drop(&mut self) {
        if self.dirty.load(AtomicOrdering::Relaxed) > 0
            && let Err(error) = self.snapshot()
        {
            tracing::warn!(%error, "vector index snapshot at shutdown failed; the next start replays the changes");
        }
    }
}

/// Runs blocking index work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, VectorError> + Send + 'static,
) -> Result<T, VectorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| VectorError::Other(format!("index work panicked: {e}")))?
}

#[async_trait]
impl VectorBackend for Arc<EmbeddedIndex> {
    async fn upsert(&self, items: Vec<VectorItem>) -> Result<(), VectorError> {
        let index = self.clone();
        blocking(move || index.upsert_blocking(items)).await
    }

    async fn delete(&self, ids: Vec<String>) -> Result<u64, VectorError> {
        let index = self.clone();
        blocking(move || index.delete_blocking(ids)).await
    }

    async fn get(&self, id: &str) -> Result<Option<VectorItem>, VectorError> {
        let index = self.clone();
        let id = id.to_string();
        blocking(move || index.get_blocking(&id)).await
    }

    async fn search(&self, request: SearchRequest) -> Result<Vec<VectorMatch>, VectorError> {
        let _slot = self
            .search_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| VectorError::Unavailable("the index is closing".into()))?;
        let index = self.clone();
        blocking(move || index.search_blocking(&request).map(|(found, _)| found)).await
    }

    async fn info(&self) -> Result<IndexInfo, VectorError> {
        let state = self.read_state();
        Ok(IndexInfo {
            dimensions: state.dimensions.unwrap_or(0),
            metric: self.settings.metric,
            count: state.entries.len() as u64,
            backend: "embedded",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::vectors::parse_search;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde_json::json;

    const DIMS: usize = 32;

    fn random_vector(rng: &mut StdRng) -> Vec<f32> {
        (0..DIMS).map(|_| rng.r#gen::<f32>() * 2.0 - 1.0).collect()
    }

    /// `n` items over 200 stores, plus store "tiny" with 3 items.
    fn items(n: usize, rng: &mut StdRng) -> Vec<VectorItem> {
        let mut out: Vec<VectorItem> = (0..n)
            .map(|i| VectorItem {
                id: format!("r{i}"),
                vector: random_vector(rng),
                metadata: json!({"store_id": format!("s{}", i % 200), "rating": (i % 10) + 1})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        for i in 0..3 {
            out.push(VectorItem {
                id: format!("tiny{i}"),
                vector: random_vector(rng),
                metadata: json!({"store_id": "tiny", "rating": 5})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        out
    }

    fn open(
        dir: &std::path::Path,
        tweak: impl FnOnce(&mut EmbeddedSettings),
    ) -> Arc<EmbeddedIndex> {
        let mut settings = EmbeddedSettings::new(dir.to_path_buf());
        tweak(&mut settings);
        EmbeddedIndex::open(settings).expect("the index opens")
    }

    fn search(
        index: &EmbeddedIndex,
        vector: &[f32],
        limit: u32,
        filter: Option<Value>,
    ) -> (Vec<VectorMatch>, Plan) {
        let filter = filter.map(|f| f.to_string());
        let request = parse_search(vector.to_vec(), limit, filter.as_deref(), None, true)
            .expect("request parses");
        index.search_blocking(&request).expect("search runs")
    }

    fn exact_ids(
        all: &[VectorItem],
        query: &[f32],
        limit: usize,
        keep: impl Fn(&VectorItem) -> bool,
    ) -> Vec<String> {
        let mut scored: Vec<(f32, &str)> = all
            .iter()
            .filter(|i| keep(i))
            .map(|i| (Metric::Cosine.distance(query, &i.vector), i.id.as_str()))
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        scored
            .into_iter()
            .take(limit)
            .map(|(_, id)| id.to_string())
            .collect()
    }

    #[test]
    fn a_selective_filter_returns_every_match_and_only_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(7);
        let all = items(20_000, &mut rng);
        // exact_search_below = 0 forces the graph walk with the filter as predicate (and the exact
        // fallback when the walk finds fewer than exist).
        for (below, expected_plans) in [
            (5000, &[Plan::Exact][..]),
            (0, &[Plan::FilteredGraph, Plan::ExactFallback][..]),
        ] {
            let index = open(&dir.path().join(format!("i{below}")), |s| {
                s.exact_search_below = below
            });
            index.upsert_blocking(all.clone()).expect("upsert");
            let query = random_vector(&mut rng);
            let (found, plan) = search(&index, &query, 10, Some(json!({"store_id": "tiny"})));
            let mut ids: Vec<&str> = found.iter().map(|m| m.id.as_str()).collect();
            ids.sort();
            assert_eq!(ids, ["tiny0", "tiny1", "tiny2"], "plan {plan:?}");
            assert!(expected_plans.contains(&plan), "{plan:?}");
            assert!(found.iter().all(|m| {
                m.metadata
                    .as_ref()
                    .is_some_and(|md| md["store_id"] == "tiny")
            }));
        }
    }

    #[test]
    fn a_filter_the_value_index_cannot_narrow_still_returns_every_match() {
        // 40 of 20,000 items carry `rank`; `$exists` is not an equality, so the graph is walked
        // with the filter as a predicate: all 40 must come back, nearest first.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(13);
        let mut all = items(20_000, &mut rng);
        for i in (0..20_000).step_by(500) {
            all[i].metadata.insert("rank".into(), json!(i));
        }
        let index = open(dir.path(), |_| {});
        index.upsert_blocking(all.clone()).expect("upsert");
        let mut plans = Vec::new();
        for _ in 0..5 {
            let query = random_vector(&mut rng);
            let (found, plan) =
                search(&index, &query, 40, Some(json!({"rank": {"$exists": true}})));
            let want = exact_ids(&all, &query, 40, |i| i.metadata.contains_key("rank"));
            assert_eq!(
                found.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                want,
                "{plan:?}"
            );
            plans.push(plan);
        }
        // (the graph's predicate walk found all 40 in every run here; when it does not, the
        // fallback must make up the difference, and the assertion above holds either way.)
        assert!(
            plans
                .iter()
                .all(|p| matches!(p, Plan::FilteredGraph | Plan::ExactFallback))
        );
    }

    #[test]
    fn filtered_results_are_the_exact_nearest_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(11);
        let all = items(20_000, &mut rng);
        let index = open(dir.path(), |_| {});
        index.upsert_blocking(all.clone()).expect("upsert");
        let query = random_vector(&mut rng);
        // One store (100 items): exact plan, exactly the brute-force answer.
        let (found, plan) = search(&index, &query, 10, Some(json!({"store_id": "s17"})));
        assert_eq!(plan, Plan::Exact);
        let want = exact_ids(&all, &query, 10, |i| i.metadata["store_id"] == "s17");
        assert_eq!(found.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), want);
        // A range filter the value index cannot narrow: the graph walk with the predicate, and
        // every result matches.
        let (found, plan) = search(&index, &query, 10, Some(json!({"rating": {"$gte": 9}})));
        assert_eq!(plan, Plan::FilteredGraph);
        assert_eq!(found.len(), 10);
        assert!(found.iter().all(|m| {
            m.metadata
                .as_ref()
                .is_some_and(|md| md["rating"].as_i64().unwrap_or(0) >= 9)
        }));
        // $in over two stores and a range inside them.
        let filter = json!({"store_id": {"$in": ["s1", "s2"]}, "rating": {"$lt": 4}});
        let (found, _) = search(&index, &query, 50, Some(filter));
        let want = exact_ids(&all, &query, 50, |i| {
            ["s1", "s2"].contains(&i.metadata["store_id"].as_str().unwrap_or(""))
                && i.metadata["rating"].as_i64().unwrap_or(99) < 4
        });
        assert_eq!(found.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), want);
        // A value nobody has: nothing, quickly.
        let (found, plan) = search(&index, &query, 10, Some(json!({"store_id": "nobody"})));
        assert!(found.is_empty());
        assert_eq!(plan, Plan::Exact);
    }

    #[test]
    fn unfiltered_search_has_high_recall_and_scores_on_atlas_scale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(3);
        let all = items(10_000, &mut rng);
        let index = open(dir.path(), |_| {});
        index.upsert_blocking(all.clone()).expect("upsert");
        let mut hits = 0;
        for _ in 0..50 {
            let query = random_vector(&mut rng);
            let (found, plan) = search(&index, &query, 10, None);
            assert_eq!(plan, Plan::Graph);
            let want = exact_ids(&all, &query, 10, |_| true);
            hits += found.iter().filter(|m| want.contains(&m.id)).count();
            for pair in found.windows(2) {
                assert!(pair[0].score >= pair[1].score, "nearest first");
            }
        }
        // Random 32-d vectors are HNSW's hard case; real embeddings do better (scripts/bench-vectors.sh).
        assert!(
            hits as f64 / 500.0 >= 0.9,
            "recall@10 {}",
            hits as f64 / 500.0
        );
        // An item's own vector is its nearest, with score 1.
        let (found, _) = search(&index, &all[42].vector, 1, None);
        assert_eq!(found[0].id, "r42");
        assert!((found[0].score - 1.0).abs() < 1e-4);
    }

    #[test]
    fn snapshots_wait_for_a_quarter_of_the_graph_or_ten_intervals() {
        let tick = Duration::from_secs(30);
        assert!(!snapshot_due(0, 0, tick * 100, tick), "nothing changed");
        assert!(
            snapshot_due(3, 10, tick, tick),
            "a small index snapshots at once"
        );
        assert!(
            !snapshot_due(20_000, 100_000, tick, tick),
            "a fifth of the graph waits"
        );
        assert!(snapshot_due(25_000, 100_000, tick, tick));
        assert!(snapshot_due(1, 100_000, tick * 10, tick), "the age bound");
        assert!(!snapshot_due(1, 100_000, tick * 9, tick));
    }

    #[test]
    fn restarts_load_the_snapshot_and_replay_later_changes_without_a_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(5);
        let all = items(3_000, &mut rng);
        let index = open(dir.path(), |_| {});
        assert_eq!(index.opened(), Opened::Empty);
        index
            .upsert_blocking(all[..2_000].to_vec())
            .expect("upsert");
        index.snapshot().expect("snapshot");
        // After the snapshot: more items, a replaced one, deletes. Then the process "dies"
        // (no shutdown snapshot).
        index
            .upsert_blocking(all[2_000..].to_vec())
            .expect("upsert");
        let mut moved = all[10].clone();
        moved.vector = all[2_500].vector.iter().map(|v| -v).collect();
        moved.metadata.insert("store_id".into(), json!("moved"));
        index.upsert_blocking(vec![moved.clone()]).expect("replace");
        assert_eq!(
            index
                .delete_blocking(vec!["r11".into(), "nope".into()])
                .expect("delete"),
            1
        );
        let before = search(
            &index,
            &all[77].vector,
            5,
            Some(json!({"rating": {"$gte": 2}})),
        )
        .0;
        std::mem::forget(index);

        let index = open(dir.path(), |_| {});
        assert_eq!(index.opened(), Opened::Snapshot { replayed: 1_005 });
        assert_eq!(index.len(), 3_002);
        let after = search(
            &index,
            &all[77].vector,
            5,
            Some(json!({"rating": {"$gte": 2}})),
        )
        .0;
        assert_eq!(before, after);
        // The replaced item moved (vector and metadata), the deleted one is gone.
        let (found, _) = search(&index, &moved.vector, 1, None);
        assert_eq!(found[0].id, "r10");
        assert!(
            search(&index, &all[10].vector, 5, Some(json!({"store_id": "s10"})))
                .0
                .iter()
                .all(|m| m.id != "r10")
        );
        assert_eq!(
            search(
                &index,
                &all[0].vector,
                5,
                Some(json!({"store_id": "moved"}))
            )
            .0
            .len(),
            1
        );
        assert!(index.get_blocking("r11").expect("get").is_none());
        let got = index.get_blocking("r10").expect("get").expect("r10 exists");
        assert_eq!(got.vector, moved.vector);
        // A clean shutdown snapshots, so the next start replays nothing.
        drop(index);
        let index = open(dir.path(), |_| {});
        assert_eq!(index.opened(), Opened::Snapshot { replayed: 0 });
        // A snapshot that is gone means one rebuild from the items, not lost data.
        drop(index);
        for entry in std::fs::read_dir(dir.path()).expect("dir").flatten() {
            if entry.path().extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(entry.path()).expect("remove");
            }
        }
        let index = open(dir.path(), |_| {});
        assert_eq!(index.opened(), Opened::Built { items: 3_002 });
    }

    #[test]
    fn a_graph_of_another_quantization_is_rebuilt_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(8);
        let all = items(2_000, &mut rng);
        let index = open(dir.path(), |_| {});
        index.upsert_blocking(all.clone()).expect("upsert");
        drop(index); // snapshots an f32 graph
        let index = open(dir.path(), |s| s.quantization = Quantization::F16);
        assert_eq!(index.opened(), Opened::Built { items: 2_003 });
        // Half precision keeps the neighbours: the exact top 10 of every 20th item, mostly found.
        let (mut hits, mut wanted) = (0, 0);
        for query in all.iter().step_by(20) {
            let want = exact_ids(&all, &query.vector, 10, |_| true);
            let (found, _) = search(&index, &query.vector, 10, None);
            hits += found.iter().filter(|m| want.contains(&m.id)).count();
            wanted += want.len();
        }
        assert!(hits * 100 >= wanted * 95, "recall@10 {hits}/{wanted}");
        drop(index);
        let index = open(dir.path(), |s| s.quantization = Quantization::F16);
        assert_eq!(index.opened(), Opened::Snapshot { replayed: 0 });
        // Back to f32: the usearch snapshot is not a moa-hnsw graph, so one rebuild again.
        drop(index);
        let index = open(dir.path(), |_| {});
        assert_eq!(index.opened(), Opened::Built { items: 2_003 });
        drop(index);
        let index = open(dir.path(), |_| {});
        assert_eq!(index.opened(), Opened::Snapshot { replayed: 0 });
    }

    #[test]
    fn replaced_vectors_do_not_pile_up_in_the_graph() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(21);
        let index = open(dir.path(), |_| {});
        let mut all = items(1_500, &mut rng);
        index.upsert_blocking(all.clone()).expect("upsert");
        let nodes = |index: &EmbeddedIndex| match index.read_state().graph.as_ref() {
            Some(Graph::Native(graph)) => graph.nodes(),
            _ => panic!("an f32 index holds a moa-hnsw graph"),
        };
        // Every item gets a new vector, three times over: the removed nodes would be 4 503.
        for round in 0..3 {
            for item in all.iter_mut() {
                item.vector = random_vector(&mut rng);
            }
            for chunk in all.chunks(500) {
                index.upsert_blocking(chunk.to_vec()).expect("replace");
            }
            assert_eq!(index.len(), 1_503, "round {round}");
        }
        assert!(nodes(&index) <= 1_503 * 2, "{} nodes", nodes(&index));
        // Searches see only the newest vectors.
        for query in all.iter().step_by(50) {
            let (found, _) = search(&index, &query.vector, 1, None);
            assert_eq!(found[0].id, query.id);
            assert!(found[0].score > 0.999, "{}", found[0].score);
        }
    }

    #[test]
    fn dimensions_are_fixed_by_the_first_upsert_and_checked_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = open(dir.path(), |_| {});
        let item = |id: &str, n: usize| VectorItem {
            id: id.into(),
            vector: vec![0.5; n],
            metadata: Map::new(),
        };
        index
            .upsert_blocking(vec![item("a", 3)])
            .expect("first upsert");
        let error = index
            .upsert_blocking(vec![item("b", 3), item("c", 4)])
            .expect_err("4 dims");
        assert!(matches!(error, VectorError::DimensionMismatch(_)));
        assert_eq!(index.len(), 1, "a refused batch changes nothing");
        drop(index);
        let error = EmbeddedIndex::open(EmbeddedSettings {
            dimensions: Some(8),
            ..EmbeddedSettings::new(dir.path().to_path_buf())
        })
        .err()
        .expect("the stored dimensions win");
        assert!(
            error.to_string().contains("holds 3-dimensional vectors"),
            "{error}"
        );
    }

    #[test]
    fn searches_run_beside_upserts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(9);
        let all = items(4_000, &mut rng);
        let index = open(dir.path(), |_| {});
        index
            .upsert_blocking(all[..1_000].to_vec())
            .expect("upsert");
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                for chunk in all[1_000..].chunks(100) {
                    index.upsert_blocking(chunk.to_vec()).expect("upsert");
                }
            });
            for t in 0..3u64 {
                let index = &index;
                let all = &all;
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(100 + t);
                    for _ in 0..200 {
                        let query = random_vector(&mut rng);
                        let (found, _) = search(index, &query, 5, Some(json!({"store_id": "s3"})));
                        assert!(!found.is_empty() && found.len() <= 5);
                        let (found, _) =
                            search(index, &all[rng.gen_range(0..1_000)].vector, 1, None);
                        assert_eq!(found.len(), 1);
                    }
                });
            }
            writer.join().expect("writer");
        });
        assert_eq!(index.len(), 4_003);
    }

    #[test]
    fn two_processes_share_one_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = StdRng::seed_from_u64(21);
        let all = items(500, &mut rng);
        let tweak = |s: &mut EmbeddedSettings| s.external_check_interval = Duration::ZERO;
        let host = open(dir.path(), tweak);
        let job = open(dir.path(), tweak);
        // The job writes; the host's next search sees it, and the reverse.
        job.upsert_blocking(all[..400].to_vec())
            .expect("job upsert");
        host.upsert_blocking(all[400..].to_vec())
            .expect("host upsert");
        for index in [&host, &job] {
            let (found, _) = search(index, &all[3].vector, 1, None);
            assert_eq!(found[0].id, "r3");
            let (found, _) = search(index, &all[450].vector, 1, None);
            assert_eq!(found[0].id, "r450");
            assert_eq!(index.len(), 503);
        }
        assert_eq!(job.delete_blocking(vec!["r3".into()]).expect("delete"), 1);
        let (found, _) = search(&host, &all[3].vector, 1, None);
        assert_ne!(found[0].id, "r3");
        assert_eq!(host.len(), 502);
        // Both snapshot; the newest wins at the next start, with nothing to replay.
        host.snapshot().expect("snapshot");
        job.snapshot().expect("snapshot");
        drop(host);
        drop(job);
        let again = open(dir.path(), tweak);
        assert_eq!(again.opened(), Opened::Snapshot { replayed: 0 });
        assert_eq!(again.len(), 502);
    }
}
