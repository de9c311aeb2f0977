//! The emulator over real HTTP: Toss's authentication, confirm / cancel / query, idempotency-key
//! replay and 409 while processing, the error shapes, every injected fault, and the ledger.

use moa_toss_emulator::{Emulator, Settings};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const AUTH: &str = "Basic dGVzdF9za19tb2E6"; // base64("test_sk_moa:")

async fn start(settings: Settings) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Emulator::new(settings).serve(listener));
    url
}

async fn post(url: &str, path: &str, key: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("authorization", AUTH)
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn get(url: &str, path: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .header("authorization", AUTH)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

fn confirm(key: &str, order: &str, amount: i64) -> Value {
    json!({ "paymentKey": key, "orderId": order, "amount": amount })
}

#[tokio::test]
async fn secret_keys_are_checked() {
    let url = start(Settings::default()).await;
    for auth in [
        None,
        Some("Basic bGl2ZV9za194Og=="),
        Some("Bearer test_sk_moa"),
    ] {
        let mut request = reqwest::Client::new()
            .post(format!("{url}/v1/payments/confirm"))
            .json(&confirm("pk-1", "order-0001", 1000));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHORIZED_KEY");
    }
    let url = start(Settings {
        secret_key: Some("live_sk_x".into()),
        ..Settings::default()
    })
    .await;
    let (status, _) = post(
        &url,
        "/v1/payments/confirm",
        None,
        confirm("pk-1", "order-0001", 1000),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a test key is refused when a key is configured"
    );
}

#[tokio::test]
async fn confirm_cancel_query_and_idempotent_replay() {
    let url = start(Settings::default()).await;
    let (status, payment) = post(
        &url,
        "/v1/payments/confirm",
        Some("c-1"),
        confirm("pk-1", "order-0001", 15000),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{payment}");
    assert_eq!(payment["status"], "DONE");
    assert_eq!(payment["totalAmount"], 15000);
    assert_eq!(payment["balanceAmount"], 15000);
    assert!(payment["approvedAt"].as_str().unwrap().ends_with("+09:00"));
    // The same key replays the first answer, whatever the body says.
    let (status, replay) = post(
        &url,
        "/v1/payments/confirm",
        Some("c-1"),
        confirm("pk-1", "order-0001", 99),
    )
    .await;
    assert_eq!((status, &replay), (StatusCode::OK, &payment));
    // A new key for the same payment: already processed.
    let (status, body) = post(
        &url,
        "/v1/payments/confirm",
        Some("c-2"),
        confirm("pk-1", "order-0001", 15000),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "ALREADY_PROCESSED_PAYMENT");
    // Query by key and by order.
    assert_eq!(get(&url, "/v1/payments/pk-1").await.1["status"], "DONE");
    assert_eq!(
        get(&url, "/v1/payments/orders/order-0001").await.1["paymentKey"],
        "pk-1"
    );
    assert_eq!(
        get(&url, "/v1/payments/nope").await.1["code"],
        "NOT_FOUND_PAYMENT"
    );

    // Partial, then full cancel; then nothing left.
    let (status, body) = post(
        &url,
        "/v1/payments/pk-1/cancel",
        Some("x-1"),
        json!({ "cancelReason": "a", "cancelAmount": 5000 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["balanceAmount"].as_i64()),
        (Some("PARTIAL_CANCELED"), Some(10000))
    );
    let (_, again) = post(
        &url,
        "/v1/payments/pk-1/cancel",
        Some("x-1"),
        json!({ "cancelReason": "a", "cancelAmount": 5000 }),
    )
    .await;
    assert_eq!(again, body, "a repeated cancel with its key refunds once");
    let (_, body) = post(
        &url,
        "/v1/payments/pk-1/cancel",
        Some("x-2"),
        json!({ "cancelReason": "b" }),
    )
    .await;
    assert_eq!(
        (body["status"].as_str(), body["balanceAmount"].as_i64()),
        (Some("CANCELED"), Some(0))
    );
    let (status, body) = post(
        &url,
        "/v1/payments/pk-1/cancel",
        Some("x-3"),
        json!({ "cancelReason": "c" }),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ALREADY_CANCELED_PAYMENT"))
    );
    let (status, body) = post(
        &url,
        "/v1/payments/pk-9/cancel",
        None,
        json!({ "cancelReason": "c" }),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND_PAYMENT"))
    );

    let (_, ledger) = get(&url, "/__emulator/ledger").await;
    assert_eq!(
        ledger["orders"]["order-0001"],
        json!({ "charges": 1, "charged": 15000, "refunded": 15000, "declined": 0 })
    );
    assert_eq!(ledger["net"], 0);
    // Bad input gets Toss's error shape.
    let (status, body) = post(
        &url,
        "/v1/payments/confirm",
        None,
        json!({ "paymentKey": "pk-2" }),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_REQUEST"))
    );
    let (status, _) = post(
        &url,
        "/v1/payments/confirm",
        None,
        confirm("pk-2", "bad id!", 10),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn injected_faults_behave_as_toss_does() {
    let url = start(Settings {
        slow_ms: 700,
        late_ms: 1500,
        ..Settings::default()
    })
    .await;
    // A decline charges nothing.
    let (status, body) = post(
        &url,
        "/v1/payments/confirm",
        Some("d"),
        confirm("pk-decline-1", "order-0002", 1000),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("REJECT_CARD_PAYMENT"))
    );
    // 500 and PROVIDER_ERROR fail once and are not kept: the retry with the same key succeeds.
    for (key, status) in [
        ("pk-error500-1", StatusCode::INTERNAL_SERVER_ERROR),
        ("pk-provider-error-1", StatusCode::BAD_REQUEST),
    ] {
        let (first, _) = post(
            &url,
            "/v1/payments/confirm",
            Some(key),
            confirm(key, &format!("order-{key}"), 1000),
        )
        .await;
        assert_eq!(first, status, "{key}");
        let (retry, body) = post(
            &url,
            "/v1/payments/confirm",
            Some(key),
            confirm(key, &format!("order-{key}"), 1000),
        )
        .await;
        assert_eq!(
            (retry, body["status"].as_str()),
            (StatusCode::OK, Some("DONE")),
            "{key}"
        );
    }
    // While a slow confirm runs, its key answers 409; afterwards the first answer is replayed.
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            post(
                &url,
                "/v1/payments/confirm",
                Some("s"),
                confirm("pk-slow-1", "order-0003", 1000),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = post(
        &url,
        "/v1/payments/confirm",
        Some("s"),
        confirm("pk-slow-1", "order-0003", 1000),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("IDEMPOTENT_REQUEST_PROCESSING"))
    );
    let (status, first) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        post(
            &url,
            "/v1/payments/confirm",
            Some("s"),
            confirm("pk-slow-1", "order-0003", 1000)
        )
        .await
        .1,
        first
    );
    // A late confirm: the client gives up, but the charge happened; a query or a retry with the
    // same key sees it, and it is charged once.
    let late = reqwest::Client::new()
        .post(format!("{url}/v1/payments/confirm"))
        .header("authorization", AUTH)
        .header("idempotency-key", "l")
        .timeout(Duration::from_millis(300))
        .json(&confirm("pk-late-1", "order-0004", 2500))
        .send()
        .await;
    assert!(late.is_err_and(|e| e.is_timeout()));
    assert_eq!(
        get(&url, "/v1/payments/pk-late-1").await.1["status"],
        "DONE"
    );
    let (status, body) = post(
        &url,
        "/v1/payments/confirm",
        Some("l"),
        confirm("pk-late-1", "order-0004", 2500),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("DONE"))
    );
    let (_, ledger) = get(&url, "/__emulator/ledger").await;
    assert_eq!(ledger["orders"]["order-0004"]["charges"], 1);
    assert_eq!(
        ledger["orders"]["order-0002"],
        Value::Null,
        "a decline charges nothing"
    );

    // Random faults for chaos runs.
    let response = reqwest::Client::new()
        .put(format!("{url}/__emulator/faults"))
        .json(&json!({ "decline_rate": 1.0, "seed": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = post(
        &url,
        "/v1/payments/confirm",
        None,
        confirm("pk-plain", "order-0005", 1000),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let response = reqwest::Client::new()
        .put(format!("{url}/__emulator/faults"))
        .json(&json!({ "decline": 1.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "unknown fault names are refused"
    );
}
