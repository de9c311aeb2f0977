//! moa-hnsw on cached review embeddings, with hnswlib's protocol (scripts/model/bench_hnswlib.py):
//! the last Q vectors are queries, the rest are indexed (M 16, ef_construction 128, one thread);
//! recall@10 against exact search and single-query QPS over the same sweep of ef.
//!
//! usage: bench_hnsw DIR [QUERIES] [K]   (DIR holds vectors.f32 and meta.jsonl from embed_reviews)

use moa_hnsw::{Hnsw, Metric, Params, distance};
use std::io::BufRead;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        return Err("usage: bench_hnsw DIR [QUERIES] [K]".into());
    };
    let queries: usize = args.get(1).map_or(Ok(1000), |q| q.parse())?;
    let k: usize = args.get(2).map_or(Ok(10), |q| q.parse())?;
    let count = std::io::BufReader::new(std::fs::File::open(format!("{dir}/meta.jsonl"))?)
        .lines()
        .count();
    let raw = std::fs::read(format!("{dir}/vectors.f32"))?;
    let floats: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let dims = floats.len() / count.max(1);
    let vectors: Vec<Vec<f32>> = floats
        .chunks_exact(dims)
        .map(|v| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter().map(|x| x / norm).collect()
        })
        .collect();
    let n = vectors.len() - queries;
    eprintln!(
        "{n} vectors of {dims} dimensions, {queries} queries; kernels {}",
        distance::kernel_name()
    );

    let dot = distance::dot_kernel();
    let truth: Vec<Vec<u64>> = vectors[n..]
        .iter()
        .map(|q| {
            let mut scored: Vec<(f32, usize)> =
                (0..n).map(|i| (1.0 - dot(q, &vectors[i]), i)).collect();
            scored.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
            scored.truncate(k);
            scored.into_iter().map(|(_, i)| i as u64).collect()
        })
        .collect();

    let mut graph = Hnsw::new(Params::new(dims, Metric::InnerProduct));
    graph.reserve(n);
    let started = Instant::now();
    for (i, v) in vectors[..n].iter().enumerate() {
        graph.insert(i as u64, v)?;
    }
    println!(
        "hnsw build_s={:.1} n={n} dim={dims} threads=1",
        started.elapsed().as_secs_f64()
    );
    for ef in [10, 16, 24, 32, 48, 64, 96, 128, 192, 256] {
        let ef = ef.max(k);
        let mut hits = 0usize;
        let started = Instant::now();
        for (q, want) in vectors[n..].iter().zip(&truth) {
            let found = graph.search(q, k, ef, &|_| true)?;
            hits += found.iter().filter(|(key, _)| want.contains(key)).count();
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "hnsw ef={ef} recall10={:.4} qps={:.0}",
            hits as f64 / (queries * k) as f64,
            queries as f64 / seconds
        );
    }
    Ok(())
}
