//! A local emulator of an OpenAI-compatible chat-completions API (`POST /v1/chat/completions`), so
//! tests and demos exercise moa's `[llm_compute]` client and the AI chat without a real provider.
//!
//! - `Authorization: Bearer <key>` must match the configured key (when one is set), else 401 with
//!   OpenAI's error shape (`{"error": {"message", "type", "code"}}`); a malformed body is a 400.
//! - The answer is deterministic, not generated: `[<model>] ` followed by the prompt's lines that
//!   start with `- ` (the review lines of the chat's prompt), so a test can see what was sent.
//! - Faults for tests: `PUT /__emulator/faults` `{"status": 503, "count": 2, "delay_ms": 500}`
//!   fails the next `count` requests (every request without `count`) with `status` and delays
//!   every answer by `delay_ms`; `{}` clears them. `GET /__emulator/requests` lists the requests
//!   answered so far (model, prompt, status).

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the emulator behaves.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The API key clients must send; `None` accepts any request.
    pub api_key: Option<String>,
}

/// Injected failures and latency.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The status failing requests get (e.g. 500, 503, 429).
    pub status: Option<u16>,
    /// How many requests fail; `None` with a `status` fails all of them.
    pub count: Option<u32>,
    /// Added to every answer.
    pub delay_ms: u64,
}

/// One request as the emulator saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Seen {
    pub model: String,
    pub prompt: String,
    pub status: u16,
}

#[derive(Default)]
struct State {
    faults: Faults,
    seen: Vec<Seen>,
}

/// The emulator: its settings, faults and what it has answered.
pub struct Emulator {
    settings: Settings,
    state: Mutex<State>,
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// OpenAI's error shape.
fn api_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Reply {
    json_reply(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

impl Emulator {
    pub fn new(settings: Settings) -> Arc<Emulator> {
        Arc::new(Emulator {
            settings,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    /// Every chat request answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let emulator = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let emulator = emulator.clone();
                    async move { Ok::<_, std::convert::Infallible>(emulator.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Reply {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let authorization = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "unreadable_body",
                    "the request body could not be read",
                );
            }
        };
        match (method, path.as_str()) {
            (Method::POST, "/v1/chat/completions") => {
                self.complete(authorization.as_deref(), &body).await
            }
            (Method::PUT, "/__emulator/faults") => match serde_json::from_slice::<Faults>(&body) {
                Ok(faults) => {
                    self.set_faults(faults.clone());
                    json_reply(StatusCode::OK, &json!(faults))
                }
                Err(e) => api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_faults",
                    &e.to_string(),
                ),
            },
            (Method::GET, "/__emulator/requests") => {
                json_reply(StatusCode::OK, &json!(self.seen()))
            }
            _ => api_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                &format!("Unknown request URL: {path}"),
            ),
        }
    }

    async fn complete(&self, authorization: Option<&str>, body: &[u8]) -> Reply {
        if let Some(key) = &self.settings.api_key {
            let given = authorization.and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
                return api_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "invalid_api_key",
                    "Incorrect API key provided.",
                );
            }
        }
        let request: ChatRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_body",
                    &format!("We could not parse the JSON body of your request: {e}"),
                );
            }
        };
        let Some(last) = request.messages.iter().rev().find(|m| m.role == "user") else {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_messages",
                "messages must hold a user message",
            );
        };
        let prompt = last.content.clone();
        let (failure, delay) = {
            let mut state = self.state();
            let faults = &mut state.faults;
            let failure = match (faults.status, faults.count) {
                (Some(status), None) => Some(status),
                (Some(status), Some(n)) if n > 0 => {
                    faults.count = Some(n - 1);
                    Some(status)
                }
                _ => None,
            };
            (failure, faults.delay_ms)
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let status = failure
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        self.state().seen.push(Seen {
            model: request.model.clone(),
            prompt: prompt.clone(),
            status: status.as_u16(),
        });
        if status != StatusCode::OK {
            return api_error(
                status,
                "server_error",
                "emulated_failure",
                "The server had an error while processing your request (emulated).",
            );
        }
        let quoted: Vec<&str> = prompt
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("- "))
            .collect();
        let text = format!("[{}] {}", request.model, quoted.join(" "));
        json_reply(
            StatusCode::OK,
            &json!({
                "id": format!("chatcmpl-emulated-{}", self.state().seen.len()),
                "object": "chat.completion",
                "created": 0,
                "model": request.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": prompt.chars().count().div_ceil(4),
                    "completion_tokens": text.chars().count().div_ceil(4),
                    "total_tokens": (prompt.chars().count() + text.chars().count()).div_ceil(4),
                },
            }),
        )
    }
}
