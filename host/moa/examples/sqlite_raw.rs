//! The baseline of `embedded_tx_s` in scripts/bench-documents.sh: the docbench component's `/tx`
//! work done on SQLite directly, one connection in a native loop, durable (`synchronous = FULL`,
//! WAL): per transaction, read the account by id, write it back with its balance + 1, insert an
//! entry; the same table and statements the embedded store uses.
//!
//!   cargo run --release --example sqlite_raw -- <file> <transactions>
//!
//! Prints `tx=<count> seconds=<elapsed> tx_s=<rate>`.

use rusqlite::{Connection, OptionalExtension};
use serde_json::{Value, json};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, count] = args.as_slice() else {
        anyhow::bail!("usage: sqlite_raw <file> <transactions>");
    };
    let count: u64 = count.parse()?;
    let connection = Connection::open(file)?;
    connection.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS documents (
             seq INTEGER PRIMARY KEY, collection TEXT NOT NULL, id TEXT NOT NULL,
             body TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0, UNIQUE (collection, id));",
    )?;
    let account = "\"raw-account\"";
    let started = Instant::now();
    for i in 0..count {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        let body: Option<String> = connection
            .prepare_cached("SELECT body FROM documents WHERE collection = 'accounts' AND id = ?1")?
            .query_row([account], |row| row.get(0))
            .optional()?;
        let balance = body
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|b| b["balance"].as_i64())
            .unwrap_or(0);
        let account_body = json!({ "_id": "raw-account", "balance": balance + 1 }).to_string();
        connection
            .prepare_cached(
                "INSERT INTO documents (collection, id, body) VALUES ('accounts', ?1, ?2)
                 ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body",
            )?
            .execute((account, account_body))?;
        let entry = json!({ "_id": format!("raw-{i}"), "account": "raw-account", "amount": 1 });
        connection
            .prepare_cached(
                "INSERT INTO documents (collection, id, body) VALUES ('entries', ?1, ?2)",
            )?
            .execute((format!("\"raw-{i}\""), entry.to_string()))?;
        connection.execute_batch("COMMIT")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "tx={count} seconds={seconds:.3} tx_s={:.1}",
        count as f64 / seconds
    );
    Ok(())
}
