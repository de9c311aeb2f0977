//! Redis Streams triggers with several hosts on one group, against a real Redis: an entry a host
//! holds is never taken by another while that host is alive, a host finishes what killed consumers
//! left pending, and an entry that takes hosts down reaches the dead-letter stream on Redis's own
//! delivery count.

mod common;

use common::{AppDir, Moa, Options, RedisServer, wait_until};
use reqwest::Method;
use std::collections::BTreeMap;
use std::time::Duration;

fn app(redis: &RedisServer, max_deliveries: u32) -> (AppDir, Options) {
    app_with(redis, max_deliveries, 1)
}

fn app_with(redis: &RedisServer, max_deliveries: u32, concurrency: u32) -> (AppDir, Options) {
    let manifest = format!(
        r#"
spin_manifest_version = 2
[application]
name = "streams"
[[trigger.http]]
route = "/..."
component = "front"
[[trigger.redis-stream]]
component = "relay"
stream = "orders"
group = "relay"
claim_idle_ms = 1000
max_deliveries = {max_deliveries}
retry_backoff_ms = 50
concurrency = {concurrency}
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
    let rc = app.write("runtime-config.toml", &redis.broker_config());
    (app, Options::runtime_config(&rc))
}

fn host(app: &AppDir, options: &Options, consumer: &str) -> Moa {
    let mut options = options.clone();
    options
        .env
        .push(("MOA_CONSUMER_NAME".into(), consumer.into()));
    Moa::start(app, options)
}

fn connection(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Payload -> the `attempt` headers of every time it was relayed.
fn relayed(redis: &RedisServer, stream: &str) -> BTreeMap<String, Vec<String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut connection(redis))
        .unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in reply.ids {
        let text = |field: &str| -> String {
            match entry.map.get(field) {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            }
        };
        out.entry(text("payload"))
            .or_default()
            .push(text("h:attempt"));
    }
    out
}

/// (consumer, times delivered) of every entry pending in the `relay` group (none before the
/// host created the group).
fn pending(redis: &RedisServer) -> Vec<(String, usize)> {
    let reply: redis::streams::StreamPendingCountReply = match redis::cmd("XPENDING")
        .arg("orders")
        .arg("relay")
        .arg("-")
        .arg("+")
        .arg(100)
        .query(&mut connection(redis))
    {
        Ok(reply) => reply,
        Err(err) if err.code() == Some("NOGROUP") => return Vec::new(),
        Err(err) => panic!("XPENDING: {err}"),
    };
    reply
        .ids
        .into_iter()
        .map(|p| (p.consumer, p.times_delivered))
        .collect()
}

#[test]
fn two_hosts_never_both_process_an_entry_one_of_them_holds() {
    let redis = RedisServer::start();
    let (app, options) = app(&redis, 3);
    let first = host(&app, &options, "host-a");
    let second = host(&app, &options, "host-b");
    // Each entry takes longer to handle than claim_idle_ms: without refreshing what a host
    // holds, the other host would claim the running entry and the one waiting behind it.
    for i in 0..6 {
        let (status, body) = first.send(
            Method::POST,
            &format!("/publish/orders?key=k{i}"),
            Some(format!("sleep:1500/{i}").into_bytes()),
        );
        assert_eq!(status, 200, "{body}");
    }
    wait_until("all six are relayed", || {
        relayed(&redis, "seen.orders").len() == 6
    });
    // Give a late duplicate time to show up.
    std::thread::sleep(Duration::from_millis(2000));
    let seen = relayed(&redis, "seen.orders");
    for (payload, attempts) in &seen {
        assert_eq!(
            attempts.len(),
            1,
            "{payload} was handled {} times\nA:\n{}\nB:\n{}",
            attempts.len(),
            first.stderr(),
            second.stderr()
        );
    }
    assert!(
        !first.stderr().contains("claimed entries") && !second.stderr().contains("claimed entries"),
        "a live host's entries were claimed"
    );
}

#[test]
fn an_entry_that_takes_hosts_down_is_dead_lettered_on_its_delivery_count() {
    let redis = RedisServer::start();
    let (app, options) = app(&redis, 2);
    let first = host(&app, &options, "host-1");
    let (status, body) = first.send(
        Method::POST,
        "/publish/orders?key=poison",
        Some(b"sleep:600000/poison".to_vec()),
    );
    assert_eq!(status, 200, "{body}");
    wait_until("host-1 handles the entry", || {
        pending(&redis) == vec![("host-1".to_string(), 1)]
    });
    drop(first); // SIGKILL mid-delivery, like a crash

    let second = host(&app, &options, "host-2");
    wait_until("host-2 claims and handles it", || {
        pending(&redis) == vec![("host-2".to_string(), 2)]
    });
    drop(second);

    // Delivered twice, handled never: the third host dead-letters it without running it.
    let third = host(&app, &options, "host-3");
    wait_until("the entry is dead-lettered", || {
        !relayed(&redis, "orders.dlq").is_empty()
    });
    wait_until("the entry is acknowledged", || pending(&redis).is_empty());
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("orders.dlq")
        .arg("-")
        .arg("+")
        .query(&mut connection(&redis))
        .unwrap();
    let entry = &reply.ids[0];
    let header = |name: &str| match entry.map.get(&format!("h:{name}")) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("no header {name}: {other:?} in {:?}", entry.map.keys()),
    };
    assert_eq!(header("moa-attempts"), "2");
    assert!(
        header("moa-error").contains("host stopped"),
        "{}",
        header("moa-error")
    );
    assert!(relayed(&redis, "seen.orders").is_empty());
    drop(third);
}

#[test]
fn a_survivor_finishes_what_killed_consumers_left_pending() {
    let redis = RedisServer::start();
    let (app, options) = app_with(&redis, 50, 4);
    const ENTRIES: usize = 1500;
    {
        // The whole backlog first (XADD as the messaging capability writes entries), so every
        // consumer host below finds entries to take.
        let mut connection = connection(&redis);
        for i in 0..ENTRIES {
            let _: String = redis::cmd("XADD")
                .arg("orders")
                .arg("*")
                .arg("key")
                .arg(format!("k{}", i % 37))
                .arg("payload")
                .arg(format!("sleep:25/{i}"))
                .query(&mut connection)
                .unwrap();
        }
    }
    // Consumers that are killed while they hold entries, one after another and overlapping.
    let mut doomed_logs = Vec::new();
    for round in 0..6 {
        let mut a = host(&app, &options, &format!("doomed-{round}-a"));
        let mut b = host(&app, &options, &format!("doomed-{round}-b"));
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        a.kill();
        std::thread::sleep(Duration::from_millis(100));
        b.kill();
        for (name, host) in [("a", &a), ("b", &b)] {
            let warnings: Vec<String> = host
                .stderr()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .map(str::to_string)
                .collect();
            if !warnings.is_empty() {
                doomed_logs.push(format!("doomed-{round}-{name}:\n{}", warnings.join("\n")));
            }
        }
    }
    let survivor = host(&app, &options, "survivor");
    let all = |seen: &BTreeMap<String, Vec<String>>| seen.len() == ENTRIES;
    for _ in 0..900 {
        if all(&relayed(&redis, "seen.orders")) && pending(&redis).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = relayed(&redis, "seen.orders");
    if !(all(&seen) && pending(&redis).is_empty()) {
        // What Redis knows, to tell "never delivered" from "acknowledged but not relayed".
        let mut connection = connection(&redis);
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("orders")
            .query(&mut connection)
            .unwrap();
        let consumers: redis::Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("orders")
            .arg("relay")
            .query(&mut connection)
            .unwrap();
        let missing: Vec<usize> = (0..ENTRIES)
            .filter(|i| !seen.contains_key(&format!("sleep:25/{i}")))
            .take(20)
            .collect();
        panic!(
            "{} of {ENTRIES} handled, {} pending, {} dead letters\nmissing (first 20): {missing:?}\ngroups: {groups:?}\nconsumers: {consumers:?}\nsurvivor:\n{}\nwarnings of the killed hosts:\n{}",
            seen.len(),
            pending(&redis).len(),
            relayed(&redis, "orders.dlq").len(),
            survivor.stderr(),
            doomed_logs.join("\n")
        );
    }
    assert!(relayed(&redis, "orders.dlq").is_empty(), "dead letters");
}

/// A consumer whose first command claims a dead consumer's entries (they were idle longer than
/// `claim_idle_ms` when it started) reads its own backlog through and then takes new entries: it
/// used to keep reading its own backlog after the first page and never take a new entry.
#[test]
fn a_consumer_that_claims_before_its_first_read_still_takes_new_entries() {
    let redis = RedisServer::start();
    let (app, options) = app_with(&redis, 50, 4);
    let add = |from: usize, to: usize| {
        let mut connection = connection(&redis);
        for i in from..to {
            let _: String = redis::cmd("XADD")
                .arg("orders")
                .arg("*")
                .arg("key")
                .arg(format!("k{}", i % 7))
                .arg("payload")
                .arg(format!("sleep:25/{i}"))
                .query(&mut connection)
                .unwrap();
        }
    };
    add(0, 300);
    let mut dead = host(&app, &options, "dead");
    common::wait_until("the first host handles some entries", || {
        relayed(&redis, "seen.orders").len() >= 10
    });
    dead.kill();
    // Past claim_idle_ms (1 s): what the dead host held is claimable at the next start.
    std::thread::sleep(Duration::from_millis(1500));
    add(300, 400);
    let survivor = host(&app, &options, "survivor");
    for _ in 0..600 {
        if relayed(&redis, "seen.orders").len() == 400 && pending(&redis).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = relayed(&redis, "seen.orders");
    assert_eq!(
        seen.len(),
        400,
        "every entry handled, the new ones too; pending: {:?}\n{}",
        pending(&redis),
        survivor.stderr()
    );
}
