//! The order component.
//!
//! - `POST /orders` `{store_id, items: [{item_id, quantity}], payment_key}`: a customer orders;
//!   prices come from the store's menu (`http://store.spin.internal`), never from the client. The
//!   order (`PENDING`) and its `OrderCreated` event commit together; the saga takes it from there.
//! - `GET /orders/:id` (its customer or an admin), `GET /orders` (the caller's own, newest first).
//! - `POST /orders/:id/cancel`: its customer asks to cancel; the saga refunds and restocks what it
//!   must and ends the order `CANCELLED_BY_CUSTOMER`.

use commerce::saga::{self, Line, OrderEvent};
use commerce::{ApiError, ApiResult, Identity, documents, json_reply, now_ms, read_json};
use moa_sdk::documents::{Find, Ops};
use serde::Deserialize;
use serde_json::{Value, json};
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

const ORDERS: &str = "orders";
const MAX_LINES: usize = 50;
const MAX_QUANTITY: u32 = 99;
use commerce::saga::TERMINAL_STATES as TERMINAL;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    store_id: String,
    items: Vec<Item>,
    payment_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    item_id: String,
    quantity: u32,
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(match route(req).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    })
}

async fn route(req: Request) -> ApiResult<http::Response<String>> {
    let identity = Identity::required(req.headers())?;
    let path = req.uri().path().to_string();
    let parts = commerce::segments(&path);
    match (req.method().as_str(), parts.as_slice()) {
        ("POST", ["orders"]) => create(identity, read_json(req).await?).await,
        ("GET", ["orders"]) => mine(&identity),
        ("GET", ["orders", id]) => Ok(json_reply(200, &view(&own(&identity, id)?))),
        ("POST", ["orders", id, "cancel"]) => cancel(&identity, id),
        _ => Err(ApiError::not_found("route")),
    }
}

fn view(order: &Value) -> Value {
    json!({
        "id": order["_id"], "store_id": order["store_id"], "customer": order["customer"],
        "lines": order["lines"], "amount": order["amount"], "state": order["state"],
        "reason": order["reason"], "created_at_ms": order["created_at_ms"],
        "updated_at_ms": order["updated_at_ms"],
    })
}

/// The order if the caller may see it (its customer or an admin); 404 otherwise.
fn own(identity: &Identity, id: &str) -> ApiResult<Value> {
    let order: Value = documents()?
        .find_one(ORDERS, json!({ "_id": id }))?
        .ok_or_else(|| ApiError::not_found("order"))?;
    if identity.is_admin() || order["customer"] == identity.subject.as_str() {
        Ok(order)
    } else {
        Err(ApiError::not_found("order"))
    }
}

fn mine(identity: &Identity) -> ApiResult<http::Response<String>> {
    let orders: Vec<Value> = documents()?.find(
        ORDERS,
        json!({ "customer": identity.subject }),
        Find::default()
            .sort(json!({ "created_at_ms": -1 }))
            .limit(100),
    )?;
    Ok(json_reply(
        200,
        &json!({ "orders": orders.iter().map(view).collect::<Vec<_>>() }),
    ))
}

async fn menu_of(store: &str) -> ApiResult<Value> {
    commerce::store(store)
        .await?
        .ok_or_else(|| ApiError::bad_request("unknown_store", format!("no store `{store}`")))
}

async fn create(identity: Identity, body: NewOrder) -> ApiResult<http::Response<String>> {
    identity.require_group(&["CUSTOMER", "ADMIN"])?;
    if body.items.is_empty() || body.items.len() > MAX_LINES {
        return Err(ApiError::bad_request(
            "invalid_items",
            format!("an order has 1 to {MAX_LINES} items"),
        ));
    }
    let key_ok = !body.payment_key.is_empty()
        && body.payment_key.len() <= 200
        && body
            .payment_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !key_ok {
        return Err(ApiError::bad_request(
            "invalid_payment_key",
            "payment_key is 1-200 letters, digits, - or _",
        ));
    }
    let store = menu_of(&body.store_id).await?;
    let menu = store["menu"].as_array().cloned().unwrap_or_default();
    let mut lines: Vec<Line> = Vec::new();
    for item in &body.items {
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(ApiError::bad_request(
                "invalid_quantity",
                format!("quantity of `{}` must be 1 to {MAX_QUANTITY}", item.item_id),
            ));
        }
        if lines.iter().any(|l| l.item_id == item.item_id) {
            return Err(ApiError::bad_request(
                "duplicate_item",
                format!("`{}` appears twice", item.item_id),
            ));
        }
        let Some(entry) = menu.iter().find(|m| m["id"] == item.item_id.as_str()) else {
            return Err(ApiError::bad_request(
                "unknown_item",
                format!("`{}` is not on this store's menu", item.item_id),
            ));
        };
        lines.push(Line {
            item_id: item.item_id.clone(),
            name: entry["name"].as_str().unwrap_or_default().to_string(),
            quantity: item.quantity,
            unit_price: entry["price"].as_i64().unwrap_or(0),
        });
    }
    let amount: i64 = lines
        .iter()
        .map(|l| l.unit_price * i64::from(l.quantity))
        .sum();
    let order_id = format!("ord_{}", commerce::new_id());
    let now = now_ms();
    let order = json!({
        "_id": order_id, "customer": identity.subject, "store_id": body.store_id,
        "lines": lines, "amount": amount, "payment_key": body.payment_key,
        "state": "PENDING", "reason": null, "cancel_requested": false,
        "created_at_ms": now, "updated_at_ms": now,
        // The saga's sweeper starts the saga itself if OrderCreated has not arrived by then.
        "deadline_at_ms": now + saga::PENDING_TIMEOUT_MS, "step_retries": 0,
    });
    let event = OrderEvent::OrderCreated {
        order_id: order_id.clone(),
        store_id: body.store_id.clone(),
        lines,
        amount,
        payment_key: body.payment_key.clone(),
    };
    documents()?
        .transaction(|tx| {
            tx.insert_one(ORDERS, &order)?;
            tx.publish(saga::message(saga::ORDER_EVENTS, &order_id, &event))?;
            Ok(())
        })
        .map_err(|error| match ApiError::from(error) {
            conflict if conflict.status == 409 => ApiError::new(
                409,
                "payment_key_used",
                "this payment_key already paid for another order",
            ),
            other => other,
        })?;
    Ok(json_reply(202, &view(&order)))
}

fn cancel(identity: &Identity, id: &str) -> ApiResult<http::Response<String>> {
    let order = own(identity, id)?;
    let state = order["state"].as_str().unwrap_or_default();
    if TERMINAL.contains(&state) && state != "COMPLETED" {
        return Err(ApiError::new(
            409,
            "not_cancellable",
            format!("the order is {state}"),
        ));
    }
    if order["cancel_requested"] == true {
        return Ok(json_reply(202, &view(&order)));
    }
    let event = OrderEvent::CancelRequested {
        order_id: id.to_string(),
    };
    documents()?.transaction(|tx| {
        tx.update_one(
            ORDERS,
            json!({ "_id": id }),
            json!({ "$set": { "cancel_requested": true, "updated_at_ms": now_ms() } }),
        )?;
        tx.publish(saga::message(saga::ORDER_EVENTS, id, &event))?;
        Ok(())
    })?;
    Ok(json_reply(202, &view(&own(identity, id)?)))
}
