//! Event triggers against a real `moa up`, one behaviour suite shared by every backend: the
//! embedded log, a real Kafka-protocol broker (tansu) and a real Redis. A probe component publishes
//! over HTTP; the relay component handles deliveries and republishes them to `seen.<topic>`, which
//! the tests read back from the same backend.

mod common;

use common::{AppDir, KafkaServer, Moa, Options, RedisServer};
use reqwest::Method;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A message read back from a backend.
#[derive(Debug, Clone)]
struct Seen {
    key: Option<String>,
    payload: String,
    headers: BTreeMap<String, String>,
}

enum Backend {
    Embedded,
    Kafka(KafkaServer),
    Redis(RedisServer),
}

impl Backend {
    fn trigger_kind(&self) -> &'static str {
        match self {
            Backend::Redis(_) => "redis-stream",
            _ => "kafka",
        }
    }

    fn runtime_config(&self, app: &AppDir) -> String {
        match self {
            Backend::Embedded => format!(
                "[messaging.brokers.log]\ntype = \"embedded\"\npath = \"{}\"\n",
                app.path().join("events.db").display()
            ),
            // A short session so that a killed host's partitions move on within seconds.
            Backend::Kafka(kafka) => format!(
                "[messaging.brokers.main]\ntype = \"kafka\"\nbrokers = \"{}\"\nproperties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\", \"statistics.interval.ms\" = \"250\" }}\n",
                kafka.bootstrap
            ),
            Backend::Redis(redis) => redis.broker_config(),
        }
    }

    /// Creates the topics a test uses (Kafka needs them up front to have several partitions).
    fn create_topics(&self, topic: &str) {
        if let Backend::Kafka(kafka) = self {
            kafka.create_topic(topic, 4);
            kafka.create_topic(&format!("seen.{topic}"), 4);
            kafka.create_topic(&format!("{topic}.dlq"), 1);
        }
    }

    /// Everything on `topic`, once at least `at_least` distinct payloads are there (redeliveries
    /// may add repeats), or after `wait`.
    fn read(&self, app: &AppDir, topic: &str, at_least: usize, wait: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.read_now(app, topic);
            let distinct: BTreeSet<&str> = seen.iter().map(|s| s.payload.as_str()).collect();
            if distinct.len() >= at_least || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Messages of `orders` the `relay` group has not committed / acknowledged yet, of the
    /// `published` the test sent.
    fn uncommitted(&self, app: &AppDir, published: u64) -> u64 {
        match self {
            Backend::Embedded => {
                let log = moa_eventlog::EventLog::open(&app.path().join("events.db")).unwrap();
                let partitions = log.partitions("orders").unwrap().unwrap_or(0);
                (0..partitions)
                    .map(|p| {
                        log.end_offset("orders", p).unwrap()
                            - log.committed("relay", "orders", p).unwrap()
                    })
                    .sum()
            }
            // tansu under-reports high watermarks (42 for a partition holding 50 records), so
            // the committed offsets are checked against what the test published instead.
            Backend::Kafka(kafka) => {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                use rdkafka::{Offset, TopicPartitionList};
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &kafka.bootstrap)
                    .set("group.id", "relay")
                    .create()
                    .unwrap();
                let mut list = TopicPartitionList::new();
                for p in 0..4 {
                    list.add_partition("orders", p);
                }
                let committed: u64 = consumer
                    .committed_offsets(list, Duration::from_secs(10))
                    .unwrap()
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(n) => n as u64,
                        _ => 0,
                    })
                    .sum();
                assert!(
                    committed <= published,
                    "committed past the end: {committed}"
                );
                published - committed
            }
            Backend::Redis(redis) => {
                let mut connection = redis::Client::open(redis.url.as_str())
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let summary: (u64, redis::Value, redis::Value, redis::Value) =
                    redis::cmd("XPENDING")
                        .arg("orders")
                        .arg("relay")
                        .query(&mut connection)
                        .unwrap();
                summary.0
            }
        }
    }

    /// Waits (up to 30 s: Kafka commits stored offsets every second) until everything is committed.
    fn assert_all_committed(&self, app: &AppDir, published: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = self.uncommitted(app, published);
            if left == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{left} handled messages were never committed / acknowledged"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn read_now(&self, app: &AppDir, topic: &str) -> Vec<Seen> {
        match self {
            Backend::Embedded => {
                let path = app.path().join("events.db");
                if !path.exists() {
                    return Vec::new();
                }
                let log = moa_eventlog::EventLog::open(&path).unwrap();
                let Some(partitions) = log.partitions(topic).unwrap() else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                for partition in 0..partitions {
                    for record in log.fetch(topic, partition, 0, usize::MAX >> 1).unwrap() {
                        out.push(Seen {
                            key: record.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                            payload: String::from_utf8_lossy(&record.payload).into_owned(),
                            headers: record
                                .headers
                                .into_iter()
                                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                                .collect(),
                        });
                    }
                }
                out
            }
            Backend::Kafka(kafka) => read_kafka(&kafka.bootstrap, topic),
            Backend::Redis(redis) => read_redis(&redis.url, topic),
        }
    }
}

/// Reads a whole Kafka topic without a consumer group (assign every partition from the start).
fn read_kafka(bootstrap: &str, topic: &str) -> Vec<Seen> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers as _, Message as _};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "moa-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return Vec::new();
    };
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .unwrap_or((0, 0));
            list.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
            ends.insert(p.id(), high);
        }
    }
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&list).unwrap();
    // tansu can report a high watermark below the records it holds (42 for 50) until the next
    // produce, so the watermarks are a floor: read 500 ms past them for what they left out.
    let total: i64 = ends.values().sum();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut past_watermarks: Option<Instant> = None;
    while Instant::now() < deadline
        && past_watermarks.is_none_or(|t| t.elapsed() < Duration::from_millis(500))
    {
        if past_watermarks.is_none() && out.len() as i64 >= total {
            past_watermarks = Some(Instant::now());
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        out.push(Seen {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}

/// Reads a whole Redis stream with XRANGE.
fn read_redis(url: &str, stream: &str) -> Vec<Seen> {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_connection().unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let mut seen = Seen {
                key: None,
                payload: String::new(),
                headers: BTreeMap::new(),
            };
            for (field, value) in entry.map {
                let text: String = redis::from_redis_value(value).unwrap_or_default();
                match field.as_str() {
                    "payload" => seen.payload = text,
                    "key" => seen.key = Some(text),
                    _ => {
                        if let Some(name) = field.strip_prefix("h:") {
                            seen.headers.insert(name.to_string(), text);
                        }
                    }
                }
            }
            seen
        })
        .collect()
}

/// The app: `front` (probe, HTTP) publishes to `orders`; `relay` handles `orders` and
/// republishes to `seen.orders`.
fn app(backend: &Backend, extra_trigger_fields: &str) -> (AppDir, Options) {
    let kind = backend.trigger_kind();
    let (source, attempts) = match kind {
        "kafka" => ("topics = [\"orders\"]", "max_attempts = 3"),
        _ => (
            "stream = \"orders\"\nclaim_idle_ms = 1500",
            "max_deliveries = 3",
        ),
    };
    let manifest = format!(
        r#"
spin_manifest_version = 2
[application]
name = "shop"
[[trigger.http]]
route = "/..."
component = "front"
[[trigger.{kind}]]
component = "relay"
{source}
group = "relay"
{attempts}
retry_backoff_ms = 50
concurrency = 4
{extra_trigger_fields}
[component.front]
source = "{{probe}}"
allowed_publish_topics = ["orders"]
[component.relay]
source = "{{relay}}"
allowed_publish_topics = ["seen.*"]
environment = {{ RELAY_PREFIX = "seen." }}
"#
    );
    let app = AppDir::new(&manifest);
    backend.create_topics("orders");
    let rc = app.write("runtime-config.toml", &backend.runtime_config(&app));
    let options = Options::runtime_config(&rc);
    (app, options)
}

fn publish(moa: &Moa, key: &str, payload: &str) {
    let (status, body) = moa.send(
        Method::POST,
        &format!("/publish/orders?key={key}"),
        Some(payload.as_bytes().to_vec()),
    );
    assert_eq!(status, 200, "{body}");
}

/// The caller's W3C trace context sent with every publishing request.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn publish_many(moa: &Moa, query: &str) {
    let (status, body) = common::blocking_with_headers(
        Method::POST,
        &format!("{}/publish-many/orders?{query}", moa.url),
        &[("traceparent", TRACEPARENT)],
        None,
    );
    assert_eq!(status, 200, "{body}");
}

/// Per key, the sequence numbers in the order they were seen (payload `<prefix>k<key>:<seq>`).
fn sequences(seen: &[Seen]) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for s in seen {
        let tail = s.payload.rsplit_once(':').map(|(_, seq)| seq).unwrap();
        out.entry(s.key.clone().unwrap_or_default())
            .or_default()
            .push(tail.parse().unwrap());
    }
    out
}

/// A key's sequence numbers as seen across a kill: runs of consecutive numbers, the first from 0,
/// each later one a redelivery from a commit point (at most one past the highest seen before) that
/// goes on past that highest before the next run starts; together they cover 0..n. A message seen
/// before an earlier one of its key fails this.
fn assert_in_order_with_restarts(key: &str, seqs: &[u32], n: u32) {
    let mut highest: Option<u32> = None;
    let mut previous: Option<u32> = None;
    // The highest number seen when the current run started: a replay must pass it.
    let mut replaying_to: Option<u32> = None;
    for &seq in seqs {
        let continues = previous.is_some_and(|p| seq == p + 1);
        if !continues {
            let restart_ok = match (highest, previous) {
                (None, _) => seq == 0,
                (Some(h), Some(p)) => seq <= h + 1 && replaying_to.is_none_or(|r| p >= r),
                (Some(_), None) => false,
            };
            assert!(
                restart_ok,
                "key {key}: {seq} came after {previous:?} (highest {highest:?}): out of order in {seqs:?}"
            );
            replaying_to = highest;
        }
        highest = Some(highest.map_or(seq, |h| h.max(seq)));
        previous = Some(seq);
    }
    let distinct: BTreeSet<u32> = seqs.iter().copied().collect();
    assert_eq!(
        distinct,
        (0..n).collect::<BTreeSet<_>>(),
        "key {key}: every message"
    );
}

// ---------- the shared behaviour suite ----------

fn delivers_every_message_once_in_key_order(backend: Backend) {
    let (app, options) = app(&backend, "");
    let moa = Moa::start(&app, options);
    publish_many(&moa, "n=300&keys=6&batch=50");
    let seen = backend.read(&app, "seen.orders", 300, Duration::from_secs(60));
    assert_eq!(seen.len(), 300, "{}", moa.stderr());
    for (key, seqs) in sequences(&seen) {
        assert_eq!(
            seqs,
            (0..50).collect::<Vec<_>>(),
            "key {key}: every message once, in publish order"
        );
    }
    for s in &seen {
        assert_eq!(s.headers.get("attempt").map(String::as_str), Some("1"));
        assert_eq!(
            s.headers.get("instance-deliveries").map(String::as_str),
            Some("1"),
            "a fresh instance for every delivery by default"
        );
        assert_eq!(
            s.headers.get("traceparent").map(String::as_str),
            Some(TRACEPARENT),
            "the publishing request's trace context travels with the event: {s:?}"
        );
    }
    // Handled means committed (offsets / XACK), so nothing is delivered again.
    backend.assert_all_committed(&app, 300);
    moa.stop();
}

fn failures_are_retried_then_dead_lettered(backend: Backend) {
    let (app, options) = app(&backend, "");
    let moa = Moa::start(&app, options);
    publish(&moa, "a", "fail-first-then-ok");
    publish(&moa, "b", "fail-always");
    publish(&moa, "c", "trap-always");
    publish(&moa, "a", "ok-after");
    let seen = backend.read(&app, "seen.orders", 2, Duration::from_secs(60));
    let by_payload: BTreeMap<&str, &Seen> = seen.iter().map(|s| (s.payload.as_str(), s)).collect();
    assert_eq!(
        by_payload.keys().copied().collect::<Vec<_>>(),
        ["fail-first-then-ok", "ok-after"],
        "{}",
        moa.stderr()
    );
    assert_eq!(
        by_payload["fail-first-then-ok"].headers["attempt"], "2",
        "the failed first attempt was retried"
    );
    let dead = backend.read(&app, "orders.dlq", 2, Duration::from_secs(60));
    let dead: BTreeMap<&str, &Seen> = dead.iter().map(|s| (s.payload.as_str(), s)).collect();
    assert_eq!(
        dead.keys().copied().collect::<Vec<_>>(),
        ["fail-always", "trap-always"]
    );
    let failed = dead["fail-always"];
    assert_eq!(failed.key.as_deref(), Some("b"));
    assert_eq!(failed.headers["moa-attempts"], "3");
    assert_eq!(failed.headers["moa-original-topic"], "orders");
    assert_eq!(failed.headers["moa-component"], "relay");
    assert!(
        failed.headers["moa-error"].contains("asked to fail"),
        "{failed:?}"
    );
    assert!(
        dead["trap-always"].headers["moa-error"].contains("trapped"),
        "{:?}",
        dead["trap-always"]
    );
    // The host kept serving through the traps, and dead-lettered messages count as done.
    assert_eq!(moa.get("/nothing").0, 200);
    backend.assert_all_committed(&app, 4);
    moa.stop();
}

fn nothing_is_lost_when_the_host_is_killed(backend: Backend) {
    let (app, options) = app(&backend, "");
    let moa = Moa::start(&app, options.clone());
    // 40 ms each, 4 at a time: about 4 s of work, so the kill below lands mid-stream.
    publish_many(&moa, "n=400&keys=8&batch=100&prefix=sleep:40:");
    // Kill it mid-stream, without any chance to commit or clean up.
    let partial = backend.read(&app, "seen.orders", 40, Duration::from_secs(60));
    assert!(
        partial.len() >= 40 && partial.len() < 400,
        "{}",
        partial.len()
    );
    drop(moa);
    let restarted = Moa::start(&app, options);
    let seen = backend.read(&app, "seen.orders", 400, Duration::from_secs(90));
    let distinct: BTreeSet<&str> = seen.iter().map(|s| s.payload.as_str()).collect();
    assert_eq!(
        distinct.len(),
        400,
        "every message handled at least once after the restart\n{}",
        restarted.stderr()
    );
    // Redelivered messages come again in order per key; duplicates only from the kill.
    for (key, seqs) in sequences(&seen) {
        if matches!(backend, Backend::Redis(_)) {
            // Known gap: the survivor claims the dead consumer's pending entries while it reads
            // new ones, so a key's claimed entries come after its later ones (issue 33, item 5).
            let distinct: BTreeSet<u32> = seqs.iter().copied().collect();
            assert_eq!(distinct, (0..50).collect::<BTreeSet<_>>(), "key {key}");
            continue;
        }
        assert_in_order_with_restarts(&key, &seqs, 50);
    }
    restarted.stop();
}

/// A message whose every delivery ends with the host dying (here: killed while the handler
/// sleeps) is counted across restarts and dead-lettered after `max_attempts`, instead of taking
/// every restarted host down forever.
fn a_message_that_kills_the_host_is_dead_lettered(backend: Backend) {
    let (app, options) = app(&backend, "");
    let mut moa = Moa::start(&app, options.clone());
    for round in 1..=3 {
        if round == 1 {
            publish(&moa, "deadly", "sleep:600000:hangs");
        }
        // A message on another key shows that the consumer runs; the delivery counts on disk
        // show that the deadly one started this round.
        publish(&moa, &format!("k{round}"), &format!("ok-{round}"));
        common::wait_until("the deadly message is being delivered", || {
            deliveries_started(&backend, &app) >= round as i64
        });
        let seen = backend.read(&app, "seen.orders", round, Duration::from_secs(60));
        // Redeliveries after a kill may repeat the earlier rounds' messages.
        let distinct: BTreeSet<&str> = seen.iter().map(|s| s.payload.as_str()).collect();
        assert_eq!(
            distinct,
            (1..=round)
                .map(|r| format!("ok-{r}"))
                .collect::<BTreeSet<_>>()
                .iter()
                .map(String::as_str)
                .collect(),
            "round {round}: {}",
            moa.stderr()
        );
        drop(moa);
        moa = Moa::start(&app, options.clone());
    }
    // Three deliveries ended with the host killed; the fourth start is past max_attempts = 3.
    let dead = backend.read(&app, "orders.dlq", 1, Duration::from_secs(90));
    assert_eq!(dead.len(), 1, "{}", moa.stderr());
    assert_eq!(dead[0].payload, "sleep:600000:hangs");
    assert_eq!(dead[0].headers["moa-attempts"], "3", "{:?}", dead[0]);
    assert!(
        dead[0].headers["moa-error"].contains("without being handled"),
        "{:?}",
        dead[0]
    );
    moa.stop();
}

/// The highest delivery count the host persisted for a message of `orders` still in flight
/// (Kafka: the host's own counts; the embedded log: the log's), 0 before there is any.
fn deliveries_started(backend: &Backend, app: &AppDir) -> i64 {
    let (file, sql) = match backend {
        Backend::Kafka(_) => (
            app.path().join(".moa/kafka-deliveries.db"),
            "SELECT COALESCE(MAX(count), 0) FROM kafka_deliveries WHERE topic = 'orders'",
        ),
        _ => (
            app.path().join("events.db"),
            "SELECT COALESCE(MAX(count), 0) FROM deliveries WHERE topic = 'orders'",
        ),
    };
    if !file.exists() {
        return 0;
    }
    rusqlite::Connection::open(&file)
        .and_then(|c| c.query_row(sql, [], |row| row.get(0)))
        .unwrap_or(0)
}

#[test]
fn embedded_a_message_that_kills_the_host_is_dead_lettered() {
    a_message_that_kills_the_host_is_dead_lettered(Backend::Embedded);
}

#[test]
fn kafka_a_message_that_kills_the_host_is_dead_lettered() {
    a_message_that_kills_the_host_is_dead_lettered(Backend::Kafka(KafkaServer::start()));
}

#[test]
fn instances_are_reused_only_when_configured_and_never_after_a_failure() {
    let backend = Backend::Embedded;
    let (app, mut options) = app(&backend, "");
    let rc = app.write(
        "runtime-config.toml",
        &format!(
            "{}[limits]\nmax_instance_reuse = 3\n",
            backend.runtime_config(&app)
        ),
    );
    options.args[1] = rc.display().to_string();
    let moa = Moa::start(&app, options);
    assert_reused_in_threes(&backend, &app, &moa);
}

/// The same on Kafka, where deliveries of one partition run per key, with the reuse set for the one
/// component in spin.toml (`[component.relay.moa]`) instead of the runtime config.
#[test]
fn kafka_instances_are_reused_as_the_component_sets_it() {
    let backend = Backend::Kafka(KafkaServer::start());
    let (app, options) = app(&backend, "");
    let manifest = std::fs::read_to_string(app.manifest()).unwrap();
    std::fs::write(
        app.manifest(),
        format!("{manifest}\n[component.relay.moa]\nmax_instance_reuse = 3\n"),
    )
    .unwrap();
    let moa = Moa::start(&app, options);
    assert_reused_in_threes(&backend, &app, &moa);
}

/// Seven messages of one key on instances kept for three deliveries, a failed attempt dropping its.
fn assert_reused_in_threes(backend: &Backend, app: &AppDir, moa: &Moa) {
    // One key: one partition, one lane, in order.
    for payload in ["m0", "m1", "m2", "m3", "fail-first-m4", "m5", "m6"] {
        publish(moa, "one-key", payload);
    }
    let seen = backend.read(app, "seen.orders", 7, Duration::from_secs(60));
    let uses: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| {
            (
                s.payload.as_str(),
                s.headers["instance-deliveries"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        uses,
        [
            ("m0", "1"),
            ("m1", "2"),
            ("m2", "3"),
            ("m3", "1"),
            // its first attempt failed on the instance that had m3, which was then discarded
            ("fail-first-m4", "1"),
            ("m5", "2"),
            ("m6", "3"),
        ]
    );
}

// ---------- embedded log ----------

#[test]
fn embedded_delivers_every_message_once_in_key_order() {
    delivers_every_message_once_in_key_order(Backend::Embedded);
}

#[test]
fn embedded_failures_are_retried_then_dead_lettered() {
    failures_are_retried_then_dead_lettered(Backend::Embedded);
}

#[test]
fn embedded_nothing_is_lost_when_the_host_is_killed() {
    nothing_is_lost_when_the_host_is_killed(Backend::Embedded);
}

// ---------- Kafka (tansu) ----------

#[test]
fn kafka_delivers_every_message_once_in_key_order() {
    delivers_every_message_once_in_key_order(Backend::Kafka(KafkaServer::start()));
}

#[test]
fn kafka_failures_are_retried_then_dead_lettered() {
    failures_are_retried_then_dead_lettered(Backend::Kafka(KafkaServer::start()));
}

#[test]
fn kafka_nothing_is_lost_when_the_host_is_killed() {
    nothing_is_lost_when_the_host_is_killed(Backend::Kafka(KafkaServer::start()));
}

/// The trigger's consumer lag per partition is a metric (KEDA and the alert rules read it): it
/// rises while a backlog waits and drains to 0 once everything is handled and committed.
#[test]
fn kafka_consumer_lag_rises_with_a_backlog_and_drains_to_zero() {
    consumer_lag_rises_with_a_backlog_and_drains_to_zero(Backend::Kafka(KafkaServer::start()), 4);
}

#[test]
fn redis_consumer_lag_rises_with_a_backlog_and_drains_to_zero() {
    // The stream is one partition; the group's lag is read every second.
    consumer_lag_rises_with_a_backlog_and_drains_to_zero(Backend::Redis(RedisServer::start()), 1);
}

#[test]
fn embedded_consumer_lag_rises_with_a_backlog_and_drains_to_zero() {
    consumer_lag_rises_with_a_backlog_and_drains_to_zero(Backend::Embedded, 4);
}

fn consumer_lag_rises_with_a_backlog_and_drains_to_zero(backend: Backend, partitions: usize) {
    let (app, options) = app(&backend, "");
    let moa = Moa::start(&app, options);
    let lags = |moa: &Moa| -> Vec<f64> {
        let (_, metrics) =
            common::blocking(Method::GET, &format!("{}/metrics", moa.admin_url), None);
        metrics
            .lines()
            .filter(|l| l.starts_with("moa_event_consumer_lag{") && l.contains("topic=\"orders\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect()
    };
    // About 3 s of work: many lag samples (every 250 ms for Kafka here, 1 s for Redis, every
    // fetch for the embedded log) see the backlog.
    publish_many(&moa, "n=400&keys=8&batch=100&prefix=sleep:30:");
    common::wait_until("a partition lags behind the backlog", || {
        lags(&moa).iter().sum::<f64>() > 0.0
    });
    let seen = backend.read(&app, "seen.orders", 400, Duration::from_secs(60));
    assert_eq!(seen.len(), 400, "{}", moa.stderr());
    common::wait_until("every partition's lag drains to 0", || {
        let lags = lags(&moa);
        lags.len() == partitions && lags.iter().all(|lag| *lag == 0.0)
    });
}

// ---------- Redis Streams ----------

#[test]
fn redis_delivers_every_message_once_in_key_order() {
    delivers_every_message_once_in_key_order(Backend::Redis(RedisServer::start()));
}

#[test]
fn redis_failures_are_retried_then_dead_lettered() {
    failures_are_retried_then_dead_lettered(Backend::Redis(RedisServer::start()));
}

#[test]
fn redis_nothing_is_lost_when_the_host_is_killed() {
    nothing_is_lost_when_the_host_is_killed(Backend::Redis(RedisServer::start()));
}

// ---------- two hosts in one group ----------

/// Events handled by one host so far, from its Prometheus metrics.
fn handled(moa: &Moa) -> u64 {
    let (_, metrics) = common::blocking(Method::GET, &format!("{}/metrics", moa.admin_url), None);
    metrics
        .lines()
        .filter(|l| l.starts_with("moa_events_total{") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn two_hosts_share_the_work_and_take_over(backend: Backend) {
    let (app, options) = app(&backend, "");
    let first = Moa::start(&app, options.clone());
    let second = Moa::start(&app, options);
    if matches!(backend, Backend::Kafka(_)) {
        // Both members joined before the traffic starts.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(first.stderr().contains("partitions assigned")
            && second.stderr().contains("partitions assigned"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    publish_many(&first, "n=400&keys=8&batch=100&prefix=sleep:10:");
    backend.read(&app, "seen.orders", 120, Duration::from_secs(60));
    let (a, b) = (handled(&first), handled(&second));
    assert!(
        a > 0 && b > 0,
        "both hosts took part: {a} and {b}\nfirst:\n{}\nsecond:\n{}",
        first.stderr(),
        second.stderr()
    );
    drop(first);
    let seen = backend.read(&app, "seen.orders", 400, Duration::from_secs(90));
    let distinct: BTreeSet<&str> = seen.iter().map(|s| s.payload.as_str()).collect();
    assert_eq!(
        distinct.len(),
        400,
        "the survivor took over the dead host's work\n{}",
        second.stderr()
    );
    second.stop();
}

#[test]
fn kafka_two_hosts_share_partitions_and_take_over() {
    two_hosts_share_the_work_and_take_over(Backend::Kafka(KafkaServer::start()));
}

#[test]
fn redis_two_consumers_share_the_stream_and_reclaim_a_dead_ones_entries() {
    two_hosts_share_the_work_and_take_over(Backend::Redis(RedisServer::start()));
}

#[test]
fn a_trigger_on_a_component_without_a_handler_is_refused() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "shop"
[[trigger.kafka]]
component = "front"
topics = ["orders"]
[component.front]
source = "{probe}"
"#,
    );
    let err = Moa::try_start(&app, Options::default()).err().unwrap();
    assert!(
        err.contains("does not export moa:messaging/handler"),
        "{err}"
    );
}

/// `batch = 16`: deliveries come to `moa:messaging/batch-handler` several at a time, at most one
/// per key, so every key's order holds; each is handled once; a delivery that fails fails alone
/// (its batch-mates are committed, it is retried and dead-lettered on its own), and a trap in a
/// batch runs each of its deliveries again on its own without spending their attempts.
fn batches_keep_key_order_and_fail_one_delivery_at_a_time(backend: Backend) {
    let (app, options) = app(&backend, "batch = 16");
    let moa = Moa::start(&app, options);
    publish_many(&moa, "n=600&keys=30&batch=100");
    let seen = backend.read(&app, "seen.orders", 600, Duration::from_secs(60));
    assert_eq!(seen.len(), 600, "each message once: {}", moa.stderr());
    for (key, seqs) in sequences(&seen) {
        assert_eq!(
            seqs,
            (0..20).collect::<Vec<_>>(),
            "key {key}: every message once, in publish order"
        );
    }
    let sizes: Vec<usize> = seen
        .iter()
        .map(|s| s.headers["batch-size"].parse().unwrap())
        .collect();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        (2..=16).contains(&largest),
        "deliveries came in batches of 2 to 16 (largest {largest})"
    );
    assert!(
        common::metric(&moa, "moa_event_batch_size_count", "component=\"relay\"") >= 600.0 / 16.0,
        "the batch sizes are in /metrics"
    );
    backend.assert_all_committed(&app, 600);

    // Failures among batch-mates: keys a-c fail in three ways, twenty other keys go through.
    let mut others = Vec::new();
    publish(&moa, "a", "fail-first-then-ok");
    publish(&moa, "b", "fail-always");
    publish(&moa, "c", "trap-always");
    for n in 0..20 {
        let payload = format!("mate-{n}");
        publish(&moa, &format!("m{n}"), &payload);
        others.push(payload);
    }
    publish(&moa, "a", "ok-after");
    let seen = backend.read(&app, "seen.orders", 600 + 22, Duration::from_secs(60));
    let handled: BTreeSet<&str> = seen.iter().map(|s| s.payload.as_str()).collect();
    for payload in others
        .iter()
        .map(String::as_str)
        .chain(["fail-first-then-ok", "ok-after"])
    {
        assert!(
            handled.contains(payload),
            "{payload} was handled: {}",
            moa.stderr()
        );
    }
    let key_a: Vec<&str> = seen
        .iter()
        .filter(|s| s.key.as_deref() == Some("a"))
        .map(|s| s.payload.as_str())
        .collect();
    assert_eq!(key_a.first(), Some(&"fail-first-then-ok"), "{key_a:?}");
    assert_eq!(
        key_a.last(),
        Some(&"ok-after"),
        "key a keeps its order: {key_a:?}"
    );
    let retried = seen
        .iter()
        .find(|s| s.payload == "fail-first-then-ok")
        .expect("seen");
    assert_eq!(retried.headers["attempt"], "2", "retried once, on its own");
    assert_eq!(
        retried.headers["batch-size"], "1",
        "a retry runs on its own"
    );
    let dead = backend.read(&app, "orders.dlq", 2, Duration::from_secs(60));
    let dead: BTreeMap<&str, &Seen> = dead.iter().map(|s| (s.payload.as_str(), s)).collect();
    assert_eq!(
        dead.keys().copied().collect::<Vec<_>>(),
        ["fail-always", "trap-always"],
        "{}",
        moa.stderr()
    );
    assert_eq!(dead["fail-always"].headers["moa-attempts"], "3");
    assert_eq!(
        dead["trap-always"].headers["moa-attempts"], "3",
        "the trap in a batch did not spend an attempt; three alone did"
    );
    assert!(
        dead["trap-always"].headers["moa-error"].contains("trapped"),
        "{:?}",
        dead["trap-always"]
    );
    backend.assert_all_committed(&app, 600 + 24);
    moa.stop();
}

#[test]
fn embedded_batches_keep_key_order_and_fail_one_delivery_at_a_time() {
    batches_keep_key_order_and_fail_one_delivery_at_a_time(Backend::Embedded);
}

#[test]
fn kafka_batches_keep_key_order_and_fail_one_delivery_at_a_time() {
    batches_keep_key_order_and_fail_one_delivery_at_a_time(Backend::Kafka(KafkaServer::start()));
}

#[test]
fn redis_batches_keep_key_order_and_fail_one_delivery_at_a_time() {
    batches_keep_key_order_and_fail_one_delivery_at_a_time(Backend::Redis(RedisServer::start()));
}

#[test]
fn a_batched_trigger_on_a_component_without_the_batch_handler_is_refused() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "shop"
[[trigger.kafka]]
component = "relay"
topics = ["orders"]
batch = 8
[component.relay]
source = "{inbox}"
"#,
    );
    let err = Moa::try_start(&app, Options::default()).err().unwrap();
    assert!(
        err.contains("`batch = 8`")
            && err.contains("does not export moa:messaging/batch-handler")
            && err.contains("remove `batch`"),
        "{err}"
    );
}

#[test]
fn a_kafka_trigger_on_a_topic_routed_to_redis_is_refused() {
    let redis = RedisServer::start();
    let backend = Backend::Redis(redis);
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "shop"
[[trigger.kafka]]
component = "relay"
topics = ["orders"]
[component.relay]
source = "{relay}"
"#,
    );
    let rc = app.write("runtime-config.toml", &backend.runtime_config(&app));
    let err = Moa::try_start(&app, Options::runtime_config(&rc))
        .err()
        .unwrap();
    assert!(
        err.contains("routes to a Redis broker") && err.contains("[[trigger.redis-stream]]"),
        "{err}"
    );
}

#[test]
fn a_cron_trigger_on_a_component_without_the_cron_export_is_refused() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "shop"
[[trigger.cron]]
component = "front"
cron_expression = "*/10 * * * * *"
[component.front]
source = "{probe}"
"#,
    );
    let err = Moa::try_start(&app, Options::default()).err().unwrap();
    assert!(
        err.contains("does not export handle-cron-event (fermyon:spin-cron@2.0.0)"),
        "{err}"
    );
}

/// A message that keeps failing holds up only its own key (Kafka): on a one-partition topic, the
/// messages of ten other keys published after it are all handled, in order per key, while it is
/// still being retried (1 s, 2 s, 4 s apart); it is dead-lettered after, and only then is the
/// partition's offset committed past it.
/// One message that keeps failing holds up only its key: the other keys of its partition are
/// handled meanwhile, and the partition's committed offset stays below it until it is
/// dead-lettered, then moves to the end.
fn a_stuck_key_blocks_only_itself(backend: Backend) {
    let (kind, source) = match backend {
        Backend::Redis(_) => (
            "redis-stream",
            "stream = \"orders\"\nmax_deliveries = 4\nclaim_idle_ms = 60000",
        ),
        _ => ("kafka", "topics = [\"orders\"]\nmax_attempts = 4"),
    };
    let app = AppDir::new(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "stuck"
[[trigger.http]]
route = "/..."
component = "front"
[[trigger.{kind}]]
component = "relay"
{source}
group = "relay"
retry_backoff_ms = 1000
concurrency = 8
[component.front]
source = "{{probe}}"
allowed_publish_topics = ["orders"]
[component.relay]
source = "{{relay}}"
allowed_publish_topics = ["seen.*"]
environment = {{ RELAY_PREFIX = "seen." }}
"#
    ));
    // One partition, so that every key shares the stuck message's partition.
    match &backend {
        Backend::Kafka(kafka) => {
            kafka.create_topic("orders", 1);
            kafka.create_topic("seen.orders", 1);
            kafka.create_topic("orders.dlq", 1);
        }
        Backend::Embedded => {
            let log = moa_eventlog::EventLog::open(&app.path().join("events.db")).unwrap();
            log.ensure_topic("orders", 1).unwrap();
        }
        Backend::Redis(_) => {}
    }
    // The committed offset of the one partition; on Redis (no offsets) 51 minus the entries
    // still pending.
    let committed = |backend: &Backend| -> i64 {
        match backend {
            Backend::Kafka(kafka) => committed_offset(&kafka.bootstrap, "relay", "orders"),
            Backend::Embedded => moa_eventlog::EventLog::open(&app.path().join("events.db"))
                .unwrap()
                .committed("relay", "orders", 0)
                .unwrap() as i64,
            Backend::Redis(_) => 51 - backend.uncommitted(&app, 51) as i64,
        }
    };
    let rc = app.write("runtime-config.toml", &backend.runtime_config(&app));
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    publish(&moa, "stuck", "fail-always");
    publish_many(&moa, "n=50&keys=10&batch=50");
    let seen = backend.read(&app, "seen.orders", 50, Duration::from_secs(60));
    assert_eq!(seen.len(), 50, "{}", moa.stderr());
    let dead_meanwhile = backend.read_now(&app, "orders.dlq");
    assert!(
        dead_meanwhile.is_empty(),
        "the other keys were handled while the stuck message was still retried: {dead_meanwhile:?}"
    );
    for (key, seqs) in sequences(&seen) {
        assert_eq!(
            seqs,
            (0..5).collect::<Vec<_>>(),
            "key {key}: in publish order"
        );
    }
    let committed_before = committed(&backend);
    if matches!(backend, Backend::Redis(_)) {
        common::wait_until("every entry but the stuck one is acknowledged", || {
            committed(&backend) == 50
        });
    } else {
        assert!(
            committed_before < 1,
            "nothing is committed past the unfinished stuck message (offset 0): {committed_before}"
        );
    }
    let dead = backend.read(&app, "orders.dlq", 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some("stuck"));
    assert_eq!(dead[0].headers["moa-attempts"], "4");
    common::wait_until("the partition is committed to its end", || {
        committed(&backend) == 51
    });
    moa.stop();
}

#[test]
fn kafka_a_stuck_key_blocks_only_itself() {
    a_stuck_key_blocks_only_itself(Backend::Kafka(KafkaServer::start()));
}

#[test]
fn embedded_a_stuck_key_blocks_only_itself() {
    a_stuck_key_blocks_only_itself(Backend::Embedded);
}

#[test]
fn redis_a_stuck_key_blocks_only_itself() {
    a_stuck_key_blocks_only_itself(Backend::Redis(RedisServer::start()));
}

/// The offset `group` has committed on partition 0 of `topic` (0 when none).
fn committed_offset(bootstrap: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    match consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap()
        .elements()
        .first()
        .map(|e| e.offset())
    {
        Some(Offset::Offset(n)) => n,
        _ => 0,
    }
}
