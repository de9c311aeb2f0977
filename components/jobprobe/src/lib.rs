//! Test component for `[[trigger.job]]`: each record `{"id": ..., "n": ...}` becomes a document of
//! `job_out` (inserted, so a chunk written twice fails on duplicate ids); `"bad": true` records are
//! skipped with a reason, `"trap": true` ones trap, `"fatal": true` ones stop the job. Parameters: `flaky=1` fails every chunk's first
//! attempt transiently; `sleep_ms=N` sleeps per chunk.

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:jobs/job-component",
    with: {
        "moa:documents/documents@0.1.0": moa_sdk::wit::documents::documents,
        "moa:documents/types@0.1.0": moa_sdk::wit::documents::types,
        "moa:messaging/types@0.1.0": moa_sdk::wit::messaging::types,
    },
});

use exports::moa::jobs::chunk_processor::Guest;
use moa::jobs::types::{ChunkError, JobContext, SkippedRecord};
use moa_sdk::documents::{Error, LentTransaction, Ops, Store};
use moa_sdk::wit::documents::documents::Transaction;
use serde_json::{Value, json};

struct Probe;

fn parameter<'a>(context: &'a JobContext, name: &str) -> Option<&'a str> {
    context
        .parameters
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn chunk_error(error: Error) -> ChunkError {
    match error {
        Error::WriteConflict(m) | Error::Unavailable(m) => ChunkError::Transient(m),
        other => ChunkError::Failed(format!("{other:?}")),
    }
}

impl Guest for Probe {
    fn process_chunk(
        context: JobContext,
        records: Vec<String>,
        tx: &Transaction,
    ) -> Result<Vec<SkippedRecord>, ChunkError> {
        if parameter(&context, "flaky") == Some("1") {
            // Attempts counted outside the chunk's transaction, so they survive its abort (in
            // another store: on the embedded store the lent transaction holds its store's writer).
            let store = Store::open("attempts").map_err(chunk_error)?;
            let key = json!({"_id": format!("{}-{}", context.range, context.first_record)});
            store
                .upsert_one("job_attempts", key.clone(), json!({"$inc": {"n": 1}}))
                .map_err(chunk_error)?;
            let seen: Option<Value> = store.find_one("job_attempts", key).map_err(chunk_error)?;
            if seen.and_then(|d| d["n"].as_i64()) == Some(1) {
                return Err(ChunkError::Transient(
                    "flaky: the first attempt fails".into(),
                ));
            }
        }
        // Slow work before the first write (as an embedding call is): chunks overlap, since the
        // lent transaction begins at the first read or write.
        if let Some(ms) = parameter(&context, "sleep_ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let tx = LentTransaction::new(tx);
        let mut skipped = Vec::new();
        let mut documents = Vec::new();
        for (index, text) in records.iter().enumerate() {
            let record: Value = serde_json::from_str(text).map_err(|e| {
                ChunkError::Failed(format!("the host sent a record that is not JSON: {e}"))
            })?;
            if record["bad"] == true {
                skipped.push(SkippedRecord {
                    index: index as u32,
                    reason: format!("record {} is marked bad", record["id"]),
                });
                continue;
            }
            if record["fatal"] == true {
                return Err(ChunkError::Fatal(format!(
                    "record {} says nothing can go on",
                    record["id"]
                )));
            }
            if record["trap"] == true {
                panic!("record {} traps", record["id"]);
            }
            documents.push(json!({"_id": record["id"], "n": record["n"], "range": context.range}));
        }
        if !documents.is_empty() {
            tx.insert_many("job_out", &documents).map_err(chunk_error)?;
        }
        Ok(skipped)
    }
}

export!(Probe);
