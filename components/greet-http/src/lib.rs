//! Test component: spin-sdk 7 HTTP (WASIp3) importing `moa-test:greet/greeter@0.1.0`, which no
//! host serves: it works only composed with a dependency. `GET /<a>/<b>/...` greets the last name
//! and lists every name through a `tally` resource owned by the dependency.

mod bindings {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit/guest/greet",
        world: "moa-test:greet/user",
    });
}

use bindings::moa_test::greet::greeter;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let names: Vec<&str> = info.split('/').filter(|s| !s.is_empty()).collect();
    let tally = greeter::Tally::new();
    for name in &names {
        tally.add(name);
    }
    let last = names.last().copied().unwrap_or("world");
    let body = format!("{}\n{}", greeter::greet(last), tally.names().join(","));
    Ok(http::Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(body)?)
}
