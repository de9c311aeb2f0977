//! The baseline of scripts/bench-documents.sh: the docbench component's `/ops` work done by the raw
//! `mongodb` driver from a native loop, with the same concurrency: N rounds of insert +
//! find-one-and-update (`$inc`, returning the new document) + find by an indexed field (limit 10).
//!
//!   cargo run --release --example mongo_raw -- <url> <database> <workers> <rounds per worker>
//!   cargo run --release --example mongo_raw -- <url> <database> drop
//!
//! Prints `ops=<count> seconds=<elapsed> ops_s=<rate>`; `drop` drops the database (between runs, so
//! that every run starts on an empty one).

use futures::TryStreamExt as _;
use mongodb::bson::{Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Client, IndexModel};
use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, url, database, drop] = args.as_slice()
        && drop == "drop"
    {
        Client::with_uri_str(url)
            .await?
            .database(database)
            .drop()
            .await?;
        return Ok(());
    }
    let [_, url, database, workers, rounds] = args.as_slice() else {
        anyhow::bail!(
            "usage: mongo_raw <url> <database> <workers> <rounds per worker> | mongo_raw <url> <database> drop"
        );
    };
    let (workers, rounds): (u64, u64) = (workers.parse()?, rounds.parse()?);
    let client = Client::with_uri_str(url).await?;
    let collection = client.database(database).collection::<Document>("bench");
    collection
        .create_index(
            IndexModel::builder()
                .keys(doc! { "owner": 1, "sku": 1 })
                .build(),
        )
        .await?;
    let run = std::process::id();
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let collection = collection.clone();
            tokio::spawn(async move {
                let owner = format!("raw{run}-w{worker}");
                for i in 0..rounds {
                    let id = format!("{owner}-{i}");
                    let sku = (i % 100) as i64;
                    collection
                        .insert_one(doc! { "_id": &id, "owner": &owner, "sku": sku, "qty": 0 })
                        .await?;
                    let updated = collection
                        .find_one_and_update(doc! { "_id": &id }, doc! { "$inc": { "qty": 1 } })
                        .return_document(ReturnDocument::After)
                        .await?;
                    anyhow::ensure!(updated.is_some(), "{id} was not found");
                    let found: Vec<Document> = collection
                        .find(doc! { "owner": &owner, "sku": sku })
                        .limit(10)
                        .await?
                        .try_collect()
                        .await?;
                    anyhow::ensure!(!found.is_empty(), "{id} was not found by owner");
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = workers * rounds * 3;
    println!(
        "ops={ops} seconds={seconds:.3} ops_s={:.1}",
        ops as f64 / seconds
    );
    Ok(())
}
