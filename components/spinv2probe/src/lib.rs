//! Test component: what spin-sdk 2 to 5 components import and export, through their WIT.
//! `POST /sqlite/<label>` runs a JSON batch (`{"statements": [{"sql", "params"}]}`, a parameter
//! `{"integer": 1}`, `{"real": 1.5}`, `{"text": "x"}`, `{"blob": [0, 1]}` or `null`) on one
//! `fermyon:spin/sqlite@2.0.0` connection and answers `{"results": [{"columns", "rows"}]}`, or 409
//! with `{"error", "statement"}`. The unversioned `fermyon:spin/inbound-redis` export counts each
//! message under `seen:<message>` in the `default` store (`fermyon:spin/key-value@2.0.0`); `trap`
//! panics and `fail` returns the interface's `error`. `POST /redis` (`{"address"}`) runs a fixed
//! script through `fermyon:spin/redis@2.0.0` and answers what each call returned; `POST /mqtt`
//! (`{"address", "username", "password", "topic", "payload", "qos": 0|1|2}`) publishes once
//! through `fermyon:spin/mqtt@2.0.0`. A failed call is 409 with the error.

use serde_json::{Value as Json, json};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

mod spin2 {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit",
        world: "moa:host/spin-v2-guest",
        generate_all,
    });
}

mod spin1 {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit/legacy",
        world: "moa:legacy/redis-v1-guest",
        generate_all,
    });
}

use spin1::exports::fermyon::spin::inbound_redis::Guest as InboundRedis;
use spin1::fermyon::spin::redis_types::Error as RedisError;
use spin2::fermyon::spin::key_value::Store;
use spin2::fermyon::spin::mqtt;
use spin2::fermyon::spin::redis;
use spin2::fermyon::spin::sqlite::{Connection, Value};

struct Probe;

impl InboundRedis for Probe {
    fn handle_message(message: Vec<u8>) -> Result<(), RedisError> {
        let text = String::from_utf8_lossy(&message).into_owned();
        match text.as_str() {
            "trap" => panic!("spinv2probe was asked to trap"),
            "fail" => return Err(RedisError::Error),
            _ => {}
        }
        let store = Store::open("default").map_err(|_| RedisError::Error)?;
        let key = format!("seen:{text}");
        let count = match store.get(&key) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
            Ok(None) | Err(_) => 0,
        };
        store
            .set(&key, (count + 1).to_string().as_bytes())
            .map_err(|_| RedisError::Error)
    }
}

spin1::export!(Probe with_types_in spin1);

fn to_value(param: &Json) -> Value {
    if let Some(v) = param.get("integer").and_then(Json::as_i64) {
        Value::Integer(v)
    } else if let Some(v) = param.get("real").and_then(Json::as_f64) {
        Value::Real(v)
    } else if let Some(v) = param.get("text").and_then(Json::as_str) {
        Value::Text(v.to_string())
    } else if let Some(v) = param.get("blob").and_then(Json::as_array) {
        Value::Blob(v.iter().filter_map(Json::as_u64).map(|b| b as u8).collect())
    } else {
        Value::Null
    }
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Integer(v) => json!({ "integer": v }),
        Value::Real(v) => json!({ "real": v }),
        Value::Text(v) => json!({ "text": v }),
        Value::Blob(v) => json!({ "blob": v }),
        Value::Null => Json::Null,
    }
}

fn reply(status: u16, body: Json) -> anyhow::Result<http::Response<String>> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())?)
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let batch: Json = serde_json::from_slice(&body)?;
    match info.as_str() {
        "/redis" => return redis_script(batch["address"].as_str().unwrap_or("")),
        "/mqtt" => return mqtt_publish(&batch),
        _ => {}
    }
    let Some(label) = info.strip_prefix("/sqlite/") else {
        return reply(
            404,
            json!({ "error": "POST /sqlite/<label>, /redis or /mqtt" }),
        );
    };
    let connection = match Connection::open(label) {
        Ok(connection) => connection,
        Err(error) => {
            return reply(
                409,
                json!({ "error": format!("{error:?}"), "statement": 0 }),
            );
        }
    };
    let mut results = Vec::new();
    let statements = batch["statements"].as_array().cloned().unwrap_or_default();
    for (index, statement) in statements.iter().enumerate() {
        let params: Vec<Value> = statement["params"]
            .as_array()
            .map(|p| p.iter().map(to_value).collect())
            .unwrap_or_default();
        match connection.execute(statement["sql"].as_str().unwrap_or(""), &params) {
            Ok(result) => results.push(json!({
                "columns": result.columns,
                "rows": result
                    .rows
                    .iter()
                    .map(|row| row.values.iter().map(to_json).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            })),
            Err(error) => {
                return reply(
                    409,
                    json!({ "error": format!("{error:?}"), "statement": index }),
                );
            }
        }
    }
    reply(200, json!({ "results": results }))
}

/// Answers 409 with the error of a failed call.
macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(error) => return reply(409, json!({ "error": format!("{error:?}") })),
        }
    };
}

fn redis_script(address: &str) -> anyhow::Result<http::Response<String>> {
    let connection = attempt!(redis::Connection::open(address));
    attempt!(connection.set("v2:key", b"\x00bytes"));
    let got = attempt!(connection.get("v2:key"));
    let first = attempt!(connection.incr("v2:counter"));
    let second = attempt!(connection.incr("v2:counter"));
    let wrong_type = connection.incr("v2:key");
    let added = attempt!(connection.sadd("v2:set", &["a".into(), "b".into(), "a".into()]));
    let mut members = attempt!(connection.smembers("v2:set"));
    members.sort();
    let removed = attempt!(connection.srem("v2:set", &["a".into()]));
    let deleted = attempt!(connection.del(&["v2:key".into(), "v2:missing".into()]));
    let executed = attempt!(connection.execute(
        "HSET",
        &[
            redis::RedisParameter::Binary(b"v2:hash".to_vec()),
            redis::RedisParameter::Binary(b"f".to_vec()),
            redis::RedisParameter::Int64(7),
        ],
    ));
    attempt!(connection.publish("v2:channel", b"hello"));
    reply(
        200,
        json!({
            "get": got,
            "incr": [first, second],
            "incr_wrong_type": format!("{wrong_type:?}"),
            "sadd": added,
            "smembers": members,
            "srem": removed,
            "del": deleted,
            "execute": format!("{executed:?}"),
        }),
    )
}

fn mqtt_publish(request: &Json) -> anyhow::Result<http::Response<String>> {
    let text = |key: &str| request[key].as_str().unwrap_or("").to_string();
    let connection = attempt!(mqtt::Connection::open(
        &text("address"),
        &text("username"),
        &text("password"),
        30,
    ));
    let qos = match request["qos"].as_u64() {
        Some(0) => mqtt::Qos::AtMostOnce,
        Some(1) => mqtt::Qos::AtLeastOnce,
        _ => mqtt::Qos::ExactlyOnce,
    };
    attempt!(connection.publish(&text("topic"), text("payload").as_bytes(), qos));
    reply(200, json!({ "published": true }))
}
