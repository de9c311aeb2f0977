//! The commerce components behind the `auth` middleware, as the app runs them: tokens from a local
//! issuer, documents on the embedded store. Stores and menus: who may create and change them, what
//! input is refused, and what anyone may read.

mod common;

use common::issuer::Issuer;
use common::{AppDir, Moa, Options, Reply, request};
use reqwest::Method;
use serde_json::{Value, json};

const RULES: &str = r#"[
  {"method": "GET", "path": "/stores/...", "public": true},
  {"method": "GET", "path": "/stores", "public": true},
  {"method": "POST", "path": "/stores", "groups": ["OWNER", "ADMIN"]},
  {"method": "PUT", "path": "/stores/:id/menu", "groups": ["OWNER", "ADMIN"]}
]"#;

fn app(issuer: &Issuer) -> (AppDir, Moa) {
    let manifest = format!(
        r#"
spin_manifest_version = 2
[application]
name = "commerce-test"
[variables]
{variables}[[trigger.http]]
route = "/stores/..."
component = "store"
dependencies.middleware = [{{ component = "auth" }}]
[[trigger.http]]
route = "/stores"
component = "store"
dependencies.middleware = [{{ component = "auth" }}]
[component.store]
source = "{{store}}"
document_stores = ["default"]
{auth}"#,
        variables = issuer.auth_variables(RULES),
        auth = issuer.auth_component(""),
    );
    let app = AppDir::new(&manifest);
    let moa = Moa::start(&app, Options::default());
    (app, moa)
}

fn call(moa: &Moa, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    let body = body.map(|b| b.to_string().into_bytes());
    request(method, &format!("{}{path}", moa.url), &headers, body)
}

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.body))
}

#[test]
fn owners_run_their_own_stores_and_anyone_reads_them() {
    let issuer = Issuer::start();
    let (_app, moa) = app(&issuer);
    let kim = issuer.token_for("owner-kim", &["OWNER"]);
    let lee = issuer.token_for("owner-lee", &["OWNER"]);
    let admin = issuer.token_for("admin-1", &["ADMIN"]);
    let customer = issuer.token_for("customer-1", &["CUSTOMER"]);

    let created = call(
        &moa,
        Method::POST,
        "/stores",
        Some(&kim),
        Some(json!({ "name": "김밥천국" })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let store = json(&created);
    assert_eq!(store["owner"], "owner-kim");
    let id = store["id"].as_str().unwrap().to_string();

    // A customer may not create a store (the middleware refuses); an owner may not name another owner.
    let reply = call(
        &moa,
        Method::POST,
        "/stores",
        Some(&customer),
        Some(json!({ "name": "x" })),
    );
    assert_eq!(
        (reply.status, json(&reply)["error"].as_str()),
        (403, Some("missing_permission"))
    );
    let reply = call(
        &moa,
        Method::POST,
        "/stores",
        Some(&kim),
        Some(json!({ "name": "x", "owner": "owner-lee" })),
    );
    assert_eq!(
        (reply.status, json(&reply)["error"].as_str()),
        (403, Some("not_admin"))
    );
    // A forged identity header without a token gets nowhere.
    let reply = request(
        Method::POST,
        &format!("{}/stores", moa.url),
        &[
            ("x-moa-auth-subject", "owner-kim"),
            ("x-moa-auth-groups", "ADMIN"),
        ],
        Some(b"{\"name\": \"x\"}".to_vec()),
    );
    assert_eq!(reply.status, 401, "{}", reply.body);

    let menu = json!({ "items": [
        { "id": "kimbap", "name": "김밥", "price": 3500 },
        { "id": "ramyeon", "name": "라면", "price": 4500 }
    ]});
    let path = format!("/stores/{id}/menu");
    let reply = call(&moa, Method::PUT, &path, Some(&kim), Some(menu.clone()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["menu"][1]["price"], 4500);
    // Another owner may not change it; an admin may.
    let reply = call(&moa, Method::PUT, &path, Some(&lee), Some(menu.clone()));
    assert_eq!(
        (reply.status, json(&reply)["error"].as_str()),
        (403, Some("not_owner"))
    );
    let reply = call(&moa, Method::PUT, &path, Some(&admin), Some(menu.clone()));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Anyone reads stores and menus without a token.
    let reply = call(&moa, Method::GET, &format!("/stores/{id}"), None, None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["menu"][0]["name"], "김밥");
    let reply = call(&moa, Method::GET, "/stores", None, None);
    assert_eq!(json(&reply)["stores"].as_array().map(Vec::len), Some(1));
    let reply = call(&moa, Method::GET, "/stores/nope", None, None);
    assert_eq!(
        (reply.status, json(&reply)["error"].as_str()),
        (404, Some("not_found"))
    );
    let reply = call(
        &moa,
        Method::PUT,
        "/stores/nope/menu",
        Some(&kim),
        Some(menu),
    );
    assert_eq!(reply.status, 404, "{}", reply.body);
}

#[test]
fn bad_menus_are_refused_with_a_reason_and_change_nothing() {
    let issuer = Issuer::start();
    let (_app, moa) = app(&issuer);
    let kim = issuer.token_for("owner-kim", &["OWNER"]);
    let store = json(&call(
        &moa,
        Method::POST,
        "/stores",
        Some(&kim),
        Some(json!({ "name": "분식" })),
    ));
    let path = format!("/stores/{}/menu", store["id"].as_str().unwrap());
    let item =
        |id: &str, name: &str, price: Value| json!({ "id": id, "name": name, "price": price });
    let cases = [
        (
            json!({ "items": [item("a", "A", json!(0))] }),
            "invalid_price",
        ),
        (
            json!({ "items": [item("a", "A", json!(-100))] }),
            "invalid_price",
        ),
        (
            json!({ "items": [item("a", "A", json!(10_000_001))] }),
            "invalid_price",
        ),
        (
            json!({ "items": [item("a", "A", json!(1.5))] }),
            "invalid_body",
        ),
        (
            json!({ "items": [item("a", "A", json!("1000"))] }),
            "invalid_body",
        ),
        (
            json!({ "items": [item("a", "A", json!(100)), item("a", "B", json!(200))] }),
            "duplicate_item_id",
        ),
        (
            json!({ "items": [item("a b", "A", json!(100))] }),
            "invalid_item_id",
        ),
        (
            json!({ "items": [item("a", " ", json!(100))] }),
            "invalid_item_name",
        ),
        (json!({ "menu": [] }), "invalid_body"),
    ];
    for (body, code) in cases {
        let reply = call(&moa, Method::PUT, &path, Some(&kim), Some(body.clone()));
        assert_eq!(
            (reply.status, json(&reply)["error"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let reply = call(
        &moa,
        Method::POST,
        "/stores",
        Some(&kim),
        Some(json!({ "name": "" })),
    );
    assert_eq!(
        (reply.status, json(&reply)["error"].as_str()),
        (400, Some("invalid_name"))
    );
    let unchanged = call(
        &moa,
        Method::GET,
        &format!("/stores/{}", store["id"].as_str().unwrap()),
        None,
        None,
    );
    assert_eq!(json(&unchanged)["menu"], json!([]));
}
