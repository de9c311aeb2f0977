//! Test component: `GET /<n>` streams `n` lines (`line <i>`, 20 ms apart) and ends the body well;
//! `GET /<n>/trap` streams the same lines, then panics with the response still open.

use futures::SinkExt as _;
use spin_sdk::http::{BoxBody, IntoResponse, Request, box_body};
use spin_sdk::http_service;
use std::time::Duration;

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parts: Vec<&str> = info.split('/').filter(|s| !s.is_empty()).collect();
    let (lines, trap) = match parts.as_slice() {
        [n] => (n.parse::<usize>()?, false),
        [n, "trap"] => (n.parse::<usize>()?, true),
        _ => anyhow::bail!("GET /<n> or /<n>/trap"),
    };
    let (mut tx, body) = spin_sdk::http::body::stream::<String>();
    spin_sdk::wasip3::spawn(async move {
        for i in 0..lines {
            if tx.send(format!("line {i}\n")).await.is_err() {
                return;
            }
            spin_sdk::time::sleep(Duration::from_millis(20)).await;
        }
        if trap {
            panic!("streamprobe was asked to trap after {lines} lines");
        }
    });
    Ok(http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body::<BoxBody>(box_body(body))?)
}
