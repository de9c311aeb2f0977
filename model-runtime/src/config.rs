//! `moa.json`, the model's own description next to its ONNX file: dimension, token limit, pooling,
//! normalisation and query/passage prefixes, so that none of it is hard-coded.

use serde::Deserialize;
use std::path::Path;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token's vector (`<s>` / `[CLS]`): KoSimCSE.
    Cls,
    /// The attention-masked mean over all tokens, special tokens included: e5.
    Mean,
}

/// The contents of `moa.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub model_id: String,
    pub dimension: usize,
    /// Longest input in tokens, special tokens included.
    pub max_tokens: usize,
    pub pooling: Pooling,
    /// L2-normalise vectors unless a request says otherwise.
    #[serde(default = "yes")]
    pub normalize: bool,
    #[serde(default)]
    pub query_prefix: String,
    #[serde(default)]
    pub passage_prefix: String,
    /// The graph's input names (`input_ids`, `attention_mask`, optionally `token_type_ids`).
    pub inputs: Vec<String>,
    /// The graph's output holding token vectors `[batch, tokens, dimension]`.
    pub output: String,
    /// How the graph stores its weights, when not fp32 (`int8` for a quantized copy). The model
    /// keeps its name: components asking for `multilingual-e5-small` get either.
    #[serde(default)]
    pub weights: Option<String>,
}

fn yes() -> bool {
    true
}

impl ModelConfig {
    /// Reads `dir/moa.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("moa.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e}\n  help: run scripts/fetch-model.sh, or point the model directory at one holding model.onnx, tokenizer.json and moa.json",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid moa.json: {e}", path.display()))
    }
}
