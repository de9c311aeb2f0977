//! Test component: opens one `spin:postgres@4.2.0` connection the way the request says and runs
//! its statements, with the streaming calls spin-sdk 7 makes or the interface's synchronous ones.
//!
//! `POST /` with `{"address", "open": "async"|"sync"|"builder"|"builder-async", "ca": pem?,
//! "sync": false, "take": n?, "extra_connections": n?, "statements": [{"sql", "params": [...],
//! "query": true}]}`. A parameter
//! is `{"int32": 1}`, `{"str": "x"}`, `{"date": [2024, 2, 29]}`, `{"jsonb": {...}}`, `"db_null"`, ...
//! (the WIT variant in snake case). The answer is `{"results": [{"columns", "rows", "affected"}]}`, or
//! status 409 and `{"error", "kind", "code", "statement": i|null, "results"}` at the first failure.

use serde::{Deserialize, Serialize};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::pg::wit::postgres::{
    Connection, ConnectionBuilder, DbValue, Error, Interval, ParameterValue, QueryError,
    RangeBoundKind,
};

#[derive(Deserialize)]
struct Batch {
    address: String,
    #[serde(default)]
    open: Open,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    sync: bool,
    #[serde(default)]
    take: Option<usize>,
    /// Further connections to open (and hold) before the statements run.
    #[serde(default)]
    extra_connections: usize,
    statements: Vec<Statement>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Open {
    #[default]
    Async,
    Sync,
    Builder,
    BuilderAsync,
}

#[derive(Deserialize)]
struct Statement {
    sql: String,
    #[serde(default)]
    params: Vec<Param>,
    #[serde(default)]
    query: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Inclusive,
    Exclusive,
}

type Bound<T> = Option<(T, Kind)>;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Param {
    Boolean(bool),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Floating32(f32),
    Floating64(f64),
    Str(String),
    Binary(Vec<u8>),
    Date((i32, u8, u8)),
    Time((u8, u8, u8, u32)),
    Datetime((i32, u8, u8, u8, u8, u8, u32)),
    Timestamp(i64),
    Uuid(String),
    Jsonb(serde_json::Value),
    /// Bytes as they are (to send text that is not JSON).
    JsonbRaw(Vec<u8>),
    Decimal(String),
    RangeInt32((Bound<i32>, Bound<i32>)),
    RangeInt64((Bound<i64>, Bound<i64>)),
    RangeDecimal((Bound<String>, Bound<String>)),
    ArrayInt32(Vec<Option<i32>>),
    ArrayInt64(Vec<Option<i64>>),
    ArrayDecimal(Vec<Option<String>>),
    ArrayStr(Vec<Option<String>>),
    Interval((i64, i32, i32)),
    DbNull,
    Unsupported(Vec<u8>),
}

fn kind_in(kind: Kind) -> RangeBoundKind {
    match kind {
        Kind::Inclusive => RangeBoundKind::Inclusive,
        Kind::Exclusive => RangeBoundKind::Exclusive,
    }
}

fn kind_out(kind: RangeBoundKind) -> Kind {
    match kind {
        RangeBoundKind::Inclusive => Kind::Inclusive,
        RangeBoundKind::Exclusive => Kind::Exclusive,
    }
}

fn bound_in<T: Clone>(b: &Bound<T>) -> Option<(T, RangeBoundKind)> {
    b.as_ref().map(|(v, k)| (v.clone(), kind_in(*k)))
}

fn bound_out<T>(b: Option<(T, RangeBoundKind)>) -> Bound<T> {
    b.map(|(v, k)| (v, kind_out(k)))
}

fn to_pg(param: &Param) -> ParameterValue {
    match param {
        Param::Boolean(v) => ParameterValue::Boolean(*v),
        Param::Int8(v) => ParameterValue::Int8(*v),
        Param::Int16(v) => ParameterValue::Int16(*v),
        Param::Int32(v) => ParameterValue::Int32(*v),
        Param::Int64(v) => ParameterValue::Int64(*v),
        Param::Floating32(v) => ParameterValue::Floating32(*v),
        Param::Floating64(v) => ParameterValue::Floating64(*v),
        Param::Str(v) => ParameterValue::Str(v.clone()),
        Param::Binary(v) => ParameterValue::Binary(v.clone()),
        Param::Date(v) => ParameterValue::Date(*v),
        Param::Time(v) => ParameterValue::Time(*v),
        Param::Datetime(v) => ParameterValue::Datetime(*v),
        Param::Timestamp(v) => ParameterValue::Timestamp(*v),
        Param::Uuid(v) => ParameterValue::Uuid(v.clone()),
        Param::Jsonb(v) => ParameterValue::Jsonb(v.to_string().into_bytes()),
        Param::JsonbRaw(v) => ParameterValue::Jsonb(v.clone()),
        Param::Decimal(v) => ParameterValue::Decimal(v.clone()),
        Param::RangeInt32((lo, hi)) => ParameterValue::RangeInt32((bound_in(lo), bound_in(hi))),
        Param::RangeInt64((lo, hi)) => ParameterValue::RangeInt64((bound_in(lo), bound_in(hi))),
        Param::RangeDecimal((lo, hi)) => ParameterValue::RangeDecimal((bound_in(lo), bound_in(hi))),
        Param::ArrayInt32(v) => ParameterValue::ArrayInt32(v.clone()),
        Param::ArrayInt64(v) => ParameterValue::ArrayInt64(v.clone()),
        Param::ArrayDecimal(v) => ParameterValue::ArrayDecimal(v.clone()),
        Param::ArrayStr(v) => ParameterValue::ArrayStr(v.clone()),
        Param::Interval((micros, days, months)) => ParameterValue::Interval(Interval {
            micros: *micros,
            days: *days,
            months: *months,
        }),
        Param::DbNull | Param::Unsupported(_) => ParameterValue::DbNull,
    }
}

fn to_json(value: DbValue) -> Param {
    match value {
        DbValue::Boolean(v) => Param::Boolean(v),
        DbValue::Int8(v) => Param::Int8(v),
        DbValue::Int16(v) => Param::Int16(v),
        DbValue::Int32(v) => Param::Int32(v),
        DbValue::Int64(v) => Param::Int64(v),
        DbValue::Floating32(v) => Param::Floating32(v),
        DbValue::Floating64(v) => Param::Floating64(v),
        DbValue::Str(v) => Param::Str(v),
        DbValue::Binary(v) => Param::Binary(v),
        DbValue::Date(v) => Param::Date(v),
        DbValue::Time(v) => Param::Time(v),
        DbValue::Datetime(v) => Param::Datetime(v),
        DbValue::Timestamp(v) => Param::Timestamp(v),
        DbValue::Uuid(v) => Param::Uuid(v),
        DbValue::Jsonb(v) => match serde_json::from_slice(&v) {
            Ok(json) => Param::Jsonb(json),
            Err(_) => Param::JsonbRaw(v),
        },
        DbValue::Decimal(v) => Param::Decimal(v),
        DbValue::RangeInt32((lo, hi)) => Param::RangeInt32((bound_out(lo), bound_out(hi))),
        DbValue::RangeInt64((lo, hi)) => Param::RangeInt64((bound_out(lo), bound_out(hi))),
        DbValue::RangeDecimal((lo, hi)) => Param::RangeDecimal((bound_out(lo), bound_out(hi))),
        DbValue::ArrayInt32(v) => Param::ArrayInt32(v),
        DbValue::ArrayInt64(v) => Param::ArrayInt64(v),
        DbValue::ArrayDecimal(v) => Param::ArrayDecimal(v),
        DbValue::ArrayStr(v) => Param::ArrayStr(v),
        DbValue::Interval(i) => Param::Interval((i.micros, i.days, i.months)),
        DbValue::DbNull => Param::DbNull,
        DbValue::Unsupported(v) => Param::Unsupported(v),
    }
}

#[derive(Serialize, Default)]
struct Outcome {
    columns: Vec<(String, String)>,
    rows: Vec<Vec<Param>>,
    affected: Option<u64>,
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
    let (kind, code) = match &error {
        Error::ConnectionFailed(_) => ("connection-failed", None),
        Error::BadParameter(_) => ("bad-parameter", None),
        Error::QueryFailed(QueryError::DbError(db)) => ("query-failed", Some(db.code.clone())),
        Error::QueryFailed(QueryError::Text(_)) => ("query-failed", None),
        Error::ValueConversionFailed(_) => ("value-conversion-failed", None),
        Error::Other(_) => ("other", None),
    };
    json(
        409,
        serde_json::json!({"error": format!("{error:?}"), "kind": kind, "code": code, "statement": statement, "results": results}),
    )
}

async fn open(batch: &Batch) -> Result<Connection, Error> {
    let builder = || -> Result<ConnectionBuilder, Error> {
        let builder = ConnectionBuilder::new(&batch.address);
        if let Some(ca) = &batch.ca {
            builder.set_ca_root(ca)?;
        }
        Ok(builder)
    };
    match batch.open {
        Open::Async => Connection::open_async(batch.address.clone()).await,
        Open::Sync => Connection::open(&batch.address),
        Open::Builder => builder()?.build(),
        Open::BuilderAsync => builder()?.build_async().await,
    }
}

fn columns(columns: Vec<spin_sdk::pg::Column>) -> Vec<(String, String)> {
    columns
        .into_iter()
        .map(|c| {
            (
                c.name,
                format!("{:?}", c.data_type).replace("DbDataType::", ""),
            )
        })
        .collect()
}

async fn run(batch: &Batch) -> anyhow::Result<http::Response<String>> {
    let connection = match open(batch).await {
        Ok(connection) => connection,
        Err(error) => return failed(error, None, &[]),
    };
    let mut held = Vec::new();
    for _ in 0..batch.extra_connections {
        match open(batch).await {
            Ok(extra) => held.push(extra),
            Err(error) => {
                return json(
                    409,
                    serde_json::json!({"error": format!("{error:?}"), "opened": held.len() + 1}),
                );
            }
        }
    }
    let mut results = Vec::new();
    for (i, statement) in batch.statements.iter().enumerate() {
        let params: Vec<ParameterValue> = statement.params.iter().map(to_pg).collect();
        let outcome = match (statement.query, batch.sync) {
            (false, true) => connection
                .execute(&statement.sql, &params)
                .map(|n| Outcome {
                    affected: Some(n),
                    ..Outcome::default()
                }),
            (false, false) => connection
                .execute_async(statement.sql.clone(), params)
                .await
                .map(|n| Outcome {
                    affected: Some(n),
                    ..Outcome::default()
                }),
            (true, true) => connection
                .query(&statement.sql, &params)
                .map(|set| Outcome {
                    columns: columns(set.columns),
                    rows: set
                        .rows
                        .into_iter()
                        .map(|row| row.into_iter().map(to_json).collect())
                        .collect(),
                    affected: None,
                }),
            (true, false) => match connection.query_async(statement.sql.clone(), params).await {
                Err(error) => Err(error),
                Ok((cols, mut rows, result)) => {
                    let mut outcome = Outcome {
                        columns: columns(cols),
                        ..Outcome::default()
                    };
                    let limit = batch.take.unwrap_or(usize::MAX);
                    while outcome.rows.len() < limit {
                        match rows.next().await {
                            Some(row) => outcome.rows.push(row.into_iter().map(to_json).collect()),
                            None => break,
                        }
                    }
                    // Reading fewer rows drops the rest: the statement stops, the outcome is Ok.
                    drop(rows);
                    result.await.map(|()| outcome)
                }
            },
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
