//! The vectors capability against a real `moa up` with the embedded index: every operation through
//! the guest SDK, a filter that finds a store's three items among thousands, grants and bad input
//! that change nothing, and an index that survives the host being killed (replayed at start) and
//! stopped (snapshotted).

mod common;

use common::{AppDir, Moa, Options};
use reqwest::Method;
use serde_json::{Value, json};

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "vectors"
[[trigger.http]]
route = "/run"
component = "vecprobe"
[[trigger.http]]
route = "/stranger"
component = "stranger"
[component.vecprobe]
source = "{vecprobe}"
vector_indexes = ["reviews", "tuned"]
[component.stranger]
source = "{vecprobe}"
"#;

const CONFIG: &str = r#"
[vector_index.tuned]
type = "embedded"
metric = "euclidean"
dimensions = 2
snapshot_interval_ms = 200
"#;

fn start(app: &AppDir) -> Moa {
    let rc = app.write("runtime-config.toml", CONFIG);
    Moa::start(app, Options::runtime_config(&rc))
}

fn run(moa: &Moa, path: &str, index: &str, ops: Value) -> Vec<Value> {
    let script = json!({ "index": index, "ops": ops });
    let (status, body) = moa.send(Method::POST, path, Some(script.to_string().into_bytes()));
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    reply["results"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{reply}"))
}

fn one(moa: &Moa, index: &str, op: Value) -> Value {
    run(moa, "/run", index, json!([op])).remove(0)
}

fn ok(result: &Value) -> &Value {
    result
        .get("ok")
        .unwrap_or_else(|| panic!("expected ok, got {result}"))
}

fn error_kind(result: &Value) -> &str {
    result["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {result}"))
}

/// A deterministic pseudo-random 8-d vector for item `i` (splitmix64).
fn vector(i: usize) -> Vec<f32> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..8)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// 3,000 reviews over 30 stores, plus store "tiny" with 3.
fn load_reviews(moa: &Moa) {
    let mut items: Vec<Value> = (0..3000)
        .map(|i| {
            json!({"id": format!("r{i}"), "vector": vector(i),
                   "metadata": {"store_id": format!("s{}", i % 30), "rating": i % 10 + 1}})
        })
        .collect();
    for i in 0..3 {
        items.push(
            json!({"id": format!("tiny{i}"), "vector": vector(10_000 + i),
                          "metadata": {"store_id": "tiny", "rating": 10}}),
        );
    }
    for chunk in items.chunks(500) {
        let result = one(moa, "reviews", json!({"op": "upsert", "items": chunk}));
        assert_eq!(ok(&result), chunk.len(), "{result}");
    }
}

fn ids(result: &Value) -> Vec<String> {
    ok(result)
        .as_array()
        .map(|found| {
            found
                .iter()
                .map(|m| m["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_embedded_index_serves_components_and_survives_restarts() {
    let app = AppDir::new(APP);
    let moa = start(&app);
    load_reviews(&moa);

    // Nearest first; an item's own vector is its nearest at score 1.
    let found = one(
        &moa,
        "reviews",
        json!({"op": "search", "vector": vector(1234), "limit": 5, "metadata": true}),
    );
    let matches = ok(&found).as_array().cloned().unwrap_or_default();
    assert_eq!(matches[0]["id"], "r1234", "{found}");
    assert!((matches[0]["score"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-4);
    assert_eq!(matches[0]["metadata"]["store_id"], "s4");
    assert!(
        matches
            .windows(2)
            .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64())
    );

    // The small store's three reviews, whatever the query, and nothing else.
    for probe in [0, 77, 2999] {
        let found = one(
            &moa,
            "reviews",
            json!({"op": "search", "vector": vector(probe), "limit": 10,
                                               "filter": {"store_id": "tiny"}}),
        );
        let mut got = ids(&found);
        got.sort();
        assert_eq!(got, ["tiny0", "tiny1", "tiny2"], "{found}");
    }
    // A filter with a range: every match holds it.
    let found = one(
        &moa,
        "reviews",
        json!({"op": "search", "vector": vector(5), "limit": 20, "metadata": true,
                                           "filter": {"store_id": "s5", "rating": {"$gte": 6}}}),
    );
    let matches = ok(&found).as_array().cloned().unwrap_or_default();
    assert_eq!(matches.len(), 20, "{found}");
    assert!(
        matches
            .iter()
            .all(|m| m["metadata"]["store_id"] == "s5"
                && m["metadata"]["rating"].as_i64() >= Some(6))
    );

    // get, replace, delete, info.
    let got = one(&moa, "reviews", json!({"op": "get", "id": "r7"}));
    assert_eq!(ok(&got)["metadata"], json!({"store_id": "s7", "rating": 8}));
    assert_eq!(ok(&got)["vector"].as_array().map(Vec::len), Some(8));
    let results = run(
        &moa,
        "/run",
        "reviews",
        json!([
            {"op": "upsert", "items": [{"id": "r7", "vector": vector(9_999), "metadata": {"store_id": "tiny", "rating": 1}}]},
            {"op": "delete", "ids": ["r8", "r9", "never"]},
            {"op": "get", "id": "r8"},
            {"op": "info"},
        ]),
    );
    assert_eq!(ok(&results[1]), 2);
    assert_eq!(ok(&results[2]), &Value::Null);
    assert_eq!(
        ok(&results[3]),
        &json!({"dimensions": 8, "metric": "cosine", "count": 3001, "backend": "embedded"})
    );

    // Bad input: typed errors, nothing changed.
    let results = run(
        &moa,
        "/run",
        "reviews",
        json!([
            {"op": "upsert", "items": [{"id": "ok", "vector": vector(1), "metadata": {}},
                                       {"id": "short", "vector": [1.0, 2.0], "metadata": {}}]},
            {"op": "upsert", "items": [{"id": "", "vector": vector(1), "metadata": {}}]},
            {"op": "upsert", "items": [{"id": "m", "vector": vector(1), "metadata": [1, 2]}]},
            {"op": "search", "vector": vector(1), "limit": 5, "filter": {"rating": {"$regex": "x"}}},
            {"op": "search", "vector": vector(1), "limit": 0},
            {"op": "search", "vector": [1.0], "limit": 3},
            {"op": "get", "id": "ok"},
            {"op": "info"},
        ]),
    );
    let kinds: Vec<&str> = results[..6].iter().map(error_kind).collect();
    assert_eq!(
        kinds,
        [
            "dimension-mismatch",
            "invalid-argument",
            "invalid-argument",
            "invalid-filter",
            "invalid-argument",
            "dimension-mismatch"
        ]
    );
    assert_eq!(
        ok(&results[6]),
        &Value::Null,
        "a refused batch stores none of its items"
    );
    assert_eq!(ok(&results[7])["count"], 3001);

    // Grants: an index the component does not list, and a component that lists none.
    let (status, body) = moa.send(
        Method::POST,
        "/stranger",
        Some(
            json!({"index": "reviews", "ops": []})
                .to_string()
                .into_bytes(),
        ),
    );
    assert_eq!(status, 200);
    assert!(body.contains("access-denied"), "{body}");
    let (_, body) = moa.send(
        Method::POST,
        "/run",
        Some(
            json!({"index": "secret", "ops": []})
                .to_string()
                .into_bytes(),
        ),
    );
    assert!(body.contains("access-denied"), "{body}");

    // The configured index: euclidean, fixed dimensions.
    let results = run(
        &moa,
        "/run",
        "tuned",
        json!([
            {"op": "upsert", "items": [{"id": "a", "vector": [0.0, 0.0], "metadata": {}},
                                       {"id": "b", "vector": [3.0, 4.0], "metadata": {}}]},
            {"op": "search", "vector": [0.0, 1.0], "limit": 2},
            {"op": "upsert", "items": [{"id": "c", "vector": [1.0, 2.0, 3.0], "metadata": {}}]},
        ]),
    );
    let found = ok(&results[1]).as_array().cloned().unwrap_or_default();
    assert_eq!(found[0]["id"], "a");
    // Euclidean score 1 / (1 + d²): d² = 1 -> 0.5; d² = 9 + 9 = 18 -> 1/19.
    assert!(
        (found[0]["score"].as_f64().unwrap_or(0.0) - 0.5).abs() < 1e-6,
        "{found:?}"
    );
    assert!(
        (found[1]["score"].as_f64().unwrap_or(0.0) - 1.0 / 19.0).abs() < 1e-6,
        "{found:?}"
    );
    assert_eq!(error_kind(&results[2]), "dimension-mismatch");

    let before_kill = one(
        &moa,
        "reviews",
        json!({"op": "search", "vector": vector(42), "limit": 10, "filter": {"rating": {"$lte": 3}}}),
    );

    // Killed (no shutdown snapshot): the next start replays what the last snapshot lacks.
    drop(moa);
    let moa = start(&app);
    let after_kill = one(
        &moa,
        "reviews",
        json!({"op": "search", "vector": vector(42), "limit": 10, "filter": {"rating": {"$lte": 3}}}),
    );
    assert_eq!(ids(&before_kill), ids(&after_kill));
    let tiny = one(
        &moa,
        "reviews",
        json!({"op": "search", "vector": vector(9_999), "limit": 10, "filter": {"store_id": "tiny"}}),
    );
    assert_eq!(
        ids(&tiny)[0],
        "r7",
        "the replaced item kept its new vector and metadata: {tiny}"
    );
    assert_eq!(ids(&tiny).len(), 4);
    assert_eq!(
        ok(&one(&moa, "reviews", json!({"op": "info"})))["count"],
        3001
    );
    assert_eq!(ok(&one(&moa, "tuned", json!({"op": "info"})))["count"], 2);

    // Stopped cleanly: it snapshots, and the next start says it replayed nothing.
    moa.stop();
    let moa = start(&app);
    // (stderr is read by a thread: give it a moment to catch up with stdout.)
    let loaded = |moa: &Moa| {
        moa.stderr().lines().any(|l| {
            l.contains("vector index loaded from its snapshot")
                && (l.contains("replayed=0") || l.contains("\"replayed\":0"))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !loaded(&moa) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(loaded(&moa), "{}", moa.stderr());
    let after_stop = one(
        &moa,
        "reviews",
        json!({"op": "search", "vector": vector(42), "limit": 10, "filter": {"rating": {"$lte": 3}}}),
    );
    assert_eq!(ids(&before_kill), ids(&after_stop));
}
