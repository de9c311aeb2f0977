//! Embeddings for components through Spin's `fermyon:spin/llm@2.0.0` (the probe calls
//! `spin_sdk::llm::generate_embeddings` unmodified), against a real `moa up`: the in-process
//! runtime (no runtime config), a real `moa-model-runtime` over gRPC, grants, and a runtime that
//! is down.

mod common;

use common::{AppDir, Moa, ModelRuntime, Options, free_port};
use reqwest::Method;

const AI_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "ai"
[[trigger.http]]
route = "/ai/..."
component = "ai"
[[trigger.http]]
route = "/stranger/..."
component = "stranger"
[[trigger.http]]
route = "/mini/..."
component = "mini"
[component.ai]
source = "{probe}"
ai_models = ["multilingual-e5-small"]
[component.stranger]
source = "{probe}"
[component.mini]
source = "{probe}"
ai_models = ["all-minilm-l6-v2"]
"#;

const TEXTS: &str =
    "배달이 정말 빨라서 좋았어요\n음식이 아주 빨리 배달됐어요\n주식 시장이 오늘 크게 떨어졌다";

/// `count=… dimension=… prompt_tokens=…` and the vectors the probe printed.
fn parse(body: &str) -> (String, Vec<Vec<f32>>) {
    let mut lines = body.lines();
    let summary = lines.next().unwrap_or_default().to_string();
    let vectors = lines
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    (summary, vectors)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What every backend must do for components; returns the vectors of [`TEXTS`].
fn embeddings_behaviour(moa: &Moa) -> Vec<Vec<f32>> {
    let (status, body) = moa.send(
        Method::POST,
        "/ai/embed/multilingual-e5-small",
        Some(TEXTS.into()),
    );
    assert_eq!(status, 200, "{body}");
    let (summary, vectors) = parse(&body);
    assert!(
        summary.starts_with("count=3 dimension=384 prompt_tokens="),
        "{summary}"
    );
    for v in &vectors {
        assert!((dot(v, v).sqrt() - 1.0).abs() < 1e-4);
    }
    assert!(dot(&vectors[0], &vectors[1]) > dot(&vectors[0], &vectors[2]) + 0.05);

    // `:passage` selects the document prefix: a different, still close, vector.
    let (status, body) = moa.send(
        Method::POST,
        "/ai/embed/multilingual-e5-small:passage",
        Some(TEXTS.lines().next().unwrap().into()),
    );
    assert_eq!(status, 200, "{body}");
    let passage = parse(&body).1.remove(0);
    assert_ne!(passage, vectors[0]);
    assert!(dot(&passage, &vectors[0]) > 0.8);

    // Grants: a component without ai_models, or asking for a model it was not granted.
    let (status, body) = moa.send(
        Method::POST,
        "/stranger/embed/multilingual-e5-small",
        Some("x".into()),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ai_models"), "{body}");
    let (status, body) = moa.send(Method::POST, "/ai/embed/all-minilm-l6-v2", Some("x".into()));
    assert_eq!(status, 400, "{body}");
    // Granted, but not what the runtime serves.
    let (status, body) = moa.send(
        Method::POST,
        "/mini/embed/all-minilm-l6-v2",
        Some("x".into()),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ModelNotSupported"), "{body}");
    vectors
}

#[test]
fn components_get_embeddings_from_the_in_process_runtime() {
    let app = AppDir::new(AI_APP);
    let moa = Moa::start(&app, Options::default());
    assert!(
        moa.stdout
            .iter()
            .any(|l| l.contains("Embeddings: in-process multilingual-e5-small")),
        "{:?}",
        moa.stdout
    );
    embeddings_behaviour(&moa);
    let metrics = common::blocking(Method::GET, &format!("{}/metrics", moa.admin_url), None).1;
    assert!(metrics.contains("moa_embed_texts_total 4"), "{metrics}");
}

fn grpc_options(app: &AppDir, endpoint: &str, extra: &str) -> Options {
    let rc = app.write(
        "runtime-config.toml",
        &format!("[embedding]\ntype = \"grpc\"\nendpoint = \"{endpoint}\"\n{extra}"),
    );
    Options::runtime_config(&rc)
}

#[test]
fn components_get_the_same_embeddings_from_a_remote_runtime_over_grpc() {
    let app = AppDir::new(AI_APP);
    let runtime = ModelRuntime::start(app.path().join("runtime.log"));
    let moa = Moa::start(
        &app,
        grpc_options(&app, &runtime.endpoint, "timeout_ms = 60000\n"),
    );
    assert!(
        moa.stdout
            .iter()
            .any(|l| l.contains(&format!("Embeddings: gRPC {}", runtime.endpoint))),
        "{:?}",
        moa.stdout
    );
    let remote = embeddings_behaviour(&moa);

    // The caller's trace context reaches the runtime (its JSON log line carries it).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (status, _) = common::blocking_with_headers(
        Method::POST,
        &format!("{}/ai/embed/multilingual-e5-small", moa.url),
        &[("traceparent", &traceparent)],
        Some("trace me".into()),
    );
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(&runtime.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(trace_id) && l.contains("embedded")),
        "{log}"
    );
    drop(moa);

    // In-process and remote serve the same model: the same vectors.
    let local = Moa::start(&app, Options::default());
    let (_, body) = local.send(
        Method::POST,
        "/ai/embed/multilingual-e5-small",
        Some(TEXTS.into()),
    );
    for (a, b) in parse(&body).1.iter().zip(&remote) {
        assert!(dot(a, b) > 0.99999, "in-process and remote differ");
    }
}

#[test]
fn a_runtime_that_is_down_is_a_runtime_error_not_a_crash() {
    let app = AppDir::new(AI_APP);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let moa = Moa::start(
        &app,
        grpc_options(&app, &dead, "timeout_ms = 1500\nconnect_timeout_ms = 200\n"),
    );
    let (status, body) = moa.send(
        Method::POST,
        "/ai/embed/multilingual-e5-small",
        Some("x".into()),
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("RuntimeError"), "{body}");
    // The host is fine and other routes still work.
    let (status, _) = moa.get("/stranger/env/HOME");
    assert_ne!(status, 500);
}

#[test]
fn a_bad_embedding_section_is_a_load_error_naming_the_key() {
    let app = AppDir::new(AI_APP);
    let rc = app.write(
        "runtime-config.toml",
        "[embedding]\ntype = \"grpc\"\nendpoint = \"http://x:1\"\ntimeout = 5\n",
    );
    let err = Moa::try_start(&app, Options::runtime_config(&rc))
        .err()
        .expect("an unknown key must fail the load");
    assert!(
        err.contains("[embedding]") && err.contains("timeout"),
        "{err}"
    );
}
