//! The reference app's hello component, built with spin-sdk 7 (exports wasi:http/handler@0.3.0).

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

/// Greets the caller and says which path it was called on.
#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let path = req.uri().path().to_string();
    Ok(http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!(
            "Hello from moa (spin-sdk 7, wasi:http@0.3) at {path}\n"
        ))?)
}
