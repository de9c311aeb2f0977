//! Test component: `POST /run` with a script `{"store": "default", "transaction": bool, "end":
//! "commit" | "abort" | "none", "ops": [...]}` runs each op through moa-sdk's documents API (on the
//! store, or inside one transaction) and answers `{"results": [...], "end": ...}`, each result
//! `{"ok": value}` or `{"error": {"kind": "...", "message": "..."}}`; a failing op does not stop the rest.
//! In a transaction, an op with `"outside": true` runs on the store instead (the re-entrant write).

use moa_sdk::documents::{self, Error, Find, FindAndModify, Ops, ReturnDocument, Store};
use moa_sdk::messaging::Message;
use serde_json::{Value, json};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

fn error_json(error: &Error) -> Value {
    let (kind, message) = documents::kind_and_message(error);
    json!({ "error": { "kind": kind, "message": message } })
}

fn outcome(result: Result<Value, Error>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value }),
        Err(error) => error_json(&error),
    }
}

fn text(op: &Value, key: &str) -> String {
    op.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn value(op: &Value, key: &str) -> Value {
    op.get(key).cloned().unwrap_or_else(|| json!({}))
}

fn update_json(result: documents::UpdateResult) -> Value {
    json!({
        "matched": result.matched,
        "modified": result.modified,
        "upserted_id": result.upserted_id.map(|id| serde_json::from_str::<Value>(&id).unwrap_or(Value::Null)),
    })
}

/// Runs one op on a store or a transaction.
fn run_op(
    target: &impl Ops,
    op: &Value,
    tx: Option<&documents::Transaction>,
) -> Result<Value, Error> {
    let collection = text(op, "collection");
    match text(op, "op").as_str() {
        "insert_one" => target.insert_one(&collection, &value(op, "document")),
        "insert_many" => {
            let docs = op
                .get("documents")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            target.insert_many(&collection, &docs).map(Value::from)
        }
        // Raw text, to test what the host does with bad JSON.
        "insert_raw" => target
            .raw_insert_many(&collection, &[text(op, "text")])
            .map(|ids| json!(ids)),
        // A document over the 16 MiB limit, made here (an HTTP body that size is refused first).
        "insert_big" => {
            let bytes = op.get("bytes").and_then(Value::as_u64).unwrap_or(0) as usize;
            let document = format!("{{\"blob\": \"{}\"}}", "x".repeat(bytes));
            target
                .raw_insert_many(&collection, &[document])
                .map(|ids| json!(ids))
        }
        // Reads `n` of document `id` and writes `n + 1` with `$set`: without isolation concurrent
        // runs lose increments.
        "read_then_set" => {
            let id = value(op, "id");
            let current: Option<Value> = target.find_one(&collection, json!({ "_id": id }))?;
            let n = current
                .and_then(|d| d.get("n").and_then(Value::as_i64))
                .unwrap_or(0);
            target
                .update_one(
                    &collection,
                    json!({ "_id": id }),
                    json!({ "$set": { "n": n + 1 } }),
                )
                .map(update_json)
        }
        "find_raw" => target
            .raw_find(
                &collection,
                &text(op, "filter"),
                &documents::find_options(Find::default())?,
            )
            .map(|docs| json!(docs)),
        "find" => {
            let find = Find {
                sort: op.get("sort").cloned(),
                skip: op.get("skip").and_then(Value::as_u64),
                limit: op.get("limit").and_then(Value::as_u64),
                projection: op.get("projection").cloned(),
            };
            target
                .find::<Value>(&collection, value(op, "filter"), find)
                .map(Value::from)
        }
        "find_one" => target
            .find_one::<Value>(&collection, value(op, "filter"))
            .map(|d| d.unwrap_or(Value::Null)),
        "count" => target
            .count(&collection, value(op, "filter"))
            .map(Value::from),
        "update_one" => target
            .raw_update(
                &collection,
                &value(op, "filter").to_string(),
                &value(op, "update").to_string(),
                op.get("upsert").and_then(Value::as_bool).unwrap_or(false),
                false,
            )
            .map(update_json),
        "update_many" => target
            .raw_update(
                &collection,
                &value(op, "filter").to_string(),
                &value(op, "update").to_string(),
                op.get("upsert").and_then(Value::as_bool).unwrap_or(false),
                true,
            )
            .map(update_json),
        "replace_one" => target
            .replace_one(
                &collection,
                value(op, "filter"),
                &value(op, "replacement"),
                op.get("upsert").and_then(Value::as_bool).unwrap_or(false),
            )
            .map(update_json),
        "find_one_and_update" => {
            let options = FindAndModify {
                sort: op.get("sort").cloned(),
                projection: op.get("projection").cloned(),
                upsert: op.get("upsert").and_then(Value::as_bool).unwrap_or(false),
                return_document: if text(op, "return") == "before" {
                    ReturnDocument::Before
                } else {
                    ReturnDocument::After
                },
            };
            target
                .find_one_and_update::<Value>(
                    &collection,
                    value(op, "filter"),
                    value(op, "update"),
                    options,
                )
                .map(|d| d.unwrap_or(Value::Null))
        }
        "delete_one" => target
            .delete_one(&collection, value(op, "filter"))
            .map(Value::from),
        "delete_many" => target
            .delete_many(&collection, value(op, "filter"))
            .map(Value::from),
        "publish" => {
            let Some(tx) = tx else {
                return Err(Error::Other("publish needs a transaction".into()));
            };
            let mut message = Message::new(text(op, "topic"), text(op, "payload").into_bytes());
            if let Some(key) = op.get("key").and_then(Value::as_str) {
                message = message.with_key(key.as_bytes().to_vec());
            }
            // `"headers": { "name": "value" }`
            if let Some(headers) = op.get("headers").and_then(Value::as_object) {
                for (name, value) in headers {
                    message = message.with_header(name, value.as_str().unwrap_or_default());
                }
            }
            tx.publish(message).map(Value::from)
        }
        // Published at once (not through the outbox), e.g. while this transaction holds the store.
        "publish_now" => {
            let message = Message::new(text(op, "topic"), text(op, "payload").into_bytes());
            moa_sdk::messaging::publish(message)
                .map(|()| Value::Null)
                .map_err(|e| Error::Other(format!("{e:?}")))
        }
        // Keeps whatever this script has open (a transaction) open for `ms`.
        "sleep" => {
            let ms = op.get("ms").and_then(Value::as_u64).unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(Value::Null)
        }
        "first_time" => {
            let Some(tx) = tx else {
                return Err(Error::Other("first_time needs a transaction".into()));
            };
            tx.first_time(&text(op, "consumer"), &text(op, "id"))
                .map(Value::from)
        }
        other => Err(Error::Other(format!("docprobe: unknown op `{other}`"))),
    }
}

fn run(script: &Value) -> Value {
    let label = script
        .get("store")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let store = match Store::open(label) {
        Ok(store) => store,
        Err(error) => return json!({ "open": error_json(&error) }),
    };
    let ops = script
        .get("ops")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if script
        .get("retrying")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        // All ops in one transaction through the SDK's retrying helper; any error aborts it.
        let result = store.transaction(|tx| {
            ops.iter()
                .map(|op| run_op(tx, op, Some(tx)))
                .collect::<Result<Vec<Value>, Error>>()
        });
        return json!({ "results": [outcome(result.map(Value::from))] });
    }
    if !script
        .get("transaction")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let results: Vec<Value> = ops
            .iter()
            .map(|op| outcome(run_op(&store, op, None)))
            .collect();
        return json!({ "results": results });
    }
    let tx = match store.begin() {
        Ok(tx) => tx,
        Err(error) => return json!({ "begin": error_json(&error) }),
    };
    // An op with `"outside": true` runs on the store while the transaction is open.
    let results: Vec<Value> = ops
        .iter()
        .map(|op| match op.get("outside").and_then(Value::as_bool) {
            Some(true) => outcome(run_op(&store, op, None)),
            _ => outcome(run_op(&tx, op, Some(&tx))),
        })
        .collect();
    let end = match script
        .get("end")
        .and_then(Value::as_str)
        .unwrap_or("commit")
    {
        "commit" => outcome(tx.commit().map(|()| Value::Null)),
        "abort" => outcome(tx.abort().map(|()| Value::Null)),
        _ => Value::Null,
    };
    json!({ "results": results, "end": end })
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let body = req.into_body().bytes().await?;
    let reply = match serde_json::from_slice::<Value>(&body) {
        Ok(script) => (200, run(&script).to_string()),
        Err(error) => (400, json!({ "error": error.to_string() }).to_string()),
    };
    Ok(http::Response::builder()
        .status(reply.0)
        .header("content-type", "application/json")
        .body(reply.1)?)
}
