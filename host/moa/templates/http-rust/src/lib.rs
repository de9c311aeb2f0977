//! {{project-name}}: an HTTP component built with spin-sdk 7 (exports wasi:http/handler@0.3.0).

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

/// Answers every request routed to this component.
#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let path = req.uri().path().to_string();
    Ok(http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!("Hello from {{project-name}} ({path})\n"))?)
}
