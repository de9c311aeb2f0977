//! Test component: `POST /?topic=<t>&qos=<0|1|2>&count=<n>` publishes the request body `n` times
//! (`<body> <i>`) on one `spin:mqtt` connection to the variable `mqtt_address`, with the
//! credentials in the variables `mqtt_username` and `mqtt_password`; answers `published <n>`, or
//! 409 and the error. `?pause_ms=<ms>` waits between messages.

use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::mqtt::{Connection, Qos};
use std::time::Duration;

fn reply(status: u16, body: impl Into<String>) -> anyhow::Result<http::Response<String>> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body.into())?)
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req
        .into_body()
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let topic = param(&query, "topic").unwrap_or("moa/test").to_string();
    let qos = match param(&query, "qos") {
        Some("0") => Qos::AtMostOnce,
        Some("2") => Qos::ExactlyOnce,
        _ => Qos::AtLeastOnce,
    };
    let count: usize = param(&query, "count").unwrap_or("1").parse()?;
    let pause: u64 = param(&query, "pause_ms").unwrap_or("0").parse()?;
    let address = spin_sdk::variables::get("mqtt_address").await?;
    let username = spin_sdk::variables::get("mqtt_username")
        .await
        .unwrap_or_default();
    let password = spin_sdk::variables::get("mqtt_password")
        .await
        .unwrap_or_default();
    let connection = match Connection::open(&address, &username, &password, 30).await {
        Ok(connection) => connection,
        Err(error) => return reply(409, format!("open: {error:?}")),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    for i in 0..count {
        if let Err(error) = connection
            .publish(&topic, format!("{text} {i}").into_bytes(), qos)
            .await
        {
            return reply(409, format!("publish {i}: {error:?}"));
        }
        if pause > 0 {
            spin_sdk::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    reply(200, format!("published {count}"))
}
