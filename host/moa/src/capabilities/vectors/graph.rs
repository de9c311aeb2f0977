//! The embedded index's HNSW graph behind one type: moa-hnsw for f32 vectors (hnswlib's layout, the
//! faster walk), usearch for the quantized ones (f16, i8), which moa-hnsw does not store.

use super::embedded::{EmbeddedSettings, Quantization};
use super::{Metric, VectorError};
use moa_hnsw::{Hnsw, Params};
use std::borrow::Cow;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use usearch::{Index, IndexOptions, ScalarKind};

/// Which library a graph (and its snapshot file) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GraphKind {
    /// Snapshots written before this field existed were all usearch graphs.
    #[default]
    Usearch,
    MoaHnsw,
}

impl GraphKind {
    /// The kind an index of these settings uses.
    pub fn of(settings: &EmbeddedSettings) -> Self {
        match settings.quantization {
            Quantization::F32 => GraphKind::MoaHnsw,
            Quantization::F16 | Quantization::I8 => GraphKind::Usearch,
        }
    }

    /// The snapshot file's extension.
    pub fn extension(self) -> &'static str {
        match self {
            GraphKind::Usearch => "usearch",
            GraphKind::MoaHnsw => "hnsw",
        }
    }
}

/// An in-memory graph of either kind.
#[allow(clippy::large_enum_variant)] // one per index, and searches skip a pointer hop
pub enum Graph {
    Native(Hnsw),
    Quantized(Index),
}

fn other(context: &str) -> impl Fn(cxx::Exception) -> VectorError + '_ {
    move |e| VectorError::Other(format!("{context}: {e}"))
}

fn native(context: &str) -> impl Fn(moa_hnsw::HnswError) -> VectorError + '_ {
    move |e| VectorError::Other(format!("{context}: {e}"))
}

fn native_params(settings: &EmbeddedSettings, dimensions: usize) -> Params {
    Params {
        m: settings.connectivity,
        ef_construction: settings.expansion_add,
        ..Params::new(
            dimensions,
            match settings.metric {
                Metric::Cosine | Metric::Dot => moa_hnsw::Metric::InnerProduct,
                Metric::Euclidean => moa_hnsw::Metric::L2,
            },
        )
    }
}

fn usearch_options(settings: &EmbeddedSettings, dimensions: usize) -> IndexOptions {
    IndexOptions {
        dimensions,
        // Cosine is inner product over unit vectors (one dot product per distance instead of
        // three, as hnswlib does it), with the same distance `1 - cos`.
        metric: match settings.metric {
            Metric::Cosine => usearch::MetricKind::IP,
            other => other.usearch_kind(),
        },
        quantization: match settings.quantization {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        },
        connectivity: settings.connectivity,
        expansion_add: settings.expansion_add,
        expansion_search: settings.expansion_search,
        multi: false,
    }
}

/// A vector as the graph holds it: unit length for cosine, as given otherwise.
pub fn graph_vector(metric: Metric, vector: &[f32]) -> Cow<'_, [f32]> {
    if metric != Metric::Cosine {
        return Cow::Borrowed(vector);
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 || (norm - 1.0).abs() < 1e-6 {
        Cow::Borrowed(vector)
    } else {
        Cow::Owned(vector.iter().map(|v| v / norm).collect())
    }
}

impl Graph {
    /// An empty graph with room for `capacity` vectors; `threads` is how many usearch thread
    /// slots to reserve.
    pub fn new(
        settings: &EmbeddedSettings,
        dimensions: usize,
        capacity: usize,
        threads: usize,
    ) -> Result<Graph, VectorError> {
        match GraphKind::of(settings) {
            GraphKind::MoaHnsw => {
                let mut graph = Hnsw::new(native_params(settings, dimensions));
                graph.reserve(capacity);
                Ok(Graph::Native(graph))
            }
            GraphKind::Usearch => {
                let graph = Index::new(&usearch_options(settings, dimensions))
                    .map_err(other("creating the graph"))?;
                graph
                    .reserve_capacity_and_threads(capacity.max(1024), threads)
                    .map_err(other("reserving graph memory"))?;
                Ok(Graph::Quantized(graph))
            }
        }
    }

    /// Reads a snapshot file of this index's kind and settings.
    pub fn load(
        settings: &EmbeddedSettings,
        dimensions: usize,
        path: &Path,
        threads: usize,
    ) -> Result<Graph, VectorError> {
        match GraphKind::of(settings) {
            GraphKind::MoaHnsw => {
                let file = std::fs::File::open(path)
                    .map_err(|e| VectorError::Other(format!("{}: {e}", path.display())))?;
                let graph = Hnsw::load(
                    native_params(settings, dimensions),
                    &mut BufReader::with_capacity(1 << 20, file),
                )
                .map_err(native("loading the graph"))?;
                Ok(Graph::Native(graph))
            }
            GraphKind::Usearch => {
                let graph = Index::new(&usearch_options(settings, dimensions))
                    .map_err(other("creating the graph"))?;
                let text = path.to_str().ok_or_else(|| {
                    VectorError::Other(format!("{} is not UTF-8", path.display()))
                })?;
                graph.load(text).map_err(other("loading the graph"))?;
                graph.change_expansion_search(settings.expansion_search);
                graph.change_expansion_add(settings.expansion_add);
                graph
                    .reserve_capacity_and_threads((graph.size() * 2).max(1024), threads)
                    .map_err(other("reserving graph memory"))?;
                Ok(Graph::Quantized(graph))
            }
        }
    }

    /// Writes the graph to `path`.
    pub fn save(&self, path: &Path) -> Result<(), VectorError> {
        match self {
            Graph::Native(graph) => {
                let io = |e: std::io::Error| VectorError::Other(format!("{}: {e}", path.display()));
                let mut out =
                    BufWriter::with_capacity(1 << 20, std::fs::File::create(path).map_err(io)?);
                graph.save(&mut out).map_err(native("saving the graph"))?;
                let file = out
                    .into_inner()
                    .map_err(|e| VectorError::Other(format!("{}: {e}", path.display())))?;
                file.sync_all().map_err(io)?;
                Ok(())
            }
            Graph::Quantized(graph) => {
                let text = path.to_str().ok_or_else(|| {
                    VectorError::Other(format!("{} is not UTF-8", path.display()))
                })?;
                graph
                    .save(text)
                    .map_err(|e| VectorError::Other(format!("saving the graph: {e}")))
            }
        }
    }

    /// Live vectors.
    pub fn size(&self) -> usize {
        match self {
            Graph::Native(graph) => graph.len(),
            Graph::Quantized(graph) => graph.size(),
        }
    }

    pub fn contains(&self, key: u64) -> bool {
        match self {
            Graph::Native(graph) => graph.contains(key),
            Graph::Quantized(graph) => graph.contains(key),
        }
    }

    /// Takes `key` out (nothing when it is not there).
    pub fn remove(&mut self, key: u64) -> Result<(), VectorError> {
        match self {
            Graph::Native(graph) => {
                graph.remove(key);
            }
            Graph::Quantized(graph) => {
                if graph.contains(key) {
                    graph.remove(key).map_err(other("removing a vector"))?;
                }
            }
        }
        Ok(())
    }

    /// Copies the graph's vector of `key` into `out` (unit length for cosine); false when absent.
    pub fn get(&self, key: u64, out: &mut [f32]) -> bool {
        match self {
            Graph::Native(graph) => graph.get(key, out),
            Graph::Quantized(graph) => graph.get(key, out).unwrap_or(0) > 0,
        }
    }

    /// Adds (or replaces) vectors. usearch adds from up to all cores once room is reserved;
    /// moa-hnsw inserts in order on this thread.
    pub fn add(
        &mut self,
        items: &[(u64, Vec<f32>)],
        metric: Metric,
        threads: usize,
    ) -> Result<(), VectorError> {
        match self {
            Graph::Native(graph) => {
                graph.reserve(items.len());
                for (key, vector) in items {
                    graph
                        .insert(*key, &graph_vector(metric, vector))
                        .map_err(native("adding a vector"))?;
                }
                Ok(())
            }
            Graph::Quantized(graph) => {
                for (key, _) in items {
                    if graph.contains(*key) {
                        graph.remove(*key).map_err(other("replacing a vector"))?;
                    }
                }
                add_parallel(graph, items, threads, metric)
            }
        }
    }

    /// The `wanted` nearest (key, distance) pairs, nearest first, that `accept` lets through
    /// (inside the walk).
    pub fn search(
        &self,
        query: &[f32],
        wanted: usize,
        expansion: usize,
        accept: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<(u64, f32)>, VectorError> {
        match self {
            Graph::Native(graph) => graph
                .search(
                    query,
                    wanted,
                    expansion.max(wanted),
                    accept.unwrap_or(&|_| true),
                )
                .map_err(native("searching")),
            Graph::Quantized(graph) => {
                let found = match accept {
                    None => graph.search(query, wanted),
                    Some(accept) => graph.filtered_search(query, wanted, accept),
                }
                .map_err(other("searching"))?;
                Ok(found.keys.into_iter().zip(found.distances).collect())
            }
        }
    }

    /// Rebuilds a moa-hnsw graph whose removed waypoints outnumber its live items (they cost
    /// memory and hops); true when it did. usearch graphs are left as they are.
    pub fn compact_if_sparse(&mut self) -> Result<bool, VectorError> {
        let Graph::Native(graph) = self else {
            return Ok(false);
        };
        if graph.removed() <= graph.len().max(1024) {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let removed = graph.removed();
        *graph = graph.compacted().map_err(native("compacting the graph"))?;
        tracing::info!(
            items = graph.len(),
            removed,
            seconds = started.elapsed().as_secs_f64(),
            "vector graph rebuilt without its removed items"
        );
        Ok(true)
    }
}

/// Adds vectors to a usearch graph from up to all cores (its adds are thread-safe once room is
/// reserved).
fn add_parallel(
    graph: &Index,
    items: &[(u64, Vec<f32>)],
    threads: usize,
    metric: Metric,
) -> Result<(), VectorError> {
    let needed = graph.size() + items.len();
    if needed > graph.capacity() {
        graph
            .reserve_capacity_and_threads(needed.max(graph.capacity() * 2).max(1024), threads)
            .map_err(other("reserving graph memory"))?;
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(threads.saturating_sub(1))
        .max(1);
    let add = |part: &[(u64, Vec<f32>)]| -> Result<(), VectorError> {
        for (key, vector) in part {
            graph
                .add(*key, &graph_vector(metric, vector))
                .map_err(other("adding a vector"))?;
        }
        Ok(())
    };
    if items.len() < 64 || workers == 1 {
        return add(items);
    }
    let chunk = items.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || add(part)))
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| VectorError::Other("adding vectors panicked".into()))??;
        }
        Ok(())
    })
}
