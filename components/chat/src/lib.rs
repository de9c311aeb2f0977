//! The AI chat's HTTP side, behind the auth middleware.
//!
//! - `POST /chat` `{store_id, question}`: a signed-in customer asks about a store. The question
//!   (`pending`) and its `chat.questions` message commit together (outbox), so a question is never
//!   lost; `ai-chat` answers it from the stream. Answers 202 with the chat.
//! - `GET /chat/:id`: the chat as it stands (its asker or an admin): `pending`, `answering`,
//!   `answered` (with `answer`, `mode`, `sources`, `sentiment`) or `failed` (with `error`).
//! - `GET /chat/:id/events`: the same as server-sent events: a `state` event now and at each change,
//!   then `answer` (answered or failed) and the end; after `chat_events_max_ms` without an answer, a
//!   `timeout` event and the end (reconnect to go on following).

use commerce::{ApiError, ApiResult, Identity, documents, json_reply, now_ms, read_json};
use futures::SinkExt as _;
use moa_sdk::documents::{Ops, Store};
use moa_sdk::messaging::Message;
use serde::Deserialize;
use serde_json::{Value, json};
use spin_sdk::http::{BoxBody, FullBody, IntoResponse, Request, Response, box_body};
use spin_sdk::http_service;
use std::time::Duration;

const CHATS: &str = "chats";
const QUESTIONS: &str = "chat.questions";
const MAX_QUESTION_CHARS: usize = 1000;
const FINAL_STATES: [&str; 2] = ["answered", "failed"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChat {
    store_id: String,
    question: String,
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(match route(req).await {
        Ok(response) => response,
        Err(error) => boxed(error.into_response()),
    })
}

fn boxed(response: http::Response<String>) -> Response<BoxBody> {
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, box_body(FullBody::new(bytes_of(body))))
}

fn bytes_of(text: String) -> bytes::Bytes {
    bytes::Bytes::from(text.into_bytes())
}

async fn route(req: Request) -> ApiResult<Response<BoxBody>> {
    let identity = Identity::required(req.headers())?;
    let path = req.uri().path().to_string();
    let parts = commerce::segments(&path);
    match (req.method().as_str(), parts.as_slice()) {
        ("POST", ["chat"]) => Ok(boxed(ask(&identity, read_json(req).await?)?)),
        ("GET", ["chat", id]) => Ok(boxed(json_reply(200, &view(&own(&identity, id)?)))),
        ("GET", ["chat", id, "events"]) => events(&identity, id).await,
        _ => Err(ApiError::not_found("route")),
    }
}

/// The chat as clients see it.
fn view(chat: &Value) -> Value {
    let mut view = json!({
        "id": chat["_id"], "store_id": chat["store_id"], "question": chat["question"],
        "state": chat["state"], "created_at_ms": chat["created_at_ms"],
        "updated_at_ms": chat["updated_at_ms"],
    });
    for key in [
        "answer",
        "mode",
        "sources",
        "sentiment",
        "store_name",
        "error",
        "llm_error",
        "model",
    ] {
        if let Some(value) = chat.get(key).filter(|v| !v.is_null()) {
            view[key] = value.clone();
        }
    }
    view
}

/// The chat if the caller may see it (its asker or an admin); 404 otherwise.
fn own(identity: &Identity, id: &str) -> ApiResult<Value> {
    let chat: Value = documents()?
        .find_one(CHATS, json!({ "_id": id }))?
        .ok_or_else(|| ApiError::not_found("chat"))?;
    if identity.is_admin() || chat["asker"] == identity.subject.as_str() {
        Ok(chat)
    } else {
        Err(ApiError::not_found("chat"))
    }
}

fn valid_store_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn ask(identity: &Identity, body: NewChat) -> ApiResult<http::Response<String>> {
    identity.require_group(&["CUSTOMER", "ADMIN"])?;
    if !valid_store_id(&body.store_id) {
        return Err(ApiError::bad_request(
            "invalid_store_id",
            "store_id is 1-64 letters, digits, - or _",
        ));
    }
    let question = body.question.trim();
    let length = question.chars().count();
    if length == 0 || length > MAX_QUESTION_CHARS {
        return Err(ApiError::bad_request(
            "invalid_question",
            format!("a question is 1 to {MAX_QUESTION_CHARS} characters"),
        ));
    }
    let id = format!("chat_{}", commerce::new_id());
    let now = now_ms();
    let chat = json!({
        "_id": id, "asker": identity.subject, "store_id": body.store_id,
        "question": question, "state": "pending",
        "created_at_ms": now, "updated_at_ms": now,
    });
    let message = Message::new(QUESTIONS, json!({ "chat_id": id }).to_string())
        .with_key(body.store_id.clone());
    documents()?.transaction(|tx| {
        tx.insert_one(CHATS, &chat)?;
        tx.publish(message.clone())?;
        Ok(())
    })?;
    let mut reply = json_reply(202, &view(&chat));
    if let Ok(location) = http::HeaderValue::from_str(&format!("/chat/{id}")) {
        reply.headers_mut().insert(http::header::LOCATION, location);
    }
    Ok(reply)
}

/// How long one events stream follows a chat before it tells the client to reconnect.
async fn events_max() -> Duration {
    let ms = spin_sdk::variables::get("chat_events_max_ms")
        .await
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(50_000);
    Duration::from_millis(ms)
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

async fn events(identity: &Identity, id: &str) -> ApiResult<Response<BoxBody>> {
    let chat = own(identity, id)?;
    let (mut tx, body) = spin_sdk::http::body::stream::<String>();
    let id = id.to_string();
    let max = events_max().await;
    spin_sdk::wasip3::spawn(async move {
        let started = std::time::Instant::now();
        let mut chat = chat;
        let mut last_update = None;
        let mut quiet = Duration::ZERO;
        let poll = Duration::from_millis(200);
        loop {
            let state = chat["state"].as_str().unwrap_or_default().to_string();
            let update = chat["updated_at_ms"].as_u64();
            if FINAL_STATES.contains(&state.as_str()) {
                let _ = tx.send(sse("answer", &view(&chat))).await;
                break;
            }
            if update != last_update {
                if tx.send(sse("state", &view(&chat))).await.is_err() {
                    break;
                }
                last_update = update;
                quiet = Duration::ZERO;
            } else if quiet >= Duration::from_secs(10) {
                // A comment line keeps proxies from closing an idle stream.
                if tx.send(": waiting\n\n".to_string()).await.is_err() {
                    break;
                }
                quiet = Duration::ZERO;
            }
            if started.elapsed() >= max {
                let _ = tx
                    .send(sse(
                        "timeout",
                        &json!({"id": id, "state": state, "retry": "reconnect to follow on"}),
                    ))
                    .await;
                break;
            }
            spin_sdk::time::sleep(poll).await;
            quiet += poll;
            let found =
                Store::open("default").and_then(|s| s.find_one(CHATS, json!({ "_id": id })));
            match found {
                Ok(Some(next)) => chat = next,
                Ok(None) => break,
                // A store hiccup: try again at the next poll.
                Err(_) => {}
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(box_body(body))
        .map_err(|e| ApiError::new(500, "response_error", e.to_string()))
}
