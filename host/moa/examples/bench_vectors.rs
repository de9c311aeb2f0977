//! moa's embedded vector index on real review embeddings: build time, memory, and recall@10 and
//! single-query QPS over a sweep of search candidates (ef), against exact search on the same vectors;
//! plus a store-filtered search's exactness. `scripts/bench-vectors.sh` runs it beside hnswlib.
//!
//! usage: bench_vectors DIR [--queries Q] [--k K] [--quantization f32|f16|i8]
//!   DIR holds vectors.f32 and meta.jsonl (embed_reviews); the last Q vectors are the queries and
//!   are not indexed. Prints `moa ef=… recall10=… qps=…` lines and a `moa build_s=… rss_mb=…` line.

#[path = "support/review_vectors.rs"]
mod review_vectors;

use moa::capabilities::vectors::{
    EmbeddedIndex, EmbeddedSettings, Metric, Quantization, VectorBackend, parse_search,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The `k` nearest of `candidates` to `query` by cosine distance.
fn exact(
    vectors: &[Vec<f32>],
    candidates: impl Iterator<Item = usize>,
    query: &[f32],
    k: usize,
) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = candidates
        .map(|i| (Metric::Cosine.distance(query, &vectors[i]), i))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        anyhow::bail!("usage: bench_vectors DIR [--queries Q] [--k K]");
    };
    let (queries, k) = (
        review_vectors::number(&args, "--queries", 1000),
        review_vectors::number(&args, "--k", 10),
    );
    let loaded = review_vectors::load(dir)?;
    let (meta, vectors, dims) = (&loaded.meta, &loaded.vectors, loaded.dims);
    let n = vectors.len() - queries;
    eprintln!(
        "{n} vectors of {dims} dimensions, {queries} queries; usearch {} (SIMD compiled: {}; available: {})",
        usearch::version(),
        usearch::hardware_acceleration_compiled(),
        usearch::hardware_acceleration_available()
    );

    {
        // Which distance kernels a graph of these options runs (numkong's dynamic dispatch).
        let probe = usearch::Index::new(&usearch::IndexOptions {
            dimensions: dims,
            metric: usearch::MetricKind::IP,
            quantization: usearch::ScalarKind::F32,
            ..Default::default()
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "usearch kernels for f32 inner product: {}",
            probe.hardware_acceleration()
        );
    }
    let work = tempfile::tempdir()?;
    let mut settings = EmbeddedSettings::new(work.path().join("index"));
    settings.metric = Metric::Cosine;
    // The requests' `candidates` set the search breadth (ef) in the sweep, not the default floor of 64.
    settings.expansion_search = 10;
    settings.quantization = match args
        .iter()
        .position(|a| a == "--quantization")
        .and_then(|at| args.get(at + 1))
    {
        None => Quantization::F32,
        Some(kind) => serde_json::from_value(json!(kind))
            .map_err(|_| anyhow::anyhow!("--quantization is f32, f16 or i8, not {kind}"))?,
    };
    let index = EmbeddedIndex::open(settings)?;
    let backend: Arc<dyn VectorBackend> = Arc::new(index.clone());
    let rss_before = rss_mb();
    let started = Instant::now();
    loaded.fill(backend.as_ref(), n).await?;
    let build_s = started.elapsed().as_secs_f64();
    let rss = rss_mb();
    println!(
        "moa build_s={build_s:.1} rss_mb={rss:.0} index_rss_mb={:.0} n={n} dim={dims}",
        rss - rss_before
    );

    let truth: Vec<Vec<usize>> = (n..vectors.len())
        .map(|q| exact(vectors, 0..n, &vectors[q], k))
        .collect();
    for ef in [10, 16, 24, 32, 48, 64, 96, 128, 192, 256] {
        let ef = ef.max(k);
        let mut hits = 0usize;
        let started = Instant::now();
        for (q, want) in (n..vectors.len()).zip(&truth) {
            let request = parse_search(vectors[q].clone(), k as u32, None, Some(ef as u32), false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let (found, _) = index
                .search_blocking(&request)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            hits += found
                .iter()
                .filter(|m| m.id.parse::<usize>().is_ok_and(|i| want.contains(&i)))
                .count();
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "moa ef={ef} recall10={:.4} qps={:.0}",
            hits as f64 / (queries * k) as f64,
            queries as f64 / seconds
        );
    }

    // Filtered: each query restricted to one store (the store of a random indexed review): the
    // answer must be the exact filtered top-k.
    let mut exact_hits = 0usize;
    let mut wanted = 0usize;
    let checks = queries.min(200);
    for (round, q) in (n..n + checks).enumerate() {
        let store = meta[(round * 7919) % n]["store_id"].clone();
        let members: Vec<usize> = (0..n).filter(|i| meta[*i]["store_id"] == store).collect();
        let want = exact(vectors, members.into_iter(), &vectors[q], k);
        let filter = json!({"store_id": store}).to_string();
        let request = parse_search(vectors[q].clone(), k as u32, Some(&filter), None, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (found, _) = index
            .search_blocking(&request)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        wanted += want.len();
        exact_hits += found
            .iter()
            .filter(|m| m.id.parse::<usize>().is_ok_and(|i| want.contains(&i)))
            .count();
    }
    println!(
        "moa filtered_recall10={:.4} checks={checks}",
        exact_hits as f64 / wanted.max(1) as f64
    );
    Ok(())
}
