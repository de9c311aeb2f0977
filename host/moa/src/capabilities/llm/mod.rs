//! Spin's `fermyon:spin/llm@2.0.0` for components: `generate-embeddings` served by moa's model
//! runtime (in-process or over gRPC), `infer` by an OpenAI-compatible endpoint ([`inference`]).
//!
//! `[embedding]` in the runtime config picks the backend: `type = "grpc"` with an `endpoint`, or
//! (the default) `type = "in_process"`, which loads the model into `moa up` itself when a
//! component lists a model under `ai_models`. A model name may end in `:passage` or `:raw` to get
//! the document prefix or none (default: the query prefix); the grant names the bare model.
//! `[llm_compute]` (Spin's section) names the inference endpoint; without it `infer` answers
//! `model-not-supported`.

pub mod inference;

use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::invocation::Invocation;
use crate::runtime_config::RuntimeConfig;
use anyhow::{Context as _, Result};
use bindings::fermyon::spin::llm::{self, EmbeddingsResult, EmbeddingsUsage, Error};
use inference::{ChatCompletions, InferError, Sampling};
use moa_manifest::LoadedManifest;
use moa_model_runtime::{
    ClientSettings, EmbedCall, Embedded, ModelRuntime, RemoteRuntime, RuntimeError, RuntimeMetrics,
    RuntimeSettings, TextKind,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/llm",
        imports: { default: async | trappable },
    });
}

/// `[embedding]` in the runtime config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum EmbeddingSection {
    /// The runtime inside the host process (no network); the model loads at start-up.
    InProcess {
        /// Directory with model.onnx, tokenizer.json, moa.json [default: $MOA_MODEL_DIR or
        /// ~/.cache/moa/models/multilingual-e5-small].
        model_dir: Option<PathBuf>,
        /// libonnxruntime.so [default: $MOA_ORT_LIB or ~/.cache/moa/onnxruntime/libonnxruntime.so].
        onnxruntime_library: Option<PathBuf>,
        /// Inference threads [default: all cores].
        threads: Option<usize>,
        max_batch_size: Option<usize>,
        queue_capacity: Option<usize>,
    },
    /// A `moa-model-runtime serve` over gRPC.
    Grpc {
        /// e.g. "http://moa-model-runtime:50051".
        endpoint: String,
        /// Whole-call budget, retries included (default 10000).
        timeout_ms: Option<u64>,
        connect_timeout_ms: Option<u64>,
        /// Attempts for UNAVAILABLE / RESOURCE_EXHAUSTED answers (default 6).
        max_attempts: Option<u32>,
    },
}

/// Where embeddings come from.
#[derive(Clone)]
pub enum EmbeddingBackend {
    InProcess(Arc<ModelRuntime>),
    Remote(Arc<RemoteRuntime>),
}

impl EmbeddingBackend {
    async fn embed(&self, call: EmbedCall) -> Result<Embedded, RuntimeError> {
        match self {
            EmbeddingBackend::InProcess(runtime) => runtime.embed(call).await,
            EmbeddingBackend::Remote(remote) => remote.embed(call).await,
        }
    }

    /// One line for the start-up banner.
    pub fn describe(&self) -> String {
        match self {
            EmbeddingBackend::InProcess(runtime) => {
                format!("in-process {}", runtime.model_name())
            }
            EmbeddingBackend::Remote(remote) => format!("gRPC {}", remote.endpoint()),
        }
    }
}

/// Spin's `fermyon:spin/llm@2.0.0`: embeddings from moa's model runtime, per `ai_models` grant.
pub struct LlmCapability;

impl Capability for LlmCapability {
    const NAME: &'static str = "llm";
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &["embedding", "llm_compute"];
    const MANIFEST_KEYS: &'static [&'static str] = &["ai_models"];
    const IMPORTS: &'static [&'static str] = &["fermyon:spin/llm@2.0.0"];

    type AppState = AiModels;
    type ComponentState = AiModelsGrant;
    type InstanceState = AiModelsGrant;
    type View<'a> = LlmView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        llm::add_to_linker::<T, Llm>(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<AiModels> {
        let mut models = AiModels::configure(cx.runtime_config, cx.app).await?;
        if let Some(runtime_metrics) = models.metrics() {
            cx.metrics.attach(runtime_metrics);
        }
        models.inference = ChatCompletions::configure(cx.runtime_config, cx.metrics)?;
        if models.backend.is_some() {
            models.calls = Some(EmbeddingCalls::register(cx.metrics));
        }
        Ok(models)
    }

    fn component(models: &AiModels, cx: &ComponentContext<'_>) -> Result<AiModelsGrant> {
        Ok(models.grant(&cx.strings("ai_models")?))
    }

    fn instance(grant: &AiModelsGrant) -> AiModelsGrant {
        grant.clone()
    }

    fn view<'a>(parts: InstanceParts<'a, AiModelsGrant>) -> LlmView<'a> {
        LlmView {
            grant: parts.state,
            invocation: parts.invocation,
        }
    }
}

/// What the host traits see: the grant and the invocation (its trace context goes to the runtime).
pub struct LlmView<'a> {
    grant: &'a AiModelsGrant,
    invocation: &'a Invocation,
}

/// The app's embedding backend: configured once at load, `None` when no component lists
/// `ai_models` (then nothing is loaded); and the inference endpoint, if `[llm_compute]` names one.
#[derive(Clone, Default)]
pub struct AiModels {
    backend: Option<EmbeddingBackend>,
    inference: Option<Arc<ChatCompletions>>,
    calls: Option<EmbeddingCalls>,
}

/// `moa_llm_embedding_*`: `generate-embeddings` calls as components see them (queueing, batching
/// and the network included), beside the runtime's own `moa_embed_*`.
#[derive(Clone)]
struct EmbeddingCalls {
    seconds: prometheus_client::metrics::histogram::Histogram,
    texts: prometheus_client::metrics::counter::Counter,
}

impl EmbeddingCalls {
    fn register(metrics: &crate::telemetry::Metrics) -> EmbeddingCalls {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        let calls = EmbeddingCalls {
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            texts: prometheus_client::metrics::counter::Counter::default(),
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register(
            "moa_llm_embedding_call_seconds",
            "generate-embeddings calls from components, end to end",
            calls.seconds.clone(),
        );
        registry.register(
            "moa_llm_embedded_texts",
            "Texts components had embedded",
            calls.texts.clone(),
        );
        metrics.add_source(Arc::new(registry));
        calls
    }
}

impl AiModels {
    pub async fn configure(runtime_config: &RuntimeConfig, app: &LoadedManifest) -> Result<Self> {
        let mut wanted = false;
        for component in app.manifest.components.values() {
            wanted |= !component.string_list(&app.path, "ai_models")?.is_empty();
        }
        let section = runtime_config.section::<EmbeddingSection>("embedding")?;
        if !wanted {
            return Ok(AiModels::default());
        }
        let describe = runtime_config.describe();
        let backend = match section.unwrap_or(EmbeddingSection::InProcess {
            model_dir: None,
            onnxruntime_library: None,
            threads: None,
            max_batch_size: None,
            queue_capacity: None,
        }) {
            EmbeddingSection::Grpc {
                endpoint,
                timeout_ms,
                connect_timeout_ms,
                max_attempts,
            } => {
                let defaults = ClientSettings::default();
                let settings = ClientSettings {
                    request_timeout: timeout_ms
                        .map_or(defaults.request_timeout, Duration::from_millis),
                    connect_timeout: connect_timeout_ms
                        .map_or(defaults.connect_timeout, Duration::from_millis),
                    max_attempts: max_attempts.unwrap_or(defaults.max_attempts).max(1),
                    ..defaults
                };
                EmbeddingBackend::Remote(Arc::new(
                    RemoteRuntime::connect_lazy(&endpoint, settings)
                        .with_context(|| format!("{describe}: [embedding]"))?,
                ))
            }
            EmbeddingSection::InProcess {
                model_dir,
                onnxruntime_library,
                threads,
                max_batch_size,
                queue_capacity,
            } => {
                {
                    let mut settings = RuntimeSettings::from_environment();
                    let base = runtime_config
                        .base_dir()
                        .unwrap_or(std::path::Path::new("."));
                    if let Some(dir) = model_dir {
                        settings.model_dir = base.join(dir);
                    }
                    if let Some(lib) = onnxruntime_library {
                        settings.onnxruntime_library = base.join(lib);
                    }
                    if let Some(threads) = threads {
                        settings.embedder.intra_threads = threads;
                    }
                    // Idle inference threads must not spin on cores the components need.
                    settings.embedder.allow_spinning = false;
                    if let Some(size) = max_batch_size {
                        settings.batcher.max_batch_size = size;
                    }
                    if let Some(capacity) = queue_capacity {
                        settings.batcher.queue_capacity = capacity;
                    }
                    // Loading reads and optimises a large model: off the async threads.
                    let runtime = tokio::task::spawn_blocking(move || {
                        ModelRuntime::load(&settings, Arc::new(RuntimeMetrics::new()))
                    })
                    .await
                    .context("the model loader panicked")?
                    .with_context(|| {
                            format!(
                                "cannot load the in-process model runtime for `ai_models`\n  help: run scripts/fetch-model.sh, or set [embedding] type = \"grpc\" in {describe}"
                            )
                        })?;
                    EmbeddingBackend::InProcess(Arc::new(runtime))
                }
            }
        };
        Ok(AiModels {
            backend: Some(backend),
            ..AiModels::default()
        })
    }

    /// The inference endpoint, if `[llm_compute]` names one.
    pub fn inference(&self) -> Option<&Arc<ChatCompletions>> {
        self.inference.as_ref()
    }

    pub fn backend(&self) -> Option<&EmbeddingBackend> {
        self.backend.as_ref()
    }

    /// The in-process runtime's metrics, for the host's /metrics.
    pub fn metrics(&self) -> Option<Arc<RuntimeMetrics>> {
        match &self.backend {
            Some(EmbeddingBackend::InProcess(runtime)) => Some(runtime.metrics().clone()),
            _ => None,
        }
    }

    /// What one component may call.
    pub fn grant(&self, models: &[String]) -> AiModelsGrant {
        AiModelsGrant {
            models: Arc::new(models.iter().cloned().collect()),
            backend: self.backend.clone(),
            inference: self.inference.clone(),
            calls: self.calls.clone(),
        }
    }
}

/// One component's models and the backend; cloned into every instance.
#[derive(Clone, Default)]
pub struct AiModelsGrant {
    models: Arc<BTreeSet<String>>,
    backend: Option<EmbeddingBackend>,
    inference: Option<Arc<ChatCompletions>>,
    calls: Option<EmbeddingCalls>,
}

/// Marker type naming this capability in the linker.
struct Llm;

impl HasData for Llm {
    type Data<'a> = LlmView<'a>;
}

/// `multilingual-e5-small:passage` → (`multilingual-e5-small`, passage).
fn split_kind(model: &str) -> (&str, Option<TextKind>) {
    match model.rsplit_once(':') {
        Some((base, "passage")) => (base, Some(TextKind::Passage)),
        Some((base, "query")) => (base, Some(TextKind::Query)),
        Some((base, "raw")) => (base, Some(TextKind::Raw)),
        _ => (model, None),
    }
}

/// Spin's wording for a model missing from `ai_models`.
fn access_denied(model: &str) -> Error {
    Error::InvalidInput(format!(
        "the component does not have access to use '{model}'; to give it access, add '{model}' to the 'ai_models' key of the component in spin.toml"
    ))
}

fn llm_error(err: RuntimeError) -> Error {
    match err {
        RuntimeError::UnknownModel(_) => Error::ModelNotSupported,
        RuntimeError::InvalidInput(message) => Error::InvalidInput(message),
        other => Error::RuntimeError(other.to_string()),
    }
}

impl llm::Host for LlmView<'_> {
    async fn infer(
        &mut self,
        model: String,
        prompt: String,
        params: Option<llm::InferencingParams>,
    ) -> wasmtime::Result<Result<llm::InferencingResult, Error>> {
        if !self.grant.models.contains(&model) {
            return Ok(Err(access_denied(&model)));
        }
        // Without `[llm_compute]` there is no text generation: Spin's answer for a model it
        // cannot run, which components take as "no LLM here".
        let Some(inference) = &self.grant.inference else {
            return Ok(Err(Error::ModelNotSupported));
        };
        let sampling = params.map_or_else(Sampling::default, |p| Sampling {
            max_tokens: Some(p.max_tokens),
            temperature: Some(p.temperature),
            top_p: Some(p.top_p),
        });
        let started = Instant::now();
        let result = inference
            .infer(
                &model,
                &prompt,
                sampling,
                self.invocation.traceparent.as_deref(),
            )
            .await;
        tracing::debug!(
            model,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "infer"
        );
        Ok(match result {
            Ok(inferred) => Ok(llm::InferencingResult {
                text: inferred.text,
                usage: llm::InferencingUsage {
                    prompt_token_count: inferred.prompt_tokens,
                    generated_token_count: inferred.generated_tokens,
                },
            }),
            Err(InferError::Refused {
                status: 400 | 413 | 422,
                message,
            }) => Err(Error::InvalidInput(message)),
            Err(error) => Err(Error::RuntimeError(error.to_string())),
        })
    }

    async fn generate_embeddings(
        &mut self,
        model: String,
        text: Vec<String>,
    ) -> wasmtime::Result<Result<EmbeddingsResult, Error>> {
        let (base, kind) = split_kind(&model);
        if !self.grant.models.contains(base) {
            return Ok(Err(access_denied(base)));
        }
        let Some(backend) = &self.grant.backend else {
            return Ok(Err(Error::ModelNotSupported));
        };
        if text.is_empty() {
            return Ok(Ok(EmbeddingsResult {
                embeddings: Vec::new(),
                usage: EmbeddingsUsage {
                    prompt_token_count: 0,
                },
            }));
        }
        let started = Instant::now();
        let count = text.len();
        let result = backend
            .embed(EmbedCall {
                texts: text,
                model: base.to_string(),
                kind: kind.unwrap_or_default(),
                traceparent: self.invocation.traceparent.clone(),
                ..Default::default()
            })
            .await;
        if let Some(calls) = &self.grant.calls {
            calls.seconds.observe(started.elapsed().as_secs_f64());
            if result.is_ok() {
                calls.texts.inc_by(count as u64);
            }
        }
        tracing::debug!(
            model = base,
            texts = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "generate-embeddings"
        );
        Ok(result.map_err(llm_error).map(|embedded| EmbeddingsResult {
            embeddings: embedded.vectors,
            usage: EmbeddingsUsage {
                prompt_token_count: embedded.prompt_tokens,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_carry_an_optional_kind() {
        assert_eq!(
            split_kind("multilingual-e5-small"),
            ("multilingual-e5-small", None)
        );
        assert_eq!(
            split_kind("multilingual-e5-small:passage"),
            ("multilingual-e5-small", Some(TextKind::Passage))
        );
        assert_eq!(split_kind("e5:raw"), ("e5", Some(TextKind::Raw)));
        assert_eq!(split_kind("llama:13b"), ("llama:13b", None));
    }
}
