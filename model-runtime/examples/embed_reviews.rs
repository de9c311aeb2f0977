//! Embeds reviews through a running model runtime, as the review job stores them (cleaned by
//! `review-text`, `passage` prefix), for the sentiment classifier's training and evaluation and the
//! vector benchmark: writes `vectors.f32` (little-endian rows) and `meta.jsonl` (review id, store id,
//! rating, cleaned text) into OUTDIR.
//!
//! usage: embed_reviews ENDPOINT REVIEWS.jsonl[.gz] OUTDIR [--labelled] [--every K] [--limit N]
//!   --labelled   only reviews rated 1-4 or 9-10
//!   --every K    every K-th selected review (a sample spread over the whole file)
//!   --limit N    at most N reviews

use futures::StreamExt as _;
use moa_model_runtime::{ClientSettings, EmbedCall, RemoteRuntime, TextKind, client};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BATCH: usize = 128;
const IN_FLIGHT: usize = 4;

struct Review {
    id: String,
    store: String,
    rating: i64,
    text: String,
}

fn field(value: &serde_json::Value, key: &str) -> Option<String> {
    match value.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn open(path: &PathBuf) -> anyhow::Result<Box<dyn BufRead>> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut magic = [0u8; 2];
    let gz = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(path)?;
    Ok(if gz {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, input, outdir, ..] = args.as_slice() else {
        anyhow::bail!(
            "usage: embed_reviews ENDPOINT REVIEWS.jsonl[.gz] OUTDIR [--labelled] [--every K] [--limit N]"
        );
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    let number = |name: &str| -> Option<usize> {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1)?.parse().ok()
    };
    let labelled = flag("--labelled");
    let every = number("--every").unwrap_or(1).max(1);
    let limit = number("--limit").unwrap_or(usize::MAX);

    let mut reviews = Vec::new();
    let mut selected = 0usize;
    for line in open(&PathBuf::from(input))?.lines() {
        let line = line?;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let rating = value.get("rating").and_then(|r| r.as_i64()).unwrap_or(0);
        if labelled && review_text::Sentiment::from_rating(rating).is_none() {
            continue;
        }
        let (Some(id), Some(store), Some(text)) = (
            field(&value, "review_id"),
            field(&value, "store_id").or_else(|| field(&value, "movie_id")),
            value
                .get("text")
                .and_then(|t| t.as_str())
                .and_then(review_text::clean),
        ) else {
            continue;
        };
        selected += 1;
        if !(selected - 1).is_multiple_of(every) {
            continue;
        }
        reviews.push(Review {
            id,
            store,
            rating,
            text,
        });
        if reviews.len() >= limit {
            break;
        }
    }
    eprintln!("embedding {} reviews", reviews.len());
    client::wait_until_serving(endpoint, Duration::from_secs(120)).await?;
    let remote = RemoteRuntime::connect_lazy(
        endpoint,
        ClientSettings {
            request_timeout: Duration::from_secs(300),
            ..ClientSettings::default()
        },
    )?;
    std::fs::create_dir_all(outdir)?;
    let out = PathBuf::from(outdir);
    let mut vectors = BufWriter::new(std::fs::File::create(out.join("vectors.f32"))?);
    let mut meta = BufWriter::new(std::fs::File::create(out.join("meta.jsonl"))?);
    let started = Instant::now();
    let batches = reviews.chunks(BATCH).map(|chunk| {
        let remote = &remote;
        let texts: Vec<String> = chunk.iter().map(|r| r.text.clone()).collect();
        async move {
            remote
                .embed(EmbedCall {
                    texts,
                    kind: TextKind::Passage,
                    ..Default::default()
                })
                .await
        }
    });
    let mut results = futures::stream::iter(batches).buffered(IN_FLIGHT);
    let mut done = 0usize;
    let mut dimensions = 0usize;
    while let Some(result) = results.next().await {
        let embedded = result.map_err(|e| anyhow::anyhow!("embedding failed: {e}"))?;
        for vector in &embedded.vectors {
            dimensions = vector.len();
            for value in vector {
                vectors.write_all(&value.to_le_bytes())?;
            }
            let review = &reviews[done];
            serde_json::to_writer(
                &mut meta,
                &serde_json::json!({"review_id": review.id, "store_id": review.store,
                                    "rating": review.rating, "text": review.text}),
            )?;
            meta.write_all(b"\n")?;
            done += 1;
        }
        if done % (BATCH * 40) < BATCH {
            let rate = done as f64 / started.elapsed().as_secs_f64();
            eprintln!("  {done} / {} ({rate:.0}/s)", reviews.len());
        }
    }
    vectors.flush()?;
    meta.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "embedded reviews={done} dimensions={dimensions} seconds={seconds:.1} per_s={:.1}",
        done as f64 / seconds
    );
    Ok(())
}
