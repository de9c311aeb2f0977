//! Operations run over a view of the store: the rows a SQLite connection sees (a transaction's
//! snapshot, or the writer's current state) with the transaction's own buffered writes laid on top.
//! Writes never touch SQLite here: they become [`Change`]s, which the writer validates and applies.

use super::super::IndexSpec;
use super::super::ops::{DocumentError, FindSpec, MAX_DOCUMENT_BYTES, Op, Output, UpdateOutcome};
use super::super::query::Filter;
use super::super::values::{get_path, id_key, new_object_id, values_equal};
use super::map_sqlite;
use super::plan::{self, index_expression, sql_index_name, sql_value};
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// What a document was in the snapshot a change is based on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Base {
    pub seq: i64,
    pub version: i64,
}

/// One document's buffered write: its new body (`None`: deleted) and what it was before.
#[derive(Debug, Clone)]
pub struct Change {
    pub collection: String,
    /// The `_id` key (see [`id_key`]).
    pub key: String,
    /// `None`: the document did not exist in the snapshot.
    pub base: Option<Base>,
    /// The new JSON text, or `None` for a delete.
    pub body: Option<String>,
    /// When the transaction first changed this document (applies follow that order).
    pub first: u64,
}

/// A transaction's buffered writes, by `(collection, _id key)`.
#[derive(Default)]
pub struct Overlay {
    entries: HashMap<(String, String), Entry>,
    changes: u64,
}

struct Entry {
    base: Option<Base>,
    /// The document now (`None`: deleted in this transaction).
    document: Option<Map<String, Value>>,
    body: Option<String>,
    /// Insertion order: the snapshot row's `seq`, or after every stored row for a new document.
    order: i64,
    first: u64,
}

/// New documents sort after every stored row, in the order the transaction inserted them.
const NEW_ORDER: i64 = i64::MAX / 2;

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The buffered writes, in the order the transaction first made them.
    pub fn into_changes(self) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .entries
            .into_iter()
            .map(|((collection, key), entry)| Change {
                collection,
                key,
                base: entry.base,
                body: entry.body,
                first: entry.first,
            })
            .collect();
        changes.sort_by_key(|c| c.first);
        changes
    }

    fn get(&self, collection: &str, key: &str) -> Option<&Entry> {
        // Most reads happen before the transaction wrote anything: no key to build then. (A
        // lookup without allocating the key tuple would need a custom map; overlays are small.)
        if self.entries.is_empty() {
            return None;
        }
        self.entries.get(&(collection.to_string(), key.to_string()))
    }

    fn put(
        &mut self,
        collection: &str,
        key: &str,
        base: Option<Base>,
        order: Option<i64>,
        document: Option<(Map<String, Value>, String)>,
    ) {
        let (document, body) = match document {
            Some((document, body)) => (Some(document), Some(body)),
            None => (None, None),
        };
        let slot = (collection.to_string(), key.to_string());
        if let Some(entry) = self.entries.get_mut(&slot) {
            if entry.base.is_none() && document.is_none() {
                // Inserted and deleted in this transaction: nothing to write.
                self.entries.remove(&slot);
                return;
            }
            entry.document = document;
            entry.body = body;
            return;
        }
        self.changes += 1;
        let order = order.unwrap_or(NEW_ORDER + self.changes as i64);
        self.entries.insert(
            slot,
            Entry {
                base,
                document,
                body,
                order,
                first: self.changes,
            },
        );
    }
}

/// A document as the view sees it.
pub struct Row {
    order: i64,
    key: String,
    base: Option<Base>,
    pub document: Map<String, Value>,
}

/// How much of the matching documents an operation needs.
#[derive(Clone, Copy)]
enum Keep {
    /// Every match (sorted finds, `*-many`).
    All,
    /// The first `n` matches in insertion order (unsorted finds with a limit, `*-one`).
    Upto(usize),
    /// Only how many match.
    Count,
}

/// The largest total size of matching documents one operation holds in memory: a filter that
/// matches more (for a sort, or a find without a limit) is `too-large`, not a host out of memory.
const MAX_MATCHED_BYTES: usize = 64 * 1024 * 1024;

/// A connection's rows with a transaction's writes on top.
pub struct View<'a> {
    pub connection: &'a Connection,
    pub overlay: &'a mut Overlay,
    pub indexes: &'a [IndexSpec],
}

/// Whether `op` reads only rows found by key, so it is quick enough to run without leaving the
/// async task (inserts, `_id` lookups, index lookups of a few documents).
pub fn is_keyed(op: &Op, indexes: &[IndexSpec]) -> bool {
    let (collection, filter, few) = match op {
        Op::Insert { .. } => return true,
        Op::Find {
            collection,
            filter,
            spec,
        } => (
            collection,
            filter,
            spec.sort.is_none() && spec.limit.is_some_and(|l| spec.skip + l <= 100),
        ),
        Op::Update {
            collection,
            filter,
            many,
            ..
        }
        | Op::Delete {
            collection,
            filter,
            many,
        } => (collection, filter, !many),
        Op::Replace {
            collection, filter, ..
        } => (collection, filter, true),
        Op::FindOneAndUpdate {
            collection,
            filter,
            sort,
            ..
        } => (collection, filter, sort.is_none()),
        Op::Count { .. } => return false,
    };
    let plan = plan::plan(collection, indexes, &filter.parsed);
    plan.keyed && (few || plan::id_keys(&filter.parsed).is_some())
}

impl View<'_> {
    fn sqlite(&self, error: rusqlite::Error) -> DocumentError {
        map_sqlite(
            std::path::Path::new(self.connection.path().unwrap_or_default()),
            error,
        )
    }

    /// Runs one operation: reads see the overlay, writes go into it.
    pub fn run(&mut self, op: Op) -> Result<Output, DocumentError> {
        match op {
            Op::Insert {
                collection,
                documents,
            } => {
                let mut ids = Vec::with_capacity(documents.len());
                for document in documents {
                    ids.push(self.insert(&collection, document)?);
                }
                Ok(Output::Ids(ids))
            }
            Op::Find {
                collection,
                filter,
                spec,
            } => {
                let wanted = spec.limit.map(|limit| {
                    usize::try_from(spec.skip.saturating_add(limit)).unwrap_or(usize::MAX)
                });
                let keep = match (&spec.sort, wanted) {
                    (None, Some(n)) => Keep::Upto(n),
                    (Some((_, sort)), Some(n)) => {
                        if let Some(plan) = plan::sorted_plan(
                            &collection,
                            self.indexes,
                            &filter.parsed,
                            sort.keys(),
                        ) {
                            let rows =
                                self.sorted_matching(&collection, &filter.parsed, plan, n)?;
                            return Ok(Output::Documents(shape(rows, &spec)));
                        }
                        Keep::All
                    }
                    _ => Keep::All,
                };
                let (rows, _) = self.matching(&collection, &filter.parsed, keep)?;
                Ok(Output::Documents(shape(rows, &spec)))
            }
            Op::Count { collection, filter } => {
                let (_, count) = self.matching(&collection, &filter.parsed, Keep::Count)?;
                Ok(Output::Count(count))
            }
            Op::Update {
                collection,
                filter,
                update,
                upsert,
                many,
            } => {
                let keep = if many { Keep::All } else { Keep::Upto(1) };
                let (rows, _) = self.matching(&collection, &filter.parsed, keep)?;
                let mut outcome = UpdateOutcome {
                    matched: rows.len() as u64,
                    ..UpdateOutcome::default()
                };
                for mut row in rows {
                    let changed = update
                        .parsed
                        .apply(&mut row.document, false)
                        .map_err(DocumentError::InvalidUpdate)?;
                    if changed {
                        self.rewrite(&collection, row)?;
                        outcome.modified += 1;
                    }
                }
                if outcome.matched == 0 && upsert {
                    let mut document = filter.parsed.upsert_seed();
                    update
                        .parsed
                        .apply(&mut document, true)
                        .map_err(DocumentError::InvalidUpdate)?;
                    ensure_id(&mut document);
                    outcome.upserted_id = Some(self.insert(&collection, document)?);
                }
                Ok(Output::Updated(outcome))
            }
            Op::Replace {
                collection,
                filter,
                mut replacement,
                upsert,
            } => {
                let (mut rows, _) = self.matching(&collection, &filter.parsed, Keep::Upto(1))?;
                if let Some(row) = rows.pop() {
                    let id = row.document.get("_id").cloned().unwrap_or(Value::Null);
                    if let Some(new) = replacement.get("_id")
                        && !values_equal(new, &id)
                    {
                        return Err(DocumentError::InvalidArgument(
                            "a replacement cannot change `_id`".into(),
                        ));
                    }
                    let mut document = Map::new();
                    document.insert("_id".into(), id);
                    document.extend(replacement.into_iter().filter(|(k, _)| k != "_id"));
                    let changed = document != row.document;
                    if changed {
                        self.rewrite(&collection, Row { document, ..row })?;
                    }
                    return Ok(Output::Updated(UpdateOutcome {
                        matched: 1,
                        modified: u64::from(changed),
                        upserted_id: None,
                    }));
                }
                if !upsert {
                    return Ok(Output::Updated(UpdateOutcome::default()));
                }
                if !replacement.contains_key("_id")
                    && let Some(id) = filter.pinned_id()
                {
                    replacement.insert("_id".into(), id.clone());
                }
                ensure_id(&mut replacement);
                let id = self.insert(&collection, replacement)?;
                Ok(Output::Updated(UpdateOutcome {
                    matched: 0,
                    modified: 0,
                    upserted_id: Some(id),
                }))
            }
            Op::FindOneAndUpdate {
                collection,
                filter,
                update,
                sort,
                projection,
                upsert,
                return_after,
            } => {
                let sorted = sort.as_ref().and_then(|(_, sort)| {
                    plan::sorted_plan(&collection, self.indexes, &filter.parsed, sort.keys())
                });
                let mut rows = match (&sort, sorted) {
                    (_, Some(plan)) => {
                        self.sorted_matching(&collection, &filter.parsed, plan, 1)?
                    }
                    (Some(_), None) => self.matching(&collection, &filter.parsed, Keep::All)?.0,
                    (None, None) => self.matching(&collection, &filter.parsed, Keep::Upto(1))?.0,
                };
                if let Some((_, sort)) = &sort {
                    rows.sort_by(|a, b| {
                        sort.order(
                            &Value::Object(a.document.clone()),
                            &Value::Object(b.document.clone()),
                        )
                    });
                }
                let project = |document: Map<String, Value>| {
                    let value = Value::Object(document);
                    match &projection {
                        Some((_, p)) => p.apply(value),
                        None => value,
                    }
                };
                if let Some(mut row) = rows.into_iter().next() {
                    let before = row.document.clone();
                    let changed = update
                        .parsed
                        .apply(&mut row.document, false)
                        .map_err(DocumentError::InvalidUpdate)?;
                    let after = row.document.clone();
                    if changed {
                        self.rewrite(&collection, row)?;
                    }
                    let shown = if return_after { after } else { before };
                    return Ok(Output::Document(Some(project(shown))));
                }
                if !upsert {
                    return Ok(Output::Document(None));
                }
                let mut document = filter.parsed.upsert_seed();
                update
                    .parsed
                    .apply(&mut document, true)
                    .map_err(DocumentError::InvalidUpdate)?;
                ensure_id(&mut document);
                self.insert(&collection, document.clone())?;
                Ok(Output::Document(return_after.then(|| project(document))))
            }
            Op::Delete {
                collection,
                filter,
                many,
            } => {
                let keep = if many { Keep::All } else { Keep::Upto(1) };
                let (rows, _) = self.matching(&collection, &filter.parsed, keep)?;
                let deleted = rows.len() as u64;
                for row in rows {
                    self.overlay
                        .put(&collection, &row.key, row.base, Some(row.order), None);
                }
                Ok(Output::Count(deleted))
            }
        }
    }

    /// The stored row of `_id` key `key` in this view's connection, without the overlay.
    fn stored(&self, collection: &str, key: &str) -> Result<Option<Base>, DocumentError> {
        self.connection
            .prepare_cached("SELECT seq, version FROM documents WHERE collection = ?1 AND id = ?2")
            .and_then(|mut statement| {
                statement
                    .query_row((collection, key), |row| {
                        Ok(Base {
                            seq: row.get(0)?,
                            version: row.get(1)?,
                        })
                    })
                    .optional()
            })
            .map_err(|e| self.sqlite(e))
    }

    fn insert(
        &mut self,
        collection: &str,
        document: Map<String, Value>,
    ) -> Result<Value, DocumentError> {
        let id = document.get("_id").cloned().unwrap_or(Value::Null);
        let key = id_key(&id).map_err(DocumentError::InvalidArgument)?;
        let base = match self.overlay.get(collection, &key) {
            Some(entry) if entry.document.is_some() => return Err(duplicate_id()),
            Some(entry) => entry.base,
            None => match self.stored(collection, &key)? {
                Some(_) => return Err(duplicate_id()),
                None => None,
            },
        };
        let body = self.checked(collection, &key, &document)?;
        self.overlay
            .put(collection, &key, base, None, Some((document, body)));
        Ok(id)
    }

    fn rewrite(&mut self, collection: &str, row: Row) -> Result<(), DocumentError> {
        let body = self.checked(collection, &row.key, &row.document)?;
        self.overlay.put(
            collection,
            &row.key,
            row.base,
            Some(row.order),
            Some((row.document, body)),
        );
        Ok(())
    }

    /// The document's JSON text, once its indexed fields and size are acceptable and no other
    /// document holds its values of a unique index.
    fn checked(
        &self,
        collection: &str,
        key: &str,
        document: &Map<String, Value>,
    ) -> Result<String, DocumentError> {
        let indexes: Vec<&IndexSpec> = self
            .indexes
            .iter()
            .filter(|i| i.collection == collection)
            .collect();
        let value = Value::Object(document.clone());
        for index in &indexes {
            for (path, _) in &index.keys {
                if get_path(&value, path).is_some_and(|v| v.is_array() || v.is_object()) {
                    return Err(DocumentError::InvalidArgument(format!(
                        "`{path}` is indexed (index `{}`); the embedded store indexes scalar values only, not arrays or objects",
                        index.name
                    )));
                }
            }
        }
        let text = serde_json::to_string(document)
            .map_err(|e| DocumentError::InvalidArgument(e.to_string()))?;
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge(format!(
                "the document would be {} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit",
                text.len()
            )));
        }
        for index in indexes.iter().filter(|i| i.unique) {
            self.check_unique(collection, key, index, &value)?;
        }
        Ok(text)
    }

    /// `duplicate-key` when another document of the view holds `document`'s values of `index`.
    fn check_unique(
        &self,
        collection: &str,
        key: &str,
        index: &IndexSpec,
        document: &Value,
    ) -> Result<(), DocumentError> {
        let wanted: Vec<rusqlite::types::Value> = index
            .keys
            .iter()
            .map(|(path, _)| sql_value(get_path(document, path)))
            .collect();
        let duplicate = || DocumentError::DuplicateKey(format!("unique index `{}`", index.name));
        // Buffered documents of this transaction.
        for ((entry_collection, entry_key), entry) in &self.overlay.entries {
            if entry_collection != collection || entry_key == key {
                continue;
            }
            if let Some(other) = &entry.document {
                let other = Value::Object(other.clone());
                let theirs: Vec<_> = index
                    .keys
                    .iter()
                    .map(|(path, _)| sql_value(get_path(&other, path)))
                    .collect();
                if same_index_values(&theirs, &wanted) {
                    return Err(duplicate());
                }
            }
        }
        // Stored documents the transaction has not changed.
        let conditions: Vec<String> = index
            .keys
            .iter()
            .enumerate()
            .map(|(i, (path, _))| format!("{} = ?{}", index_expression(path), i + 1))
            .collect();
        let sql = format!(
            "SELECT id FROM documents INDEXED BY \"{}\" WHERE collection = '{collection}' AND {}",
            sql_index_name(index),
            conditions.join(" AND ")
        );
        let mut statement = self
            .connection
            .prepare_cached(&sql)
            .map_err(|e| self.sqlite(e))?;
        let mut rows = statement
            .query(params_from_iter(wanted))
            .map_err(|e| self.sqlite(e))?;
        while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
            let other: String = row.get(0).map_err(|e| self.sqlite(e))?;
            if other != key && self.overlay.get(collection, &other).is_none() {
                return Err(duplicate());
            }
        }
        Ok(())
    }

    /// The collection's documents that match, in insertion order, and how many matched.
    fn matching(
        &mut self,
        collection: &str,
        filter: &Filter,
        keep: Keep,
    ) -> Result<(Vec<Row>, u64), DocumentError> {
        super::super::ops::check_collection_name(collection)?;
        let plan = plan::plan(collection, self.indexes, filter);
        let sql = format!("SELECT seq, id, version, body FROM documents {}", plan.sql);
        let mut statement = self
            .connection
            .prepare_cached(&sql)
            .map_err(|e| self.sqlite(e))?;
        let mut rows = statement
            .query(params_from_iter(plan.args))
            .map_err(|e| self.sqlite(e))?;
        let mut out = Vec::new();
        let (mut count, mut bytes) = (0u64, 0usize);
        let mut seen: Vec<String> = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
            if let Keep::Upto(n) = keep
                && out.len() >= n
            {
                break;
            }
            let seq: i64 = row.get(0).map_err(|e| self.sqlite(e))?;
            let key: String = row.get(1).map_err(|e| self.sqlite(e))?;
            let version: i64 = row.get(2).map_err(|e| self.sqlite(e))?;
            let base = Some(Base { seq, version });
            let (document, size) = match self.overlay.get(collection, &key) {
                Some(entry) => {
                    seen.push(key.clone());
                    match &entry.document {
                        Some(document) => {
                            (document.clone(), entry.body.as_ref().map_or(0, String::len))
                        }
                        None => continue,
                    }
                }
                None => {
                    let body: String = row.get(3).map_err(|e| self.sqlite(e))?;
                    match serde_json::from_str::<Value>(&body) {
                        Ok(Value::Object(document)) => (document, body.len()),
                        _ => continue,
                    }
                }
            };
            let value = Value::Object(document);
            if !filter.matches(&value) {
                continue;
            }
            count += 1;
            if matches!(keep, Keep::Count) {
                continue;
            }
            bytes += size;
            if bytes > MAX_MATCHED_BYTES {
                return Err(too_large());
            }
            if let Value::Object(document) = value {
                out.push(Row {
                    order: seq,
                    key,
                    base,
                    document,
                });
            }
        }
        // Buffered documents the scan did not reach: new ones, and changed ones the narrowed
        // scan skipped because their stored version did not match.
        for ((entry_collection, key), entry) in &self.overlay.entries {
            if entry_collection != collection || seen.contains(key) {
                continue;
            }
            let Some(document) = &entry.document else {
                continue;
            };
            let value = Value::Object(document.clone());
            if !filter.matches(&value) {
                continue;
            }
            count += 1;
            if matches!(keep, Keep::Count) {
                continue;
            }
            bytes += entry.body.as_ref().map_or(0, String::len);
            if bytes > MAX_MATCHED_BYTES {
                return Err(too_large());
            }
            out.push(Row {
                order: entry.order,
                key: key.clone(),
                base: entry.base,
                document: document.clone(),
            });
        }
        out.sort_by_key(|row| row.order);
        if let Keep::Upto(n) = keep {
            out.truncate(n);
        }
        Ok((out, count))
    }
}

impl View<'_> {
    /// The matching documents a sorted find with a limit needs: stored rows in index order until
    /// `n` are kept (and the rows tied with the `n`-th on the first sort key), plus every match
    /// among the transaction's own writes. The caller sorts them and takes its `n`.
    fn sorted_matching(
        &mut self,
        collection: &str,
        filter: &Filter,
        plan: plan::SortedPlan,
        n: usize,
    ) -> Result<Vec<Row>, DocumentError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut stored_kept = 0usize;
        let mut boundary: Option<Value> = None;
        'passes: for pass in plan.passes {
            let sql = format!("SELECT seq, id, version, body FROM documents {}", pass.sql);
            let mut statement = self
                .connection
                .prepare_cached(&sql)
                .map_err(|e| self.sqlite(e))?;
            let mut rows = statement
                .query(params_from_iter(pass.args))
                .map_err(|e| self.sqlite(e))?;
            while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
                let key: String = row.get(1).map_err(|e| self.sqlite(e))?;
                if self.overlay.get(collection, &key).is_some() {
                    // The transaction's version is added below with its other writes.
                    continue;
                }
                let seq: i64 = row.get(0).map_err(|e| self.sqlite(e))?;
                let version: i64 = row.get(2).map_err(|e| self.sqlite(e))?;
                let body: String = row.get(3).map_err(|e| self.sqlite(e))?;
                let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(&body) else {
                    continue;
                };
                if !filter.matches(&value) {
                    continue;
                }
                let first = get_path(&value, &plan.path).cloned().unwrap_or(Value::Null);
                if let Some(last) = &boundary
                    && super::super::values::compare(&first, last) != std::cmp::Ordering::Equal
                {
                    break 'passes;
                }
                bytes += body.len();
                if bytes > MAX_MATCHED_BYTES {
                    return Err(too_large());
                }
                if let Value::Object(document) = value {
                    out.push(Row {
                        order: seq,
                        key,
                        base: Some(Base { seq, version }),
                        document,
                    });
                }
                stored_kept += 1;
                if stored_kept >= n && boundary.is_none() {
                    boundary = Some(first);
                }
            }
        }
        for ((entry_collection, key), entry) in &self.overlay.entries {
            if entry_collection != collection {
                continue;
            }
            let Some(document) = &entry.document else {
                continue;
            };
            if !filter.matches(&Value::Object(document.clone())) {
                continue;
            }
            out.push(Row {
                order: entry.order,
                key: key.clone(),
                base: entry.base,
                document: document.clone(),
            });
        }
        out.sort_by_key(|row| row.order);
        Ok(out)
    }
}

fn too_large() -> DocumentError {
    DocumentError::TooLarge(format!(
        "the documents this operation must hold are over {} MiB: narrow the filter, or add a limit",
        MAX_MATCHED_BYTES >> 20
    ))
}

/// Whether two lists of index values are equal as SQLite compares them (`1` equals `1.0`).
fn same_index_values(a: &[rusqlite::types::Value], b: &[rusqlite::types::Value]) -> bool {
    use rusqlite::types::Value as V;
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (V::Integer(x), V::Real(y)) | (V::Real(y), V::Integer(x)) => (*x as f64) == *y,
            (x, y) => x == y,
        })
}

fn duplicate_id() -> DocumentError {
    DocumentError::DuplicateKey("a document with this `_id` exists".into())
}

fn ensure_id(document: &mut Map<String, Value>) {
    if !document.contains_key("_id") {
        document.insert("_id".into(), Value::String(new_object_id()));
    }
}

/// Sort, skip, limit and projection on the matching rows.
fn shape(rows: Vec<Row>, spec: &FindSpec) -> Vec<Value> {
    let mut documents: Vec<Value> = rows
        .into_iter()
        .map(|r| Value::Object(r.document))
        .collect();
    if let Some((_, sort)) = &spec.sort {
        documents.sort_by(|a, b| sort.order(a, b));
    }
    let skip = usize::try_from(spec.skip).unwrap_or(usize::MAX);
    let limit = spec
        .limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(usize::MAX);
    documents
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|document| match &spec.projection {
            Some((_, projection)) => projection.apply(document),
            None => document,
        })
        .collect()
}
