//! The AI chat's answering side: a `[[trigger.redis-stream]]` on `chat.questions` delivers each
//! question `chat` stored; this component answers it and stores the answer (RAG).
//!
//! 1. embed the question (`multilingual-e5-small:query`);
//! 2. search the `reviews` index for the nearest reviews **of that store** (the filter applies
//!    inside the search, so a store with three reviews among 600k gets its three);
//! 3. count the store's reviews by sentiment;
//! 4. ask the LLM (`fermyon:spin/llm` `infer`) with a prompt holding the reviews and the counts.
//!    Without an LLM (`model-not-supported`: no `[llm_compute]`) the answer is extractive: the
//!    counts and the most relevant reviews. An LLM that fails or times out gives the extractive
//!    answer too, with `llm_error` saying why;
//! 5. store the answer and publish `chat.answers` in one transaction.
//!
//! Redeliveries are harmless: an answered chat is left alone. Embedding or search failures are
//! retried by the trigger (`Err`) until `chat_max_attempts`, then the chat ends `failed`.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "moa:host/event-handler-variables",
        generate_all,
    });
}

use bindings::exports::moa::messaging::handler::{Delivery, Guest};
use bindings::fermyon::spin::variables;
use moa_sdk::documents::{Find, Ops, Store};
use moa_sdk::messaging::Message;
use moa_sdk::vectors::{Index, Search};
use serde_json::{Value, json};
use spin_sdk::llm::{self, EmbeddingModel, InferencingModel, InferencingParams};

const CHATS: &str = "chats";
const REVIEWS: &str = "reviews";
const ANSWERS: &str = "chat.answers";
const QUERY_MODEL: &str = "multilingual-e5-small:query";
const FINAL_STATES: [&str; 2] = ["answered", "failed"];
/// Reviews quoted in an extractive answer.
const EXTRACTIVE_QUOTES: usize = 3;
/// A review's text in the prompt is cut to this many characters.
const PROMPT_REVIEW_CHARS: usize = 300;

struct AiChat;

struct Settings {
    model: String,
    top_k: u32,
    max_attempts: u32,
    max_tokens: u32,
}

impl Settings {
    fn from_variables() -> Settings {
        let get = |name: &str| variables::get(name).ok();
        let number = |name: &str, default: u32| {
            get(name)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Settings {
            model: get("chat_model").unwrap_or_else(|| "gpt-4o-mini".into()),
            top_k: number("chat_top_k", 5).min(20),
            max_attempts: number("chat_max_attempts", 3),
            max_tokens: number("chat_max_tokens", 400),
        }
    }
}

/// Why a question could not be answered now.
enum Failure {
    /// Worth another delivery (the model runtime or the index was unavailable).
    Transient(String),
    /// Will not get better.
    Final(String),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn store_error(error: moa_sdk::documents::Error) -> String {
    let (kind, message) = moa_sdk::documents::kind_and_message(&error);
    format!("documents {kind}: {message}")
}

impl Guest for AiChat {
    fn handle(delivery: Delivery) -> Result<(), String> {
        let request: Value = serde_json::from_slice(&delivery.message.payload)
            .map_err(|e| format!("not a chat question: {e}"))?;
        let chat_id = request["chat_id"]
            .as_str()
            .ok_or("a chat question without chat_id")?
            .to_string();
        let store = Store::open("default").map_err(store_error)?;
        let Some(chat): Option<Value> = store
            .find_one(CHATS, json!({ "_id": chat_id }))
            .map_err(store_error)?
        else {
            // The question commits before its message is published, so this is a stray message.
            eprintln!("chat {chat_id} does not exist; message ignored");
            return Ok(());
        };
        if FINAL_STATES.contains(&chat["state"].as_str().unwrap_or_default()) {
            return Ok(());
        }
        let settings = Settings::from_variables();
        store
            .update_one(
                CHATS,
                json!({ "_id": chat_id, "state": { "$nin": FINAL_STATES } }),
                json!({ "$set": { "state": "answering", "attempt": delivery.attempt, "updated_at_ms": now_ms() } }),
            )
            .map_err(store_error)?;
        let outcome = match answer(&store, &chat, &settings) {
            Ok(answer) => answer,
            Err(Failure::Transient(why)) if delivery.attempt < settings.max_attempts => {
                return Err(why);
            }
            Err(Failure::Transient(why) | Failure::Final(why)) => json!({
                "state": "failed", "error": why,
            }),
        };
        finish(&store, &chat_id, outcome)
    }
}

/// Stores the outcome and publishes it, unless another delivery finished first.
fn finish(store: &Store, chat_id: &str, mut outcome: Value) -> Result<(), String> {
    outcome["updated_at_ms"] = json!(now_ms());
    let state = outcome["state"].clone();
    let mode = outcome.get("mode").cloned().unwrap_or(Value::Null);
    store
        .transaction(|tx| {
            let changed = tx.update_one(
                CHATS,
                json!({ "_id": chat_id, "state": { "$nin": FINAL_STATES } }),
                json!({ "$set": outcome }),
            )?;
            if changed.matched > 0 {
                tx.publish(
                    Message::new(
                        ANSWERS,
                        json!({ "chat_id": chat_id, "state": state, "mode": mode }).to_string(),
                    )
                    .with_key(chat_id.to_string()),
                )?;
            }
            Ok(())
        })
        .map_err(store_error)
}

struct Source {
    review_id: String,
    score: f32,
    text: String,
    rating: Option<i64>,
    sentiment: Option<String>,
    date: Option<String>,
}

fn answer(store: &Store, chat: &Value, settings: &Settings) -> Result<Value, Failure> {
    let store_id = chat["store_id"].as_str().unwrap_or_default();
    let question = chat["question"].as_str().unwrap_or_default();

    let embedded =
        llm::generate_embeddings(EmbeddingModel::Other(QUERY_MODEL), &[question.to_string()])
            .map_err(|e| match e {
                llm::Error::RuntimeError(m) => {
                    Failure::Transient(format!("embedding_unavailable: {m}"))
                }
                other => Failure::Final(format!("embedding_failed: {other:?}")),
            })?;
    let vector = embedded
        .embeddings
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Final("embedding_failed: no vector".into()))?;

    let index = Index::open(REVIEWS).map_err(|e| Failure::Final(format!("index: {e:?}")))?;
    let matches = index
        .search(&Search::new(vector, settings.top_k).filter(json!({ "store_id": store_id })))
        .map_err(|e| {
            let (kind, message) = moa_sdk::vectors::kind_and_message(&e);
            let why = format!("search_{kind}: {message}");
            if kind == "unavailable" {
                Failure::Transient(why)
            } else {
                Failure::Final(why)
            }
        })?;
    let transient = |e: moa_sdk::documents::Error| Failure::Transient(store_error(e));
    let ids: Vec<&str> = matches.iter().map(|m| m.id.as_str()).collect();
    let found: Vec<Value> = store
        .find(
            REVIEWS,
            json!({ "_id": { "$in": ids } }),
            Find::default().projection(
                json!({ "text": 1, "rating": 1, "sentiment": 1, "date": 1, "store_name": 1 }),
            ),
        )
        .map_err(transient)?;
    let sources: Vec<Source> = matches
        .iter()
        .filter_map(|m| {
            let review = found.iter().find(|r| r["_id"] == m.id.as_str())?;
            Some(Source {
                review_id: m.id.clone(),
                score: m.score,
                text: review["text"].as_str().unwrap_or_default().to_string(),
                rating: review["rating"].as_i64(),
                sentiment: review["sentiment"].as_str().map(str::to_string),
                date: review["date"].as_str().map(str::to_string),
            })
        })
        .collect();
    let store_name = found
        .iter()
        .find_map(|r| r["store_name"].as_str())
        .map(str::to_string);

    let total = store
        .count(REVIEWS, json!({ "store_id": store_id }))
        .map_err(transient)?;
    let positive = store
        .count(
            REVIEWS,
            json!({ "store_id": store_id, "sentiment": "positive" }),
        )
        .map_err(transient)?;
    let negative = store
        .count(
            REVIEWS,
            json!({ "store_id": store_id, "sentiment": "negative" }),
        )
        .map_err(transient)?;
    let counts = Counts {
        total,
        positive,
        negative,
    };
    let name = store_name
        .clone()
        .unwrap_or_else(|| format!("가게 {store_id}"));
    let sources_json: Vec<Value> = sources
        .iter()
        .map(|s| {
            json!({ "review_id": s.review_id, "score": s.score, "text": s.text,
                    "rating": s.rating, "sentiment": s.sentiment, "date": s.date })
        })
        .collect();
    let mut answer = json!({
        "state": "answered",
        "store_name": store_name,
        "sentiment": { "total": total, "positive": positive, "negative": negative,
                       "unlabelled": total.saturating_sub(positive + negative) },
        "sources": sources_json,
    });
    if sources.is_empty() {
        answer["mode"] = json!("no_reviews");
        answer["answer"] = json!(format!("{name}에는 아직 리뷰가 없어 답할 수 없습니다."));
        return Ok(answer);
    }
    let prompt = prompt(&name, &counts, &sources, question);
    let params = InferencingParams {
        max_tokens: settings.max_tokens,
        repeat_penalty: 1.1,
        repeat_penalty_last_n_token_count: 64,
        temperature: 0.2,
        top_k: 40,
        top_p: 0.9,
    };
    match llm::infer_with_options(InferencingModel::Other(&settings.model), &prompt, params) {
        Ok(result) if !result.text.trim().is_empty() => {
            answer["mode"] = json!("llm");
            answer["model"] = json!(settings.model);
            answer["answer"] = json!(result.text.trim());
        }
        Ok(_) => {
            answer["mode"] = json!("extractive");
            answer["llm_error"] = json!("the LLM answered with an empty text");
            answer["answer"] = json!(extractive(&name, &counts, &sources));
        }
        Err(llm::Error::ModelNotSupported) => {
            answer["mode"] = json!("extractive");
            answer["answer"] = json!(extractive(&name, &counts, &sources));
        }
        Err(error) => {
            answer["mode"] = json!("extractive");
            answer["llm_error"] = json!(match error {
                llm::Error::RuntimeError(m) => m,
                llm::Error::InvalidInput(m) => format!("invalid input: {m}"),
                llm::Error::ModelNotSupported => String::new(),
            });
            answer["answer"] = json!(extractive(&name, &counts, &sources));
        }
    }
    Ok(answer)
}

struct Counts {
    total: u64,
    positive: u64,
    negative: u64,
}

fn sentiment_word(sentiment: Option<&str>) -> &'static str {
    match sentiment {
        Some("positive") => "긍정",
        Some("negative") => "부정",
        _ => "미분류",
    }
}

fn rating_text(rating: Option<i64>) -> String {
    rating.map_or_else(|| "평점 없음".to_string(), |r| format!("{r}/10"))
}

fn cut(text: &str, chars: usize) -> String {
    let mut out: String = text.chars().take(chars).collect();
    if text.chars().count() > chars {
        out.push('…');
    }
    out
}

fn counts_line(counts: &Counts) -> String {
    format!(
        "리뷰 {}개: 긍정 {}개, 부정 {}개, 미분류 {}개",
        counts.total,
        counts.positive,
        counts.negative,
        counts
            .total
            .saturating_sub(counts.positive + counts.negative)
    )
}

/// The prompt: instructions, the store's counts, the retrieved reviews (one `- ` line each) and
/// the question.
fn prompt(name: &str, counts: &Counts, sources: &[Source], question: &str) -> String {
    let mut text = String::from(
        "당신은 음식 주문 앱의 리뷰 도우미입니다. 아래 가게 리뷰만 근거로 고객의 질문에 한국어로 \
         두세 문장으로 답하세요. 리뷰에 없는 내용은 알 수 없다고 답하세요.\n\n",
    );
    text.push_str(&format!(
        "가게: {name}\n{}\n\n관련 리뷰:\n",
        counts_line(counts)
    ));
    for source in sources {
        text.push_str(&format!(
            "- [{}, {}] {}\n",
            rating_text(source.rating),
            sentiment_word(source.sentiment.as_deref()),
            cut(&source.text, PROMPT_REVIEW_CHARS)
        ));
    }
    text.push_str(&format!("\n질문: {question}\n답변:"));
    text
}

/// The answer without an LLM: the counts and the most relevant reviews, quoted.
fn extractive(name: &str, counts: &Counts, sources: &[Source]) -> String {
    let mut text = format!(
        "{name}의 {}.\n질문과 가장 관련 있는 리뷰:",
        counts_line(counts)
    );
    for (i, source) in sources.iter().take(EXTRACTIVE_QUOTES).enumerate() {
        text.push_str(&format!(
            "\n{}. \"{}\" ({}, {})",
            i + 1,
            cut(&source.text, PROMPT_REVIEW_CHARS),
            rating_text(source.rating),
            sentiment_word(source.sentiment.as_deref())
        ));
    }
    text
}

bindings::export!(AiChat with_types_in bindings);
