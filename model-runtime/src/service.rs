//! The `moa.embedding.v1.Embedding` gRPC service over a [`ModelRuntime`] that may still be
//! loading: until it is ready every call answers UNAVAILABLE (and health says NOT_SERVING).

use crate::batcher::RuntimeError;
use crate::embedder::TextKind;
use crate::proto::embedding_server::Embedding;
use crate::proto::{
    EmbedRequest, EmbedResponse, InfoRequest, InfoResponse, TokenIds, TokenizeRequest,
    TokenizeResponse, Usage, Vector,
};
use crate::runtime::{EmbedCall, Embedded, ModelRuntime};
use crate::{Pooling, proto};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Requests of one `EmbedStream` that may be in the batcher at once.
const STREAM_WINDOW: usize = 64;

/// How much earlier than the caller's deadline the runtime gives up, so that the caller reads
/// DEADLINE_EXCEEDED from us rather than tonic's own timer's CANCELLED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(3);

/// The service; cheap to clone. [`EmbeddingService::ready`] hands it the loaded runtime.
#[derive(Clone, Default)]
pub struct EmbeddingService {
    runtime: Arc<OnceLock<Arc<ModelRuntime>>>,
}

impl EmbeddingService {
    /// Starts serving `runtime` (once; later calls are ignored).
    pub fn ready(&self, runtime: Arc<ModelRuntime>) {
        let _ = self.runtime.set(runtime);
    }

    pub fn runtime(&self) -> Option<&Arc<ModelRuntime>> {
        self.runtime.get()
    }

    fn loaded(&self) -> Result<Arc<ModelRuntime>, Status> {
        self.runtime
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the model is still loading; retry shortly"))
    }
}

/// The gRPC status of each refusal (documented in embedding.proto).
pub fn status(err: &RuntimeError) -> Status {
    let message = err.to_string();
    match err {
        RuntimeError::InvalidInput(_) => Status::invalid_argument(message),
        RuntimeError::UnknownModel(_) => Status::not_found(message),
        RuntimeError::Overloaded(_) => Status::resource_exhausted(message),
        RuntimeError::DeadlineExceeded => Status::deadline_exceeded(message),
        RuntimeError::Unavailable(_) => Status::unavailable(message),
        RuntimeError::Internal(_) => Status::internal(message),
    }
}

fn text_kind(kind: i32) -> Result<TextKind, Status> {
    match proto::TextKind::try_from(kind) {
        Ok(proto::TextKind::Query) => Ok(TextKind::Query),
        Ok(proto::TextKind::Passage) => Ok(TextKind::Passage),
        Ok(proto::TextKind::Raw) => Ok(TextKind::Raw),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown text kind {kind} (0 query, 1 passage, 2 raw)"
        ))),
    }
}

/// The caller's `grpc-timeout` as an instant, a little early (see [`DEADLINE_MARGIN`]).
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(value)?;
    Some(Instant::now() + timeout.saturating_sub(DEADLINE_MARGIN))
}

/// `grpc-timeout` is up to 8 digits and a unit: H, M, S, m (ms), u (µs), n (ns).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Makes `span` a child of the caller's W3C `traceparent` (exported when OTLP is on).
fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if let Some(traceparent) = traceparent {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        let context =
            opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(context);
    }
}

/// The caller's `traceparent` metadata, if any.
fn traceparent_of<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("traceparent")?.to_str().ok()?;
    Some(value.chars().take(64).collect())
}

fn call_of(request: EmbedRequest, deadline: Option<Instant>) -> Result<EmbedCall, Status> {
    Ok(EmbedCall {
        kind: text_kind(request.kind)?,
        texts: request.texts,
        model: request.model,
        prompt: request.prompt,
        normalize: request.normalize,
        truncate: request.truncate,
        deadline,
        traceparent: None,
    })
}

fn response_of(embedded: Embedded) -> EmbedResponse {
    let nanos = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    EmbedResponse {
        usage: Some(Usage {
            prompt_tokens: embedded.prompt_tokens,
            tokenization_ns: nanos(embedded.tokenization),
            queue_ns: nanos(embedded.queued),
            inference_ns: nanos(embedded.inference),
            total_ns: nanos(embedded.total),
        }),
        embeddings: embedded
            .vectors
            .into_iter()
            .map(|values| Vector { values })
            .collect(),
    }
}

/// Runs one call, answering DEADLINE_EXCEEDED once the deadline passes even mid-batch.
async fn embed(runtime: &ModelRuntime, call: EmbedCall) -> Result<EmbedResponse, Status> {
    let deadline = call.deadline;
    let work = runtime.embed(call);
    let result = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => {
                runtime
                    .metrics()
                    .error(RuntimeError::DeadlineExceeded.reason());
                Err(RuntimeError::DeadlineExceeded)
            }
        },
        None => work.await,
    };
    match &result {
        Ok(done) => tracing::info!(
            prompt_tokens = done.prompt_tokens,
            queue_us = done.queued.as_micros() as u64,
            inference_us = done.inference.as_micros() as u64,
            "embedded"
        ),
        Err(err) => tracing::info!(reason = err.reason(), error = %err, "refused"),
    }
    result.map(response_of).map_err(|err| status(&err))
}

type EmbedResponses = Pin<Box<dyn Stream<Item = Result<EmbedResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Embedding for EmbeddingService {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let runtime = self.loaded()?;
        let config = runtime.embedder().config();
        let batching = runtime.batcher_settings();
        Ok(Response::new(InfoResponse {
            model_id: config.model_id.clone(),
            model_name: runtime.model_name().to_string(),
            dimension: config.dimension as u32,
            max_input_tokens: config.max_tokens as u32,
            pooling: match config.pooling {
                Pooling::Cls => "cls",
                Pooling::Mean => "mean",
            }
            .into(),
            normalize: config.normalize,
            query_prefix: config.query_prefix.clone(),
            passage_prefix: config.passage_prefix.clone(),
            max_client_batch_size: batching.max_client_batch_size as u32,
            max_batch_size: batching.max_batch_size as u32,
            max_batch_tokens: batching.max_batch_tokens as u32,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn embed(
        &self,
        request: Request<EmbedRequest>,
    ) -> Result<Response<EmbedResponse>, Status> {
        let runtime = self.loaded()?;
        let deadline = deadline_of(&request);
        let traceparent = traceparent_of(&request);
        let mut call = call_of(request.into_inner(), deadline)
            .inspect_err(|_| runtime.metrics().error("invalid_input"))?;
        let span = tracing::info_span!(
            "embed",
            otel.name = "moa.embedding.v1.Embedding/Embed",
            otel.kind = "server",
            texts = call.texts.len(),
            traceparent = traceparent.as_deref().unwrap_or("")
        );
        continue_trace(&span, traceparent.as_deref());
        call.traceparent = traceparent;
        embed(&runtime, call)
            .instrument(span)
            .await
            .map(Response::new)
    }

    type EmbedStreamStream = EmbedResponses;

    async fn embed_stream(
        &self,
        request: Request<Streaming<EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let runtime = self.loaded()?;
        let deadline = deadline_of(&request);
        let responses = request
            .into_inner()
            .map(move |next| {
                let runtime = runtime.clone();
                async move { embed(&runtime, call_of(next?, deadline)?).await }
            })
            .buffered(STREAM_WINDOW);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn tokenize(
        &self,
        request: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let runtime = self.loaded()?;
        let request = request.into_inner();
        let tokens = runtime
            .tokenize(
                &request.texts,
                text_kind(request.kind)?,
                request.prompt.as_deref(),
                request.truncate,
            )
            .map_err(|err| status(&err))?;
        Ok(Response::new(TokenizeResponse {
            tokens: tokens.into_iter().map(|ids| TokenIds { ids }).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
