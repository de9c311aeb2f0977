//! The order saga end to end on `moa up` with the embedded defaults (documents on SQLite, the
//! embedded event log): auth in front, store / inventory / order / payment components, the saga
//! orchestrator, and the Toss Payments emulator as the payment provider. Each test drives orders
//! through HTTP and checks the orders, the stock and the emulator's ledger.

mod common;

use common::issuer::Issuer;
use common::{AppDir, KafkaServer, Moa, MongoServer, Options, Reply, request};
use moa_test_support::otlp::{OtlpReceiver, ReceivedSpan};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The Toss emulator, in this process on its own runtime.
struct Toss {
    url: String,
    _runtime: tokio::runtime::Runtime,
}

impl Toss {
    fn start(late_ms: u64) -> Toss {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let emulator = moa_toss_emulator::Emulator::new(moa_toss_emulator::Settings {
            late_ms,
            ..Default::default()
        });
        runtime.spawn(emulator.serve(listener));
        Toss {
            url,
            _runtime: runtime,
        }
    }

    fn ledger(&self) -> Value {
        let reply = request(
            Method::GET,
            &format!("{}/__emulator/ledger", self.url),
            &[],
            None,
        );
        serde_json::from_str(&reply.body).unwrap()
    }
}

struct Shop {
    issuer: Issuer,
    toss: Toss,
    moa: Moa,
    app: AppDir,
}

/// The shop on the embedded defaults.
fn shop() -> Shop {
    shop_with(Setup::default())
}

/// How a test's shop differs from the reference app.
#[derive(Default)]
struct Setup {
    /// Points the capabilities at real servers.
    runtime_config: Option<String>,
    /// `(from, to)` text replacements in the reference spin.toml.
    edits: Vec<(&'static str, String)>,
    /// More `MOA_VARIABLE_*` settings.
    variables: Vec<(&'static str, String)>,
    /// Where the payment component finds Toss (default: the emulator).
    toss_url: Option<String>,
    /// More environment for the host.
    env: Vec<(&'static str, String)>,
}

/// The reference app (the repository's spin.toml) with its built components, trusting a test
/// issuer and paying through a Toss emulator that answers `late` confirms after 2.5 s (the
/// payment component gives up on a call after 1 s). The reviews and AI chat part of the
/// reference app is left out: these hosts need no model (host/moa/tests/chat.rs covers it).
fn shop_with(setup: Setup) -> Shop {
    let issuer = Issuer::start();
    let toss = Toss::start(2500);
    let whole = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../spin.toml"))
        .expect("the reference spin.toml");
    let (reference, _ai) = whole
        .split_once("# --- reviews and the AI chat")
        .expect("the reference spin.toml marks its reviews and AI chat part");
    let mut manifest = reference.replace(
        "source = \"components/target/wasm32-wasip2/release/",
        &format!(
            "source = \"{}/",
            common::components_dir().canonicalize().unwrap().display()
        ),
    );
    for (from, to) in &setup.edits {
        assert!(
            manifest.contains(from),
            "the reference spin.toml has no `{from}`"
        );
        manifest = manifest.replace(from, to);
    }
    let app = AppDir::new(&manifest);
    let mut options = match setup.runtime_config {
        Some(text) => Options::runtime_config(&app.write("runtime-config.toml", &text)),
        None => Options::default(),
    };
    let toss_url = setup.toss_url.unwrap_or_else(|| toss.url.clone());
    let mut variables = vec![
        ("AUTH_ISSUER", issuer.url.clone()),
        ("AUTH_JWKS_ORIGIN", issuer.url.clone()),
        (
            "AUTH_CLIENT_IDS",
            format!("other-client, {}", common::issuer::CLIENT),
        ),
        ("TOSS_BASE_URL", toss_url),
        ("TOSS_SECRET_KEY", "test_sk_moa".to_string()),
        ("TOSS_TIMEOUT_MS", "1000".to_string()),
    ];
    variables.extend(setup.variables);
    options.env = variables
        .into_iter()
        .map(|(name, value)| (format!("MOA_VARIABLE_{name}"), value))
        .chain(
            setup
                .env
                .into_iter()
                .map(|(name, value)| (name.to_string(), value)),
        )
        .collect();
    let moa = Moa::start(&app, options);
    Shop {
        issuer,
        toss,
        moa,
        app,
    }
}

impl Shop {
    fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let bearer = format!("Bearer {token}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ];
        let reply: Reply = request(
            method,
            &format!("{}{path}", self.moa.url),
            &headers,
            body.map(|b| b.to_string().into_bytes()),
        );
        let value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {}", reply.body));
        (reply.status, value)
    }

    /// A store with kimbap (3,500 KRW, 5 in stock) and ramyeon (4,500 KRW, 1 in stock).
    fn store(&self) -> (String, String) {
        let owner = self.issuer.token_for("owner-kim", &["OWNER"]);
        let (status, store) = self.call(
            Method::POST,
            "/stores",
            &owner,
            Some(json!({ "name": "김밥천국" })),
        );
        assert_eq!(status, 201, "{store}");
        let id = store["id"].as_str().unwrap().to_string();
        let menu = json!({ "items": [
            { "id": "kimbap", "name": "김밥", "price": 3500 },
            { "id": "ramyeon", "name": "라면", "price": 4500 }
        ]});
        let (status, body) = self.call(
            Method::PUT,
            &format!("/stores/{id}/menu"),
            &owner,
            Some(menu),
        );
        assert_eq!(status, 200, "{body}");
        for (item, quantity) in [("kimbap", 5), ("ramyeon", 1)] {
            let (status, body) = self.call(
                Method::PUT,
                &format!("/inventory/{id}/{item}"),
                &owner,
                Some(json!({ "quantity": quantity })),
            );
            assert_eq!(status, 200, "{body}");
        }
        (id, owner)
    }

    fn order(&self, customer: &str, store: &str, items: Value, payment_key: &str) -> String {
        let (status, order) = self.call(
            Method::POST,
            "/orders",
            customer,
            Some(json!({ "store_id": store, "items": items, "payment_key": payment_key })),
        );
        assert_eq!(status, 202, "{order}");
        assert_eq!(order["state"], "PENDING");
        order["id"].as_str().unwrap().to_string()
    }

    /// Waits (up to 60 s) until the order is in `state`; returns it.
    fn wait_for(&self, customer: &str, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, order) = self.call(Method::GET, &format!("/orders/{id}"), customer, None);
            if order["state"] == state {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} is {} after 60 s, not {state}: {order}\n{}",
                order["state"],
                self.moa.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Order id -> (topic, event) of every outcome the saga announced on the embedded log
    /// (read beside the running host: the log is SQLite in WAL mode).
    fn outcome_events(&self) -> std::collections::BTreeMap<String, (String, Value)> {
        let log = moa_eventlog::EventLog::open(&self.app.path().join(".moa/events.db")).unwrap();
        let mut out = std::collections::BTreeMap::new();
        for outcome in [
            "completed",
            "rejected",
            "declined",
            "cancelled",
            "failed",
            "compensation_failed",
        ] {
            let topic = format!("orders.outcome.{outcome}");
            let partitions = log.partitions(&topic).unwrap().unwrap_or(0);
            for partition in 0..partitions {
                for record in log.fetch(&topic, partition, 0, 1000).unwrap() {
                    let event: Value = serde_json::from_slice(&record.payload).unwrap();
                    let id = event["order_id"].as_str().unwrap().to_string();
                    let previous = out.insert(id, (topic.clone(), event));
                    assert!(previous.is_none(), "an order ended twice: {previous:?}");
                }
            }
        }
        out
    }

    /// (available, reserved, sold) of each item.
    fn stock(&self, owner: &str, store: &str) -> Vec<(String, i64, i64, i64)> {
        let (status, body) = self.call(Method::GET, &format!("/inventory/{store}"), owner, None);
        assert_eq!(status, 200, "{body}");
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["item"].as_str().unwrap().to_string(),
                    i["available"].as_i64().unwrap(),
                    i["reserved"].as_i64().unwrap(),
                    i["sold"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

fn stock(item: &str, available: i64, reserved: i64, sold: i64) -> (String, i64, i64, i64) {
    (item.to_string(), available, reserved, sold)
}

#[test]
fn orders_complete_decline_run_short_and_survive_a_late_payment_answer() {
    let shop = shop();
    let (store, owner) = shop.store();
    let customer = shop.issuer.token_for("customer-park", &["CUSTOMER"]);

    // Happy path: priced from the menu, charged once, stock sold.
    let paid = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 2 }]),
        "pk-ok-1",
    );
    let order = shop.wait_for(&customer, &paid, "COMPLETED");
    assert_eq!(order["amount"], 7000);
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 3, 0, 2), stock("ramyeon", 1, 0, 0)]
    );

    // Declined: nothing charged, the reservation released.
    let declined = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 1 }]),
        "pk-decline-1",
    );
    let order = shop.wait_for(&customer, &declined, "PAYMENT_DECLINED");
    assert_eq!(order["reason"], "PAYMENT_DECLINED");
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 3, 0, 2), stock("ramyeon", 1, 0, 0)]
    );

    // Short of stock: rejected before payment, so Toss never hears of it.
    let short = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 1 }, { "item_id": "ramyeon", "quantity": 2 }]),
        "pk-short-1",
    );
    let order = shop.wait_for(&customer, &short, "REJECTED_OUT_OF_STOCK");
    assert!(
        order["reason"].as_str().unwrap().contains("ramyeon"),
        "{order}"
    );
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 3, 0, 2), stock("ramyeon", 1, 0, 0)]
    );

    // The payment provider answers after the adapter's 1 s timeout: the retry with the same
    // idempotency key gets the first answer, and the customer is charged once.
    let late = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "ramyeon", "quantity": 1 }]),
        "pk-late-1",
    );
    shop.wait_for(&customer, &late, "COMPLETED");
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 3, 0, 2), stock("ramyeon", 0, 0, 1)]
    );

    let ledger = shop.toss.ledger();
    assert_eq!(
        ledger["orders"][&paid],
        json!({ "charges": 1, "charged": 7000, "refunded": 0, "declined": 0 })
    );
    assert_eq!(
        ledger["orders"][&late],
        json!({ "charges": 1, "charged": 4500, "refunded": 0, "declined": 0 })
    );
    assert_eq!(
        ledger["orders"][&declined]["charges"],
        Value::Null,
        "{ledger}"
    );
    assert_eq!(
        ledger["orders"][&short],
        Value::Null,
        "the payment was never called: {ledger}"
    );
    assert_eq!(ledger["net"], 11500);

    // Each order's end is announced once on its outcome's topic, and counted per topic.
    let outcomes = |outcome: &str| {
        common::metric(
            &shop.moa,
            "moa_messages_published_total",
            &format!("topic=\"orders.outcome.{outcome}\""),
        )
    };
    common::wait_until("the outcomes are published", || {
        outcomes("completed") == 2.0 && outcomes("declined") == 1.0 && outcomes("rejected") == 1.0
    });
    let ended = shop.outcome_events();
    assert_eq!(ended.len(), 4, "{ended:?}");
    assert_eq!(
        ended[&declined],
        (
            "orders.outcome.declined".to_string(),
            json!({
                "type": "OrderEnded", "order_id": declined, "state": "PAYMENT_DECLINED",
                "compensated": true, "reason": "PAYMENT_DECLINED"
            })
        )
    );
    assert_eq!(ended[&paid].1["compensated"], false);
    assert_eq!(ended[&short].0, "orders.outcome.rejected");

    // Someone else's order is not visible; the payment record is.
    let other = shop.issuer.token_for("customer-choi", &["CUSTOMER"]);
    assert_eq!(
        shop.call(Method::GET, &format!("/orders/{paid}"), &other, None)
            .0,
        404
    );
    let (status, payment) = shop.call(Method::GET, &format!("/payments/{paid}"), &customer, None);
    assert_eq!(
        (status, payment["state"].as_str()),
        (200, Some("CONFIRMED")),
        "{payment}"
    );
}

#[test]
fn a_completed_order_cancelled_is_refunded_once_and_restocked() {
    let shop = shop();
    let (store, owner) = shop.store();
    let customer = shop.issuer.token_for("customer-park", &["CUSTOMER"]);
    let id = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 3 }]),
        "pk-cancel-1",
    );
    shop.wait_for(&customer, &id, "COMPLETED");
    // Asked twice: one cancellation.
    for _ in 0..2 {
        let (status, body) = shop.call(
            Method::POST,
            &format!("/orders/{id}/cancel"),
            &customer,
            None,
        );
        assert_eq!(status, 202, "{body}");
    }
    let order = shop.wait_for(&customer, &id, "CANCELLED_BY_CUSTOMER");
    assert_eq!(order["state"], "CANCELLED_BY_CUSTOMER");
    let ledger = shop.toss.ledger();
    assert_eq!(
        ledger["orders"][&id],
        json!({ "charges": 1, "charged": 10500, "refunded": 10500, "declined": 0 })
    );
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 5, 0, 0), stock("ramyeon", 1, 0, 0)]
    );
    // A cancelled order cannot be cancelled again.
    let (status, body) = shop.call(
        Method::POST,
        &format!("/orders/{id}/cancel"),
        &customer,
        None,
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_cancellable"))
    );
}

#[test]
fn bad_orders_are_refused_before_anything_happens() {
    let shop = shop();
    let (store, _) = shop.store();
    let customer = shop.issuer.token_for("customer-park", &["CUSTOMER"]);
    let owner = shop.issuer.token_for("owner-kim", &["OWNER"]);
    let cases = [
        (
            json!({ "store_id": store, "items": [], "payment_key": "pk-1" }),
            400,
            "invalid_items",
        ),
        (
            json!({ "store_id": store, "items": [{ "item_id": "pizza", "quantity": 1 }], "payment_key": "pk-1" }),
            400,
            "unknown_item",
        ),
        (
            json!({ "store_id": store, "items": [{ "item_id": "kimbap", "quantity": 0 }], "payment_key": "pk-1" }),
            400,
            "invalid_quantity",
        ),
        (
            json!({ "store_id": store, "items": [{ "item_id": "kimbap", "quantity": 1 }], "payment_key": "" }),
            400,
            "invalid_payment_key",
        ),
        (
            json!({ "store_id": "nope", "items": [{ "item_id": "kimbap", "quantity": 1 }], "payment_key": "pk-1" }),
            400,
            "unknown_store",
        ),
        (
            json!({ "store_id": store, "items": [{ "item_id": "kimbap", "quantity": 1, "price": 1 }], "payment_key": "pk-1" }),
            400,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let (got, reply) = shop.call(Method::POST, "/orders", &customer, Some(body.clone()));
        assert_eq!(
            (got, reply["error"].as_str()),
            (status, Some(code)),
            "{body}: {reply}"
        );
    }
    // An owner is not a customer.
    let (status, _) = shop.call(Method::POST, "/orders", &owner, Some(json!({ "store_id": store, "items": [{ "item_id": "kimbap", "quantity": 1 }], "payment_key": "pk-2" })));
    assert_eq!(status, 403);
    // A payment key pays for one order only.
    let once = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 1 }]),
        "pk-once",
    );
    let (status, reply) = shop.call(Method::POST, "/orders", &customer, Some(json!({ "store_id": store, "items": [{ "item_id": "kimbap", "quantity": 1 }], "payment_key": "pk-once" })));
    assert_eq!(
        (status, reply["error"].as_str()),
        (409, Some("payment_key_used"))
    );
    shop.wait_for(&customer, &once, "COMPLETED");
    // Only that order ever reached the payment provider.
    let ledger = shop.toss.ledger();
    let charged: Vec<&String> = ledger["orders"].as_object().unwrap().keys().collect();
    assert_eq!(charged, [&once], "{ledger}");
    let (_, mine) = shop.call(Method::GET, "/orders", &customer, None);
    assert_eq!(mine["orders"].as_array().map(Vec::len), Some(1), "{mine}");
}

/// Every message on the saga's topics so far, read from the start.
fn saga_messages(kafka: &KafkaServer, round: &str) -> Vec<rdkafka::message::OwnedMessage> {
    // Per completed order: OrderCreated, Reserve, Reserved, Confirm, Confirmed, Commit, Committed;
    // per declined one: OrderCreated, Reserve, Reserved, Confirm, Declined, Release, Released;
    // per rejected one: OrderCreated, Reserve, Rejected.
    let counts = [
        ("orders.events", 3),
        ("inventory.commands", 5),
        ("inventory.replies", 5),
        ("payment.commands", 2),
        ("payment.replies", 2),
    ];
    counts
        .iter()
        .flat_map(|(topic, count)| kafka.consume(topic, &format!("replay-{round}-{topic}"), *count))
        .collect()
}

/// Publishes `messages` again on their topics with their keys and payloads; with `same_ids` their
/// headers too (a broker redelivery, a relay that published twice), else without the
/// `moa-message-id` (a step that sent its command again).
fn republish(kafka: &KafkaServer, messages: &[rdkafka::message::OwnedMessage], same_ids: bool) {
    use rdkafka::Message as _;
    use rdkafka::message::{Header, Headers as _, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .create()
            .unwrap();
        for message in messages {
            let mut headers = OwnedHeaders::new();
            if let Some(original) = message.headers() {
                for header in original.iter() {
                    if same_ids || header.key != "moa-message-id" {
                        headers = headers.insert(Header {
                            key: header.key,
                            value: header.value,
                        });
                    }
                }
            }
            let mut record = FutureRecord::to(message.topic())
                .payload(message.payload().unwrap_or_default())
                .headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
}

/// Waits until the host has handled no new delivery for 3 s.
fn wait_quiet(shop: &Shop) {
    let handled = || common::metric(&shop.moa, "moa_events_total", "outcome=\"ok\"");
    let (mut last, mut since) = (handled(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(90);
    while since.elapsed() < Duration::from_secs(3) {
        assert!(Instant::now() < deadline, "the saga never went quiet");
        std::thread::sleep(Duration::from_millis(200));
        let now = handled();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

#[test]
fn the_saga_runs_on_kafka_and_mongodb() {
    let kafka = KafkaServer::start();
    let mongo = MongoServer::start();
    let config = format!(
        "[messaging.brokers.main]\ntype = \"kafka\"\nbrokers = \"{}\"\n{}",
        kafka.bootstrap,
        mongo.store_config("default", "shop")
    );
    let shop = shop_with(Setup {
        runtime_config: Some(config),
        ..Default::default()
    });
    let (store, owner) = shop.store();
    let customer = shop.issuer.token_for("customer-park", &["CUSTOMER"]);
    let paid = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 2 }]),
        "pk-ok-1",
    );
    let declined = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 1 }]),
        "pk-decline-1",
    );
    let short = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "ramyeon", "quantity": 2 }]),
        "pk-short-1",
    );
    shop.wait_for(&customer, &paid, "COMPLETED");
    shop.wait_for(&customer, &declined, "PAYMENT_DECLINED");
    shop.wait_for(&customer, &short, "REJECTED_OUT_OF_STOCK");
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 3, 0, 2), stock("ramyeon", 1, 0, 0)]
    );
    let ledger = shop.toss.ledger();
    assert_eq!(ledger["orders"][&paid]["charged"], 7000, "{ledger}");
    assert_eq!(ledger["net"], 7000, "{ledger}");
    wait_quiet(&shop);

    // Every message of every kind delivered again, first as the same message (the inbox drops
    // it), then as a new one (the order's, the reservation's and the payment's state drop it):
    // no state, stock or charge changes.
    let orders = |shop: &Shop| -> Vec<Value> {
        [&paid, &declined, &short]
            .iter()
            .map(|id| {
                let mut order = shop
                    .call(Method::GET, &format!("/orders/{id}"), &customer, None)
                    .1;
                order.as_object_mut().unwrap().remove("updated_at_ms");
                order
            })
            .collect()
    };
    let before = orders(&shop);
    let messages = saga_messages(&kafka, "1");
    let handled = common::metric(&shop.moa, "moa_events_total", "outcome=\"ok\"");
    republish(&kafka, &messages, true);
    republish(&kafka, &messages, false);
    wait_quiet(&shop);
    assert!(
        common::metric(&shop.moa, "moa_events_total", "outcome=\"ok\"")
            >= handled + 2.0 * messages.len() as f64,
        "the repeats were delivered"
    );
    assert_eq!(orders(&shop), before);
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 3, 0, 2), stock("ramyeon", 1, 0, 0)]
    );
    assert_eq!(shop.toss.ledger(), ledger, "no new charge or refund");
}

#[test]
fn a_confirm_dead_lettered_after_its_last_attempt_is_compensated() {
    // One attempt per payment command: a confirm whose outcome is unknown (Toss answers 500) is
    // dead-lettered at once, and the saga reads the dead letter.
    let shop = shop_with(Setup {
        edits: vec![("max_attempts = 12", "max_attempts = 1".to_string())],
        ..Default::default()
    });
    let (store, owner) = shop.store();
    let customer = shop.issuer.token_for("customer-park", &["CUSTOMER"]);
    let id = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 2 }]),
        "pk-error500-1",
    );
    let order = shop.wait_for(&customer, &id, "FAILED");
    assert_eq!(order["reason"], "PAYMENT_FAILED", "{order}");
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 5, 0, 0), stock("ramyeon", 1, 0, 0)],
        "the reservation is released"
    );
    let ledger = shop.toss.ledger();
    assert_eq!(ledger["net"], 0, "nothing stays charged: {ledger}");
    assert!(
        common::metric(
            &shop.moa,
            "moa_events_total",
            "topic=\"payment.commands\",outcome=\"dead_letter\""
        ) >= 1.0,
        "the dead letter is counted"
    );
    common::wait_until("the compensated end is counted", || {
        common::metric(
            &shop.moa,
            "moa_messages_published_total",
            "topic=\"orders.outcome.failed\"",
        ) == 1.0
    });
    assert_eq!(shop.outcome_events()[&id].1["compensated"], true);
}

#[test]
fn a_step_without_an_answer_is_sent_again_then_given_up_and_the_order_ends() {
    // Nobody consumes the inventory's commands, so no reservation ever answers. With 300 ms step
    // deadlines, two resends and the sweeper every second, the order must still end.
    let shop = shop_with(Setup {
        edits: vec![
            (
                "topics = [\"inventory.commands\"]",
                "topics = [\"inventory.commands.paused\"]".to_string(),
            ),
            (
                "cron_expression = \"*/5 * * * * *\"",
                "cron_expression = \"* * * * * *\"".to_string(),
            ),
        ],
        variables: vec![
            ("SAGA_STEP_TIMEOUT_MS", "300".to_string()),
            ("SAGA_STEP_RETRIES", "2".to_string()),
        ],
        ..Default::default()
    });
    let (store, owner) = shop.store();
    let customer = shop.issuer.token_for("customer-park", &["CUSTOMER"]);
    let id = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 1 }]),
        "pk-ok-stuck",
    );
    // RESERVING: sent 3 times, given up; RELEASING: sent 3 times, given up.
    let order = shop.wait_for(&customer, &id, "COMPENSATION_FAILED");
    let reason = order["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("release failed: no answer to the releasing step after 3 sends"),
        "{order}"
    );
    assert_eq!(
        shop.stock(&owner, &store),
        [stock("kimbap", 5, 0, 0), stock("ramyeon", 1, 0, 0)],
        "nothing was ever reserved"
    );
    assert_eq!(shop.toss.ledger()["net"], 0, "Toss never heard of it");
    assert!(
        common::metric(&shop.moa, "moa_cron_runs_total", "outcome=\"ok\"") >= 4.0,
        "the sweeper ran on its schedule"
    );
}

/// One order through the saga is one trace: the HTTP request that placed it is the root, and each
/// hop after it is a span of that trace: every saga step's component (consumer spans), every message
/// between them (producer spans, the consumer's parent: the broker hop) and the payment call to Toss
/// (a client span, with the context in its `traceparent` header). Spans go to an OTLP receiver
/// started here.
#[test]
fn one_order_is_one_trace_from_the_request_through_the_saga_to_the_payment_call() {
    let receiver = OtlpReceiver::start();
    let shop = shop_with(Setup {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.clone()),
            ("OTEL_SERVICE_NAME", "moa-trace-test".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
        ..Default::default()
    });
    let (store, _owner) = shop.store();
    let customer = shop.issuer.token_for("customer-trace", &["CUSTOMER"]);
    let id = shop.order(
        &customer,
        &store,
        json!([{ "item_id": "kimbap", "quantity": 1 }]),
        "pk-trace-1",
    );
    shop.wait_for(&customer, &id, "COMPLETED");

    // Spans arrive in export batches: wait until the order's trace holds the payment call and
    // every span of it has its parent there too (a broken chain never completes and fails below).
    let toss_host = shop.toss.url.trim_start_matches("http://").to_string();
    let is_payment_call = |s: &ReceivedSpan| {
        s.name.starts_with("POST")
            && s.attributes
                .get("url.full")
                .is_some_and(|u| u.contains(&toss_host))
    };
    let is_root = |s: &ReceivedSpan| {
        s.name == "http.request"
            && s.attributes.get("path").map(String::as_str) == Some("/orders")
            && s.attributes.get("method").map(String::as_str) == Some("POST")
    };
    let complete = |spans: &[ReceivedSpan]| {
        let Some(root) = spans.iter().find(|s| is_root(s)) else {
            return false;
        };
        let trace: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        trace.iter().any(|s| is_payment_call(s))
            && trace.iter().all(|s| {
                s.span_id == root.span_id || trace.iter().any(|p| p.span_id == s.parent_span_id)
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = receiver.spans();
        if complete(&spans) {
            break spans;
        }
        if Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(spans.iter().all(|s| s.service == "moa-trace-test"));

    let root = spans
        .iter()
        .find(|s| is_root(s))
        .expect("the POST /orders request has a span");
    let trace: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();

    // Every saga step is in it: the saga, inventory and payment components consumed messages.
    let consumers: std::collections::BTreeSet<&str> = trace
        .iter()
        .filter(|s| s.name.ends_with(" process"))
        .filter_map(|s| s.attributes.get("component").map(String::as_str))
        .collect();
    for step in ["saga", "inventory", "payment"] {
        assert!(
            consumers.contains(step),
            "no {step} step in the trace: {consumers:?}"
        );
    }
    // Each consumer span's parent is a producer span of the same trace (the broker hop).
    let by_id: std::collections::HashMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    for consumer in trace.iter().filter(|s| s.name.ends_with(" process")) {
        let parent = by_id
            .get(consumer.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("{} has no parent in the trace", consumer.name));
        assert!(
            parent.name.ends_with(" publish"),
            "{} <- {}",
            consumer.name,
            parent.name
        );
        assert_eq!(
            parent.attributes.get("topic"),
            consumer.attributes.get("topic"),
            "a message is consumed from the topic it was published to"
        );
    }
    // The payment call to Toss is a span of this trace, under the payment step.
    let payment = trace
        .iter()
        .find(|s| is_payment_call(s))
        .expect("the Toss call is in the order's trace");
    assert_eq!(
        payment.attributes.get("component").map(String::as_str),
        Some("payment")
    );
    assert_eq!(
        payment
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let payment_parent = by_id
        .get(payment.parent_span_id.as_str())
        .expect("the payment call's parent is in the trace");
    assert_eq!(
        payment_parent
            .attributes
            .get("component")
            .map(String::as_str),
        Some("payment")
    );
    // One tree: every span but the root has its parent in the trace.
    for span in &trace {
        if span.span_id != root.span_id {
            assert!(
                by_id.contains_key(span.parent_span_id.as_str()),
                "{} ({}) hangs outside the trace",
                span.name,
                span.span_id
            );
        }
    }
    // And no other trace holds this order's work: the one payment call is in it.
    assert_eq!(spans.iter().filter(|s| is_payment_call(s)).count(), 1);
}
