//! {{project-name}}: an HTTP component on plain wit-bindgen, exporting
//! wasi:http/incoming-handler@0.2.12 (the WASIp2 proxy world in ./wit).

wit_bindgen::generate!({
    path: "wit",
    world: "moa:http-proxy-guest/guest",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Component;

impl Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let message = format!("Hello from {{project-name}} ({path})\n");
        // Errors here mean the client went away; there is no one left to tell.
        let _ = stream.blocking_write_and_flush(message.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

export!(Component);
