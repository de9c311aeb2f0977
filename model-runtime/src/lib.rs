//! moa's native embedding runtime: a model directory (ONNX file, tokenizer.json, moa.json) served by
//! ONNX Runtime through `ort`, with pooling, prefixes and normalisation taken from moa.json.

pub mod config;
pub mod embedder;

pub use config::{ModelConfig, Pooling};
pub use embedder::{
    EmbedError, EmbedOptions, Embedder, EmbedderSettings, TextKind, init_onnxruntime,
};
