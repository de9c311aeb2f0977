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

/// A store as the store component shows it (`id`, `name`, `owner`, `menu`), read over in-app HTTP
/// (`http://store.spin.internal`, which the caller's `allowed_outbound_hosts` must list); `None`
/// when there is no such store.
#[cfg(feature = "http")]
pub async fn store(id: &str) -> ApiResult<Option<serde_json::Value>> {
    use spin_sdk::http::body::IncomingBodyExt as _;
    let unavailable = |e: String| ApiError::new(503, "store_unavailable", e);
    let response = spin_sdk::http::get(format!("http://store.spin.internal/stores/{id}"))
        .await
        .map_err(|e| unavailable(format!("{e:?}")))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .bytes()
        .await
        .map_err(|e| unavailable(format!("{e:?}")))?;
    match status {
        200 => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::new(502, "bad_store_reply", e.to_string())),
        404 => Ok(None),
        other => Err(ApiError::new(
            502,
            "bad_store_reply",
            format!("the store component answered {other}"),
        )),
    }
}

#[cfg(feature = "http")]
/// A new random id (128 bits from WASI's random source, hex).
pub fn new_id() -> String {
    spin_sdk::wasip3::random::random::get_random_bytes(16)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(feature = "http")]
/// The app's `default` document store, or 503 when it cannot be opened.
pub fn documents() -> ApiResult<moa_sdk::documents::Store> {
    Ok(moa_sdk::documents::Store::open("default")?)
}

/// A request path's non-empty segments (`/orders/o1/cancel` -> `["orders", "o1", "cancel"]`).
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}
