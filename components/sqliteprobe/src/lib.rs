//! Test component: runs the statements a request carries on one `spin:sqlite` connection, with
//! spin-sdk 7's streaming calls or the interface's synchronous ones, and answers rows as JSON.
//!
//! `POST /<database>` with `{"sync": false, "take": null, "statements": [{"sql": "...", "params": [...]}]}`.
//! A parameter or value is `{"integer": 1}`, `{"real": 1.5}`, `{"text": "x"}`, `{"blob": [1, 2]}` or
//! `null`. The answer is `{"results": [{"columns", "rows", "changes", "last_insert_rowid"}]}`, or
//! status 409 and `{"error": "<the sqlite error>", "statement": i, "results": [...]}` at the first
//! failing statement. `take: n` reads only the first n rows of each result and drops the rest.

use serde::{Deserialize, Serialize};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::sqlite::{self, Connection, Value};

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    sync: bool,
    #[serde(default)]
    take: Option<usize>,
    statements: Vec<Statement>,
}

#[derive(Deserialize)]
struct Statement {
    sql: String,
    #[serde(default)]
    params: Vec<JsonValue>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "lowercase")]
enum Typed {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

type JsonValue = Option<Typed>;

#[derive(Serialize, Default)]
struct Outcome {
    columns: Vec<String>,
    rows: Vec<Vec<JsonValue>>,
    changes: u64,
    last_insert_rowid: i64,
}

fn to_sqlite(value: &JsonValue) -> Value {
    match value {
        None => Value::Null,
        Some(Typed::Integer(i)) => Value::Integer(*i),
        Some(Typed::Real(r)) => Value::Real(*r),
        Some(Typed::Text(t)) => Value::Text(t.clone()),
        Some(Typed::Blob(b)) => Value::Blob(b.clone()),
    }
}

fn to_json(value: Value) -> JsonValue {
    match value {
        Value::Null => None,
        Value::Integer(i) => Some(Typed::Integer(i)),
        Value::Real(r) => Some(Typed::Real(r)),
        Value::Text(t) => Some(Typed::Text(t)),
        Value::Blob(b) => Some(Typed::Blob(b)),
    }
}

fn json(status: u16, body: serde_json::Value) -> anyhow::Result<http::Response<String>> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())?)
}

fn failed(
    error: sqlite::Error,
    statement: Option<usize>,
    results: &[Outcome],
) -> anyhow::Result<http::Response<String>> {
    json(
        409,
        serde_json::json!({"error": format!("{error:?}"), "statement": statement, "results": results}),
    )
}

/// The streaming calls spin-sdk 7 makes (`open-async`, `execute-async`, ...).
async fn run_streaming(database: &str, batch: &Batch) -> anyhow::Result<http::Response<String>> {
    let connection = match Connection::open(database).await {
        Ok(connection) => connection,
        Err(error) => return failed(error, None, &[]),
    };
    let mut results = Vec::new();
    for (i, statement) in batch.statements.iter().enumerate() {
        let params: Vec<Value> = statement.params.iter().map(to_sqlite).collect();
        let mut query = match connection.execute(&statement.sql, params).await {
            Ok(query) => query,
            Err(error) => return failed(error, Some(i), &results),
        };
        let mut outcome = Outcome {
            columns: query.columns().to_vec(),
            ..Outcome::default()
        };
        match batch.take {
            Some(n) => {
                // Read n rows and drop the rest of the stream unread.
                while outcome.rows.len() < n {
                    match query.next().await {
                        Some(row) => outcome
                            .rows
                            .push(row.values.into_iter().map(to_json).collect()),
                        None => break,
                    }
                }
                // Dropping the stream stops the statement and frees the connection.
                drop(query);
            }
            None => {
                while let Some(row) = query.next().await {
                    outcome
                        .rows
                        .push(row.values.into_iter().map(to_json).collect());
                }
                if let Err(error) = query.result().await {
                    return failed(error, Some(i), &results);
                }
            }
        }
        outcome.changes = connection.changes().await;
        outcome.last_insert_rowid = connection.last_insert_rowid().await;
        results.push(outcome);
    }
    json(200, serde_json::json!({ "results": results }))
}

/// The interface's synchronous calls (`open`, `execute`, ...), as spin-sdk <= 5 components make them.
fn run_sync(database: &str, batch: &Batch) -> anyhow::Result<http::Response<String>> {
    use spin_sdk::sqlite::wit::sqlite::Connection as Raw;
    let connection = match Raw::open(database) {
        Ok(connection) => connection,
        Err(error) => return failed(error, None, &[]),
    };
    let mut results = Vec::new();
    for (i, statement) in batch.statements.iter().enumerate() {
        let params: Vec<Value> = statement.params.iter().map(to_sqlite).collect();
        let result = match connection.execute(&statement.sql, &params) {
            Ok(result) => result,
            Err(error) => return failed(error, Some(i), &results),
        };
        results.push(Outcome {
            columns: result.columns,
            rows: result
                .rows
                .into_iter()
                .map(|row| row.values.into_iter().map(to_json).collect())
                .collect(),
            changes: connection.changes(),
            last_insert_rowid: connection.last_insert_rowid(),
        });
    }
    json(200, serde_json::json!({ "results": results }))
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let database = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let body = req
        .into_body()
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => return json(400, serde_json::json!({"error": err.to_string()})),
    };
    if batch.sync {
        run_sync(&database, &batch)
    } else {
        run_streaming(&database, &batch).await
    }
}
