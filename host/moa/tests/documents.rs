//! The documents capability against a real `moa up`, one suite over both backends (the embedded
//! store and a real MongoDB-compatible server, SecantusDB): every operation and filter through the
//! guest SDK, unique indexes, transactions (commit, abort, concurrent read-modify-write), the outbox
//! to a real Redis broker, the inbox, grants, and bad input that changes nothing.

mod common;

use common::{AppDir, KafkaServer, Moa, MongoServer, Options, RedisServer, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "documents"
[[trigger.http]]
route = "/run"
component = "docprobe"
[[trigger.http]]
route = "/stranger"
component = "stranger"
[component.docprobe]
source = "{docprobe}"
document_stores = ["default"]
allowed_publish_topics = ["orders*"]
[[component.docprobe.document_indexes]]
collection = "users"
keys = ["email"]
unique = true
[[component.docprobe.document_indexes]]
collection = "items"
keys = ["store", "-price"]
[component.stranger]
source = "{docprobe}"
"#;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Mongo,
}

/// A running app on one backend, with Redis as its message broker.
struct Fixture {
    moa: Moa,
    redis: RedisServer,
    _mongo: Option<MongoServer>,
    _app: AppDir,
}

fn start(backend: Backend) -> Fixture {
    let app = AppDir::new(APP);
    let redis = RedisServer::start();
    let mut config = redis.broker_config();
    let mongo = match backend {
        Backend::Embedded => {
            config.push_str("[document_store.default]\ntype = \"embedded\"\n");
            None
        }
        Backend::Mongo => {
            let server = MongoServer::start();
            config.push_str(&server.store_config("default", "suite"));
            Some(server)
        }
    };
    // The relay also polls; a short interval keeps the test quick when a wake-up is missed.
    config.push_str("outbox_poll_ms = 50\n");
    let rc = app.write("runtime-config.toml", &config);
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    Fixture {
        moa,
        redis,
        _mongo: mongo,
        _app: app,
    }
}

fn script(moa: &Moa, path: &str, script: Value) -> Value {
    let (status, body) = moa.send(Method::POST, path, Some(script.to_string().into_bytes()));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Runs `ops` on the store (not in a transaction); returns each op's result.
fn ops(moa: &Moa, ops: Value) -> Vec<Value> {
    let reply = script(moa, "/run", json!({ "ops": ops }));
    reply["results"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{reply}"))
}

fn ok(result: &Value) -> &Value {
    result
        .get("ok")
        .unwrap_or_else(|| panic!("expected ok, got {result}"))
}

fn error_kind(result: &Value) -> &str {
    result["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {result}"))
}

fn one(moa: &Moa, op: Value) -> Value {
    ops(moa, json!([op])).remove(0)
}

fn find(moa: &Moa, collection: &str, filter: Value, extra: Value) -> Vec<Value> {
    let mut op = json!({ "op": "find", "collection": collection, "filter": filter });
    if let (Some(op), Some(extra)) = (op.as_object_mut(), extra.as_object()) {
        op.extend(extra.clone());
    }
    ok(&one(moa, op)).as_array().cloned().unwrap_or_default()
}

fn operations_and_filters(moa: &Moa) {
    let inserted = ops(
        moa,
        json!([
            { "op": "insert_many", "collection": "menu", "documents": [
                { "_id": 1, "name": "bibimbap", "price": 9000, "tags": ["rice", "veg"], "shop": { "city": "Seoul", "rating": 4.5 } },
                { "_id": 2, "name": "bulgogi", "price": 12000, "tags": ["beef"], "shop": { "city": "Busan", "rating": 4.0 } },
                { "_id": 3, "name": "kimchi", "price": 3000, "tags": ["veg", "side"], "shop": { "city": "Seoul", "rating": 3.5 } },
                { "_id": 4, "name": "soju", "price": 5000, "alcohol": true, "shop": { "city": "Incheon" } }
            ]},
            { "op": "insert_one", "collection": "menu", "document": { "name": "tea" } }
        ]),
    );
    assert_eq!(ok(&inserted[0]), &json!([1, 2, 3, 4]));
    let generated = ok(&inserted[1]).as_str().expect("a generated string _id");
    assert_eq!(generated.len(), 24, "ObjectId-style id: {generated}");

    let names = |filter: Value| -> Vec<Value> {
        find(moa, "menu", filter, json!({ "sort": { "_id": 1 } }))
            .iter()
            .map(|d| d["name"].clone())
            .collect()
    };
    assert_eq!(
        names(json!({ "price": { "$gt": 5000 } })),
        vec![json!("bibimbap"), json!("bulgogi")]
    );
    assert_eq!(
        names(json!({ "price": { "$gte": 5000, "$lt": 10000 } })),
        vec![json!("bibimbap"), json!("soju")]
    );
    assert_eq!(
        names(json!({ "price": { "$lte": 3000 } })),
        vec![json!("kimchi")]
    );
    assert_eq!(
        names(json!({ "tags": "veg" })),
        vec![json!("bibimbap"), json!("kimchi")]
    );
    assert_eq!(
        names(json!({ "tags": { "$in": ["beef", "side"] } })),
        vec![json!("bulgogi"), json!("kimchi")]
    );
    assert_eq!(names(json!({ "_id": { "$nin": [1, 2, 3] } })).len(), 2);
    // `_id` lists are looked up by key in the embedded store: numbers equal across int and
    // float, strings are not numbers, and the rest of the filter still decides.
    assert_eq!(
        names(json!({ "_id": { "$in": [3, 1.0, "2", generated] } })),
        vec![json!("bibimbap"), json!("kimchi"), json!("tea")]
    );
    assert_eq!(
        names(json!({ "_id": { "$in": [1, 3] }, "price": { "$gt": 5000 } })),
        vec![json!("bibimbap")]
    );
    assert!(names(json!({ "_id": { "$in": [] } })).is_empty());
    assert_eq!(
        names(json!({ "name": { "$ne": "tea" }, "alcohol": { "$exists": false } })).len(),
        3
    );
    assert_eq!(
        names(json!({ "shop.city": "Seoul" })),
        vec![json!("bibimbap"), json!("kimchi")]
    );
    assert_eq!(
        names(json!({ "shop.rating": { "$gte": 4 } })),
        vec![json!("bibimbap"), json!("bulgogi")]
    );
    assert_eq!(
        names(json!({ "$or": [{ "price": 12000 }, { "alcohol": true }] })),
        vec![json!("bulgogi"), json!("soju")]
    );
    assert_eq!(
        names(
            json!({ "$and": [{ "price": { "$gt": 1000 } }, { "shop.city": { "$in": ["Seoul", "Incheon"] } }] })
        ),
        vec![json!("bibimbap"), json!("kimchi"), json!("soju")]
    );

    // Sort, skip, limit, projection.
    let page = find(
        moa,
        "menu",
        json!({ "price": { "$exists": true } }),
        json!({ "sort": { "price": -1 }, "skip": 1, "limit": 2, "projection": { "name": 1, "_id": 0 } }),
    );
    assert_eq!(
        page,
        vec![json!({ "name": "bibimbap" }), json!({ "name": "soju" })]
    );
    let excluded = find(
        moa,
        "menu",
        json!({ "_id": 2 }),
        json!({ "projection": { "shop": 0, "tags": 0 } }),
    );
    assert_eq!(
        excluded,
        vec![json!({ "_id": 2, "name": "bulgogi", "price": 12000 })]
    );

    let found = one(
        moa,
        json!({ "op": "find_one", "collection": "menu", "filter": { "name": "kimchi" } }),
    );
    assert_eq!(ok(&found)["_id"], json!(3));
    let missing = one(
        moa,
        json!({ "op": "find_one", "collection": "menu", "filter": { "name": "pizza" } }),
    );
    assert_eq!(ok(&missing), &Value::Null);
    let counted = one(
        moa,
        json!({ "op": "count", "collection": "menu", "filter": { "shop.city": "Seoul" } }),
    );
    assert_eq!(ok(&counted), &json!(2));

    // Updates.
    let updated = ops(
        moa,
        json!([
            { "op": "update_one", "collection": "menu", "filter": { "_id": 1 },
              "update": { "$set": { "shop.rating": 5 }, "$inc": { "price": 500 }, "$push": { "tags": "hot" }, "$unset": { "name": "" } } },
            { "op": "update_many", "collection": "menu", "filter": { "tags": "veg" }, "update": { "$inc": { "sold": 1 } } },
            { "op": "update_one", "collection": "menu", "filter": { "name": "ramen" }, "update": { "$set": { "price": 7000 } }, "upsert": true },
            { "op": "update_one", "collection": "menu", "filter": { "name": "nothing" }, "update": { "$set": { "price": 1 } } }
        ]),
    );
    assert_eq!(ok(&updated[0])["matched"], json!(1));
    assert_eq!(ok(&updated[0])["modified"], json!(1));
    assert_eq!(ok(&updated[1])["matched"], json!(2));
    assert_eq!(ok(&updated[1])["modified"], json!(2));
    let upserted = ok(&updated[2])["upserted_id"].clone();
    assert!(
        upserted.is_string(),
        "upsert reports the new _id: {}",
        updated[2]
    );
    assert_eq!(ok(&updated[3])["matched"], json!(0));
    let first = find(moa, "menu", json!({ "_id": 1 }), json!({}));
    assert_eq!(first[0]["price"], json!(9500));
    assert_eq!(first[0]["shop"]["rating"], json!(5));
    assert_eq!(first[0]["tags"], json!(["rice", "veg", "hot"]));
    assert_eq!(first[0]["sold"], json!(1));
    assert!(first[0].get("name").is_none());
    let ramen = find(moa, "menu", json!({ "_id": upserted }), json!({}));
    assert_eq!(
        ramen[0]["name"],
        json!("ramen"),
        "the upsert takes the filter's equalities"
    );
    assert_eq!(ramen[0]["price"], json!(7000));

    // find-one-and-update: before / after, sort picks the document, upsert.
    let fam = ops(
        moa,
        json!([
            { "op": "find_one_and_update", "collection": "menu", "filter": { "shop.city": "Seoul" },
              "update": { "$inc": { "price": 1 } }, "sort": { "price": 1 }, "return": "before" },
            { "op": "find_one_and_update", "collection": "menu", "filter": { "_id": 3 },
              "update": { "$inc": { "price": 1 } }, "return": "after", "projection": { "price": 1 } },
            { "op": "find_one_and_update", "collection": "counters", "filter": { "_id": "orders" },
              "update": { "$inc": { "seq": 1 } }, "upsert": true, "return": "after" },
            { "op": "find_one_and_update", "collection": "menu", "filter": { "_id": 99 },
              "update": { "$inc": { "price": 1 } } }
        ]),
    );
    assert_eq!(
        ok(&fam[0])["price"],
        json!(3000),
        "before the update, the cheapest Seoul item"
    );
    assert_eq!(ok(&fam[1]), &json!({ "_id": 3, "price": 3002 }));
    assert_eq!(ok(&fam[2]), &json!({ "_id": "orders", "seq": 1 }));
    assert_eq!(ok(&fam[3]), &Value::Null);

    // Replace keeps the _id; delete one / many.
    let replaced = one(
        moa,
        json!({ "op": "replace_one", "collection": "menu", "filter": { "_id": 4 }, "replacement": { "name": "makgeolli", "price": 6000 } }),
    );
    assert_eq!(ok(&replaced)["modified"], json!(1));
    assert_eq!(
        find(moa, "menu", json!({ "_id": 4 }), json!({})),
        vec![json!({ "_id": 4, "name": "makgeolli", "price": 6000 })]
    );
    let deleted = ops(
        moa,
        json!([
            { "op": "delete_one", "collection": "menu", "filter": { "tags": "veg" } },
            { "op": "delete_many", "collection": "menu", "filter": { "price": { "$gte": 6000 } } },
            { "op": "count", "collection": "menu", "filter": {} }
        ]),
    );
    assert_eq!(ok(&deleted[0]), &json!(1));
    assert_eq!(ok(&deleted[1]), &json!(3), "bulgogi, ramen and makgeolli");
    assert_eq!(ok(&deleted[2]), &json!(2));
}

fn unique_indexes(moa: &Moa) {
    let results = ops(
        moa,
        json!([
            { "op": "insert_one", "collection": "users", "document": { "_id": "u1", "email": "a@example.com" } },
            { "op": "insert_one", "collection": "users", "document": { "_id": "u2", "email": "a@example.com" } },
            { "op": "insert_one", "collection": "users", "document": { "_id": "u1", "email": "b@example.com" } },
            { "op": "insert_one", "collection": "users", "document": { "_id": "u3", "email": "c@example.com" } },
            { "op": "update_one", "collection": "users", "filter": { "_id": "u3" }, "update": { "$set": { "email": "a@example.com" } } },
            { "op": "count", "collection": "users", "filter": {} }
        ]),
    );
    ok(&results[0]);
    assert_eq!(error_kind(&results[1]), "duplicate-key");
    assert_eq!(error_kind(&results[2]), "duplicate-key", "same _id");
    ok(&results[3]);
    assert_eq!(error_kind(&results[4]), "duplicate-key");
    assert_eq!(ok(&results[5]), &json!(2));
    assert_eq!(
        find(moa, "users", json!({ "_id": "u3" }), json!({}))[0]["email"],
        json!("c@example.com"),
        "the refused update changed nothing"
    );
}

fn transactions(moa: &Moa) {
    // Abort: nothing of it stays; reads inside see the transaction's own writes.
    let aborted = script(
        moa,
        "/run",
        json!({ "transaction": true, "end": "abort", "ops": [
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "a", "n": 1 } },
            { "op": "count", "collection": "ledger", "filter": {} }
        ]}),
    );
    assert_eq!(ok(&aborted["results"][1]), &json!(1), "{aborted}");
    ok(&aborted["end"]);
    assert_eq!(
        ok(&one(
            moa,
            json!({ "op": "count", "collection": "ledger", "filter": {} })
        )),
        &json!(0)
    );

    // Commit: all of it at once.
    let committed = script(
        moa,
        "/run",
        json!({ "transaction": true, "end": "commit", "ops": [
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "a", "n": 1 } },
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "b", "n": 2 } },
            { "op": "update_one", "collection": "ledger", "filter": { "_id": "a" }, "update": { "$inc": { "n": 10 } } }
        ]}),
    );
    ok(&committed["end"]);
    let ledger = find(moa, "ledger", json!({}), json!({ "sort": { "_id": 1 } }));
    assert_eq!(
        ledger,
        vec![
            json!({ "_id": "a", "n": 11 }),
            json!({ "_id": "b", "n": 2 })
        ]
    );

    // An error from the store ends the transaction on both backends (MongoDB's rule): the write
    // before it is dropped, later calls and the commit get transaction-closed. An error moa finds
    // itself (an unsupported operator) leaves the transaction open.
    let failed = script(
        moa,
        "/run",
        json!({ "transaction": true, "end": "commit", "ops": [
            { "op": "find", "collection": "ledger", "filter": { "n": { "$regex": "x" } } },
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "c", "n": 3 } },
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "a", "n": 0 } },
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "d", "n": 4 } }
        ]}),
    );
    assert_eq!(error_kind(&failed["results"][0]), "invalid-filter");
    ok(&failed["results"][1]);
    assert_eq!(
        error_kind(&failed["results"][2]),
        "duplicate-key",
        "{failed}"
    );
    assert_eq!(
        error_kind(&failed["results"][3]),
        "transaction-closed",
        "{failed}"
    );
    assert_eq!(error_kind(&failed["end"]), "transaction-closed", "{failed}");
    assert!(
        find(
            moa,
            "ledger",
            json!({ "_id": { "$in": ["c", "d"] } }),
            json!({})
        )
        .is_empty()
    );

    // A transaction left open (neither committed nor aborted) is aborted when dropped.
    script(
        moa,
        "/run",
        json!({ "transaction": true, "end": "none", "ops": [
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "dangling" } }
        ]}),
    );
    assert!(find(moa, "ledger", json!({ "_id": "dangling" }), json!({})).is_empty());

    // Concurrent read-modify-write transactions: conflicts are retried (or serialized), so no
    // increment is lost.
    one(
        moa,
        json!({ "op": "insert_one", "collection": "ledger", "document": { "_id": "counter", "n": 0 } }),
    );
    let threads: Vec<_> =
        (0..8)
            .map(|_| {
                let url = format!("{}/run", moa.url);
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let (status, body) = common::blocking(
                        Method::POST,
                        &url,
                        Some(json!({ "retrying": true, "ops": [
                            { "op": "read_then_set", "collection": "ledger", "id": "counter" }
                        ]}).to_string().into_bytes()),
                    );
                        assert_eq!(status, 200, "{body}");
                        assert!(body.contains("\"ok\""), "{body}");
                    }
                })
            })
            .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    assert_eq!(
        find(moa, "ledger", json!({ "_id": "counter" }), json!({}))[0]["n"],
        json!(40)
    );
}

fn outbox_and_inbox(fixture: &Fixture) {
    let moa = &fixture.moa;
    let committed = script(
        moa,
        "/run",
        json!({ "transaction": true, "end": "commit", "ops": [
            { "op": "insert_one", "collection": "orders", "document": { "_id": "o1", "status": "created" } },
            { "op": "publish", "topic": "orders.created", "key": "o1", "payload": "first" },
            { "op": "publish", "topic": "orders.created", "key": "o1", "payload": "second" },
            { "op": "publish", "topic": "payments", "payload": "denied" },
            { "op": "publish", "topic": "orders.created", "key": "o1", "payload": "forged",
              "headers": { "Moa-Message-Id": "shadow" } }
        ]}),
    );
    let message_id = ok(&committed["results"][1])
        .as_str()
        .expect("message id")
        .to_string();
    ok(&committed["end"]);
    assert_eq!(
        error_kind(&committed["results"][3]),
        "access-denied",
        "payments is not granted"
    );
    assert_eq!(
        error_kind(&committed["results"][4]),
        "access-denied",
        "moa-* headers belong to the host: {}",
        committed["results"][4]
    );
    script(
        moa,
        "/run",
        json!({ "transaction": true, "end": "abort", "ops": [
            { "op": "publish", "topic": "orders.created", "key": "o2", "payload": "aborted" }
        ]}),
    );

    let mut connection = redis::Client::open(fixture.redis.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let read = |connection: &mut redis::Connection| -> Vec<(String, String)> {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("orders.created")
            .arg("-")
            .arg("+")
            .query(connection)
            .unwrap_or_default();
        entries
            .ids
            .iter()
            .map(|entry| {
                let field = |name: &str| -> String {
                    entry
                        .map
                        .iter()
                        .find(|(k, _)| k.as_str() == name || k.ends_with(name))
                        .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
                        .unwrap_or_default()
                };
                (field("payload"), field("moa-message-id"))
            })
            .collect()
    };
    wait_until("the outbox messages reach Redis", || {
        read(&mut connection).len() >= 2
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let messages = read(&mut connection);
    assert_eq!(
        messages.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        vec!["first", "second"],
        "committed messages once each, in order, none of the aborted one: {messages:?}"
    );
    assert_eq!(messages[0].1, message_id, "the moa-message-id header");

    // The inbox: the first time true, then false; an aborted mark does not count.
    let mark = |end: &str| -> Value {
        let reply = script(
            moa,
            "/run",
            json!({ "transaction": true, "end": end, "ops": [
                { "op": "first_time", "consumer": "billing", "id": "m-1" }
            ]}),
        );
        ok(&reply["results"][0]).clone()
    };
    assert_eq!(mark("abort"), json!(true));
    assert_eq!(mark("commit"), json!(true));
    assert_eq!(mark("commit"), json!(false));
    let other_consumer = script(
        moa,
        "/run",
        json!({ "transaction": true, "ops": [ { "op": "first_time", "consumer": "shipping", "id": "m-1" } ] }),
    );
    assert_eq!(ok(&other_consumer["results"][0]), &json!(true));
}

fn grants_and_bad_input(moa: &Moa) {
    let stranger = script(moa, "/stranger", json!({ "ops": [] }));
    assert_eq!(
        stranger["open"]["error"]["kind"],
        json!("access-denied"),
        "{stranger}"
    );
    let other_store = script(moa, "/run", json!({ "store": "secret", "ops": [] }));
    assert_eq!(other_store["open"]["error"]["kind"], json!("access-denied"));

    let before = ok(&one(
        moa,
        json!({ "op": "count", "collection": "menu", "filter": {} }),
    ))
    .clone();
    let results = ops(
        moa,
        json!([
            { "op": "find_raw", "collection": "menu", "text": "", "filter": "{not json" },
            { "op": "find", "collection": "menu", "filter": { "name": { "$regex": "^k" } } },
            { "op": "find", "collection": "menu", "filter": { "$where": "true" } },
            { "op": "update_many", "collection": "menu", "filter": {}, "update": { "$rename": { "price": "cost" } } },
            { "op": "update_many", "collection": "menu", "filter": {}, "update": { "price": 1 } },
            { "op": "update_one", "collection": "menu", "filter": {}, "update": { "$set": { "_id": 5 } } },
            { "op": "insert_raw", "collection": "menu", "text": "[1, 2]" },
            { "op": "insert_big", "collection": "menu", "bytes": 17 * 1024 * 1024 },
            { "op": "insert_one", "collection": "menu", "document": { "$bad": 1 } },
            { "op": "insert_one", "collection": "_moa_outbox", "document": { "forged": true } },
            { "op": "find", "collection": "menu", "filter": {}, "sort": { "price": 2 } },
            { "op": "find", "collection": "menu", "filter": {}, "projection": { "a": 1, "b": 0 } },
            { "op": "update_many", "collection": "menu", "filter": {}, "update": { "$inc": { "name": "x" } } }
        ]),
    );
    let kinds: Vec<&str> = results.iter().map(error_kind).collect();
    assert_eq!(
        kinds,
        vec![
            "invalid-filter",
            "invalid-filter",
            "invalid-filter",
            "invalid-update",
            "invalid-update",
            "invalid-update",
            "invalid-argument",
            "too-large",
            "invalid-argument",
            "access-denied",
            "invalid-argument",
            "invalid-argument",
            "invalid-update",
        ]
    );
    assert_eq!(
        ok(&one(
            moa,
            json!({ "op": "count", "collection": "menu", "filter": {} })
        )),
        &before,
        "bad input changed nothing"
    );
}

/// A find that would bring more than 64 MiB into the host is refused (a guest cannot make the host
/// hold a whole collection); counting and limited finds still work.
fn results_are_bounded(moa: &Moa) {
    let inserts: Vec<Value> = (0..66)
        .map(|_| json!({ "op": "insert_big", "collection": "blobs", "bytes": 1024 * 1024 }))
        .collect();
    for result in ops(moa, json!(inserts)) {
        ok(&result);
    }
    let results = ops(
        moa,
        json!([
            { "op": "find", "collection": "blobs", "filter": {} },
            { "op": "count", "collection": "blobs", "filter": {} },
            { "op": "find", "collection": "blobs", "filter": {}, "limit": 2, "projection": { "_id": 1 } }
        ]),
    );
    assert_eq!(error_kind(&results[0]), "too-large");
    assert_eq!(ok(&results[1]), &json!(66));
    assert_eq!(ok(&results[2]).as_array().map(Vec::len), Some(2));
}

fn suite(backend: Backend) {
    let fixture = start(backend);
    operations_and_filters(&fixture.moa);
    unique_indexes(&fixture.moa);
    transactions(&fixture.moa);
    outbox_and_inbox(&fixture);
    grants_and_bad_input(&fixture.moa);
    results_are_bounded(&fixture.moa);
}

#[test]
fn the_embedded_store_runs_the_whole_suite() {
    suite(Backend::Embedded);
}

#[test]
fn mongodb_runs_the_whole_suite() {
    suite(Backend::Mongo);
}

#[test]
fn the_outbox_publishes_to_kafka_in_commit_order_per_key() {
    let kafka = KafkaServer::start();
    kafka.create_topic("orders.steps", 3);
    let app = AppDir::new(APP);
    let rc = app.write(
        "runtime-config.toml",
        &format!(
            "[messaging.brokers.main]\ntype = \"kafka\"\nbrokers = \"{}\"\n",
            kafka.bootstrap
        ),
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    // One transaction per step, each committed before the next begins: the broker must show each
    // key's steps in commit order.
    let mut ids = Vec::new();
    for step in ["created", "paid", "shipped"] {
        for order in ["o-1", "o-2"] {
            let reply = script(
                &moa,
                "/run",
                json!({ "transaction": true, "ops": [
                    { "op": "publish", "topic": "orders.steps", "key": order, "payload": format!("{order}:{step}") }
                ]}),
            );
            ok(&reply["end"]);
            ids.push(
                ok(&reply["results"][0])
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    use rdkafka::message::{Headers as _, Message as _};
    let messages = kafka.consume("orders.steps", "outbox-check", 6);
    for order in ["o-1", "o-2"] {
        let steps: Vec<String> = messages
            .iter()
            .filter(|m| m.key() == Some(order.as_bytes()))
            .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            .collect();
        assert_eq!(
            steps,
            ["created", "paid", "shipped"].map(|s| format!("{order}:{s}")),
            "{order}'s messages in commit order"
        );
    }
    let mut seen: Vec<String> = messages
        .iter()
        .filter_map(|m| {
            m.headers()?
                .iter()
                .find(|h| h.key == "moa-message-id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "each message carries the id publish returned");
}

/// A handler that fails because another process holds the store's write lock (write-conflict after
/// the busy timeout) is retried without spending an attempt: with `max_attempts = 1` the message is
/// still applied once, after the holder lets go, and never dead-lettered.
#[test]
fn a_delivery_blocked_by_another_process_waits_instead_of_dead_lettering() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "blocked"
[[trigger.http]]
route = "/run"
component = "docprobe"
[[trigger.kafka]]
component = "inbox"
topics = ["orders.placed"]
max_attempts = 1
retry_backoff_ms = 20
[component.docprobe]
source = "{docprobe}"
document_stores = ["default"]
allowed_publish_topics = ["orders.placed"]
[component.inbox]
source = "{inbox}"
document_stores = ["default"]
"#,
    );
    let rc = app.write(
        "runtime-config.toml",
        "[document_store.default]\ntype = \"embedded\"\npath = \"blocked.db\"\nbusy_timeout_ms = 100\n",
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    one(
        &moa,
        json!({ "op": "insert_one", "collection": "hold", "document": { "_id": "h" } }),
    );
    // Another process takes SQLite's write lock on the store's file and keeps it 8 s (longer than
    // the inbox's own transaction retries) while the order is published.
    let holder = rusqlite::Connection::open(app.path().join("blocked.db")).expect("open the store");
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE documents SET body = body WHERE id = '\"h\"';")
        .expect("take the write lock");
    let reply = script(
        &moa,
        "/run",
        json!({ "ops": [{ "op": "publish_now", "topic": "orders.placed", "payload": "o-1" }] }),
    );
    assert_eq!(reply["results"][0], json!({ "ok": null }), "{reply}");
    wait_until("the handler failed on the held store", || {
        common::metric(&moa, "moa_events_total", "outcome=\"transient\"") >= 1.0
    });
    std::thread::sleep(std::time::Duration::from_secs(8));
    holder.execute_batch("COMMIT").expect("let go of the lock");
    wait_until("the order's effect is applied", || {
        find(&moa, "effects", json!({}), json!({})).len() == 1
    });
    let effects = find(&moa, "effects", json!({}), json!({}));
    assert_eq!(effects[0]["n"], 1, "{effects:?}");
    let dead = common::metric(&moa, "moa_events_total", "outcome=\"dead_letter\"");
    assert_eq!(dead, 0.0, "nothing was dead-lettered\n{}", moa.stderr());
}

/// A write through the store while the same invocation has a transaction open on it is refused at
/// once with an error that names the mistake, and a transaction left open (here: sleeping) does not
/// hold up other writers.
#[test]
fn a_reentrant_write_fails_at_once_and_an_open_transaction_blocks_no_one() {
    let fixture = start(Backend::Embedded);
    let moa = &fixture.moa;
    let reply = script(
        moa,
        "/run",
        json!({ "transaction": true, "end": "commit", "ops": [
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "inside" } },
            { "op": "insert_one", "collection": "ledger", "document": { "_id": "outside" }, "outside": true },
            { "op": "find", "collection": "ledger", "filter": { "_id": "inside" }, "outside": true }
        ]}),
    );
    assert_eq!(error_kind(&reply["results"][1]), "other", "{reply}");
    let message = reply["results"][1]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("re-entrant write"), "{message}");
    assert!(message.contains("outside the transaction"), "{message}");
    assert_eq!(
        ok(&reply["results"][2]),
        &json!([]),
        "reads outside see only committed documents"
    );
    ok(&reply["end"]);
    let ids: Vec<Value> = find(moa, "ledger", json!({}), json!({}))
        .iter()
        .map(|d| d["_id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!("inside")],
        "the refused write changed nothing"
    );

    // A transaction that wrote and then waits 3 s before committing: other requests write and
    // commit meanwhile.
    let url = format!("{}/run", moa.url);
    let slow = std::thread::spawn(move || {
        common::blocking(
            Method::POST,
            &url,
            Some(
                json!({ "transaction": true, "end": "commit", "ops": [
                    { "op": "insert_one", "collection": "ledger", "document": { "_id": "slow" } },
                    { "op": "sleep", "ms": 3000 }
                ]})
                .to_string()
                .into_bytes(),
            ),
        )
    });
    wait_until("the slow transaction has begun", || {
        common::metric(moa, "moa_http_requests_in_flight", "") >= 1.0 || slow.is_finished()
    });
    for i in 0..20 {
        let reply = script(
            moa,
            "/run",
            json!({ "transaction": true, "end": "commit", "ops": [
                { "op": "insert_one", "collection": "ledger", "document": { "_id": format!("quick-{i}") } }
            ]}),
        );
        ok(&reply["end"]);
    }
    assert!(
        !slow.is_finished(),
        "20 transactions committed while the slow one was still open"
    );
    let (status, body) = slow.join().expect("slow client");
    assert_eq!(status, 200, "{body}");
    assert_eq!(find(moa, "ledger", json!({}), json!({})).len(), 22);
}

/// A broker outage long enough for a backlog of over 100 MiB: every transaction commits while the
/// broker is down, the relay keeps the messages (reading only bounded ranges of them), and when
/// the broker is back everything drains, each key's messages in commit order.
#[test]
fn an_outbox_backlog_over_100_mib_drains_in_key_order_when_the_broker_is_back() {
    const KEYS: usize = 16;
    const PER_TRANSACTION: usize = 64;
    const PAYLOAD_BYTES: usize = 10 * 1024;
    const TRANSACTIONS: usize = 176; // 176 x 64 x 10 KiB = 110 MiB
    let port = common::free_port();
    let app = AppDir::new(APP);
    let rc = app.write(
        "runtime-config.toml",
        &format!(
            "[messaging.brokers.main]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\n\
             [document_store.default]\ntype = \"embedded\"\noutbox_poll_ms = 200\n"
        ),
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let padding = "x".repeat(PAYLOAD_BYTES - 16);
    let mut next = [0usize; KEYS];
    let started = std::time::Instant::now();
    for t in 0..TRANSACTIONS {
        let ops: Vec<Value> = (0..PER_TRANSACTION)
            .map(|i| {
                let key = (t * PER_TRANSACTION + i) % KEYS;
                let seq = next[key];
                next[key] += 1;
                json!({ "op": "publish", "topic": "orders.backlog", "key": format!("k{key}"),
                        "payload": format!("k{key}:{seq}:{padding}") })
            })
            .collect();
        let reply = script(&moa, "/run", json!({ "transaction": true, "ops": ops }));
        ok(&reply["end"]);
    }
    let total = TRANSACTIONS * PER_TRANSACTION;
    wait_until("the backlog metric shows the outage", || {
        common::metric(&moa, "moa_outbox_backlog", "store=\"default\"") as usize == total
    });
    assert_eq!(
        common::metric(&moa, "moa_outbox_published_total", ""),
        0.0,
        "nothing reached a broker that is down"
    );

    let staged_in = started.elapsed();
    let kafka = KafkaServer::start_on(port).expect("tansu on the port moa was given");
    let back = std::time::Instant::now();
    let mut seen: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let mut distinct = std::collections::BTreeSet::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::Message as _;
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .set("group.id", "backlog-check")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .unwrap();
        consumer.subscribe(&["orders.backlog"]).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
        while distinct.len() < total {
            let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => message,
                // "Unknown topic" until the relay's first publish creates it; the deadline below
                // catches anything lasting.
                Ok(Err(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => panic!(
                    "only {} of {total} messages arrived\n{}",
                    distinct.len(),
                    moa.stderr()
                ),
            };
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
            let mut parts = payload.splitn(3, ':');
            let key = parts.next().unwrap_or_default().to_string();
            let seq: usize = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX);
            assert_eq!(message.key(), Some(key.as_bytes()));
            distinct.insert((key.clone(), seq));
            seen.entry(key).or_default().push(seq);
        }
    });
    eprintln!(
        "staged {} MiB in {:.1} s during the outage; all of it read back {:.1} s after the broker returned",
        (total * PAYLOAD_BYTES) >> 20,
        staged_in.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    // Per key, in commit order; a batch the relay published again after a failed attempt may
    // repeat a run, but never goes back behind what it had sent before the repeat began.
    for (key, seqs) in &seen {
        let mut expected = 0;
        for &seq in seqs {
            assert!(
                seq <= expected,
                "key {key}: {seq} came before {expected}: {seqs:?}"
            );
            if seq == expected {
                expected += 1;
            }
        }
        assert_eq!(expected, total / KEYS, "key {key}: every message");
    }
    wait_until("the outbox is empty", || {
        common::metric(&moa, "moa_outbox_backlog", "store=\"default\"") == 0.0
    });
}
