//! The AI chat end to end: `POST /chat` behind the auth middleware, the question through a Redis
//! stream to `ai-chat`, the question embedded by a real `moa-model-runtime` over gRPC, the store's
//! reviews (loaded by the review job into SecantusDB and the embedded vector index) searched with
//! the store filter inside the search, and the answer from the LLM emulator (OpenAI chat
//! completions) through `fermyon:spin/llm` `infer`; then the LLM failing, slow, and a host killed
//! mid-question. A second test runs the same app on the embedded defaults (no servers, no LLM).

mod common;

use common::issuer::Issuer;
use common::{AppDir, Moa, ModelRuntime, MongoServer, Options, RedisServer, Reply, request};
use moa_llm_emulator::{Emulator, Faults, Settings};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RULES: &str = r#"[
  {"method": ["GET", "POST"], "path": "/chat", "groups": ["CUSTOMER", "ADMIN"]},
  {"method": "GET", "path": "/chat/...", "groups": ["CUSTOMER", "ADMIN"]}
]"#;

const API_KEY: &str = "sk-test-chat";

fn manifest(issuer: &Issuer) -> String {
    format!(
        r#"
spin_manifest_version = 2
[application]
name = "chat"
[variables]
{variables}
[[trigger.http]]
route = "/chat"
component = "chat"
dependencies.middleware = [{{ component = "auth" }}]
[[trigger.http]]
route = "/chat/..."
component = "chat"
dependencies.middleware = [{{ component = "auth" }}]
[[trigger.redis-stream]]
component = "ai-chat"
stream = "chat.questions"
claim_idle_ms = 1000
max_deliveries = 3
retry_backoff_ms = 200
[[trigger.job]]
name = "review-import"
component = "review-job"
source = {{ type = "jsonl", path = "${{input}}" }}
chunk_size = 64
workers = 2
[component.chat]
source = "{{chat}}"
document_stores = ["default"]
allowed_publish_topics = ["chat.questions"]
variables = {{ chat_events_max_ms = "40000" }}
[component.chat.moa]
request_timeout_ms = 60000
[component.ai-chat]
source = "{{ai-chat}}"
document_stores = ["default"]
vector_indexes = ["reviews"]
ai_models = ["multilingual-e5-small", "gpt-4o-mini"]
allowed_publish_topics = ["chat.answers"]
[component.ai-chat.moa]
request_timeout_ms = 60000
[[component.ai-chat.document_indexes]]
collection = "reviews"
keys = ["store_id", "sentiment"]
[component.review-job]
source = "{{review-job}}"
document_stores = ["default"]
vector_indexes = ["reviews"]
ai_models = ["multilingual-e5-small"]
{auth}"#,
        variables = issuer.auth_variables(RULES),
        auth = issuer.auth_component(""),
    )
}

/// The first `n` shared NSMC reviews, plus a store with two reviews of its own.
fn reviews(n: usize) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/nsmc-reviews.jsonl.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reviews: Vec<Value> = BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .take(n)
        .map(|line| serde_json::from_str(&line.expect("a line")).expect("JSON"))
        .collect();
    reviews.push(
        json!({"review_id": "tiny-1", "movie_id": "tiny", "rating": 10,
                        "text": "배달이 빠르고 음식이 따뜻했어요. 또 시킬게요"}),
    );
    reviews.push(
        json!({"review_id": "tiny-2", "movie_id": "tiny", "rating": 2,
                        "text": "양이 너무 적고 국물이 식어서 왔어요"}),
    );
    reviews
}

/// Review ids by store, and each store's (positive, negative) counts by rating.
struct Stores {
    ids: BTreeMap<String, BTreeSet<String>>,
    labels: BTreeMap<String, (u64, u64)>,
}

impl Stores {
    fn of(reviews: &[Value]) -> Stores {
        let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut labels: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for review in reviews {
            let store = review["movie_id"].as_str().expect("store").to_string();
            let id = review["review_id"].as_str().expect("id").to_string();
            ids.entry(store.clone()).or_default().insert(id);
            let counts = labels.entry(store).or_default();
            match review["rating"].as_i64() {
                Some(1..=4) => counts.1 += 1,
                Some(9..=10) => counts.0 += 1,
                _ => {}
            }
        }
        Stores { ids, labels }
    }

    /// The store with the most reviews.
    fn biggest(&self) -> String {
        self.ids
            .iter()
            .max_by_key(|(_, ids)| ids.len())
            .map(|(store, _)| store.clone())
            .expect("stores")
    }
}

/// The LLM emulator on a free port, served from its own thread.
fn start_emulator() -> (Arc<Emulator>, String) {
    let emulator = Emulator::new(Settings {
        api_key: Some(API_KEY.into()),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}/v1", listener.local_addr().expect("address"));
    let served = emulator.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            served.serve(listener).await;
        });
    });
    (emulator, url)
}

/// Loads `reviews` with the review job (same runtime config and state dir as the host).
fn import(app: &AppDir, reviews: &[Value], runtime_config: Option<&std::path::Path>) {
    let lines: Vec<String> = reviews.iter().map(Value::to_string).collect();
    app.write("reviews.jsonl", &(lines.join("\n") + "\n"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_moa"));
    command
        .args([
            "job",
            "run",
            "review-import",
            "--param",
            "input=reviews.jsonl",
            "--quiet",
            "-f",
        ])
        .arg(app.manifest())
        .arg("--state-dir")
        .arg(app.path().join(".moa"))
        .env("MOA_LOG", "warn")
        .env("MOA_TEST_LLM_KEY", API_KEY)
        .stdin(Stdio::null());
    if let Some(path) = runtime_config {
        command.arg("--runtime-config-file").arg(path);
    }
    let output = command.output().expect("moa job runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("{} records written", reviews.len())),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

struct Client<'a> {
    moa: &'a Moa,
    token: String,
}

impl Client<'_> {
    fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let authorization = format!("Bearer {}", self.token);
        request(
            method,
            &format!("{}{path}", self.moa.url),
            &[
                ("authorization", &authorization),
                ("content-type", "application/json"),
            ],
            body.map(|b| b.to_string().into_bytes()),
        )
    }

    fn ask(&self, store_id: &str, question: &str) -> String {
        let reply = self.call(
            Method::POST,
            "/chat",
            Some(json!({"store_id": store_id, "question": question})),
        );
        assert_eq!(reply.status, 202, "{}", reply.body);
        let chat: Value = serde_json::from_str(&reply.body).expect("JSON");
        assert_eq!(chat["state"], "pending");
        let id = chat["id"].as_str().expect("id").to_string();
        assert_eq!(
            reply.header("location"),
            Some(format!("/chat/{id}").as_str())
        );
        id
    }

    fn get(&self, id: &str) -> Value {
        let reply = self.call(Method::GET, &format!("/chat/{id}"), None);
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).expect("JSON")
    }

    /// Polls the chat until it is answered or failed.
    fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let chat = self.get(id);
            if chat["state"] == "answered" || chat["state"] == "failed" {
                return chat;
            }
            assert!(Instant::now() < deadline, "no answer in 90 s: {chat}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Follows the chat as server-sent events until the stream ends: (event, data) pairs.
    fn events(&self, id: &str) -> Vec<(String, Value)> {
        let reply = self.call(Method::GET, &format!("/chat/{id}/events"), None);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("content-type"), Some("text/event-stream"));
        reply
            .body
            .split("\n\n")
            .filter_map(|block| {
                let mut event = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(rest) = line.strip_prefix("event: ") {
                        event = Some(rest.to_string());
                    } else if let Some(rest) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(rest).ok();
                    }
                }
                Some((event?, data?))
            })
            .collect()
    }
}

/// Every source of an answer is a review of `store`, best first, and the counts match the ratings.
fn assert_grounded(chat: &Value, store: &str, stores: &Stores) {
    let own = &stores.ids[store];
    let sources = chat["sources"].as_array().cloned().unwrap_or_default();
    assert_eq!(sources.len(), own.len().min(5), "{chat}");
    let mut last = f64::INFINITY;
    for source in &sources {
        let id = source["review_id"].as_str().unwrap_or_default();
        assert!(own.contains(id), "{id} is not a review of {store}: {chat}");
        let score = source["score"].as_f64().unwrap_or(f64::NAN);
        assert!(score <= last, "sources are not nearest first: {chat}");
        last = score;
    }
    let (positive, negative) = stores.labels[store];
    assert_eq!(chat["sentiment"]["total"], own.len() as u64, "{chat}");
    assert_eq!(chat["sentiment"]["positive"], positive, "{chat}");
    assert_eq!(chat["sentiment"]["negative"], negative, "{chat}");
}

fn runtime_config(
    mongo: &MongoServer,
    redis: &RedisServer,
    runtime: &ModelRuntime,
    llm: &str,
    extra: &str,
) -> String {
    format!(
        "{}{}[embedding]\ntype = \"grpc\"\nendpoint = \"{}\"\ntimeout_ms = 60000\n\n[llm_compute]\ntype = \"remote_http\"\napi_type = \"open_ai\"\nurl = \"{llm}\"\nauth_token = {{ env = \"MOA_TEST_LLM_KEY\" }}\n{extra}",
        mongo.store_config("default", "chat"),
        redis.broker_config(),
        runtime.endpoint,
    )
}

fn options(config: &std::path::Path) -> Options {
    let mut options = Options::runtime_config(config);
    options
        .env
        .push(("MOA_TEST_LLM_KEY".into(), API_KEY.into()));
    options
}

#[test]
fn questions_are_answered_from_the_asked_stores_reviews_through_real_servers() {
    let issuer = Issuer::start();
    let app = AppDir::new(&manifest(&issuer));
    let mongo = MongoServer::start();
    let redis = RedisServer::start();
    let runtime = ModelRuntime::start(app.path().join("runtime.log"));
    let (emulator, llm_url) = start_emulator();
    let config = app.write(
        "runtime-config.toml",
        &runtime_config(
            &mongo,
            &redis,
            &runtime,
            &llm_url,
            "timeout_ms = 2500\nmax_attempts = 2\n",
        ),
    );
    let reviews = reviews(400);
    let stores = Stores::of(&reviews);
    import(&app, &reviews, Some(&config));

    let mut moa = Moa::start(&app, options(&config));
    assert!(
        moa.stdout
            .iter()
            .any(|l| l.contains("LLM inference: ") && l.contains("/chat/completions")),
        "{:?}",
        moa.stdout
    );
    let customer = Client {
        moa: &moa,
        token: issuer.token_for("customer-1", &["CUSTOMER"]),
    };

    // Refusals: no token, bad input, someone else's chat.
    let anonymous = request(
        Method::POST,
        &format!("{}/chat", moa.url),
        &[],
        Some(
            json!({"store_id": "tiny", "question": "?"})
                .to_string()
                .into_bytes(),
        ),
    );
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    for (body, code) in [
        (
            json!({"store_id": "tiny", "question": "  "}),
            "invalid_question",
        ),
        (
            json!({"store_id": "a/b", "question": "맛있나요?"}),
            "invalid_store_id",
        ),
        (
            json!({"store": "tiny", "question": "맛있나요?"}),
            "invalid_body",
        ),
    ] {
        let reply = customer.call(Method::POST, "/chat", Some(body));
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert!(reply.body.contains(code), "{}", reply.body);
    }

    // A big store, followed as server-sent events: state changes, then the answer.
    let big = stores.biggest();
    let id = customer.ask(&big, "이 가게 재미있나요? 추천할 만한가요?");
    let events = customer.events(&id);
    let (last_event, answer) = events.last().cloned().expect("events");
    assert_eq!(last_event, "answer", "{events:?}");
    assert_eq!(events[0].0, "state", "{events:?}");
    assert_eq!(answer["state"], "answered", "{answer}");
    assert_eq!(answer["mode"], "llm", "{answer}");
    assert_eq!(answer["model"], "gpt-4o-mini", "{answer}");
    assert_grounded(&answer, &big, &stores);
    // The prompt held exactly the retrieved reviews (one `- ` line each) and the store's counts;
    // the emulator's answer quotes those lines.
    let seen = emulator.seen();
    let prompt = &seen.last().expect("the LLM was called").prompt;
    let (positive, negative) = stores.labels[&big];
    assert!(
        prompt.contains(&format!("긍정 {positive}개, 부정 {negative}개")),
        "{prompt}"
    );
    assert_eq!(
        prompt.lines().filter(|l| l.starts_with("- ")).count(),
        5,
        "{prompt}"
    );
    assert!(prompt.contains("질문: 이 가게 재미있나요?"), "{prompt}");
    assert!(
        answer["answer"]
            .as_str()
            .unwrap_or("")
            .starts_with("[gpt-4o-mini] - ["),
        "{answer}"
    );
    assert_eq!(customer.get(&id)["answer"], answer["answer"]);

    // A store with two reviews among 400 gets both (the filter is inside the search).
    let tiny = customer.wait(&customer.ask("tiny", "배달 빠른가요?"));
    assert_eq!(tiny["mode"], "llm", "{tiny}");
    assert_grounded(&tiny, "tiny", &stores);
    assert_eq!(
        tiny["sources"][0]["review_id"], "tiny-1",
        "the delivery review is nearest: {tiny}"
    );
    // A store without reviews gets a clear answer, without an LLM call.
    let calls = emulator.seen().len();
    let none = customer.wait(&customer.ask("no-such-store", "맛있나요?"));
    assert_eq!(
        (none["state"].as_str(), none["mode"].as_str()),
        (Some("answered"), Some("no_reviews")),
        "{none}"
    );
    assert_eq!(emulator.seen().len(), calls);
    // Only the asker (or an admin) sees a chat.
    let other = Client {
        moa: &moa,
        token: issuer.token_for("customer-2", &["CUSTOMER"]),
    };
    assert_eq!(
        other.call(Method::GET, &format!("/chat/{id}"), None).status,
        404
    );
    let admin = Client {
        moa: &moa,
        token: issuer.token_for("admin-1", &["ADMIN"]),
    };
    assert_eq!(admin.get(&id)["state"], "answered");

    // The LLM down (503 on every call, retried by the host): an extractive answer that says why.
    emulator.set_faults(Faults {
        status: Some(503),
        count: None,
        delay_ms: 0,
    });
    let down = customer.wait(&customer.ask(&big, "직원이 친절한가요?"));
    assert_eq!(
        (down["state"].as_str(), down["mode"].as_str()),
        (Some("answered"), Some("extractive")),
        "{down}"
    );
    let error = down["llm_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("HTTP 503") && error.contains("2 attempts"),
        "{down}"
    );
    assert!(
        down["answer"]
            .as_str()
            .unwrap_or("")
            .contains("질문과 가장 관련 있는 리뷰:\n1. \""),
        "{down}"
    );
    assert_grounded(&down, &big, &stores);

    // The LLM too slow for `timeout_ms`: the same, with the timeout named.
    emulator.set_faults(Faults {
        status: None,
        count: None,
        delay_ms: 4000,
    });
    let slow = customer.wait(&customer.ask("tiny", "포장 상태는 어때요?"));
    assert_eq!(slow["mode"], "extractive", "{slow}");
    let error = slow["llm_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("timed out") || error.contains("no answer within"),
        "{slow}"
    );

    // A host killed while the LLM is answering: after a restart the question is answered.
    emulator.set_faults(Faults {
        status: None,
        count: None,
        delay_ms: 2000,
    });
    let calls = emulator.seen().len();
    let id = customer.ask("tiny", "다시 주문할 만한가요?");
    let deadline = Instant::now() + Duration::from_secs(60);
    while customer.get(&id)["state"] != "answering" {
        assert!(Instant::now() < deadline, "the question was not picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(customer);
    drop(other);
    drop(admin);
    drop(moa); // SIGKILL mid-question
    emulator.set_faults(Faults::default());
    moa = Moa::start(&app, options(&config));
    let customer = Client {
        moa: &moa,
        token: issuer.token_for("customer-1", &["CUSTOMER"]),
    };
    let after = customer.wait(&id);
    assert_eq!(
        (after["state"].as_str(), after["mode"].as_str()),
        (Some("answered"), Some("llm")),
        "{after}"
    );
    assert_grounded(&after, "tiny", &stores);
    assert!(
        emulator.seen().len() > calls,
        "the restarted host asked the LLM"
    );
    let metrics = common::blocking(Method::GET, &format!("{}/metrics", moa.admin_url), None).1;
    assert!(
        metrics.contains("moa_llm_inferences_total{model=\"gpt-4o-mini\",outcome=\"ok\"}"),
        "{metrics}"
    );
}

#[test]
fn without_servers_or_an_llm_the_answer_is_extractive() {
    let issuer = Issuer::start();
    let app = AppDir::new(&manifest(&issuer));
    let reviews = reviews(150);
    let stores = Stores::of(&reviews);
    let moa = Moa::start(&app, Options::default());
    assert!(
        !moa.stdout.iter().any(|l| l.contains("LLM inference")),
        "{:?}",
        moa.stdout
    );
    let customer = Client {
        moa: &moa,
        token: issuer.token_for("customer-1", &["CUSTOMER"]),
    };
    // Before any review is loaded: a clear answer, not an error.
    let early = customer.wait(&customer.ask("tiny", "배달 빠른가요?"));
    assert_eq!(early["mode"], "no_reviews", "{early}");
    // Reviews loaded by `moa job run` beside the running host (same state dir) are seen at once.
    import(&app, &reviews, None);
    let tiny = customer.wait(&customer.ask("tiny", "배달 빠른가요?"));
    assert_eq!(
        (tiny["state"].as_str(), tiny["mode"].as_str()),
        (Some("answered"), Some("extractive")),
        "{tiny}"
    );
    assert!(
        tiny.get("llm_error").is_none(),
        "no LLM is not an error: {tiny}"
    );
    assert_grounded(&tiny, "tiny", &stores);
    let text = tiny["answer"].as_str().unwrap_or_default();
    assert!(text.contains("리뷰 2개: 긍정 1개, 부정 1개"), "{text}");
    assert!(text.contains("1. \"배달이 빠르고"), "{text}");
}
