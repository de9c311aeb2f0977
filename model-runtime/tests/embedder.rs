//! The embedding backend on the real default model (multilingual-e5-small from
//! scripts/fetch-model.sh) through the real ONNX Runtime library: shape, normalisation, determinism,
//! padding-independence, Korean similarity, input limits, and KorSTS quality through Rust.

use moa_model_runtime::eval::{self, read_sts};
use moa_model_runtime::{EmbedError, EmbedOptions, Embedder, EmbedderSettings, init_onnxruntime};
use std::path::PathBuf;
use std::sync::OnceLock;

fn cache() -> PathBuf {
    std::env::var_os("MOA_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/moa"))
}

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let library = std::env::var_os("MOA_ORT_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache().join("onnxruntime/libonnxruntime.so"));
        let model = std::env::var_os("MOA_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache().join("models/multilingual-e5-small"));
        let environment = init_onnxruntime(&library)
            .expect("ONNX Runtime is missing: run scripts/fetch-model.sh (scripts/test.sh does)");
        Embedder::load(&environment, &model, EmbedderSettings::default())
            .expect("the model is missing: run scripts/fetch-model.sh")
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vectors_have_the_model_dimension_are_normalized_and_deterministic() {
    let e = embedder();
    let texts = ["배달이 빨라서 좋았어요", "국물이 짜요"];
    let first = e.embed(&texts, &EmbedOptions::default()).unwrap();
    let second = e.embed(&texts, &EmbedOptions::default()).unwrap();
    assert_eq!(first.len(), 2);
    for v in &first {
        assert_eq!(v.len(), e.config().dimension);
        let norm = cosine(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert_eq!(first, second, "same input, same bits");
    let raw = e
        .embed(
            &texts[..1],
            &EmbedOptions {
                normalize: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    assert!((cosine(&raw[0], &raw[0]).sqrt() - 1.0).abs() > 1e-2);
}

#[test]
fn a_text_gets_the_same_vector_alone_and_in_a_padded_batch() {
    let e = embedder();
    let short = "맛있어요";
    let alone = e.embed(&[short], &EmbedOptions::default()).unwrap();
    let batch = e
        .embed(
            &[
                "치킨이 식어서 왔고 포장도 엉망이었지만 사장님이 친절하게 환불해 주셨어요",
                short,
            ],
            &EmbedOptions::default(),
        )
        .unwrap();
    assert!(cosine(&alone[0], &batch[1]) > 0.9999);
}

#[test]
fn similar_korean_sentences_are_closer_than_unrelated_ones() {
    let e = embedder();
    let v = e
        .embed(
            &[
                "배달이 너무 늦게 왔어요",
                "음식이 한 시간 넘게 걸려서 도착했어요",
                "이 식당은 주차하기 편해요",
            ],
            &EmbedOptions::default(),
        )
        .unwrap();
    let (similar, unrelated) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(similar > unrelated + 0.02, "{similar} vs {unrelated}");
}

#[test]
fn too_long_texts_are_refused_unless_truncation_is_asked_for() {
    let e = embedder();
    let long = "맛있는 치킨 ".repeat(600);
    match e.embed(&[long.as_str()], &EmbedOptions::default()) {
        Err(EmbedError::TooLong { index, tokens, max }) => {
            assert_eq!((index, max), (0, 512));
            assert!(tokens > 512);
        }
        other => panic!("expected TooLong, got {:?}", other.map(|v| v.len())),
    }
    let options = EmbedOptions {
        truncate: true,
        ..Default::default()
    };
    let ids = e.tokenize(&[long.as_str()], &options).unwrap();
    assert_eq!(ids[0].len(), 512);
    assert_eq!(e.embed(&[long.as_str()], &options).unwrap()[0].len(), 384);
}

#[test]
fn korsts_quality_through_the_rust_path() {
    // The package directory as cargo gives it when running the test (the compile-time value can
    // name another clone when build outputs are shared).
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let path = package.join("../../shared/data/korsts-dev.tsv");
    assert!(
        path.exists(),
        "{} is missing (CI has ../shared beside the clone)",
        path.display()
    );
    // The first 400 pairs keep the test short; scripts/eval-korsts.sh measures all of them.
    let pairs = read_sts(&path).unwrap();
    let pairs = &pairs[..400];
    let e = embedder();
    let (mut gold, mut sims) = (Vec::new(), Vec::new());
    for chunk in pairs.chunks(32) {
        let a: Vec<&str> = chunk.iter().map(|p| p.first.as_str()).collect();
        let b: Vec<&str> = chunk.iter().map(|p| p.second.as_str()).collect();
        let (va, vb) = (
            e.embed(&a, &EmbedOptions::default()).unwrap(),
            e.embed(&b, &EmbedOptions::default()).unwrap(),
        );
        for (i, pair) in chunk.iter().enumerate() {
            gold.push(pair.score);
            sims.push(eval::cosine(&va[i], &vb[i]));
        }
    }
    let score = eval::spearman(&gold, &sims);
    eprintln!(
        "KorSTS dev, first {} pairs: spearman {score:.2}",
        pairs.len()
    );
    assert!(score >= 75.0, "spearman {score:.2}");
}
