//! Vector indexes (`moa:vectors`): upsert vectors with JSON metadata, and search for the nearest
//! ones with a metadata filter that applies inside the search (MongoDB's filter language).
//!
//! ```ignore
//! use moa_sdk::vectors::{Index, Item, Search};
//! use serde_json::json;
//!
//! let index = Index::open("reviews")?;
//! index.upsert(&[Item::new("r1", embedding, json!({"store_id": "10001", "rating": 9}))])?;
//! let nearest = index.search(&Search::new(question, 5).filter(json!({"store_id": "10001"})))?;
//! ```

use crate::bindings::moa::vectors::{types, vectors as wit};
use serde_json::Value;

pub use types::{Error, IndexInfo, Metric};

/// The error's kind as the WIT names it (`dimension-mismatch`, ...) and its message.
pub fn kind_and_message(error: &Error) -> (&'static str, &str) {
    match error {
        Error::AccessDenied(m) => ("access-denied", m),
        Error::DimensionMismatch(m) => ("dimension-mismatch", m),
        Error::InvalidFilter(m) => ("invalid-filter", m),
        Error::InvalidArgument(m) => ("invalid-argument", m),
        Error::Unavailable(m) => ("unavailable", m),
        Error::Other(m) => ("other", m),
    }
}

/// One stored vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub vector: Vec<f32>,
    /// A JSON object; its fields are what filters test.
    pub metadata: Value,
}

impl Item {
    pub fn new(id: impl Into<String>, vector: Vec<f32>, metadata: Value) -> Self {
        Item {
            id: id.into(),
            vector,
            metadata,
        }
    }
}

/// A search: the `limit` nearest items matching the filter.
#[derive(Debug, Clone)]
pub struct Search {
    vector: Vec<f32>,
    limit: u32,
    filter: Option<Value>,
    candidates: Option<u32>,
    include_metadata: bool,
}

impl Search {
    pub fn new(vector: Vec<f32>, limit: u32) -> Self {
        Search {
            vector,
            limit,
            filter: None,
            candidates: None,
            include_metadata: false,
        }
    }

    /// Only items whose metadata matches, e.g. `json!({"store_id": "10001"})`.
    pub fn filter(mut self, filter: Value) -> Self {
        self.filter = Some(filter);
        self
    }

    /// How many candidates the approximate search visits (more: better recall, slower).
    pub fn candidates(mut self, candidates: u32) -> Self {
        self.candidates = Some(candidates);
        self
    }

    /// Return each match's metadata too.
    pub fn with_metadata(mut self) -> Self {
        self.include_metadata = true;
        self
    }
}

/// One result, nearest first; higher scores are nearer.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub id: String,
    pub score: f32,
    pub metadata: Option<Value>,
}

/// An open vector index.
pub struct Index(wit::Index);

impl Index {
    /// Opens the index `label`, which the component's `vector_indexes` must list.
    pub fn open(label: &str) -> Result<Self, Error> {
        wit::Index::open(label).map(Index)
    }

    /// Inserts or replaces items by id, all or none.
    pub fn upsert(&self, items: &[Item]) -> Result<(), Error> {
        let items: Vec<types::Item> = items
            .iter()
            .map(|item| types::Item {
                id: item.id.clone(),
                vector: item.vector.clone(),
                metadata: item.metadata.to_string(),
            })
            .collect();
        self.0.upsert(&items)
    }

    /// Deletes items by id; returns how many existed.
    pub fn delete(&self, ids: &[String]) -> Result<u64, Error> {
        self.0.delete(ids)
    }

    pub fn get(&self, id: &str) -> Result<Option<Item>, Error> {
        Ok(self.0.get(id)?.map(|item| Item {
            metadata: serde_json::from_str(&item.metadata).unwrap_or(Value::Null),
            id: item.id,
            vector: item.vector,
        }))
    }

    pub fn search(&self, search: &Search) -> Result<Vec<Match>, Error> {
        let request = types::SearchRequest {
            vector: search.vector.clone(),
            limit: search.limit,
            filter: search.filter.as_ref().map(Value::to_string),
            candidates: search.candidates,
            include_metadata: search.include_metadata,
        };
        Ok(self
            .0
            .search(&request)?
            .into_iter()
            .map(|m| Match {
                id: m.id,
                score: m.score,
                metadata: m
                    .metadata
                    .map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)),
            })
            .collect())
    }

    pub fn info(&self) -> Result<IndexInfo, Error> {
        self.0.info()
    }
}
