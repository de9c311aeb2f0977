//! The AI chat's retrieval, evaluated: questions about stores are embedded (`query` prefix) by a
//! running model runtime and searched in moa's embedded index with the store filter inside the
//! search, as `ai-chat` does; the retrieved reviews are graded by documented keyword and sentiment
//! rules. `scripts/eval-retrieval.sh` runs it.
//!
//! usage: eval_retrieval ENDPOINT DIR [--questions N] [--k K]
//!   DIR holds vectors.f32 and meta.jsonl (embed_reviews: review id, store id, rating, text).
//!
//! Per question: store precision (the share of retrieved reviews of the asked store), whether a
//! store with reviews got none, and nDCG@k against the rules' grades. The same questions through
//! the seed's retrieval (a global top-100, then the store filter) and the store's first reviews in
//! file order (no retrieval at all) are the baselines. Ends with `RESULT retrieval store_precision=… ndcg10=… n=…`.

#[path = "support/review_vectors.rs"]
mod review_vectors;

use moa::capabilities::vectors::{
    EmbeddedIndex, EmbeddedSettings, Metric, VectorBackend, parse_search,
};
use moa_model_runtime::{ClientSettings, EmbedCall, RemoteRuntime, TextKind, client};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A question about one aspect of a store, and how its answers are graded: a review mentioning
/// one of `keywords` is relevant (grade 1); with a rating on the side of `polarity` it is grade 2.
struct Aspect {
    question: &'static str,
    keywords: &'static [&'static str],
    polarity: Option<Sentiment>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sentiment {
    Positive,
    Negative,
}

/// NSMC reviews are movie reviews (movie_id is the store id), so the aspects are a film's.
const ASPECTS: &[Aspect] = &[
    Aspect {
        question: "배우들 연기는 어떤가요?",
        keywords: &["연기", "배우", "주연", "캐스팅"],
        polarity: None,
    },
    Aspect {
        question: "스토리나 내용이 탄탄한가요?",
        keywords: &["스토리", "내용", "줄거리", "전개", "결말", "각본"],
        polarity: None,
    },
    Aspect {
        question: "음악이나 OST는 좋은가요?",
        keywords: &["음악", "ost", "노래", "음향", "사운드"],
        polarity: Some(Sentiment::Positive),
    },
    Aspect {
        question: "영상미나 CG는 어떤가요?",
        keywords: &["영상", "cg", "화면", "연출", "액션"],
        polarity: None,
    },
    Aspect {
        question: "지루하지 않나요?",
        keywords: &["지루", "졸려", "졸았", "졸림", "노잼", "재미없", "따분"],
        polarity: Some(Sentiment::Negative),
    },
    Aspect {
        question: "감동적인가요?",
        keywords: &["감동", "눈물", "울었", "여운", "뭉클"],
        polarity: Some(Sentiment::Positive),
    },
    Aspect {
        question: "추천할 만한가요?",
        keywords: &["추천", "강추", "꼭 보세요", "꼭보세요"],
        polarity: Some(Sentiment::Positive),
    },
];

fn sentiment_of(rating: Option<i64>) -> Option<Sentiment> {
    match rating? {
        1..=4 => Some(Sentiment::Negative),
        9..=10 => Some(Sentiment::Positive),
        _ => None,
    }
}

fn grade(aspect: &Aspect, text: &str, rating: Option<i64>) -> u32 {
    let text = text.to_lowercase();
    if !aspect.keywords.iter().any(|k| text.contains(k)) {
        return 0;
    }
    match aspect.polarity {
        Some(p) if sentiment_of(rating) == Some(p) => 2,
        _ => 1,
    }
}

fn dcg(grades: impl Iterator<Item = u32>) -> f64 {
    grades
        .enumerate()
        .map(|(i, g)| (2f64.powi(g as i32) - 1.0) / ((i + 2) as f64).log2())
        .sum()
}

/// nDCG@k of `retrieved` (grades in retrieved order) against every grade of the store.
fn ndcg(retrieved: &[u32], all: &[u32], k: usize) -> f64 {
    let mut ideal = all.to_vec();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let best = dcg(ideal.into_iter().take(k));
    if best == 0.0 {
        return 0.0;
    }
    dcg(retrieved.iter().copied().take(k)) / best
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, dir, ..] = args.as_slice() else {
        anyhow::bail!("usage: eval_retrieval ENDPOINT DIR [--questions N] [--k K]");
    };
    let (max_questions, k) = (
        review_vectors::number(&args, "--questions", 700),
        review_vectors::number(&args, "--k", 10),
    );

    let loaded = review_vectors::load(dir)?;
    let (meta, dims) = (&loaded.meta, loaded.dims);
    let store_of = |i: usize| meta[i]["store_id"].as_str().unwrap_or_default().to_string();
    let mut stores: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in 0..meta.len() {
        stores.entry(store_of(i)).or_default().push(i);
    }
    eprintln!(
        "{} reviews of {} stores, {dims} dimensions",
        meta.len(),
        stores.len()
    );

    // moa's index, as the review job fills it (cosine, store id in the metadata).
    let work = tempfile::tempdir()?;
    let mut settings = EmbeddedSettings::new(work.path().join("index"));
    settings.metric = Metric::Cosine;
    let index = EmbeddedIndex::open(settings)?;
    let backend: Arc<dyn VectorBackend> = Arc::new(index.clone());
    loaded.fill(backend.as_ref(), meta.len()).await?;

    client::wait_until_serving(endpoint, Duration::from_secs(120)).await?;
    let remote = RemoteRuntime::connect_lazy(endpoint, ClientSettings::default())?;
    let questions = remote
        .embed(EmbedCall {
            texts: ASPECTS.iter().map(|a| a.question.to_string()).collect(),
            kind: TextKind::Query,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("embedding the questions: {e}"))?
        .vectors;

    // The questions: for stores with at least 10 reviews, each aspect the store has a relevant
    // review for (round robin over aspects); plus every store with 1-3 reviews (precision only).
    let mut asked: Vec<(String, usize)> = Vec::new();
    let mut turn = 0usize;
    for (store, members) in &stores {
        if members.len() < 10 {
            continue;
        }
        for offset in 0..ASPECTS.len() {
            let a = (turn + offset) % ASPECTS.len();
            let relevant = members.iter().any(|&i| {
                grade(
                    &ASPECTS[a],
                    meta[i]["text"].as_str().unwrap_or_default(),
                    meta[i]["rating"].as_i64(),
                ) > 0
            });
            if relevant {
                asked.push((store.clone(), a));
                break;
            }
        }
        turn += 1;
        if asked.len() >= max_questions {
            break;
        }
    }
    let small: Vec<&String> = stores
        .iter()
        .filter(|(_, m)| (1..=3).contains(&m.len()))
        .map(|(s, _)| s)
        .take(300)
        .collect();

    let search = |vector: &[f32], limit: u32, filter: Option<String>, candidates: Option<u32>| {
        let request = parse_search(vector.to_vec(), limit, filter.as_deref(), candidates, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (found, _) = index
            .search_blocking(&request)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(
            found
                .iter()
                .filter_map(|m| m.id.parse::<usize>().ok())
                .collect::<Vec<usize>>(),
        )
    };
    let grades_of = |a: usize, ids: &[usize]| -> Vec<u32> {
        ids.iter()
            .map(|&i| {
                grade(
                    &ASPECTS[a],
                    meta[i]["text"].as_str().unwrap_or_default(),
                    meta[i]["rating"].as_i64(),
                )
            })
            .collect()
    };

    let (mut retrieved, mut own, mut empty) = (0usize, 0usize, 0usize);
    let (mut ndcg_moa, mut ndcg_post, mut ndcg_first) = (0.0, 0.0, 0.0);
    let mut post_empty = 0usize;
    for (store, a) in &asked {
        let filter = json!({"store_id": store}).to_string();
        let found = search(&questions[*a], k as u32, Some(filter), None)?;
        retrieved += found.len();
        own += found.iter().filter(|&&i| store_of(i) == *store).count();
        if found.is_empty() {
            empty += 1;
        }
        let all = grades_of(*a, &stores[store]);
        ndcg_moa += ndcg(&grades_of(*a, &found), &all, k);
        // The seed's retrieval: the global top 100, then the store's among them.
        let global = search(&questions[*a], 100, None, Some(100))?;
        let post: Vec<usize> = global
            .into_iter()
            .filter(|&i| store_of(i) == *store)
            .take(k)
            .collect();
        if post.is_empty() {
            post_empty += 1;
        }
        ndcg_post += ndcg(&grades_of(*a, &post), &all, k);
        // No retrieval: the store's first reviews in file order.
        ndcg_first += ndcg(&all[..all.len().min(k)], &all, k);
    }
    let mut small_empty = 0usize;
    for (round, store) in small.iter().enumerate() {
        let filter = json!({"store_id": store}).to_string();
        let found = search(
            &questions[round % ASPECTS.len()],
            k as u32,
            Some(filter),
            None,
        )?;
        retrieved += found.len();
        own += found.iter().filter(|&&i| store_of(i) == **store).count();
        if found.len() != stores[*store].len() {
            small_empty += 1;
        }
    }
    let n = asked.len();
    let precision = own as f64 / retrieved.max(1) as f64;
    println!(
        "questions={n} small_stores={} retrieved={retrieved} empty={empty} small_incomplete={small_empty}",
        small.len()
    );
    println!(
        "baseline postfilter_top100 ndcg10={:.4} empty_share={:.4}",
        ndcg_post / n.max(1) as f64,
        post_empty as f64 / n.max(1) as f64
    );
    println!(
        "baseline first_reviews ndcg10={:.4}",
        ndcg_first / n.max(1) as f64
    );
    println!(
        "RESULT retrieval store_precision={precision:.4} ndcg10={:.4} n={n}",
        ndcg_moa / n.max(1) as f64
    );
    if precision < 1.0 || empty > 0 || small_empty > 0 {
        anyhow::bail!("a store's search returned reviews of another store, or missed its own");
    }
    Ok(())
}
