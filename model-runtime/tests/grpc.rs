//! The real `moa-model-runtime serve` process with the real model, over gRPC on an ephemeral
//! port: vectors, batching under concurrency, streaming, tokenization, the documented errors for
//! bad input, overload and deadlines, and health through loading and shutdown.

use moa_model_runtime::proto::embedding_client::EmbeddingClient;
use moa_model_runtime::proto::{EmbedRequest, InfoRequest, TextKind, TokenizeRequest};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A running runtime, killed when dropped.
struct Runtime {
    child: Child,
    address: String,
    admin: String,
}

impl Runtime {
    /// Starts the server with `extra` flags and returns once its ports are open (the model may
    /// still be loading).
    fn start(extra: &[&str]) -> Runtime {
        Self::start_with_env(extra, &[])
    }

    /// [`Runtime::start`] with more environment.
    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Runtime {
        let mut child = Command::new(env!("CARGO_BIN_EXE_moa-model-runtime"))
            .envs(env.iter().copied())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--shutdown-grace-ms",
                "1500",
                "--drain-timeout-ms",
                "3000",
                "--log-format",
                "text",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start moa-model-runtime");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut address, mut admin) = (None, None);
        while address.is_none() {
            let line = lines
                .next()
                .expect("moa-model-runtime exited before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("moa-model-runtime admin on ") {
                admin = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("moa-model-runtime listening on ") {
                address = Some(format!("http://{a}"));
            }
        }
        Runtime {
            child,
            address: address.unwrap(),
            admin: admin.expect("admin address printed before the gRPC one"),
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Starts the server and waits until health says SERVING.
    async fn ready(extra: &[&str]) -> (Runtime, EmbeddingClient<Channel>) {
        Self::ready_with_env(extra, &[]).await
    }

    /// [`Runtime::ready`] with more environment.
    async fn ready_with_env(
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (Runtime, EmbeddingClient<Channel>) {
        let runtime = Runtime::start_with_env(extra, env);
        let channel = runtime.channel().await;
        let mut health = HealthClient::new(channel.clone());
        for _ in 0..600 {
            let status = health
                .check(HealthCheckRequest {
                    service: "moa.embedding.v1.Embedding".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                return (runtime, EmbeddingClient::new(channel));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the runtime never became ready");
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(texts: &[&str]) -> EmbedRequest {
    EmbedRequest {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

async fn embed(client: &mut EmbeddingClient<Channel>, texts: &[&str]) -> Vec<Vec<f32>> {
    client
        .embed(request(texts))
        .await
        .unwrap()
        .into_inner()
        .embeddings
        .into_iter()
        .map(|v| v.values)
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Value of a Prometheus sample line `name value`.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{metrics}"))
}

/// Review-like Korean texts, each different.
fn reviews(n: usize) -> Vec<String> {
    let dishes = [
        "짜장면",
        "짬뽕",
        "치킨",
        "피자",
        "떡볶이",
        "김밥",
        "초밥",
        "국밥",
    ];
    let verdicts = [
        "정말 맛있어요",
        "너무 짜요",
        "배달이 늦었어요",
        "양이 많아요",
    ];
    (0..n)
        .map(|i| {
            format!(
                "{} {}번 주문했는데 {}",
                dishes[i % dishes.len()],
                i,
                verdicts[(i / dishes.len()) % verdicts.len()]
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_are_normalized_deterministic_and_korean_aware() {
    let (_runtime, mut client) = Runtime::ready(&[]).await;
    let info = client.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.model_name, "multilingual-e5-small");
    assert_eq!(info.dimension, 384);
    assert_eq!(info.pooling, "mean");
    assert_eq!(info.query_prefix, "query: ");

    let texts = [
        "배달이 정말 빨라서 좋았어요",
        "음식이 아주 빨리 배달됐어요",
        "주식 시장이 오늘 크게 떨어졌다",
    ];
    let first = embed(&mut client, &texts).await;
    let second = embed(&mut client, &texts).await;
    assert_eq!(first, second, "same input, same bits");
    for v in &first {
        assert_eq!(v.len(), 384);
        assert!((dot(v, v).sqrt() - 1.0).abs() < 1e-4);
    }
    assert!(
        dot(&first[0], &first[1]) > dot(&first[0], &first[2]) + 0.05,
        "paraphrase {} vs unrelated {}",
        dot(&first[0], &first[1]),
        dot(&first[0], &first[2])
    );

    // The explicit prompt equals the configured query prefix; passage and raw differ from it.
    let with = |kind: TextKind, prompt: Option<&str>| EmbedRequest {
        texts: vec![texts[0].into()],
        kind: kind as i32,
        prompt: prompt.map(String::from),
        ..Default::default()
    };
    let one = |r: tonic::Response<moa_model_runtime::proto::EmbedResponse>| {
        r.into_inner().embeddings.remove(0).values
    };
    let prompted = one(client
        .embed(with(TextKind::Raw, Some("query: ")))
        .await
        .unwrap());
    assert_eq!(prompted, first[0]);
    let passage = one(client.embed(with(TextKind::Passage, None)).await.unwrap());
    assert_ne!(passage, first[0]);
    assert!(dot(&passage, &first[0]) > 0.8);

    let raw = client
        .embed(EmbedRequest {
            normalize: Some(false),
            ..request(&texts[..1])
        })
        .await
        .unwrap()
        .into_inner();
    let raw = &raw.embeddings[0].values;
    assert!((dot(raw, raw).sqrt() - 1.0).abs() > 1e-2, "not normalised");
    let norm = dot(raw, raw).sqrt();
    for (r, n) in raw.iter().zip(&first[0]) {
        assert!((r / norm - n).abs() < 1e-5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_text_callers_are_batched_and_each_gets_its_own_vector() {
    let (runtime, mut client) = Runtime::ready(&["--max-wait-ms", "20"]).await;
    let texts = reviews(48);
    let mut alone = Vec::new();
    for text in &texts {
        alone.push(embed(&mut client, &[text]).await.remove(0));
    }
    let before = runtime.metrics().await;
    let batches_before = sample(&before, "moa_embed_batch_texts_count");

    let tasks: Vec<_> = texts
        .iter()
        .map(|text| {
            let mut client = client.clone();
            let text = text.clone();
            tokio::spawn(async move { embed(&mut client, &[&text]).await.remove(0) })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let together = task.await.unwrap();
        let similarity = dot(&together, &alone[i]);
        assert!(
            similarity > 0.9999,
            "text {i} got another vector in a batch (cosine {similarity})"
        );
        // Its neighbour's vector is clearly different, so the match above is not luck.
        assert!(dot(&together, &alone[(i + 1) % alone.len()]) < 0.999);
    }
    let after = runtime.metrics().await;
    let batches = sample(&after, "moa_embed_batch_texts_count") - batches_before;
    assert!(
        batches < 48.0,
        "48 concurrent callers ran in {batches} batches: not batched"
    );
    assert_eq!(sample(&after, "moa_embed_texts_total"), 96.0);
    assert_eq!(sample(&after, "moa_embed_queue_texts"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_answer_in_order_and_tokenize_shows_the_model_ids() {
    let (_runtime, mut client) = Runtime::ready(&[]).await;
    let texts = reviews(20);
    let requests: Vec<EmbedRequest> = texts.iter().map(|t| request(&[t])).collect();
    let mut responses = client
        .embed_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        streamed.push(response.embeddings[0].values.clone());
    }
    assert_eq!(streamed.len(), 20);
    for (i, text) in texts.iter().enumerate() {
        let unary = embed(&mut client, &[text]).await.remove(0);
        assert!(
            dot(&unary, &streamed[i]) > 0.9999,
            "stream answer {i} out of order"
        );
    }

    let tokens = client
        .tokenize(TokenizeRequest {
            texts: vec!["배달".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .remove(0)
        .ids;
    // XLM-R: <s> = 0 ... </s> = 2, with "query: " in between.
    assert_eq!(tokens.first(), Some(&0));
    assert_eq!(tokens.last(), Some(&2));
    let usage = client
        .embed(request(&["배달"]))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert_eq!(usage.prompt_tokens as usize, tokens.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_invalid_argument_with_the_reason() {
    let (runtime, mut client) = Runtime::ready(&["--max-client-batch-size", "8"]).await;
    let refused = |r: Result<_, tonic::Status>| r.map(|_: tonic::Response<_>| ()).unwrap_err();

    let status = refused(client.embed(request(&[])).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("no texts"),
        "{}",
        status.message()
    );

    let nine = reviews(9);
    let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
    let status = refused(client.embed(request(&nine)).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limit of 8"),
        "{}",
        status.message()
    );

    let long = "배달 음식 리뷰 ".repeat(400);
    let status = refused(client.embed(request(&[&long])).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("512"), "{}", status.message());
    let cut = client
        .embed(EmbedRequest {
            truncate: true,
            ..request(&[&long])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cut.usage.unwrap().prompt_tokens, 512);

    let status = refused(
        client
            .embed(EmbedRequest {
                model: "gpt-5".into(),
                ..request(&["x"])
            })
            .await,
    );
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("multilingual-e5-small"));

    let status = refused(
        client
            .embed(EmbedRequest {
                kind: 7,
                ..request(&["x"])
            })
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument);

    let metrics = runtime.metrics().await;
    // empty, too many, too long, bad kind; the wrong model is counted on its own.
    assert_eq!(
        sample(&metrics, "moa_embed_errors_total{reason=\"invalid_input\"}"),
        4.0
    );
    assert_eq!(
        sample(&metrics, "moa_embed_errors_total{reason=\"unknown_model\"}"),
        1.0
    );
}

/// A text of about 500 tokens: one batch of it takes tens of milliseconds.
fn long_request() -> EmbedRequest {
    EmbedRequest {
        truncate: true,
        ..request(&["배달 음식이 정말 맛있고 양도 많아요 ".repeat(60).as_str()])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted() {
    let flags = [
        "--max-batch-size",
        "1",
        "--queue-capacity",
        "4",
        "--threads",
        "1",
    ];
    let (runtime, client) = Runtime::ready(&flags).await;
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.embed(long_request()).await.map(|_| ()) })
        })
        .collect();
    let (mut ok, mut exhausted) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    status.message().contains("queue is full"),
                    "{}",
                    status.message()
                );
                exhausted += 1;
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    assert!(ok >= 4, "{ok} served");
    assert!(
        exhausted >= 1,
        "nobody was refused although 24 > capacity 4"
    );
    let metrics = runtime.metrics().await;
    assert_eq!(
        sample(&metrics, "moa_embed_errors_total{reason=\"overloaded\"}"),
        exhausted as f64
    );
    assert_eq!(sample(&metrics, "moa_embed_batch_texts_count"), ok as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_whose_deadline_passed_in_the_queue_is_never_run() {
    let flags = ["--max-batch-size", "1", "--threads", "1", "--no-spinning"];
    let (runtime, client) = Runtime::ready(&flags).await;
    let ahead: Vec<_> = (0..6)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.embed(long_request()).await.map(|_| ()) })
        })
        .collect();
    // Once several long texts wait, a call with a 30 ms deadline cannot be reached in time.
    for _ in 0..200 {
        if sample(&runtime.metrics().await, "moa_embed_queue_texts") >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut hurried = tonic::Request::new(long_request());
    hurried.set_timeout(Duration::from_millis(30));
    let status = client.clone().embed(hurried).await.unwrap_err();
    // The runtime answers DEADLINE_EXCEEDED a little early; on a busy machine the client's own
    // timer (tonic: CANCELLED "Timeout expired") can still fire first.
    assert!(
        status.code() == Code::DeadlineExceeded
            || (status.code() == Code::Cancelled && status.message().contains("Timeout")),
        "{status:?}"
    );
    for task in ahead {
        task.await.unwrap().unwrap();
    }
    // The expired text was dropped from the queue, not embedded.
    let metrics = runtime.metrics().await;
    assert_eq!(sample(&metrics, "moa_embed_batch_texts_count"), 6.0);
    assert_eq!(sample(&metrics, "moa_embed_texts_total"), 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_loading_serving_and_draining() {
    let mut runtime = Runtime::start(&[]);
    let channel = runtime.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut client = EmbeddingClient::new(channel);
    // While the model loads (seconds for 470 MB), health says NOT_SERVING and calls are UNAVAILABLE.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().status;
    assert_eq!(
        first,
        ServingStatus::NotServing as i32,
        "ready before loading?"
    );
    let early = client.embed(request(&["x"])).await.unwrap_err();
    assert_eq!(early.code(), Code::Unavailable);
    let ready = reqwest::get(format!("{}/readyz", runtime.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    let next = watch.message().await.unwrap().unwrap().status;
    assert_eq!(next, ServingStatus::Serving as i32);
    assert_eq!(embed(&mut client, &["x"]).await.len(), 1);
    let ready = reqwest::get(format!("{}/readyz", runtime.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // SIGTERM: NOT_SERVING first, calls still answered during the grace period, then a clean exit.
    let pid = runtime.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let draining = watch.message().await.unwrap().unwrap().status;
    assert_eq!(draining, ServingStatus::NotServing as i32);
    assert_eq!(embed(&mut client, &["still served"]).await.len(), 1);
    // Open streams would hold the drain up (until --drain-timeout-ms): close ours.
    drop((watch, health, client));
    let status = runtime.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_is_a_clear_startup_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_moa-model-runtime"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--model-dir",
            "/nonexistent/model",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    assert!(stderr.contains("fetch-model.sh"), "{stderr}");
}

/// With OTLP on, each embed call is a server span of the caller's trace (`traceparent` metadata),
/// exported to the receiver the test starts.
#[tokio::test(flavor = "multi_thread")]
async fn embed_calls_are_spans_of_the_callers_trace() {
    let receiver = moa_test_support::otlp::OtlpReceiver::start();
    let (_runtime, mut client) = Runtime::ready_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut call = tonic::Request::new(request(&["이 집 김밥 맛있어요", "배달이 늦었어요"]));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    client.embed(call).await.unwrap();
    // A call without a traceparent starts its own trace.
    client.embed(request(&["혼자"])).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.spans();
        if spans.len() >= 2 {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spans within 20 s: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ours = spans
        .iter()
        .find(|s| s.trace_id == trace)
        .unwrap_or_else(|| panic!("no span in the caller's trace: {spans:?}"));
    assert_eq!(ours.parent_span_id, parent);
    assert_eq!(ours.name, "moa.embedding.v1.Embedding/Embed");
    assert_eq!(ours.service, "moa-model-runtime");
    assert_eq!(ours.attributes.get("texts").map(String::as_str), Some("2"));
    let alone = spans
        .iter()
        .find(|s| s.trace_id != trace)
        .expect("the other call's span");
    assert!(alone.parent_span_id.is_empty(), "{alone:?}");
}

fn call(texts: &[&str]) -> moa_model_runtime::EmbedCall {
    moa_model_runtime::EmbedCall {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        model: String::new(),
        kind: moa_model_runtime::TextKind::Passage,
        prompt: None,
        normalize: None,
        truncate: true,
        deadline: None,
        traceparent: None,
    }
}

/// Texts a runtime has embedded so far.
async fn texts(runtime: &Runtime) -> f64 {
    sample(&runtime.metrics().await, "moa_embed_texts_total")
}

/// Waits (up to 10 s) until the client balances over exactly `addresses`.
async fn follows(
    client: &moa_model_runtime::RemoteRuntime,
    mut addresses: Vec<std::net::SocketAddr>,
) {
    addresses.sort();
    for _ in 0..200 {
        if client.addresses() == addresses {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the client balances over {:?}, not {addresses:?}",
        client.addresses()
    );
}

/// `dns:///` endpoints balance per call over whatever the name resolves to: a runtime added to
/// the set takes calls from the same client at once (no new connection from the caller needed),
/// one removed gets none, and while no address is known calls fail UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_client_spreads_calls_over_the_resolved_runtimes_and_follows_the_set() {
    use moa_model_runtime::{ClientSettings, RemoteRuntime, RuntimeError};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    let (first, _) = Runtime::ready(&[]).await;
    let (second, _) = Runtime::ready(&[]).await;
    let address = |runtime: &Runtime| -> SocketAddr {
        runtime
            .address
            .trim_start_matches("http://")
            .parse()
            .unwrap()
    };
    // What the "name" resolves to; the test changes it as a scale-out and a scale-in would.
    let resolved: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(Vec::new()));
    let source = resolved.clone();
    let resolver: moa_model_runtime::client::Resolver = Arc::new(move || {
        let addresses = source.lock().unwrap().clone();
        Box::pin(async move { Ok(addresses) })
    });
    let client = RemoteRuntime::balanced(
        "dns:///model-runtime:50051",
        resolver,
        Duration::from_millis(100),
        ClientSettings {
            max_attempts: 1,
            ..ClientSettings::default()
        },
    );
    follows(&client, Vec::new()).await;
    match client.embed(call(&["아무도 없나요"])).await {
        Err(RuntimeError::Unavailable(message)) => {
            assert!(message.contains("no address"), "{message}")
        }
        other => panic!("expected UNAVAILABLE with no address, got {other:?}"),
    }

    *resolved.lock().unwrap() = vec![address(&first)];
    follows(&client, vec![address(&first)]).await;
    let (a0, b0) = (texts(&first).await, texts(&second).await);
    for _ in 0..10 {
        client.embed(call(&["배달이 빨라요"])).await.unwrap();
    }
    assert_eq!(texts(&first).await - a0, 10.0);
    assert_eq!(texts(&second).await - b0, 0.0);

    // Scale-out: the second runtime joins and takes calls from the same client.
    *resolved.lock().unwrap() = vec![address(&first), address(&second)];
    follows(&client, vec![address(&first), address(&second)]).await;
    let (a1, b1) = (texts(&first).await, texts(&second).await);
    let calls = (0..64).map(|i| {
        let client = client.clone();
        async move {
            let text = format!("리뷰 {i}: 국물이 진하고 맛있어요");
            client
                .embed(call(&[text.as_str()]))
                .await
                .map(|e| e.vectors.len())
        }
    });
    let done = futures::future::join_all(calls).await;
    assert!(done.iter().all(|r| matches!(r, Ok(1))), "{done:?}");
    let (a, b) = (texts(&first).await - a1, texts(&second).await - b1);
    assert_eq!(a + b, 64.0);
    assert!(
        a >= 8.0 && b >= 8.0,
        "both runtimes took calls: {a} and {b}"
    );

    // Scale-in: the first runtime leaves the set, then goes away; every call still succeeds.
    *resolved.lock().unwrap() = vec![address(&second)];
    follows(&client, vec![address(&second)]).await;
    drop(first);
    let b2 = texts(&second).await;
    for _ in 0..10 {
        client.embed(call(&["포장이 깔끔해요"])).await.unwrap();
    }
    assert_eq!(texts(&second).await - b2, 10.0);
}

/// A `dns:///host:port` endpoint resolves through the system resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_endpoint_resolves_the_name_and_serves_calls() {
    use moa_model_runtime::{ClientSettings, RemoteRuntime};
    let (runtime, _) = Runtime::ready(&[]).await;
    let port = runtime.address.rsplit(':').next().unwrap().to_string();
    let client = RemoteRuntime::connect_lazy(
        &format!("dns:///localhost:{port}"),
        ClientSettings::default(),
    )
    .unwrap();
    let embedded = client.embed(call(&["맛있어요"])).await.unwrap();
    assert_eq!(embedded.vectors.len(), 1);
    assert_eq!(
        client.addresses(),
        vec![format!("127.0.0.1:{port}").parse().unwrap()]
    );
    let bad = RemoteRuntime::connect_lazy("dns:///no-port", ClientSettings::default());
    assert!(
        bad.err()
            .unwrap()
            .to_string()
            .contains("dns:///<host>:<port>"),
        "a clear error for a name without a port"
    );
}
