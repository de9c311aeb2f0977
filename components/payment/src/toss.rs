//! A Toss Payments v1 client: Basic auth with the secret key, an `Idempotency-Key` on every POST,
//! connect / first-byte / between-bytes timeouts on every call, and Toss's `{code, message}`
//! errors. It uses wasi:http 0.2's outgoing handler with blocking pollables, which a synchronous
//! event handler may call.

use crate::fermyon::spin::variables;
use base64::Engine as _;
use serde_json::Value;
use std::time::Duration;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

pub struct Toss {
    scheme: Scheme,
    authority: String,
    prefix: String,
    authorization: String,
    timeout: Duration,
}

/// What a call ended with.
pub enum Answer {
    /// 2xx with the Payment object.
    Ok(Value),
    /// A definite refusal: `{code, message}` with its status.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// Unknown outcome: retry later with the same idempotency key.
    Unknown(String),
}

fn variable(name: &str) -> Option<String> {
    variables::get(name).ok().filter(|v| !v.trim().is_empty())
}

impl Toss {
    pub fn from_variables() -> Result<Toss, String> {
        let base_url = variable("toss_base_url").ok_or("variable `toss_base_url` is not set")?;
        let secret = variable("toss_secret_key").ok_or("variable `toss_secret_key` is not set")?;
        let timeout_ms = variable("toss_timeout_ms")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(10_000);
        let (scheme, rest) = match base_url.split_once("://") {
            Some(("https", rest)) => (Scheme::Https, rest),
            Some(("http", rest)) => (Scheme::Http, rest),
            _ => return Err(format!("toss_base_url `{base_url}` is not an http(s) URL")),
        };
        let (authority, prefix) = match rest.split_once('/') {
            Some((authority, path)) => (authority, format!("/{}", path.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        Ok(Toss {
            scheme,
            authority: authority.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{secret}:"))
            ),
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    pub fn post(&self, path: &str, idempotency_key: &str, body: &Value) -> Answer {
        self.call(
            Method::Post,
            path,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", idempotency_key),
            ],
            body.to_string().as_bytes(),
        )
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call(Method::Get, path, &[], &[])
    }

    fn call(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        match self.send(method, path, headers, body) {
            Ok((status, bytes)) => classify(status, &bytes),
            Err(why) => Answer::Unknown(why),
        }
    }

    fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let mut entries: Vec<(String, Vec<u8>)> = vec![(
            "authorization".into(),
            self.authorization.as_bytes().to_vec(),
        )];
        entries.extend(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        let fields = Fields::from_list(&entries).map_err(|e| format!("bad header: {e:?}"))?;
        let request = OutgoingRequest::new(fields);
        let path = format!("{}{path}", self.prefix);
        let set = request.set_method(&method).is_ok()
            && request.set_scheme(Some(&self.scheme)).is_ok()
            && request.set_authority(Some(&self.authority)).is_ok()
            && request.set_path_with_query(Some(&path)).is_ok();
        if !set {
            return Err(format!("cannot build a request for {path}"));
        }
        let outgoing = request.body().map_err(|()| "no request body".to_string())?;
        let options = RequestOptions::new();
        let nanos = self.timeout.as_nanos() as u64;
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        let future = outgoing_handler::handle(request, Some(options)).map_err(describe)?;
        {
            let stream = outgoing
                .write()
                .map_err(|()| "no body stream".to_string())?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("cannot send the body: {e:?}"))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(describe)?;
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(describe(code)),
            Some(Err(())) | None => return Err("the response was lost".into()),
        };
        let status = response.status();
        let incoming = response
            .consume()
            .map_err(|()| "no response body".to_string())?;
        let stream = incoming
            .stream()
            .map_err(|()| "no response body stream".to_string())?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(format!(
                        "reading the answer failed: {}",
                        e.to_debug_string()
                    ));
                }
            }
        }
        Ok((status, bytes))
    }
}

fn describe(code: ErrorCode) -> String {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => "Toss did not answer in time".into(),
        other => format!("Toss call failed: {other:?}"),
    }
}

fn classify(status: u16, bytes: &[u8]) -> Answer {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Answer::Ok(body);
    }
    let code = body["code"].as_str().unwrap_or_default().to_string();
    let message = body["message"].as_str().unwrap_or_default().to_string();
    // Outcomes that say nothing final: retry with the same key.
    if status >= 500 || status == 409 || code == "PROVIDER_ERROR" || code.is_empty() {
        return Answer::Unknown(format!("Toss answered {status} {code}: {message}"));
    }
    Answer::Refused {
        status,
        code,
        message,
    }
}
