//! The gRPC client the host uses for a remote model runtime: one lazily connected HTTP/2 channel
//! (multiplexed, reconnecting), a deadline per call, and retries with backoff for UNAVAILABLE and
//! RESOURCE_EXHAUSTED while the deadline allows.

use crate::batcher::RuntimeError;
use crate::embedder::TextKind;
use crate::proto::embedding_client::EmbeddingClient;
use crate::proto::{self, EmbedRequest, InfoRequest, InfoResponse};
use crate::runtime::{EmbedCall, Embedded};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How the client talks to the runtime.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Whole-call budget, retries included (unless the call brings an earlier deadline).
    pub request_timeout: Duration,
    /// Attempts per call (1: no retry).
    pub max_attempts: u32,
    /// First retry delay; doubled per retry up to [`MAX_BACKOFF`].
    pub initial_backoff: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(50),
        }
    }
}

/// A remote model runtime.
#[derive(Clone)]
pub struct RemoteRuntime {
    client: EmbeddingClient<Channel>,
    endpoint: String,
    settings: ClientSettings,
}

impl RemoteRuntime {
    /// Prepares the channel without connecting: the host starts even while the runtime is down,
    /// and calls then fail (after retries) with [`RuntimeError::Unavailable`].
    pub fn connect_lazy(endpoint: &str, settings: ClientSettings) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| anyhow::anyhow!("invalid model runtime endpoint `{endpoint}`: {e}"))?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(RemoteRuntime {
            client: EmbeddingClient::new(channel).max_decoding_message_size(64 << 20),
            endpoint: endpoint.to_string(),
            settings,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn info(&self) -> Result<InfoResponse, RuntimeError> {
        let mut request = tonic::Request::new(InfoRequest {});
        request.set_timeout(self.settings.request_timeout);
        self.client
            .clone()
            .info(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| error_of(&s))
    }

    /// Embeds remotely, retrying what is worth retrying until the deadline.
    pub async fn embed(&self, call: EmbedCall) -> Result<Embedded, RuntimeError> {
        let started = Instant::now();
        let budget = started + self.settings.request_timeout;
        let deadline = call.deadline.map_or(budget, |d| d.min(budget));
        let message = EmbedRequest {
            texts: call.texts,
            model: call.model,
            kind: match call.kind {
                TextKind::Query => proto::TextKind::Query,
                TextKind::Passage => proto::TextKind::Passage,
                TextKind::Raw => proto::TextKind::Raw,
            } as i32,
            prompt: call.prompt,
            normalize: call.normalize,
            truncate: call.truncate,
        };
        let mut backoffs = ExponentialBuilder::new()
            .with_min_delay(self.settings.initial_backoff)
            .with_max_delay(MAX_BACKOFF)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let mut attempt = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RuntimeError::DeadlineExceeded);
            }
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(left);
            if let Some(value) = call.traceparent.as_deref().and_then(|v| v.parse().ok()) {
                request.metadata_mut().insert("traceparent", value);
            }
            let outcome = tokio::time::timeout(left, self.client.clone().embed(request)).await;
            let status = match outcome {
                Ok(Ok(response)) => return Ok(embedded_of(response.into_inner(), started)),
                Ok(Err(status)) => status,
                Err(_) => return Err(RuntimeError::DeadlineExceeded),
            };
            let retry = matches!(status.code(), Code::Unavailable | Code::ResourceExhausted);
            if !retry || attempt >= self.settings.max_attempts {
                return Err(error_of(&status));
            }
            tracing::debug!(attempt, code = ?status.code(), "model runtime call failed; retrying");
            let pause = backoffs
                .next()
                .unwrap_or(MAX_BACKOFF)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }
}

/// Waits until the runtime at `endpoint` reports SERVING on `grpc.health.v1` (scripts and
/// tests that start a runtime use it).
pub async fn wait_until_serving(endpoint: &str, timeout: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let give_up = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < give_up {
        match Endpoint::from_shared(endpoint.to_string())?.connect().await {
            Ok(channel) => match HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
                Ok(r) => last = format!("status {:?}", r.get_ref().status()),
                Err(status) => last = status.to_string(),
            },
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the model runtime at {endpoint} was not serving after {timeout:?} ({last})")
}

fn embedded_of(response: proto::EmbedResponse, started: Instant) -> Embedded {
    let usage = response.usage.unwrap_or_default();
    Embedded {
        vectors: response.embeddings.into_iter().map(|v| v.values).collect(),
        prompt_tokens: usage.prompt_tokens,
        tokenization: Duration::from_nanos(usage.tokenization_ns),
        queued: Duration::from_nanos(usage.queue_ns),
        inference: Duration::from_nanos(usage.inference_ns),
        total: started.elapsed(),
    }
}

/// A status back into the runtime's own error (the inverse of `service::status`).
pub fn error_of(status: &Status) -> RuntimeError {
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument => RuntimeError::InvalidInput(message),
        Code::NotFound => RuntimeError::UnknownModel(message),
        Code::ResourceExhausted => RuntimeError::Overloaded(message),
        Code::DeadlineExceeded | Code::Cancelled => RuntimeError::DeadlineExceeded,
        Code::Unavailable => RuntimeError::Unavailable(format!("unreachable: {message}")),
        _ => RuntimeError::Internal(format!("{:?}: {message}", status.code())),
    }
}
