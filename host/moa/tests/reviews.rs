//! The review job end to end with the real model (in-process multilingual-e5-small): the first
//! reviews of the shared NSMC file plus bad lines, through `moa job run review-import`; then the
//! review documents (cleaned text, rating labels, store names), and the vectors searched with a
//! store filter through a component.

mod common;

use common::{AppDir, Moa, Options};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "reviews"
[[trigger.http]]
route = "/docs"
component = "docprobe"
[[trigger.http]]
route = "/vectors"
component = "vecprobe"
[[trigger.job]]
name = "review-import"
component = "review-job"
source = { type = "jsonl", path = "${input}" }
chunk_size = 32
range_chunks = 4
workers = 2
skip_limit = 10
[component.review-job]
source = "{review-job}"
files = [{ source = "models", destination = "/models" }]
document_stores = ["default"]
vector_indexes = ["reviews"]
ai_models = ["multilingual-e5-small"]
[component.docprobe]
source = "{docprobe}"
document_stores = ["default"]
[component.vecprobe]
source = "{vecprobe}"
vector_indexes = ["reviews"]
"#;

/// The first `n` lines of the shared review file (gzip'd JSON Lines).
fn first_reviews(n: usize) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/nsmc-reviews.jsonl.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .take(n)
        .map(|line| serde_json::from_str(&line.expect("a line")).expect("JSON"))
        .collect()
}

fn post(moa: &Moa, path: &str, body: Value) -> Value {
    let (status, text) = moa.send(Method::POST, path, Some(body.to_string().into_bytes()));
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn the_review_job_cleans_labels_embeds_and_indexes_reviews() {
    let app = AppDir::new(APP);
    let mut reviews = first_reviews(200);
    let mut lines: Vec<String> = reviews.iter().map(Value::to_string).collect();
    // Bad records: no text left after cleaning, no review id, a rating out of range.
    lines.push(
        json!({"review_id": "x1", "movie_id": "m", "rating": 9, "text": "😀🎉 https://a.b  "})
            .to_string(),
    );
    lines.push(json!({"movie_id": "m", "rating": 9, "text": "좋아요"}).to_string());
    lines.push(
        json!({"review_id": "x3", "movie_id": "m", "rating": 42, "text": "좋아요"}).to_string(),
    );
    // A noisy review, cleaned before it is stored.
    let noisy = json!({"review_id": "noisy", "movie_id": "10001", "rating": 10, "date": "15.08.25",
                       "text": "진짜 최고ㅋㅋㅋㅋㅋㅋ!!!!!! 👍 https://example.com/x"});
    lines.push(noisy.to_string());
    reviews.push(noisy);
    app.write("reviews.jsonl", &(lines.join("\n") + "\n"));
    // The trained classifier, mounted into the component for the reviews rated 5-8.
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../components/review-job/models/sentiment-e5-small.json");
    std::fs::create_dir_all(app.path().join("models")).expect("models dir");
    std::fs::copy(&model, app.path().join("models/sentiment-e5-small.json")).expect("model copied");

    let output = Command::new(env!("CARGO_BIN_EXE_moa"))
        .args([
            "job",
            "run",
            "review-import",
            "--param",
            "input=reviews.jsonl",
            "--param",
            "sentiment_model=/models/sentiment-e5-small.json",
            "--quiet",
            "-f",
        ])
        .arg(app.manifest())
        .arg("--state-dir")
        .arg(app.path().join(".moa"))
        .env("MOA_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("moa job runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("201 records written, 3 skipped"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = Command::new(env!("CARGO_BIN_EXE_moa"))
        .args(["job", "status", "review-import", "--skips", "-f"])
        .arg(app.manifest())
        .arg("--state-dir")
        .arg(app.path().join(".moa"))
        .output()
        .expect("status runs");
    let listing = String::from_utf8_lossy(&status.stdout);
    for reason in [
        "text is empty after cleaning",
        "no review_id",
        "rating 42 is not 1-10",
    ] {
        assert!(listing.contains(reason), "{reason}: {listing}");
    }

    let moa = Moa::start(&app, Options::default());
    let found = post(
        &moa,
        "/docs",
        json!({"ops": [{"op": "find", "collection": "reviews", "filter": {}}]}),
    );
    let documents = found["results"][0]["ok"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(documents.len(), 201);
    let noisy = documents
        .iter()
        .find(|d| d["_id"] == "noisy")
        .expect("the noisy review");
    assert_eq!(noisy["text"], "진짜 최고ㅋㅋ!!");
    assert_eq!(noisy["sentiment"], "positive");
    let mut classified = 0;
    for document in &documents {
        match document["rating"].as_i64().unwrap_or(0) {
            1..=4 => assert_eq!(document["sentiment"], "negative", "{document}"),
            9..=10 => assert_eq!(document["sentiment"], "positive", "{document}"),
            _ => {
                // Rated 5-8: the text classifier decides.
                assert_eq!(document["sentiment_source"], "classifier", "{document}");
                assert!(
                    ["positive", "negative"]
                        .contains(&document["sentiment"].as_str().unwrap_or(""))
                );
                let confidence = document["sentiment_confidence"].as_f64().unwrap_or(0.0);
                assert!((0.5..=1.0).contains(&confidence), "{document}");
                classified += 1;
            }
        }
    }
    assert!(classified > 0, "the sample has reviews rated 5-8");

    // The vectors: one per review, searchable with the store filter inside the search.
    let info = post(
        &moa,
        "/vectors",
        json!({"index": "reviews", "ops": [{"op": "info"}]}),
    );
    assert_eq!(info["results"][0]["ok"]["count"], 201, "{info}");
    assert_eq!(info["results"][0]["ok"]["dimensions"], 384, "{info}");
    let some_store = reviews[150]["movie_id"]
        .as_str()
        .expect("a store id")
        .to_string();
    let in_store = reviews
        .iter()
        .filter(|r| r["movie_id"] == some_store.as_str())
        .count();
    let probe = post(
        &moa,
        "/vectors",
        json!({"index": "reviews", "ops": [{"op": "get", "id": reviews[150]["review_id"]}]}),
    );
    let vector = probe["results"][0]["ok"]["vector"].clone();
    let hits = post(
        &moa,
        "/vectors",
        json!({"index": "reviews", "ops": [
            {"op": "search", "vector": vector, "limit": 500, "filter": {"store_id": some_store}, "metadata": true}
        ]}),
    );
    let hits = hits["results"][0]["ok"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        hits.len(),
        in_store,
        "every review of the store, and only those"
    );
    assert_eq!(
        hits[0]["id"], reviews[150]["review_id"],
        "its own vector is nearest"
    );
    assert!(
        hits.iter()
            .all(|h| h["metadata"]["store_id"] == some_store.as_str())
    );
}
