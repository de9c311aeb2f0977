//! moa's native embedding runtime: a model directory (ONNX file, tokenizer.json, moa.json) served by
//! ONNX Runtime through `ort` behind a token-budget dynamic batcher, over gRPC or in-process.

pub mod batcher;
pub mod client;
pub mod config;
pub mod embedder;
pub mod eval;
pub mod metrics;
pub mod runtime;
pub mod service;

/// Generated from proto/moa/embedding/v1/embedding.proto.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("moa.embedding.v1");
}

pub use batcher::{BatcherSettings, RuntimeError};
pub use client::{ClientSettings, RemoteRuntime};
pub use config::{ModelConfig, Pooling};
pub use embedder::{
    EmbedError, EmbedOptions, Embedder, EmbedderSettings, TextKind, init_onnxruntime,
};
pub use metrics::RuntimeMetrics;
pub use runtime::{EmbedCall, Embedded, ModelRuntime, RuntimeSettings};
pub use service::EmbeddingService;
