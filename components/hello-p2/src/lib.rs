//! A WASIp2 HTTP component on plain wit-bindgen: exports wasi:http/incoming-handler@0.2.12 and
//! answers with its path and the route moa matched (the `spin-matched-route` header).

wit_bindgen::generate!({
    path: "../../wit/guest/wasi-http-proxy-0.2",
    world: "moa:http-proxy-guest/guest",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

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
        let message = format!(
            "Hello from moa (wit-bindgen, wasi:http@0.2) at {path}\nmatched route: {route}\n"
        );

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
