//! Benchmark component (scripts/bench-documents.sh). `GET /ops?n=N&w=W` runs N rounds of insert +
//! find-one-and-update (`$inc`) + find by an indexed field (limit 10), as worker W; `GET
//! /outbox?n=N&w=W` commits N transactions that each insert a document and stage one outbox
//! message; `GET /tx?n=N&w=W` commits N small transactions (read an account, `$inc` it, insert an
//! entry). Each answers how many operations (or transactions) it ran. The same work as `examples/mongo_raw.rs`.

use moa_sdk::documents::{Find, FindAndModify, Ops, Store};
use moa_sdk::messaging::Message;
use serde_json::{Value, json};
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

fn param(query: &str, name: &str) -> u64 {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn ops(store: &Store, n: u64, worker: u64, run: &str) -> anyhow::Result<u64> {
    let owner = format!("{run}-w{worker}");
    for i in 0..n {
        let id = format!("{owner}-{i}");
        store.insert_one(
            "bench",
            &json!({ "_id": id, "owner": owner, "sku": i % 100, "qty": 0 }),
        )?;
        let updated: Option<Value> = store.find_one_and_update(
            "bench",
            json!({ "_id": id }),
            json!({ "$inc": { "qty": 1 } }),
            FindAndModify::default(),
        )?;
        anyhow::ensure!(updated.is_some(), "{id} was not found");
        let found: Vec<Value> = store.find(
            "bench",
            json!({ "owner": owner, "sku": i % 100 }),
            Find::default().limit(10),
        )?;
        anyhow::ensure!(!found.is_empty(), "{id} was not found by owner");
    }
    Ok(n * 3)
}

/// One small transaction, N times: read the worker's account, add 1 to it (upsert), insert a ledger
/// entry; the same statements as `examples/sqlite_raw.rs` runs on SQLite directly.
fn transactions(store: &Store, n: u64, worker: u64, run: &str) -> anyhow::Result<u64> {
    let account = format!("{run}-w{worker}");
    for i in 0..n {
        store.transaction(|tx| {
            let _: Option<Value> = tx.find_one("accounts", json!({ "_id": account }))?;
            tx.upsert_one(
                "accounts",
                json!({ "_id": account }),
                json!({ "$inc": { "balance": 1 } }),
            )?;
            tx.insert_one(
                "entries",
                &json!({ "_id": format!("{account}-{i}"), "account": account, "amount": 1 }),
            )?;
            Ok(())
        })?;
    }
    Ok(n)
}

fn outbox(store: &Store, n: u64, worker: u64, run: &str) -> anyhow::Result<u64> {
    for i in 0..n {
        let id = format!("{run}-w{worker}-{i}");
        store.transaction(|tx| {
            tx.insert_one("outbox_bench", &json!({ "_id": id, "worker": worker }))?;
            tx.publish(
                Message::new("bench.outbox", id.clone().into_bytes())
                    .with_key(id.clone().into_bytes()),
            )?;
            Ok(())
        })?;
    }
    Ok(n)
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let path = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let run = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "run")
        .map_or("r", |(_, v)| v)
        .to_string();
    let (n, worker) = (param(&query, "n"), param(&query, "w"));
    let store = Store::open("default")?;
    let done = match path.as_str() {
        "/ops" => ops(&store, n, worker, &run),
        "/outbox" => outbox(&store, n, worker, &run),
        "/tx" => transactions(&store, n, worker, &run),
        _ => Err(anyhow::anyhow!("use /ops, /tx or /outbox")),
    };
    let (status, body) = match done {
        Ok(count) => (200, format!("{count}\n")),
        Err(error) => (500, format!("{error:#}\n")),
    };
    Ok(http::Response::builder().status(status).body(body)?)
}
