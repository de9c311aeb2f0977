//! Test component: runs statements through the PostgreSQL and MySQL interfaces spin-sdk 6 and older
//! import (`spin:postgres@3.0.0`, `fermyon:spin/{postgres,mysql}@2.0.0`, Spin 1's unversioned ones).
//!
//! `POST /` with `{"interface": "pg3"|"pg2"|"pg1"|"mysql2"|"mysql1", "address", "statements":
//! [{"sql", "params", "query"}]}`; a parameter is `{"int32": 1}`, `{"int64": 1}`, `{"uint8": 1}`,
//! `{"str": "x"}`, `{"boolean": true}`, `{"date": [y, m, d]}` (pg3 only) or `"db_null"`. The answer
//! is `{"results": [{"columns": [[name, type]], "rows": [["Int32(1)", ...]], "affected"}]}` (values
//! as the WIT variant's Debug text), or 409 and `{"error", "statement"}` at the first failure.

use serde::Deserialize;
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

mod legacy {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit",
        world: "moa:host/rdbms-legacy-guest",
        generate_all,
    });
}

/// Spin 1's unversioned interfaces, from their own WIT root.
mod spin1 {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit/legacy",
        world: "moa:legacy/guest",
        generate_all,
    });
}

use legacy::fermyon::spin::mysql as mysql2;
use legacy::fermyon::spin::postgres as pg2;
use legacy::fermyon::spin::rdbms_types as types2;
use legacy::spin::postgres3_0_0::postgres as pg3;
use spin1::fermyon::spin::mysql as mysql1;
use spin1::fermyon::spin::postgres as pg1;
use spin1::fermyon::spin::rdbms_types as types1;

#[derive(Deserialize)]
struct Batch {
    interface: String,
    address: String,
    statements: Vec<Statement>,
}

#[derive(Deserialize)]
struct Statement {
    sql: String,
    #[serde(default)]
    params: Vec<Param>,
    #[serde(default)]
    query: bool,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "snake_case")]
enum Param {
    Boolean(bool),
    Int32(i32),
    Int64(i64),
    Uint8(u8),
    Str(String),
    Date((i32, u8, u8)),
    DbNull,
}

/// One statement's outcome: columns, rows (Debug text), rows affected.
type Outcome = serde_json::Value;

fn outcome<C: std::fmt::Debug, V: std::fmt::Debug>(
    columns: Vec<(String, C)>,
    rows: Vec<Vec<V>>,
    affected: Option<u64>,
) -> Outcome {
    let columns: Vec<(String, String)> = columns
        .into_iter()
        .map(|(name, ty)| (name, format!("{ty:?}").replace("DbDataType::", "")))
        .collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| format!("{v:?}").replace("DbValue::", ""))
                .collect()
        })
        .collect();
    serde_json::json!({"columns": columns, "rows": rows, "affected": affected})
}

macro_rules! rdbms_params {
    ($types:ident, $params:expr) => {
        $params
            .iter()
            .map(|p| match p.clone() {
                Param::Boolean(v) => $types::ParameterValue::Boolean(v),
                Param::Int32(v) => $types::ParameterValue::Int32(v),
                Param::Int64(v) => $types::ParameterValue::Int64(v),
                Param::Uint8(v) => $types::ParameterValue::Uint8(v),
                Param::Str(v) => $types::ParameterValue::Str(v),
                Param::Date(_) | Param::DbNull => $types::ParameterValue::DbNull,
            })
            .collect::<Vec<_>>()
    };
}

macro_rules! row_set {
    ($set:expr, $affected:expr) => {{
        let set = $set;
        outcome(
            set.columns
                .into_iter()
                .map(|c| (c.name, c.data_type))
                .collect(),
            set.rows,
            $affected,
        )
    }};
}

fn pg3_params(params: &[Param]) -> Vec<pg3::ParameterValue> {
    params
        .iter()
        .map(|p| match p.clone() {
            Param::Boolean(v) => pg3::ParameterValue::Boolean(v),
            Param::Int32(v) => pg3::ParameterValue::Int32(v),
            Param::Int64(v) => pg3::ParameterValue::Int64(v),
            Param::Uint8(v) => pg3::ParameterValue::Int16(v.into()),
            Param::Str(v) => pg3::ParameterValue::Str(v),
            Param::Date(v) => pg3::ParameterValue::Date(v),
            Param::DbNull => pg3::ParameterValue::DbNull,
        })
        .collect()
}

/// Runs the batch; `Err((message, statement))` at the first failure.
fn run(batch: &Batch) -> Result<Vec<Outcome>, (String, Option<usize>)> {
    let at = |i: usize| move |e: &dyn std::fmt::Debug| (format!("{e:?}"), Some(i));
    let mut results = Vec::new();
    match batch.interface.as_str() {
        "pg3" => {
            let db = pg3::Connection::open(&batch.address).map_err(|e| (format!("{e:?}"), None))?;
            for (i, s) in batch.statements.iter().enumerate() {
                let params = pg3_params(&s.params);
                results.push(if s.query {
                    row_set!(db.query(&s.sql, &params).map_err(|e| at(i)(&e))?, None)
                } else {
                    let n = db.execute(&s.sql, &params).map_err(|e| at(i)(&e))?;
                    outcome::<(), ()>(vec![], vec![], Some(n))
                });
            }
        }
        "pg2" => {
            let db = pg2::Connection::open(&batch.address).map_err(|e| (format!("{e:?}"), None))?;
            for (i, s) in batch.statements.iter().enumerate() {
                let params = rdbms_params!(types2, s.params);
                results.push(if s.query {
                    row_set!(db.query(&s.sql, &params).map_err(|e| at(i)(&e))?, None)
                } else {
                    let n = db.execute(&s.sql, &params).map_err(|e| at(i)(&e))?;
                    outcome::<(), ()>(vec![], vec![], Some(n))
                });
            }
        }
        "pg1" => {
            for (i, s) in batch.statements.iter().enumerate() {
                let params = rdbms_params!(types1, s.params);
                results.push(if s.query {
                    row_set!(
                        pg1::query(&batch.address, &s.sql, &params).map_err(|e| at(i)(&e))?,
                        None
                    )
                } else {
                    let n = pg1::execute(&batch.address, &s.sql, &params).map_err(|e| at(i)(&e))?;
                    outcome::<(), ()>(vec![], vec![], Some(n))
                });
            }
        }
        "mysql2" => {
            let db =
                mysql2::Connection::open(&batch.address).map_err(|e| (format!("{e:?}"), None))?;
            for (i, s) in batch.statements.iter().enumerate() {
                let params = rdbms_params!(types2, s.params);
                results.push(if s.query {
                    row_set!(db.query(&s.sql, &params).map_err(|e| at(i)(&e))?, None)
                } else {
                    db.execute(&s.sql, &params).map_err(|e| at(i)(&e))?;
                    outcome::<(), ()>(vec![], vec![], None)
                });
            }
        }
        "mysql1" => {
            for (i, s) in batch.statements.iter().enumerate() {
                let params = rdbms_params!(types1, s.params);
                results.push(if s.query {
                    row_set!(
                        mysql1::query(&batch.address, &s.sql, &params).map_err(|e| at(i)(&e))?,
                        None
                    )
                } else {
                    mysql1::execute(&batch.address, &s.sql, &params).map_err(|e| at(i)(&e))?;
                    outcome::<(), ()>(vec![], vec![], None)
                });
            }
        }
        other => return Err((format!("unknown interface `{other}`"), None)),
    }
    Ok(results)
}

fn json(status: u16, body: serde_json::Value) -> anyhow::Result<http::Response<String>> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())?)
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
    match run(&batch) {
        Ok(results) => json(200, serde_json::json!({ "results": results })),
        Err((error, statement)) => json(
            409,
            serde_json::json!({"error": error, "statement": statement}),
        ),
    }
}
