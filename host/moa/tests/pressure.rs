//! The host under pressure, against a real `moa up`: guests that spin on the CPU, a full instance
//! pool, the request cap, a trigger that dies at run time, and guests that write to stdout/stderr.

mod common;

use common::{AppDir, Moa, Options, RedisServer, metric, request, wait_until};
use reqwest::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// `spin` loops until its deadline; `front` is a well-behaved component; `relay` handles events
/// published by `front` and republishes them to `seen.orders` in the embedded log.
const BUSY_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "busy"
[[trigger.http]]
route = "/spin/..."
component = "spin"
[[trigger.http]]
route = "/..."
component = "front"
[[trigger.kafka]]
component = "relay"
topics = ["orders"]
group = "relay"
max_attempts = 1
concurrency = 4
[component.spin]
source = "{probe}"
[component.spin.moa]
request_timeout_ms = 20000
[component.front]
source = "{probe}"
allowed_publish_topics = ["orders"]
[component.relay]
source = "{relay}"
allowed_publish_topics = ["seen.*"]
environment = { RELAY_PREFIX = "seen." }
"#;

fn embedded_log(app: &AppDir) -> String {
    format!(
        "[messaging.brokers.log]\ntype = \"embedded\"\npath = \"{}\"\n",
        app.path().join("events.db").display()
    )
}

/// Distinct payloads on `topic` of the app's embedded log.
fn payloads(app: &AppDir, topic: &str) -> std::collections::BTreeSet<String> {
    let path = app.path().join("events.db");
    let mut out = std::collections::BTreeSet::new();
    if !path.exists() {
        return out;
    }
    let log = moa_eventlog::EventLog::open(&path).unwrap();
    let partitions = log.partitions(topic).unwrap().unwrap_or(0);
    for partition in 0..partitions {
        for record in log.fetch(topic, partition, 0, usize::MAX >> 1).unwrap() {
            out.insert(String::from_utf8_lossy(&record.payload).into_owned());
        }
    }
    out
}

fn wait_for_payloads(app: &AppDir, topic: &str, count: usize) -> usize {
    for _ in 0..300 {
        let seen = payloads(app, topic).len();
        if seen >= count {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    payloads(app, topic).len()
}

#[test]
fn guests_spinning_on_every_core_do_not_freeze_the_host() {
    let app = AppDir::new(BUSY_APP);
    let rc = app.write("runtime-config.toml", &embedded_log(&app));
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    // Twice as many CPU-bound guests as cores, each looping until its 20 s deadline.
    let finished = Arc::new(AtomicUsize::new(0));
    let spinners: Vec<_> = (0..cores * 2)
        .map(|_| {
            let url = format!("{}/spin/spin", moa.url);
            let finished = finished.clone();
            std::thread::spawn(move || {
                let status = request(Method::GET, &url, &[], None).status;
                finished.fetch_add(1, Ordering::SeqCst);
                status
            })
        })
        .collect();
    // Wait until every spinner is inside its guest.
    for _ in 0..200 {
        if metric(&moa, "moa_http_requests_in_flight", "") >= (cores * 2) as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&moa, "moa_http_requests_in_flight", ""),
        (cores * 2) as f64
    );

    // Meanwhile: requests to a well-behaved component, the admin endpoints, and events.
    for i in 0..20 {
        let reply = request(Method::GET, &format!("{}/echo/{i}", moa.url), &[], None);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let (status, _) = common::blocking(Method::GET, &format!("{}/readyz", moa.admin_url), None);
    assert_eq!(status, 200);
    let (status, body) = moa.send(
        Method::POST,
        "/publish-many/orders?n=20&keys=4&prefix=busy-",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(wait_for_payloads(&app, "seen.orders", 20), 20);

    // All of that happened while every spinner was still running.
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "a spinner ended before the other work was done: the test proves nothing"
    );
    for spinner in spinners {
        assert_eq!(spinner.join().unwrap(), 504);
    }
}

const SLEEPY_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "sleepy"
[[trigger.http]]
route = "/..."
component = "probe"
[component.probe]
source = "{probe}"
"#;

/// Starts `count` requests that each hold an instance for `ms`, and waits until they are in flight.
fn hold_instances(moa: &Moa, count: usize, ms: u64) -> Vec<std::thread::JoinHandle<u16>> {
    let holders: Vec<_> = (0..count)
        .map(|_| {
            let url = format!("{}/sleep/{ms}", moa.url);
            std::thread::spawn(move || request(Method::GET, &url, &[], None).status)
        })
        .collect();
    for _ in 0..200 {
        if metric(moa, "moa_http_requests_in_flight", "") >= count as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    holders
}

#[test]
fn a_full_instance_pool_answers_503_with_retry_after_and_json() {
    let app = AppDir::new(SLEEPY_APP);
    let rc = app.write("runtime-config.toml", "[engine]\nmax_instances = 2\n");
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let holders = hold_instances(&moa, 2, 4000);
    let reply = request(Method::GET, &format!("{}/echo", moa.url), &[], None);
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("max_instances"),
        "{json}"
    );
    assert!(metric(&moa, "moa_http_rejected_total", "reason=\"instances\"") >= 1.0);
    for holder in holders {
        assert_eq!(holder.join().unwrap(), 200);
    }
    // Slots come back: the host serves again.
    assert_eq!(moa.get("/echo").0, 200);
}

#[test]
fn requests_over_the_concurrency_cap_get_503_and_the_rest_are_served() {
    let app = AppDir::new(SLEEPY_APP);
    let rc = app.write(
        "runtime-config.toml",
        "[limits]\nmax_concurrent_requests = 2\n",
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let holders = hold_instances(&moa, 2, 4000);
    let reply = request(Method::GET, &format!("{}/echo", moa.url), &[], None);
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply.body.contains("max_concurrent_requests"),
        "{}",
        reply.body
    );
    assert!(metric(&moa, "moa_http_rejected_total", "reason=\"requests\"") >= 1.0);
    for holder in holders {
        assert_eq!(holder.join().unwrap(), 200);
    }
    assert_eq!(moa.get("/echo").0, 200);
}

#[test]
fn events_wait_for_a_free_instance_instead_of_dead_lettering() {
    let app = AppDir::new(BUSY_APP);
    // Room for the publishing request and one handler: four lanes compete for one slot.
    let rc = app.write(
        "runtime-config.toml",
        &format!("{}[engine]\nmax_instances = 2\n", embedded_log(&app)),
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let (status, body) = moa.send(
        Method::POST,
        "/publish-many/orders?n=24&keys=8&prefix=sleep:100/",
        None,
    );
    assert_eq!(status, 200, "{body}");
    // max_attempts = 1: a wait counted as an attempt would dead-letter at once.
    assert_eq!(wait_for_payloads(&app, "seen.orders", 24), 24);
    assert!(payloads(&app, "orders.dlq").is_empty());
    assert!(
        metric(
            &moa,
            "moa_event_instance_waits_total",
            "component=\"relay\""
        ) >= 1.0,
        "the pool never ran out, so this test proved nothing"
    );
}

#[test]
fn a_trigger_that_dies_at_run_time_makes_readyz_fail() {
    let redis = RedisServer::start();
    // The stream's key holds a string: creating the consumer group fails with WRONGTYPE.
    let mut connection = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("orders")
        .arg("not a stream")
        .query(&mut connection)
        .unwrap();
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "dead"
[[trigger.http]]
route = "/..."
component = "front"
[[trigger.redis-stream]]
component = "relay"
stream = "orders"
group = "relay"
[component.front]
source = "{probe}"
[component.relay]
source = "{relay}"
"#,
    );
    let rc = app.write("runtime-config.toml", &redis.broker_config());
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let readyz = format!("{}/readyz", moa.admin_url);
    let mut reply = request(Method::GET, &readyz, &[], None);
    for _ in 0..100 {
        if reply.status != 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        reply = request(Method::GET, &readyz, &[], None);
    }
    assert_eq!(reply.status, 503, "{}", reply.body);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let failed = &json["failed_triggers"][0];
    assert_eq!(failed["trigger"], "redis-stream:orders:relay", "{json}");
    assert!(
        failed["error"].as_str().unwrap().contains("WRONGTYPE"),
        "{json}"
    );
    assert_eq!(
        metric(
            &moa,
            "moa_trigger_failures_total",
            "redis-stream:orders:relay"
        ),
        1.0
    );
    // Liveness and the HTTP trigger are unaffected, and the failure was logged once.
    let (status, _) = common::blocking(Method::GET, &format!("{}/healthz", moa.admin_url), None);
    assert_eq!(status, 200);
    assert_eq!(moa.get("/echo").0, 200);
    wait_until("the failure is logged", || {
        moa.stderr().contains("trigger stopped working")
    });
    let logged = moa
        .stderr()
        .lines()
        .filter(|l| l.contains("trigger stopped working"))
        .count();
    assert_eq!(logged, 1, "{}", moa.stderr());
}

#[test]
fn guest_output_is_tagged_log_events_that_cannot_forge_host_lines() {
    let app = AppDir::new(SLEEPY_APP);
    let moa = Moa::start(&app, Options::default());
    let reply = request(
        Method::GET,
        &format!("{}/print/3", moa.url),
        &[("x-request-id", "print-req-1")],
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut guest_lines = Vec::new();
    for _ in 0..50 {
        guest_lines = moa
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["target"] == "moa::guest")
            .collect();
        if guest_lines.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(guest_lines.len(), 4, "{}", moa.stderr());
    for line in &guest_lines {
        assert_eq!(line["component"], "probe");
        assert_eq!(line["request_id"], "print-req-1");
    }
    assert!(
        guest_lines[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("probe line 0 of 3")
    );
    let forged = guest_lines
        .iter()
        .find(|l| l["stream"] == "stderr")
        .unwrap();
    assert!(
        forged["message"]
            .as_str()
            .unwrap()
            .contains("\"forged\":true")
    );
    // The forged JSON is a message inside a guest event, never a log line of its own.
    assert!(
        !moa.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["forged"] == true),
        "{}",
        moa.stderr()
    );
}

#[test]
fn guest_output_over_the_rate_limit_is_dropped_and_counted() {
    let app = AppDir::new(SLEEPY_APP);
    let rc = app.write(
        "runtime-config.toml",
        "[limits]\nguest_output_bytes_per_second = 1000\n",
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    // 500 lines of ~90 bytes against a burst of 4,000 bytes.
    assert_eq!(moa.get("/print/500").0, 200);
    // Lines reach stderr in order through one writer: once the drop report is there, so are the
    // lines logged before the budget ran out.
    wait_until("the drop is reported", || {
        moa.stderr().contains("guest output over its rate limit")
    });
    let logged = moa
        .stderr()
        .lines()
        .filter(|l| l.contains("\"target\":\"moa::guest\"") && l.contains("probe line"))
        .count();
    assert!(logged > 0 && logged < 100, "{logged} guest lines logged");
    assert!(
        metric(
            &moa,
            "moa_guest_output_dropped_bytes_total",
            "component=\"probe\""
        ) > 30_000.0
    );
}
