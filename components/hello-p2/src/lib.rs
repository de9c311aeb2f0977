//! A WASIp2 HTTP component on plain wit-bindgen: exports wasi:http/incoming-handler@0.2.12 and
//! answers with its path and the route moa matched (the `spin-matched-route` header); a path ending
//! in `/fetch?<path>` sends `GET <path>` with a relative URI (no scheme, no authority) instead.

wit_bindgen::generate!({
    path: "../../wit/guest/wasi-http-proxy-0.2",
    world: "moa:http-proxy-guest/guest",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
};

/// `GET <path>` with no scheme and no authority; the status and body, or the error.
fn fetch_relative(path: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    if request.set_path_with_query(Some(path)).is_err() {
        return format!("invalid path {path}\n");
    }
    let Some(body) = request.body().ok() else {
        return "no request body\n".into();
    };
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(error) => return format!("outbound failed: {error:?}\n"),
    };
    let _ = OutgoingBody::finish(body, None);
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(error))) => return format!("outbound failed: {error:?}\n"),
        _ => return "outbound failed: no response\n".into(),
    };
    let status = response.status();
    let mut text = Vec::new();
    if let Ok(body) = response.consume()
        && let Ok(stream) = body.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            text.extend_from_slice(&chunk);
        }
    }
    format!("status {status}\n{}", String::from_utf8_lossy(&text))
}

struct HelloP2;

impl Guest for HelloP2 {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let route = request
            .headers()
            .get("spin-matched-route")
            .into_iter()
            .next()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let message = match path.split_once("/fetch?") {
            Some((_, target)) => fetch_relative(target),
            None => format!(
                "Hello from moa (wit-bindgen, wasi:http@0.2) at {path}\nmatched route: {route}\n"
            ),
        };

        let headers = Fields::new();
        let _ = headers.append("content-type", b"text/plain");
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            // A failed write means the client went away; there is no one left to tell.
            let _ = stream.blocking_write_and_flush(message.as_bytes());
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

export!(HelloP2);
