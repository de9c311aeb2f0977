//! `GET /payments/:order`: what the payment component recorded for an order.

use crate::commands::PAYMENTS;
use commerce::{ApiError, ApiResult, Identity, json_reply};
use moa_sdk::documents::{Ops, Store};
use serde_json::{Value, json};
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(match route(&req) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    })
}

fn route(req: &Request) -> ApiResult<http::Response<String>> {
    let identity = Identity::required(req.headers())?;
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let ["payments", order] = parts.as_slice() else {
        return Err(ApiError::not_found("route"));
    };
    let store = Store::open("default")?;
    let order_doc: Value = store
        .find_one("orders", json!({ "_id": order }))?
        .ok_or_else(|| ApiError::not_found("order"))?;
    if !identity.is_admin() && order_doc["customer"] != identity.subject.as_str() {
        return Err(ApiError::not_found("order"));
    }
    let payment: Value = store
        .find_one(PAYMENTS, json!({ "_id": order }))?
        .unwrap_or_else(|| json!({ "state": "NONE" }));
    Ok(json_reply(200, &payment))
}
