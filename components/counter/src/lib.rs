//! The reference app's counter: each request adds one to a counter kept in the `default`
//! key-value store (spin:key-value@3.0.0) and answers the new value.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;

const KEY: &str = "count";

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let store = Store::open_default().await?;
    let current = match store.get(KEY).await? {
        Some(bytes) => String::from_utf8(bytes)?.parse::<u64>()?,
        None => 0,
    };
    let next = if req.method() == http::Method::GET {
        current + 1
    } else {
        current
    };
    store.set(KEY, next.to_string()).await?;
    Ok(http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!("{next}\n"))?)
}
