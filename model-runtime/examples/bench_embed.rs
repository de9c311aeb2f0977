//! Embedding throughput, two ways over the same model file and thread budget (scripts/bench-embed.sh
//! runs both and the Python baseline):
//!
//!   bench_embed bare TEXTS_FILE --threads T [--batch 32] [--sorted]
//!       the limit: one ONNX Runtime session in this process, consecutive batches of `--batch`
//!       texts (tokenize, one graph run, pooling), no server, no batcher; `--sorted` tokenizes every
//!       text first and runs the batches in order of token count (offline bulk embedding's best case:
//!       almost no padding), tokenizing and sorting inside the clock
//!   bench_embed grpc TEXTS_FILE --endpoint URL --concurrency C
//!       C clients each sending single-text Embed calls to a running moa-model-runtime
//!
//! TEXTS_FILE has one text per line. Each prints one `key=value` line.

use moa_model_runtime::{
    ClientSettings, EmbedCall, EmbedOptions, Embedder, EmbedderSettings, RemoteRuntime,
    RuntimeSettings, client, init_onnxruntime,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(file)) = (args.first(), args.get(1)) else {
        anyhow::bail!(
            "usage: bench_embed bare TEXTS_FILE --threads T [--batch 32] | grpc TEXTS_FILE --endpoint URL --concurrency C"
        );
    };
    let texts: Vec<String> = std::fs::read_to_string(file)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    match mode.as_str() {
        "bare" => bare(&args, texts),
        "grpc" => grpc(&args, texts).await,
        other => anyhow::bail!("unknown mode `{other}` (bare or grpc)"),
    }
}

fn bare(args: &[String], texts: Vec<String>) -> anyhow::Result<()> {
    let settings = RuntimeSettings::from_environment();
    let threads: usize = flag(args, "--threads").map_or(Ok(2), |t| t.parse())?;
    let batch: usize = flag(args, "--batch").map_or(Ok(32), |t| t.parse())?;
    let environment = init_onnxruntime(&settings.onnxruntime_library)?;
    let embedder = Embedder::load(
        &environment,
        &settings.model_dir,
        EmbedderSettings {
            intra_threads: threads,
            ..Default::default()
        },
    )?;
    let options = EmbedOptions {
        truncate: true,
        ..Default::default()
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let sorted = args.iter().any(|a| a == "--sorted");
    // Real (unpadded) tokens of all texts, for FLOP counts; not timed.
    let tokens: usize = embedder
        .tokenize(&refs, &options)?
        .iter()
        .map(Vec::len)
        .sum();
    // Warm-up: the first runs allocate and pick kernels.
    embedder.embed(&refs[..batch.min(refs.len())], &options)?;
    let normalize = options.normalize.unwrap_or(embedder.config().normalize);
    let started = Instant::now();
    let mut done = 0;
    if sorted {
        let mut ids = embedder.tokenize(&refs, &options)?;
        ids.sort_by_key(Vec::len);
        for chunk in ids.chunks(batch) {
            done += embedder.embed_tokens(chunk, normalize)?.len();
        }
    } else {
        for chunk in refs.chunks(batch) {
            done += embedder.embed(chunk, &options)?.len();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "bare_ort sent_s={:.1} texts={done} tokens={tokens} batch={batch} threads={threads} sorted={sorted} seconds={seconds:.2}",
        done as f64 / seconds
    );
    Ok(())
}

async fn grpc(args: &[String], texts: Vec<String>) -> anyhow::Result<()> {
    let endpoint = flag(args, "--endpoint").ok_or_else(|| anyhow::anyhow!("--endpoint URL"))?;
    let concurrency: usize = flag(args, "--concurrency").map_or(Ok(1), |t| t.parse())?;
    client::wait_until_serving(&endpoint, Duration::from_secs(120)).await?;
    let remote = RemoteRuntime::connect_lazy(
        &endpoint,
        ClientSettings {
            max_attempts: 1,
            request_timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )?;
    let call = |text: &str| EmbedCall {
        texts: vec![text.to_string()],
        truncate: true,
        ..Default::default()
    };
    // Warm-up: a batch's worth, so the first measured calls do not pay for connection set-up.
    for text in texts.iter().take(concurrency.max(8)) {
        remote.embed(call(text)).await?;
    }
    let texts = Arc::new(texts);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (remote, texts, next) = (remote.clone(), texts.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(text) = texts.get(i) else {
                        break;
                    };
                    let sent = Instant::now();
                    remote
                        .embed(EmbedCall {
                            texts: vec![text.clone()],
                            truncate: true,
                            ..Default::default()
                        })
                        .await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in clients {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "grpc concurrency={concurrency} sent_s={:.1} texts={} p50_ms={:.2} p99_ms={:.2} seconds={seconds:.2}",
        latencies.len() as f64 / seconds,
        latencies.len(),
        percentile(0.5),
        percentile(0.99)
    );
    Ok(())
}
