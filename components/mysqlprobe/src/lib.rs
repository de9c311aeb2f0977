//! Test component: opens one `spin:mysql@3.0.0` connection (spin-sdk 7) and runs the request's
//! statements, reading query rows as a stream (all of them, or the first `take`).
//!
//! `POST /` with `{"address", "take": n?, "statements": [{"sql", "params": [...], "query": true}]}`.
//! A parameter is `{"int32": 1}`, `{"uint64": 7}`, `{"str": "x"}`, `{"binary": [1]}`, `"db_null"`, ...
//! The answer is `{"results": [{"columns", "rows"}]}`, or status 409 and
//! `{"error", "kind", "statement": i|null, "results"}` at the first failure.

use serde::{Deserialize, Serialize};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::mysql::wit::mysql::{Connection, DbValue, Error, ParameterValue};

#[derive(Deserialize)]
struct Batch {
    address: String,
    #[serde(default)]
    take: Option<usize>,
    statements: Vec<Statement>,
}

#[derive(Deserialize)]
struct Statement {
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
    #[serde(default)]
    query: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Value {
    Boolean(bool),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Uint8(u8),
    Uint16(u16),
    Uint32(u32),
    Uint64(u64),
    Floating32(f32),
    Floating64(f64),
    Str(String),
    Binary(Vec<u8>),
    DbNull,
    Unsupported,
}

fn to_mysql(value: &Value) -> ParameterValue {
    match value {
        Value::Boolean(v) => ParameterValue::Boolean(*v),
        Value::Int8(v) => ParameterValue::Int8(*v),
        Value::Int16(v) => ParameterValue::Int16(*v),
        Value::Int32(v) => ParameterValue::Int32(*v),
        Value::Int64(v) => ParameterValue::Int64(*v),
        Value::Uint8(v) => ParameterValue::Uint8(*v),
        Value::Uint16(v) => ParameterValue::Uint16(*v),
        Value::Uint32(v) => ParameterValue::Uint32(*v),
        Value::Uint64(v) => ParameterValue::Uint64(*v),
        Value::Floating32(v) => ParameterValue::Floating32(*v),
        Value::Floating64(v) => ParameterValue::Floating64(*v),
        Value::Str(v) => ParameterValue::Str(v.clone()),
        Value::Binary(v) => ParameterValue::Binary(v.clone()),
        Value::DbNull | Value::Unsupported => ParameterValue::DbNull,
    }
}

fn to_json(value: DbValue) -> Value {
    match value {
        DbValue::Boolean(v) => Value::Boolean(v),
        DbValue::Int8(v) => Value::Int8(v),
        DbValue::Int16(v) => Value::Int16(v),
        DbValue::Int32(v) => Value::Int32(v),
        DbValue::Int64(v) => Value::Int64(v),
        DbValue::Uint8(v) => Value::Uint8(v),
        DbValue::Uint16(v) => Value::Uint16(v),
        DbValue::Uint32(v) => Value::Uint32(v),
        DbValue::Uint64(v) => Value::Uint64(v),
        DbValue::Floating32(v) => Value::Floating32(v),
        DbValue::Floating64(v) => Value::Floating64(v),
        DbValue::Str(v) => Value::Str(v),
        DbValue::Binary(v) => Value::Binary(v),
        DbValue::DbNull => Value::DbNull,
        DbValue::Unsupported => Value::Unsupported,
    }
}

#[derive(Serialize, Default)]
struct Outcome {
    columns: Vec<(String, String)>,
    rows: Vec<Vec<Value>>,
}

fn json(status: u16, body: serde_json::Value) -> anyhow::Result<http::Response<String>> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())?)
}

fn failed(
    error: Error,
    statement: Option<usize>,
    results: &[Outcome],
) -> anyhow::Result<http::Response<String>> {
    let kind = match &error {
        Error::ConnectionFailed(_) => "connection-failed",
        Error::BadParameter(_) => "bad-parameter",
        Error::QueryFailed(_) => "query-failed",
        Error::ValueConversionFailed(_) => "value-conversion-failed",
        Error::Other(_) => "other",
    };
    json(
        409,
        serde_json::json!({"error": format!("{error:?}"), "kind": kind, "statement": statement, "results": results}),
    )
}

async fn run(batch: &Batch) -> anyhow::Result<http::Response<String>> {
    let connection = match Connection::open(batch.address.clone()).await {
        Ok(connection) => connection,
        Err(error) => return failed(error, None, &[]),
    };
    let mut results = Vec::new();
    for (i, statement) in batch.statements.iter().enumerate() {
        let params: Vec<ParameterValue> = statement.params.iter().map(to_mysql).collect();
        let outcome = if statement.query {
            match connection.query(statement.sql.clone(), params).await {
                Err(error) => Err(error),
                Ok((cols, mut rows, result)) => {
                    let mut outcome = Outcome {
                        columns: cols
                            .into_iter()
                            .map(|c| {
                                (
                                    c.name,
                                    format!("{:?}", c.data_type).replace("DbDataType::", ""),
                                )
                            })
                            .collect(),
                        ..Outcome::default()
                    };
                    let limit = batch.take.unwrap_or(usize::MAX);
                    while outcome.rows.len() < limit {
                        match rows.next().await {
                            Some(row) => outcome.rows.push(row.into_iter().map(to_json).collect()),
                            None => break,
                        }
                    }
                    drop(rows);
                    result.await.map(|()| outcome)
                }
            }
        } else {
            connection
                .execute(statement.sql.clone(), params)
                .await
                .map(|()| Outcome::default())
        };
        match outcome {
            Ok(outcome) => results.push(outcome),
            Err(error) => return failed(error, Some(i), &results),
        }
    }
    json(200, serde_json::json!({ "results": results }))
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let body = req
        .into_body()
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => return json(400, serde_json::json!({"error": err.to_string()})),
    };
    run(&batch).await
}
