//! What the commerce components (store, inventory, order, payment, saga) share: the caller's
//! identity as the `auth` middleware passes it, JSON replies with error codes, and body parsing.

#[cfg(feature = "http")]
pub mod identity;
#[cfg(feature = "http")]
pub mod reply;
pub mod saga;

#[cfg(feature = "http")]
pub use identity::Identity;
#[cfg(feature = "http")]
pub use reply::{ApiError, ApiResult, json_reply};

#[cfg(feature = "http")]
/// Reads a JSON request body into `T`, or a 400 that says what is wrong.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    request: spin_sdk::http::Request,
) -> ApiResult<T> {
    use spin_sdk::http::body::IncomingBodyExt as _;
    let bytes = request.into_body().bytes().await.map_err(|e| {
        ApiError::bad_request("unreadable_body", format!("cannot read the body: {e:?}"))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("the body is not valid: {e}")))
}

#[cfg(feature = "http")]
/// A new random id (128 bits from WASI's random source, hex).
pub fn new_id() -> String {
    spin_sdk::wasip3::random::random::get_random_bytes(16)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
