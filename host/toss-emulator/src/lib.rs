//! A local emulator of the Toss Payments v1 API (the part moa's payment adapter uses), so tests and
//! `moa up` run with no real payment provider: confirm, cancel and query payments with Toss's
//! authentication, idempotency-key replay, error shapes, and faults injected on demand.
//!
//! - `POST /v1/payments/confirm` `{paymentKey, orderId, amount}`,
//!   `POST /v1/payments/{paymentKey}/cancel` `{cancelReason, cancelAmount?}`,
//!   `GET /v1/payments/{paymentKey}`, `GET /v1/payments/orders/{orderId}`.
//! - `Authorization: Basic base64(secretKey + ":")`, else 401 `UNAUTHORIZED_KEY`.
//! - `Idempotency-Key` on a POST: the first response is kept and replayed for the same key (the body
//!   is not compared); 409 `IDEMPOTENT_REQUEST_PROCESSING` while the first is still running. 5xx
//!   and `PROVIDER_ERROR` answers are not kept, so a retry with the same key runs again.
//! - Faults, per payment key (deterministic, for tests): a key containing `decline` is refused
//!   (403 `REJECT_CARD_PAYMENT`); `provider-error` fails its first confirm (400 `PROVIDER_ERROR`,
//!   retryable); `error500` fails its first confirm (500); `slow` answers after `slow_ms`; `late`
//!   charges at once but answers only after `late_ms` (a client timeout, then a late success).
//!   Or at random, for chaos runs: `PUT /__emulator/faults` `{decline_rate, error_rate,
//!   late_rate, slow_rate, seed}`.
//! - `GET /__emulator/ledger`: every payment, and the charges and refunds per order.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The accepted secret key; `None` accepts any key starting with `test_sk_`.
    pub secret_key: Option<String>,
    /// How long a `slow` confirm takes.
    pub slow_ms: u64,
    /// How long a `late` confirm holds its answer after charging.
    pub late_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            secret_key: None,
            slow_ms: 1500,
            late_ms: 8000,
        }
    }
}

/// Random faults for chaos runs (all 0 by default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub decline_rate: f64,
    pub error_rate: f64,
    pub late_rate: f64,
    pub slow_rate: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Cancel {
    cancel_amount: i64,
    cancel_reason: String,
    canceled_at: String,
    transaction_key: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Payment {
    version: &'static str,
    payment_key: String,
    order_id: String,
    status: &'static str,
    method: &'static str,
    currency: &'static str,
    total_amount: i64,
    balance_amount: i64,
    requested_at: String,
    approved_at: String,
    last_transaction_key: String,
    cancels: Vec<Cancel>,
}

enum Idempotent {
    InFlight,
    Done(StatusCode, Bytes),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    Normal,
    Decline,
    ProviderError,
    InternalError,
    Slow,
    Late,
}

#[derive(Default)]
struct State {
    payments: BTreeMap<String, Payment>,
    idempotency: HashMap<String, Idempotent>,
    /// Payment keys whose one-time failure (`provider-error`, `error500`, a random error) happened.
    failed_once: HashSet<String>,
    /// Refused confirms per order (declines), for the ledger.
    declined: BTreeMap<String, u32>,
    faults: Faults,
    random: u64,
    transactions: u64,
}

impl State {
    fn chance(&mut self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        // xorshift64*
        let mut x = self.random.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random = x;
        let value = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (value as f64 / (1u64 << 53) as f64) < rate
    }

    fn plan(&mut self, payment_key: &str) -> Plan {
        let once = |state: &mut State, plan: Plan| {
            if state.failed_once.insert(payment_key.to_string()) {
                plan
            } else {
                Plan::Normal
            }
        };
        if payment_key.contains("decline") {
            return Plan::Decline;
        }
        if payment_key.contains("provider-error") {
            return once(self, Plan::ProviderError);
        }
        if payment_key.contains("error500") {
            return once(self, Plan::InternalError);
        }
        if payment_key.contains("slow") {
            return Plan::Slow;
        }
        if payment_key.contains("late") {
            return Plan::Late;
        }
        let faults = self.faults.clone();
        if self.chance(faults.decline_rate) {
            Plan::Decline
        } else if !self.failed_once.contains(payment_key) && self.chance(faults.error_rate) {
            once(self, Plan::InternalError)
        } else if self.chance(faults.late_rate) {
            Plan::Late
        } else if self.chance(faults.slow_rate) {
            Plan::Slow
        } else {
            Plan::Normal
        }
    }

    fn transaction_key(&mut self) -> String {
        self.transactions += 1;
        format!("tx_{:020}", self.transactions)
    }
}

/// The emulator: its settings and its state (payments, idempotency records, faults).
pub struct Emulator {
    settings: Settings,
    state: Mutex<State>,
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    bytes_reply(status, Bytes::from(body.to_string()))
}

fn bytes_reply(status: StatusCode, body: Bytes) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({ "code": code, "message": message }))
}

/// Now in Korea Standard Time, as Toss writes it (`2024-02-13T12:18:14+09:00`).
fn kst_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
        + 9 * 3600;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+09:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn valid_order_id(id: &str) -> bool {
    (6..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfirmRequest {
    payment_key: String,
    order_id: String,
    amount: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CancelRequest {
    cancel_reason: String,
    #[serde(default)]
    cancel_amount: Option<i64>,
}

impl Emulator {
    pub fn new(settings: Settings) -> Arc<Emulator> {
        Arc::new(Emulator {
            settings,
            state: Mutex::new(State {
                random: 0x9E37_79B9_7F4A_7C15,
                ..Default::default()
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let emulator = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let emulator = emulator.clone();
                    async move { Ok::<_, std::convert::Infallible>(emulator.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(value) = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some(key) = text.strip_suffix(':') else {
            return false;
        };
        match &self.settings.secret_key {
            Some(expected) => key == expected,
            None => key.starts_with("test_sk_"),
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Reply {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        if path.starts_with("/__emulator/") {
            return self.control(method, &path, request).await;
        }
        if !self.authorized(&request) {
            let (status, body) = error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED_KEY",
                "인증되지 않은 시크릿 키 혹은 클라이언트 키 입니다.",
            );
            return json_reply(status, &body);
        }
        let idempotency_key = request
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return json_reply(StatusCode::BAD_REQUEST, &json!({})),
        };
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method, segments.as_slice()) {
            (Method::GET, ["v1", "payments", "orders", order_id]) => {
                let state = self.state();
                match state.payments.values().find(|p| p.order_id == *order_id) {
                    Some(payment) => json_reply(StatusCode::OK, &json!(payment)),
                    None => not_found(),
                }
            }
            (Method::GET, ["v1", "payments", payment_key]) => {
                let state = self.state();
                match state.payments.get(*payment_key) {
                    Some(payment) => json_reply(StatusCode::OK, &json!(payment)),
                    None => not_found(),
                }
            }
            (Method::POST, ["v1", "payments", "confirm"]) => {
                self.idempotent(idempotency_key, |emulator| {
                    Box::pin(emulator.confirm(body.clone()))
                })
                .await
            }
            (Method::POST, ["v1", "payments", payment_key, "cancel"]) => {
                let payment_key = payment_key.to_string();
                self.idempotent(idempotency_key, move |emulator| {
                    let (payment_key, body) = (payment_key.clone(), body.clone());
                    Box::pin(async move { emulator.cancel(&payment_key, body) })
                })
                .await
            }
            _ => {
                let (status, body) = error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "존재하지 않는 API입니다.",
                );
                json_reply(status, &body)
            }
        }
    }

    /// Runs `work` once per idempotency key: later requests with the key get the first answer
    /// again, or 409 while it runs. `work` returns the answer and how long to hold it back after
    /// it is recorded (a `late` confirm).
    async fn idempotent<F>(self: &Arc<Self>, key: Option<String>, work: F) -> Reply
    where
        F: Fn(
            Arc<Emulator>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = (StatusCode, Value, Duration)> + Send>,
        >,
    {
        if let Some(key) = &key {
            let mut state = self.state();
            match state.idempotency.get(key) {
                Some(Idempotent::InFlight) => {
                    let (status, body) = error(
                        StatusCode::CONFLICT,
                        "IDEMPOTENT_REQUEST_PROCESSING",
                        "이전 멱등 요청이 처리 중입니다. 잠시 후 다시 시도해주세요.",
                    );
                    return json_reply(status, &body);
                }
                Some(Idempotent::Done(status, body)) => return bytes_reply(*status, body.clone()),
                None => {
                    state.idempotency.insert(key.clone(), Idempotent::InFlight);
                }
            }
        }
        let (status, body, hold) = work(self.clone()).await;
        let bytes = Bytes::from(body.to_string());
        if let Some(key) = key {
            let mut state = self.state();
            let retryable = body.get("code").and_then(Value::as_str) == Some("PROVIDER_ERROR");
            if status.is_server_error() || retryable {
                state.idempotency.remove(&key);
            } else {
                state
                    .idempotency
                    .insert(key, Idempotent::Done(status, bytes.clone()));
            }
        }
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        bytes_reply(status, bytes)
    }

    async fn confirm(self: Arc<Self>, body: Bytes) -> (StatusCode, Value, Duration) {
        let invalid = |message: &str| {
            let (status, body) = error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message);
            (status, body, Duration::ZERO)
        };
        let Ok(request) = serde_json::from_slice::<ConfirmRequest>(&body) else {
            return invalid("paymentKey, orderId and amount are required.");
        };
        if request.amount <= 0 {
            return invalid("amount must be positive.");
        }
        if !valid_order_id(&request.order_id) {
            return invalid("orderId must be 6 to 64 characters of letters, digits, - and _.");
        }
        let plan = self.state().plan(&request.payment_key);
        if plan == Plan::Slow {
            tokio::time::sleep(Duration::from_millis(self.settings.slow_ms)).await;
        }
        let mut state = self.state();
        if state
            .payments
            .get(&request.payment_key)
            .is_some_and(|existing| existing.status != "ABORTED")
        {
            let (status, body) = error(
                StatusCode::BAD_REQUEST,
                "ALREADY_PROCESSED_PAYMENT",
                "이미 처리된 결제 입니다.",
            );
            return (status, body, Duration::ZERO);
        }
        let refused = match plan {
            Plan::Decline => Some(error(
                StatusCode::FORBIDDEN,
                "REJECT_CARD_PAYMENT",
                "한도초과 혹은 잔액부족으로 결제에 실패했습니다.",
            )),
            Plan::ProviderError => Some(error(
                StatusCode::BAD_REQUEST,
                "PROVIDER_ERROR",
                "일시적인 오류가 발생했습니다. 잠시 후 다시 시도해주세요.",
            )),
            Plan::InternalError => Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "FAILED_PAYMENT_INTERNAL_SYSTEM_PROCESSING",
                "결제가 완료되지 않았어요. 다시 시도해주세요.",
            )),
            _ => None,
        };
        if let Some((status, body)) = refused {
            if plan == Plan::Decline {
                *state.declined.entry(request.order_id.clone()).or_default() += 1;
            }
            return (status, body, Duration::ZERO);
        }
        let now = kst_now();
        let transaction = state.transaction_key();
        let payment = Payment {
            version: "2022-11-16",
            payment_key: request.payment_key.clone(),
            order_id: request.order_id,
            status: "DONE",
            method: "카드",
            currency: "KRW",
            total_amount: request.amount,
            balance_amount: request.amount,
            requested_at: now.clone(),
            approved_at: now,
            last_transaction_key: transaction,
            cancels: Vec::new(),
        };
        let body = json!(payment);
        state.payments.insert(request.payment_key, payment);
        let hold = match plan {
            Plan::Late => Duration::from_millis(self.settings.late_ms),
            _ => Duration::ZERO,
        };
        (StatusCode::OK, body, hold)
    }

    fn cancel(&self, payment_key: &str, body: Bytes) -> (StatusCode, Value, Duration) {
        let done = |(status, body): (StatusCode, Value)| (status, body, Duration::ZERO);
        let Ok(request) = serde_json::from_slice::<CancelRequest>(&body) else {
            return done(error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "cancelReason is required.",
            ));
        };
        let mut state = self.state();
        let transaction = state.transaction_key();
        let Some(payment) = state.payments.get_mut(payment_key) else {
            return done(error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND_PAYMENT",
                "존재하지 않는 결제 정보 입니다.",
            ));
        };
        if payment.status == "CANCELED" {
            return done(error(
                StatusCode::BAD_REQUEST,
                "ALREADY_CANCELED_PAYMENT",
                "이미 취소된 결제 입니다.",
            ));
        }
        let amount = request.cancel_amount.unwrap_or(payment.balance_amount);
        if amount <= 0 || amount > payment.balance_amount {
            return done(error(
                StatusCode::BAD_REQUEST,
                "NOT_CANCELABLE_AMOUNT",
                "취소 할 수 없는 금액 입니다.",
            ));
        }
        payment.balance_amount -= amount;
        payment.status = if payment.balance_amount == 0 {
            "CANCELED"
        } else {
            "PARTIAL_CANCELED"
        };
        payment.cancels.push(Cancel {
            cancel_amount: amount,
            cancel_reason: request.cancel_reason,
            canceled_at: kst_now(),
            transaction_key: transaction.clone(),
        });
        payment.last_transaction_key = transaction;
        done((StatusCode::OK, json!(payment)))
    }

    async fn control(&self, method: Method, path: &str, request: Request<Incoming>) -> Reply {
        match (method, path) {
            (Method::GET, "/__emulator/ledger") => json_reply(StatusCode::OK, &self.ledger()),
            (Method::PUT, "/__emulator/faults") => {
                let body = match request.into_body().collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(_) => Bytes::new(),
                };
                match serde_json::from_slice::<Faults>(&body) {
                    Ok(faults) => {
                        let mut state = self.state();
                        state.random = faults.seed.max(1);
                        state.faults = faults.clone();
                        json_reply(StatusCode::OK, &json!(faults))
                    }
                    Err(err) => json_reply(
                        StatusCode::BAD_REQUEST,
                        &json!({ "code": "INVALID_REQUEST", "message": err.to_string() }),
                    ),
                }
            }
            _ => json_reply(
                StatusCode::NOT_FOUND,
                &json!({ "code": "NOT_FOUND", "message": "GET /__emulator/ledger or PUT /__emulator/faults" }),
            ),
        }
    }

    /// Every payment, and per order: how many charges, the amount charged and refunded.
    pub fn ledger(&self) -> Value {
        let state = self.state();
        let mut orders: BTreeMap<&str, (u32, i64, i64)> = BTreeMap::new();
        for payment in state.payments.values() {
            let entry = orders.entry(&payment.order_id).or_default();
            entry.0 += 1;
            entry.1 += payment.total_amount;
            entry.2 += payment.total_amount - payment.balance_amount;
        }
        let charged: i64 = orders.values().map(|o| o.1).sum();
        let refunded: i64 = orders.values().map(|o| o.2).sum();
        json!({
            "payments": state.payments.values().collect::<Vec<_>>(),
            "orders": orders.iter().map(|(id, (charges, charged, refunded))| (id.to_string(), json!({
                "charges": charges, "charged": charged, "refunded": refunded,
                "declined": state.declined.get(*id).copied().unwrap_or(0),
            }))).collect::<serde_json::Map<_, _>>(),
            "charged": charged,
            "refunded": refunded,
            "net": charged - refunded,
        })
    }
}

fn not_found() -> Reply {
    let (status, body) = error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND_PAYMENT",
        "존재하지 않는 결제 정보 입니다.",
    );
    json_reply(status, &body)
}
