//! The model runtime as one value: a loaded model behind the dynamic batcher, with input checks
//! and metrics. The gRPC server serves it; `moa up` embeds it in-process when no endpoint is set.

use crate::batcher::{Batcher, BatcherSettings, RuntimeError};
use crate::embedder::{EmbedError, Embedder, EmbedderSettings, TextKind};
use crate::metrics::RuntimeMetrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One embedding request, as the gRPC service and the host capability both express it.
#[derive(Debug, Clone, Default)]
pub struct EmbedCall {
    pub texts: Vec<String>,
    /// Empty: the served model; otherwise it must be [`ModelRuntime::model_name`].
    pub model: String,
    pub kind: TextKind,
    /// Replaces the prefix `kind` selects.
    pub prompt: Option<String>,
    /// Unset: the model's default.
    pub normalize: Option<bool>,
    pub truncate: bool,
    /// Give up (with [`RuntimeError::DeadlineExceeded`]) if the batch has not run by then.
    pub deadline: Option<Instant>,
    /// The caller's W3C trace context, logged with the call and sent on over gRPC.
    pub traceparent: Option<String>,
}

/// Vectors in request order, with what they cost.
#[derive(Debug, Clone, Default)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
    pub tokenization: Duration,
    pub queued: Duration,
    pub inference: Duration,
    pub total: Duration,
}

/// Where the model and ONNX Runtime live, and how to run them.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub model_dir: PathBuf,
    pub onnxruntime_library: PathBuf,
    pub embedder: EmbedderSettings,
    pub batcher: BatcherSettings,
}

impl RuntimeSettings {
    /// The defaults under `$MOA_CACHE_HOME` (else `~/.cache/moa`), where scripts/fetch-model.sh
    /// puts multilingual-e5-small and libonnxruntime; `MOA_MODEL_DIR` / `MOA_ORT_LIB` override.
    pub fn from_environment() -> Self {
        let cache = std::env::var_os("MOA_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
                    .join(".cache/moa")
            });
        RuntimeSettings {
            model_dir: std::env::var_os("MOA_MODEL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache.join("models/multilingual-e5-small")),
            onnxruntime_library: std::env::var_os("MOA_ORT_LIB")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache.join("onnxruntime/libonnxruntime.so")),
            embedder: EmbedderSettings::default(),
            batcher: BatcherSettings::default(),
        }
    }
}

/// A model served through the batcher.
pub struct ModelRuntime {
    embedder: Arc<Embedder>,
    batcher: Batcher,
    metrics: Arc<RuntimeMetrics>,
    name: String,
}

impl ModelRuntime {
    /// Loads ONNX Runtime and the model (seconds for a few hundred MB) and starts the batcher.
    pub fn load(settings: &RuntimeSettings, metrics: Arc<RuntimeMetrics>) -> anyhow::Result<Self> {
        let environment = crate::embedder::init_onnxruntime(&settings.onnxruntime_library)?;
        let embedder = Arc::new(Embedder::load(
            &environment,
            &settings.model_dir,
            settings.embedder,
        )?);
        Self::start(embedder, settings.batcher, metrics)
    }

    /// Serves an already loaded model.
    pub fn start(
        embedder: Arc<Embedder>,
        batcher: BatcherSettings,
        metrics: Arc<RuntimeMetrics>,
    ) -> anyhow::Result<Self> {
        let max_tokens = embedder.config().max_tokens;
        if batcher.max_batch_tokens < max_tokens {
            anyhow::bail!(
                "max batch tokens {} is below the model's {max_tokens}-token limit: one long text would never fit a batch",
                batcher.max_batch_tokens
            );
        }
        if batcher.max_batch_size == 0 || batcher.queue_capacity == 0 {
            anyhow::bail!("max batch size and queue capacity must be at least 1");
        }
        let name = model_name(&embedder.config().model_id);
        let batcher = Batcher::start(embedder.clone(), batcher, metrics.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the batcher thread: {e}"))?;
        Ok(ModelRuntime {
            embedder,
            batcher,
            metrics,
            name,
        })
    }

    /// The name requests and `ai_models` grants use: the model id's last path segment
    /// (`intfloat/multilingual-e5-small` → `multilingual-e5-small`).
    pub fn model_name(&self) -> &str {
        &self.name
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    pub fn batcher_settings(&self) -> &BatcherSettings {
        self.batcher.settings()
    }

    pub fn metrics(&self) -> &Arc<RuntimeMetrics> {
        &self.metrics
    }

    /// Checks, tokenizes, queues and waits for the batch; every refusal is counted by reason.
    pub async fn embed(&self, call: EmbedCall) -> Result<Embedded, RuntimeError> {
        let result = self.embed_uncounted(call).await;
        match &result {
            Ok(embedded) => {
                self.metrics.texts.inc_by(embedded.vectors.len() as u64);
            }
            Err(err) => self.metrics.error(err.reason()),
        }
        result
    }

    async fn embed_uncounted(&self, call: EmbedCall) -> Result<Embedded, RuntimeError> {
        let started = Instant::now();
        self.check_model(&call.model)?;
        let texts = self.check_texts(&call.texts)?;
        let tokens =
            self.tokenize_checked(&texts, call.kind, call.prompt.as_deref(), call.truncate)?;
        let tokenization = started.elapsed();
        self.metrics
            .tokenize_seconds
            .observe(tokenization.as_secs_f64());
        let prompt_tokens = tokens.iter().map(Vec::len).sum::<usize>() as u32;
        let normalize = call.normalize.unwrap_or(self.embedder.config().normalize);
        let (vectors, queued, inference) =
            self.batcher.embed(tokens, normalize, call.deadline).await?;
        Ok(Embedded {
            vectors,
            prompt_tokens,
            tokenization,
            queued,
            inference,
            total: started.elapsed(),
        })
    }

    /// Token ids as the model sees them.
    pub fn tokenize(
        &self,
        texts: &[String],
        kind: TextKind,
        prompt: Option<&str>,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, RuntimeError> {
        let texts = self.check_texts(texts)?;
        self.tokenize_checked(&texts, kind, prompt, truncate)
    }

    fn tokenize_checked(
        &self,
        texts: &[&str],
        kind: TextKind,
        prompt: Option<&str>,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, RuntimeError> {
        let prefix = prompt.unwrap_or_else(|| self.embedder.prefix(kind));
        self.embedder
            .tokenize_with_prefix(texts, prefix, truncate)
            .map_err(|err| match err {
                EmbedError::TooLong { .. } => RuntimeError::InvalidInput(err.to_string()),
                other => RuntimeError::Internal(other.to_string()),
            })
    }

    fn check_model(&self, model: &str) -> Result<(), RuntimeError> {
        if model.is_empty() || model == self.name || model == self.embedder.config().model_id {
            Ok(())
        } else {
            Err(RuntimeError::UnknownModel(format!(
                "model `{model}` is not served here; this runtime serves `{}`",
                self.name
            )))
        }
    }

    fn check_texts<'a>(&self, texts: &'a [String]) -> Result<Vec<&'a str>, RuntimeError> {
        let max = self.batcher.settings().max_client_batch_size;
        if texts.is_empty() {
            return Err(RuntimeError::InvalidInput("no texts to embed".into()));
        }
        if texts.len() > max {
            return Err(RuntimeError::InvalidInput(format!(
                "{} texts in one request, more than the limit of {max}; split the request (or use EmbedStream)",
                texts.len()
            )));
        }
        Ok(texts.iter().map(String::as_str).collect())
    }

    /// Refuses new work and lets queued batches finish.
    pub fn close(&self) {
        self.batcher.close();
    }
}

/// `org/name` → `name`.
fn model_name(model_id: &str) -> String {
    Path::new(model_id)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(model_id)
        .to_string()
}
