//! Test component: `POST /run` with a script `{"index": "reviews", "ops": [...]}` runs each op
//! (`upsert`, `delete`, `get`, `search`, `info`) through moa-sdk's vectors API and answers
//! `{"results": [...]}`, each result `{"ok": value}` or `{"error": {"kind": "...", "message": "..."}}`.

use moa_sdk::vectors::{self, Error, Index, Item, Search};
use serde_json::{Value, json};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

fn outcome(result: Result<Value, Error>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value }),
        Err(error) => {
            let (kind, message) = vectors::kind_and_message(&error);
            json!({ "error": { "kind": kind, "message": message } })
        }
    }
}

fn floats(value: Option<&Value>) -> Vec<f32> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                .collect()
        })
        .unwrap_or_default()
}

fn run_op(index: &Index, op: &Value) -> Result<Value, Error> {
    match op.get("op").and_then(Value::as_str).unwrap_or_default() {
        "upsert" => {
            let items: Vec<Item> = op
                .get("items")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .map(|item| {
                            Item::new(
                                item.get("id").and_then(Value::as_str).unwrap_or_default(),
                                floats(item.get("vector")),
                                item.get("metadata").cloned().unwrap_or_else(|| json!({})),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            index.upsert(&items).map(|()| json!(items.len()))
        }
        "delete" => {
            let ids: Vec<String> = op
                .get("ids")
                .and_then(Value::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| id.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            index.delete(&ids).map(Value::from)
        }
        "get" => {
            let id = op.get("id").and_then(Value::as_str).unwrap_or_default();
            index.get(id).map(|found| match found {
                Some(item) => {
                    json!({ "id": item.id, "vector": item.vector, "metadata": item.metadata })
                }
                None => Value::Null,
            })
        }
        "search" => {
            let limit = op.get("limit").and_then(Value::as_u64).unwrap_or(10) as u32;
            let mut search = Search::new(floats(op.get("vector")), limit);
            if let Some(filter) = op.get("filter") {
                search = search.filter(filter.clone());
            }
            if let Some(candidates) = op.get("candidates").and_then(Value::as_u64) {
                search = search.candidates(candidates as u32);
            }
            if op.get("metadata").and_then(Value::as_bool).unwrap_or(false) {
                search = search.with_metadata();
            }
            index.search(&search).map(|found| {
                found
                    .into_iter()
                    .map(|m| json!({ "id": m.id, "score": m.score, "metadata": m.metadata }))
                    .collect()
            })
        }
        "info" => index.info().map(|info| {
            json!({
                "dimensions": info.dimensions,
                "metric": match info.metric {
                    vectors::Metric::Cosine => "cosine",
                    vectors::Metric::Dot => "dot",
                    vectors::Metric::Euclidean => "euclidean",
                },
                "count": info.count,
                "backend": info.backend,
            })
        }),
        other => Err(Error::InvalidArgument(format!(
            "vecprobe has no op `{other}`"
        ))),
    }
}

fn run(script: &Value) -> Value {
    let label = script
        .get("index")
        .and_then(Value::as_str)
        .unwrap_or("reviews");
    let index = match Index::open(label) {
        Ok(index) => index,
        Err(error) => return json!({ "open": outcome(Err(error)) }),
    };
    let results: Vec<Value> = script
        .get("ops")
        .and_then(Value::as_array)
        .map(|ops| ops.iter().map(|op| outcome(run_op(&index, op))).collect())
        .unwrap_or_default();
    json!({ "results": results })
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
