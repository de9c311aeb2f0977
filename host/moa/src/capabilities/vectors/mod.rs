//! Vector search capability: `moa:vectors` (named indexes of vectors with JSON metadata, searched
//! with the metadata filter inside the search) over the embedded HNSW index or MongoDB Atlas.
//!
//! `[vector_index.<label>]` in the runtime config picks the backend; without one, the label gets
//! an embedded index under the app's state directory. Components are granted indexes by label
//! (`vector_indexes = ["reviews"]`).

mod atlas;
mod embedded;
mod graph;
mod host;
mod metric;

use crate::capabilities::documents::Filter;
use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::runtime_config::ValueSource;
use anyhow::{Context as _, Result};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

pub use embedded::{EmbeddedIndex, EmbeddedSettings, Quantization};
pub use host::{Vectors, VectorsView};
pub use metric::Metric;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/vectors",
        imports: { default: async | trappable },
        with: {
            "moa:vectors/vectors.index": super::host::OpenIndex,
        },
    });
}

/// Longest id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Largest `limit` of a search.
pub const MAX_LIMIT: usize = 1000;
/// Largest `candidates` of a search (Atlas's cap on `numCandidates`).
pub const MAX_CANDIDATES: usize = 10_000;

/// Why a vector operation failed; a failed operation changed nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VectorError {
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("dimension mismatch: {0}")]
    DimensionMismatch(String),
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// One stored vector with its metadata object.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorItem {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Map<String, Value>,
}

/// A search, checked.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub vector: Vec<f32>,
    pub limit: usize,
    /// The filter as sent (Atlas runs it) and parsed (the embedded index runs it).
    pub filter: Option<(Value, Filter)>,
    pub candidates: Option<usize>,
    pub include_metadata: bool,
}

/// One search result; higher scores are nearer (Atlas's `vectorSearchScore` scale).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorMatch {
    pub id: String,
    pub score: f32,
    pub metadata: Option<Map<String, Value>>,
}

/// What an index is.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexInfo {
    pub dimensions: usize,
    pub metric: Metric,
    pub count: u64,
    pub backend: &'static str,
}

/// A backend holding one index.
#[async_trait]
pub trait VectorBackend: Send + Sync {
    /// Inserts or replaces items by id, all or none; durable and searchable once it returns.
    async fn upsert(&self, items: Vec<VectorItem>) -> Result<(), VectorError>;
    /// Deletes items by id; returns how many existed.
    async fn delete(&self, ids: Vec<String>) -> Result<u64, VectorError>;
    async fn get(&self, id: &str) -> Result<Option<VectorItem>, VectorError>;
    async fn search(&self, request: SearchRequest) -> Result<Vec<VectorMatch>, VectorError>;
    async fn info(&self) -> Result<IndexInfo, VectorError>;
}

/// Checks an id as every backend does.
pub fn check_id(id: &str) -> Result<(), VectorError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(VectorError::InvalidArgument(format!(
            "an id is 1 to {MAX_ID_BYTES} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

/// Checks a vector's values (finite) and, when the index has them, its dimensions.
pub fn check_vector(vector: &[f32], dimensions: Option<usize>) -> Result<(), VectorError> {
    if vector.is_empty() {
        return Err(VectorError::DimensionMismatch(
            "a vector has at least one value".into(),
        ));
    }
    if let Some(expected) = dimensions
        && vector.len() != expected
    {
        return Err(VectorError::DimensionMismatch(format!(
            "the index holds {expected}-dimensional vectors, got {}",
            vector.len()
        )));
    }
    if let Some(at) = vector.iter().position(|v| !v.is_finite()) {
        return Err(VectorError::DimensionMismatch(format!(
            "value {at} of the vector is {} (vectors hold finite numbers)",
            vector[at]
        )));
    }
    Ok(())
}

/// Parses an item's metadata: a JSON object whose keys do not start with `$` and hold no `_id`.
pub fn parse_metadata(text: &str) -> Result<Map<String, Value>, VectorError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        VectorError::InvalidArgument(format!(
            "metadata is not JSON ({e}); send an object such as {{\"store_id\": \"10001\"}}"
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(VectorError::InvalidArgument(
            "metadata is a JSON object, e.g. {\"store_id\": \"10001\"}".into(),
        ));
    };
    if let Some(bad) = fields.keys().find(|k| k.starts_with('$') || *k == "_id") {
        return Err(VectorError::InvalidArgument(format!(
            "metadata field `{bad}` is reserved (no `_id`, nothing starting with `$`)"
        )));
    }
    Ok(fields)
}

/// Parses and checks a search request's parts.
pub fn parse_search(
    vector: Vec<f32>,
    limit: u32,
    filter: Option<&str>,
    candidates: Option<u32>,
    include_metadata: bool,
) -> Result<SearchRequest, VectorError> {
    let limit = limit as usize;
    if limit == 0 || limit > MAX_LIMIT {
        return Err(VectorError::InvalidArgument(format!(
            "limit is 1 to {MAX_LIMIT}, got {limit}"
        )));
    }
    let candidates = candidates.map(|c| c as usize);
    if let Some(c) = candidates
        && (c < limit || c > MAX_CANDIDATES)
    {
        return Err(VectorError::InvalidArgument(format!(
            "candidates is at least limit ({limit}) and at most {MAX_CANDIDATES}, got {c}"
        )));
    }
    check_vector(&vector, None)?;
    let filter = match filter {
        None => None,
        Some(text) => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| VectorError::InvalidFilter(format!("the filter is not JSON: {e}")))?;
            let parsed = Filter::parse(&value).map_err(VectorError::InvalidFilter)?;
            Some((value, parsed))
        }
    };
    Ok(SearchRequest {
        vector,
        limit,
        filter,
        candidates,
        include_metadata,
    })
}

/// `[vector_index.<label>]` in the runtime config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum IndexConfig {
    /// moa's own HNSW index on disk (the default).
    Embedded {
        /// The index directory [default: `<state dir>/vectors/<label>`].
        path: Option<PathBuf>,
        #[serde(default)]
        metric: Metric,
        /// Fixed by the first upsert when absent.
        dimensions: Option<usize>,
        /// HNSW graph degree (default 16).
        connectivity: Option<usize>,
        /// Candidates visited while inserting (default 128).
        expansion_add: Option<usize>,
        /// Candidates visited while searching, unless a request asks for more (default 64).
        expansion_search: Option<usize>,
        /// A filter that matches at most this many items is searched exactly (default 5000).
        exact_search_below: Option<usize>,
        /// How the graph stores vectors: "f32" (default), "f16" or "i8".
        #[serde(default)]
        quantization: Quantization,
        /// Metadata fields whose values the planner indexes (default: every top-level field).
        filter_fields: Option<Vec<String>>,
        /// How often a changed graph is written to disk (default 30000).
        snapshot_interval_ms: Option<u64>,
    },
    /// MongoDB Atlas Vector Search (`$vectorSearch`) on a collection.
    Atlas {
        /// `mongodb+srv://...`; put it in the environment (`{ env = "..." }`).
        url: ValueSource,
        database: String,
        collection: String,
        /// The Atlas Vector Search index name.
        index: String,
        /// The document field holding the vector (default `embedding`).
        path: Option<String>,
        dimensions: usize,
        #[serde(default)]
        metric: Metric,
        /// Fields declared `"type": "filter"` in the index definition; filters may use only these.
        #[serde(default)]
        filter_fields: Vec<String>,
        timeout_ms: Option<u64>,
    },
}

/// Every index of the app, by label.
pub struct VectorIndexes {
    indexes: BTreeMap<String, Arc<dyn VectorBackend>>,
    /// The embedded ones again, for snapshots at shutdown.
    embedded: BTreeMap<String, Arc<EmbeddedIndex>>,
}

impl VectorIndexes {
    pub fn index(&self, label: &str) -> Option<&Arc<dyn VectorBackend>> {
        self.indexes.get(label)
    }

    /// Writes every embedded index's changed graph to disk (at shutdown).
    pub async fn close(&self) {
        for (label, embedded) in &self.embedded {
            let index = embedded.clone();
            match tokio::task::spawn_blocking(move || index.snapshot()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(index = %label, %error, "vector index snapshot at shutdown failed; the next start replays the changes")
                }
                Err(error) => {
                    tracing::warn!(index = %label, %error, "vector index snapshot panicked")
                }
            }
        }
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<Self> {
        let describe = cx.runtime_config.describe();
        let configs: BTreeMap<String, IndexConfig> = cx
            .runtime_config
            .section("vector_index")?
            .unwrap_or_default();
        let mut labels: BTreeSet<String> = configs.keys().cloned().collect();
        for component in cx.app.manifest.components.values() {
            for label in component.string_list(&cx.app.path, "vector_indexes")? {
                labels.insert(label.value);
            }
        }
        let mut indexes: BTreeMap<String, Arc<dyn VectorBackend>> = BTreeMap::new();
        let mut embedded = BTreeMap::new();
        for label in labels {
            if label.is_empty()
                || !label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                anyhow::bail!(
                    "vector index label `{label}`: use letters, digits, `_` and `-` (it names a directory)"
                );
            }
            let default_dir = cx.state_dir.join("vectors").join(&label);
            let config = configs.get(&label).cloned();
            let backend: Arc<dyn VectorBackend> = match config {
                None => {
                    let settings = EmbeddedSettings::new(default_dir);
                    let index = tokio::task::spawn_blocking(move || EmbeddedIndex::open(settings))
                        .await
                        .context("opening a vector index panicked")??;
                    index.spawn_snapshots();
                    embedded.insert(label.clone(), index.clone());
                    Arc::new(index)
                }
                Some(IndexConfig::Embedded {
                    path,
                    metric,
                    dimensions,
                    connectivity,
                    expansion_add,
                    expansion_search,
                    exact_search_below,
                    quantization,
                    filter_fields,
                    snapshot_interval_ms,
                }) => {
                    let dir = match path {
                        Some(p) if p.is_relative() => cx
                            .runtime_config
                            .base_dir()
                            .unwrap_or(std::path::Path::new("."))
                            .join(p),
                        Some(p) => p,
                        None => default_dir,
                    };
                    let mut settings = EmbeddedSettings::new(dir);
                    settings.metric = metric;
                    settings.dimensions = dimensions;
                    settings.connectivity = connectivity.unwrap_or(settings.connectivity);
                    settings.expansion_add = expansion_add.unwrap_or(settings.expansion_add);
                    settings.expansion_search =
                        expansion_search.unwrap_or(settings.expansion_search);
                    settings.exact_search_below =
                        exact_search_below.unwrap_or(settings.exact_search_below);
                    settings.quantization = quantization;
                    settings.filter_fields = filter_fields;
                    if let Some(ms) = snapshot_interval_ms {
                        settings.snapshot_interval = Duration::from_millis(ms.max(100));
                    }
                    let index = tokio::task::spawn_blocking(move || EmbeddedIndex::open(settings))
                        .await
                        .context("opening a vector index panicked")?
                        .with_context(|| format!("{describe}: [vector_index.{label}]"))?;
                    index.spawn_snapshots();
                    embedded.insert(label.clone(), index.clone());
                    Arc::new(index)
                }
                Some(IndexConfig::Atlas {
                    url,
                    database,
                    collection,
                    index,
                    path,
                    dimensions,
                    metric,
                    filter_fields,
                    timeout_ms,
                }) => {
                    let settings = atlas::AtlasSettings {
                        url: url.resolve(&format!("[vector_index.{label}] url"))?,
                        database,
                        collection,
                        index,
                        path: path.unwrap_or_else(|| "embedding".into()),
                        dimensions,
                        metric,
                        filter_fields,
                        timeout: Duration::from_millis(timeout_ms.unwrap_or(5000)),
                    };
                    Arc::new(
                        atlas::AtlasIndex::connect(settings)
                            .await
                            .with_context(|| format!("{describe}: [vector_index.{label}]"))?,
                    )
                }
            };
            indexes.insert(label, backend);
        }
        Ok(VectorIndexes { indexes, embedded })
    }
}

/// What one component may use: the indexes its `vector_indexes` lists.
#[derive(Clone)]
pub struct VectorsGrant {
    indexes: Arc<VectorIndexes>,
    labels: Arc<[String]>,
}

impl VectorsGrant {
    fn index(&self, label: &str) -> Result<Arc<dyn VectorBackend>, VectorError> {
        if !self.labels.iter().any(|l| l == label) {
            return Err(VectorError::AccessDenied(format!(
                "vector index `{label}` is not in this component's vector_indexes"
            )));
        }
        self.indexes
            .index(label)
            .cloned()
            .ok_or_else(|| VectorError::Other(format!("vector index `{label}` is not configured")))
    }
}

/// `moa:vectors/vectors` over the indexes of `[vector_index.<label>]` (embedded by default).
pub struct VectorsCapability;

impl Capability for VectorsCapability {
    const NAME: &'static str = "vectors";
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &["vector_index"];
    const MANIFEST_KEYS: &'static [&'static str] = &["vector_indexes"];
    const IMPORTS: &'static [&'static str] = &["moa:vectors/vectors@0.1.0"];

    type AppState = Arc<VectorIndexes>;
    type ComponentState = VectorsGrant;
    type InstanceState = VectorsGrant;
    type View<'a> = VectorsView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        bindings::moa::vectors::vectors::add_to_linker::<T, Vectors>(linker, T::capability_view)?;
        bindings::moa::vectors::types::add_to_linker::<T, Vectors>(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<Arc<VectorIndexes>> {
        Ok(Arc::new(VectorIndexes::configure(cx).await?))
    }

    fn component(indexes: &Arc<VectorIndexes>, cx: &ComponentContext<'_>) -> Result<VectorsGrant> {
        Ok(VectorsGrant {
            indexes: indexes.clone(),
            labels: cx.strings("vector_indexes")?.into(),
        })
    }

    fn instance(grant: &VectorsGrant) -> VectorsGrant {
        grant.clone()
    }

    fn view<'a>(parts: InstanceParts<'a, VectorsGrant>) -> VectorsView<'a> {
        VectorsView {
            grant: parts.state,
            table: parts.table,
            invocation: parts.invocation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_any_backend_sees_them() {
        assert!(matches!(
            parse_search(vec![1.0], 0, None, None, false),
            Err(VectorError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_search(vec![1.0], 10, None, Some(5), false),
            Err(VectorError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_search(vec![f32::NAN], 10, None, None, false),
            Err(VectorError::DimensionMismatch(_))
        ));
        assert!(matches!(
            parse_search(
                vec![1.0],
                10,
                Some("{\"a\": {\"$regex\": \"x\"}}"),
                None,
                false
            ),
            Err(VectorError::InvalidFilter(_))
        ));
        assert!(matches!(
            parse_search(vec![1.0], 10, Some("[1]"), None, false),
            Err(VectorError::InvalidFilter(_))
        ));
        let ok = parse_search(vec![1.0, 0.0], 10, Some("{\"s\": \"a\"}"), Some(200), true)
            .expect("a good request parses");
        assert_eq!((ok.limit, ok.candidates), (10, Some(200)));
    }

    #[test]
    fn metadata_is_an_object_without_reserved_fields() {
        assert!(parse_metadata("{\"store_id\": \"1\", \"rating\": 9}").is_ok());
        for bad in ["[1]", "nope", "{\"_id\": 1}", "{\"$set\": 1}", "3"] {
            assert!(parse_metadata(bad).is_err(), "{bad} should be refused");
        }
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(513)).is_err());
        assert!(check_vector(&[1.0, 2.0], Some(3)).is_err());
    }
}
