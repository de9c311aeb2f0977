//! The store component: stores with their owners, and each store's menu with prices in KRW.
//!
//! - `GET /stores`, `GET /stores/:id`: anyone (the auth rules make them public).
//! - `POST /stores` `{name, owner?}`: an `OWNER` creates a store they own; an `ADMIN` may name
//!   the owner.
//! - `PUT /stores/:id/menu` `{items: [{id, name, price}]}`: the store's owner or an `ADMIN`
//!   replaces the menu. Prices are whole KRW, 1 to 10,000,000; item ids are unique in a menu.
//!
//! Other components read a store's menu (prices) with `GET http://store.spin.internal/stores/:id`.

use commerce::{ApiError, ApiResult, Identity, documents, json_reply, read_json};
use moa_sdk::documents::{Find, Ops};
use serde::{Deserialize, Serialize};
use serde_json::json;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

const STORES: &str = "stores";
const MAX_PRICE: i64 = 10_000_000;
const MAX_MENU_ITEMS: usize = 500;

#[derive(Debug, Serialize, Deserialize)]
struct MenuItem {
    id: String,
    name: String,
    price: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoreDoc {
    #[serde(rename = "_id")]
    id: String,
    name: String,
    owner: String,
    #[serde(default)]
    menu: Vec<MenuItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewStore {
    name: String,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MenuBody {
    items: Vec<MenuItem>,
}

fn view(store: &StoreDoc) -> serde_json::Value {
    json!({ "id": store.id, "name": store.name, "owner": store.owner, "menu": store.menu })
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
    let parts = commerce::segments(&path);
    let method = req.method().clone();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["stores"]) => list(),
        ("GET", ["stores", id]) => get(id),
        ("POST", ["stores"]) => {
            let identity = Identity::required(req.headers())?;
            create(identity, read_json(req).await?)
        }
        ("PUT", ["stores", id, "menu"]) => {
            let identity = Identity::required(req.headers())?;
            let id = id.to_string();
            set_menu(identity, &id, read_json(req).await?)
        }
        (_, ["stores", ..]) => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{method} is not supported on {path}"),
        )),
        _ => Err(ApiError::not_found("route")),
    }
}

fn list() -> ApiResult<http::Response<String>> {
    let stores: Vec<StoreDoc> = documents()?.find(
        STORES,
        json!({}),
        Find::default().sort(json!({ "name": 1 })).limit(1000),
    )?;
    Ok(json_reply(
        200,
        &json!({ "stores": stores.iter().map(view).collect::<Vec<_>>() }),
    ))
}

fn get(id: &str) -> ApiResult<http::Response<String>> {
    let store: StoreDoc = documents()?
        .find_one(STORES, json!({ "_id": id }))?
        .ok_or_else(|| ApiError::not_found("store"))?;
    Ok(json_reply(200, &view(&store)))
}

fn create(identity: Identity, body: NewStore) -> ApiResult<http::Response<String>> {
    identity.require_group(&["OWNER", "ADMIN"])?;
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a store name has 1 to 100 characters",
        ));
    }
    let owner = match body.owner {
        Some(owner) if identity.is_admin() => owner,
        Some(_) => {
            return Err(ApiError::new(
                403,
                "not_admin",
                "only an admin may name another owner",
            ));
        }
        None => identity.subject.clone(),
    };
    let store = StoreDoc {
        id: commerce::new_id(),
        name,
        owner,
        menu: Vec::new(),
    };
    documents()?.insert_one(STORES, &store)?;
    Ok(json_reply(201, &view(&store)))
}

fn set_menu(identity: Identity, id: &str, body: MenuBody) -> ApiResult<http::Response<String>> {
    if body.items.len() > MAX_MENU_ITEMS {
        return Err(ApiError::bad_request(
            "too_many_items",
            format!("a menu has at most {MAX_MENU_ITEMS} items"),
        ));
    }
    let mut ids = std::collections::BTreeSet::new();
    for item in &body.items {
        let valid_id = !item.id.is_empty()
            && item.id.len() <= 64
            && item
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_id {
            return Err(ApiError::bad_request(
                "invalid_item_id",
                format!("item id `{}` must be 1-64 letters, digits, - or _", item.id),
            ));
        }
        if !ids.insert(item.id.as_str()) {
            return Err(ApiError::bad_request(
                "duplicate_item_id",
                format!("item id `{}` appears twice", item.id),
            ));
        }
        if item.name.trim().is_empty() || item.name.chars().count() > 100 {
            return Err(ApiError::bad_request(
                "invalid_item_name",
                format!("item `{}` needs a name of 1 to 100 characters", item.id),
            ));
        }
        if !(1..=MAX_PRICE).contains(&item.price) {
            return Err(ApiError::bad_request(
                "invalid_price",
                format!(
                    "item `{}`: a price is whole KRW from 1 to {MAX_PRICE}",
                    item.id
                ),
            ));
        }
    }
    let store = documents()?;
    let existing: StoreDoc = store
        .find_one(STORES, json!({ "_id": id }))?
        .ok_or_else(|| ApiError::not_found("store"))?;
    identity.require_owner(&existing.owner)?;
    store.update_one(
        STORES,
        json!({ "_id": id }),
        json!({ "$set": { "menu": body.items } }),
    )?;
    get(id)
}
