//! What the review benchmarks share: the embedded reviews `embed_reviews` writes (`vectors.f32`,
//! little-endian rows, and `meta.jsonl`, one review per line), filling an index with them, and
//! their command-line numbers.

use moa::capabilities::vectors::{VectorBackend, VectorItem};
use serde_json::{Map, Value, json};
use std::io::BufRead;

/// Embedded reviews: each review's metadata and its vector.
pub struct ReviewVectors {
    pub meta: Vec<Value>,
    pub vectors: Vec<Vec<f32>>,
    pub dims: usize,
}

/// Reads `dir/meta.jsonl` and `dir/vectors.f32`.
pub fn load(dir: &str) -> anyhow::Result<ReviewVectors> {
    let meta: Vec<Value> =
        std::io::BufReader::new(std::fs::File::open(format!("{dir}/meta.jsonl"))?)
            .lines()
            .map(|l| Ok(serde_json::from_str(&l?)?))
            .collect::<anyhow::Result<_>>()?;
    let raw = std::fs::read(format!("{dir}/vectors.f32"))?;
    anyhow::ensure!(!meta.is_empty(), "{dir}/meta.jsonl holds no review");
    let dims = raw.len() / 4 / meta.len();
    anyhow::ensure!(
        dims > 0 && raw.len() == dims * 4 * meta.len(),
        "{dir}/vectors.f32 does not hold one vector per review of meta.jsonl"
    );
    let vectors = raw
        .chunks_exact(dims * 4)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect();
    Ok(ReviewVectors {
        meta,
        vectors,
        dims,
    })
}

/// The value after `--name` in `args`, or `default`.
pub fn number(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|at| args.get(at + 1)?.parse().ok())
        .unwrap_or(default)
}

impl ReviewVectors {
    /// Upserts the first `n` reviews into `index` (id = position, metadata = the store id), as
    /// the review job fills it.
    pub async fn fill(&self, index: &dyn VectorBackend, n: usize) -> anyhow::Result<()> {
        for start in (0..n).step_by(4096) {
            let items = (start..(start + 4096).min(n))
                .map(|i| VectorItem {
                    id: i.to_string(),
                    vector: self.vectors[i].clone(),
                    metadata: json!({"store_id": self.meta[i]["store_id"]})
                        .as_object()
                        .cloned()
                        .unwrap_or_else(Map::new),
                })
                .collect();
            index
                .upsert(items)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }
}
