//! The review job (`[[trigger.job]] review-import`): each chunk of raw reviews
//! (`{"review_id", "movie_id" | "store_id", "rating", "date", "text"}`) is cleaned, labelled,
//! denormalised with its store's name, embedded in one `generate-embeddings` call (the model
//! runtime batches it), and written as `reviews` documents (in the chunk's transaction) and vectors
//! of the `reviews` index (idempotent by review id, so a repeated chunk changes nothing).
//!
//! Sentiment: ratings 1-4 negative and 9-10 positive; other reviews get the text classifier's label
//! when the job's `sentiment_model` parameter names the classifier file mounted into the component
//! (`sentiment-e5-small.json`, trained by `scripts/eval-sentiment.sh`).

wit_bindgen::generate!({
    path: "../../wit",
    world: "moa:jobs/job-component",
    with: {
        "moa:documents/documents@0.1.0": moa_sdk::wit::documents::documents,
        "moa:documents/types@0.1.0": moa_sdk::wit::documents::types,
        "moa:messaging/types@0.1.0": moa_sdk::wit::messaging::types,
    },
});

use exports::moa::jobs::chunk_processor::Guest;
use moa::jobs::types::{ChunkError, JobContext, SkippedRecord};
use moa_sdk::documents::{Find, LentTransaction, Ops};
use moa_sdk::vectors::{Index, Item};
use moa_sdk::wit::documents::documents::Transaction;
use review_text::{Sentiment, clean};
use serde_json::{Value, json};
use spin_sdk::llm::{self, EmbeddingModel};
use std::collections::BTreeMap;

/// The embedding model and prefix reviews are stored with (questions use `:query`).
const PASSAGE_MODEL: &str = "multilingual-e5-small:passage";

struct ReviewJob;

/// A raw review, checked.
struct Review {
    id: String,
    store_id: String,
    rating: Option<i64>,
    date: Option<String>,
    text: String,
}

fn text_field(record: &Value, key: &str) -> Option<String> {
    match record.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Review, String> {
    let record: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let id = text_field(&record, "review_id").ok_or("no review_id")?;
    let store_id = text_field(&record, "store_id")
        .or_else(|| text_field(&record, "movie_id"))
        .ok_or("no store_id (or movie_id)")?;
    let raw = record
        .get("text")
        .and_then(Value::as_str)
        .ok_or("no text")?;
    let text = clean(raw).ok_or("text is empty after cleaning")?;
    let rating = match record.get("rating") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_i64()
                .filter(|r| (1..=10).contains(r))
                .ok_or_else(|| format!("rating {value} is not 1-10"))?,
        ),
    };
    Ok(Review {
        id,
        store_id,
        rating,
        date: text_field(&record, "date"),
        text,
    })
}

/// The sentiment classifier `scripts/eval-sentiment.sh` trains: a logistic regression over the
/// cleaned text's hashed n-grams (`review_text::sentiment_features`) and the passage embedding.
#[derive(serde::Deserialize)]
struct ClassifierFile {
    ngram_bits: u32,
    ngram_weights: Vec<(u32, f32)>,
    embedding_weights: Vec<f32>,
    bias: f32,
}

struct Classifier {
    bits: u32,
    ngrams: Vec<f32>,
    embedding: Vec<f32>,
    bias: f32,
}

impl Classifier {
    fn load(path: &str) -> Result<Classifier, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the sentiment model {path}: {e}"))?;
        let file: ClassifierFile =
            serde_json::from_str(&text).map_err(|e| format!("sentiment model {path}: {e}"))?;
        if file.ngram_bits > 24 {
            return Err(format!(
                "sentiment model {path}: ngram_bits {} is too large",
                file.ngram_bits
            ));
        }
        let mut ngrams = vec![0.0; 1 << file.ngram_bits];
        for (bucket, weight) in file.ngram_weights {
            if let Some(slot) = ngrams.get_mut(bucket as usize) {
                *slot = weight;
            }
        }
        Ok(Classifier {
            bits: file.ngram_bits,
            ngrams,
            embedding: file.embedding_weights,
            bias: file.bias,
        })
    }

    /// Probability that the review is positive.
    fn positive(&self, text: &str, vector: &[f32]) -> f32 {
        let features = review_text::sentiment_features(text, self.bits);
        let scale = 1.0 / (features.len().max(1) as f32).sqrt();
        let grams: f32 = features
            .iter()
            .map(|b| self.ngrams[*b as usize])
            .sum::<f32>()
            * scale;
        let embedding: f32 = self.embedding.iter().zip(vector).map(|(w, x)| w * x).sum();
        1.0 / (1.0 + (-(self.bias + grams + embedding)).exp())
    }
}

fn parameter<'a>(context: &'a JobContext, name: &str) -> Option<&'a str> {
    context
        .parameters
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn document_error(error: moa_sdk::documents::Error) -> ChunkError {
    use moa_sdk::documents::Error;
    match error {
        Error::WriteConflict(m) | Error::Unavailable(m) => ChunkError::Transient(m),
        other => ChunkError::Failed(format!("documents: {other:?}")),
    }
}

impl Guest for ReviewJob {
    fn process_chunk(
        context: JobContext,
        records: Vec<String>,
        tx: &Transaction,
    ) -> Result<Vec<SkippedRecord>, ChunkError> {
        let mut skipped = Vec::new();
        let mut reviews = Vec::with_capacity(records.len());
        for (index, text) in records.iter().enumerate() {
            match parse(text) {
                Ok(review) => reviews.push(review),
                Err(reason) => skipped.push(SkippedRecord {
                    index: index as u32,
                    reason,
                }),
            }
        }
        if reviews.is_empty() {
            return Ok(skipped);
        }
        let classifier = match parameter(&context, "sentiment_model") {
            Some(path) => Some(Classifier::load(path).map_err(ChunkError::Fatal)?),
            None => None,
        };

        // One call for the chunk: the model runtime batches it with the other workers' chunks.
        let texts: Vec<String> = reviews.iter().map(|r| r.text.clone()).collect();
        let embedded = llm::generate_embeddings(EmbeddingModel::Other(PASSAGE_MODEL), &texts)
            .map_err(|error| match error {
                llm::Error::RuntimeError(m) => ChunkError::Transient(format!("embeddings: {m}")),
                // No review can be embedded until the operator serves or grants the model.
                llm::Error::ModelNotSupported => ChunkError::Fatal(format!(
                    "embeddings: `{PASSAGE_MODEL}` is not served here (ai_models, [embedding] in the runtime config)"
                )),
                other => ChunkError::Failed(format!("embeddings: {other:?}")),
            })?;
        if embedded.embeddings.len() != reviews.len() {
            return Err(ChunkError::Failed(format!(
                "{} embeddings for {} reviews",
                embedded.embeddings.len(),
                reviews.len()
            )));
        }

        let tx = LentTransaction::new(tx);
        let store_ids: Vec<&str> = reviews.iter().map(|r| r.store_id.as_str()).collect();
        let stores: Vec<Value> = tx
            .find(
                "stores",
                json!({"_id": {"$in": store_ids}}),
                Find::default().projection(json!({"name": 1})),
            )
            .map_err(document_error)?;
        let names: BTreeMap<String, String> = stores
            .iter()
            .filter_map(|s| {
                Some((
                    s["_id"].as_str()?.to_string(),
                    s["name"].as_str()?.to_string(),
                ))
            })
            .collect();

        let mut documents = Vec::with_capacity(reviews.len());
        let mut items = Vec::with_capacity(reviews.len());
        for (review, vector) in reviews.iter().zip(embedded.embeddings) {
            let (sentiment, source, confidence) =
                match review.rating.and_then(Sentiment::from_rating) {
                    Some(label) => (Some(label), "rating", 1.0),
                    None => match &classifier {
                        Some(model) => {
                            let p = model.positive(&review.text, &vector);
                            let label = if p >= 0.5 {
                                Sentiment::Positive
                            } else {
                                Sentiment::Negative
                            };
                            (Some(label), "classifier", p.max(1.0 - p))
                        }
                        None => (None, "none", 0.0),
                    },
                };
            let sentiment = sentiment.map(Sentiment::as_str);
            documents.push(json!({
                "_id": review.id,
                "store_id": review.store_id,
                "store_name": names.get(&review.store_id),
                "rating": review.rating,
                "date": review.date,
                "text": review.text,
                "sentiment": sentiment,
                "sentiment_source": source,
                "sentiment_confidence": confidence,
            }));
            items.push(Item::new(
                review.id.clone(),
                vector,
                json!({"store_id": review.store_id, "sentiment": sentiment, "rating": review.rating}),
            ));
        }
        let ids: Vec<&str> = reviews.iter().map(|r| r.id.as_str()).collect();
        tx.delete_many("reviews", json!({"_id": {"$in": ids}}))
            .map_err(document_error)?;
        tx.insert_many("reviews", &documents)
            .map_err(document_error)?;
        let label = parameter(&context, "index").unwrap_or("reviews");
        let index = Index::open(label).map_err(|error| match error {
            moa_sdk::vectors::Error::Unavailable(m) => {
                ChunkError::Transient(format!("vectors: {m}"))
            }
            // Not granted or not configured: no chunk can be written until that is fixed.
            other => ChunkError::Fatal(format!("vectors: index `{label}`: {other:?}")),
        })?;
        index.upsert(&items).map_err(|error| match error {
            moa_sdk::vectors::Error::Unavailable(m) => {
                ChunkError::Transient(format!("vectors: {m}"))
            }
            other => ChunkError::Failed(format!("vectors: {other:?}")),
        })?;
        Ok(skipped)
    }
}

export!(ReviewJob);
