//! The messaging capability against a real `moa up`: a component publishes through
//! `moa:messaging/producer` into the embedded log, a real Kafka-protocol broker (tansu) and a real
//! Redis stream; topic grants are enforced.

mod common;

use common::{AppDir, KafkaServer, Moa, Options, RedisServer};
use reqwest::Method;

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "events"
[[trigger.http]]
route = "/orders/..."
component = "orders"
[[trigger.http]]
route = "/silent/..."
component = "silent"
[component.orders]
source = "{probe}"
allowed_publish_topics = ["orders", "chat.*"]
[component.silent]
source = "{probe}"
"#;

fn with_runtime_config(app: &AppDir, text: &str) -> Options {
    let rc = app.write("runtime-config.toml", text);
    Options::runtime_config(&rc)
}

fn publish(moa: &Moa, path: &str, body: &str) -> (u16, String) {
    moa.send(Method::POST, path, Some(body.as_bytes().to_vec()))
}

#[test]
fn with_no_broker_configured_messages_land_in_the_embedded_log() {
    let app = AppDir::new(APP);
    let moa = Moa::start(&app, Options::default());
    assert_eq!(
        publish(
            &moa,
            "/orders/publish/orders?key=order-1",
            r#"{"step":"created"}"#
        ),
        (200, "published\n".into())
    );
    assert_eq!(
        publish(
            &moa,
            "/orders/publish/orders?key=order-1",
            r#"{"step":"paid"}"#
        )
        .0,
        200
    );
    moa.stop();

    let log = moa_eventlog::EventLog::open(&app.path().join(".moa/events.db")).unwrap();
    let partitions = log.partitions("orders").unwrap().expect("topic created");
    let records: Vec<_> = (0..partitions)
        .flat_map(|p| log.fetch("orders", p, 0, 100).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].partition, records[1].partition,
        "same key, same partition"
    );
    assert_eq!(records[0].payload, br#"{"step":"created"}"#);
    assert_eq!(records[1].payload, br#"{"step":"paid"}"#);
    assert_eq!(records[0].key.as_deref(), Some(&b"order-1"[..]));
    assert!(
        records[0]
            .headers
            .contains(&("content-type".to_string(), b"application/json".to_vec()))
    );
}

#[test]
fn a_component_publishes_only_to_granted_topics() {
    let app = AppDir::new(APP);
    let moa = Moa::start(&app, Options::default());
    let (status, body) = publish(&moa, "/orders/publish/payments", "{}");
    assert_eq!(status, 403);
    assert!(
        body.contains("AccessDenied") && body.contains("allowed_publish_topics"),
        "{body}"
    );
    let (status, body) = publish(&moa, "/silent/publish/orders", "{}");
    assert_eq!(status, 403);
    assert!(body.contains("AccessDenied"), "{body}");
    // `chat.*` grants every topic under the prefix.
    assert_eq!(publish(&moa, "/orders/publish/chat.questions", "{}").0, 200);
    let (status, body) = publish(&moa, "/orders/publish/chat.bad%20name", "{}");
    assert_eq!(status, 403);
    assert!(body.contains("InvalidTopic"), "{body}");
}

#[test]
fn messages_reach_kafka_with_keys_headers_and_per_key_order() {
    let kafka = KafkaServer::start();
    kafka.create_topic("orders", 3);
    let app = AppDir::new(APP);
    let options = with_runtime_config(
        &app,
        &format!(
            "[messaging.brokers.main]\ntype = \"kafka\"\nbrokers = \"{}\"\n",
            kafka.bootstrap
        ),
    );
    let moa = Moa::start(&app, options);
    for step in ["created", "paid", "shipped"] {
        assert_eq!(
            publish(&moa, "/orders/publish/orders?key=order-7", step).0,
            200,
            "{step}"
        );
    }
    assert_eq!(
        publish(&moa, "/orders/publish/orders?key=order-8", "created").0,
        200
    );

    use rdkafka::message::{Headers as _, Message as _};
    let messages = kafka.consume("orders", "test-reader", 4);
    let order7: Vec<_> = messages
        .iter()
        .filter(|m| m.key() == Some(&b"order-7"[..]))
        .collect();
    assert_eq!(order7.len(), 3);
    assert!(
        order7
            .iter()
            .all(|m| m.partition() == order7[0].partition()),
        "one key, one partition"
    );
    let steps: Vec<_> = order7
        .iter()
        .map(|m| m.payload().unwrap().to_vec())
        .collect();
    assert_eq!(
        steps,
        [b"created".to_vec(), b"paid".to_vec(), b"shipped".to_vec()]
    );
    let header = order7[0].headers().unwrap().get(0);
    assert_eq!(
        (header.key, header.value),
        ("content-type", Some(&b"application/json"[..]))
    );
}

#[test]
fn routed_topics_become_redis_stream_entries() {
    let redis = RedisServer::start();
    let app = AppDir::new(APP);
    let options = with_runtime_config(
        &app,
        &format!(
            "[messaging]\ndefault_broker = \"local\"\n[messaging.brokers.local]\ntype = \"embedded\"\n[messaging.brokers.chat]\ntype = \"redis\"\nurl = \"{}\"\nmaxlen = 1000\n[[messaging.routes]]\ntopics = [\"chat.*\"]\nbroker = \"chat\"\n",
            redis.url
        ),
    );
    let moa = Moa::start(&app, options);
    assert_eq!(
        publish(
            &moa,
            "/orders/publish/chat.questions?key=store-3",
            "맛있나요?"
        )
        .0,
        200
    );
    assert_eq!(
        publish(&moa, "/orders/publish/orders", "to the embedded log").0,
        200
    );
    let output = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url, "XRANGE", "chat.questions", "-", "+"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("payload") && text.contains("맛있나요?"),
        "{text}"
    );
    assert!(text.contains("key") && text.contains("store-3"), "{text}");
    assert!(
        text.contains("h:content-type") && text.contains("application/json"),
        "{text}"
    );
    let orders = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url, "EXISTS", "orders"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&orders.stdout).trim(),
        "0",
        "unrouted topics stay off Redis"
    );
}

#[test]
fn broker_config_mistakes_are_load_errors() {
    let app = AppDir::new(APP);
    let options = with_runtime_config(
        &app,
        "[messaging.brokers.a]\ntype = \"embedded\"\n[messaging.brokers.b]\ntype = \"embedded\"\npath = \"b.db\"\n",
    );
    let err = Moa::try_start(&app, options)
        .err()
        .expect("ambiguous default");
    assert!(err.contains("default_broker"), "{err}");
    let options = with_runtime_config(&app, "[messaging.brokers.a]\ntype = \"rabbit\"\n");
    let err = Moa::try_start(&app, options).err().expect("unknown type");
    assert!(
        err.contains("[messaging]") && err.contains("rabbit"),
        "{err}"
    );
}

#[test]
fn published_messages_carry_the_request_trace_context() {
    let app = AppDir::new(APP);
    let moa = Moa::start(&app, Options::default());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let post_with_traceparent = |key: &str, value: &str| {
        let url = format!("{}/orders/publish/orders?key={key}", moa.url);
        common::blocking_with_headers(
            Method::POST,
            &url,
            &[("traceparent", value)],
            Some(b"{}".to_vec()),
        )
        .0
    };
    assert_eq!(post_with_traceparent("t-1", traceparent), 200);
    // A malformed traceparent is not passed on.
    assert_eq!(post_with_traceparent("t-2", "garbage"), 200);
    moa.stop();

    let log = moa_eventlog::EventLog::open(&app.path().join(".moa/events.db")).unwrap();
    let partitions = log.partitions("orders").unwrap().unwrap();
    let records: Vec<_> = (0..partitions)
        .flat_map(|p| log.fetch("orders", p, 0, 100).unwrap())
        .collect();
    let header = |key: &[u8]| {
        records
            .iter()
            .find(|r| r.key.as_deref() == Some(key))
            .unwrap()
            .headers
            .iter()
            .find(|(name, _)| name == "traceparent")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    };
    assert_eq!(header(b"t-1").as_deref(), Some(traceparent));
    assert_eq!(header(b"t-2"), None);
}
