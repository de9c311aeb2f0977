//! KorSTS-format quality through a running model runtime: embeds both sentences of every pair
//! over gRPC and prints `RESULT korsts model=… spearman=…` (Spearman ×100 of cosine vs gold).
//!
//! usage: eval_korsts ENDPOINT FILE.tsv   (scripts/eval-korsts.sh starts the runtime for you)

use moa_model_runtime::eval::{cosine, read_sts, spearman};
use moa_model_runtime::{ClientSettings, EmbedCall, RemoteRuntime, client};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BATCH: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(endpoint), Some(file)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: eval_korsts ENDPOINT FILE.tsv");
    };
    let pairs = read_sts(&PathBuf::from(&file))?;
    client::wait_until_serving(&endpoint, Duration::from_secs(120)).await?;
    let remote = RemoteRuntime::connect_lazy(&endpoint, ClientSettings::default())?;
    let info = remote.info().await?;
    let started = Instant::now();
    let (mut gold, mut similarity) = (Vec::new(), Vec::new());
    let embed = |texts: Vec<String>| {
        remote.embed(EmbedCall {
            texts,
            ..Default::default()
        })
    };
    for (n, chunk) in pairs.chunks(BATCH).enumerate() {
        let first = embed(chunk.iter().map(|p| p.first.clone()).collect()).await?;
        let second = embed(chunk.iter().map(|p| p.second.clone()).collect()).await?;
        for (i, pair) in chunk.iter().enumerate() {
            gold.push(pair.score);
            similarity.push(cosine(&first.vectors[i], &second.vectors[i]));
        }
        if n % 5 == 4 {
            eprintln!("  {} / {} pairs", gold.len(), pairs.len());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} pairs from {file} in {seconds:.1} s ({:.0} sentences/s)",
        pairs.len(),
        2.0 * pairs.len() as f64 / seconds
    );
    println!(
        "RESULT korsts model={} spearman={:.2}",
        info.model_name,
        spearman(&gold, &similarity)
    );
    Ok(())
}
