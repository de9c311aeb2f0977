//! The outbox and the inbox when hosts die: transactions that insert an order and stage a message
//! run against `moa up` while it is SIGKILLed at random moments, again and again, on both document
//! backends with a real Redis broker; every host also consumes the stream, so consumers die
//! mid-transaction too (on MongoDB their open transactions hold documents until the server aborts
//! them). Afterwards every committed order's message is on the stream (none missing, none from a
//! transaction that did not commit, repeats only of the same message id), each order's effect was
//! applied exactly once through the inbox, and nothing was dead-lettered.
//!
//! Power loss too: with the embedded store and the embedded log on a filesystem that keeps
//! unsynced writes in memory and drops them at a simulated power cut (`moa-crashfs`), every
//! transaction moa acknowledged survives each cut, and its message's effect is applied once.

mod common;

use common::{AppDir, Moa, MongoServer, Options, RedisServer};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A component that commits orders and stages their messages.
const PRODUCER: &str = r#"
spin_manifest_version = 2
[application]
name = "outbox-chaos"
[[trigger.http]]
route = "/run"
component = "docprobe"
[component.docprobe]
source = "{docprobe}"
document_stores = ["default"]
allowed_publish_topics = ["orders.placed"]
"#;

/// The consumer, on every host, reads every message the relays published (repeats included) and
/// applies each order's effect once through the inbox.
const WITH_CONSUMER: &str = r#"
[[trigger.redis-stream]]
component = "inbox"
stream = "orders.placed"
group = "effects"
claim_idle_ms = 1000
retry_backoff_ms = 20
# Hosts are killed every few hundred ms here, so one entry may be delivered to several hosts that
# all die holding it; Redis counts each, and the default 5 would dead-letter it as a poison message.
max_deliveries = 20
[component.inbox]
source = "{inbox}"
document_stores = ["default"]
"#;

/// How many committed transactions the run needs at least.
const COMMITTED: u64 = 200;

/// A small deterministic-per-run random source (no extra crate): xorshift seeded from the clock.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
            | 1;
        eprintln!("random seed {seed}");
        Random(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// POSTs `script` to `/run`; `None` when the host is down or the connection is cut (plain
/// HTTP/1.1 over a socket: this client must not panic when the host is killed under it).
fn run(moa_url: &str, script: Value) -> Option<Value> {
    use std::io::{Read as _, Write as _};
    let address = moa_url.strip_prefix("http://")?;
    let mut socket = std::net::TcpStream::connect(address).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let body = script.to_string();
    let request = format!(
        "POST /run HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    socket.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // The body may come chunked.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            out.push_str(tail.get(..size)?);
            rest = tail.get(size + 2..)?;
        }
        out
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).ok()
}

fn find_all(moa: &Moa, collection: &str) -> Vec<Value> {
    let reply = run(
        &moa.url,
        json!({ "ops": [{ "op": "find", "collection": collection, "filter": {} }] }),
    )
    .expect("docprobe answers");
    reply["results"][0]["ok"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{reply}"))
}

/// Order -> how many times its effect was applied.
fn effects(moa: &Moa) -> BTreeMap<String, i64> {
    find_all(moa, "effects")
        .iter()
        .map(|d| {
            (
                d["_id"].as_str().unwrap_or_default().to_string(),
                d["n"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Payload -> the `moa-message-id` of every entry on the stream.
fn stream(redis: &RedisServer) -> BTreeMap<String, Vec<String>> {
    let mut connection = redis::Client::open(redis.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("orders.placed")
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap_or_default();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in reply.ids {
        let field = |name: &str| -> String {
            entry
                .map
                .iter()
                .find(|(k, _)| k.as_str() == name || k.ends_with(&format!(":{name}")))
                .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
                .unwrap_or_default()
        };
        out.entry(field("payload"))
            .or_default()
            .push(field("moa-message-id"));
    }
    out
}

/// Appends a copy of the first `n` entries of the stream (all fields, so the same message id);
/// returns how many it copied.
fn repeat_some(redis: &RedisServer, n: usize) -> usize {
    let mut connection = redis::Client::open(redis.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("orders.placed")
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(n)
        .query(&mut connection)
        .expect("XRANGE");
    for entry in &reply.ids {
        let mut command = redis::cmd("XADD");
        command.arg("orders.placed").arg("*");
        for (field, value) in &entry.map {
            let bytes: Vec<u8> = redis::from_redis_value(value.clone()).expect("a field value");
            command.arg(field).arg(bytes);
        }
        let _: String = command.query(&mut connection).expect("XADD");
    }
    reply.ids.len()
}

/// Why each dead-lettered entry was dead-lettered (its `moa-error` header).
fn dead_letter_reasons(redis: &RedisServer) -> Vec<String> {
    let mut connection = redis::Client::open(redis.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("orders.placed.dlq")
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap_or_default();
    reply
        .ids
        .iter()
        .map(|entry| {
            entry
                .map
                .iter()
                .find(|(k, _)| k.ends_with("moa-error"))
                .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
                .unwrap_or_default()
        })
        .collect()
}

fn dead_letters(redis: &RedisServer) -> u64 {
    dead_letter_reasons(redis).len() as u64
}

fn chaos(store_config: &str) {
    let redis = RedisServer::start();
    let app = AppDir::new(&format!("{PRODUCER}{WITH_CONSUMER}"));
    let config = format!(
        "{}{store_config}outbox_poll_ms = 100\n",
        redis.broker_config()
    );
    let rc = app.write("runtime-config.toml", &config);
    let options = Options::runtime_config(&rc);
    let mut random = Random::new();
    let next = Arc::new(AtomicU64::new(0));
    let mut kills = 0;

    loop {
        let moa = Moa::start(&app, options.clone());
        let committed = find_all(&moa, "orders").len() as u64;
        if committed >= COMMITTED && kills >= 5 {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (url, next, stop) = (moa.url.clone(), next.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let order = format!("o-{n}");
                        // A refused connection (the host is down) is fine: that transaction
                        // never started. One cut mid-way may or may not have committed.
                        let _ = run(
                            &url,
                            json!({ "transaction": true, "end": "commit", "ops": [
                                { "op": "insert_one", "collection": "orders", "document": { "_id": order } },
                                { "op": "publish", "topic": "orders.placed", "key": order, "payload": order }
                            ]}),
                        );
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + random.below(500)));
        drop(moa); // SIGKILL, wherever the host is: mid-transaction, between commit and publish, mid-relay
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.join();
        }
    }

    // What a relay does when its host dies after the broker acknowledged and before the outbox
    // entry is deleted: the same message (same moa-message-id) lands on the stream again. Kills
    // produce that only now and then, so repeats of the first messages (most already consumed)
    // are added here.
    let repeated_by_hand = repeat_some(&redis, 25);

    // A last host drains the outbox and finishes the stream. On MongoDB, transactions the killed
    // consumers left open conflict with its own until the server aborts them (60 s).
    let moa = Moa::start(&app, options);
    let orders: BTreeSet<String> = find_all(&moa, "orders")
        .iter()
        .filter_map(|d| d["_id"].as_str().map(str::to_string))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let effects = find_all(&moa, "effects").len();
        let backlog = common::metric(&moa, "moa_outbox_backlog", "store=\"default\"");
        if effects >= orders.len() && backlog == 0.0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let stderr = moa.stderr();
            let tail: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.contains("\"message\":\"request\""))
                .rev()
                .take(30)
                .collect();
            panic!(
                "after 150 s: {effects} effects of {} orders, outbox backlog {backlog}, {} on the stream, {} dead-lettered; moa's last lines:\n{}",
                orders.len(),
                stream(&redis).len(),
                dead_letters(&redis),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let transient = common::metric(&moa, "moa_events_total", "outcome=\"transient\"");
    let published = stream(&redis);
    let effects = effects(&moa);
    let seen: i64 = find_all(&moa, "seen")
        .iter()
        .map(|d| d["n"].as_i64().unwrap_or_default())
        .sum();

    let missing: Vec<&String> = orders
        .iter()
        .filter(|o| !published.contains_key(*o))
        .collect();
    let invented: Vec<&String> = published.keys().filter(|p| !orders.contains(*p)).collect();
    let repeated: usize = published.values().map(|ids| ids.len() - 1).sum();
    eprintln!(
        "{} transactions sent (most while the host was down), {} committed, {kills} kills; {} messages on the stream ({repeated} repeats, {repeated_by_hand} of them added by the test), {seen} deliveries seen by the consumer, {transient} failures on transient conditions on the last host",
        next.load(Ordering::Relaxed),
        orders.len(),
        published.values().map(Vec::len).sum::<usize>(),
    );
    assert!(
        orders.len() as u64 >= COMMITTED,
        "at least {COMMITTED} committed transactions"
    );
    assert!(
        missing.is_empty(),
        "committed but never published: {missing:?}"
    );
    assert!(
        invented.is_empty(),
        "published without a committed transaction: {invented:?}"
    );
    for (order, ids) in &published {
        assert!(
            ids.iter().all(|id| !id.is_empty() && id == &ids[0]),
            "a repeat of {order} carries the same moa-message-id: {ids:?}"
        );
    }
    let wrong: Vec<(&String, &i64)> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "effects applied more or less than once: {wrong:?}"
    );
    assert_eq!(
        effects.keys().collect::<BTreeSet<_>>(),
        orders.iter().collect::<BTreeSet<_>>(),
        "one effect per committed order"
    );
    assert!(
        repeated >= repeated_by_hand && seen as usize >= orders.len() + repeated_by_hand,
        "the consumer saw the repeats ({seen} deliveries for {} orders)",
        orders.len()
    );
    assert_eq!(
        dead_letters(&redis),
        0,
        "no delivery was dead-lettered: {:?}",
        dead_letter_reasons(&redis)
    );
}

#[test]
fn embedded_store_outbox_survives_kills() {
    chaos("[document_store.default]\ntype = \"embedded\"\n");
}

#[test]
fn mongodb_outbox_survives_kills() {
    let mongo = MongoServer::start();
    chaos(&mongo.store_config("default", "chaos"));
}

/// The consumer of the power-loss test: the same inbox component, fed from the embedded log.
const FROM_THE_LOG: &str = r#"
[[trigger.kafka]]
component = "inbox"
topics = ["orders.placed"]
group = "effects"
retry_backoff_ms = 20
[component.inbox]
source = "{inbox}"
document_stores = ["default"]
"#;

/// Power cuts, not just kills: the documents store and the event log live on `moa-crashfs`, where
/// writes not yet fsynced are kept in memory. Each round the host is SIGKILLed under load and the
/// power is cut at once (its unsynced writes are gone); then the next host starts on what was on
/// disk. In the end every transaction the host acknowledged is there (durable), every committed
/// order's message reached the log and its effect was applied exactly once.
#[test]
fn embedded_store_and_log_survive_power_cuts() {
    assert!(
        std::path::Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse (FUSE) and root to mount moa-crashfs"
    );
    let backing = tempfile::tempdir().expect("a temp dir");
    let mountpoint = tempfile::tempdir().expect("a temp dir");
    let disk = moa_crashfs::CrashFs::mount(backing.path(), mountpoint.path())
        .expect("moa-crashfs mounts (needs root and /dev/fuse)");
    let on_disk = |name: &str| mountpoint.path().join(name).display().to_string();
    let app = AppDir::new(&format!("{PRODUCER}{FROM_THE_LOG}"));
    let config = format!(
        "[messaging.brokers.log]\ntype = \"embedded\"\npath = \"{}\"\n[document_store.default]\ntype = \"embedded\"\npath = \"{}\"\noutbox_poll_ms = 100\n",
        on_disk("events.db"),
        on_disk("documents.db"),
    );
    let rc = app.write("runtime-config.toml", &config);
    let options = Options::runtime_config(&rc);
    let state_dir = mountpoint.path().join("state");
    let start = || {
        Moa::try_start_from(app.manifest().as_os_str(), &state_dir, options.clone())
            .unwrap_or_else(|e| panic!("moa did not start: {e}"))
    };
    let mut random = Random::new();
    let next = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new()));
    let (mut cuts, mut lost_bytes) = (0, 0u64);

    while cuts < 5 || acknowledged.lock().map(|a| a.len()).unwrap_or(0) < COMMITTED as usize {
        let moa = start();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (url, next, stop) = (moa.url.clone(), next.clone(), stop.clone());
                let acknowledged = acknowledged.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let order = format!("o-{}", next.fetch_add(1, Ordering::Relaxed));
                        let reply = run(
                            &url,
                            json!({ "transaction": true, "end": "commit", "ops": [
                                { "op": "insert_one", "collection": "orders", "document": { "_id": order } },
                                { "op": "publish", "topic": "orders.placed", "key": order, "payload": order }
                            ]}),
                        );
                        // Acknowledged: every op and the commit answered ok.
                        if let Some(reply) = reply
                            && reply["end"].get("ok").is_some()
                            && reply["results"]
                                .as_array()
                                .is_some_and(|r| r.iter().all(|op| op.get("ok").is_some()))
                            && let Ok(mut acknowledged) = acknowledged.lock()
                        {
                            acknowledged.insert(order);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + random.below(700)));
        drop(moa); // SIGKILL: the process is gone, its page cache with it ...
        lost_bytes += disk.pending_bytes();
        disk.cut().expect("the power cut"); // ... and every write it had not fsynced.
        cuts += 1;
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.join();
        }
    }

    let moa = start();
    let orders: BTreeSet<String> = find_all(&moa, "orders")
        .iter()
        .filter_map(|d| d["_id"].as_str().map(str::to_string))
        .collect();
    let acknowledged = acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
    let lost: Vec<&String> = acknowledged.difference(&orders).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged transactions lost at power cuts: {lost:?}",
        lost.len()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let effects = loop {
        let effects = effects(&moa);
        let backlog = common::metric(&moa, "moa_outbox_backlog", "store=\"default\"");
        if (effects.len() >= orders.len() && backlog == 0.0) || std::time::Instant::now() > deadline
        {
            break effects;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "{cuts} power cuts dropped {lost_bytes} unsynced bytes; {} transactions acknowledged, {} orders on disk, {} effects",
        acknowledged.len(),
        orders.len(),
        effects.len()
    );
    // How much a cut drops depends on where the kill lands (moa fsyncs every commit); the
    // filesystem's own tests show a cut drops what was not synced.
    let missing: Vec<&String> = orders
        .iter()
        .filter(|o| !effects.contains_key(*o))
        .collect();
    assert!(
        missing.is_empty(),
        "committed orders whose message never had its effect: {missing:?}\n{}",
        moa.stderr()
    );
    let invented: Vec<&String> = effects.keys().filter(|e| !orders.contains(*e)).collect();
    assert!(
        invented.is_empty(),
        "effects of orders that never committed: {invented:?}"
    );
    let twice: Vec<(&String, &i64)> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "effects applied more than once: {twice:?}"
    );
    drop(moa);
    drop(disk);
}
