//! The HTTP trigger against a real `moa up`: routing, both wasi:http worlds, Spin headers,
//! and how traps, deadlines, memory and body limits reach the client while the host keeps serving.

mod common;

use common::{AppDir, Moa, Options};
use reqwest::Method;

const ROUTES: &str = r#"
spin_manifest_version = 2
[application]
name = "routes"

[[trigger.http]]
route = "/..."
component = "fallback"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = "/probe/exact"
component = "exact"
[[trigger.http]]
route = "/users/:id"
component = "user"
[[trigger.http]]
route = "/p2/..."
component = "hello-p2"
[[trigger.http]]
route = "/hello"
component = "hello"
[[trigger.http]]
route = { private = true }
component = "hidden"

[component.fallback]
source = "{probe}"
[component.probe]
source = "{probe}"
[component.exact]
source = "{probe}"
[component.user]
source = "{probe}"
[component.hello-p2]
source = "{hello-p2}"
[component.hello]
source = "{hello}"
[component.hidden]
source = "{probe}"
"#;

fn header<'a>(dump: &'a str, name: &str) -> Option<&'a str> {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn most_specific_route_wins_and_spin_headers_describe_the_match() {
    let app = AppDir::new(ROUTES);
    let moa = Moa::start(&app, Options::default());

    let (status, dump) = moa.get("/probe/headers");
    assert_eq!(status, 200, "{dump}");
    assert_eq!(header(&dump, "spin-matched-route"), Some("/probe/..."));
    assert_eq!(header(&dump, "spin-component-route"), Some("/probe"));
    assert_eq!(
        header(&dump, "spin-raw-component-route"),
        Some("/probe/...")
    );
    assert_eq!(header(&dump, "spin-path-info"), Some("/headers"));
    assert_eq!(header(&dump, "spin-base-path"), Some("/"));
    assert!(
        header(&dump, "spin-full-url")
            .unwrap()
            .ends_with("/probe/headers"),
        "{dump}"
    );
    assert!(
        header(&dump, "spin-client-addr")
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{dump}"
    );

    // The exact route beats the wildcard it sits under.
    let (_, dump) = moa.get("/probe/exact");
    assert_eq!(
        header(&dump, "spin-matched-route"),
        Some("/probe/exact"),
        "{dump}"
    );
    // `:id` segments are matched and reported.
    let (_, dump) = moa.get("/users/42");
    assert_eq!(header(&dump, "spin-path-match-id"), Some("42"), "{dump}");
    // Headers a client sends under the `spin-` prefix do not reach the component.
    let url = format!("{}/users/7", moa.url);
    let (_, dump) = common::blocking_with_headers(
        Method::GET,
        &url,
        &[
            ("spin-path-match-admin", "true"),
            ("spin-client-addr", "10.0.0.1:1"),
        ],
        None,
    );
    assert_eq!(header(&dump, "spin-path-match-admin"), None, "{dump}");
    assert!(
        header(&dump, "spin-client-addr")
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{dump}"
    );
    // Anything else falls through to `/...`.
    let (_, dump) = moa.get("/elsewhere/x");
    assert_eq!(header(&dump, "spin-matched-route"), Some("/..."), "{dump}");
}

#[test]
fn unmatched_path_is_404_json_when_there_is_no_catch_all() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "small"
[[trigger.http]]
route = "/only"
component = "probe"
[component.probe]
source = "{probe}"
"#,
    );
    let moa = Moa::start(&app, Options::default());
    let (status, body) = moa.get("/only/not");
    assert_eq!(status, 404);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("/only/not"),
        "{body}"
    );
    assert!(!json["request_id"].as_str().unwrap().is_empty());
}

#[test]
fn wasip3_spin_sdk_and_wasip2_wit_bindgen_components_are_both_served() {
    let app = AppDir::new(ROUTES);
    let moa = Moa::start(&app, Options::default());
    assert!(
        moa.stdout
            .iter()
            .any(|l| l.contains("`hello` (wasi:http@0.3")),
        "{:?}",
        moa.stdout
    );
    assert!(
        moa.stdout
            .iter()
            .any(|l| l.contains("`hello-p2` (wasi:http@0.2")),
        "{:?}",
        moa.stdout
    );

    let (status, body) = moa.get("/hello");
    assert_eq!(status, 200);
    assert!(
        body.contains("spin-sdk 7, wasi:http@0.3") && body.contains("/hello"),
        "{body}"
    );

    let (status, body) = moa.get("/p2/some/path?q=1");
    assert_eq!(status, 200);
    assert!(
        body.contains("wasi:http@0.2") && body.contains("/p2/some/path?q=1"),
        "{body}"
    );
    assert!(body.contains("matched route: /p2/..."), "{body}");
}

#[test]
fn private_component_is_unreachable_from_outside_but_callable_in_app() {
    let app = AppDir::new(&format!(
        r#"{ROUTES}
[[trigger.http]]
route = "/caller/..."
component = "caller"
[component.caller]
source = "{{probe}}"
allowed_outbound_hosts = ["http://hidden.spin.internal", "http://self"]
"#
    ));
    let moa = Moa::start(&app, Options::default());
    // No public route reaches `hidden`: the catch-all answers instead.
    let (_, dump) = moa.get("/hidden/headers");
    assert_eq!(header(&dump, "spin-matched-route"), Some("/..."), "{dump}");
    // Another component reaches it through local service chaining...
    let (status, body) = moa.get("/caller/fetch?url=http://hidden.spin.internal/var-check");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("status 200") && body.contains("probe: nothing to do for \"/var-check\""),
        "{body}"
    );
    // ... and the app's own public routes through http://self.
    let (status, body) = moa.get("/caller/fetch?url=http://self/hello");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from moa"), "{body}");
    // An outside client cannot pose as an in-app caller.
    let url = format!("{}/probe/headers", moa.url);
    let (status, _) =
        common::blocking_with_headers(Method::GET, &url, &[("host", "hidden.spin.internal")], None);
    assert_eq!(status, 400);
    // A component without the grant is refused.
    let (status, body) = moa.get("/probe/fetch?url=http://hidden.spin.internal/x");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

const LIMITS: &str = r#"
spin_manifest_version = 2
[application]
name = "limits"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = "/quick/..."
component = "quick"
[component.probe]
source = "{probe}"
[component.quick]
source = "{probe}"
[component.quick.moa]
request_timeout_ms = 500
memory_limit_mb = 32
"#;

#[test]
fn a_trap_is_a_500_json_with_request_id_and_the_host_keeps_serving() {
    let app = AppDir::new(LIMITS);
    let moa = Moa::start(&app, Options::default());
    let (status, body) = moa.get("/probe/trap");
    assert_eq!(status, 500, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["component"], "probe");
    let request_id = json["request_id"].as_str().unwrap().to_string();
    assert!(!request_id.is_empty());
    // The same request id is in the host's log with the trap.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        moa.stderr()
            .lines()
            .any(|l| l.contains(&request_id) && l.contains("trap")),
        "{}",
        moa.stderr()
    );
    // Other requests are still served, by the same component too.
    for _ in 0..3 {
        assert_eq!(moa.get("/probe/echo").0, 200);
    }
}

#[test]
fn a_cpu_loop_and_a_long_sleep_are_cut_off_at_the_deadline_with_504() {
    let app = AppDir::new(LIMITS);
    let moa = Moa::start(&app, Options::default());
    let started = std::time::Instant::now();
    let (status, body) = moa.get("/quick/spin");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("500 ms"), "{body}");
    let (status, body) = moa.get("/quick/sleep/20000");
    assert_eq!(status, 504, "{body}");
    // Both came back long before the 20 s sleep would have ended (not a hang).
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert_eq!(moa.get("/quick/sleep/10").0, 200);
    assert_eq!(moa.get("/probe/echo").0, 200);
}

#[test]
fn memory_over_the_component_limit_fails_that_request_only() {
    let app = AppDir::new(LIMITS);
    let moa = Moa::start(&app, Options::default());
    assert_eq!(moa.get("/quick/alloc/4").0, 200);
    let (status, body) = moa.get("/quick/alloc/64");
    assert_eq!(status, 500, "{body}");
    // The default limit (128 MiB) of the other component allows it.
    assert_eq!(moa.get("/probe/alloc/64").0, 200);
}

#[test]
fn a_body_over_the_limit_is_413_declared_or_streamed() {
    let app = AppDir::new(LIMITS);
    let rc = app.write(
        "runtime-config.toml",
        "[limits]\nmax_request_body_bytes = 1024\n",
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let (status, body) = moa.send(Method::POST, "/probe/echo", Some(vec![b'x'; 1000]));
    assert_eq!((status, body.as_str()), (200, "1000 bytes\n"));
    let (status, body) = moa.send(Method::POST, "/probe/echo", Some(vec![b'x'; 5000]));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_request_body_bytes"), "{body}");

    // A chunked body (no content-length) is cut at the limit too.
    let url = format!("{}/probe/echo", moa.url);
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                (0..10).map(|_| Ok(vec![b'y'; 1000])).collect();
            let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
            reqwest::Client::new()
                .post(&url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    assert_eq!(status, 413);
}

#[test]
fn metrics_count_requests_traps_and_deadlines() {
    let app = AppDir::new(LIMITS);
    let moa = Moa::start(&app, Options::default());
    moa.get("/probe/echo");
    moa.get("/probe/trap");
    moa.get("/quick/spin");
    let (status, text) = common::blocking(Method::GET, &format!("{}/metrics", moa.admin_url), None);
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"moa_http_requests_total{component="probe",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"moa_traps_total{component="probe"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"moa_deadline_exceeded_total{component="quick"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("moa_instantiation_duration_seconds_bucket"),
        "{text}"
    );
    // One JSON log line per request, with the fields operators query on.
    let line = moa
        .stderr()
        .lines()
        .find(|l| l.contains("\"path\":\"/probe/echo\""))
        .map(str::to_string)
        .expect("request log line");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["status"], 200);
    assert_eq!(json["component"], "probe");
    assert_eq!(json["route"], "/probe/...");
    assert!(
        json["duration_ms"].as_f64().is_some() && json["request_id"].as_str().is_some(),
        "{line}"
    );
    assert!(
        json.get("trace_id").is_none(),
        "no trace, no trace id: {line}"
    );
    // With the caller's traceparent (and no export of our own), the line carries its ids, so a
    // Loki line leads to the trace.
    let (status, _) = common::blocking_with_headers(
        Method::GET,
        &format!("{}/probe/traced", moa.url),
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
        None,
    );
    assert_eq!(status, 200);
    common::wait_until("the traced request is logged", || {
        moa.stderr().contains("\"path\":\"/probe/traced\"")
    });
    let line = moa
        .stderr()
        .lines()
        .find(|l| l.contains("\"path\":\"/probe/traced\""))
        .map(str::to_string)
        .expect("request log line");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(json["span_id"], "00f067aa0ba902b7", "{line}");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let app = AppDir::new(LIMITS);
    let moa = Moa::start(&app, Options::default());
    let url = format!("{}/probe/sleep/1500", moa.url);
    let pending = std::thread::spawn(move || common::blocking(Method::GET, &url, None));
    std::thread::sleep(std::time::Duration::from_millis(400));
    moa.stop();
    // Had moa exited without draining, the connection would have been reset.
    assert_eq!(pending.join().unwrap(), (200, "slept\n".to_string()));
}

#[test]
fn requests_are_exported_as_otlp_traces_when_an_endpoint_is_set() {
    let collector = common::Upstream::start();
    let app = AppDir::new(LIMITS);
    let moa = Moa::start(
        &app,
        Options {
            env: vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.url.clone()),
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ],
            ..Default::default()
        },
    );
    assert_eq!(moa.get("/probe/echo").0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if collector
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == "POST /v1/traces")
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "no OTLP export arrived: {:?}",
        collector.requests.lock().unwrap()
    );
}

#[test]
fn nested_in_app_calls_stop_at_the_depth_limit_with_508() {
    let app = AppDir::new(&format!(
        r#"{ROUTES}
[[trigger.http]]
route = "/loop/..."
component = "looper"
[component.looper]
source = "{{probe}}"
allowed_outbound_hosts = ["http://self"]
"#
    ));
    let moa = Moa::start(&app, Options::default());
    let nested = |levels: usize| {
        let mut path = "/loop/echo".to_string();
        for _ in 0..levels {
            path = format!("/loop/fetch?url=http://self{path}");
        }
        moa.get(&path)
    };
    let (status, body) = nested(5);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("0 bytes") && !body.contains("508"), "{body}");
    let (status, body) = nested(12);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("status 508") && body.contains("nested deeper than 10"),
        "{body}"
    );
}

/// GETs `url` over HTTP/1.1 or HTTP/2 (prior knowledge): the status, and the body or why reading
/// it failed.
fn read_streamed(url: &str, http2: bool) -> (u16, Result<String, String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = if http2 {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        } else {
            reqwest::Client::new()
        };
        let response = client.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.map_err(|e| format!("{e:?}")))
    })
}

#[test]
fn a_trap_after_the_response_started_cuts_it_off_visibly_and_is_logged() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "streams"
[[trigger.http]]
route = "/s/..."
component = "streamer"
[component.streamer]
source = "{streamprobe}"
"#,
    );
    let moa = Moa::start(&app, Options::default());
    let whole: String = (0..5).map(|i| format!("line {i}\n")).collect();
    // A stream that ends well ends well, on both protocols, and nothing is logged.
    for http2 in [false, true] {
        let (status, body) = read_streamed(&format!("{}/s/5", moa.url), http2);
        assert_eq!((status, body), (200, Ok(whole.clone())), "http2: {http2}");
    }
    assert!(!moa.stderr().contains("cut off"), "{}", moa.stderr());
    // A trap after five lines: the client cannot mistake the body for a whole one.
    for http2 in [false, true] {
        let (status, body) = read_streamed(&format!("{}/s/5/trap", moa.url), http2);
        assert_eq!(status, 200, "the status line was already sent");
        let error = body.expect_err("the body must end in an error");
        assert!(
            error.contains("Body") || error.contains("body"),
            "http2 {http2}: {error}"
        );
    }
    // (The log reader may be a moment behind the client.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while moa.stderr().matches("the response was cut off").count() < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stderr = moa.stderr();
    let cut: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the response was cut off"))
        .collect();
    assert_eq!(cut.len(), 2, "{stderr}");
    assert!(
        cut.iter().all(|l| l.contains(r#""level":"ERROR""#)
            && l.contains(r#""component":"streamer""#)
            && l.contains("request_id")),
        "{cut:?}"
    );
    assert_eq!(
        common::metric(&moa, "moa_traps_total", r#"component="streamer""#),
        2.0
    );
    // The host serves on.
    let (status, body) = read_streamed(&format!("{}/s/2", moa.url), false);
    assert_eq!((status, body), (200, Ok("line 0\nline 1\n".to_string())));
}
