//! The owners' HTTP API: set an item's available stock, list a store's stock.

use crate::commands::{STOCK, stock_id};
use commerce::{ApiError, ApiResult, Identity, json_reply, read_json};
use moa_sdk::documents::{Find, Ops, Store};
use serde::Deserialize;
use serde_json::{Value, json};
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

const MAX_QUANTITY: i64 = 1_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    quantity: i64,
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(match route(req).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    })
}

async fn route(req: Request) -> ApiResult<http::Response<String>> {
    let path = req.uri().path().to_string();
    let parts: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let identity = Identity::required(req.headers())?;
    match (
        req.method().as_str(),
        parts
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        ("GET", ["inventory", store]) => {
            let owned = store_of(store).await?;
            identity.require_owner(owned["owner"].as_str().unwrap_or_default())?;
            list(store)
        }
        ("PUT", ["inventory", store, item]) => {
            let (store, item) = (store.to_string(), item.to_string());
            let owned = store_of(&store).await?;
            identity.require_owner(owned["owner"].as_str().unwrap_or_default())?;
            let on_menu = owned["menu"]
                .as_array()
                .is_some_and(|menu| menu.iter().any(|i| i["id"] == item.as_str()));
            if !on_menu {
                return Err(ApiError::not_found("menu item"));
            }
            let body: SetStock = read_json(req).await?;
            set(&store, &item, body.quantity)
        }
        _ => Err(ApiError::not_found("route")),
    }
}

/// The store (owner and menu), or 404.
async fn store_of(store: &str) -> ApiResult<Value> {
    commerce::store(store)
        .await?
        .ok_or_else(|| ApiError::not_found("store"))
}

fn list(store: &str) -> ApiResult<http::Response<String>> {
    let documents = Store::open("default")?;
    let items: Vec<Value> = documents.find(
        STOCK,
        json!({ "store": store }),
        Find::default().sort(json!({ "item": 1 })).limit(1000),
    )?;
    let items: Vec<Value> = items
        .iter()
        .map(|s| json!({ "item": s["item"], "available": s["available"], "reserved": s["reserved"], "sold": s["sold"] }))
        .collect();
    Ok(json_reply(200, &json!({ "store": store, "items": items })))
}

fn set(store: &str, item: &str, quantity: i64) -> ApiResult<http::Response<String>> {
    if !(0..=MAX_QUANTITY).contains(&quantity) {
        return Err(ApiError::bad_request(
            "invalid_quantity",
            format!("quantity is a whole number from 0 to {MAX_QUANTITY}"),
        ));
    }
    let documents = Store::open("default")?;
    let id = stock_id(store, item);
    let doc: Value = documents.transaction(|tx| {
        let current: Option<Value> = tx.find_one(STOCK, json!({ "_id": id }))?;
        let available = current
            .as_ref()
            .and_then(|c| c["available"].as_i64())
            .unwrap_or(0);
        tx.upsert_one(
            STOCK,
            json!({ "_id": id }),
            json!({
                "$set": { "available": quantity, "store": store, "item": item },
                "$inc": { "stocked": quantity - available },
                "$setOnInsert": { "reserved": 0, "sold": 0 },
            }),
        )?;
        Ok(tx
            .find_one(STOCK, json!({ "_id": id }))?
            .unwrap_or_default())
    })?;
    Ok(json_reply(
        200,
        &json!({ "item": item, "available": doc["available"], "reserved": doc["reserved"], "sold": doc["sold"] }),
    ))
}
