//! JSON replies and the API's error shape: `{"error": <code>, "message": ...}` with the status
//! that fits (400 bad input, 401/403 auth, 404, 409 conflicts, 503 a store that is unavailable).

use moa_sdk::documents;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(400, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(404, "not_found", format!("no such {what}"))
    }

    pub fn into_response(self) -> http::Response<String> {
        json_reply(
            self.status,
            &serde_json::json!({ "error": self.code, "message": self.message }),
        )
    }
}

impl From<documents::Error> for ApiError {
    fn from(error: documents::Error) -> Self {
        let (kind, message) = documents::kind_and_message(&error);
        match kind {
            "duplicate-key" => ApiError::new(409, "conflict", message),
            "write-conflict" | "unavailable" => ApiError::new(503, "store_unavailable", message),
            _ => ApiError::new(500, "store_error", format!("{kind}: {message}")),
        }
    }
}

/// `value` as a JSON response with `status`.
pub fn json_reply<T: Serialize>(status: u16, value: &T) -> http::Response<String> {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .unwrap_or_else(|_| http::Response::new(String::new()))
}
